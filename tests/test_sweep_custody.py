"""The clock's sweep takes only custody entries as the service signed them, and starts from its sealed
checkpoint (``chain_of_custody.sweep_cursor``), on both databases, the clock driven by an explicit
"now" (no sleeps): an alarm marked resolved by SQL, with an entry written or edited in the database
to say so, still escalates, a warning names the entry and ``evidence verify`` names it too; a new
process reads only the entries after the checkpoint, and one whose checkpoint was altered reads
the ledger whole."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, update

import alarms.lifecycle
import alarms.models
from alarms import rules
from chain_of_custody.canonical import canonical_json, rfc3339
from chain_of_custody.entries import ChainReport, CustodyAction, EntryBody
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry, LedgerHead
from tests.test_alarms_kit import count_lifecycle_checks, enrol, later
from tests.test_lifecycle_seals import _alter, _row, _sos
from tests.test_visit_seals import _cli, _sql

_LIFECYCLE = ("alarm_raised", "alarm_changed")
_RESOLVED_BY_SQL = {"status": "resolved", "outcome": "test", "ack_due_at": None, "next_deadline": None}


def _latest_entry(session: Any, alarm_id: str) -> CustodyEntry:
    return session.scalars(
        select(CustodyEntry)
        .where(CustodyEntry.action.in_(_LIFECYCLE), CustodyEntry.details.contains(alarm_id))
        .order_by(CustodyEntry.seq.desc())
        .limit(1)
    ).one()


def _forge(services: Any, alarm_id: str, /, item_id: str | None = None, **said: Any) -> int:
    """An ``alarm_changed`` entry written by SQL on the ledger's tip (naming ``item_id``), the
    alarm's latest entry's details with ``said`` (:func:`forged_on_tip`)."""
    with services.db.session() as session:
        details = {**json.loads(_latest_entry(session, alarm_id).details), **said}
    return forged_on_tip(services, "alarm_changed", details, item_id)


def forged_on_tip(services: Any, action: str, details: dict[str, Any], item_id: str | None = None) -> int:
    """A custody entry written by SQL on the ledger's tip (naming ``item_id``), hashed and chained
    as the service would, signed with a key of the writer's own; the head row moved on to it."""
    with services.db.session() as session:
        head = session.get(LedgerHead, 1)
        assert head is not None
        last = None
        if item_id is not None:  # chained on the item's entries too, as the service would
            last = session.scalars(
                select(CustodyEntry)
                .where(CustodyEntry.item_id == item_id)
                .order_by(CustodyEntry.item_seq.desc())
            ).first()
        body = EntryBody(
            seq=head.last_seq + 1,
            id=str(uuid.uuid4()),
            at=rfc3339(datetime.now(UTC)),
            action=action,
            actor="user:op",
            item_id=item_id,
            item_seq=None if item_id is None else (last.item_seq or 0) + 1 if last else 1,
            details=canonical_json(details).decode(),
            prev_hash=head.last_hash,
            item_prev_hash=last.entry_hash if last else None,
            key_id=services.key.key_id,
        )
        forger = ServiceKey(Ed25519PrivateKey.generate())
        row = CustodyEntry(**{k: getattr(body, k) for k in body.__dataclass_fields__})
        row.entry_hash, row.signature = body.digest(), forger.sign(body.canonical())
        session.add(row)
        head.last_seq, head.last_hash = body.seq, row.entry_hash
    return body.seq


def _named(caplog: pytest.LogCaptureFixture, **extra: Any) -> bool:
    return any(
        all(getattr(r, k, None) == v for k, v in extra.items())
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


def test_an_alarm_resolved_by_a_forged_entry_still_escalates(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Marked resolved by SQL, with an ``alarm_changed`` entry saying so written on the ledger's tip:
    the sweep names the entry, keeps the alarm open at its signed entry, puts it back and it
    escalates on time; ``evidence verify`` names the entry."""
    device = enrol(services, "LW-F1", staff_id="S-F1", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    services.alarms.fire_deadlines(later(1, now))  # a sweep: the cursor follows the alarm
    forged = _forge(services, alarm_id, status="resolved", outcome="test", deadline=None)
    _alter(services, alarm_id, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(3600, now))
    row = _row(services, alarm_id)
    assert (row.status, row.escalation_reason, row.outcome) == ("escalated", "ack_timeout", None)
    assert _named(caplog, entry=forged), [r.getMessage() for r in caplog.records]
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0 and f"custody entry #{forged}" in found.output, found.output


def test_an_operators_action_takes_the_latest_signed_entry_not_a_forged_one(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An alarm the sweep does not follow, marked resolved by SQL with a forged entry saying so: the
    operator's escalation acts on the alarm its signed entry holds open, not the forgery."""
    device = enrol(services, "LW-F2", staff_id="S-F2", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    forged = _forge(services, alarm_id, status="resolved", outcome="test", deadline=None)
    _alter(services, alarm_id, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    with caplog.at_level(logging.WARNING):
        view = services.alarms.act(alarm_id, rules.Escalate(by="user:op", at=later(10, now)))
    assert view["status"] == "escalated", view
    assert _named(caplog, entry=forged)


def test_an_alarm_whose_only_entry_was_edited_in_the_database_escalates(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Its ``alarm_raised`` entry edited to say resolved (no entry of it holds) and its row marked
    resolved by SQL: a new process's sweep takes it as raised and due, and it escalates."""
    device = enrol(services, "LW-F3", staff_id="S-F3", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    with services.db.session() as session:
        entry = _latest_entry(session, alarm_id)
        seq, details = entry.seq, {**json.loads(entry.details), "status": "resolved", "outcome": "test"}
        entry.details = canonical_json(details).decode()
    _alter(services, alarm_id, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(3600, now))
    assert _row(services, alarm_id).status == "escalated"
    assert _named(caplog, entry=seq)


def _counted_pass(services: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sweep pass as a new process makes it: (alarm rows looked at, lifecycle seals checked,
    custody entries read)."""
    from chain_of_custody.sweep_cursor import OpenByCustody

    checked = count_lifecycle_checks(monkeypatch)
    clock = services.alarms.timekeeper

    def one_pass(at: datetime) -> tuple[int, int, int]:
        clock.open_by_custody = OpenByCustody(services.key)  # a new process
        checked.clear()
        looked = clock.looked_at
        clock.restore_deadlines(at)
        return clock.looked_at - looked, len(checked), clock.open_by_custody.read

    return one_pass


def _alarm_entries(services: Any, after: int = 0) -> int:
    with services.db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(CustodyEntry)
                .where(CustodyEntry.action.in_(_LIFECYCLE), CustodyEntry.seq > after)
            )
        )


def test_a_new_process_reads_only_the_entries_after_the_sweeps_checkpoint(
    services: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """1 open and 43 resolved: a new process's first pass looks at 1 row, checks 1 seal and reads 0
    entries; with 3 resolved since, only theirs. A checkpoint altered in the database to leave the
    open alarm out (which was marked resolved by SQL) is named by ``evidence verify`` and refused
    by the sweep with a warning, the ledger is read whole, the alarm still escalates, and a checkpoint the service sealed takes its place."""
    from chain_of_custody.sweep_cursor import CHECKPOINT, check_sweep_checkpoint

    device, other = enrol(services, "LW-F4", staff_id="S-F4"), enrol(services, "LW-F5", staff_id="S-F5")
    now = datetime.now(UTC)
    one_pass = _counted_pass(services, monkeypatch)

    def resolved(n: int, start: int) -> None:
        for i in range(n):
            alarm_id = _sos(services, device, later(start + i, now))
            services.alarms.act(
                alarm_id, rules.Resolve(by="user:op", at=later(start + i, now), outcome="test")
            )

    open_id = _sos(services, other, now)
    resolved(43, 1)
    assert one_pass(later(100, now))[2] == _alarm_entries(services)  # no checkpoint yet: read whole
    assert one_pass(later(130, now)) == (1, 1, 0)
    with services.db.session() as session:
        kept = int(session.scalar(select(CHECKPOINT.c.seq)))
    resolved(3, 200)
    since = _alarm_entries(services, kept)
    assert 0 < since <= 3 * 3 and one_pass(later(300, now)) == (1, 1, since)

    _sql(services, update(CHECKPOINT).values(open_alarms="{}"))
    _alter(services, open_id, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    report = ChainReport()
    with services.db.session() as session:
        check_sweep_checkpoint(session, report, services.key)  # what ``evidence verify`` runs
    seen_by_verify = [p.kind for p in report.problems]
    whole = _alarm_entries(services)
    with caplog.at_level(logging.WARNING):
        looked, _, read = one_pass(later(400, now))
    assert read == whole and looked == 1
    assert any("checkpoint" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "alarm_sweep_checkpoint_refused" in seen_by_verify, seen_by_verify
    with services.db.session() as session:
        replaced = int(session.scalar(select(CHECKPOINT.c.seq)))
    assert _alarm_entries(services, replaced) <= 1  # sealed anew: its put-back entry alone is after it
    assert one_pass(later(401, now))[2] == _alarm_entries(services, replaced)
    services.alarms.fire_deadlines(later(3600, now))
    assert _row(services, open_id).status == "escalated"


def _signed(services: Any, **details: Any) -> int:
    """An ``alarm_changed`` entry the service signed, with these details."""
    with services.db.session() as session:
        entry = services.ledger.append(session, CustodyAction.ALARM_CHANGED, "user:op", details=details)
        return int(entry.seq)


def _no_row(caplog: pytest.LogCaptureFixture, alarm_id: str) -> int:
    """How many warnings named the alarm as one with no row."""
    return sum(
        1
        for r in caplog.records
        if r.levelno == logging.WARNING
        and getattr(r, "alarm", None) == alarm_id
        and "no row" in r.getMessage()
    )


def test_an_entry_naming_no_alarm_is_named_once_and_leaves_the_open_set(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries naming an alarm id no row has, one written by SQL and one the service signed: the
    sweep names each once, over three passes and a new process, and holds neither open (nor does its
    checkpoint); a real alarm marked resolved by SQL with a forged entry saying so stays open and
    escalates."""
    from chain_of_custody.sweep_cursor import OpenByCustody

    device = enrol(services, "LW-F6", staff_id="S-F6", site="NORTH")
    now = datetime.now(UTC)
    real = _sos(services, device, now)
    forged_for, signed_for = f"AL-none-{uuid.uuid4()}", f"AL-none-{uuid.uuid4()}"
    _forge(services, real, alarm_id=forged_for, status="raised")
    _signed(services, alarm_id=signed_for, status="raised", kind="sos", severity="red", outcome=None)
    _forge(services, real, status="resolved", outcome="test", deadline=None)
    _alter(services, real, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    clock = services.alarms.timekeeper
    with caplog.at_level(logging.WARNING):
        for at in (100, 200, 300):
            services.alarms.fire_deadlines(later(at, now))
        clock.open_by_custody = OpenByCustody(services.key)  # a new process, from the checkpoint
        for at in (400, 500):
            services.alarms.fire_deadlines(later(at, now))
    for unknown in (forged_for, signed_for):
        assert _no_row(caplog, unknown) == 1, [r.getMessage() for r in caplog.records]
        assert unknown not in clock.open_by_custody.open
    assert real in clock.open_by_custody.open
    assert _row(services, real).status == "escalated"


def test_an_open_alarm_deleted_and_written_back_resolved_is_named_once_and_escalates(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An unacknowledged SOS whose row is deleted by SQL is named once by the sweep (not at every
    pass, nor again by a new process) and set aside; written back by SQL marked resolved, it is
    looked at again, put back to its custody record and escalates: deleting a row takes no alarm
    off the sweep."""
    from chain_of_custody.sweep_cursor import OpenByCustody

    device = enrol(services, "LW-F7", staff_id="S-F7", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    table = alarms.models.AlarmRecord.__table__
    with services.db.session() as session:
        kept = dict(session.execute(select(table).where(table.c.id == alarm_id)).mappings().one())
    _sql(services, table.delete().where(table.c.id == alarm_id))
    clock = services.alarms.timekeeper
    with caplog.at_level(logging.WARNING):
        for at in (100, 200):
            services.alarms.fire_deadlines(later(at, now))
        clock.open_by_custody = OpenByCustody(services.key)  # a new process, from the checkpoint
        services.alarms.fire_deadlines(later(300, now))
    assert _no_row(caplog, alarm_id) == 1, [r.getMessage() for r in caplog.records]
    assert alarm_id not in clock.open_by_custody.open
    _sql(services, table.insert().values(**{**kept, **_RESOLVED_BY_SQL, "resolved_at": later(5, now)}))
    services.alarms.fire_deadlines(later(400, now))
    services.alarms.fire_deadlines(later(3600, now))
    assert _row(services, alarm_id).status == "escalated"


def _break(services: Any, alarm_id: str, how: str) -> None:
    """Every alarm entry naming the alarm deleted by SQL, or replaced by another action's entry (its
    hash that of its new body, so the next entry's link no longer holds), or renamed to another
    action with its hash kept (so every link after it still holds)."""
    with services.db.session() as session:
        entries = session.scalars(
            select(CustodyEntry).where(
                CustodyEntry.action.in_(_LIFECYCLE), CustodyEntry.details.contains(alarm_id)
            )
        ).all()
        assert entries
        for entry in entries:
            if how == "deleted":
                session.delete(entry)
                continue
            if how == "renamed":
                entry.action = "viewed"
                continue
            fields = {k: getattr(entry, k) for k in EntryBody.__dataclass_fields__ if k != "action"}
            entry.action, entry.entry_hash = "viewed", EntryBody(**fields, action="viewed").digest()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_entries_deleted_or_replaced_after_the_sweeps_cursor_are_named_and_the_alarm_escalates(
    services: Any, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """An SOS raised after the sweep's last pass whose entries are then deleted or replaced by SQL
    (another alarm's entries after it) and its row marked resolved: the next pass names the break
    once, reads the alarm entries whole and looks at every alarm, and the SOS escalates; an alarm
    the cursor held open whose entry before the cursor went too stays open and escalates."""
    device = enrol(services, "LW-F8", staff_id="S-F8", site="NORTH")
    other = enrol(services, "LW-F9", staff_id="S-F9", site="NORTH")
    now = datetime.now(UTC)
    held = _sos(services, other, now)
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(1, now))  # the cursor follows ``held``
    assert not any("chain" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    alarm_id = _sos(services, device, later(2, now))
    _sos(services, device, later(3, now))  # entries after it
    _break(services, alarm_id, how)
    _break(services, held, how)
    for each in (alarm_id, held):
        _alter(services, each, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(100, now))
        services.alarms.fire_deadlines(later(200, now))
    broken = [
        r for r in caplog.records if r.levelno == logging.WARNING and "chain is broken" in r.getMessage()
    ]
    assert len(broken) == 1, [r.getMessage() for r in caplog.records]
    services.alarms.fire_deadlines(later(3600, now))
    assert _row(services, alarm_id).status == "escalated"
    assert _row(services, held).status == "escalated"


def test_an_alarm_entry_renamed_in_the_database_with_its_hash_kept_still_escalates(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An SOS raised after the sweep's last pass whose entries' action was renamed by SQL (to
    ``viewed``), their stored hashes kept so the chain still links, and its row marked resolved: the
    sweep picked alarm entries by their action, so it never saw them, and the SOS never escalated.
    Every entry after the cursor now has its hash checked against its body: the renamed ones are
    named, and the SOS escalates."""
    device = enrol(services, "LW-FA", staff_id="S-FA", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.fire_deadlines(later(1, now))  # the cursor stands on the ledger's last entry
    alarm_id = _sos(services, device, later(2, now))
    _break(services, alarm_id, "renamed")
    _alter(services, alarm_id, resolved_at=later(5, now), **_RESOLVED_BY_SQL)
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(100, now))
        services.alarms.fire_deadlines(later(200, now))
    assert any("not as the service signed it" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    services.alarms.fire_deadlines(later(3600, now))
    assert _row(services, alarm_id).status == "escalated"
