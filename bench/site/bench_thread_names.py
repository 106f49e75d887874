"""Benchmark-only: each Python thread of a process whose ``BENCH_THREAD_NAMES`` is set (loaded by
``bench/site/sitecustomize.py``) gives its name to the operating system (``/proc/<pid>/task/<tid>/comm``, 15 characters), so a
benchmark can read each thread's CPU time from outside the process (``bench/alarm_path.py``).

Never on the service's own path: only benchmarks put ``bench/site`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def _set_os_name(name: str) -> None:
    if _libc is not None:
        _libc.prctl(PR_SET_NAME, name.encode(errors="replace")[:15], 0, 0, 0)


_bootstrap_inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named_bootstrap(self: threading.Thread) -> None:
    try:
        _set_os_name(self.name)
    except Exception:  # noqa: BLE001, S110 - a name is a courtesy
        pass
    _bootstrap_inner(self)


threading.Thread._bootstrap_inner = _named_bootstrap  # type: ignore[attr-defined]
if threading.current_thread() is threading.main_thread():
    _set_os_name("main")
