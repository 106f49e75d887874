"""``evidence verify`` run beside a working service, on both databases: it reads the ledger first and
the rows it checks against it after, so what the service commits in between (the clock escalating an
alarm, its entry and its row in one commit, then the tree head and a checkpoint written for it) must
not read as an alteration or a cut. Verification reads one
moment of the database (``Database.reading``), as the CLI and the verification jobs run it, after
reading what storage holds of the ledger's end. A new instance started beside a busy one checks its
ledger against the stored heads the same way (``tree_heads.stored_heads_contradicting``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from alarms.models import AlarmRecord
from chain_of_custody.checkpoints import write_checkpoint
from chain_of_custody.entries import CustodyAction
from chain_of_custody.tree_heads import TreeHeadLog
from chain_of_custody.verify import VerifyOptions, verify_service
from tests.test_alarms_kit import enrol, later
from tests.test_incidents_kit import store_item


def test_an_escalation_committed_while_verify_runs_is_no_alteration(services: Any) -> None:
    device = enrol(services, "LW-LIVE", staff_id="S-LIVE", site="NORTH")
    now = datetime.now(UTC)
    result = services.alarms.handle(*device.sos(), now=now)
    assert result.outcome == "accepted" and result.alarm_id
    fired: list[int] = []

    def between_steps(step: str) -> None:  # the ledger is read; the rows and storage are not yet
        if step == "checking checkpoints" and not fired:
            fired.append(services.alarms.fire_deadlines(later(3600, now)))
            with services.db.session() as session:  # the housekeeping's checkpoint of the new tip
                assert write_checkpoint(session, services.store, services.key, retain_days=1) is not None

    with services.db.reading() as session:
        report = verify_service(
            session, services.store, services.key, VerifyOptions(check_objects=False), between_steps
        )
    assert fired == [1]
    with services.db.session() as session:
        status = session.scalar(select(AlarmRecord.status).where(AlarmRecord.id == result.alarm_id))
    assert status == "escalated"
    assert report.ok, report.problems
    with services.db.reading() as session:  # and a verification after it sees the escalation whole
        after = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    assert after.ok, after.problems
    assert after.entries_checked > report.entries_checked


def test_an_instance_starting_while_another_appends_is_not_taken_for_a_cut(
    services: Any, monkeypatch: Any
) -> None:
    """A new process's tree reads the ledger, then lists the heads in storage to check it against
    them. Another instance's commit between the two stores a head of one entry more than the tree
    read: that is the ledger growing, not a cut tail, and the new process signs on."""
    for n in range(3):
        with services.db.session() as session:
            services.ledger.append(session, CustodyAction.VIEWED, "user:test", details={"n": n})
    starting = TreeHeadLog(services.store, services.key, retain_days=1)
    listed = services.store.list_stored
    appended: list[int] = []

    def list_while_another_appends(prefix: str, **kw: Any) -> Any:
        if not appended:  # the other instance commits, and its head is stored before it returns
            with services.db.session() as session:
                entry = services.ledger.append(session, CustodyAction.VIEWED, "user:test", details={"n": 3})
            appended.append(entry.seq)
        return listed(prefix, **kw)

    monkeypatch.setattr(services.store, "list_stored", list_while_another_appends)
    starting.catch_up(services.db.engine)
    assert appended and starting.contradicted is None
    assert starting.tree.size == appended[0]  # the entry committed meanwhile is in its tree
    with services.db.reading() as session:  # and the ledger is whole
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    assert report.ok, report.problems


def test_verify_holds_no_snapshot_while_it_hashes_the_objects(services: Any, monkeypatch: Any) -> None:
    """Re-hashing every stored object may take hours: the rows are all read first and the reading
    transaction ended, so PostgreSQL is not kept from clearing the rows the service rewrites."""
    for _ in range(3):
        store_item(services)
    hashed: list[bool] = []
    digests_of = services.store.digests_of

    with services.db.reading() as session:

        def hashing(*args: Any, **kw: Any) -> Any:
            hashed.append(session.in_transaction())
            return digests_of(*args, **kw)

        monkeypatch.setattr(services.store, "digests_of", hashing)
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=True))
    assert report.ok, report.problems
    assert len(hashed) == 3 and not any(hashed), hashed
