"""Seals on lone visits over what a missed check-in takes from them: whose alarm it is.

A visit's missed check-in raises an alarm that takes the visit's wearer, and the service then seals
that wearer into the alarm (``alarm_seals``): the wearer decides whose alarm it is, whose footage
joins its incident and, through them, which site's manager follows it. A visit's end clears the
alarm its row names as its missed check-in. So the service records each check-in of a visit on the
custody ledger (``visit_changed``, with the wearer) and seals the row, an HMAC-SHA256 under the
reach secret over the device, the visit's id, its wearer and its missed check-in alarm; a visit
whose seal does not hold lends no wearer to its missed check-in (the alarm is still raised, with
no wearer and a note why) and clears no alarm, and ``evidence verify`` names it.

Visits opened before seals have none: ``evidence upgrade-seals`` (its ``seal-visits`` step) seals
those whose wearer is the member of staff the custody ledger last assigned to their device and
whose missed check-in alarm, if they name one, is one the ledger records as their device's missed
check-in and no other visit names, and records them on the ledger. Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session

from .entries import ChainReport, CustodyAction, Problem, SignedEntry
from .keys import ServiceKey
from .ledger import Ledger
from .reach_seals import reach_secret
from .registry_replay import Recorded, alarm_replay, device_replay
from .row_replay import _details
from .row_seals import _holds, row_seal, seal_verdict

log = logging.getLogger(__name__)

_VISITS = table(
    "lone_worker_visits",
    column("device_id"),
    column("visit_id"),
    column("wearer"),
    column("missed_alarm_id"),
    column("seal"),
)


def visit_seal(
    secret: bytes, device: str, visit_id: str, wearer: str | None, missed_alarm: str | None
) -> str:
    """The seal of a visit row over whose missed check-in it raises and which alarm its end clears:
    its device, id, wearer and missed check-in alarm, hex."""
    return row_seal(secret, ("visit", device, visit_id, wearer, missed_alarm))


def visit_holds(
    secret: bytes, device: str, visit_id: str, wearer: str | None, missed_alarm: str | None, seal: str | None
) -> bool:
    """Whether a visit row's seal holds; a warning naming the visit when it does not."""
    expected = visit_seal(secret, device, visit_id, wearer, missed_alarm)
    return seal_verdict(expected, seal, log, "visit", {"device": device, "visit": visit_id})


def visit_name(device: str, visit_id: str) -> str:
    """How findings and lists name a visit: its id is the device's own, so with the device."""
    return f"visit {visit_id} of device {device}"


def visit_entry(device: str, visit_id: str, wearer: str | None, vouched: bool, **more: Any) -> dict[str, Any]:
    """The details of a visit's ``visit_changed`` entry: its wearer only when its row vouches for one
    (a visit whose seal does not hold has its wearer from nobody the ledger knows)."""
    details: dict[str, Any] = {"visit": visit_id, "device": device, **more}
    if vouched:
        details["wearer"] = wearer
    else:
        details["unsealed"] = True
    return details


def visit_replay(entries: Iterable[SignedEntry]) -> Recorded:
    """What the ledger says of each visit (keyed ``device/visit``): the wearer its latest entry that
    records one gives it."""
    out: Recorded = {}
    for e in entries:
        if e.body.action != CustodyAction.VISIT_CHANGED.value:
            continue
        d = _details(e)
        device, visit = d.get("device"), d.get("visit")
        if isinstance(device, str) and isinstance(visit, str) and "wearer" in d:
            out[f"{device}/{visit}"] = {"wearer": (e.body.seq, d["wearer"])}
    return out


# -- evidence verify ------------------------------------------------------------------------------


def check_visit_seals(
    session: Session, report: ChainReport, key: ServiceKey, entries: Sequence[SignedEntry]
) -> None:
    """A finding for each visit whose seal is wrong, and for each whose wearer is not the one its
    latest custody entry records; a note counting the visits not sealed yet."""
    secret = reach_secret(key)
    recorded = visit_replay(entries)
    v = _VISITS.c
    unsealed = 0
    q = select(v.device_id, v.visit_id, v.wearer, v.missed_alarm_id, v.seal).order_by(v.device_id, v.visit_id)
    for device, visit_id, wearer, missed, seal in session.execute(q):
        where = visit_name(device, visit_id)
        if not seal:
            unsealed += 1
        elif not _holds(visit_seal(secret, device, visit_id, wearer, missed), seal):
            report.problems.append(
                Problem(
                    "visit_seal_broken",
                    where,
                    "its row's seal does not hold: its wearer or missed check-in alarm was written by "
                    "someone other than the service (its missed check-in takes no wearer from it)",
                )
            )
        seq, said = recorded.get(f"{device}/{visit_id}", {}).get("wearer", (None, wearer))
        if said != wearer:
            report.problems.append(
                Problem(
                    "visit_wearer_altered",
                    where,
                    f"its wearer is {wearer!r} in the database but {said!r} in custody entry #{seq}",
                )
            )
    if unsealed:
        report.notes.append(
            f"{unsealed} visit(s) have no seal yet (opened before seals), so a missed check-in takes no "
            "wearer from them: `evidence upgrade-seals` seals those the custody record bears out"
        )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedVisit:
    """A visit without a seal, as ``evidence upgrade-seals`` lists it, with why it is not sealed
    (``refused``), if it is not."""

    device: str
    visit_id: str
    wearer: str | None
    missed_alarm: str | None
    refused: str | None

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"{visit_name(self.device, self.visit_id)}: wearer {self.wearer or '-'}; {verdict}"


def unsealed_visits(session: Session, entries: Iterable[SignedEntry]) -> list[UnsealedVisit]:
    """Every visit without a seal, against what the ledger last recorded of each column its seal
    covers: its wearer (or, for a visit it never recorded, its device's assigned member of staff),
    and its missed check-in alarm (:func:`_missed_refused`)."""
    v = _VISITS.c
    q = select(v.device_id, v.visit_id, v.wearer, v.missed_alarm_id).where(v.seal.is_(None))
    rows = session.execute(q.order_by(v.device_id, v.visit_id)).all()
    if not rows:
        return []
    entries = list(entries)
    visits, devices, alarms = visit_replay(entries), device_replay(entries), alarm_replay(entries)
    named = _visits_naming(session, {m for *_, m in rows if m is not None})
    out = []
    for device, visit_id, wearer, missed in rows:
        refused = None
        said = visits.get(f"{device}/{visit_id}", {}).get("wearer")
        staff = devices.get(device, {}).get("staff")
        if said is not None:
            if said[1] != wearer:
                refused = f"its wearer is {wearer!r} but custody entry #{said[0]} says {said[1]!r}"
        elif staff is None:
            refused = "no custody entry records its device's assigned member of staff"
        elif wearer is not None and staff[1] != wearer:
            refused = (
                f"its wearer is {wearer!r} but custody entry #{staff[0]} assigns its device to {staff[1]!r}"
            )
        refused = refused or _missed_refused(device, missed, alarms.get(missed or "", {}), named)
        out.append(UnsealedVisit(device, visit_id, wearer, missed, refused))
    return out


def _visits_naming(session: Session, alarm_ids: set[str]) -> dict[tuple[str, str], int]:
    """How many of each device's visits (sealed or not) name each of ``alarm_ids`` as their missed
    check-in alarm, by (device, alarm)."""
    if not alarm_ids:
        return {}
    v = _VISITS.c
    q = (
        select(v.device_id, v.missed_alarm_id, func.count())
        .where(v.missed_alarm_id.in_(sorted(alarm_ids)))
        .group_by(v.device_id, v.missed_alarm_id)
    )
    return {(str(device), str(alarm)): int(n) for device, alarm, n in session.execute(q)}


def _missed_refused(
    device: str, missed: str | None, recorded: dict[str, tuple[int, Any]], named: dict[tuple[str, str], int]
) -> str | None:
    """Why a visit's missed check-in alarm is not borne out, or None: it must be an alarm whose
    custody record (``registry_replay.alarm_replay``) raises it as this device's missed check-in,
    and no other visit of the device may name it (custody does not record which of the device's
    visits it was raised for; a visit's end clears it, and a visit that names one raises none of
    its own)."""
    if missed is None:
        return None
    said_device = recorded.get("device", (None, None))
    said_kind = recorded.get("kind", (None, None))
    if said_device[1] != device or said_kind[1] != "missed_checkin":
        return (
            f"its missed check-in alarm {missed!r} is not one custody records as device {device}'s "
            "missed check-in"
        )
    if named.get((device, missed), 0) > 1:
        return f"its missed check-in alarm {missed!r} is named by another visit too"
    return None


def seal_visits(session: Session, key: ServiceKey, ledger: Ledger) -> list[UnsealedVisit]:
    """Seal the visits :func:`unsealed_visits` lists that the ledger bears out, as they stand (a row
    changed since it was read keeps no seal), each with a ``visit_changed`` entry; all it listed."""
    secret = reach_secret(key)
    listed = unsealed_visits(session, ledger.all_entries(session))
    v = _VISITS.c
    for found in listed:
        if found.refused:
            continue
        same = [
            c.is_(None) if x is None else c == x
            for c, x in ((v.wearer, found.wearer), (v.missed_alarm_id, found.missed_alarm))
        ]
        seal = visit_seal(secret, found.device, found.visit_id, found.wearer, found.missed_alarm)
        done = session.execute(
            update(_VISITS)
            .where(v.device_id == found.device, v.visit_id == found.visit_id, v.seal.is_(None), *same)
            .values(seal=seal)
        )
        if getattr(done, "rowcount", 0):
            details = visit_entry(found.device, found.visit_id, found.wearer, True, sealed="upgrade")
            ledger.append(session, CustodyAction.VISIT_CHANGED, "service", details=details)
    return listed
