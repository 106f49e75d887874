"""A device's voice memo for one of its alarms (an amber alarm's recorded message), kept as evidence.

The device signs :func:`voice_memo_manifest` with its enrolled key, so the signature both
authenticates the upload and binds the exact bytes (their SHA-256) to the alarm's event. The memo
is linked to the alarm's incident and announced on the feed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import canonical_json, rfc3339
from chain_of_custody.core import CoreServices
from chain_of_custody.entries import CustodyAction
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.keys import raw_public_key, verify_signature
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.quarantines import review_only
from chain_of_custody.retention_basis import retention_basis
from devices.ends import load_device
from devices.lone_worker_wire import parse_time
from devices.seals import DeviceSeals, device_seal_key, sealed_values
from storage.errors import Refused

from .alarm_keys import raised_from
from .feed import record_change
from .lifecycle import Lifecycle
from .models import AlarmRecord
from .reach import alarm_sealed

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class MemoAdmission:
    """A memo upload whose signed manifest verified before its body was read: what it claims to be
    and what it will become. ``stored_item`` is set when this very memo is already stored (nothing
    to read); ``replaces`` names the alarm's quarantined memo this one is sent again for."""

    device_id: str
    event_id: str
    sha256: str
    size: int
    content_type: str
    sent_at: str
    signature: str
    alarm_id: str
    occurred_at: datetime
    wearer: str | None
    stored_item: str | None = None
    replaces: str | None = None
    review: str | None = None  # why it is kept quarantined for review (its device disabled)


class VoiceMemos:
    def __init__(self, core: CoreServices, lifecycle: Lifecycle, clock: Callable[[], datetime]) -> None:
        self.core = core
        self.lifecycle = lifecycle
        self.clock = clock
        self.seals = DeviceSeals(device_seal_key(core.key))  # device rows' seals (``devices.seals``)

    def admit(
        self,
        device_id: str,
        event_id: str,
        *,
        sha256: str,
        size: int,
        content_type: str,
        sent_at: str,
        signature: str,
        now: datetime | None = None,
    ) -> MemoAdmission:
        """Check a memo upload from its headers alone, before a byte of its body is read: the device's
        signature over the manifest it declares (digest and size), its state, the time, the alarm."""
        core = self.core
        now = now or self.clock()
        manifest = voice_memo_manifest(device_id, event_id, sha256, size, content_type, sent_at)
        # Only read until the signature holds: a made-up device or signature is refused without
        # taking or waiting for SQLite's one writer.
        with core.db.reading() as session:
            device, bound = load_device(session, self.seals.secret, device_id)
            if (
                device is None
                or device.kind != "lone_worker"
                or not device.public_key
                or not self.seals.holds(sealed_values(device), device.seal, bound)
            ):
                raise VoiceMemoRefused("unknown_device", "device is not an enrolled lone-worker device", 401)
            public_key = raw_public_key(device.public_key)
            wearer = device.assigned_staff_id
            active = device.status == "active"
        if public_key is None or not verify_signature(public_key, signature, manifest):
            raise VoiceMemoRefused("bad_signature", "signature does not verify with the device key", 401)
        # A disabled device's memo (reported lost after it raised the alarm, say) is evidence of an
        # alarm the service took: kept, quarantined for review, never refused and lost.
        review = None if active else f"device {device_id} was disabled when it sent the memo"
        try:
            moment = parse_time(sent_at)
        except ValueError:
            raise VoiceMemoRefused("bad_time", "sent_at must be RFC 3339 UTC", 400) from None
        if abs((moment - now).total_seconds()) > core.settings.max_clock_skew_seconds:
            raise VoiceMemoRefused("clock_skew", "sent_at is too far from the server clock; sign again", 401)
        with core.db.session() as session:
            found = session.scalars(
                select(AlarmRecord).where(
                    AlarmRecord.source_event_id == event_id, AlarmRecord.device_id == device_id
                )
            ).first()
            if found is None or not self._raised_from(session, found, device_id, event_id):
                # None, or a row holding the event id that the service did not raise from it (written
                # or edited by SQL): the device sends again, as for an alarm not arrived yet.
                raise VoiceMemoRefused(
                    "alarm_unknown", "no alarm of this device has that event id (yet)", 409
                )
            memo_id = self._memo(found)
            current = session.get(EvidenceItem, memo_id) if memo_id else None
            admission = MemoAdmission(
                device_id,
                event_id,
                sha256,
                size,
                content_type,
                sent_at,
                signature,
                alarm_id=found.id,
                occurred_at=found.occurred_at,
                wearer=wearer,
                review=review,
            )
            if current is None:
                return admission
            if review is not None:  # one memo kept for review, not a store filled by a lost device
                raise VoiceMemoRefused("disabled_device", "device is disabled", 403)
            if current.status != "quarantined":
                if current.sha256 == sha256:
                    return replace(admission, stored_item=current.id)
                raise VoiceMemoRefused("memo_exists", "this alarm already has a different voice memo", 409)
            # The alarm's memo was quarantined (its bytes were damaged on the way, say): a new copy is
            # welcome, signed after the one it replaces, so an old request replayed is not one.
            before = _signed_at(session, current.id)
            if before is not None and moment <= parse_time(before):
                raise VoiceMemoRefused(
                    "stale_resend", "a memo sent again must be signed after the quarantined one", 409
                )
            return replace(admission, replaces=current.id)

    def _raised_from(self, session: Session, row: AlarmRecord, device_id: str, event_id: str) -> bool:
        """Whether the service vouches ``row`` is the alarm the device raised by ``event_id``
        (``alarms.alarm_keys``): a row holding it by SQL would take the device's memo, and the
        service would record the memo as that row's."""
        lifecycle = self.lifecycle
        return raised_from(session, lifecycle.seal_secret, lifecycle.custody_public, row, event_id, device_id)

    def _memo(self, row: AlarmRecord) -> str | None:
        """The alarm's memo item, as far as its seal vouches (it covers the memo): one pointed at by
        SQL neither refuses the device's memo as another nor is handed back as this one."""
        return row.voice_memo_item_id if alarm_sealed(self.lifecycle.seal_secret, row) else None

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
        admission = self.admit(
            device_id,
            event_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            content_type=content_type,
            sent_at=sent_at,
            signature=signature,
            now=now,
        )
        if admission.stored_item is not None:
            return admission.stored_item, False
        item_id, created, _ = self.store(admission, data, now=now)
        return item_id, created

    def store(
        self, admission: MemoAdmission, data: bytes, *, now: datetime | None = None
    ) -> tuple[str, bool, str]:
        """Keep an admitted memo's bytes as evidence; returns (item id, new, status). Bytes that do not
        hash to what the device signed are kept quarantined (never dropped); the device may send again."""
        core = self.core
        a = admission
        now = now or self.clock()
        digest = hashlib.sha256(data).hexdigest()
        reasons = []
        if digest != a.sha256 or len(data) != a.size:
            reasons.append(f"received {len(data)} bytes hashing to {digest}; the device signed {a.sha256}")
        if a.review:
            reasons.append(a.review)
        # Retention runs from the alarm the memo belongs to (the device's signed time, bounded by now).
        keep = timedelta(days=core.settings.retention_days)
        basis = retention_basis(a.occurred_at, now, keep)
        retain_until = basis.retain_until(keep)
        extension = EXTENSIONS.get(a.content_type, "bin")
        # A copy sent again is a new object beside the quarantined one, never over it.
        name = f"{a.event_id}-memo{'-' + secrets.token_hex(4) if a.replaces else ''}.{extension}"
        stored = core.store.put_bytes(
            f"lone-worker/{a.device_id}/{now:%Y/%m/%d}/{name}",
            data,
            retain_until=retain_until,
            content_type=a.content_type,
        )
        if stored.sha256 != digest:
            reasons.append(f"object store holds {stored.sha256}, received {digest}")
        manifest = voice_memo_manifest(a.device_id, a.event_id, a.sha256, a.size, a.content_type, a.sent_at)
        received: dict[str, Any] = {
            "via": "https",
            "received_at": rfc3339(now),
            "sha256": digest,
            "bytes": len(data),
        }
        if a.replaces:
            received["resent_for"] = [a.replaces]
        with core.db.session() as session:
            row = session.get(AlarmRecord, a.alarm_id, with_for_update=True)
            if row is None or not self._raised_from(session, row, a.device_id, a.event_id):  # changed since
                raise VoiceMemoRefused(
                    "alarm_unknown", "no alarm of this device has that event id (yet)", 409
                )
            memo_id = self._memo(row)
            if memo_id != a.replaces:  # a concurrent upload won
                assert memo_id is not None
                winner = session.get(EvidenceItem, memo_id)
                return memo_id, False, winner.status if winner else "stored"
            self.lifecycle.vouch_raise(session, row, now)  # its payload item as the service sealed it
            if row.provisional:  # custody shows the raise before anything added to it
                self.lifecycle.make_whole(session, row, datetime.now(UTC))
            sealed = self.lifecycle.sealed(row)  # a row moved by SQL stays unsealed, memo and all
            item = record_evidence(
                session,
                core.ledger,
                stored,
                Provenance(
                    kind="voice_memo",
                    actor=f"device:{a.device_id}",
                    source_device_id=a.device_id,
                    # The alarm's wearer (its device's when it raised it), not whoever holds the
                    # device now: a memo sent after a re-enrolment is still the alarm's.
                    wearer=row.wearer if sealed else a.wearer,
                    captured_start=row.occurred_at,
                    filename=name,
                    content_type=a.content_type,
                    retain_until=retain_until,
                    retention_basis=basis,
                    site=row.site if sealed else None,
                ),
                captured={
                    "device": a.device_id,
                    "event_id": a.event_id,
                    "alarm_id": row.id,
                    "manifest": _as_dict(manifest),
                    "device_signature": a.signature,
                },
                received=received,
                quarantine_reason="; ".join(reasons) or None,
                for_review=review_only(reasons, (a.review,) if a.review else ()),
                verified={"device_signature_valid": True, "sha256_matches": not reasons},
            )
            row.voice_memo_item_id = item.id
            if sealed:
                self.lifecycle.seal(row)
            row.updated_at = now
            details: dict[str, Any] = {"alarm_id": row.id, "voice_memo": item.id, "sha256": digest}
            if a.replaces:
                details["replaces"] = a.replaces
            core.ledger.append(
                session,
                CustodyAction.ALARM_CHANGED,
                f"device:{a.device_id}",
                item_id=row.evidence_item_id,
                details=details,
                at=now,
            )
            self.lifecycle.links.link(session, row, item.id, "voice memo", sealed)
            record_change(session, row, "voice_memo", now)
            item_id, status = item.id, item.status
        if reasons:
            log.warning(
                "voice memo quarantined",
                extra={"device": a.device_id, "item": item_id, "reason": "; ".join(reasons)},
            )
        return item_id, True, status


def _signed_at(session: Session, item_id: str) -> str | None:
    """The ``sent_at`` a stored memo's device signed (from its ``captured`` custody entry)."""
    details = session.scalar(
        select(CustodyEntry.details).where(
            CustodyEntry.item_id == item_id, CustodyEntry.action == CustodyAction.CAPTURED.value
        )
    )
    if details is None:
        return None
    sent = json.loads(details).get("manifest", {}).get("sent_at")
    return sent if isinstance(sent, str) else None


def _as_dict(manifest: bytes) -> dict[str, Any]:
    return dict(json.loads(manifest))
