"""Benchmark-only: every SQL statement, transaction end and object-store request a process makes,
one line each, for ``bench/sos_statements.py`` to list what one SOS costs.

Loaded by ``bench/site/sitecustomize.py`` in a process whose ``BENCH_SQL_TRACE`` names a file (not
an ``EVIDENCE_`` variable, which the telemetry companion would not inherit), it appends to that file,
as JSON lines: the wall clock, the process, the thread, and what went to PostgreSQL (each cursor
execution with its statement, ``executemany`` and its parameter sets; each BEGIN, COMMIT and
ROLLBACK) or to the object store (each HTTP request's method and path). Listeners only: nothing here
changes what the service does, and it is never on the service's own path.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

_PATH = os.environ.get("BENCH_SQL_TRACE")
_FD: int | None = None
_PID = os.getpid()


def emit(kind: str, text: str, **extra: Any) -> None:
    global _FD, _PID
    if _FD is None or _PID != os.getpid():  # (a forked child opens its own)
        _FD = os.open(str(_PATH), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _PID = os.getpid()
    line = {
        "t": time.time(),
        "pid": _PID,
        "thread": threading.current_thread().name,
        "kind": kind,
        "text": text,
    }
    os.write(_FD, (json.dumps({**line, **extra}) + "\n").encode())


def _install() -> None:
    import urllib3.connectionpool
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        sets = len(parameters) if executemany and parameters is not None else 1
        emit("sql", " ".join(statement.split()), many=executemany, sets=sets, dialect=conn.dialect.name)

    @event.listens_for(Engine, "begin")
    def _begin(conn: Any) -> None:
        emit("tx", "BEGIN", dialect=conn.dialect.name)

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        emit("tx", "COMMIT", dialect=conn.dialect.name)

    @event.listens_for(Engine, "rollback")
    def _rollback(conn: Any) -> None:
        emit("tx", "ROLLBACK", dialect=conn.dialect.name)

    original = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        emit("s3", f"{method} {url.split('?')[0]}", query=url.partition("?")[2][:80], port=self.port)
        return original(self, method, url, *args, **kwargs)

    urllib3.connectionpool.HTTPConnectionPool.urlopen = urlopen  # type: ignore[method-assign]


if _PATH is not None:
    _install()
