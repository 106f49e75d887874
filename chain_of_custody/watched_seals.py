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
(:func:`recorded_watch`, read by ``alarms.watched``): low while the device has a low-battery alarm
open whose condition has not cleared, and on the latest of its visits that has not ended and whose
own seal holds (``visit_seals``: a visit row written by SQL lends the device nothing), put back,
sealed, with a warning naming the device; ``evidence verify`` names it (``device_watch_altered``).

Rows written low or on a visit before this have no seal: such a row is taken as it stands while its
records bear it out (and put back to them, as above, once they do not), and ``evidence
upgrade-seals`` (its ``seal-watched`` step) seals those they bear out, listing the others as
refused with what differs. Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, select, table, update
from sqlalchemy.orm import Session

from .entries import ChainReport, Problem, report_unsealed
from .keys import ServiceKey
from .lifecycle_seals import ALARM_LIFECYCLES, lifecycle_holds
from .reach_seals import reach_secret
from .row_seals import _holds, row_seal
from .visit_seals import _COLUMNS as _VISIT_COLUMNS
from .visit_seals import _VISITS, visit_holds

_STATES = table(
    "lone_worker_states",
    column("device_id"),
    column("battery_low"),
    column("active_visit_id"),
    column("watched_seal"),
)
_ALARMS = ALARM_LIFECYCLES  # what a low-battery alarm's lifecycle seal covers


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
    older = 0
    for row in session.execute(q):
        found = (bool(row.battery_low), row.active_visit_id)
        if watched_holds(secret, str(row.device_id), *found, row.watched_seal):
            continue
        if (
            row.watched_seal is None
            and borne_out(found, recorded_watch(session, secret, str(row.device_id))) is None
        ):
            older += 1
        else:
            report.problems.append(_finding(row))
    report_unsealed(
        report,
        older,
        "device(s) were written low on battery or on a visit before that was sealed (their alarms and "
        "visits bear it out): `evidence upgrade-seals` seals them",
    )


def _finding(row: Any) -> Problem:
    return Problem(
        "device_watch_altered",
        f"device {row.device_id}",
        "its low-battery flag or its visit is not as the service sealed it (written by someone other "
        "than the service: it is taken at the device's open alarms and visits)",
    )


def recorded_watch(session: Session, secret: bytes, device_id: str) -> tuple[bool, str | None]:
    """What a device's records say of it: whether a low-battery alarm of it whose lifecycle seal
    holds is open and its condition not cleared (one planted or edited in the database says
    nothing), and the latest of its visits not ended whose own seal holds (None: none)."""
    a, v = _ALARMS.c, _VISITS.c
    open_low = select(_ALARMS).where(
        a.device_id == device_id,
        a.kind == "low_battery",
        a.status != "resolved",
        a.condition_cleared_at.is_(None),
    )
    low = any(lifecycle_holds(secret, row) for row in session.execute(open_low))
    q = (
        select(*_VISIT_COLUMNS)
        .where(v.device_id == device_id, v.ended_at.is_(None))
        .order_by(v.started_at.desc())
    )
    visit = next((row.visit_id for row in session.execute(q) if visit_holds(secret, row, row.seal)), None)
    return low, visit


def borne_out(found: tuple[bool, str | None], recorded: tuple[bool, str | None]) -> str | None:
    """What differs between a row's watched values and its records' (None: they agree)."""
    said = []
    if found[0] != recorded[0]:
        said.append(f"its battery is {'low' if found[0] else 'not low'}, its alarms say otherwise")
    if found[1] != recorded[1]:
        said.append(f"it is on visit {found[1]!r}, its visits say {recorded[1]!r}")
    return "; ".join(said) or None


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedWatch:
    """A device's state row written low or on a visit before seals, as ``evidence upgrade-seals``
    lists it: sealed when its records bear it out, else ``refused`` with what differs."""

    device_id: str
    battery_low: bool
    visit: str | None
    refused: str | None = None

    def line(self) -> str:
        state = f"{'low' if self.battery_low else 'not low'}, visit {self.visit or 'none'}"
        if self.refused:
            return f"device {self.device_id} ({state}): refused: {self.refused} (put back to them when next read)"
        return f"device {self.device_id} ({state}): borne out by its alarms and visits"


def older_watched(session: Session) -> list[Any]:
    """The state rows without a seal that need one: low, or on a visit (what the upgrade lists)."""
    s = _STATES.c
    unsealed = s.watched_seal.is_(None) & (s.battery_low.is_(True) | s.active_visit_id.is_not(None))
    return list(session.execute(select(_STATES).where(unsealed).order_by(s.device_id)))


def unsealed_watched(session: Session, key: ServiceKey) -> list[UnsealedWatch]:
    """Every row :func:`older_watched` lists, those their records do not bear out refused."""
    secret = reach_secret(key)
    out = []
    for row in older_watched(session):
        found = (bool(row.battery_low), row.active_visit_id)
        why = borne_out(found, recorded_watch(session, secret, str(row.device_id)))
        out.append(UnsealedWatch(str(row.device_id), found[0], found[1], why))
    return out


def seal_watched(session: Session, key: ServiceKey) -> list[UnsealedWatch]:
    """Seal the rows :func:`unsealed_watched` does not refuse, as they stand (a row changed since it
    was read keeps none); all it listed."""
    secret, s = reach_secret(key), _STATES.c
    listed = unsealed_watched(session, key)
    for row in listed:
        if row.refused is None:
            same = s.active_visit_id.is_(None) if row.visit is None else s.active_visit_id == row.visit
            session.execute(
                update(_STATES)
                .where(
                    s.device_id == row.device_id,
                    s.watched_seal.is_(None),
                    s.battery_low == row.battery_low,
                    same,
                )
                .values(watched_seal=watched_seal(secret, row.device_id, row.battery_low, row.visit))
            )
    return listed
