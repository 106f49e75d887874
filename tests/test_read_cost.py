"""What a ranged read of evidence costs, through the real server and store: many tiny ranges of one
clip (a player seeking) read it whole once between them, not once each, and ``/healthz`` answers
meanwhile; a read that would start a whole check finds a bounded number of slots (429 for the
person's own share, 503 for the process's, with Retry-After); a check nobody waits for stops."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from chain_of_custody.models import EvidenceBlockList, ViewingSession
from chain_of_custody.read_checks import BLOCK, VERIFIED, WHOLE_CHECKS, Abandoned, object_key, verify_whole
from tests.conftest import start_server, wait_for
from tests.test_incidents_kit import bearer, store_item, user

SIZE = 8 * BLOCK + 123
READS = 24


@pytest.fixture
def served(services: Any) -> Iterator[tuple[Any, str]]:
    VERIFIED.clear()
    server, thread, url = start_server(services)
    yield services, url
    server.should_exit = True
    thread.join(15)
    VERIFIED.clear()


def _count_store_reads(services: Any) -> list[int]:
    """Bytes handed out by the store's read path from now on, one number per read."""
    counted: list[int] = []
    store = services.store
    original = store.read

    def read(
        key: str, version_id: str | None = None, offset: int = 0, length: int = 0, chunk: int = BLOCK, **more
    ):  # type: ignore[no-untyped-def]
        at = len(counted)
        counted.append(0)
        for block in original(key, version_id, offset, length, chunk, **more):
            counted[at] += len(block)
            yield block

    store.read = read
    return counted


def test_many_tiny_ranges_read_the_clip_whole_once(served: Any) -> None:
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    clip = store_item(s, data=data, block_list=False)  # stored before block lists: checked whole
    target = f"{url}/api/v1/evidence/{clip.id}/content?reason=checking+the+footage"
    reads = _count_store_reads(s)
    starts = [(i * 7919 * 1013) % SIZE for i in range(READS)]

    def tiny(start: int) -> httpx.Response:
        return httpx.get(target, headers={**admin, "Range": f"bytes={start}-{start}"}, timeout=60)

    health: list[float] = []

    def probe() -> None:
        for _ in range(5):
            t = time.monotonic()
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            health.append(time.monotonic() - t)

    prober = threading.Thread(target=probe)
    with ThreadPoolExecutor(READS) as pool:
        prober.start()
        answers = list(pool.map(tiny, starts))
    prober.join()
    for start, r in zip(starts, answers, strict=True):
        assert r.status_code == 206 and r.content == data[start : start + 1], (r.status_code, r.text[:200])
    # One whole read (the check), and one block for each range: not a whole read per range.
    assert sum(reads) <= SIZE + READS * BLOCK, (len(reads), sum(reads))
    assert sum(1 for n in reads if n == SIZE) == 1, reads
    assert len(health) == 5
    # A later range costs its block only.
    reads.clear()
    r = tiny(SIZE - 1)
    assert r.status_code == 206 and r.content == data[-1:]
    assert reads == [SIZE - 8 * BLOCK]
    # Every read is still on the record: one viewing opened on custody, every range in it.
    trail = httpx.get(f"{url}/api/v1/evidence/{clip.id}/custody", headers=admin).json()
    opened = [e for e in trail if e["action"] == "viewed"]
    assert len(opened) == 1, opened
    with s.db.session() as session:
        viewing = session.get(ViewingSession, opened[0]["details"]["viewing"])
        assert viewing is not None and viewing.ranges == READS + 1


def test_whole_checks_are_capped_per_person_and_per_process(served: Any) -> None:
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    checked, fresh = (store_item(s, data=os.urandom(2 * BLOCK), block_list=False) for _ in range(2))
    r = httpx.get(
        f"{url}/api/v1/evidence/{checked.id}/content?reason=checking+the+footage",
        headers={**admin, "Range": "bytes=5-9"},
    )
    assert r.status_code == 206
    held: list[str] = []
    try:
        for _ in range(WHOLE_CHECKS.per_key):
            WHOLE_CHECKS.take("user:boss")
            held.append("user:boss")
        r = httpx.get(
            f"{url}/api/v1/evidence/{fresh.id}/content?reason=checking+the+footage",
            headers={**admin, "Range": "bytes=5-9"},
        )
        assert r.status_code == 429 and r.json()["reason"] == "checks_busy", r.text
        assert r.headers["retry-after"] == str(s.settings.retry_after_seconds)
        # An object checked lately needs no slot.
        r = httpx.get(
            f"{url}/api/v1/evidence/{checked.id}/content?reason=checking+the+footage",
            headers={**admin, "Range": "bytes=5-9"},
        )
        assert r.status_code == 206
        WHOLE_CHECKS.give_back(held.pop())
        n = 0
        while WHOLE_CHECKS.held() < WHOLE_CHECKS.total:
            WHOLE_CHECKS.take(f"user:other{n}")
            held.append(f"user:other{n}")
            n += 1
        r = httpx.get(
            f"{url}/api/v1/evidence/{fresh.id}/content?reason=checking+the+footage",
            headers={**admin, "Range": "bytes=5-9"},
        )
        assert r.status_code == 503 and r.json()["reason"] == "checks_busy", r.text
        assert "retry-after" in r.headers
        # A whole read costs what it sends: no slot.
        r = httpx.get(f"{url}/api/v1/evidence/{fresh.id}/content?reason=checking+the+footage", headers=admin)
        assert r.status_code == 200 and len(r.content) == 2 * BLOCK
    finally:
        for key in held:
            WHOLE_CHECKS.give_back(key)
    assert WHOLE_CHECKS.held() == 0


def test_a_whole_check_nobody_waits_for_stops(services: Any) -> None:
    item = store_item(services, data=os.urandom(4 * BLOCK))
    started: list[object] = []
    check = VERIFIED.join(object_key(item), started.append)
    assert started == [check]
    # A second reader of the same object waits on the same check.
    assert VERIFIED.join(object_key(item), started.append) is check and started == [check]
    VERIFIED.leave(check)
    assert not check.stop.is_set()
    VERIFIED.leave(check)
    assert check.stop.is_set()
    with pytest.raises(Abandoned):
        verify_whole(services.store, item, check.stop)
    # A reader arriving as it stops starts a check of its own.
    again = VERIFIED.join(object_key(item), started.append)
    assert again is not check and started == [check, again]
    for c in (check, again):
        c.result.set_exception(Abandoned(item.id))
    fixity, digests = verify_whole(services.store, item)
    assert fixity.ok and len(digests) == 4


def test_a_players_first_read_checks_the_whole_ahead_of_its_seeks(served: Any) -> None:
    """A player's first read (``Range: bytes=0-``, dropped once it has the index) starts the whole
    check its first seek would otherwise wait for, and it runs to its end with nobody waiting: the
    seek then reads only its blocks. A download (no ``Range``) and a small object start none: a
    download takes its block digests from its own read as it streams (``later_lists``)."""

    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    clip, downloaded, small = (
        store_item(s, data=os.urandom(n), block_list=False) for n in (SIZE, SIZE, 2 * BLOCK)
    )
    reads = _count_store_reads(s)
    for item, headers in ((downloaded, {}), (small, {"Range": "bytes=0-"})):
        r = httpx.get(
            f"{url}/api/v1/evidence/{item.id}/content?reason=checking+the+footage",
            headers={**admin, **headers},
        )
        assert r.status_code in (200, 206) and len(r.content) == item.size
        assert object_key(item) not in VERIFIED._running
    assert reads == [SIZE, 2 * BLOCK], reads  # each read's own: no whole check beside either
    # Had a check started with the small one's read, it would be running or kept by now.
    assert VERIFIED.digests(object_key(small)) is None
    assert VERIFIED.digests(object_key(downloaded)) is not None  # from the download's own read
    reads.clear()
    target = f"{url}/api/v1/evidence/{clip.id}/content?reason=checking+the+footage"
    with httpx.stream("GET", target, headers={**admin, "Range": "bytes=0-"}) as resp:
        assert resp.status_code == 206
        next(resp.iter_bytes(1024))  # the index, and the player goes on to seek
    wait_for(lambda: VERIFIED.digests(object_key(clip)) is not None, what="the whole check started ahead")
    wait_for(lambda: WHOLE_CHECKS.held() == 0, what="the check's slot given back")
    whole = max(reads)
    assert whole == SIZE  # the check read it all, though the player's own read was dropped
    before = len(reads)
    r = httpx.get(target, headers={**admin, "Range": f"bytes={5 * BLOCK}-{5 * BLOCK + 99}"})
    assert r.status_code == 206 and len(r.content) == 100
    assert reads[before:] == [BLOCK]  # the seek: one block read, no whole check


def test_a_dropped_range_stops_its_stream_and_store_read_at_once(served: Any) -> None:
    """A player drops a range it no longer wants (it seeks elsewhere): the blocks behind it stop and
    their store read is closed as the client goes, not whenever the garbage collector comes by (here
    it never does: it is off), so no read keeps a store connection or a thread for a gone client."""
    import gc

    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    size = 96 * BLOCK  # 24 MiB: more than the sockets between the two ends hold
    clip = store_item(s, data=os.urandom(size))
    target = f"{url}/api/v1/evidence/{clip.id}/content?reason=checking+the+footage"
    assert httpx.get(target, headers={**admin, "Range": "bytes=0-0"}).status_code == 206  # checked whole
    store = s.store
    original = store.read
    opened: list[int] = []
    closed: list[int] = []

    def read(
        key: str, version_id: str | None = None, offset: int = 0, length: int = 0, chunk: int = BLOCK, **more
    ):  # type: ignore[no-untyped-def]
        opened.append(offset)
        try:
            yield from original(key, version_id, offset, length, chunk, **more)
        finally:
            closed.append(offset)

    store.read = read
    gc.collect()
    gc.disable()
    try:
        with httpx.stream("GET", target, headers={**admin, "Range": f"bytes={BLOCK}-"}) as resp:
            assert resp.status_code == 206
            next(resp.iter_bytes(64 * 1024))
        # The connection is closed with most of the range unread.
        wait_for(lambda: closed == [BLOCK], timeout=10, what="the dropped range's store read closed")
        assert opened == [BLOCK]
    finally:
        gc.enable()
        store.read = original


def _list_kept(s: Any, item_id: str) -> bool:
    with s.db.reading() as session:
        return session.get(EvidenceBlockList, item_id) is not None


def test_the_next_range_from_where_a_player_stopped_reads_no_block_twice(served: Any) -> None:
    """A player drops a range once it has what it wants and asks for the next from where it stopped:
    the blocks the range before read and checked are served as they were checked, and the store is
    read only from the first block not held (the first byte waits for no store round trip). Held
    blocks go with the object's kept digests (``forget``)."""
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    clip = store_item(s, data=data, block_list=False)  # stored before block lists: checked whole first
    target = f"{url}/api/v1/evidence/{clip.id}/content?reason=checking+the+footage"

    def ranged(lo: int, hi: int) -> bytes:
        r = httpx.get(target, headers={**admin, "Range": f"bytes={lo}-{hi}"})
        assert r.status_code == 206, r.text
        return r.content

    assert ranged(0, 0) == data[:1]  # checked whole: block digests kept
    offsets: list[int] = []
    original = s.store.read

    def read(
        key: str, version_id: str | None = None, offset: int = 0, length: int = 0, chunk: int = BLOCK, **more
    ):  # type: ignore[no-untyped-def]
        offsets.append(offset)
        yield from original(key, version_id, offset, length, chunk, **more)

    s.store.read = read
    try:
        assert ranged(BLOCK, 4 * BLOCK - 1) == data[BLOCK : 4 * BLOCK]
        assert offsets == [BLOCK]
        assert ranged(2 * BLOCK + 5, 5 * BLOCK + 9) == data[2 * BLOCK + 5 : 5 * BLOCK + 10]
        assert offsets == [BLOCK, 4 * BLOCK]  # blocks 2 and 3 were held; 4 and 5 read
        assert ranged(3 * BLOCK, 3 * BLOCK + 99) == data[3 * BLOCK : 3 * BLOCK + 100]
        assert offsets == [BLOCK, 4 * BLOCK]
        VERIFIED.forget(object_key(clip))  # e.g. a block found altered: nothing held is served
        assert VERIFIED.recent_block(object_key(clip), 3) is None
        wait_for(lambda: _list_kept(s, clip.id), what="the block list its whole check kept")
        assert ranged(3 * BLOCK, 3 * BLOCK + 99) == data[3 * BLOCK : 3 * BLOCK + 100]
        # Its block read from the store again, not served as held; its digests now come from the
        # block list its first whole check kept (``later_lists``), not from a second whole check.
        assert offsets == [BLOCK, 4 * BLOCK, 3 * BLOCK]
    finally:
        s.store.read = original
