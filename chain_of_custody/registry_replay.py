"""The device registry's rows that decide reach, and the alarms its devices raise, against the
ledger's replay: pure comparison, no I/O.

A security manager sees the footage worn by the staff of their site and recorded by its devices,
and the alarms and lone-worker units of its devices: a member of staff's site and a device's site
decide that reach, and a device's assigned member of staff decides whose alarms it raises and
whose clips a camera may deliver. Each is set by a signed custody entry (``staff_changed`` for
staff; ``device_enrolled`` and ``device_changed`` for devices), so the latest entry for a row says
what the row must say. The database reads are in ``row_checks``, as for the other row families
(``row_replay``).

An alarm takes its device's site when raised, and the control room of that site reads it and
streams its voice memo: its ``alarm_raised``/``alarm_changed`` entries record the site, and the
``alarm_changed`` entry of its memo names the memo's item.

Entries about staff carry no item id, and those about a device a keyed digest of its id
(``row_seals.device_subject``, which its row's seal is bound to), no evidence item's: neither
travels in a package's custody chain. They name the staff number and the site as the registry
does, and never a person's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .entries import CustodyAction, Problem, SignedEntry
from .row_replay import _details

Recorded = dict[str, dict[str, tuple[int, Any]]]  # row id -> field -> (seq, value)


@dataclass(frozen=True)
class StaffRow:
    id: str
    site: str | None


@dataclass(frozen=True)
class DeviceRow:
    id: str
    kind: str
    site: str | None
    staff: str | None  # the assigned member of staff


def staff_replay(entries: Iterable[SignedEntry]) -> Recorded:
    """What the ledger says of each member of staff: the entry that created them and the one that last
    set their site, with its value."""
    out: Recorded = {}
    for e in entries:
        if e.body.action != CustodyAction.STAFF_CHANGED:
            continue
        d = _details(e)
        staff = d.get("staff")
        if not isinstance(staff, str):
            continue
        changes = d.get("changes")
        if d.get("created"):
            out[staff] = {"site": (e.body.seq, d.get("site"))}
        elif isinstance(changes, dict) and staff in out and "site" in changes:
            out[staff]["site"] = (e.body.seq, changes["site"])
    return out


def device_replay(entries: Iterable[SignedEntry]) -> Recorded:
    """What the ledger says of each device: for its site and its assigned member of staff, the entry
    that last set it and its value. An enrolment sets both (an enrolment recorded before sites were
    leaves the site unknown until a change records it); a change of assignment sets the staff."""
    out: Recorded = {}
    for e in entries:
        if e.body.action not in (CustodyAction.DEVICE_ENROLLED, CustodyAction.DEVICE_CHANGED):
            continue
        d = _details(e)
        device = d.get("device")
        if not isinstance(device, str):
            continue
        if e.body.action == CustodyAction.DEVICE_ENROLLED:
            known = out.setdefault(device, {})
            known.pop("site", None)
            known.pop("staff", None)
            if "staff" in d:
                known["staff"] = (e.body.seq, d["staff"])
            elif d.get("kind") != "dock":  # keyed devices' enrolments always said
                known["staff"] = (e.body.seq, None)
            if "site" in d:
                known["site"] = (e.body.seq, d["site"])
        elif device in out:
            if "assigned_to" in d:
                out[device]["staff"] = (e.body.seq, d["assigned_to"])
            if "site" in d:
                out[device]["site"] = (e.body.seq, d["site"])
    return out


def _compare(
    problems: list[Problem], prefix: str, where: str, known: Mapping[str, tuple[int, Any]], row: Any
) -> None:
    for field, (seq, recorded) in sorted(known.items()):
        kept = getattr(row, field)
        if kept != recorded:
            problems.append(
                Problem(
                    f"{prefix}_{field}_altered",
                    where,
                    f"its {'assigned member of staff' if field == 'staff' else field} is {kept!r} in the "
                    f"database but {recorded!r} in custody entry #{seq}",
                )
            )


def staff_findings(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[StaffRow]
) -> list[Problem]:
    """Each member of staff's site must be what the latest entry that set it says; a member no entry
    created is named, and so is one the ledger created whose row is gone (their footage would count
    as of no site, which any incident's footage window takes in)."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.id)
        where = f"member of staff {row.id}"
        known = replay.get(row.id)
        if known is None:
            problems.append(
                Problem(
                    "staff_unrecorded",
                    where,
                    f"no custody entry adds this member of staff (site {row.site!r}): row inserted",
                )
            )
            continue
        _compare(problems, "staff", where, known, row)
    for staff, known in sorted(replay.items()):
        if staff not in seen:
            seq = max(s for s, _ in known.values())
            problems.append(
                Problem(
                    "staff_row_missing",
                    f"member of staff {staff}",
                    f"custody entry #{seq} records them but their row is gone (deleted in the database)",
                )
            )
    return problems


def device_findings(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[DeviceRow]
) -> list[Problem]:
    """Each device's site and assigned member of staff must be what the latest entry that set it says;
    a device no entry enrols is named, and so is one the ledger enrolled whose row is gone."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.id)
        where = f"device {row.id}"
        known = replay.get(row.id)
        if known is None:
            problems.append(
                Problem(
                    "device_unrecorded",
                    where,
                    f"no custody entry enrols this {row.kind} (site {row.site!r}, staff {row.staff!r}): "
                    "row inserted",
                )
            )
            continue
        _compare(problems, "device", where, known, row)
    for device in sorted(set(replay) - seen):
        problems.append(
            Problem(
                "device_row_missing",
                f"device {device}",
                "custody entries enrol it but its row is gone (deleted in the database)",
            )
        )
    return problems


def devices_unchecked(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[DeviceRow]
) -> list[str]:
    """Devices whose site or assigned staff no entry recorded (enrolled before they were): not checked."""
    return sorted(r.id for r in rows if r.id in replay and not {"site", "staff"} <= set(replay[r.id]))


# -- alarms ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlarmRow:
    id: str
    site: str | None
    memo: str | None  # the voice memo's evidence item
    provisional: bool = False  # raised but not yet whole: its first entry is still to come
    wearer: str | None = None  # the member of staff whose alarm it is (its payload's item is theirs)
    incident: str | None = None  # the incident the service opened or joined for it


ALARM_SERVICE = "service:alarms"  # who links an alarm to the incident it opens or joins


def alarm_replay(entries: Iterable[SignedEntry]) -> Recorded:
    """What the ledger says of each alarm: the site, wearer, device and kind its latest entry that
    records one gives it, the voice memo its latest memo entry attaches, and the incident the
    service linked it to (a person's link of an alarm to another incident leaves the alarm's own
    incident as is)."""
    out: Recorded = {}
    for e in entries:
        if e.body.action == CustodyAction.LINKED and e.body.actor == ALARM_SERVICE:
            d = _details(e)
            alarm = d.get("alarm")
            if isinstance(alarm, str) and "incident_id" in d:
                out.setdefault(alarm, {})["incident"] = (e.body.seq, d["incident_id"])
            continue
        if e.body.action not in (CustodyAction.ALARM_RAISED, CustodyAction.ALARM_CHANGED):
            continue
        d = _details(e)
        alarm = d.get("alarm_id")
        if not isinstance(alarm, str):
            continue
        known = out.setdefault(alarm, {})
        if "site" in d:
            known["site"] = (e.body.seq, d["site"])
        if "wearer" in d:
            known["wearer"] = (e.body.seq, d["wearer"])
        for said, field in (("device", "device"), ("kind", "kind")):
            if said in d:
                known[field] = (e.body.seq, d[said])
        if "voice_memo" in d:
            known["memo"] = (e.body.seq, d["voice_memo"])
    return out


def alarm_findings(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[AlarmRow]
) -> list[Problem]:
    """Each alarm's site and wearer must be what its latest entry that records one says (an alarm
    raised before its wearer was recorded is compared by its seal only), and its voice memo the
    item its latest memo entry attaches (none if no entry attaches one): the memo is streamed to
    whoever reads the alarm, without asking whether they may see that item otherwise."""
    problems: list[Problem] = []
    for row in rows:
        where = f"alarm {row.id}"
        known = replay.get(row.id, {})
        fields = ("site", "wearer", "incident")
        _compare(problems, "alarm", where, {f: known[f] for f in fields if f in known}, row)
        seq, memo = known.get("memo", (None, None))
        if row.memo != memo:
            said = (
                f"custody entry #{seq} attaches {memo!r}"
                if seq is not None
                else "no custody entry attaches one"
            )
            problems.append(Problem("alarm_memo_altered", where, f"its voice memo is {row.memo!r}; {said}"))
    return problems


def alarms_unchecked(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[AlarmRow]
) -> list[str]:
    """Alarms made whole whose site no entry recorded (raised before sites were): not checked."""
    return sorted(r.id for r in rows if not r.provisional and "site" not in replay.get(r.id, {}))
