"""A ``Database.reading`` block refuses every write made in it, on both databases.

The block is rolled back at its end: on PostgreSQL a write made in it was lost without a word, and
on SQLite it took the write lock outside the threads' queue (``storage.sqlite_writes``). Each way of
writing is refused where it is made, with :class:`WriteInReading`, and nothing of it is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session

from accounts.models import User
from storage.db import Database, WriteInReading

T0 = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    with database.session() as session:
        session.add(User(username="reader", password_hash="x", role="auditor", created_at=T0))
    yield database
    database.dispose()


def _flushed(session: Session) -> None:
    session.scalars(select(User)).one().role = "admin"
    session.flush()


def _left_unflushed(session: Session) -> None:
    session.scalars(select(User)).one().role = "admin"


def _added(session: Session) -> None:
    session.add(User(username="planted", password_hash="x", role="admin", created_at=T0))
    session.scalars(select(User)).all()  # the autoflush before the query


def _deleted(session: Session) -> None:
    session.delete(session.scalars(select(User)).one())


WRITES: dict[str, Callable[[Session], object]] = {
    "flush": _flushed,
    "unflushed change": _left_unflushed,
    "autoflush of a new row": _added,
    "deleted row": _deleted,
    "UPDATE statement": lambda s: s.execute(update(User).values(role="admin")),
    "INSERT statement": lambda s: s.execute(
        insert(User).values(username="planted", password_hash="x", role="admin", created_at=T0)
    ),
    "DELETE statement": lambda s: s.execute(delete(User)),
    "text()": lambda s: s.execute(text("UPDATE users SET role = 'admin'")),
    "driver SQL": lambda s: s.connection().exec_driver_sql("DELETE FROM users"),
}


@pytest.mark.parametrize("how", list(WRITES))
def test_a_write_inside_a_reading_block_is_refused_and_nothing_of_it_is_kept(db: Database, how: str) -> None:
    with pytest.raises(WriteInReading, match=r"Database\.reading"), db.reading() as session:
        WRITES[how](session)
    with db.reading() as session:
        assert [(u.username, u.role) for u in session.scalars(select(User))] == [("reader", "auditor")]


def test_the_connections_of_reading_blocks_write_again_afterwards(db: Database) -> None:
    """A refused write leaves no connection of the pool refusing writes: a write transaction, and a
    raw connection's, still write after reading blocks (SQLite's ``query_only`` is set back)."""
    for _ in range(3):
        with pytest.raises(WriteInReading), db.reading() as session:
            session.execute(text("UPDATE users SET role = 'admin'"))
        with db.reading() as session:
            assert session.scalar(select(User.role)) == "auditor"
    with db.session() as session:
        session.execute(update(User).values(full_name="Read Er"))
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("UPDATE users SET role = 'investigator'")
        raw.commit()
    finally:
        raw.close()
    with db.reading() as session:
        assert session.execute(select(User.role, User.full_name)).one() == ("investigator", "Read Er")


def _changed_then_expunged_all(session: Session) -> None:
    session.scalars(select(User)).one().role = "admin"
    session.expunge_all()


def _changed_then_expunged(session: Session) -> None:
    found = session.scalars(select(User)).one()
    found.role = "admin"
    session.expunge(found)


def _added_then_expunged(session: Session) -> None:
    planted = User(username="planted", password_hash="x", role="admin", created_at=T0)
    session.add(planted)
    session.expunge(planted)


def _deleted_then_expunged_all(session: Session) -> None:
    session.delete(session.scalars(select(User)).one())
    session.expunge_all()


EXPUNGED: dict[str, Callable[[Session], object]] = {
    "changed, then expunge_all": _changed_then_expunged_all,
    "changed, then expunge": _changed_then_expunged,
    "added, then expunge": _added_then_expunged,
    "deleted, then expunge_all": _deleted_then_expunged_all,
}


@pytest.mark.parametrize("how", list(EXPUNGED))
def test_a_change_expunged_inside_a_reading_block_is_refused_not_dropped(db: Database, how: str) -> None:
    """An expunge leaves nothing for the block's end to find, so a change pending at one (a coding
    error: the write belongs in ``Database.session``) is refused there rather than dropped unseen."""
    with pytest.raises(WriteInReading, match=r"Database\.reading"), db.reading() as session:
        EXPUNGED[how](session)
    with db.reading() as session:
        assert [(u.username, u.role) for u in session.scalars(select(User))] == [("reader", "auditor")]


def test_what_a_reading_block_only_read_is_expunged_and_kept_as_read(db: Database) -> None:
    """Read, then expunge (one object, then all), as the routes hand rows out of a reading block."""
    with db.reading() as session:
        found = session.scalars(select(User)).one()
        session.expunge(found)
        again = session.scalars(select(User)).one()
        session.expunge_all()
    assert (found.username, found.role, again.role) == ("reader", "auditor", "auditor")
