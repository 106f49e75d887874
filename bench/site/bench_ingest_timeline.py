"""Benchmark-only: a timeline of what the service does while docks upload (``bench/ingest.py``,
read by ``bench/ingest_timeline_report.py``).

Loaded by ``bench/site/sitecustomize.py`` in a process whose ``INGEST_TIMELINE_OUT`` names a file, it
records, as JSON lines in that file: every call of the ingest steps named in ``STEPS`` (wall start and end on
``time.perf_counter``, which is the system's monotonic clock in every process, and the calling
thread's CPU time), every task run by a thread pool (queued, started, ended, CPU), every database
transaction (its write-lock wait, begin to end) and every event-loop callback that ran longer than
``SLOW_CALLBACK_S``. Steps are looked up by name and patched after their module is imported, so
older code that lacks one of them is still traced for the rest.

Never on the service's own path: only a benchmark run puts ``bench/site`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib.abc
import inspect
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

OUT = os.environ.get("INGEST_TIMELINE_OUT")
SLOW_CALLBACK_S = 0.002

# module -> dotted attributes to time (a class method or a module-level function).
STEPS: dict[str, list[str]] = {
    "storage.digests": ["Digests.update"],
    "storage.objects": [
        "ObjectStore.upload_part",
        "ObjectStore.complete_multipart",
        "ObjectStore.start_multipart",
        "ObjectStore.info",
        "ObjectStore.set_retention",
        "ObjectStore.put_bytes",
        "ObjectStore.digests_of",
        "ObjectStore.stage_put",
        "ObjectStore.stage_get",
        "ObjectStore.stage_delete",
    ],
    "storage.db": ["Database.session", "Database.reading", "begin_writing"],
    "storage.sqlite_writes": ["WriteQueue.take", "WriteQueue.acquire", "WriteQueue.wait"],
    "ingest.uploads": [
        "UploadEngine.create",
        "UploadEngine._acquire",
        "UploadEngine._release",
        "UploadEngine.patch",
        "_PartWriter._record",
        "_PartWriter._issue_numbers",
        "_PartWriter._renew",
        "_PartWriter.e_complete",
        "_PartWriter.finish",
        "complete_upload",
        "settle_lock",
        "record_evidence",
        "camera_key",
        "check_clip",
        "already_recorded",
        "received_details",
    ],
    "chain_of_custody.evidence": ["keep_block_list", "item_scope_mac"],
    "chain_of_custody.ledger": ["Ledger.append"],
    "chain_of_custody.keys": ["ServiceKey.sign"],
    "chain_of_custody.tree_heads": [
        "TreeHeadLog.cover",
        "TreeHeadLog._gather",
        "TreeHeadLog._write",
        "sign_tree_head",
    ],
}

_records: list[tuple[Any, ...]] = []
_lock = threading.Lock()


def _note(*row: Any) -> None:
    with _lock:
        _records.append(row)


_probed: set[int] = set()
PROBE_EVERY_S = 0.005


def _weed_pid() -> int | None:
    """The store this service talks to, when it is a ``weed`` on this machine (its S3 port in its arguments)."""
    port = os.environ.get("EVIDENCE_S3_ENDPOINT", "").rsplit(":", 1)[-1].strip("/")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"weed") and f"-s3.port={port}".encode() in argv:
            return int(pid)
    return None


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each live Python thread of this process, by name."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                out[t.name] = int(f.read().split()[0]) / 1e9
        except (OSError, TypeError):
            continue
    return out


def _probe_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Once per loop: a thread asks the loop every few milliseconds to note how late it runs a
    callback (the loop's lag, which uvloop's own handles give no other way to see) and samples the
    loop thread's CPU time from ``/proc``."""
    if id(loop) in _probed:
        return
    _probed.add(id(loop))
    tid = threading.get_native_id()

    def lag(sent: float) -> None:
        _note("lag", None, None, sent, time.perf_counter(), None)

    def cpu_ns() -> int:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                return int(f.read().split()[0])
        except OSError:
            return 0

    weed = _weed_pid()

    def probe() -> None:
        n = 0
        while not loop.is_closed():
            now = time.perf_counter()
            try:
                loop.call_soon_threadsafe(lag, now)
            except RuntimeError:
                return
            _note("loopcpu", None, None, now, now, cpu_ns() / 1e9)
            if n % 10 == 0:
                _note("cpu", _thread_cpu(), _proc_cpu(weed) if weed else None, now, now, sum(os.times()[:2]))
            n += 1
            time.sleep(PROBE_EVERY_S)

    threading.Thread(target=probe, name="timeline-probe", daemon=True).start()


def _timed(label: str, fn: Any) -> Any:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            _probe_loop(asyncio.get_running_loop())
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                _note("step", label, threading.current_thread().name, t0, time.perf_counter(), None)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _note(
                "step",
                label,
                threading.current_thread().name,
                t0,
                time.perf_counter(),
                time.thread_time() - c0,
            )

    return run


def _timed_cm(label: str, fn: Any) -> Any:
    """A ``@contextmanager`` method: time from entering to leaving (the commit and its duties included)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        cm = fn(*args, **kwargs)

        class _Timed:
            def __enter__(self) -> Any:
                self.t0, self.c0 = time.perf_counter(), time.thread_time()
                return cm.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                try:
                    return cm.__exit__(*exc)
                finally:
                    _note(
                        "step",
                        label,
                        threading.current_thread().name,
                        self.t0,
                        time.perf_counter(),
                        time.thread_time() - self.c0,
                    )

        return _Timed()

    return run


def _patch(module: Any) -> None:
    for dotted in STEPS.get(module.__name__, []):
        owner: Any = module
        *path, name = dotted.split(".")
        try:
            for part in path:
                owner = getattr(owner, part)
            fn = inspect.getattr_static(owner, name)
        except AttributeError:
            continue
        if isinstance(fn, staticmethod | classmethod):
            continue
        if dotted in ("Database.session", "Database.reading"):
            setattr(owner, name, _timed_cm(dotted, fn))
        else:
            setattr(owner, name, _timed(dotted, fn))
    if module.__name__ == "ingest.uploads":  # names imported from elsewhere, looked up at call time
        for name in ("record_evidence", "settle_lock", "camera_key", "check_clip"):
            if hasattr(module, name) and not hasattr(getattr(module, name), "__wrapped__"):
                setattr(module, name, _timed(name, getattr(module, name)))


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in STEPS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _trace_pools() -> None:
    submit = ThreadPoolExecutor.submit

    def traced_submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        label = getattr(fn, "__qualname__", None)
        if isinstance(fn, functools.partial) and fn.args:  # asyncio.to_thread: partial(ctx.run, func, ...)
            label = getattr(fn.args[0], "__qualname__", repr(fn.args[0]))
        pool = getattr(self, "_thread_name_prefix", "") or "default"
        queued = time.perf_counter()

        def run(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                _note(
                    "pool",
                    f"{pool}:{label}",
                    threading.current_thread().name,
                    queued,
                    t0,
                    time.perf_counter(),
                    time.thread_time() - c0,
                )

        return submit(self, run, *args, **kwargs)

    ThreadPoolExecutor.submit = traced_submit  # type: ignore[method-assign]


def _callback_name(handle: Any) -> str:
    """The coroutine a task step ran, or the callback's name."""
    callback = handle._callback
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        return "task:" + str(getattr(coro, "__qualname__", coro))
    return str(getattr(callback, "__qualname__", repr(callback)))[:160]


def _trace_loop() -> None:
    handle_run = asyncio.events.Handle._run

    def traced_run(self: Any) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        handle_run(self)
        t1 = time.perf_counter()
        cpu = time.thread_time() - c0
        if t1 - t0 < SLOW_CALLBACK_S:
            _note("loop", None, None, t0, t1, cpu)
        else:
            _note("loop", _callback_name(self), None, t0, t1, cpu)

    asyncio.events.Handle._run = traced_run  # type: ignore[method-assign]


def _trace_transactions() -> None:
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
    except ImportError:
        return
    began: dict[int, tuple[float, float]] = {}

    @event.listens_for(Engine, "begin")
    def _begin(conn: Any) -> None:
        began[id(conn)] = (time.perf_counter(), time.thread_time())

    def _end(kind: str) -> Any:
        def ended(conn: Any) -> None:
            start = began.pop(id(conn), None)
            if start is not None:
                ro = bool(conn.get_execution_options().get("evidence_read_only")) or kind == "rollback"
                _note(
                    "tx",
                    kind + ("-ro" if ro else ""),
                    threading.current_thread().name,
                    start[0],
                    time.perf_counter(),
                    time.thread_time() - start[1],
                )

        return ended

    event.listen(Engine, "commit", _end("commit"))
    event.listen(Engine, "rollback", _end("rollback"))


def _flush() -> None:
    with _lock:
        rows = list(_records)
        _records.clear()
    if rows and OUT:
        with open(OUT, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def _flusher() -> None:
    while True:
        time.sleep(0.5)
        _flush()


def _is_service() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"ingest.cli" in argv and b"serve" in argv


if OUT and _is_service():
    sys.meta_path.insert(0, _AfterImport())
    _trace_pools()
    _trace_loop()
    _trace_transactions()
    threading.Thread(target=_flusher, name="timeline-flush", daemon=True).start()
    atexit.register(_flush)
