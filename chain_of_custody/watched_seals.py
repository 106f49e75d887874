"""Seals on what the alarm side watches of a lone-worker device: its low battery and its visit.

``lone_worker_states.battery_low`` says a low-battery alarm was raised for the device and its
battery has not recovered since: set by SQL, the device's next low reading raised nothing (a
failing device hidden); cleared, the console showed a device low on battery as fine.
``active_visit_id`` names the visit the device is on: changed by SQL, a silent device's offline
alarm named another visit, and the visit's end no longer cleared it. So every write of either also
writes ``watched_seal``, in the same statement: an HMAC-SHA256 under the reach secret over the
device's id and both values (:func:`watched_seal`). A row as the service inserts it (not low, on
no visit) needs none.

A row whose seal does not hold is taken at what the records the service keeps otherwise say
(``alarms.watched``): low while the device has a low-battery alarm open whose condition has not
cleared, and on the visit of its (sealed) visit rows that has not ended, put back, sealed, with a
warning naming the device; ``evidence verify`` names it (``device_watch_altered``). Tables are
read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from .entries import ChainReport, Problem
from .keys import ServiceKey
from .reach_seals import reach_secret
from .row_seals import _holds, row_seal

_STATES = table(
    "lone_worker_states",
    column("device_id"),
    column("battery_low"),
    column("active_visit_id"),
    column("watched_seal"),
)


def watched_seal(secret: bytes, device_id: str, battery_low: bool, active_visit_id: str | None) -> str:
    """The seal of what the alarm side watches of a device: its id, whether its battery is low and
    the visit it is on, hex."""
    return row_seal(secret, ("watched", device_id, "low" if battery_low else "ok", active_visit_id))


def watched_holds(
    secret: bytes, device_id: str, battery_low: bool, active_visit_id: str | None, seal: str | None
) -> bool:
    """Whether a state row's watched values are as the service wrote them (a row as inserted, not
    low and on no visit, needs no seal)."""
    if seal is None:
        return not battery_low and active_visit_id is None
    return _holds(watched_seal(secret, device_id, battery_low, active_visit_id), seal)


def check_watched_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each device whose low-battery flag or visit is not as the service sealed it."""
    secret, s = reach_secret(key), _STATES.c
    q = select(s.device_id, s.battery_low, s.active_visit_id, s.watched_seal).order_by(s.device_id)
    for row in session.execute(q):
        if not watched_holds(
            secret, str(row.device_id), bool(row.battery_low), row.active_visit_id, row.watched_seal
        ):
            report.problems.append(_finding(row))


def _finding(row: Any) -> Problem:
    return Problem(
        "device_watch_altered",
        f"device {row.device_id}",
        "its low-battery flag or its visit is not as the service sealed it (written by someone other "
        "than the service: it is taken at the device's open alarms and visits)",
    )
