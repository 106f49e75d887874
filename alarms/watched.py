"""What the alarm side watches of a lone-worker device (its low battery, its visit), as its state
row's seal vouches for it (``chain_of_custody.watched_seals``): written sealed, and read through
:func:`vouch`, which puts a row whose seal does not hold back to what the device's alarms and
visits say (a visit only when its own seal holds), with a warning naming the device; a row written
before seals is taken as it stands while they bear it out."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from chain_of_custody.watched_seals import borne_out, recorded_watch, watched_holds, watched_seal
from devices.models import LoneWorkerState

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
    holds (no statement), or, for a row written before seals, while its alarms and visits bear
    them out; else put back to what those say (see the module)."""
    found = (bool(snap.battery_low), snap.active_visit_id)
    if watched_holds(secret, snap.device_id, *found, snap.watched_seal):
        return
    low, visit = recorded = recorded_watch(session, secret, snap.device_id)
    if snap.watched_seal is None and borne_out(found, recorded) is None:
        return  # written before seals: taken as it stands until ``seal-watched`` seals it
    log.warning(
        "a device's low-battery flag or visit is not as the service sealed it: put back to its alarms and visits",
        extra={
            "device": snap.device_id,
            "found": {"battery_low": snap.battery_low, "visit": snap.active_visit_id},
        },
    )
    set_watched(session, secret, snap, battery_low=low, active_visit_id=visit)
