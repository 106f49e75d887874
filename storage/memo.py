"""A bounded memo: answers a process found once (a signed entry checked, a row matched) and need not
find again, the newest ``keep`` of them, behind a lock, the least lately used forgotten first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._found: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._found.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._found[key] = value
            self._found.move_to_end(key)
            while len(self._found) > self.keep:
                self._found.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._found.clear()
