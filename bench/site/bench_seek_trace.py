"""Benchmark-only: what the service's threads do while a player seeks (``bench/workspace.py --service-trace``).

Loaded by ``bench/site/sitecustomize.py`` in a process whose ``BENCH_SEEK_TRACE`` names a file, it appends
one line per event to it: the wall clock (``time.time()``), the thread, what happened and its details.

- every object store read (``ObjectStore.read``): ``read`` (offset, length), ``sent`` (the request
  written to the socket), ``headers`` (the answer's headers in), ``first`` (the first chunk in hand),
  ``closed`` (bytes read in all), each with the thread's scheduler statistics
  (``/proc/thread-self/schedstat``: nanoseconds on a CPU and waiting on a run queue);
- a new connection to the store (``connect``/``connected``) and a connection put back (``put_conn``);
- a sampler every ``BENCH_SEEK_TRACE_MS`` (5 ms): how late it woke (a thread that holds the GIL or a
  busy CPU delays it), the machine's CPU (``/proc/stat``: busy and iowait jiffies), the process's
  CPU, and each thread that is not idle with its innermost frames;
- Python's garbage collections.

Nothing here changes what the service does; only the bench puts ``bench/site`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from typing import Any

from bench_trace_tools import after_import, schedstat

_PATH = os.environ.get("BENCH_SEEK_TRACE")
_EVERY = float(os.environ.get("BENCH_SEEK_TRACE_MS", "5")) / 1000
_FD: int | None = None
_LOCK = threading.Lock()
_IDLE = {
    "wait",
    "select",
    "_wait_for_tstate_lock",
    "get",
    "_worker",
    "sleep",
    "run_forever",
    "_run_once",
    "accept",
    "poll",
    "_sampler",
}


def _schedstat() -> str:
    return schedstat(":", "-")


def emit(what: str, detail: str = "") -> None:
    global _FD
    if _PATH is None:
        return
    if _FD is None:
        _FD = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    name = threading.current_thread().name.replace(" ", "_")
    os.write(_FD, f"{time.time():.6f} {name} {what} {detail or '-'}\n".encode())


def _cpu() -> str:
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, idle, iowait = (int(p) for p in parts[:5])
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return f"busy={user + nice + system} idle={idle} iowait={iowait} own={int(own[11]) + int(own[12])}"


def _frames(frame: Any, depth: int = 4) -> str:
    out = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        out.append(f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return "<".join(out)


def _sampler() -> None:
    names: dict[int, str] = {}
    me = threading.get_ident()
    due = time.monotonic()
    while True:
        due += _EVERY
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        late = (time.monotonic() - due) * 1000
        if late > 50:
            due = time.monotonic()
        busy = []
        for ident, frame in sys._current_frames().items():  # noqa: SLF001
            if ident == me or frame.f_code.co_name in _IDLE:
                continue
            if ident not in names:
                names = {t.ident or 0: t.name.replace(" ", "_") for t in threading.enumerate()}
            busy.append(f"{names.get(ident, ident)}@{_frames(frame)}")
        emit("sample", f"late={late:.1f} {_cpu()} " + " ".join(busy))


def _gc(phase: str, info: dict[str, Any]) -> None:
    emit("gc" if phase == "start" else "gced", str(info.get("generation")))


def _install() -> None:
    import urllib3
    from urllib3.connectionpool import HTTPConnectionPool

    from storage.objects import ObjectStore

    original_read = ObjectStore.read

    def read(
        self: Any, key: str, version_id: Any = None, offset: int = 0, length: int = 0, *a: Any, **k: Any
    ) -> Any:
        emit("read", f"{offset} {length} {_schedstat()}")
        got = 0
        inner = original_read(self, key, version_id, offset, length, *a, **k)
        try:
            for block in inner:
                if got == 0:
                    emit("first", f"{offset} {len(block)} {_schedstat()}")
                got += len(block)
                yield block
        finally:
            inner.close()
            emit("closed", f"{offset} {got} {_schedstat()}")

    ObjectStore.read = read  # type: ignore[method-assign]

    conn_cls = urllib3.connection.HTTPConnection
    original_request = conn_cls.request
    original_getresponse = conn_cls.getresponse
    original_connect = conn_cls.connect

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        result = original_request(self, method, url, *args, **kwargs)
        emit("sent", f"{method} {_schedstat()}")
        return result

    def getresponse(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_getresponse(self, *args, **kwargs)
        emit("headers", f"{result.status} {_schedstat()}")
        return result

    def connect(self: Any) -> Any:
        emit("connect")
        result = original_connect(self)
        emit("connected")
        return result

    conn_cls.request = request  # type: ignore[method-assign]
    conn_cls.getresponse = getresponse  # type: ignore[method-assign]
    conn_cls.connect = connect  # type: ignore[method-assign]

    original_put = HTTPConnectionPool._put_conn

    def put_conn(self: Any, conn: Any) -> Any:
        emit("put_conn", f"{self.pool.qsize() if self.pool else '-'}")
        return original_put(self, conn)

    HTTPConnectionPool._put_conn = put_conn  # type: ignore[method-assign]
    gc.callbacks.append(_gc)
    threading.Thread(target=_sampler, name="seek-trace-sampler", daemon=True).start()


def _not_installed(exc: Exception) -> None:
    emit("trace-not-installed", f"{type(exc).__name__}:{exc}")


if _PATH is not None:
    # Once the service imports ``ingest.app`` (the store and urllib3 with it).
    after_import("ingest.app", _install, _not_installed)
