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
from sqlalchemy import select

from alarms.models import AlarmRecord
from tests.test_alarms_kit import enrol, later
from tests.test_heard_seals import _state
from tests.test_heard_seals import _warned_of as _warned
from tests.test_visit_seals import _cli, set_state_row


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
