"""One queue for SQLite's write lock among the threads of one process.

SQLite has one write lock for the whole database. A write transaction that finds it taken waits in
the busy handler, which sleeps in growing steps (up to 100 ms at a time) and tries again: sixteen
uploads finishing at once waited 80 to 100 ms for a lock no transaction held more than 18 ms, and a
thread that slept could be passed by any number that came after it. The threads of one process take
their turns here instead, first come first served, before ``BEGIN IMMEDIATE``: each is woken as the
one before it commits or rolls back. Other processes (workers, the command line) still meet the
busy handler, so the busy timeout stays.

A thread that already holds the turn (a second write transaction opened inside a first) does not
queue again: it goes straight to ``BEGIN IMMEDIATE``, which waits in the busy handler and fails
after the busy timeout, as it did before there was a queue, instead of waiting for itself forever.
A turn not given within the busy timeout fails the same way, ``database is locked``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Waiter:
    conn: object
    thread: int
    woken: threading.Lock = field(default_factory=threading.Lock)


class WriteQueue:
    """Turns at the write lock, in the order they were asked for; one holder at a time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._mutex = threading.Lock()
        self._holder: _Waiter | None = None
        self._waiting: deque[_Waiter] = deque()
        self.turns = 0  # turns given after a wait in the queue (for tests and the curious)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self, conn: object) -> bool:
        """Wait for the turn of ``conn``; False (no turn taken) when this thread already holds one."""
        me = _Waiter(conn, threading.get_ident())
        with self._mutex:
            if self._holder is None:
                self._holder = me
                return True
            if self._holder.thread == me.thread:
                return False
            me.woken.acquire()
            self._waiting.append(me)
        if me.woken.acquire(timeout=self.timeout):
            return True
        with self._mutex:
            if self._holder is me:  # handed over just as the wait ran out
                return True
            self._waiting.remove(me)
        raise sqlite3.OperationalError("database is locked")

    def give_back(self, conn: object) -> None:
        """End the turn of ``conn`` (if it holds one) and hand it to the longest waiting."""
        with self._mutex:
            if self._holder is None or self._holder.conn is not conn:
                return
            self._holder = self._waiting.popleft() if self._waiting else None
            if self._holder is not None:
                self.turns += 1
                self._holder.woken.release()


class QueuedConnection(sqlite3.Connection):
    """A SQLite connection that gives its turn back once its transaction has ended."""

    queue: WriteQueue | None = None

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._ended()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._ended()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.queue is not None:
                self.queue.give_back(self)

    def _ended(self) -> None:
        if self.queue is not None and not self.in_transaction:
            self.queue.give_back(self)


_QUEUES: dict[str, WriteQueue] = {}
_QUEUES_MUTEX = threading.Lock()


def queue_for(path: str, timeout: float) -> WriteQueue:
    """The queue of the database file at ``path``, shared by every engine of this process on it (an
    in-memory database, one connection's own, gets a queue of its own)."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return WriteQueue(timeout)
    key = os.path.realpath(path)
    with _QUEUES_MUTEX:
        return _QUEUES.setdefault(key, WriteQueue(timeout))


def connection_class(queue: WriteQueue) -> type[QueuedConnection]:
    """``sqlite3.connect``'s ``factory`` for connections that queue on ``queue``."""
    return type("QueuedConnection", (QueuedConnection,), {"queue": queue})


def begin_writing(dbapi_conn: Any, begin: Any) -> None:
    """Take the connection's turn, then ``begin()`` (``BEGIN IMMEDIATE``); the turn is given back if
    the transaction does not begin."""
    queue: WriteQueue | None = getattr(dbapi_conn, "queue", None)
    took = queue is not None and queue.take(dbapi_conn)
    try:
        begin()
    except BaseException:
        if took and queue is not None:
            queue.give_back(dbapi_conn)
        raise
