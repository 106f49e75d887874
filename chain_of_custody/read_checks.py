"""What a ranged read of evidence costs: the bytes it asks for, not a hash of the whole object each time.

An item stored with a block list (``block_lists``: the BLAKE3 of every ``BLOCK``, kept as it was
stored and committed to by its signed ``stored`` entry) has its block digests from that list. For
an item without one the recorded digests are of the whole object, so the first ranged read of it
reads and hashes all of it (:func:`verify_whole`), and on the way keeps a BLAKE3 digest of every
``BLOCK`` of it. Either way the block digests come from a signed record, so for a while
(``KEEP_SECONDS``) a ranged read of that object reads only the blocks its range lies in and checks
each against its block digest before any of it is sent (:func:`checked_blocks`): a changed byte in a
block served is still never served; one outside it is found by the next whole read or check. The
blocks a range has just read and checked are held a little while (``RECENT_BLOCKS``, ``RECENT_SECONDS``)
and served again as they were checked to the range a player asks for next, from where it dropped
the last, without the store's round trip before its first byte.

A whole check is shared: reads of an object that is being checked wait for that check rather than
starting their own, and a check nobody waits for any more (the clients went away) stops. Starting
one takes a slot of :data:`WHOLE_CHECKS` (a few per person, a few more per process); a read that
finds none is refused at once with Retry-After rather than queued. The digests kept are this
process's own: each replica checks an object once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from blake3 import blake3

from storage.digests import BLOCK as BLOCK
from storage.objects import ObjectStore
from storage.slots import Slots

from .fixity import BLAKE3, FixityCheck, ObjectAltered
from .models import EvidenceItem
from .read_timing import ReadTiming, timed

KEEP_SECONDS = 15 * 60
KEEP_OBJECTS = 512  # about 128 KiB of digests per GiB of object
RECENT_BLOCKS = 64  # 16 MiB of blocks lately read and checked, for the range a player asks for next
RECENT_SECONDS = 30.0
# A range is asked of the store this many bytes at a time (``ObjectStore.read``'s ``window``): a
# player's open range names the rest of the object, keeps a megabyte or two and is dropped, and a
# GET naming the rest of a 2 GB clip held the store's answer to the next range's GET up (100-600 ms).
# A whole check (an item without a block list) reads its object so too, to wherever it ends.
STORE_WINDOW = 64 * BLOCK
# Whole checks started by ranged reads: two at a time per person, four in all per process.
WHOLE_CHECKS = Slots(total=4, per_key=2)

Key = tuple[str, str, str | None, str, str | None, int]


def object_key(item: EvidenceItem) -> Key:
    """What the block digests are of: the object's version, and the digests its row records."""
    return (item.bucket, item.object_key, item.version_id, item.sha256, item.blake3, item.size)


class Abandoned(Exception):
    """Nobody waits for the whole check any more: it stopped part way."""


def blocks_of(chunks: Iterator[bytes], size: int = BLOCK) -> Iterator[bytes]:
    """``chunks`` cut again into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def verify_whole(
    store: ObjectStore, item: EvidenceItem, stop: threading.Event | None = None
) -> tuple[FixityCheck, list[bytes]]:
    """Read and hash the whole object against its record, keeping each block's digest; raises
    :class:`Abandoned` when ``stop`` is set before the end. The object is asked of the store a
    window at a time (``STORE_WINDOW``) and read to wherever it ends, not where its record says:
    a player's first read of an item without a block list starts this check, and its seeks' ranges
    of the same object are asked while it runs (one GET naming all of it held those up)."""
    check = FixityCheck(item.sha256, item.blake3, item.size)
    digests: list[bytes] = []
    chunks = store.read(item.object_key, item.version_id, chunk=BLOCK, window=STORE_WINDOW)
    try:
        for block in blocks_of(chunks):
            if stop is not None and stop.is_set():
                raise Abandoned(item.id)
            check.update(block)
            digests.append(blake3(block).digest())
    finally:
        chunks.close()  # type: ignore[attr-defined]
    return check, digests


class WholeCheck:
    """One whole check in progress: its result and how many reads wait for it."""

    def __init__(self) -> None:
        self.result: Future[tuple[FixityCheck, list[bytes]]] = Future()
        self.stop = threading.Event()
        self.waiting = 0


@dataclass(frozen=True)
class _Kept:
    digests: tuple[bytes, ...]
    until: float


class VerifiedObjects:
    """The block digests of objects lately checked whole, and the whole checks in progress."""

    def __init__(
        self,
        keep_seconds: float = KEEP_SECONDS,
        keep_objects: int = KEEP_OBJECTS,
        recent_blocks: int = RECENT_BLOCKS,
        recent_seconds: float = RECENT_SECONDS,
    ) -> None:
        self.keep_seconds = keep_seconds
        self.keep_objects = keep_objects
        self.recent_blocks = recent_blocks
        self.recent_seconds = recent_seconds
        self._lock = threading.RLock()  # a check done at once finishes inside join()
        self._kept: OrderedDict[Key, _Kept] = OrderedDict()
        self._running: dict[Key, WholeCheck] = {}
        self._recent: OrderedDict[tuple[Key, int], tuple[bytes, float]] = OrderedDict()

    def recent_block(self, key: Key, index: int) -> bytes | None:
        """Block ``index`` of ``key`` as a range read it lately and found it to match its block
        digest, while that digest is still kept; None when it is not held."""
        with self._lock:
            held = self._recent.get((key, index))
            if held is None:
                return None
            block, until = held
            if until <= time.monotonic() or key not in self._kept:
                del self._recent[(key, index)]
                return None
            return block

    def keep_block(self, key: Key, index: int, block: bytes) -> None:
        """Hold a block that has just matched its block digest (the newest ``recent_blocks``)."""
        if self.recent_blocks <= 0:
            return
        with self._lock:
            self._recent[(key, index)] = (block, time.monotonic() + self.recent_seconds)
            self._recent.move_to_end((key, index))
            while len(self._recent) > self.recent_blocks:
                self._recent.popitem(last=False)

    def digests(self, key: Key) -> tuple[bytes, ...] | None:
        """The block digests of ``key`` if it was checked whole lately."""
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return None
            if kept.until <= time.monotonic():
                del self._kept[key]
                return None
            self._kept.move_to_end(key)
            return kept.digests

    def keep(self, key: Key, digests: list[bytes]) -> None:
        with self._lock:
            self._kept[key] = _Kept(tuple(digests), time.monotonic() + self.keep_seconds)
            self._kept.move_to_end(key)
            while len(self._kept) > self.keep_objects:
                self._kept.popitem(last=False)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._kept.pop(key, None)
            for held in [k for k in self._recent if k[0] == key]:
                del self._recent[held]

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._recent.clear()

    def join(self, key: Key, start: Callable[[WholeCheck], None]) -> WholeCheck:
        """Wait on the whole check of ``key`` in progress, or start one with ``start`` (which may
        raise, e.g. when no slot is free: nothing is started then)."""
        with self._lock:
            running = self._running.get(key)
            if running is None or running.stop.is_set():  # none, or one stopping as its readers left
                running = WholeCheck()
                start(running)
                self._running[key] = running
                running.result.add_done_callback(lambda _f: self._finished(key, running))
            running.waiting += 1
            return running

    def leave(self, check: WholeCheck) -> None:
        """A read no longer waits (its client went away): the check stops once nobody does."""
        with self._lock:
            check.waiting -= 1
            if check.waiting <= 0 and not check.result.done():
                check.stop.set()

    def _finished(self, key: Key, check: WholeCheck) -> None:
        with self._lock:
            if self._running.get(key) is check:
                del self._running[key]


VERIFIED = VerifiedObjects()


class _StoreSteps:
    """A range's first store read, split where its wait went: ``store_send`` (asking until the
    request is written: a connection, signing, sending), ``store_wait`` (until the answer's headers
    are in), ``store_body`` (until the first block is in hand); ``store`` is the three together."""

    NAMES = {"sent": "store_send", "headers": "store_wait", "body": "store_body"}

    def __init__(self, timing: ReadTiming, asked: float) -> None:
        self.timing = timing
        self.last = asked

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.timing.add(self.NAMES[step], now - self.last)
        self.last = now


def checked_blocks(
    store: ObjectStore,
    item: EvidenceItem,
    digests: tuple[bytes, ...],
    lo: int,
    n: int,
    on_mismatch: Callable[[FixityCheck], None] | None = None,
    timing: ReadTiming | None = None,
) -> Iterator[bytes]:
    """Bytes ``lo``..``lo+n`` of the object, reading only the blocks they lie in, each checked against
    its block digest before any of it is yielded. On a mismatch ``on_mismatch`` runs (log it,
    quarantine the item), the digests are forgotten and ObjectAltered is raised.

    Leading blocks that a range read and checked lately are served as they were checked, without
    the store's round trip (``VerifiedObjects.recent_block``): a player drops a range once it has
    what it wants and asks for the next from where it stopped, in a block the range before it read
    and checked already. Every block read from the store here is held so, once it has matched.
    ``timing`` gets the first block's spans: ``held`` when it was held so, else ``store`` (from
    asking the store to the block in hand) and ``check`` (its digest)."""
    key = object_key(item)
    first, last = lo // BLOCK, (lo + n - 1) // BLOCK
    end = min(item.size, (last + 1) * BLOCK)
    index, pos = first, first * BLOCK
    while index <= last:
        held = VERIFIED.recent_block(key, index)
        if held is None:
            break
        if timing is not None and index == first:
            timing.add("held", 0.0)
        a, b = max(lo, pos), min(lo + n, pos + len(held))
        yield held if (a, b) == (pos, pos + len(held)) else held[a - pos : b - pos]
        index, pos = index + 1, pos + len(held)
    if pos >= end:
        return
    timing = timing if index == first else None  # only a range's first block is timed
    asked = time.perf_counter()
    steps = _StoreSteps(timing, asked) if timing is not None else None
    chunks = store.read(
        item.object_key,
        item.version_id,
        offset=pos,
        length=end - pos,
        chunk=BLOCK,
        steps=steps,
        window=STORE_WINDOW,
    )
    try:
        for block in blocks_of(chunks):
            if timing is not None and steps is not None and index == first:
                steps("body")
                timing.add("store", time.perf_counter() - asked)
            expected = digests[index] if index < len(digests) else b""
            with timed(timing if index == first else None, "check"):
                found = blake3(block).digest()
            if found != expected:
                check = FixityCheck("", expected.hex() or "(no block here)", min(BLOCK, item.size - pos))
                check.update(block)
                assert check.algorithm == BLAKE3
                VERIFIED.forget(key)
                if on_mismatch is not None:
                    on_mismatch(check)
                raise ObjectAltered(f"block {index}: {check.mismatch()}")
            VERIFIED.keep_block(key, index, block)
            a, b = max(lo, pos), min(lo + n, pos + len(block))
            if a < b:
                yield block if (a, b) == (pos, pos + len(block)) else block[a - pos : b - pos]
            index, pos = index + 1, pos + len(block)
    finally:
        chunks.close()  # type: ignore[attr-defined]
    if pos < end:
        # An object shorter than its record is altered as surely as a changed block: quarantined
        # whichever read finds it (a whole read's check does the same at its end).
        VERIFIED.forget(key)
        missing = digests[index].hex() if index < len(digests) else "(no block here)"
        short = FixityCheck("", missing, min(BLOCK, item.size - pos))
        if on_mismatch is not None:
            on_mismatch(short)
        raise ObjectAltered(f"the object ends at byte {pos}, its record says {item.size}")
