"""A disabled device stays disabled whatever is written in the database.

A device row's seal (``devices.seals``) covers its status, but a copy of the row taken while the
device was active carries a seal that still fits: whoever can write the database could put it back
and the device's alarms, uploads and clips would be taken again. So every change of status the
service makes (disabling, enabling again, enrolling a disabled device anew) is also a signed
``device_disabled`` or ``device_enabled`` custody entry, in the same transaction, whose subject is
a keyed digest of the device id (``chain_of_custody.row_seals.device_status_subject``); the entries
of one device form its own chain (``item_seq``). The ledger only grows, so the latest of them says
whether the device may speak: every use asks it (:data:`STATUS_ENTRY`, one probe of the index on
``(item_id, item_seq)``), in the statement that loads the device where that matters for time (a
lone-worker message, ``alarms.device_state``), and a device custody says was disabled is refused,
however its row reads.

Devices disabled before these entries were recorded: ``evidence record-access-ends`` lists them
and, with ``--yes``, records them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, bindparam, select
from sqlalchemy.orm import Session

from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import DEVICE_SEALS, DISABLED, ENABLED, device_status_subject

from .models import Device

log = logging.getLogger(__name__)

# The action of a device's latest status entry (``device_disabled``, ``device_enabled``), or NULL:
# a column of the statement that loads the device, bound by ``status_subject``.
STATUS_ENTRY: ScalarSelect[Any] = (
    select(CustodyEntry.action)
    .where(CustodyEntry.item_id == bindparam("status_subject"))
    .order_by(CustodyEntry.item_seq.desc())
    .limit(1)
    .scalar_subquery()
)
_LOOKUP = select(Device, STATUS_ENTRY).where(Device.id == bindparam("device_id"))


def latest_status_entry(session: Session, secret: bytes, device_id: str) -> str | None:
    """The action of the device's latest status entry, if custody holds one."""
    return session.scalar(
        select(CustodyEntry.action)
        .where(CustodyEntry.item_id == device_status_subject(secret, device_id))
        .order_by(CustodyEntry.item_seq.desc())
        .limit(1)
    )


def disabled_on_custody(device_id: str, status: str, latest: str | None) -> bool:
    """Whether a device whose row says ``status`` and whose latest status entry is ``latest`` is
    refused as put back in the database: active in its row, disabled on custody (a warning naming
    the device id)."""
    if status == "active" and latest == DISABLED:
        log.warning("device refused: custody says it was disabled", extra={"device": device_id})
        return True
    return False


def load_device(session: Session, secret: bytes, device_id: str) -> tuple[Device | None, str | None]:
    """The device's row and the action of its latest status entry, in one statement."""
    params = {"device_id": device_id, "status_subject": device_status_subject(secret, device_id)}
    found = session.execute(_LOOKUP, params).first()
    return (None, None) if found is None else (found[0], found[1])


def record_status(session: Session, ledger: Ledger, device: Device, actor: str, *, why: str) -> None:
    """A ``device_disabled`` or ``device_enabled`` entry for the status ``device`` now has, in the
    caller's transaction (the change and its entry commit together)."""
    ledger.append(
        session,
        DISABLED if device.status == "disabled" else ENABLED,
        actor,
        item_id=device_status_subject(ledger.key.derived_secret(DEVICE_SEALS), device.id),
        details={"device": device.id, "status": device.status, "why": why},
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
    """Record every disable :func:`unrecorded_disables` lists; how many."""
    listed = unrecorded_disables(session, secret)
    for found in listed:
        ledger.append(
            session,
            DISABLED,
            actor,
            item_id=device_status_subject(secret, found.device_id),
            details={
                "device": found.device_id,
                "status": "disabled",
                "why": "disabled before it was recorded",
            },
        )
    return len(listed)
