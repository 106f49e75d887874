"""What a lone visit, an alarm's incident and a device's replay state decide, against a change made
in the database behind the service's back, on both databases, by its effects:

- a visit's wearer is whose missed check-in alarm it is: the visit is sealed and on the custody
  ledger (``chain_of_custody.visit_seals``), a missed check-in takes no wearer from a visit whose
  seal does not hold (the alarm is still raised), ``evidence verify`` names it, and
  ``evidence upgrade-seals`` adopts visits opened before seals, where the ledger bears them out;
- an alarm's incident is where its later evidence is linked: the alarm's seal covers it, so a row
  pointed at another incident links its voice memo nowhere;
- a heartbeat replayed once the device's replay state is rolled back in the database clears no
  safety alarm and moves no position back (``alarms.liveness``, ``alarms.device_state``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from typer.testing import CliRunner

from alarms.models import AlarmRecord, LoneWorkerVisit
from alarms.visits import UNVOUCHED_NOTE
from chain_of_custody.models import CustodyEntry
from devices.models import LoneWorkerState
from incidents.models import IncidentLink
from ingest.cli import app
from ingest.settings import get_settings
from tests.conftest import settings_env
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_incidents_kit import staff


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


def _cli(services: Any, *args: str) -> Any:
    env = settings_env(services.settings)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()


def _alarm(services: Any, alarm_id: str) -> AlarmRecord:
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        assert row is not None
        return row


def _missed(services: Any, device_id: str) -> AlarmRecord:
    with services.db.session() as session:
        return session.scalars(
            select(AlarmRecord).where(
                AlarmRecord.device_id == device_id, AlarmRecord.kind == "missed_checkin"
            )
        ).one()


def _visit_wearer(visit_id: str, wearer: str | None) -> Any:
    return update(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == visit_id).values(wearer=wearer)


def _start(services: Any, device: DeviceKit, visit_id: str, now: datetime) -> None:
    result = services.alarms.handle(*device.checkin_start(visit_id, now + timedelta(minutes=30)), now=now)
    assert result.outcome == "accepted", result


# -- visits ---------------------------------------------------------------------------------------


def test_a_missed_checkin_takes_its_wearer_from_a_visit_as_the_service_recorded_it(services: Any) -> None:
    """The control: a visit's missed check-in is its wearer's alarm, and each check-in of the visit
    is on the custody ledger with that wearer."""
    device = enrol(services, "LW-V1", staff_id="S-1", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-1", now)
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    missed = _missed(services, "LW-V1")
    assert (missed.wearer, missed.site, missed.note) == ("S-1", "NORTH", None)
    services.alarms.handle(*device.checkin_end("V-1"))
    assert _alarm(services, missed.id).status == "resolved"
    with services.db.session() as session:
        recorded = [
            json.loads(e.details)
            for e in session.scalars(select(CustodyEntry).where(CustodyEntry.action == "visit_changed"))
        ]
    assert [(d["visit"], d["checkin"], d["wearer"]) for d in recorded] == [
        ("V-1", "start", "S-1"),
        ("V-1", "end", "S-1"),
    ]


def test_a_missed_checkin_takes_no_wearer_from_a_visit_changed_in_the_database(services: Any) -> None:
    """A visit's wearer re-pointed at a SOUTH porter by SQL would make the missed check-in theirs
    (and the service would seal it into the alarm): the alarm is raised all the same, nobody's,
    with a note why, and the visit's end still clears it."""
    staff(services, "P-9", "porter", "SOUTH")
    device = enrol(services, "LW-V2", staff_id="S-2", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-2", now)
    _sql(services, _visit_wearer("V-2", "P-9"))
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    missed = _missed(services, "LW-V2")
    assert missed.wearer is None, missed.wearer
    assert (missed.kind, missed.site, missed.note) == ("missed_checkin", "NORTH", UNVOUCHED_NOTE)


def test_a_visit_pointed_at_another_alarm_in_the_database_clears_no_alarm_when_it_ends(
    services: Any,
) -> None:
    """A visit's end clears its missed check-in: a visit whose missed alarm is re-pointed by SQL at
    another device's missed check-in must not clear that one."""
    other = enrol(services, "LW-V3B", staff_id="S-3B", site="NORTH")
    device = enrol(services, "LW-V3", staff_id="S-3", site="NORTH")
    now = datetime.now(UTC)
    _start(services, other, "V-3B", now)
    _start(services, device, "V-3", later(60 * 60, now))
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    theirs = _missed(services, "LW-V3B")
    _sql(
        services,
        update(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == "V-3").values(missed_alarm_id=theirs.id),
    )
    services.alarms.handle(*device.checkin_end("V-3"))
    row = _alarm(services, theirs.id)
    assert row.status != "resolved" and row.condition_cleared_at is None, (row.status, row.outcome)


def test_verify_names_a_visit_whose_wearer_was_changed_in_the_database(services: Any) -> None:
    device = enrol(services, "LW-V4", staff_id="S-4", site="NORTH")
    _start(services, device, "V-4", datetime.now(UTC))
    assert _cli(services, "verify", "--json").exit_code == 0
    _sql(services, _visit_wearer("V-4", "P-9"))
    r = _cli(services, "verify", "--json")
    assert r.exit_code != 0
    assert "visit V-4 of device LW-V4" in r.output, r.output
    assert "visit_seal_broken" in r.output and "visit_wearer_altered" in r.output, r.output


def test_upgrade_seals_adopts_the_visits_the_ledger_bears_out(services: Any) -> None:
    """Visits opened before seals have none: their missed check-in takes no wearer until
    ``upgrade-seals --yes`` seals those whose wearer is the one custody records, and not one
    changed in the database."""
    kept_device = enrol(services, "LW-V5", staff_id="S-5", site="NORTH")
    moved_device = enrol(services, "LW-V6", staff_id="S-6", site="NORTH")
    now = datetime.now(UTC)
    _start(services, kept_device, "V-5", now)
    _start(services, moved_device, "V-6", now)
    _sql(services, update(LoneWorkerVisit).values(seal=None))
    _sql(services, _visit_wearer("V-6", "P-9"))
    listed = _cli(services, "upgrade-seals")
    assert "seal-visits" in listed.output and "visit V-5 of device LW-V5" in listed.output, listed.output
    done = _cli(services, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # a step refused a row: the changed visit
    assert "visit V-6 of device LW-V6" in done.output and "REFUSED" in done.output, done.output
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 2
    assert _missed(services, "LW-V5").wearer == "S-5"
    assert _missed(services, "LW-V6").wearer is None


def test_a_missed_alarm_written_into_a_visit_in_the_database_silences_no_missed_checkin(
    services: Any,
) -> None:
    """A visit that names a missed check-in alarm raises none of its own: an id written into the row
    by SQL (here, the device's earlier SOS) must not silence the lone worker's missed check-in."""
    device = enrol(services, "LW-V7", staff_id="S-7", site="NORTH")
    now = datetime.now(UTC)
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id
    _start(services, device, "V-7", now)
    _sql(
        services,
        update(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == "V-7").values(missed_alarm_id=sos.alarm_id),
    )
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    missed = _missed(services, "LW-V7")
    assert (missed.wearer, missed.site, missed.note) == (None, "NORTH", UNVOUCHED_NOTE)
    assert services.alarms.raise_missed_checkins(later(40 * 60, now)) == 0  # raised once


def test_upgrade_seals_refuses_a_visit_whose_missed_alarm_was_changed_in_the_database(services: Any) -> None:
    """A visit's missed check-in alarm is sealed with it, and a visit that names one raises none of
    its own: one pointed by SQL, before the upgrade, at the missed check-in of another device's
    visit, or of another visit of its own device, must not be sealed in (and so silenced)."""
    own = enrol(services, "LW-V9", staff_id="S-9", site="NORTH")
    other = enrol(services, "LW-V10", staff_id="S-10", site="NORTH")
    control = enrol(services, "LW-V11", staff_id="S-11", site="NORTH")
    now = datetime.now(UTC)
    _start(services, own, "V-9", now)
    _start(services, control, "V-11", now)
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 2
    theirs = _missed(services, "LW-V9").id
    _start(services, own, "V-9B", later(60 * 60, now))
    _start(services, other, "V-10", later(60 * 60, now))
    _sql(services, update(LoneWorkerVisit).values(seal=None))
    for visit_id in ("V-9B", "V-10"):
        _sql(
            services,
            update(LoneWorkerVisit)
            .where(LoneWorkerVisit.visit_id == visit_id)
            .values(missed_alarm_id=theirs),
        )
    done = _cli(services, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("visit ")}
    assert "matches its custody record" in lines["visit V-11 of device LW-V11"], done.output
    assert "REFUSED" in lines["visit V-10 of device LW-V10"], done.output
    assert "REFUSED" in lines["visit V-9B of device LW-V9"], done.output
    # Neither is silenced: each raises its own missed check-in when it runs over.
    assert services.alarms.raise_missed_checkins(later(96 * 60, now)) == 2
    assert _missed(services, "LW-V10").visit_id == "V-10"


# -- an alarm's incident --------------------------------------------------------------------------


def _memo(services: Any, device: DeviceKit, event_id: str) -> str:
    memo = b"OggS" + bytes(range(64))
    headers = device.voice_memo_headers(event_id, memo)
    item_id, _ = services.alarms.attach_voice_memo(
        device.device_id,
        event_id,
        memo,
        content_type="audio/ogg",
        sent_at=headers["X-Device-Sent-At"],
        signature=headers["X-Device-Signature"],
    )
    return str(item_id)


def _linked_into(services: Any, item_id: str) -> set[str]:
    with services.db.session() as session:
        q = select(IncidentLink.incident_id).where(IncidentLink.target_id == item_id)
        return set(session.scalars(q))


def _sos(services: Any, device: DeviceKit) -> tuple[str, str]:
    topic, raw = device.sos()
    result = services.alarms.handle(topic, raw)
    assert result.outcome == "accepted" and result.alarm_id, result
    services.alarms.make_whole(result.alarm_id)
    return result.alarm_id, json.loads(raw)["event_id"]


def test_a_voice_memo_is_linked_into_the_incident_its_alarm_opened(services: Any) -> None:
    """The control: an SOS opens an incident, and its memo, arriving later, joins it."""
    device = enrol(services, "LW-I1", staff_id="S-7", site="NORTH")
    alarm_id, event_id = _sos(services, device)
    incident = _alarm(services, alarm_id).incident_id
    assert incident is not None
    assert _linked_into(services, _memo(services, device, event_id)) == {incident}


def test_a_voice_memo_is_linked_into_no_incident_its_alarm_was_pointed_at_in_the_database(
    services: Any,
) -> None:
    """A NORTH alarm re-pointed by SQL at a SOUTH incident would put its memo in that incident (and
    before the SOUTH managers): it is linked nowhere, and verify names the alarm."""
    north = enrol(services, "LW-I2", staff_id="S-8", site="NORTH")
    south = enrol(services, "LW-I3", staff_id="S-9", site="SOUTH")
    alarm_id, event_id = _sos(services, north)
    other, _ = _sos(services, south)
    theirs = _alarm(services, other).incident_id
    assert theirs is not None and theirs != _alarm(services, alarm_id).incident_id
    _sql(services, update(AlarmRecord).where(AlarmRecord.id == alarm_id).values(incident_id=theirs))
    assert _linked_into(services, _memo(services, north, event_id)) == set()
    r = _cli(services, "verify", "--json")
    assert r.exit_code != 0 and f"alarm {alarm_id}" in r.output, r.output
    assert "alarm_seal_broken" in r.output and "alarm_incident_altered" in r.output, r.output


# -- a device's replay state rolled back ----------------------------------------------------------


def _replay_state(services: Any, device_id: str) -> str:
    with services.db.session() as session:
        state = session.get(LoneWorkerState, device_id)
        assert state is not None
        return state.replay_state


def set_state_row(services: Any, device_id: str, **values: Any) -> None:
    """A device's state row changed in the database behind the service's back."""
    _sql(services, update(LoneWorkerState).where(LoneWorkerState.device_id == device_id).values(**values))


def _roll_back(services: Any, device_id: str, replay_state: str) -> None:
    set_state_row(services, device_id, replay_state=replay_state)


def test_a_heartbeat_replayed_after_the_replay_state_is_rolled_back_clears_no_offline_alarm(
    services: Any,
) -> None:
    """A device on a visit falls silent and is alarmed offline; its last heartbeat, sent again once
    its replay state is put back in the database, would clear the alarm (with a custody entry by
    the device saying it is back online) while it is still silent."""
    device = enrol(services, "LW-R1", staff_id="S-10", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-R1", now)
    before = _replay_state(services, "LW-R1")
    heartbeat = device.heartbeat(sent_at=later(10, now))
    assert services.alarms.handle(*heartbeat, now=later(10, now)).outcome == "accepted"
    assert services.alarms.raise_offline(later(200, now)) == 1
    with services.db.session() as session:
        (offline,) = session.scalars(select(AlarmRecord).where(AlarmRecord.kind == "device_offline"))
    _roll_back(services, "LW-R1", before)
    replayed = services.alarms.handle(*heartbeat, now=later(205, now))
    assert replayed.outcome == "accepted"  # the window no longer remembers it: what it does is the point
    row = _alarm(services, offline.id)
    assert row.status != "resolved" and row.condition_cleared_at is None, (row.status, row.outcome)
    # The device itself, heard again, clears it.
    services.alarms.handle(*device.heartbeat(sent_at=later(210, now)), now=later(210, now))
    assert _alarm(services, offline.id).status == "resolved"


def test_a_heartbeat_replayed_after_the_replay_state_is_rolled_back_clears_no_low_battery_alarm(
    services: Any,
) -> None:
    device = enrol(services, "LW-R2", staff_id="S-11", site="NORTH")
    now = datetime.now(UTC)
    before = _replay_state_after(services, device, now)
    full = device.heartbeat(battery=90, sent_at=later(10, now))
    services.alarms.handle(*full, now=later(10, now))
    services.alarms.handle(*device.heartbeat(battery=5, sent_at=later(20, now)), now=later(20, now))
    with services.db.session() as session:
        (low,) = session.scalars(select(AlarmRecord).where(AlarmRecord.kind == "low_battery"))
    _roll_back(services, "LW-R2", before)
    assert services.alarms.handle(*full, now=later(30, now)).outcome == "accepted"
    assert _alarm(services, low.id).status != "resolved"


def _replay_state_after(services: Any, device: DeviceKit, now: datetime) -> str:
    """The device heard from once (its state row made); its replay state then."""
    services.alarms.handle(*device.heartbeat(sent_at=now), now=now)
    return _replay_state(services, device.device_id)


def test_a_location_replayed_after_the_replay_state_is_rolled_back_moves_no_position_back(
    services: Any,
) -> None:
    device = enrol(services, "LW-R3", staff_id="S-12", site="NORTH")
    now = datetime.now(UTC)
    before = _replay_state_after(services, device, now)
    where = {"lat": 51.0, "lon": -1.0, "accuracy_m": 5}
    old = device.message("location", None, sent_at=later(10, now), position=where)
    services.alarms.handle(*old, now=later(10, now))
    here = {"lat": 52.0, "lon": -2.0, "accuracy_m": 5}
    services.alarms.handle(
        *device.message("location", None, sent_at=later(20, now), position=here), now=later(20, now)
    )
    _roll_back(services, "LW-R3", before)
    assert services.alarms.handle(*old, now=later(30, now)).outcome == "accepted"
    with services.db.session() as session:
        state = session.get(LoneWorkerState, "LW-R3")
        assert state is not None and (state.lat, state.lon) == (52.0, -2.0), (state.lat, state.lon)
