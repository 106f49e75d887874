"""One line now and then for a device's refused messages, not one per message.

A device sending garbage as fast as it can would otherwise write a log line for each message: the
log would grow by megabytes a minute and the writing would cost the service's time. So each device
gets at most one ``lone-worker message rejected`` line every ``EVERY_S``; the line says how many of
its refusals since the last one went unlogged (they are all counted in the metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

EVERY_S = 10.0
_MAX_DEVICES = 10_000  # forgotten all at once beyond this (devices are bounded by the registry anyway)


class RejectionLog:
    """Thread-safe; ``log(device, **fields)`` writes the line or counts it as unlogged."""

    def __init__(self, logger: logging.Logger, every_s: float = EVERY_S) -> None:
        self.logger = logger
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # device -> (last line at, unlogged since)

    def log(self, device: str | None, **fields: Any) -> bool:
        """Log a refusal of ``device``'s message unless one was logged lately; True if logged."""
        key = device or "?"
        now = time.monotonic()
        with self._lock:
            last, unlogged = self._last.get(key, (-self.every_s, 0))
            if now - last < self.every_s:
                self._last[key] = (last, unlogged + 1)
                return False
            if len(self._last) >= _MAX_DEVICES:
                self._last.clear()
            self._last[key] = (now, 0)
        self.logger.warning(
            "lone-worker message rejected", extra={**fields, "device": device, "unlogged": unlogged}
        )
        return True
