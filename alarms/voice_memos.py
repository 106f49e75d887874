"""A device's voice memo for one of its alarms (an amber alarm's recorded message), kept as evidence.

The device signs :func:`voice_memo_manifest` with its enrolled key, so the signature both
authenticates the upload and binds the exact bytes (their SHA-256) to the alarm's event. The memo
is linked to the alarm's incident and announced on the feed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from chain_of_custody.canonical import canonical_json, rfc3339
from chain_of_custody.core import CoreServices
from chain_of_custody.entries import CustodyAction
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.keys import raw_public_key, verify_signature
from chain_of_custody.models import EvidenceItem
from chain_of_custody.retention_basis import retention_basis
from devices.lone_worker_wire import parse_time
from devices.models import Device
from storage.errors import Refused

from .feed import record_change
from .lifecycle import Lifecycle
from .models import AlarmRecord

EXTENSIONS = {"audio/ogg": "ogg", "audio/opus": "opus", "audio/mpeg": "mp3", "audio/wav": "wav"}


class VoiceMemoRefused(Refused):
    """A voice memo upload refused; ``reason`` is a stable machine code, ``status`` the HTTP answer."""

    structured = True


def voice_memo_manifest(
    device_id: str, event_id: str, sha256: str, size: int, content_type: str, sent_at: str
) -> bytes:
    """The canonical JSON a device signs to upload a voice memo for one of its alarms."""
    return canonical_json(
        {
            "v": 1,
            "type": "voice_memo",
            "device_id": device_id,
            "event_id": event_id,
            "sha256": sha256,
            "size": size,
            "content_type": content_type,
            "sent_at": sent_at,
        }
    )


class VoiceMemos:
    def __init__(self, core: CoreServices, lifecycle: Lifecycle, clock: Callable[[], datetime]) -> None:
        self.core = core
        self.lifecycle = lifecycle
        self.clock = clock

    def attach(
        self,
        device_id: str,
        event_id: str,
        data: bytes,
        *,
        content_type: str,
        sent_at: str,
        signature: str,
        now: datetime | None = None,
    ) -> tuple[str, bool]:
        """Store a device's voice memo for its alarm as evidence and link it; returns (item id, new)."""
        core = self.core
        now = now or self.clock()
        digest = hashlib.sha256(data).hexdigest()
        manifest = voice_memo_manifest(device_id, event_id, digest, len(data), content_type, sent_at)
        with core.db.session() as session:
            device = session.get(Device, device_id)
            if device is None or device.kind != "lone_worker" or not device.public_key:
                raise VoiceMemoRefused("unknown_device", "device is not an enrolled lone-worker device", 401)
            public_key = raw_public_key(device.public_key)
            wearer = device.assigned_staff_id
            active = device.status == "active"
        if public_key is None or not verify_signature(public_key, signature, manifest):
            raise VoiceMemoRefused("bad_signature", "signature does not verify with the device key", 401)
        if not active:
            raise VoiceMemoRefused("disabled_device", "device is disabled", 403)
        try:
            moment = parse_time(sent_at)
        except ValueError:
            raise VoiceMemoRefused("bad_time", "sent_at must be RFC 3339 UTC", 400) from None
        if abs((moment - now).total_seconds()) > core.settings.max_clock_skew_seconds:
            raise VoiceMemoRefused("clock_skew", "sent_at is too far from the server clock; sign again", 401)
        with core.db.session() as session:
            found = session.execute(
                select(AlarmRecord.id, AlarmRecord.occurred_at).where(
                    AlarmRecord.source_event_id == event_id, AlarmRecord.device_id == device_id
                )
            ).first()
            alarm_id, occurred_at = (found.id, found.occurred_at) if found is not None else (None, None)
            if alarm_id is None:
                raise VoiceMemoRefused(
                    "alarm_unknown", "no alarm of this device has that event id (yet)", 409
                )
            existing = session.execute(
                select(AlarmRecord.voice_memo_item_id, EvidenceItem.sha256)
                .join(EvidenceItem, EvidenceItem.id == AlarmRecord.voice_memo_item_id)
                .where(AlarmRecord.id == alarm_id)
            ).first()
        if existing is not None:
            if existing.sha256 == digest:
                return existing.voice_memo_item_id, False
            raise VoiceMemoRefused("memo_exists", "this alarm already has a different voice memo", 409)
        # Retention runs from the alarm the memo belongs to (the device's signed time, bounded by now).
        keep = timedelta(days=core.settings.retention_days)
        basis = retention_basis(occurred_at, now, keep)
        retain_until = basis.retain_until(keep)
        extension = EXTENSIONS.get(content_type, "bin")
        stored = core.store.put_bytes(
            f"lone-worker/{device_id}/{now:%Y/%m/%d}/{event_id}-memo.{extension}",
            data,
            retain_until=retain_until,
            content_type=content_type,
        )
        with core.db.session() as session:
            row = session.get(AlarmRecord, alarm_id, with_for_update=True)
            assert row is not None
            if row.voice_memo_item_id is not None:  # a concurrent upload won
                return row.voice_memo_item_id, False
            if row.provisional:  # custody shows the raise before anything added to it
                self.lifecycle.make_whole(session, row, datetime.now(UTC))
            item = record_evidence(
                session,
                core.ledger,
                stored,
                Provenance(
                    kind="voice_memo",
                    actor=f"device:{device_id}",
                    source_device_id=device_id,
                    wearer=wearer,
                    captured_start=row.occurred_at,
                    filename=f"{event_id}-memo.{extension}",
                    content_type=content_type,
                    retain_until=retain_until,
                    retention_basis=basis,
                ),
                captured={
                    "device": device_id,
                    "event_id": event_id,
                    "alarm_id": row.id,
                    "manifest": _as_dict(manifest),
                    "device_signature": signature,
                },
                received={"via": "https", "received_at": rfc3339(now), "sha256": digest, "bytes": len(data)},
                quarantine_reason=(
                    None
                    if stored.sha256 == digest
                    else f"object store holds {stored.sha256}, received {digest}"
                ),
                verified={"device_signature_valid": True, "sha256_matches": True},
            )
            row.voice_memo_item_id = item.id
            row.updated_at = now
            core.ledger.append(
                session,
                CustodyAction.ALARM_CHANGED,
                f"device:{device_id}",
                item_id=row.evidence_item_id,
                details={"alarm_id": row.id, "voice_memo": item.id, "sha256": digest},
                at=now,
            )
            self.lifecycle.links.link(session, row, item.id, "voice memo")
            record_change(session, row, "voice_memo", now)
            item_id = item.id
        return item_id, True


def _as_dict(manifest: bytes) -> dict[str, Any]:
    return dict(json.loads(manifest))
