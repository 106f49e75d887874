"""Seals on lone visits over what a missed check-in takes from them: whose alarm it is, and when.

A visit's missed check-in raises an alarm that takes the visit's wearer, and the service then seals
that wearer into the alarm (``alarm_seals``): the wearer decides whose alarm it is, whose footage
joins its incident and, through them, which site's manager follows it. A visit's end clears the
alarm its row names as its missed check-in. So the service records each check-in of a visit on the
custody ledger (``visit_changed``, with the wearer and the expected end) and seals the row, an
HMAC-SHA256 under the reach secret over the device, the visit's id, its wearer and its missed
check-in alarm; a visit whose seal does not hold lends no wearer to its missed check-in (the alarm
is still raised, with no wearer and a note why) and clears no alarm, and ``evidence verify`` names
it.

Since version 2 the seal also covers the visit's expected end and its end, which decide when its
missed check-in is due (``lone_worker_visits.due_at`` is derived from them): an expected end moved
on, or an end written, by SQL would otherwise silence the lone worker's alarm. A visit whose seal
does not hold is taken at what its custody entries record (``visit_deadlines``), its missed
check-in raised all the same, and ``evidence verify`` names a deadline that is not the recorded one
(``visit_deadline_altered``).

A visit also records the site its device was enrolled at when it began, and its alarms are raised
there (``visit_sites``): the entry that opens it records the site, and the seal covers it when it
has one (a visit of no site is sealed as under version 2, so those sealed before sites were
recorded hold as they stand); ``evidence verify`` names a site that is not the recorded one
(``visit_site_altered``), and the upgrade below seals no visit whose site is not.

Visits opened before seals have none, and those sealed before version 2 a version 1 seal:
``evidence upgrade-seals`` (its ``seal-visits`` step) seals those whose wearer is the member of
staff the custody ledger last assigned to their device, whose expected end and end are the ones
their check-ins recorded, and whose missed check-in alarm, if they name one, is one the ledger
records as their device's missed check-in and no other visit names, and records them on the
ledger. Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .canonical import rfc3339
from .entries import ChainReport, CustodyAction, Problem, SignedEntry, report_unsealed
from .keys import ServiceKey
from .ledger import Ledger
from .lifecycle_seals import entry_holds
from .reach_seals import reach_secret
from .registry_replay import Recorded, alarm_replay, device_replay
from .row_replay import _details
from .row_seals import _holds, row_seal, seal_verdict
from .visit_deadlines import RecordedDeadline, deadline_refused, deadline_replay

log = logging.getLogger(__name__)

_VISITS = table(
    "lone_worker_visits",
    column("device_id"),
    column("visit_id"),
    column("wearer"),
    column("missed_alarm_id"),
    column("expected_end", UTCDateTime),
    column("ended_at", UTCDateTime),
    column("seal"),
    column("started_at", UTCDateTime),
    column("site"),
)


class VisitRow(Protocol):
    """What a visit's seal covers, as a row (ORM or plain) holds it."""

    @property
    def device_id(self) -> str: ...
    @property
    def visit_id(self) -> str: ...
    @property
    def wearer(self) -> str | None: ...
    @property
    def missed_alarm_id(self) -> str | None: ...
    @property
    def expected_end(self) -> datetime | None: ...
    @property
    def ended_at(self) -> datetime | None: ...
    @property
    def site(self) -> str | None: ...


def _at(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def visit_seal_v1(
    secret: bytes, device: str, visit_id: str, wearer: str | None, missed_alarm: str | None
) -> str:
    """A version 1 seal (before deadlines were covered): device, id, wearer and missed alarm, hex."""
    return row_seal(secret, ("visit", device, visit_id, wearer, missed_alarm))


def visit_seal(secret: bytes, row: VisitRow) -> str:
    """The seal of a visit row over whose missed check-in it raises, where, when, and which alarm
    its end clears: its device, id, wearer, missed check-in alarm, expected end, end and, when it
    records one, the site it was begun under, hex. A visit of no site is sealed as under version 2,
    so the visits sealed before sites were recorded hold as they stand, and a site written into one,
    or cleared from one, by SQL does not."""
    values = (row.device_id, row.visit_id, row.wearer, row.missed_alarm_id)
    deadline = ("v2", _at(row.expected_end), _at(row.ended_at))
    site = () if row.site is None else ("site", row.site)
    return row_seal(secret, ("visit", *values, *deadline, *site))


def visit_holds(secret: bytes, row: VisitRow, seal: str | None) -> bool:
    """Whether a visit row's seal holds; a warning naming the visit when it does not."""
    ids: dict[str, object] = {"device": row.device_id, "visit": row.visit_id}
    return seal_verdict(visit_seal(secret, row), seal, log, "visit", ids)


def visit_name(device: str, visit_id: str) -> str:
    """How findings and lists name a visit: its id is the device's own, so with the device."""
    return f"visit {visit_id} of device {device}"


def visit_entry(
    device: str, visit_id: str, wearer: str | None, vouched: bool, *, opened_at: Any = None, **more: Any
) -> dict[str, Any]:
    """The details of a visit's ``visit_changed`` entry: its wearer only when its row vouches for one
    (a visit whose seal does not hold has its wearer from nobody the ledger knows); ``opened_at``,
    on the entry of the check-in that opened the visit, a 1-tuple of the site it is begun under
    (``(None,)``: no site), recorded as ``site`` (what a visit whose row records no site is raised
    at, ``visit_sites``)."""
    details: dict[str, Any] = {"visit": visit_id, "device": device, **more}
    if vouched:
        details["wearer"] = wearer
        if opened_at is not None:
            details["site"] = opened_at[0]
    else:
        details["unsealed"] = True
    return details


def visit_replay(entries: Iterable[SignedEntry]) -> Recorded:
    """What the ledger says of each visit (keyed ``device/visit``): the wearer its latest entry that
    records one gives it, and the site the entry that opened it records (none for a visit opened
    before sites were recorded)."""
    out: Recorded = {}
    for e in entries:
        if e.body.action != CustodyAction.VISIT_CHANGED.value:
            continue
        d = _details(e)
        device, visit = d.get("device"), d.get("visit")
        if isinstance(device, str) and isinstance(visit, str) and "wearer" in d:
            known = out.setdefault(f"{device}/{visit}", {})
            known["wearer"] = (e.body.seq, d["wearer"])
            if "site" in d and "site" not in known:
                known["site"] = (e.body.seq, d["site"])
    return out


# -- evidence verify ------------------------------------------------------------------------------

_COLUMNS = (
    _VISITS.c.device_id,
    _VISITS.c.visit_id,
    _VISITS.c.wearer,
    _VISITS.c.missed_alarm_id,
    _VISITS.c.expected_end,
    _VISITS.c.ended_at,
    _VISITS.c.seal,
    _VISITS.c.site,
)


def check_visit_seals(
    session: Session, report: ChainReport, key: ServiceKey, entries: Sequence[SignedEntry]
) -> None:
    """A finding for each visit whose seal is wrong, for each whose wearer is not the one its
    latest custody entry records, and for each whose expected end or end is not what its check-ins
    recorded; a note counting the visits not sealed yet (or under a version 1 seal)."""
    secret = reach_secret(key)
    recorded = visit_replay(entries)
    held = (e for e in entries if e.body.action == CustodyAction.VISIT_CHANGED.value)
    deadlines = deadline_replay(e for e in held if entry_holds(key.public_raw, e))
    v = _VISITS.c
    older = 0
    for row in session.execute(select(*_COLUMNS).order_by(v.device_id, v.visit_id)):
        where = visit_name(row.device_id, row.visit_id)
        key_ = f"{row.device_id}/{row.visit_id}"
        if _older(secret, row):
            older += 1
        elif not _holds(visit_seal(secret, row), row.seal):
            report.problems.append(
                Problem(
                    "visit_seal_broken",
                    where,
                    "its row's seal does not hold: its wearer, site, missed check-in alarm, expected end "
                    "or end was written by someone other than the service (its missed check-in takes no "
                    "wearer or site from it, and is due by what its check-ins recorded)",
                )
            )
        for field in ("site", "wearer"):
            kept = getattr(row, field)
            seq, said = recorded.get(key_, {}).get(field, (None, kept))
            if said != kept:
                report.problems.append(
                    Problem(
                        f"visit_{field}_altered",
                        where,
                        f"its {field} is {kept!r} in the database but {said!r} in custody entry #{seq}",
                    )
                )
        # A visit sealed since its check-ins were recorded has its start on the ledger: one no entry
        # that holds records (deleted, or edited) is due by nothing its row says.
        said_deadline = deadlines.get(key_, None if row.seal is None else RecordedDeadline())
        if said_deadline is not None and (
            why := deadline_refused(row.expected_end, row.ended_at, said_deadline)
        ):
            report.problems.append(Problem("visit_deadline_altered", where, why))
    report_unsealed(
        report,
        older,
        "visit(s) have no seal yet, or one from before deadlines were sealed, so a missed "
        "check-in takes no wearer from them: `evidence upgrade-seals` seals those the custody "
        "record bears out",
    )


def _older(secret: bytes, row: Any) -> bool:
    """Whether a visit awaits the upgrade: no seal, or a version 1 seal that holds."""
    if not row.seal:
        return True
    v1 = visit_seal_v1(secret, row.device_id, row.visit_id, row.wearer, row.missed_alarm_id)
    return _holds(v1, row.seal)


def older_visits(session: Session, secret: bytes) -> list[Any]:
    """The visits without a seal or under a version 1 seal that holds (what the upgrade lists)."""
    v = _VISITS.c
    rows = session.execute(select(*_COLUMNS).order_by(v.device_id, v.visit_id))
    return [row for row in rows if _older(secret, row)]


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedVisit:
    """A visit without a seal or under a version 1 seal, as ``evidence upgrade-seals`` lists it,
    with why it is not sealed (``refused``), if it is not."""

    device: str
    visit_id: str
    wearer: str | None
    missed_alarm: str | None
    refused: str | None
    expected_end: datetime | None = None
    ended_at: datetime | None = None
    seal: str | None = None  # the version 1 seal it holds, if any
    site: str | None = None

    @property
    def device_id(self) -> str:
        return self.device

    @property
    def missed_alarm_id(self) -> str | None:
        return self.missed_alarm

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"{visit_name(self.device, self.visit_id)}: wearer {self.wearer or '-'}; {verdict}"


_REPLAYED = frozenset(
    a.value
    for a in (
        CustodyAction.VISIT_CHANGED,
        CustodyAction.DEVICE_ENROLLED,
        CustodyAction.DEVICE_CHANGED,
        CustodyAction.ALARM_RAISED,
        CustodyAction.ALARM_CHANGED,
        CustodyAction.LINKED,
    )
)
"""The actions of the entries the replays below read (the others are not checked)."""


def unsealed_visits(session: Session, key: ServiceKey, entries: Iterable[SignedEntry]) -> list[UnsealedVisit]:
    """Every visit without a seal or under a version 1 seal, against what the ledger last recorded
    of each column its seal covers: its wearer (or, for a visit it never recorded, its device's
    assigned member of staff), its expected end and end (``visit_deadlines``), and its missed
    check-in alarm (:func:`_missed_refused`), in entries that hold (:func:`entry_holds`: ``evidence
    verify`` names the others), so an entry written in the database that records an end check-in
    neither bears out a visit ended by SQL nor gets it sealed as it stands."""
    rows = older_visits(session, reach_secret(key))
    if not rows:
        return []
    entries = [e for e in entries if e.body.action in _REPLAYED and entry_holds(key.public_raw, e)]
    visits, devices, alarms = visit_replay(entries), device_replay(entries), alarm_replay(entries)
    deadlines = deadline_replay(entries)
    named = _visits_naming(session, {r.missed_alarm_id for r in rows if r.missed_alarm_id is not None})
    out = []
    for row in rows:
        device, visit_id, wearer, missed = row.device_id, row.visit_id, row.wearer, row.missed_alarm_id
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
        opened = visits.get(f"{device}/{visit_id}", {}).get("site")
        if (opened is None and row.site is not None) or (opened is not None and opened[1] != row.site):
            said_site = (
                "no custody entry records one"
                if opened is None
                else f"custody entry #{opened[0]} says {opened[1]!r}"
            )
            refused = refused or f"its site is {row.site!r} but {said_site}"
        recorded = deadlines.get(f"{device}/{visit_id}")
        if recorded is not None:
            refused = refused or deadline_refused(row.expected_end, row.ended_at, recorded)
        elif row.expected_end is not None or row.ended_at is not None:
            refused = refused or "no custody entry records its check-ins"
        refused = refused or _missed_refused(device, missed, alarms.get(missed or "", {}), named)
        out.append(
            UnsealedVisit(
                device, visit_id, wearer, missed, refused, row.expected_end, row.ended_at, row.seal, row.site
            )
        )
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
    changed since it was read keeps its seal, or none), each with a ``visit_changed`` entry that
    records its expected end and whether it ended; all it listed."""
    secret = reach_secret(key)
    listed = unsealed_visits(session, key, ledger.all_entries(session))
    v = _VISITS.c
    for found in listed:
        if found.refused:
            continue
        same = [
            c.is_(None) if x is None else c == x
            for c, x in (
                (v.wearer, found.wearer),
                (v.missed_alarm_id, found.missed_alarm),
                (v.expected_end, found.expected_end),
                (v.ended_at, found.ended_at),
                (v.seal, found.seal),
                (v.site, found.site),
            )
        ]
        done = session.execute(
            update(_VISITS)
            .where(v.device_id == found.device, v.visit_id == found.visit_id, *same)
            .values(seal=visit_seal(secret, found))
        )
        if getattr(done, "rowcount", 0):
            expected = None if found.expected_end is None else rfc3339(found.expected_end)
            more = {"sealed": "upgrade", "expected_end": expected, "ended": found.ended_at is not None}
            details = visit_entry(found.device, found.visit_id, found.wearer, True, **more)
            ledger.append(session, CustodyAction.VISIT_CHANGED, "service", details=details)
    return listed
