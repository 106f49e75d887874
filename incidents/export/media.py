"""The pass over an export's media: each object read ahead on a thread of its own, checked against the
digests recorded when it was stored, and its CRC-32 computed for the zip.

Every media read (the build's pass, each download's) asks the store ``WHOLE_READ_WINDOW`` bytes a
GET, to wherever the object ends: one GET naming all of a 2 GB clip held SeaweedFS's answers to a
player's ranges of the same object up by 100-600 ms while it ran, and bytes past the record must
still be read so that an object longer than its record fails its check."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from isal.isal_zlib import crc32

from chain_of_custody.fixity import FixityCheck
from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import unrecorded as unrecorded  # the row checked against its signed record
from storage import objects
from storage.objects import ObjectStore
from storage.streams import BlocksOnThread

from .plan import ExportError

CHUNK = 4 * 1024 * 1024
READ_AHEAD_CHUNKS = 4
SCAN_WORKERS = 2
PROGRESS_EVERY = 64 * 1024 * 1024


class MediaAltered(ExportError):
    """A media object no longer matches its record at build time: the item is to be quarantined."""

    def __init__(self, item_id: str, check: FixityCheck) -> None:
        super().__init__(_altered(item_id, check) + ": not exported; run 'evidence verify'")
        self.item_id = item_id
        self.mismatch = check.mismatch()
        self.algorithm = check.algorithm


class PackageAltered(Exception):
    """A stored object no longer matches what the package recorded: the download must not complete."""


# -- reading media ------------------------------------------------------------------------------


def _media_blocks(
    store: ObjectStore, key: str, version_id: str | None, tap: Callable[[bytes], None] | None = None
) -> Iterator[bytes]:
    """The whole object to wherever it ends, read ahead a window at a time (``tap``, a hash update,
    on the reading thread); a few chunks held at once, whatever the object's size."""
    window = objects.WHOLE_READ_WINDOW
    chunks = store.read(key, version_id, chunk=min(CHUNK, window), window=window)
    return iter(BlocksOnThread(chunks, READ_AHEAD_CHUNKS, tap, "export-read-ahead"))


class _MediaDigests:
    """The fixity check of an item (BLAKE3 where recorded, else SHA-256; ``storage.digests``) and its
    CRC-32 (ISA-L's, several times zlib's speed on this hardware); the running zip hash, when wanted,
    goes on a second thread with the CRC (hashlib, blake3 and ISA-L release the GIL on large blocks),
    so the pass is bound by one digest, not two."""

    def __init__(self, it: EvidenceItem, side: ThreadPoolExecutor | None, package: Any | None) -> None:
        self.side = side
        self.package = package
        self.check = FixityCheck(it.sha256, it.blake3, it.size)
        self.crc32 = 0
        self._pending: Future[None] | None = None

    def _side(self, block: bytes) -> None:
        self.crc32 = crc32(block, self.crc32)
        if self.package is not None:
            self.package.update(block)

    def update(self, block: bytes) -> None:
        if self.side is None:
            self._side(block)
        else:
            if self._pending is not None:
                self._pending.result()
            self._pending = self.side.submit(self._side, block)
        self.check.update(block)

    def finish(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None


def _altered(item_id: str, check: FixityCheck) -> str:
    return f"stored object of evidence item {item_id} {check.mismatch()}"


# -- building -----------------------------------------------------------------------------------


class _Progress:
    """Media bytes checked so far, reported every 64 MiB (from any scanning thread)."""

    def __init__(self, hook: Callable[[int], None] | None) -> None:
        self.hook = hook
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.hook is not None and self.done % PROGRESS_EVERY < n:
                self.hook(self.done)

    def report(self) -> None:
        if self.hook is not None:
            self.hook(self.done)


def _check_media(
    store: ObjectStore,
    it: EvidenceItem,
    digests: _MediaDigests,
    counter: _Progress,
    stop: threading.Event | None = None,
) -> int:
    """Read one media object whole (a window at a time), checking it against its record; its CRC-32."""
    blocks = _media_blocks(store, it.object_key, it.version_id)
    with contextlib.closing(blocks):  # type: ignore[type-var]
        for block in blocks:
            if stop is not None and stop.is_set():
                raise ExportError("stopped: another media object failed its check")
            digests.update(block)
            counter.add(len(block))
    digests.finish()
    if not digests.check.ok:
        raise MediaAltered(it.id, digests.check)
    return digests.crc32


def _scan_parallel(store: ObjectStore, items: list[EvidenceItem], counter: _Progress) -> dict[str, int]:
    """Check every media object, SCAN_WORKERS at a time (storage, hashing and CRC overlap across
    objects as well as within one); their CRC-32s by item. The first failure stops the rest."""
    stop = threading.Event()
    crcs: dict[str, int] = {}
    with ThreadPoolExecutor(SCAN_WORKERS, thread_name_prefix="export-scan") as pool:
        futures = {
            pool.submit(_check_media, store, it, _MediaDigests(it, None, None), counter, stop): it
            for it in items
        }
        try:
            for f in as_completed(futures):
                crcs[futures[f].id] = f.result()
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise
    return crcs
