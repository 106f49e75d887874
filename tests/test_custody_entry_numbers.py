"""A ledger row whose number is not a whole number is named by ``evidence verify``, never a crash or
a finding about something else. SQLite keeps whatever SQL writes into a column (``'5a'``, ``5.5``,
bytes); no entry of the service is numbered so, and a walk that counts along the chain would fail
on it. It is named once (``entry_number_not_integer``) with the place its hash links give it and
whether it holds there; PostgreSQL's column refuses such a value outright."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from chain_of_custody.models import CustodyEntry
from chain_of_custody.verify import verify_service
from tests.test_custody_tamper import _store_item


def _ledger(s: Any) -> tuple[list[int], int]:
    """Three items on the ledger; (every entry's number, one in the middle belonging to an item)."""
    for n in range(3):
        _store_item(s, bytes([n]) * 1000, f"numbered-{n}")
    with s.db.session() as session:
        numbers = list(session.scalars(select(CustodyEntry.seq).order_by(CustodyEntry.seq)))
        of_items = list(
            session.scalars(
                select(CustodyEntry.seq).where(CustodyEntry.item_id.is_not(None)).order_by(CustodyEntry.seq)
            )
        )
    return numbers, of_items[len(of_items) // 2]


def _renumber(s: Any, column: str, value: str, seq: int) -> str:
    """Set the column of entry #seq to ``value`` (SQL) and return the entry's id."""
    with s.db.session() as session:
        entry_id = str(session.scalar(select(CustodyEntry.id).where(CustodyEntry.seq == seq)))
        session.execute(text(f"UPDATE custody_entries SET {column} = {value} WHERE seq = {seq}"))
    return entry_id


def _problems(s: Any) -> list[Any]:
    with s.db.reading() as session:
        return list(verify_service(session, s.store, s.key).problems)


@pytest.mark.parametrize(
    ("value", "shown", "at_end"),
    [("'5a'", "'5a'", False), ("5.5", "5.5", False), ("X'01'", "b'\\x01'", False), ("'9z'", "'9z'", True)],
)
def test_an_entry_renumbered_by_sql_is_named_where_its_links_put_it(
    sqlite_services: Any, value: str, shown: str, at_end: bool
) -> None:
    s = sqlite_services
    numbers, middle = _ledger(s)
    seq = numbers[-1] if at_end else middle
    entry_id = _renumber(s, "seq", value, seq)
    problems = _problems(s)
    assert [p.kind for p in problems] == ["entry_number_not_integer"], [str(p) for p in problems]
    (named,) = problems
    assert named.where == f"custody entry {entry_id}"
    assert f"its seq is {shown}" in named.detail, named.detail
    assert f"put it at #{seq}, where its hash and signature hold: only its number was changed" in named.detail


def test_an_entry_renumbered_and_edited_is_named_as_not_holding_where_it_belongs(
    sqlite_services: Any,
) -> None:
    s = sqlite_services
    _, seq = _ledger(s)
    entry_id = _renumber(s, "seq", "'x'", seq)
    with s.db.session() as session:
        session.execute(text("UPDATE custody_entries SET actor = 'someone' WHERE seq = 'x'"))
    problems = _problems(s)
    assert [p.kind for p in problems] == ["entry_number_not_integer"], [str(p) for p in problems]
    assert problems[0].where == f"custody entry {entry_id}"
    assert f"put it at #{seq}, where its content does not match" in problems[0].detail


@pytest.mark.parametrize(("value", "shown"), [("'1a'", "'1a'"), ("1.5", "1.5"), ("X'02'", "b'\\x02'")])
def test_an_entry_whose_number_in_its_items_chain_is_not_whole_is_named(
    sqlite_services: Any, value: str, shown: str
) -> None:
    s = sqlite_services
    _, seq = _ledger(s)
    entry_id = _renumber(s, "item_seq", value, seq)
    problems = _problems(s)
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["entry_altered", "entry_number_not_integer"], [str(p) for p in problems]
    named = next(p for p in problems if p.kind == "entry_number_not_integer")
    assert named.where == f"custody entry {entry_id}" and f"its item_seq is {shown}" in named.detail
    altered = next(p for p in problems if p.kind == "entry_altered")
    assert altered.where == f"custody entry #{seq}"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_refuses_an_entry_number_that_is_not_whole(services: Any) -> None:
    s = services
    _, seq = _ledger(s)
    for value in ("'5a'", "5.5"):
        with pytest.raises(DBAPIError):
            _renumber(s, "seq", value, seq)
    assert _problems(s) == []


def test_two_entries_renumbered_in_a_row_are_each_named_in_place(sqlite_services: Any) -> None:
    s = sqlite_services
    _, seq = _ledger(s)
    first = _renumber(s, "seq", "'a'", seq)
    second = _renumber(s, "seq", "'b'", seq + 1)
    problems = _problems(s)
    assert [p.kind for p in problems] == ["entry_number_not_integer"] * 2, [str(p) for p in problems]
    named = {p.where: p.detail for p in problems}
    assert f"put it at #{seq}, where its hash and signature hold" in named[f"custody entry {first}"]
    assert f"put it at #{seq + 1}, where its hash and signature hold" in named[f"custody entry {second}"]
