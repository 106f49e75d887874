"""The threads of one process take turns at SQLite's write lock, first come first served.

SQLite's busy handler has a writer that finds the lock taken sleep in growing steps (up to 100 ms)
and try again, so one that slept is passed by every writer that comes meanwhile, and waits far
longer than the transactions ahead of it took. Queued, a writer waits for the ones ahead of it only.
PostgreSQL has row locks and no such queue.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.db import Database
from storage.sqlite_writes import begin_writing, queue_for
from tests.conftest import wait_for


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'turns.db'}")
    with database.session() as session:
        session.execute(text("CREATE TABLE written (who TEXT, n INTEGER)"))
    yield database
    database.dispose()


def test_many_threads_writing_at_once_wait_only_for_the_writers_ahead(db: Database) -> None:
    """Twelve threads (fewer than the engine's pool has connections) write 25 short transactions each at once: none fails with "database is
    locked", and no transaction waits while more transactions begin than there are other threads
    (each of them can be ahead of it once); with the busy handler alone a sleeping writer was passed
    by dozens."""
    threads, rounds = 12, 25
    began = 0  # transactions begun so far, counted inside the write lock
    passed: list[int] = []  # for each transaction, how many began while it waited
    waits: list[float] = []
    errors: list[BaseException] = []
    go = threading.Barrier(threads)

    def write(who: int) -> None:
        nonlocal began
        try:
            go.wait(30)
            for n in range(rounds):
                seen, asked = began, time.monotonic()
                with db.session() as session:
                    session.execute(text("INSERT INTO written VALUES (:who, :n)"), {"who": who, "n": n})
                    waits.append(time.monotonic() - asked)
                    passed.append(began - seen)
                    began += 1
                    session.execute(  # some work while holding the lock
                        text("INSERT INTO written VALUES (:who, :n)"),
                        [{"who": who, "n": -i} for i in range(200)],
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors, errors[:3]
    assert len(passed) == threads * rounds
    # A thread may be passed by each of the others once, and (as it reads the count a moment before
    # it queues) by a few more that began in that moment.
    assert max(passed) <= 2 * threads, (sorted(passed)[-10:], f"longest wait {max(waits):.3f}s")
    assert max(waits) < 10


def test_a_writer_waits_in_the_queue_and_writers_go_in_the_order_they_came(db: Database) -> None:
    """While one thread holds a write transaction, two more ask for one in turn: both wait in the
    process's queue (not in SQLite's busy handler) and write in the order they asked, once the
    first commits. Reads do not queue."""
    queue = queue_for(db.url.split("///", 1)[1], 30)
    order: list[str] = []
    release = threading.Event()
    errors: list[BaseException] = []

    def write(who: str, hold: threading.Event | None = None) -> None:
        try:
            with db.session() as session:
                session.execute(text("INSERT INTO written VALUES (:who, 0)"), {"who": who})
                order.append(who)
                if hold is not None:
                    hold.wait(30)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    first = threading.Thread(target=write, args=("first", release))
    first.start()
    wait_for(lambda: order == ["first"], 10, what="the first writer to hold the write lock")
    turns = queue.turns
    second = threading.Thread(target=write, args=("second",))
    second.start()
    wait_for(lambda: queue.waiting == 1, 10, what="the second writer to queue")
    third = threading.Thread(target=write, args=("third",))
    third.start()
    wait_for(lambda: queue.waiting == 2, 10, what="the third writer to queue")
    with db.reading() as session:  # a read takes no turn
        assert session.execute(text("SELECT count(*) FROM written")).scalar() == 0
    release.set()
    for thread in (first, second, third):
        thread.join(30)
    assert not errors, errors
    assert order == ["first", "second", "third"]
    assert queue.turns == turns + 2 and queue.waiting == 0


def test_a_write_opened_inside_another_on_the_same_thread_does_not_wait_for_itself(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second write transaction opened by a thread inside its first does not queue behind itself:
    it meets SQLite's lock and fails after the busy timeout, as before there was a queue (shortened
    here), and the queue is free again once the first ends."""
    queue = queue_for(db.url.split("///", 1)[1], 30)
    with db.session() as outer:
        outer.execute(text("INSERT INTO written VALUES ('outer', 0)"))
        inner = db.engine.raw_connection()
        try:
            inner.driver_connection.execute("PRAGMA busy_timeout=200")  # type: ignore[union-attr]
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                begin_writing(
                    inner.driver_connection,
                    lambda: inner.driver_connection.execute("BEGIN IMMEDIATE"),  # type: ignore[union-attr]
                )
            assert time.monotonic() - started < 10
        finally:
            inner.close()
    monkeypatch.setattr(queue, "timeout", 5)
    with db.session() as session:  # the turn was given back with the first's commit
        session.execute(text("INSERT INTO written VALUES ('after', 0)"))
    assert queue.waiting == 0
