"""Bounded shares of one process's capacity: at most ``total`` holders at once, and at most
``per_key`` of them for any one key (a device, a dock, a session).

A caller who finds no slot is refused at once rather than queued, so one client holding its share
never makes another wait; the refusal says whether the client's own share or the whole process is
full, so the answer can tell them apart (429 for the client, 503 for everyone). The count is this
process's own: with several replicas each bounds what it serves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class NoSlot(Exception):
    """No slot free: ``mine`` is True when the key's own share is full, False when the process is."""

    def __init__(self, mine: bool) -> None:
        super().__init__("this client holds its share" if mine else "the service is at capacity")
        self.mine = mine


class Slots:
    """Counted slots per key and in total; safe from any thread or event loop."""

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._count = 0

    def held(self, key: str | None = None) -> int:
        """How many slots ``key`` holds (all keys when None)."""
        with self._lock:
            return self._count if key is None else self._held.get(key, 0)

    def take(self, key: str) -> None:
        """Take a slot for ``key`` or raise :class:`NoSlot`; give it back with :meth:`give_back`."""
        with self._lock:
            mine = self._held.get(key, 0)
            if mine >= self.per_key:
                raise NoSlot(True)
            if self._count >= self.total:
                raise NoSlot(False)
            self._held[key] = mine + 1
            self._count += 1

    def give_back(self, key: str) -> None:
        with self._lock:
            left = self._held.get(key, 0) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)
            self._count = max(0, self._count - 1)

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        """Hold a slot for the block (raises :class:`NoSlot` when there is none)."""
        self.take(key)
        try:
            yield
        finally:
            self.give_back(key)
