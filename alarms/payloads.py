"""The exact bytes of a device's alarm message, kept as a locked evidence item.

A payload is stored when its alarm is whole: at once for an alarm taken the whole way, by the
making a provisional one whole, or later when object storage was down at the time (the bytes wait
in the event row; :meth:`PayloadEvidence.store_deferred`). The evidence item names the device key
the signature was verified with when the message was accepted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import rfc3339
from chain_of_custody.core import CoreServices
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.keys import raw_public_key
from chain_of_custody.models import EvidenceItem
from chain_of_custody.raise_seals import message_key, raise_holds
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.retention_basis import RetentionBasis, retention_basis
from devices.ends import sealed_device
from devices.seals import device_seal_key
from storage.objects import StorageError, StoredObject

from .models import AlarmRecord, LoneWorkerEvent
from .pages import DevicesWord, in_pages
from .reach import device_items

log = logging.getLogger(__name__)

EVIDENCE_DEFERRED = Counter(
    "evidence_alarm_evidence_deferred_total", "Alarm payloads whose evidence object was stored later"
)


def object_key(event: LoneWorkerEvent) -> str:
    return f"lone-worker/{event.device_id}/{event.received_at:%Y/%m/%d}/{event.event_id}.json"


def raise_named(raw: bytes, event_id: str) -> str | None:
    """The event id of the raise a (checked) alarm message is or cancels: its own for a raise, the
    one it names for a cancel; None for anything else."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeError, RecursionError):
        return None
    body = message.get("alarm") if isinstance(message, dict) else None
    action = body.get("action") if isinstance(body, dict) else None
    if action == "raise":
        return event_id
    ref = body.get("ref_event_id") if isinstance(body, dict) and action == "cancel" else None
    return ref if isinstance(ref, str) else None


class PayloadEvidence:
    """Puts payloads into locked storage and records them as evidence items."""

    def __init__(self, core: CoreServices) -> None:
        self.core = core
        self.device_secret = device_seal_key(core.key)  # device rows' seals (``devices.seals``)
        self.reach_secret = reach_secret(core.key)  # evidence items' reach seals

    def basis(self, event: LoneWorkerEvent) -> RetentionBasis:
        """Retention runs from when the device says the alarm happened (signed), bounded by its arrival."""
        keep = timedelta(days=self.core.settings.retention_days)
        return retention_basis(event.occurred_at, event.received_at, keep)

    def retain_until(self, event: LoneWorkerEvent) -> datetime:
        return self.basis(event).retain_until(timedelta(days=self.core.settings.retention_days))

    def put(self, event: LoneWorkerEvent) -> StoredObject | None:
        """The exact bytes received, into locked storage; None (evidence deferred) while storage is down."""
        try:
            return self.core.store.put_bytes(
                object_key(event),
                event.raw,
                retain_until=self.retain_until(event),
                content_type="application/json",
            )
        except StorageError as exc:
            EVIDENCE_DEFERRED.inc()
            log.warning(
                "alarm evidence deferred: object storage unavailable",
                extra={"device": event.device_id, "event_id": event.event_id, "error": str(exc)},
            )
            return None

    def record(
        self,
        session: Session,
        event: LoneWorkerEvent,
        stored: StoredObject,
        wearer: str | None,
        signature: str | None,
        public_key: bytes | None,
        site: str | None = None,
    ) -> EvidenceItem:
        """The evidence item of a stored payload, with its custody entries, kept with ``site``: the
        site its alarm was raised at as the service sealed it (None: its reach follows its device)."""
        quarantine = None
        if stored.sha256 != event.sha256 or stored.size != len(event.raw):
            quarantine = f"object store holds {stored.sha256} ({stored.size} bytes), received {event.sha256}"
        return record_evidence(
            session,
            self.core.ledger,
            stored,
            Provenance(
                kind="alarm",
                actor=f"device:{event.device_id}",
                source_device_id=event.device_id,
                wearer=wearer,
                captured_start=event.occurred_at,
                captured_stop=event.occurred_at,
                filename=f"{event.event_id}.json",
                content_type="application/json",
                retain_until=self.retain_until(event),
                retention_basis=self.basis(event),
                site=site,
            ),
            captured={
                "device": event.device_id,
                "event_id": event.event_id,
                "type": event.type,
                "action": event.action,
                "kind": event.kind,
                "seq": event.seq,
                "occurred_at": rfc3339(event.occurred_at),
                "sent_at": rfc3339(event.sent_at),
                "device_signature": signature,
                "device_public_key": base64.b64encode(public_key).decode() if public_key else None,
            },
            received={
                "via": "mqtt",
                "topic": event.topic,
                "received_at": rfc3339(event.received_at),
                "sha256": event.sha256,
                "bytes": len(event.raw),
                "late": event.late,
            },
            quarantine_reason=quarantine,
            verified={"device_signature_valid": True, "sequence_fresh": True},
        )

    def record_later(
        self,
        session: Session,
        event: LoneWorkerEvent,
        stored: StoredObject,
        wearer: str | None,
        key_b64: str | None,
        site: str | None = None,
    ) -> EvidenceItem:
        """The evidence item of a payload stored after its message was handled, from the event row: the
        bytes, and ``key_b64``, the key that vouched for them when they were checked before storing
        (:meth:`vouched`: the key the service sealed their receipt under, or a key of the device's
        as the service sealed its row or recorded its enrolment), never the row's unsealed
        ``device_public_key`` as it stands (a key written there by SQL, one the device never had, would
        be named by a signed custody entry as the key its signature was verified with). Its wearer,
        when ``wearer`` is None, comes only from a device row whose seal holds
        (``devices.ends.sealed_device``): a row altered in the database lends none (a warning names
        the device)."""
        if wearer is None:
            device = sealed_device(session, self.device_secret, event.device_id)
            wearer = device.assigned_staff_id if device is not None else None
        signature = json.loads(event.raw).get("sig")
        public_key = raw_public_key(key_b64) if key_b64 else None
        return self.record(session, event, stored, wearer, signature, public_key, site)

    def vouched(self, session: Session, event: LoneWorkerEvent) -> str | None:
        """The key (base64) that vouches for the event's stored bytes as its device signed them
        (``raise_seals.message_key``: the key its receipt was sealed under, else its device's as
        sealed or enrolled), or None for bytes that are not (a warning names the event)."""
        return message_key(
            session,
            self.device_secret,
            self.core.key.public_raw,
            event.device_id,
            event.event_id,
            event.raw,
            (event.device_public_key, event.receipt_seal),
        )

    def own_item(self, session: Session, event: LoneWorkerEvent) -> str | None:
        """The item the event row names as its payload (``evidence_item_id``), when it is its
        device's item (``alarms.reach.device_items``) of the event's own bytes: the column is no
        seal's, and an item pointed at by SQL (another wearer's clip, another alarm's payload) is
        neither taken as the payload nor linked into an incident (a warning names it)."""
        if event.evidence_item_id is None:
            return None
        own = device_items(session, self.reach_secret, event.device_id, [event.evidence_item_id])
        item = session.get(EvidenceItem, own[0]) if own else None
        if item is None or item.sha256 != hashlib.sha256(bytes(event.raw)).hexdigest():
            log.warning(
                "a device message's payload item is not its device's record of its bytes: not taken",
                extra={"device": event.device_id, "event_id": event.event_id, "item": event.evidence_item_id},
            )
            return None
        return item.id

    def deferred(self, now: datetime, limit: int) -> list[str]:
        """Alarm events whose payload is not evidence yet and will not be stored by making a
        provisional alarm whole, oldest first: only rows that are their devices' word
        (``alarms.pages.DevicesWord``; each is judged again as it is fetched), judged before any is
        counted, so rows written in the database with early receipt times, passed over each time,
        never keep the devices' payloads from being stored. An event whose alarm is provisional is
        left to its making whole, which stores its own, only when the alarm's raise seal (over the
        flag) holds: a whole alarm set provisional by SQL kept its payload from being stored."""
        e = LoneWorkerEvent
        provisional = (
            select(AlarmRecord.id)
            .where(AlarmRecord.id == e.alarm_id, AlarmRecord.provisional.is_(True))
            .exists()
            .label("provisional")
        )
        q = select(
            e.received_at, e.event_id, e.device_id, e.raw, e.device_public_key, e.receipt_seal, e.alarm_id
        ).where(e.type == "alarm", e.evidence_item_id.is_(None), e.received_at <= now - timedelta(seconds=2))
        q = q.add_columns(provisional)
        out: list[str] = []
        with self.core.db.session() as session:
            devices_word = DevicesWord(session, self.device_secret, self.core.key.public_raw)
            for row in in_pages(session, q, e.received_at, e.event_id):
                if row.provisional and self._held_provisional(session, row.alarm_id):
                    continue
                if devices_word(row):
                    out.append(row.event_id)
                    if len(out) == limit:
                        break
        return out

    def _held_provisional(self, session: Session, alarm_id: str) -> bool:
        """Whether the service holds the alarm provisional: its raise seal holds (one seal check, for
        the few events of an alarm whose row says provisional). One that does not hold is stored
        now, and the alarm put back by its raise's record as the payload is attached."""
        row = session.get(AlarmRecord, alarm_id)
        return row is not None and row.raise_seal is not None and raise_holds(self.reach_secret, row)

    def fetch_for_storing(self, event_id: str) -> tuple[str, bytes, datetime, str] | None:
        """(object key, bytes, retain until, the key that vouches for them) of an event still
        waiting for its evidence item, when its bytes are as the device signed them
        (:meth:`vouched`: bytes edited in the database are not stored, and a warning names them
        each time they are passed over)."""
        with self.core.db.session() as session:
            event = session.get(LoneWorkerEvent, event_id)
            if event is None or event.evidence_item_id is not None:
                return None
            key_b64 = self.vouched(session, event)
            if key_b64 is None:
                return None
            return object_key(event), bytes(event.raw), self.retain_until(event), key_b64
