"""Where a read's time goes before its first byte leaves, told to the client as ``Server-Timing``.

A player's seek waits for its range's first byte: the look-up and the custody record, the item's
block list (loaded and checked against its signed entry once, then kept), the store's first block,
and that block's check against its digest. Each answer to a read of evidence carries those spans
(W3C Server Timing: ``name;dur=<ms>``), so a browser's own network timing of each range says which
of them a slow seek waited on, without a profiler on the server. ``ready`` is the whole of it, from
the route's start to the answer handed to the server with its first block in hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


class ReadTiming:
    """The spans of one read before its first byte (seconds, by name; a span timed twice adds up).
    Spans may be added from the worker threads that look the read up and read its first block."""

    __slots__ = ("_lock", "spans", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.spans: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.spans[name] = self.spans.get(name, 0.0) + seconds

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def header(self) -> str:
        """The ``Server-Timing`` value, ``ready`` (the whole wait so far) last."""
        with self._lock:
            spans = [*self.spans.items(), ("ready", time.perf_counter() - self.started)]
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in spans)


def timed(timing: ReadTiming | None, name: str) -> AbstractContextManager[None]:
    """``timing.span(name)``, or nothing when the read is not timed."""
    return timing.span(name) if timing is not None else _untimed()


@contextmanager
def _untimed() -> Iterator[None]:
    yield
