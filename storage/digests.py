"""The two digests taken of every stored object, in the one pass that stores it.

SHA-256 is the evidence hash: custody entries, manifests and ``VERIFY.txt`` carry it, so that anyone
can check it with ``sha256sum``. BLAKE3 is a second 256-bit cryptographic digest of the same bytes,
about four times cheaper to compute (5.7 against 1.4 GB/s on one core with SHA-NI), for the
service's own re-checks of stored objects (``chain_of_custody.fixity``).

The same pass can keep the BLAKE3 digest of every ``BLOCK`` of the bytes as well (the block list):
a ranged read then checks only the blocks its range lies in (``chain_of_custody.block_lists``),
with no read of the whole object first.
"""

from __future__ import annotations

import hashlib
from typing import Any

from blake3 import blake3

BLOCK = 256 * 1024  # the blocks of a block list: a range's first byte waits for one to be read and checked


def secret_digest(secret: str) -> str:
    """What a row keeps of a bearer secret (an API token, a dock's token, a console session's cookie,
    a read grant): its SHA-256 in hex, so the database never holds the secret itself. Rows already
    stored hold this form, so it never changes."""
    return hashlib.sha256(secret.encode()).hexdigest()


class BlockDigests:
    """The BLAKE3 digest of every ``BLOCK`` of a byte stream fed in pieces of any size: what a block
    list holds (``chain_of_custody.block_lists``)."""

    __slots__ = ("_block", "_filled", "done")

    def __init__(self) -> None:
        self.done: list[bytes] = []
        self._block: Any = blake3()  # the block being filled
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view, pos = memoryview(data), 0
        while pos < len(view):
            take = min(BLOCK - self._filled, len(view) - pos)
            self._block.update(view[pos : pos + take])
            pos, self._filled = pos + take, self._filled + take
            if self._filled == BLOCK:
                self.done.append(self._block.digest())
                self._block, self._filled = blake3(), 0

    def copy(self) -> BlockDigests:
        other = BlockDigests()
        other.done, other._block, other._filled = list(self.done), self._block.copy(), self._filled
        return other

    def digests(self) -> tuple[bytes, ...]:
        """Every block's digest so far, the last one perhaps shorter."""
        return (*self.done, self._block.digest()) if self._filled else tuple(self.done)


class Digests:
    """Running SHA-256 and BLAKE3 of a byte stream, and its length; with ``block_list``, the BLAKE3
    of each ``BLOCK`` of it too."""

    __slots__ = ("blake3", "blocks", "sha256", "size")

    def __init__(self, block_list: bool = True) -> None:
        self.sha256: Any = hashlib.sha256()
        self.blake3: Any = blake3()
        self.size = 0
        self.blocks: BlockDigests | None = BlockDigests() if block_list else None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.sha256.update(data)
        self.blake3.update(data)
        if self.blocks is not None:
            self.blocks.update(data)
        self.size += len(data)

    def copy(self) -> Digests:
        other = Digests(block_list=False)
        other.sha256 = self.sha256.copy()
        other.blake3 = self.blake3.copy()
        other.size = self.size
        other.blocks = None if self.blocks is None else self.blocks.copy()
        return other

    def hexdigests(self) -> tuple[str, str]:
        """(SHA-256, BLAKE3) in lower-case hex."""
        return self.sha256.hexdigest(), self.blake3.hexdigest()

    def block_digests(self) -> tuple[bytes, ...] | None:
        """The BLAKE3 digest of every ``BLOCK`` so far, the last one perhaps shorter; None when no
        block list is kept."""
        return None if self.blocks is None else self.blocks.digests()
