"""Benchmark-only: what the tracing hooks of ``bench/site`` share.

:func:`after_import` runs a hook's ``install`` right after the service itself imports one module.
Importing the service's modules from ``sitecustomize`` first would set them up before the service
has chosen how (its metrics' multiprocess directory, for one); so a hook waits, with this finder
first on ``sys.meta_path``, until the service imports ``name``, and installs its wrappers then. A
failing ``install`` never stops the service: ``failed`` is told of the exception.
:func:`schedstat` is the calling thread's scheduler statistics.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any


def schedstat(sep: str, missing: str) -> str:
    """The calling thread's nanoseconds on a CPU and waiting on a run queue
    (``/proc/thread-self/schedstat``), joined by ``sep``; ``missing`` where they cannot be read."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting, _ = f.read().split()
        return f"{on_cpu}{sep}{waiting}"
    except OSError:
        return missing


class AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, install: Callable[[], None], failed: Callable[[Exception], None]) -> None:
        self.name, self.install, self.failed = name, install, failed

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            try:
                self.install()
            except Exception as exc:  # noqa: BLE001 - a trace never stops the service
                self.failed(exc)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def after_import(name: str, install: Callable[[], None], failed: Callable[[Exception], None]) -> None:
    """Call ``install`` once the module ``name`` has been imported (and run) by the service."""
    sys.meta_path.insert(0, AfterImport(name, install, failed))
