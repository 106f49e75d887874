"""Database engine and sessions, for SQLite (zero-config default) and PostgreSQL (production).

SQLite transactions start with ``BEGIN IMMEDIATE`` so that two writers never deadlock on a lock
upgrade, and the threads of one process take their turns at it in order (``sqlite_writes``);
PostgreSQL uses ordinary transactions plus row locks where the ledger needs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, ORMExecuteState, Session, sessionmaker
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
            # A transaction that only reads (``Database.reading``) takes no write lock, and SQLite
            # refuses any write in it (``query_only``: a write would take the lock behind the
            # queue's back); one that writes waits for its turn among this process's threads first
            # (``sqlite_writes``).
            reads = bool(conn.get_execution_options().get(READ_ONLY))
            info = conn.connection.info
            if info.get(_QUERY_ONLY, False) != reads:
                conn.exec_driver_sql(f"PRAGMA query_only={int(reads)}")
                info[_QUERY_ONLY] = reads
            if reads:
                conn.exec_driver_sql("BEGIN")
            else:
                begin_writing(
                    conn.connection.dbapi_connection, lambda: conn.exec_driver_sql("BEGIN IMMEDIATE")
                )

        @event.listens_for(engine, "checkin")
        def _sqlite_writable_again(dbapi_conn, record):  # type: ignore[no-untyped-def]
            # A pooled connection is handed out writable, whatever its last transaction was.
            if record is not None and record.info.pop(_QUERY_ONLY, False) and dbapi_conn is not None:
                dbapi_conn.execute("PRAGMA query_only=0")

        refuse_writes_clearly(engine)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_use_lifo=True)
    ping_after_idle(engine, PING_AFTER_IDLE_SECONDS)
    refuse_writes_clearly(engine)
    return engine


_QUERY_ONLY = "evidence_query_only"  # a pooled SQLite connection's ``PRAGMA query_only`` as last set


class WriteInReading(RuntimeError):
    """A write attempted inside a ``Database.reading`` block. Such a block is rolled back at its
    end, so the write would be lost without a word (PostgreSQL), or take SQLite's write lock
    outside its queue: it is refused where it is made instead. Write in ``Database.session``."""


def read_only_engine(engine: Engine) -> Engine:
    """``engine`` for transactions that only read: no write lock on SQLite (``READ_ONLY``) and
    ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`` on PostgreSQL (no extra round trip: psycopg
    sends it with the ``BEGIN``), so the database itself refuses a write. The connections are the
    engine's own (one pool).

    Such a transaction reads one moment of the database on both: from its first statement on, it
    sees nothing committed later (SQLite's read transactions do so anyway). A read of several
    statements (a page, a verification) is never torn by a commit between two of them: the
    ledger read before another transaction's commit and a row read after it never disagree."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
        options["isolation_level"] = "REPEATABLE READ"
    return engine.execution_options(**options)


_REFUSED_BY_DATABASE = (
    "attempt to write a readonly database",  # SQLite, ``PRAGMA query_only``
    "read-only transaction",  # PostgreSQL: cannot execute UPDATE in a read-only transaction
)


def refuse_writes_clearly(engine: Engine) -> None:
    """A write the database refused in a read-only transaction is raised as :class:`WriteInReading`
    (a statement the session could not tell was a write: ``text()``, a raw connection)."""

    @event.listens_for(engine, "handle_error")
    def _write_in_reading(context: Any) -> WriteInReading | None:
        conn = context.connection
        if conn is None or not conn.get_execution_options().get(READ_ONLY):
            return None
        said = str(context.original_exception)
        if not any(words in said for words in _REFUSED_BY_DATABASE):
            return None
        return WriteInReading(f"a write inside Database.reading, refused by the database: {said}")


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


# The check that every write transaction begun in this context (a request's thread, a task it started)
# runs first, on behalf of whoever the context acts for (``accounts.access.require_roles`` sets it to
# "the caller still stands": active, same role, credential not ended). It runs in that transaction,
# before its first statement of its own, so what the caller does is refused there and then when their
# authority ended after the request's sign-in; and it may lock what it reads (the caller's row), so
# an end made meanwhile waits for this transaction's commit. None: the service acts on its own.
_ACTING_FOR: ContextVar[Callable[[Session], None] | None] = ContextVar("evidence_acting_for", default=None)


def act_for(check: Callable[[Session], None]) -> None:
    """Every ``Database.session`` block begun from now on in this context (a request's, and what it
    runs on worker threads, which copy it) runs ``check`` first, in its transaction: it raises to
    refuse whatever the block would write."""
    _ACTING_FOR.set(check)


@contextmanager
def on_own_account() -> Iterator[None]:
    """Within this block, write transactions run no caller's check (``act_for``): what the service
    writes of its own (a browser session's activity) whoever's request it is serving."""
    token = _ACTING_FOR.set(None)
    try:
        yield
    finally:
        _ACTING_FOR.reset(token)


class ReadingSession(Session):
    """The session of a ``Database.reading`` block: every write made through it is refused. An
    object changed (or added, or deleted) and then expunged would leave the block with nothing for
    its end to find, and the change would be dropped without a word: an expunge with any change
    pending is refused as well, before anything is expunged."""

    def expunge(self, instance: object) -> None:
        _refuse_pending(self, "an expunge")
        super().expunge(instance)

    def expunge_all(self) -> None:
        _refuse_pending(self, "expunge_all")
        super().expunge_all()


def _changes(s: Session) -> str | None:
    """What the session would write at a flush, named for an error; None when nothing."""
    changed = [*s.new, *s.deleted, *(o for o in s.dirty if s.is_modified(o))]
    return ", ".join(sorted({type(o).__name__ for o in changed})) or None


def _refuse_pending(s: Session, what: str) -> None:
    changed = _changes(s)
    if changed:
        raise WriteInReading(
            f"{changed} changed inside Database.reading before {what}: write in Database.session"
        )


@event.listens_for(ReadingSession, "before_flush")
def _no_flush_in_reading(s: Session, _context: Any, _instances: Any) -> None:
    changed = _changes(s)
    if changed:
        raise WriteInReading(f"a flush of {changed} inside Database.reading: write in Database.session")


@event.listens_for(ReadingSession, "do_orm_execute")
def _no_write_statement_in_reading(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        what = type(state.statement).__name__.upper()
        raise WriteInReading(f"{what} statement inside Database.reading: write in Database.session")


class Database:
    """Owns the engine and hands out sessions that commit on success and roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.reads = read_only_engine(self.engine)  # made once: each one made adds a listener

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error. A duty that must be done
        once the commit is durable and before anyone is told (see ``COMMIT_DUTY_FAILED``) and that
        failed is raised here, after the commit, so the caller acknowledges nothing.

        In a context that acts for someone (``act_for``: a request's caller) their check runs first,
        in this transaction: what the block writes is refused, and nothing is written, when their
        authority no longer stands."""
        acting = _ACTING_FOR.get()
        with self.sessions() as s, _in_use(s):
            try:
                if acting is not None:
                    acting(s)
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
        the write lock, so a long read (a whole verification) does not hold every writer off. A
        write made in it (a flush, an ``INSERT``/``UPDATE``/``DELETE``, an object changed and left
        unflushed) raises :class:`WriteInReading` rather than being rolled back unseen."""
        with ReadingSession(self.reads, expire_on_commit=False) as s, _in_use(s):
            try:
                yield s
                changed = _changes(s)
                if changed:
                    raise WriteInReading(f"{changed} changed inside Database.reading and never written")
            finally:
                s.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
