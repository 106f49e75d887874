"""Database engine and sessions, for SQLite (zero-config default) and PostgreSQL (production).

SQLite transactions start with ``BEGIN IMMEDIATE`` so that two writers never deadlock on a lock
upgrade, and the threads of one process take their turns at it in order (``sqlite_writes``);
PostgreSQL uses ordinary transactions plus row locks where the ledger needs them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from .sqlite_writes import begin_writing, connection_class, queue_for

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base shared by every package's tables."""

    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_postgres(session: Session) -> bool:
    """Whether the session talks to PostgreSQL (else SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: Session, table: Any) -> Any:
    """``INSERT`` in the session's dialect, for ``ON CONFLICT`` clauses (both dialects spell them alike)."""
    target: Table | Any = table
    return pg_insert(target) if is_postgres(session) else sqlite_insert(target)


READ_ONLY = "evidence_read_only"  # an execution option: the transaction only reads
SQLITE_BUSY_SECONDS = 30  # how long a SQLite write waits for the write lock before "database is locked"


def make_engine(url: str) -> Engine:
    """An engine tuned for the dialect: WAL and immediate transactions on SQLite, a pool on PostgreSQL."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        queue = queue_for(path, SQLITE_BUSY_SECONDS)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_SECONDS,
                "factory": connection_class(queue),
            },
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")  # other processes
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # A transaction that only reads (``Database.reading``) takes no write lock; one that
            # writes waits for its turn among this process's threads first (``sqlite_writes``).
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                begin_writing(
                    conn.connection.dbapi_connection, lambda: conn.exec_driver_sql("BEGIN IMMEDIATE")
                )

        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_use_lifo=True)
    ping_after_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "evidence_idle_since"


def ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before handing it out only when it has lain idle ``idle_seconds``
    or more, not on every checkout (``pool_pre_ping`` costs a round trip each time: a player's range
    checks out two or three connections in a few milliseconds). A connection the server or the
    network dropped while it lay idle is found here and replaced (``DisconnectionError``: the pool
    opens another), as before. One used within the last second is handed out as it is; if the
    server went away in that second, the statement fails once and SQLAlchemy invalidates the pool,
    as it does for a connection lost mid-transaction. The pool hands out the most recently used
    connection first (LIFO), so connections in steady use stay fresh and the rest idle out."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # just opened, or used a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure of the ping means: open another
            raise DisconnectionError(f"pooled connection dropped while idle: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection dropped while idle")


# An ``after_commit`` hook cannot raise through SQLAlchemy's commit; it puts its exception here instead.
COMMIT_DUTY_FAILED = "commit_duty_failed"


# The session a ``Database.session`` or ``Database.reading`` block is using in this context (thread,
# task), for a read deferred until a query needs it (``chain_of_custody.site_incidents``): it goes
# through the transaction the caller is in rather than a second connection. ``_OPEN`` is set in the
# session's ``info`` for the life of the block, so a context copied out of it (a task it started)
# never sees one that has ended.
_IN_USE: ContextVar[Session | None] = ContextVar("evidence_session_in_use", default=None)
_OPEN = "evidence_block_open"


def session_in_use() -> Session | None:
    """The session of the innermost ``Database`` block open in this context, or None."""
    found = _IN_USE.get()
    return found if found is not None and found.info.get(_OPEN) else None


@contextmanager
def _in_use(s: Session) -> Iterator[Session]:
    outer = _IN_USE.get()
    s.info[_OPEN] = True
    _IN_USE.set(s)
    try:
        yield s
    finally:
        s.info.pop(_OPEN, None)
        if _IN_USE.get() is s:  # set, not reset: a block may end in another context than it began
            _IN_USE.set(outer)


class Database:
    """Owns the engine and hands out sessions that commit on success and roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error. A duty that must be done
        once the commit is durable and before anyone is told (see ``COMMIT_DUTY_FAILED``) and that
        failed is raised here, after the commit, so the caller acknowledges nothing."""
        with self.sessions() as s, _in_use(s):
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
            failed = s.info.pop(COMMIT_DUTY_FAILED, None)
            if failed is not None:
                raise failed

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A transaction that only reads, rolled back at the end. On SQLite it begins without taking
        the write lock, so a long read (a whole verification) does not hold every writer off."""
        with (
            Session(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False) as s,
            _in_use(s),
        ):
            try:
                yield s
            finally:
                s.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
