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
