"""Rows an alarm transaction only inserts, written in one statement just before it commits.

A provisional SOS (``alarms.lifecycle``) inserts its event, its alarm, the device's ack (outbox) and a
change-feed row, and reads none of them back in the same transaction. Through the ORM's unit of
work that was four INSERTs, an advisory lock and most of the time an alarm took to handle. On
PostgreSQL they are staged here instead and written at ``before_commit`` by one statement of
data-modifying CTEs, which also takes the change feed's lock. Nothing in the transaction may read a
staged row back: only rows nobody queries before the commit are staged (see ``AlarmService``).
On SQLite staged objects simply join the session, as before: its writers are serialised anyway.

The change feed's rows are always written last, under a lock held to the commit, so their ids are
handed out in commit order and a stream reader that reads past the highest id never skips one.
The lock is the feed's own (not the ledger's), so a provisional alarm never waits for custody
work. SQLite needs none: its writers are serialised by ``BEGIN IMMEDIATE``.

The writing happens in listeners bound to one application's sessionmaker (:func:`bind`, called by
the alarm service for the database it writes), never to SQLAlchemy's ``Session`` class: a session
of another sessionmaker cannot stage rows (:func:`stage` refuses), so none is silently lost.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache, lru_cache
from typing import Any, cast

from sqlalchemy import Insert, Integer, Table, bindparam, event, func, insert, literal_column, select, true
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.base import instance_state

from storage.db import UTCDateTime, is_postgres

from .models import AlarmChange

# Any constant will do: it names the lock that orders the control room's change feed.
FEED_LOCK_KEY = 0x65766964_66656564  # "evid" "feed"

_STAGED = "alarm_staged_rows"
_FEED = "alarm_feed"
_BOUND = "alarm_staging_bound"


def bind(sessions: sessionmaker[Session]) -> None:
    """Write staged rows at the commit of every session this sessionmaker makes (once per sessionmaker).

    Whether it is bound is read from the sessionmaker's own ``info``, never from ``event.contains``:
    SQLAlchemy files class-level listeners under the ``id()`` of the sessionmaker's session class and
    keeps that entry after the class is collected, so a new sessionmaker that reuses the id would be
    taken for bound and none of its staged rows would be written."""
    if sessions.kw.get("info", {}).get(_BOUND):
        return
    event.listen(sessions, "before_commit", _write_staged)
    event.listen(sessions, "after_soft_rollback", _forget_staged)
    sessions.configure(info={**sessions.kw.get("info", {}), _BOUND: True})


def _check_bound(session: Session) -> None:
    if not session.info.get(_BOUND):
        raise RuntimeError(
            "this session's sessionmaker does not write staged alarm rows (alarms.staging.bind)"
        )


def stage(session: Session, obj: Any) -> None:
    """Insert ``obj`` at commit. The caller promises nothing reads it back before then."""
    _check_bound(session)
    if is_postgres(session):
        session.info.setdefault(_STAGED, []).append(obj)
    else:
        session.add(obj)


def stage_feed(session: Session, change: AlarmChange) -> None:
    """A change-feed row: written last, in commit order (see the module's docstring)."""
    _check_bound(session)
    session.info.setdefault(_FEED, []).append(change)


def _row_values(obj: Any, table: Table) -> dict[str, Any]:
    """Every column of the row: what was set on the object, else (as the ORM does for None too) the
    column's default.
    A serial id left unset is given by the database (and read back by :func:`_write_postgres`)."""
    given = instance_state(obj).dict
    serial = _serial(table)
    out: dict[str, Any] = {}
    for col in table.c:
        if col.key in given and (given[col.key] is not None or col.default is None):
            out[col.key] = given[col.key]
        elif col is serial:
            continue
        elif col.default is not None and getattr(col.default, "is_scalar", False):
            out[col.key] = col.default.arg  # type: ignore[attr-defined]
        elif col.default is not None and getattr(col.default, "is_callable", False):
            out[col.key] = col.default.arg(None)  # type: ignore[attr-defined]
        else:
            out[col.key] = None
    return out


@cache
def _serial(table: Table) -> Any:
    """The table's serial id column, if its ids come from the database (asked for every staged row)."""
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and isinstance(pk[0].type, Integer) and pk[0].default is None:
        return pk[0] if pk[0].autoincrement is not False else None
    return None


def _write_staged(session: Session) -> None:
    staged: list[Any] = session.info.pop(_STAGED, [])
    feed: list[AlarmChange] = session.info.pop(_FEED, [])
    if not staged and not feed:
        return
    if not is_postgres(session):
        session.add_all(staged)
        session.add_all(feed)
        return
    session.flush()  # the ORM's own rows first: staged rows may refer to them, never the reverse
    _write_postgres(session, staged, feed)


def _forget_staged(session: Session, previous_transaction: Any) -> None:
    """Rows staged in a transaction that rolled back are never written."""
    session.info.pop(_STAGED, None)
    session.info.pop(_FEED, None)


def _write_postgres(session: Session, staged: list[Any], feed: list[AlarmChange]) -> None:
    """One statement: a CTE per table of staged rows, the feed's lock, then the feed rows."""
    by_table: dict[Table, list[Any]] = {}
    for obj in staged:
        by_table.setdefault(obj.__table__, []).append(obj)
    shape = tuple((table, len(objs)) for table, objs in by_table.items())
    params: dict[str, Any] = {}
    for n, (table, objs) in enumerate(by_table.items()):
        for i, obj in enumerate(objs):
            params.update({f"s{n}_{i}_{k}": _utc(v) for k, v in _row_values(obj, table).items()})
    for i, change in enumerate(feed):
        params.update({f"f{i}_{k}": _utc(getattr(change, k)) for k in _FEED_COLUMNS})
    connection = session.connection()
    result = connection.exec_driver_sql(_sql(connection.dialect, shape, len(feed)), params)
    serial_tables = [objs for table, objs in by_table.items() if _serial(table) is not None]
    if not serial_tables:
        return
    ids: dict[int, list[int]] = {}
    for part, id_ in result:
        ids.setdefault(part, []).append(id_)
    for i, objs in enumerate(serial_tables):
        # Ids are drawn in the order of the VALUES list; RETURNING's order is not promised.
        for obj, id_ in zip(objs, sorted(ids.get(i, [])), strict=True):
            obj.id = id_


_FEED_COLUMNS = ("alarm_id", "change", "at", "body")


def _utc(value: Any) -> Any:
    """The driver gets values as they are (the SQL is compiled once): times must be aware, in UTC."""
    return _UTC_TYPE.process_bind_param(value, None) if isinstance(value, datetime) else value


_UTC_TYPE = UTCDateTime()


@lru_cache(maxsize=1024)
def _sql(dialect: Dialect, shape: tuple[tuple[Table, int], ...], feed_rows: int) -> str:
    """The SQL for so many rows of which tables, compiled once. SQLAlchemy does not cache
    multi-row INSERTs, and compiling one afresh for each alarm cost more than the database's work."""
    ctes: list[Any] = []
    serial_parts: list[Any] = []
    for n, (table, count) in enumerate(shape):
        serial = _serial(table)
        columns = [c for c in table.c if c is not serial]
        rows = [{c.key: bindparam(f"s{n}_{i}_{c.key}", type_=c.type) for c in columns} for i in range(count)]
        stmt: Insert = insert(table).values(rows)
        key = serial if serial is not None else list(table.primary_key.columns)[0]
        cte = stmt.returning(key.label("id")).cte(f"staged_{n}")
        if serial is not None:
            serial_parts.append(select(literal_column(str(len(serial_parts))).label("part"), cte.c.id))
        ctes.append(cte)
    if feed_rows:
        changes = cast(Table, AlarmChange.__table__)
        # The lock is taken once every staged row is in: it comes from counting them, and a count
        # runs its insert to the end (waits on other transactions' unique keys included). Taken
        # earlier, an insert waiting here would hold every other alarm's commit behind it.
        counts = [select(func.count()).select_from(cte).subquery(f"done_{n}") for n, cte in enumerate(ctes)]
        lock_select = select(func.pg_advisory_xact_lock(literal_column(str(FEED_LOCK_KEY))).label("locked"))
        source: Any
        if counts:
            source = counts[0]
            for done in counts[1:]:
                source = source.join(done, true())
            lock_select = lock_select.select_from(source)
        lock = lock_select.cte("feed_lock")
        # Each row is selected from the lock, so the rows' ids are drawn once it is held.
        rows_ = [
            select(*(bindparam(f"f{i}_{k}", type_=changes.c[k].type) for k in _FEED_COLUMNS)).select_from(
                lock
            )
            for i in range(feed_rows)
        ]
        source = rows_[0].union_all(*rows_[1:]) if len(rows_) > 1 else rows_[0]
        ctes.append(insert(changes).from_select(list(_FEED_COLUMNS), source).cte("feed_insert"))
    if serial_parts:
        main = serial_parts[0].union_all(*serial_parts[1:]) if len(serial_parts) > 1 else serial_parts[0]
    else:
        main = select(literal_column("1"))
    return str(main.add_cte(*ctes).compile(dialect=dialect))
