"""A transaction asks the database for the ledger head's row once: the lock lasts to the end of the
transaction, so later appends (and writers that take the lock first to order their own locks) use
the row it holds, and each item's last entry appended in it is remembered. A rollback, to a
savepoint too, forgets both, so the chain stays whole."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from chain_of_custody.entries import check_entry
from chain_of_custody.ledger import Ledger
from incidents.retention import lock_ledger


@contextmanager
def statements(services: Any) -> Iterator[list[str]]:
    """Every statement the service's engine sends while inside."""
    sent: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split()))

    engine = services.db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


def head_reads(sent: list[str]) -> int:
    return sum(1 for s in sent if s.startswith("SELECT") and "FROM ledger_head" in s)


def last_entry_reads(sent: list[str]) -> int:
    return sum(1 for s in sent if s.startswith("SELECT custody_entries.item_seq"))


def whole_chain(services: Any) -> list[Any]:
    """Every entry, checked: signed, each one's ``prev_hash`` the one before's hash, and each item's
    entries numbered 1, 2, ... with each one's ``item_prev_hash`` its item's previous entry's hash."""
    ledger: Ledger = services.ledger
    with services.db.session() as session:
        chain = list(Ledger.all_entries(session))
    last_of: dict[str, Any] = {}
    for before, entry in zip([None, *chain], chain, strict=False):
        assert check_entry(entry, ledger.verifier) == []
        if before is not None:
            assert entry.body.seq == before.body.seq + 1
            assert entry.body.prev_hash == before.entry_hash
        item = entry.body.item_id
        if item is not None:
            previous = last_of.get(item)
            assert entry.body.item_seq == (previous.body.item_seq + 1 if previous else 1)
            assert entry.body.item_prev_hash == (previous.entry_hash if previous else None)
            last_of[item] = entry
    return chain


def test_one_transaction_reads_the_head_row_and_an_items_last_entry_once(services: Any) -> None:
    item, other = str(uuid.uuid4()), str(uuid.uuid4())
    with services.db.session() as session:
        services.ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 0})
    with services.db.session() as session, statements(services) as sent:
        lock_ledger(session)  # a writer ordering its locks first
        for n in range(1, 4):
            services.ledger.append(session, "viewed", "user:a", item_id=item, details={"n": n})
        lock_ledger(session)
        services.ledger.append(session, "viewed", "user:a", item_id=other, details={"n": 4})
        services.ledger.append(session, "viewed", "user:a", details={"n": 5})
    # Before: one head read for each append and each lock taken first (7), one last-entry read
    # for each append to an item (4).
    assert head_reads(sent) == 1
    assert last_entry_reads(sent) == 2  # once for each item
    chain = whole_chain(services)
    assert [e.body.item_seq for e in chain if e.body.item_id == item] == [1, 2, 3, 4]


def test_the_next_transaction_reads_the_head_row_again(services: Any) -> None:
    item = str(uuid.uuid4())
    for n in range(3):
        with services.db.session() as session, statements(services) as sent:
            services.ledger.append(session, "viewed", "user:a", item_id=item, details={"n": n})
        assert head_reads(sent) == 1 and last_entry_reads(sent) == 1
    whole_chain(services)


def test_a_savepoint_rolled_back_takes_its_entries_and_what_was_remembered_of_them(services: Any) -> None:
    # The ledger alone: the service's tree heads do not cover entries a savepoint gave back (no
    # service path appends inside one), so they are left out here.
    ledger = Ledger(services.ledger.key)
    item = str(uuid.uuid4())
    with services.db.session() as session:
        ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 0})
        try:
            with session.begin_nested():
                ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 1})
                ledger.append(session, "viewed", "user:a", details={"n": 2})
                raise RuntimeError("given up")
        except RuntimeError:
            pass
        ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 3})
        with session.begin_nested():  # kept: what it appended counts
            ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 4})
        ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 5})
    chain = whole_chain(services)
    mine = [e for e in chain if e.body.item_id == item]
    assert [e.body.item_seq for e in mine] == [1, 2, 3, 4]
    assert [e.body.details for e in mine] == ['{"n":0}', '{"n":3}', '{"n":4}', '{"n":5}']


def test_a_transaction_rolled_back_leaves_the_next_one_a_whole_chain(services: Any) -> None:
    item = str(uuid.uuid4())
    with services.db.session() as session:
        services.ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 0})
    try:
        with services.db.session() as session:
            services.ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 1})
            raise RuntimeError("given up")
    except RuntimeError:
        pass
    with services.db.session() as session:
        services.ledger.append(session, "viewed", "user:a", item_id=item, details={"n": 2})
    mine = [e for e in whole_chain(services) if e.body.item_id == item]
    assert [e.body.details for e in mine] == ['{"n":0}', '{"n":2}']


def test_the_merkle_log_adds_no_statement_to_an_append(services: Any) -> None:
    """A commit covered by a signed tree head sends the statements of the hash chain alone: the
    tree lives in the process (its leaves handed over by the commit), so no node, frontier or head
    row is read or written per append, nor the entries read back; what the log adds is one
    signature and one store put a head (shared by concurrent commits)."""
    chain_alone = Ledger(services.ledger.key)
    log = services.ledger.tree_heads

    def three_commits(ledger: Ledger) -> list[list[str]]:
        sent_each = []
        for n in range(3):
            with services.db.session() as session, statements(services) as sent:
                ledger.append(session, "viewed", "user:a", item_id=str(uuid.uuid4()), details={"n": n})
            sent_each.append(sent)
        return sent_each

    three_commits(chain_alone)
    chain = three_commits(chain_alone)
    with services.db.session() as session:  # the tree catches up with the chain's entries, once
        services.ledger.append(session, "viewed", "user:a", details={"n": 0})
    written = log.written
    merkle = three_commits(services.ledger)
    assert merkle == chain
    for sent in merkle:  # the head row, the item's last entry, the entry, the head's update
        assert sum(1 for s in sent if not s.startswith("BEGIN")) == 4, sent
    assert log.written - written == 3
    whole_chain(services)
