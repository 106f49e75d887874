"""Re-checking a stored object against the digests recorded when it arrived.

The check uses BLAKE3 where the item recorded one (``storage.digests``: a quarter of SHA-256's CPU,
which matters where the check is on an investigator's critical path, building and serving export
packages) and SHA-256 for items stored before BLAKE3 was kept. A BLAKE3 match vouches for the
recorded SHA-256 only if both come from the same authenticated record: callers check the item's row
against its signed ``stored`` custody entry first (``verify.row_disagreements``, ``check_entry``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from blake3 import blake3

SHA256 = "SHA-256"
BLAKE3 = "BLAKE3"


class FixityCheck:
    """Re-hashes a stored object to compare it with what was recorded when it arrived: with BLAKE3
    when that was recorded, else with SHA-256. Only one digest is computed, never both."""

    __slots__ = ("algorithm", "expected", "expected_size", "size", "_h")
    _h: Any

    def __init__(self, sha256: str, blake3_hex: str | None, size: int) -> None:
        if blake3_hex:
            self.algorithm, self.expected, self._h = BLAKE3, blake3_hex, blake3()
        else:
            self.algorithm, self.expected, self._h = SHA256, sha256, hashlib.sha256()
        self.expected_size = size
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def found(self) -> str:
        return str(self._h.hexdigest())

    @property
    def ok(self) -> bool:
        return self.size == self.expected_size and self.found == self.expected

    def mismatch(self) -> str:
        """What was found against what was recorded, naming the digest used."""
        return (
            f"hashes to {self.algorithm} {self.found} ({self.size} bytes), its record says "
            f"{self.expected} ({self.expected_size} bytes)"
        )


class ObjectAltered(Exception):
    """Stored bytes no longer match their record: whatever was serving them must not complete."""


def checked_range(
    blocks: Iterator[bytes],
    check: FixityCheck,
    lo: int,
    n: int,
    on_mismatch: Callable[[FixityCheck], None] | None = None,
) -> Iterator[bytes]:
    """Bytes ``lo``..``lo+n`` of an object, from ``blocks``: the whole object from its first byte,
    each block fed to ``check`` by the caller as it is read (a tap on the reading thread).

    The object is read to its end whatever the range, since only the whole can be checked against
    its record; the last block of the range is held back until the check is done, so altered bytes
    never reach anyone complete (a response is cut short of its Content-Length). On a mismatch
    ``on_mismatch`` runs (log it, quarantine the item), then ObjectAltered is raised."""
    pos = 0
    held: bytes | None = None
    try:
        for block in blocks:
            a, b = max(lo, pos), min(lo + n, pos + len(block))
            if a < b:
                part = block if (a, b) == (pos, pos + len(block)) else block[a - pos : b - pos]
                if held is not None:
                    yield held
                held = part
            pos += len(block)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    if not check.ok:
        if on_mismatch is not None:
            on_mismatch(check)
        raise ObjectAltered(check.mismatch())
    if held is not None:
        yield held
