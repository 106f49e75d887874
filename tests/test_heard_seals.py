"""When a lone-worker device was last heard from (``lone_worker_states.last_seen_at``) against a
change made in the database behind the service's back, on both databases, by its effects: the clock
is driven by an explicit "now" (no sleeps), and a device on a visit that falls silent raises its
offline alarm whatever its row says (``chain_of_custody.heard_seals``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from alarms.models import AlarmRecord
from devices.models import LoneWorkerState
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_visit_seals import _cli, set_state_row


def _on_a_visit(services: Any, device_id: str, now: datetime) -> DeviceKit:
    """A device on a visit (due in 30 min), last heard from 10 s after it started."""
    device = enrol(services, device_id, staff_id="S-" + device_id, site="NORTH")
    start = device.checkin_start("V-" + device_id, now + timedelta(minutes=30), sent_at=now)
    assert services.alarms.handle(*start, now=now).outcome == "accepted"
    assert services.alarms.handle(*device.heartbeat(sent_at=later(10, now)), now=later(10, now)).outcome
    return device


def _offline(services: Any, device_id: str) -> list[AlarmRecord]:
    with services.db.session() as session:
        q = select(AlarmRecord).where(
            AlarmRecord.device_id == device_id, AlarmRecord.kind == "device_offline"
        )
        return list(session.scalars(q))


def _state(services: Any, device_id: str) -> LoneWorkerState:
    with services.db.session() as session:
        row = session.get(LoneWorkerState, device_id)
        assert row is not None
        session.expunge(row)
        return row


def _warned_of(caplog: pytest.LogCaptureFixture, device_id: str) -> bool:
    return any(
        r.levelno == logging.WARNING and getattr(r, "device", None) == device_id for r in caplog.records
    )


def test_every_message_seals_when_the_device_was_heard_from(services: Any) -> None:
    from chain_of_custody.heard_seals import heard_of

    now = datetime.now(UTC)
    _on_a_visit(services, "LW-H0", now)
    row = _state(services, "LW-H0")
    assert heard_of(services.alarms.lifecycle.seal_secret, "LW-H0", row.heard_seal) == row.last_seen_at


def test_last_heard_moved_on_with_its_deadline_silences_no_offline_alarm(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``last_seen_at`` and ``offline_due_at`` both moved a day on by SQL: the row is not due and
    looks heard from; the sweep counts from the sealed time, puts the deadline back, and the
    offline alarm is raised from when the device was really last heard from."""
    now = datetime.now(UTC)
    _on_a_visit(services, "LW-H1", now)
    set_state_row(services, "LW-H1", last_seen_at=later(86400, now), offline_due_at=later(86400 + 180, now))
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_offline(later(600, now))
    [alarm] = _offline(services, "LW-H1")
    assert alarm.occurred_at == later(10, now), alarm.occurred_at
    assert _warned_of(caplog, "LW-H1")


@pytest.mark.parametrize("seal", [None, "garbled"])
def test_a_last_heard_whose_seal_is_wiped_or_wrong_silences_no_offline_alarm(
    services: Any, seal: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The seal wiped (as a row from before seals) or garbled, with the time and deadline moved a
    day on: the device counts as silent, its offline alarm is raised, a warning names it."""
    now = datetime.now(UTC)
    _on_a_visit(services, "LW-H2", now)
    set_state_row(
        services,
        "LW-H2",
        heard_seal=seal,
        last_seen_at=later(86400, now),
        offline_due_at=later(86400 + 180, now),
    )
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_offline(later(600, now))
    assert len(_offline(services, "LW-H2")) == 1
    assert _warned_of(caplog, "LW-H2")


def test_a_row_from_before_seals_raises_nothing_while_its_device_is_heard_from(services: Any) -> None:
    """A row without a seal whose device keeps sending: no false offline alarm, and its next
    message seals it."""
    now = datetime.now(UTC)
    device = _on_a_visit(services, "LW-H3", now)
    set_state_row(services, "LW-H3", heard_seal=None)
    services.alarms.raise_offline(later(60, now))
    assert services.alarms.handle(*device.heartbeat(sent_at=later(120, now)), now=later(120, now)).outcome
    services.alarms.raise_offline(later(200, now))
    assert _offline(services, "LW-H3") == []
    assert _state(services, "LW-H3").heard_seal is not None


def test_verify_names_a_device_whose_last_heard_was_moved_on(services: Any) -> None:
    now = datetime.now(UTC)
    _on_a_visit(services, "LW-H4", now)
    assert _cli(services, "verify", "--json").exit_code == 0
    set_state_row(services, "LW-H4", last_seen_at=later(86400, now))
    r = _cli(services, "verify", "--json")
    assert r.exit_code != 0
    assert "device_last_heard_altered" in r.output and "device LW-H4" in r.output, r.output


def test_upgrade_seals_seals_rows_from_before_and_refuses_a_time_to_come(services: Any) -> None:
    """Rows without a seal count as awaiting the upgrade; ``upgrade-seals --yes`` seals the one
    whose time has passed and refuses the one later than now."""
    from chain_of_custody.awaiting_upgrade import awaiting_upgrade
    from chain_of_custody.heard_seals import heard_of

    now = datetime.now(UTC)
    _on_a_visit(services, "LW-H5", now - timedelta(hours=1))
    _on_a_visit(services, "LW-H6", now - timedelta(hours=1))
    set_state_row(services, "LW-H5", heard_seal=None)
    set_state_row(services, "LW-H6", heard_seal=None, last_seen_at=later(86400, now))
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["lone_worker_states"] == 2
    listed = _cli(services, "upgrade-seals")
    assert "seal-last-heard" in listed.output and "device LW-H5" in listed.output, listed.output
    done = _cli(services, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # the time to come is refused
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("device LW-H")}
    assert "sealed as it stands" in lines["device LW-H5"], done.output
    assert "REFUSED" in lines["device LW-H6"], done.output
    row = _state(services, "LW-H5")
    assert heard_of(services.alarms.lifecycle.seal_secret, "LW-H5", row.heard_seal) == row.last_seen_at
    assert _state(services, "LW-H6").heard_seal is None
