"""Receipt seals for the device messages stored before them (migration 0045): ``evidence
upgrade-seals`` (its ``seal-receipts`` step).

Since 0045 each accepted alarm or check-in's row carries ``receipt_seal``, the service's seal over
its receipt under the key then in force (``raise_seals.receipt_seal``), and a key replaced at
re-enrolment vouches only for the messages whose receipt it sealed (``raise_seals.message_key``).
Rows stored before have none, so once their device was enrolled again none of them held: its
genuine SOS shown as not its word, a provisional alarm's payload refused when made whole.

The step seals, once, the receipt of each row without a receipt seal whose stored bytes are the
device's message as it signed it with a key its custody record says it had, chosen by the rule
that held before 0045: its key now (its row's seal holding), the latest its enrolments record, or
a key since replaced for a message dated (``sent_at`` and ``occurred_at``) before the enrolment
that replaced it (:func:`dated_before`). A row whose bytes no such key signed is listed as refused.

Which rows: those without a receipt seal when the step first runs. The migration records no time
(and ``received_at`` is a column SQL can set), but every row the service has stored since 0045 is
sealed at receipt, so a row without one is either stored before or written outside the service;
the old rule is what judged both before 0045. The step's ``receipts_sealed`` custody entry, signed
on the ledger, records that it ran: from then on no row without a receipt seal is sealed (each is
listed as refused), so a message signed with a replaced key and written into the database after
the upgrade, dated whenever its writer likes, is still nobody's word. Tables are read as plain
tables: this sits below ``alarms``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session

from .entries import CustodyAction
from .keys import ServiceKey
from .lifecycle_seals import ENTRY_COLUMNS, entry_holds, warn_of_entry
from .models import CustodyEntry
from .raise_seals import (
    EnrolledKey,
    receipt_holds,
    receipt_seal,
    recorded_device_keys,
    sealed_device_key,
    signed_by,
)
from .row_seals import DEVICE_SEALS

if TYPE_CHECKING:
    from .ledger import Ledger

_EVENTS = table(
    "lone_worker_events", column("event_id"), column("device_id"), column("raw"), column("receipt_seal")
)


def dated_before(raw: bytes, until: datetime) -> bool:
    """Whether a (signed) device message says it was sent, and its event occurred, before ``until``:
    what a key since replaced vouched for before receipt seals. One that gives no time does not."""
    try:
        message = json.loads(bytes(raw))
        times = [datetime.fromisoformat(message[k]) for k in ("sent_at", "occurred_at") if k in message]
        return bool(times) and all(t.tzinfo is not None and t < until for t in times)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError, RecursionError):
        return False


@dataclass(frozen=True)
class UnsealedReceipt:
    """A device message without a receipt seal, as ``evidence upgrade-seals`` lists it: sealed under
    ``key`` (the one its custody record says the device had at its date), unless ``refused``."""

    event_id: str
    device_id: str
    key: str | None
    refused: str | None = None
    seal: str | None = field(default=None, repr=False, compare=False)  # over the bytes it checked

    def line(self) -> str:
        said = f"message {self.event_id} of device {self.device_id}"
        if self.refused:
            return f"{said}: refused: {self.refused}"
        return f"{said}: its receipt sealed under the key {self.key}, in force at its date"


def receipts_upgraded(session: Session, public: bytes) -> int | None:
    """The ``receipts_sealed`` entry that holds (its seq), once the step has run; else None. An
    entry that does not hold is named in a warning and passed over."""
    q = select(*ENTRY_COLUMNS).where(CustodyEntry.action == CustodyAction.RECEIPTS_SEALED.value)
    for entry in session.execute(q.order_by(CustodyEntry.seq)):
        if entry_holds(public, entry):
            return int(entry.seq)
        warn_of_entry(entry.seq)
    return None


def awaiting_receipts(session: Session, public: bytes) -> int:
    """How many rows the step would list: those without a receipt seal, none once it has run."""
    if receipts_upgraded(session, public) is not None:
        return 0
    q = select(func.count()).select_from(_EVENTS).where(_EVENTS.c.receipt_seal.is_(None))
    return int(session.scalar(q) or 0)


def key_at_its_date(
    raw: bytes, event_id: str, device_id: str, current: str | None, keys: list[EnrolledKey]
) -> str | None:
    """The key that vouched for ``raw`` before receipt seals: the device's key now, the latest its
    enrolments record, or one since replaced for a message dated before its replacement."""
    if signed_by(raw, current, device_id, event_id):
        return current
    for enrolled in keys:
        if not signed_by(raw, enrolled.key, device_id, event_id):
            continue
        if enrolled.until is None or dated_before(raw, enrolled.until):
            return enrolled.key
    return None


def received(session: Session, devices_secret: bytes, public: bytes, row: Any) -> bool:
    """Whether a stored event row (``event_id``, ``device_id``, ``raw``, ``device_public_key``,
    ``receipt_seal``) is the service's receipt of its device's message: the seal of its receipt
    holds (``raise_seals.receipt_holds``); or it has none, this step has not run yet (no
    ``receipts_sealed`` entry that holds), and its bytes are the device's message signed with a key
    its custody record says it had at the message's date (:func:`key_at_its_date`: the rule that
    judged rows before receipt seals, as this step does). Any other row (a wrong seal, or none
    since the step ran) was written outside the service: it is not the device's word, and a message
    whose event id it holds was never received. Cheap when the seal holds; the rest is read only
    for a row without one."""
    if receipt_holds(devices_secret, row):
        return True
    if row.receipt_seal is not None or row.raw is None or receipts_upgraded(session, public) is not None:
        return False
    device_id, event_id = str(row.device_id), str(row.event_id)
    current = sealed_device_key(session, devices_secret, device_id)
    keys = recorded_device_keys(session, devices_secret, public, device_id)
    return key_at_its_date(bytes(row.raw), event_id, device_id, current, keys) is not None


def _judged(session: Session, key: ServiceKey) -> list[UnsealedReceipt]:
    e = _EVENTS.c
    rows = session.execute(
        select(e.event_id, e.device_id, e.raw)
        .where(e.receipt_seal.is_(None))
        .order_by(e.device_id, e.event_id)
    ).all()
    if not rows:
        return []
    upgraded = receipts_upgraded(session, key.public_raw)
    if upgraded is not None:
        why = (
            "every message stored before receipt seals had its receipt sealed by the upgrade "
            f"(custody entry #{upgraded}): this one was written outside the service since"
        )
        return [UnsealedReceipt(str(r.event_id), str(r.device_id), None, why) for r in rows]
    secret = key.derived_secret(DEVICE_SEALS)
    known: dict[str, tuple[str | None, list[EnrolledKey]]] = {}
    listed = []
    for row in rows:
        device_id, event_id = str(row.device_id), str(row.event_id)
        if device_id not in known:
            known[device_id] = (
                sealed_device_key(session, secret, device_id),
                recorded_device_keys(session, secret, key.public_raw, device_id),
            )
        raw = None if row.raw is None else bytes(row.raw)
        vouching = None if raw is None else key_at_its_date(raw, event_id, device_id, *known[device_id])
        if raw is None or vouching is None:
            why = (
                "its stored bytes are not the device's message signed with a key its custody record "
                "says it had at the message's date"
            )
            listed.append(UnsealedReceipt(event_id, device_id, None, why))
            continue
        seal = receipt_seal(secret, device_id, event_id, raw, vouching)
        listed.append(UnsealedReceipt(event_id, device_id, vouching, seal=seal))
    return listed


def unsealed_receipts(session: Session, key: ServiceKey) -> list[UnsealedReceipt]:
    """Every row without a receipt seal, with the key the step would seal it under, or why not."""
    return _judged(session, key)


def seal_receipts(
    session: Session, key: ServiceKey, ledger: Ledger, now: datetime | None = None
) -> list[UnsealedReceipt]:
    """Seal the receipts :func:`unsealed_receipts` does not refuse, each under the key it names (a
    row sealed since it was read is left as it is); all it listed. A ``receipts_sealed`` entry
    records that it ran (the first time): from then on no row without a receipt seal is sealed."""
    listed = _judged(session, key)
    if receipts_upgraded(session, key.public_raw) is not None:
        return listed
    e = _EVENTS.c
    for found in listed:
        if found.refused is not None or found.seal is None:
            continue
        session.execute(
            update(_EVENTS)
            .where(e.event_id == found.event_id, e.device_id == found.device_id, e.receipt_seal.is_(None))
            .values(receipt_seal=found.seal)
        )
    sealed = sum(1 for found in listed if found.refused is None)
    details = {"sealed": sealed, "refused": len(listed) - sealed}
    ledger.append(
        session, CustodyAction.RECEIPTS_SEALED, "service", details=details, at=now or datetime.now(UTC)
    )
    return listed
