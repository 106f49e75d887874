"""What the alarm side watches of a lone-worker device (its low battery, its visit), as its state
row's seal vouches for it (``chain_of_custody.watched_seals``): written sealed, and read through
:func:`vouch`, which puts a row whose seal does not hold back to what the device's alarms and
visits say, with a warning naming the device."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from chain_of_custody.watched_seals import watched_holds, watched_seal
from devices.models import LoneWorkerState

from .models import AlarmRecord, LoneWorkerVisit

log = logging.getLogger(__name__)


def set_watched(session: Session, secret: bytes, snap: Any, **values: Any) -> None:
    """Write ``battery_low`` and/or ``active_visit_id`` of the device ``snap`` (a snapshot or a
    state row) and the seal over both, in one statement; ``snap`` takes them too."""
    for name, value in values.items():
        setattr(snap, name, value)
    seal = watched_seal(secret, snap.device_id, bool(snap.battery_low), snap.active_visit_id)
    snap.watched_seal = seal
    session.execute(
        update(LoneWorkerState)
        .where(LoneWorkerState.device_id == snap.device_id)
        .values(**values, watched_seal=seal)
    )


def vouch(session: Session, secret: bytes, snap: Any) -> None:
    """Take a device's watched values as its row's seal vouches for them: as they stand when it
    holds (no statement), else put back to what its alarms and visits say (see the module)."""
    if watched_holds(secret, snap.device_id, bool(snap.battery_low), snap.active_visit_id, snap.watched_seal):
        return
    a, v = AlarmRecord, LoneWorkerVisit
    low = session.scalar(
        select(
            exists().where(
                a.device_id == snap.device_id,
                a.kind == "low_battery",
                a.status != "resolved",
                a.condition_cleared_at.is_(None),
            )
        )
    )
    visit = session.scalar(
        select(v.visit_id)
        .where(v.device_id == snap.device_id, v.ended_at.is_(None))
        .order_by(v.started_at.desc())
        .limit(1)
    )
    log.warning(
        "a device's low-battery flag or visit is not as the service sealed it: put back to its alarms and visits",
        extra={
            "device": snap.device_id,
            "found": {"battery_low": snap.battery_low, "visit": snap.active_visit_id},
        },
    )
    set_watched(session, secret, snap, battery_low=bool(low), active_visit_id=visit)
