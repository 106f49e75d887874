"""Re-checking a stored object against the digests recorded when it arrived.

The check uses BLAKE3 where the item recorded one (``storage.digests``: a quarter of SHA-256's CPU,
which matters where the check is on an investigator's critical path, building and serving export
packages) and SHA-256 for items stored before BLAKE3 was kept. A BLAKE3 match vouches for the
recorded SHA-256 only if both come from the same authenticated record: callers check the item's row
against its signed ``stored`` custody entry first (``verify.row_disagreements``, ``check_entry``).
"""

from __future__ import annotations

import hashlib
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
