"""A disabled device stays disabled whatever is written in the database.

A device row's seal (``devices.seals``) covers its status and is bound to the latest custody entry
on the device's keyed subject (``chain_of_custody.row_seals.device_subject``), so a copy of the row
taken while the device was active no longer fits once it is disabled: every change of status the
service makes (disabling, enabling again, enrolling a disabled device anew) is a signed
``device_disabled`` or ``device_enabled`` custody entry on that subject, in the same transaction,
and the row is sealed bound to it (``devices.seals.record_device``). The ledger only grows: every
use reads the seq of the device's latest entry (:data:`LATEST_ENTRY`, one probe of the index on
``(item_id, item_seq)``) in the statement that loads the device (:data:`_LOOKUP`; a lone-worker
message's, ``alarms.device_state``), and a row whose seal is bound to another is refused, however
it reads. ``evidence verify`` names an active row custody last disabled
(``device_disable_undone``).

Devices disabled before these entries were recorded: ``evidence record-access-ends`` lists them
and, with ``--yes``, records them (and seals each row whose seal holds again, bound to its entry).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, bindparam, select
from sqlalchemy.orm import Session

from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import DISABLED, ENABLED, device_subject

from .models import Device
from .seals import device_seal_holds, record_device, sealed_values

log = logging.getLogger(__name__)

_STATUS = (DISABLED.value, ENABLED.value)

# The seq of a device's latest custody entry (what its seal is bound to), or NULL: a column of the
# statement that loads the device, bound by ``device_subject``.
LATEST_ENTRY: ScalarSelect[Any] = (
    select(CustodyEntry.seq)
    .where(CustodyEntry.item_id == bindparam("device_subject"))
    .order_by(CustodyEntry.item_seq.desc())
    .limit(1)
    .scalar_subquery()
)
_LOOKUP = select(Device, LATEST_ENTRY).where(Device.id == bindparam("device_id"))


def latest_status_entry(session: Session, secret: bytes, device_id: str) -> str | None:
    """The action of the device's latest status entry (``device_disabled``, ``device_enabled``), if
    custody holds one."""
    return session.scalar(
        select(CustodyEntry.action)
        .where(CustodyEntry.item_id == device_subject(secret, device_id), CustodyEntry.action.in_(_STATUS))
        .order_by(CustodyEntry.item_seq.desc())
        .limit(1)
    )


def load_device(session: Session, secret: bytes, device_id: str) -> tuple[Device | None, int | None]:
    """The device's row and the seq of its latest custody entry (what its seal must be bound to),
    in one statement."""
    params = {"device_id": device_id, "device_subject": device_subject(secret, device_id)}
    found = session.execute(_LOOKUP, params).first()
    return (None, None) if found is None else (found[0], found[1])


def sealed_device(session: Session, secret: bytes, device_id: str) -> Device | None:
    """The device's row if its seal holds for its latest custody entry (read in the same statement,
    :func:`load_device`), else None: a row altered or planted in the database, or an older copy put
    back, speaks for nobody, and lends nothing (a site, a wearer, a key) to what the service does
    on its own account (a timer's alarm, an upload's end). A warning names the device."""
    device, bound = load_device(session, secret, device_id)
    if device is None or not device_seal_holds(secret, sealed_values(device), device.seal, bound):
        return None
    return device


def record_status(session: Session, ledger: Ledger, device: Device, actor: str, *, why: str) -> None:
    """A ``device_disabled`` or ``device_enabled`` entry for the status ``device`` now has, in the
    caller's transaction (the change and its entry commit together), and the row sealed bound to it."""
    record_device(
        session,
        ledger,
        device,
        DISABLED if device.status == "disabled" else ENABLED,
        actor,
        {"device": device.id, "status": device.status, "why": why},
    )


@dataclass(frozen=True)
class UnrecordedDisable:
    """A disabled device whose latest status entry does not say so (disabled before they were kept)."""

    device_id: str
    kind: str

    def line(self) -> str:
        return f"{self.kind} {self.device_id}, disabled"


def unrecorded_disables(session: Session, secret: bytes) -> list[UnrecordedDisable]:
    """The disabled devices that would speak again if their row were put back active: their latest
    status entry is none or ``device_enabled``."""
    rows = session.execute(
        select(Device.id, Device.kind).where(Device.status == "disabled").order_by(Device.id)
    ).all()
    return [
        UnrecordedDisable(device_id, kind)
        for device_id, kind in rows
        if latest_status_entry(session, secret, device_id) != DISABLED
    ]


def record_unrecorded_disables(session: Session, ledger: Ledger, secret: bytes, actor: str) -> int:
    """Record every disable :func:`unrecorded_disables` lists; how many. A row whose seal holds is
    sealed again bound to its entry; one whose seal does not hold is left as it is (refused)."""
    listed = unrecorded_disables(session, secret)
    for found in listed:
        device, bound = load_device(session, secret, found.device_id)
        assert device is not None
        details: dict[str, object] = {
            "device": found.device_id,
            "status": "disabled",
            "why": "disabled before it was recorded",
        }
        if device_seal_holds(secret, sealed_values(device), device.seal, bound):
            record_device(session, ledger, device, DISABLED, actor, details)
        else:
            ledger.append(
                session, DISABLED, actor, item_id=device_subject(secret, found.device_id), details=details
            )
    return len(listed)
