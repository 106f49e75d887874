"""What the alarm side watches of a lone-worker device, sealed (``chain_of_custody.watched_seals``),
against a change made in the database behind the service's back, on both databases, by its
effects (the clock driven by an explicit "now", no sleeps): a low-battery flag set by SQL silences
no low-battery alarm, a visit renamed by SQL moves no offline alarm to another visit, a warning
names the device and ``evidence verify`` names it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from alarms.models import AlarmRecord, LoneWorkerVisit
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from tests.test_alarms_kit import enrol, later
from tests.test_heard_seals import _state
from tests.test_heard_seals import _warned_of as _warned
from tests.test_upgrade_seals import _under
from tests.test_visit_seals import _cli, _sql, set_state_row


def _alarms(services: Any, device_id: str, kind: str) -> list[AlarmRecord]:
    with services.db.session() as session:
        q = select(AlarmRecord).where(AlarmRecord.device_id == device_id, AlarmRecord.kind == kind)
        rows = list(session.scalars(q))
        session.expunge_all()
        return rows


def test_a_low_battery_flag_set_in_the_database_silences_no_low_battery_alarm(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A device reporting a healthy battery, flagged low by SQL: its battery then failing raised no
    alarm (the flag says one is raised already), so a dying device went unnoticed."""
    device = enrol(services, "LW-W1", staff_id="S-W1", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(battery=80, sent_at=now), now=now)
    set_state_row(services, "LW-W1", battery_low=True)
    with caplog.at_level(logging.WARNING):
        services.alarms.handle(*device.heartbeat(battery=5, sent_at=later(10, now)), now=later(10, now))
    assert len(_alarms(services, "LW-W1", "low_battery")) == 1
    assert _warned(caplog, "LW-W1")
    assert _state(services, "LW-W1").battery_low is True  # now as the alarm says, sealed
    assert _cli(services, "verify", "--json").exit_code == 0


def test_a_low_battery_flag_cleared_in_the_database_is_put_back(services: Any) -> None:
    """A device whose battery is failing, its flag cleared by SQL: it showed as fine, and ``evidence
    verify`` said nothing."""
    device = enrol(services, "LW-W2", staff_id="S-W2", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(battery=5, sent_at=now), now=now)
    assert len(_alarms(services, "LW-W2", "low_battery")) == 1
    set_state_row(services, "LW-W2", battery_low=False, watched_seal="0" * 64)
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0 and "device_watch_altered" in found.output, found.output
    services.alarms.handle(*device.heartbeat(battery=5, sent_at=later(10, now)), now=later(10, now))
    assert _state(services, "LW-W2").battery_low is True
    assert len(_alarms(services, "LW-W2", "low_battery")) == 1  # and no second alarm


def test_a_visit_renamed_in_the_database_moves_no_offline_alarm(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A unit on a visit, its visit renamed by SQL, falls silent: its offline alarm named the
    visit SQL gave it, not the one it is on."""
    device = enrol(services, "LW-W3", staff_id="S-W3", site="NORTH")
    now = datetime.now(UTC)
    start = device.checkin_start("V-W3", now + timedelta(minutes=30), sent_at=now)
    assert services.alarms.handle(*start, now=now).outcome == "accepted"
    set_state_row(services, "LW-W3", active_visit_id="V-ELSEWHERE")
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_offline(later(600, now))
    (offline,) = _alarms(services, "LW-W3", "device_offline")
    assert offline.visit_id == "V-W3"
    assert _warned(caplog, "LW-W3")
    assert _state(services, "LW-W3").active_visit_id == "V-W3"


def _awaiting(services: Any) -> int:
    with services.db.session() as session:
        return awaiting_upgrade(session, services.key).counts["device_watches"]


def test_a_device_written_low_before_seals_is_taken_as_it_stands_and_sealed_by_the_upgrade(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A device flagged low on battery before the flag was sealed (no seal): on upgrade day its
    next message put it back, with a warning that it was altered in the database, and ``evidence
    verify`` named it, though its open low-battery alarm bears the flag out."""
    device = enrol(services, "LW-W4", staff_id="S-W4", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(battery=5, sent_at=now), now=now)
    set_state_row(services, "LW-W4", watched_seal=None)  # as written before the seal
    with caplog.at_level(logging.WARNING):
        services.alarms.handle(*device.heartbeat(battery=5, sent_at=later(10, now)), now=later(10, now))
    assert not _warned(caplog, "LW-W4")
    assert _state(services, "LW-W4").battery_low is True
    assert len(_alarms(services, "LW-W4", "low_battery")) == 1
    verified = _cli(services, "verify", "--json")
    assert verified.exit_code == 0 and "device_watch_altered" not in verified.output, verified.output
    assert _awaiting(services) == 1
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert upgraded.exit_code == 0, upgraded.output
    assert "device LW-W4 (low, visit none): borne out" in _under(upgraded.output, "seal-watched")
    assert _state(services, "LW-W4").watched_seal is not None and _awaiting(services) == 0


def test_a_visit_written_before_seals_is_taken_while_the_visits_bear_it_out(services: Any) -> None:
    """Two devices on a visit before the visit was sealed: one as its visits say, one on a visit
    its visits do not name. The first was put back as altered; now it stands and the upgrade seals
    it, and the other is refused (and put back when next read)."""
    now = datetime.now(UTC)
    for n in ("5", "6"):
        device = enrol(services, f"LW-W{n}", staff_id=f"S-W{n}", site="NORTH")
        start = device.checkin_start(f"V-W{n}", now + timedelta(minutes=30), sent_at=now)
        assert services.alarms.handle(*start, now=now).outcome == "accepted"
    set_state_row(services, "LW-W5", watched_seal=None)
    set_state_row(services, "LW-W6", watched_seal=None, active_visit_id="V-ELSEWHERE")
    found = _cli(services, "verify", "--json")
    assert "device LW-W6" in found.output and "device LW-W5" not in found.output, found.output
    assert _awaiting(services) == 2
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert upgraded.exit_code == 1, upgraded.output
    listed = _under(upgraded.output, "seal-watched")
    assert "device LW-W5 (not low, visit V-W5): borne out" in listed, listed
    assert "device LW-W6 (not low, visit V-ELSEWHERE): refused" in listed, listed
    assert _state(services, "LW-W5").watched_seal is not None
    services.alarms.raise_offline(later(600, now))
    assert {a.device_id: a.visit_id for a in _alarms(services, "LW-W5", "device_offline")} == {
        "LW-W5": "V-W5"
    }
    assert [a.visit_id for a in _alarms(services, "LW-W6", "device_offline")] == ["V-W6"]


def test_a_visit_row_written_in_the_database_lends_a_device_no_visit(services: Any) -> None:
    """A visit row inserted by SQL, later than the device's own, and the device's visit pointed at
    it: the put-back took the latest visit not ended, whatever its seal, so the offline alarm named
    the forged visit."""
    device = enrol(services, "LW-W7", staff_id="S-W7", site="NORTH")
    now = datetime.now(UTC)
    start = device.checkin_start("V-W7", now + timedelta(minutes=30), sent_at=now)
    assert services.alarms.handle(*start, now=now).outcome == "accepted"
    with services.db.session() as session:
        forged = LoneWorkerVisit(
            device_id="LW-W7",
            visit_id="V-FORGED",
            wearer="S-ELSE",
            started_at=later(60, now),
            expected_end=later(3600, now),
        )
        session.add(forged)
    set_state_row(services, "LW-W7", active_visit_id="V-FORGED")
    services.alarms.raise_offline(later(600, now))
    (offline,) = _alarms(services, "LW-W7", "device_offline")
    assert offline.visit_id == "V-W7"
    assert _state(services, "LW-W7").active_visit_id == "V-W7"


def test_a_low_battery_alarm_planted_in_the_database_bears_out_no_flag(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A device with a healthy battery, flagged low by SQL with its seal cleared, beside an open
    low-battery alarm row planted by SQL: the planted row bore the flag out, so the flag passed for
    one written before seals, and the device's battery then failing raised no alarm. A low-battery
    alarm bears a flag out only when its own lifecycle seal holds."""
    device = enrol(services, "LW-W6", staff_id="S-W6", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(battery=80, sent_at=now), now=now)
    planted = {
        "id": "planted-low-battery",
        "device_id": "LW-W6",
        "kind": "low_battery",
        "severity": "amber",
        "status": "raised",
        "raised_at": now,
        "occurred_at": now,
        "updated_at": now,
    }
    _sql(services, insert(AlarmRecord).values(**planted))
    set_state_row(services, "LW-W6", battery_low=True, watched_seal=None)
    with caplog.at_level(logging.WARNING):
        services.alarms.handle(*device.heartbeat(battery=5, sent_at=later(10, now)), now=later(10, now))
    assert _warned(caplog, "LW-W6")
    raised = [a.id for a in _alarms(services, "LW-W6", "low_battery") if a.id != planted["id"]]
    assert len(raised) == 1, raised
