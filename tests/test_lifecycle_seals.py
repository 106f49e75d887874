"""An alarm's lifecycle sealed with its deadline (``chain_of_custody.lifecycle_seals``), on both
databases, by its effects, the clock driven by an explicit "now" (no sleeps): what ``evidence
verify`` and ``evidence upgrade-seals`` say of an alarm whose lifecycle was changed by SQL, that
an operator's action on such an alarm acts on the alarm its custody record holds, that the seal is
written in the alarm's own statement, and that a sweep pass costs what the open alarms cost, not
what the resolved ones do (tests/test_deadline_seals.py has the escalations put back)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update

from alarms import rules
from alarms.models import AlarmRecord
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from tests.test_alarms_kit import DeviceKit, count_lifecycle_checks, enrol, later
from tests.test_visit_seals import _cli, _sql

_ACKNOWLEDGED_BY_SQL = {"status": "acknowledged", "ack_due_at": None, "next_deadline": None}


def _sos(services: Any, device: DeviceKit, at: datetime) -> str:
    sos = services.alarms.handle(*device.sos(sent_at=at), now=at)
    assert sos.outcome == "accepted" and sos.alarm_id
    services.alarms.make_whole(sos.alarm_id)
    return str(sos.alarm_id)


def _alter(services: Any, alarm_id: str, **values: Any) -> None:
    _sql(services, update(AlarmRecord).where(AlarmRecord.id == alarm_id).values(**values))


def _row(services: Any, alarm_id: str) -> AlarmRecord:
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        assert row is not None
        session.expunge(row)
        return row


def test_verify_names_an_alarm_whose_lifecycle_was_changed_in_the_database(services: Any) -> None:
    """Marked acknowledged by SQL: ``evidence verify`` names it while its row is so, and after the
    clock put it back (the ledger records what was found), and it escalated on time all the same."""
    device = enrol(services, "LW-L1", staff_id="S-L1", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    assert _cli(services, "verify", "--json").exit_code == 0
    _alter(
        services,
        alarm_id,
        acknowledged_at=later(5, now),
        acknowledged_by="user:nobody",
        **_ACKNOWLEDGED_BY_SQL,
    )
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0
    assert f"alarm {alarm_id}" in found.output and "alarm_lifecycle_altered" in found.output, found.output
    services.alarms.fire_deadlines(later(3600, now))
    row = _row(services, alarm_id)
    assert (row.status, row.escalation_reason, row.acknowledged_by) == ("escalated", "ack_timeout", None)
    after = _cli(services, "verify", "--json")
    assert after.exit_code != 0
    assert "alarm_lifecycle_altered" in after.output and "put back" in after.output, after.output


def test_an_operators_action_on_an_alarm_resolved_in_the_database_acts_on_the_recorded_one(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Marked resolved by SQL, the alarm refused the operator's escalation as "already resolved":
    the operator acts on the alarm its custody record holds open, and a warning names it."""
    device = enrol(services, "LW-L2", staff_id="S-L2", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    _alter(services, alarm_id, status="resolved", resolved_at=later(5, now), outcome="test", ack_due_at=None)
    with caplog.at_level(logging.WARNING):
        view = services.alarms.act(alarm_id, rules.Escalate(by="user:op", at=later(10, now)))
    assert view["status"] == "escalated", view
    row = _row(services, alarm_id)
    assert (row.escalated_by, row.outcome, row.resolved_at) == ("user:op", None, None)
    assert any(getattr(r, "alarm", None) == alarm_id for r in caplog.records if r.levelno == logging.WARNING)


def test_upgrade_seals_seals_lifecycles_the_custody_record_bears_out(services: Any) -> None:
    """Alarms raised before lifecycles were sealed have no seal: ``upgrade-seals --yes`` seals one
    whose status and deadline are what its custody record says, refuses one marked acknowledged by
    SQL meanwhile, and that one still escalates, by its recorded deadline."""
    kept_device = enrol(services, "LW-L3", staff_id="S-L3", site="NORTH")
    moved_device = enrol(services, "LW-L4", staff_id="S-L4", site="NORTH")
    now = datetime.now(UTC)
    kept, moved = _sos(services, kept_device, now), _sos(services, moved_device, now)
    for alarm_id in (kept, moved):
        _alter(services, alarm_id, lifecycle_seal=None)
    _alter(services, moved, acknowledged_at=later(5, now), **_ACKNOWLEDGED_BY_SQL)
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["alarm_lifecycles"] == 2
    listed = _cli(services, "upgrade-seals")
    assert "seal-lifecycle" in listed.output and f"alarm {kept}" in listed.output, listed.output
    done = _cli(services, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # a step refused a row: the one marked acknowledged
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("alarm ")}
    assert "matches its custody record" in lines[f"alarm {kept}"], done.output
    assert "REFUSED" in lines[f"alarm {moved}"] and "status" in lines[f"alarm {moved}"], done.output
    assert _row(services, kept).lifecycle_seal is not None and _row(services, moved).lifecycle_seal is None
    services.alarms.fire_deadlines(later(3600, now))
    assert [_row(services, a).escalation_reason for a in (kept, moved)] == ["ack_timeout", "ack_timeout"]


def test_an_sos_writes_its_lifecycle_seal_in_its_own_statement(services: Any) -> None:
    """The seal is written with the alarm's row: an SOS, up to the device's ack, makes no statement
    on ``alarms`` but the one that inserts it (its lifecycle seal with it)."""
    device = enrol(services, "LW-L5", staff_id="S-L5", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.sos(sent_at=later(-60, now)), now=later(-60, now))  # warm
    services.alarms.make_whole_inline = False  # the ack path alone: made whole after the ack
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    event.listen(services.db.engine, "before_cursor_execute", note)
    try:
        sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    finally:
        event.remove(services.db.engine, "before_cursor_execute", note)
    assert sos.outcome == "accepted" and sos.alarm_id
    on_alarms = [s for s in seen if " alarms " in f" {s} ".replace("(", " ").replace("\n", " ")]
    writes = [s for s in on_alarms if s.lstrip().upper().startswith(("INSERT", "UPDATE", "WITH"))]
    assert len(writes) == 1 and "lifecycle_seal" in writes[0], writes
    assert not [s for s in writes if s.lstrip().upper().startswith("UPDATE")], writes
    assert _row(services, str(sos.alarm_id)).lifecycle_seal is not None


def test_a_sweep_pass_costs_what_the_open_alarms_cost_not_the_resolved_ones(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep runs every 30 s: it looks at (and seals are checked for) the alarms open by their
    row or their custody record only, and reads only the custody entries appended since its last
    pass, however many alarms were resolved before."""
    device, other = enrol(services, "LW-L6", staff_id="S-L6"), enrol(services, "LW-L7", staff_id="S-L7")
    now = datetime.now(UTC)
    checked = count_lifecycle_checks(monkeypatch)
    clock = services.alarms.timekeeper

    def resolved(n: int, start: int) -> None:
        for i in range(n):
            alarm_id = _sos(services, device, later(start + i, now))
            services.alarms.act(
                alarm_id, rules.Resolve(by="user:op", at=later(start + i, now), outcome="test")
            )

    def one_pass(at: int) -> tuple[int, int, int]:
        checked.clear()
        looked, read = clock.looked_at, clock.open_by_custody.read
        clock.restore_deadlines(later(at, now))
        return clock.looked_at - looked, len(checked), clock.open_by_custody.read - read

    open_id = _sos(services, other, now)
    resolved(3, 1)
    one_pass(100)  # the first pass reads the ledger's alarm entries once
    resolved(40, 200)
    looked, sealed, read = one_pass(300)
    assert (looked, sealed) == (1, 1), (looked, sealed, checked)
    assert checked == [open_id]
    assert read <= 40 * 3, read  # the entries of the alarms raised and resolved since: not history
    assert one_pass(400) == (1, 1, 0)
    with services.db.session() as session:
        assert session.scalar(select(AlarmRecord.status).where(AlarmRecord.id == open_id)) == "raised"


def test_an_open_alarm_deleted_in_the_database_is_named_by_the_sweep(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An unacknowledged SOS whose row was deleted by SQL cannot escalate: the sweep names it, as
    its custody record still holds it open (once: ``test_sweep_custody``; ``evidence verify`` names
    the missing row too)."""
    device = enrol(services, "LW-L8", staff_id="S-L8", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    with services.db.session() as session:
        session.execute(delete(AlarmRecord).where(AlarmRecord.id == alarm_id))
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(3600, now))
    assert any(
        getattr(r, "alarm", None) == alarm_id and "no row" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0
    assert f"alarm {alarm_id}" in found.output and "alarm_row_missing" in found.output, found.output


def test_upgrade_seals_seals_no_lifecycle_a_forged_entry_bears_out(services: Any) -> None:
    """An alarm's lifecycle seal cleared and its row marked resolved by SQL, with an ``alarm_changed``
    entry saying so written on the ledger's tip (signed with a key of the writer's own):
    ``upgrade-seals`` took the forged entry as its custody record and sealed the alarm resolved as
    it stood. Only entries that hold bear a row out: it is refused, and still escalates."""
    from tests.test_sweep_custody import _forge  # (it builds on this module's helpers)

    device = enrol(services, "LW-L9", staff_id="S-L9", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    _forge(services, alarm_id, status="resolved", outcome="test", deadline=None)
    resolved = {"status": "resolved", "outcome": "test", "ack_due_at": None, "next_deadline": None}
    _alter(services, alarm_id, lifecycle_seal=None, resolved_at=later(5, now), **resolved)
    done = _cli(services, "upgrade-seals", "--yes")
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("alarm ")}
    assert "REFUSED" in lines[f"alarm {alarm_id}"], done.output
    assert _row(services, alarm_id).lifecycle_seal is None
    services.alarms.fire_deadlines(later(3600, now))
    assert _row(services, alarm_id).escalation_reason == "ack_timeout"
