"""A lone visit's alarms are raised at the site it was begun under, on both databases.

A SOUTH lone worker starts a visit with a note saying where they are; an administrator then
re-enrols their device at NORTH (for another member of staff). The visit's missed check-in, and its
device's offline alarm while on it, concern the SOUTH worker: they must reach SOUTH's managers, with
the visit's record (the start message and its note), and NORTH's managers must never read that
record. A device re-enrolled at NORTH while an alarm of SOUTH's is still open that then falls silent
raises its offline alarm for the SOUTH worker too.

Visits begun before sites were recorded on them keep their seals, and are raised at the site their
custody record gives; a site written into a visit by SQL breaks its seal and decides nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from alarms.models import AlarmRecord, LoneWorkerVisit
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.visit_seals import visit_seal
from devices.lone_worker_wire import format_time
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_incidents_kit import bearer, staff, user
from tests.test_visit_seals import _cli

NOTE = "14 Acacia Avenue, flat 2"


def _start(s: Any, kit: DeviceKit, visit_id: str, now: datetime) -> None:
    body = {
        "action": "start",
        "visit_id": visit_id,
        "expected_end": format_time(now + timedelta(minutes=30)),
        "note": NOTE,
    }
    assert s.alarms.handle(*kit.message("checkin", body, sent_at=now), now=now).outcome == "accepted"


def _re_enrol_at_north(live: Any, device_id: str, staff_id: str) -> None:
    """The administrator re-enrols the device at NORTH for a NORTH member of staff, by the API."""
    api = f"{live.url}/api/v1"
    r = httpx.post(
        f"{api}/staff",
        json={"id": staff_id, "name": f"Staff {staff_id}", "group": "nurse", "site": "NORTH"},
        headers=live.admin(),
    )
    assert r.status_code == 201, r.text
    body = {"id": device_id, "public_key": DeviceKit(device_id).public_b64, "staff_id": staff_id}
    r = httpx.post(f"{api}/devices/lone-workers", json={**body, "site": "NORTH"}, headers=live.admin())
    assert r.status_code == 201, r.text


def _managers(live: Any) -> dict[str, dict[str, str]]:
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    user(s, "south_mgr", "security_manager", "SOUTH")
    return {who: bearer(s, who) for who in ("north_mgr", "south_mgr")}


def _alarm_of(s: Any, device_id: str, kind: str) -> str:
    with s.db.session() as session:
        q = select(AlarmRecord.id).where(AlarmRecord.device_id == device_id, AlarmRecord.kind == kind)
        return str(session.scalars(q).one())


def _reads(live: Any, headers: dict[str, str], alarm_id: str) -> dict[str, Any]:
    """What a manager gets of the alarm: its record (or the status), whether it is listed, and
    whether the worker's note is anywhere in what they read."""
    api = f"{live.url}/api/v1"
    record = httpx.get(f"{api}/alarms/{alarm_id}/record", headers=headers)
    alarm = httpx.get(f"{api}/alarms/{alarm_id}", headers=headers)
    listed = httpx.get(f"{api}/alarms", params={"limit": 200}, headers=headers)
    assert listed.status_code == 200, listed.text
    return {
        "record": record.json() if record.status_code == 200 else record.status_code,
        "alarm": alarm.status_code,
        "listed": alarm_id in {a["id"] for a in listed.json()},
        "note seen": NOTE in record.text or NOTE in alarm.text or NOTE in listed.text,
    }


def _south_reads(reads: dict[str, Any], wearer: str, note: bool) -> None:
    record = reads["record"]
    assert isinstance(record, dict), reads
    assert (record["alarm"]["site"], record["alarm"]["wearer"]) == ("SOUTH", wearer), record["alarm"]
    assert reads["alarm"] == 200 and reads["listed"], reads
    assert reads["note seen"] is note, reads


def _north_reads_nothing(reads: dict[str, Any]) -> None:
    assert reads == {"record": 404, "alarm": 404, "listed": False, "note seen": False}, reads


def test_a_visits_alarms_stay_with_the_site_it_began_under_when_its_device_is_re_enrolled(live: Any) -> None:
    s = live.services
    h = _managers(live)
    kit = enrol(s, "LW-Z", staff_id="S-Z", site="SOUTH")
    now = datetime.now(UTC)
    _start(s, kit, "V-1", now)
    _re_enrol_at_north(live, "LW-Z", "N-1")

    assert s.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    assert s.alarms.raise_offline(later(36 * 60, now)) == 1
    for kind in ("missed_checkin", "device_offline"):
        alarm_id = _alarm_of(s, "LW-Z", kind)
        # SOUTH's manager reads the safety alarm of their own worker, with the visit's start message.
        south = _reads(live, h["south_mgr"], alarm_id)
        _south_reads(south, "S-Z", note=True)
        assert any(
            m["action"] == "start" and NOTE in (m["payload"] or "") for m in south["record"]["messages"]
        )
        # NORTH's manager reads nothing of it, nor of the note, anywhere.
        _north_reads_nothing(_reads(live, h["north_mgr"], alarm_id))


def test_an_offline_alarm_goes_to_the_site_of_the_open_alarm_its_device_is_watched_for(live: Any) -> None:
    """A SOUTH worker's SOS is still open when their device is re-enrolled at NORTH; the device then
    falls silent: SOUTH's control room, following the SOS, is told, not NORTH's."""
    s = live.services
    h = _managers(live)
    kit = enrol(s, "LW-Y", staff_id="S-Y", site="SOUTH")
    now = datetime.now(UTC)
    sos = s.alarms.handle(*kit.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id, sos
    _re_enrol_at_north(live, "LW-Y", "N-2")

    assert s.alarms.raise_offline(later(200, now)) == 1
    offline = _alarm_of(s, "LW-Y", "device_offline")
    _south_reads(_reads(live, h["south_mgr"], offline), "S-Y", note=False)
    _north_reads_nothing(_reads(live, h["north_mgr"], offline))


def _as_before_sites(s: Any, device_id: str, visit_id: str) -> None:
    """The visit as the service wrote it before visits recorded their site: no site, sealed without one."""
    with s.db.session() as session:
        visit = session.scalars(
            select(LoneWorkerVisit).where(
                LoneWorkerVisit.device_id == device_id, LoneWorkerVisit.visit_id == visit_id
            )
        ).one()
        visit.site = None
        visit.seal = visit_seal(reach_secret(s.key), visit)


def _missed(s: Any, device_id: str) -> AlarmRecord:
    with s.db.session() as session:
        q = select(AlarmRecord).where(
            AlarmRecord.device_id == device_id, AlarmRecord.kind == "missed_checkin"
        )
        row = session.scalars(q).one()
        session.expunge(row)
        return row


def test_visits_begun_before_sites_were_recorded_are_raised_where_custody_says_they_began(
    live: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = live.services
    import alarms.visits

    recorded = alarms.visits.visit_entry

    def as_before(*args: Any, opened_at: Any = None, **more: Any) -> dict[str, Any]:
        return recorded(*args, **more)  # the opening entry records no site, as before

    kit = enrol(s, "LW-OLD", staff_id="S-O", site="SOUTH")
    now = datetime.now(UTC)
    with monkeypatch.context() as m:
        m.setattr(alarms.visits, "visit_entry", as_before)
        _start(s, kit, "V-OLD", now)
    _as_before_sites(s, "LW-OLD", "V-OLD")
    _re_enrol_at_north(live, "LW-OLD", "N-3")
    with caplog.at_level(logging.WARNING):
        assert s.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    missed = _missed(s, "LW-OLD")
    # Its seal holds as it stood (it lends its wearer), and the site is its device's when it began.
    assert (missed.site, missed.wearer, missed.note) == ("SOUTH", "S-O", None)
    assert not any("seal" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_site_written_into_a_visit_by_sql_decides_nothing(live: Any) -> None:
    """Moved to NORTH in the database, the visit's seal no longer holds: its missed check-in is
    raised at the site its opening entry records, naming no wearer, and ``evidence verify`` names
    the visit."""
    s = live.services
    staff(s, "N-4", site="NORTH")
    kit = enrol(s, "LW-SQL", staff_id="S-Q", site="SOUTH")
    now = datetime.now(UTC)
    _start(s, kit, "V-SQL", now)
    with s.db.session() as session:
        session.execute(
            update(LoneWorkerVisit).where(LoneWorkerVisit.device_id == "LW-SQL").values(site="NORTH")
        )
    assert s.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    missed = _missed(s, "LW-SQL")
    assert (missed.site, missed.wearer) == ("SOUTH", None)
    verified = _cli(s, "verify")
    assert "visit_seal_broken" in verified.output and "visit_site_altered" in verified.output, verified.output
