"""A player's range is asked of the store a window at a time, not as the rest of the object.

Chromium asks for open ranges (``bytes=N-``), keeps a megabyte or two of each and drops it. Asked
as one GET, such a range named the rest of a 2 GB clip, and SeaweedFS answered a GET of the same
object sent in the next half second up to 0.6 s late (the next range's first block, in the first
seeks). Each GET now names at most ``STORE_WINDOW`` bytes; the bytes served, their checks against
the block digests and what an object cut short of its record does are as before.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from blake3 import blake3

from chain_of_custody import read_checks
from chain_of_custody.evidence import quarantine
from chain_of_custody.models import EvidenceItem
from storage import objects
from storage.digests import BLOCK, Digests
from storage.objects import StoredObject
from tests.test_altered_evidence import _cut_short
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_read_cost import served  # noqa: F401 - a fixture

WINDOW = 4 * BLOCK
SIZE = 10 * BLOCK + 123
WINDOWS = [(0, WINDOW), (WINDOW, WINDOW), (2 * WINDOW, WINDOW)]  # every byte of SIZE, a window at a time
READ = {"reason": "checking the footage"}


def _store_gets(s: Any) -> list[tuple[int, int]]:
    """The (offset, length) of every GET the store's client sends from now on."""
    asked: list[tuple[int, int]] = []
    client = s.store.client
    original = client.get_object

    def get_object(bucket: str, key: str, offset: int = 0, length: int = 0, **more: Any) -> Any:
        asked.append((offset, length))
        return original(bucket, key, offset=offset, length=length, **more)

    client.get_object = get_object
    return asked


def _windowed(got: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, dict[str, str]]:
    """The ``served`` service with ``STORE_WINDOW`` of ``WINDOW``, its URL and an administrator's token."""
    s, url = got
    monkeypatch.setattr(read_checks, "STORE_WINDOW", WINDOW, raising=False)
    user(s, "boss", "admin")
    return s, url, bearer(s, "boss")


def _put(s: Any, data: bytes) -> StoredObject:
    """``data`` stored as an object under a day's retention (no evidence record)."""
    retain_until = datetime.now(UTC) + timedelta(days=1)
    return s.store.put_bytes(
        f"test/{uuid.uuid4()}", data, retain_until=retain_until, content_type="video/mp4"
    )


def _content(
    url: str, item_id: str, headers: dict[str, str], params: dict[str, str] = READ
) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/evidence/{item_id}/content", headers=headers, params=params, timeout=60)


def test_an_open_range_asks_the_store_a_window_at_a_time(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s, url = served
    monkeypatch.setattr(read_checks, "STORE_WINDOW", WINDOW, raising=False)
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    size = 10 * BLOCK + 123
    data = os.urandom(size)
    clip = store_item(s, data=data)
    target = f"{url}/api/v1/evidence/{clip.id}/content"
    asked = _store_gets(s)
    start = BLOCK + 17
    r = httpx.get(target, headers={**admin, "Range": f"bytes={start}-"}, params=READ, timeout=60)
    assert r.status_code == 206 and r.content == data[start:]
    # Before: one GET of the rest of the object, (BLOCK, size - BLOCK), whatever the player kept of it.
    assert asked == [(BLOCK, WINDOW), (5 * BLOCK, WINDOW), (9 * BLOCK, size - 9 * BLOCK)], asked
    # A range dropped after its first bytes asked the store a window at a time up to then, never for
    # the rest of the object (a clip of its own: the blocks above are held, and served without a GET).
    big = store_item(s, data=os.urandom(96 * BLOCK))  # more than the sockets between the two ends hold
    asked.clear()
    with httpx.stream(
        "GET",
        f"{url}/api/v1/evidence/{big.id}/content",
        headers={**admin, "Range": f"bytes={6 * BLOCK}-"},
        params=READ,
    ) as resp:
        assert resp.status_code == 206
        next(resp.iter_bytes(1024))
    assert asked[0] == (6 * BLOCK, WINDOW) and all(n <= WINDOW for _, n in asked), asked
    assert len(asked) < 90 // 4, asked
    # A range within one window is one GET, as before.
    fresh = store_item(s, data=data)
    asked.clear()
    r = httpx.get(
        f"{url}/api/v1/evidence/{fresh.id}/content",
        headers={**admin, "Range": f"bytes={BLOCK}-{2 * BLOCK}"},
        params=READ,
    )
    assert r.status_code == 206 and r.content == data[BLOCK : 2 * BLOCK + 1]
    assert asked == [(BLOCK, 2 * BLOCK)], asked


def test_windows_stop_where_the_object_ends(served: Any) -> None:  # noqa: F811
    s, _ = served
    data = os.urandom(10 * 1024)
    stored = _put(s, data)

    def read(offset: int, length: int, window: int) -> bytes:
        return b"".join(s.store.read(stored.key, stored.version_id, offset, length, 1000, window=window))

    assert read(0, len(data), 3000) == data
    assert read(777, len(data) - 777, 3000) == data[777:]
    assert read(0, 12 * 1024, 4000) == data  # the object ends within a window
    assert read(0, 15 * 1024, 5 * 1024) == data  # ...and where a window ends: nothing past it
    assert read(2048, 15 * 1024, 0) == data[2048:]  # one GET, as before


def _status(s: Any, item_id: str) -> str | None:
    with s.db.session() as session:
        row = session.get(EvidenceItem, item_id)
        return None if row is None else row.status


def _longer_than_recorded(s: Any, recorded: bytes, block_list: bool) -> Any:
    """A clip whose signed record is of ``recorded`` (with its block list, or without one) while
    the store holds 4 blocks more after it."""
    put = s.store.put_bytes(
        f"test/{uuid.uuid4()}",
        recorded + os.urandom(4 * BLOCK),
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
    )
    d = Digests(block_list)
    d.update(recorded)
    stored = StoredObject.hashed(put.bucket, put.key, put.version_id, len(recorded), d)
    return store_item(s, stored=stored, block_list=block_list)


def test_an_object_cut_short_of_its_record_at_a_window_is_still_cut_off(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object holds 8 blocks, its signed record 12: the third window finds nothing in the store,
    and the stream stops short of its Content-Length after the bytes held, as one GET's would, with
    the item quarantined: an object shorter than its record is altered, whichever read finds it."""
    s, url = served
    monkeypatch.setattr(read_checks, "STORE_WINDOW", WINDOW, raising=False)
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    held = os.urandom(8 * BLOCK)
    recorded = held + os.urandom(4 * BLOCK)
    put = s.store.put_bytes(
        f"test/{uuid.uuid4()}",
        held,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
    )
    d = Digests()
    d.update(recorded)
    assert d.block_digests() == tuple(
        blake3(recorded[i : i + BLOCK]).digest() for i in range(0, 12 * BLOCK, BLOCK)
    )
    item = store_item(s, stored=StoredObject.hashed(put.bucket, put.key, put.version_id, len(recorded), d))
    target = f"{url}/api/v1/evidence/{item.id}/content?reason=checking+the+footage"
    assert _cut_short(target, {**admin, "Range": f"bytes={BLOCK}-"}) <= 7 * BLOCK
    with s.db.session() as session:
        row = session.get(EvidenceItem, item.id)
        assert row is not None and row.status == "quarantined"


def test_a_whole_read_asks_a_window_at_a_time_and_still_reads_every_byte_held(served: Any) -> None:  # noqa: F811
    s, _ = served
    for size in (0, 1, 3000, 9000, 10 * 1024):
        data = os.urandom(size)
        stored = _put(s, data)
        got = b"".join(s.store.read(stored.key, stored.version_id, chunk=1000, window=3000))
        assert got == data, size


def test_a_players_first_read_of_every_byte_asks_a_window_at_a_time(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``<video>`` first asks for every byte (``bytes=0-``) and drops it once it has the index: that
    read, checked whole as it streams, asks the store a window at a time too."""
    s, url, admin = _windowed(served, monkeypatch)
    data = os.urandom(SIZE)
    clip = store_item(s, data=data)
    asked = _store_gets(s)
    r = _content(url, clip.id, {**admin, "Range": "bytes=0-"})
    assert r.status_code == 206 and r.content == data
    # Before: one GET of the whole object, (0, 0).
    assert asked == WINDOWS, asked


def test_an_object_longer_than_its_record_read_whole_is_still_cut_off_and_quarantined(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object holds 12 blocks, its signed record the first 8: read whole, the windows go on to
    the object's end, so the check sees the 4 blocks more, and the answer is cut off short of its
    last block with the item quarantined, as with one GET."""
    s, url, admin = _windowed(served, monkeypatch)
    recorded = os.urandom(8 * BLOCK)
    item = _longer_than_recorded(s, recorded, block_list=True)
    target = f"{url}/api/v1/evidence/{item.id}/content?reason=checking+the+footage"
    assert _cut_short(target, admin) < len(recorded)
    with s.db.session() as session:
        row = session.get(EvidenceItem, item.id)
        assert row is not None and row.status == "quarantined"


def test_a_whole_check_of_an_item_without_a_block_list_asks_a_window_at_a_time(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An item stored before block lists were kept is checked whole by its first range (and by a
    player's first read, ahead of its seeks): that check asks the store a window at a time too, so
    the seeks' ranges of the same object are not asked beside a GET naming all of it."""
    s, url, admin = _windowed(served, monkeypatch)
    data = os.urandom(SIZE)
    clip = store_item(s, data=data, block_list=False)
    asked = _store_gets(s)
    r = _content(url, clip.id, {**admin, "Range": f"bytes={BLOCK}-{2 * BLOCK}"})
    assert r.status_code == 206 and r.content == data[BLOCK : 2 * BLOCK + 1]
    # Before: one GET of the whole object for the check, (0, 0), then the range's blocks.
    assert asked == [*WINDOWS, (BLOCK, 2 * BLOCK)], asked
    # A player's first read of such an item (every byte, then its seeks) starts the whole check
    # ahead of the seeks, beside the read itself: both a window at a time.
    other = store_item(s, data=data, block_list=False)
    asked.clear()
    r = _content(url, other.id, {**admin, "Range": "bytes=0-"})
    assert r.status_code == 206 and r.content == data
    key = read_checks.object_key(other)
    deadline = time.monotonic() + 30
    while read_checks.VERIFIED.digests(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_checks.VERIFIED.digests(key) is not None, "the check ahead did not end"
    assert sorted(asked) == sorted(2 * WINDOWS), asked


def test_an_object_without_a_block_list_longer_than_its_record_is_refused_and_quarantined(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object holds 12 blocks, its signed record (no block list) the first 8, all in windows
    of 4: the whole check a range starts reads on past the record's end to where the object ends,
    finds it does not match, and the range is refused with the item quarantined."""
    s, url, admin = _windowed(served, monkeypatch)
    item = _longer_than_recorded(s, os.urandom(8 * BLOCK), block_list=False)
    asked = _store_gets(s)
    r = _content(url, item.id, {**admin, "Range": f"bytes={BLOCK}-{2 * BLOCK}"})
    assert r.status_code == 409 and r.json()["reason"] == "quarantined", r.text
    assert (3 * WINDOW, WINDOW) in asked and all(0 < n <= WINDOW for _, n in asked), asked
    assert _status(s, item.id) == "quarantined"


def test_a_review_read_of_a_quarantined_item_asks_a_window_at_a_time(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An administrator's read of a quarantined item for review, as the store holds it, unchecked."""
    s, url, admin = _windowed(served, monkeypatch)
    data = os.urandom(SIZE)
    clip = store_item(s, data=data, block_list=False)
    with s.db.session() as session:
        quarantine(session, s.ledger, clip.id, "a test", {})
    asked = _store_gets(s)
    r = _content(url, clip.id, admin, {"review_reason": "finding out what changed on the volume"})
    assert r.status_code == 200 and r.content == data
    assert asked == WINDOWS, asked  # before: one GET of the whole object, (0, 0)


def test_the_digests_of_a_whole_object_are_read_a_window_at_a_time(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``evidence verify`` and an upload whose running digests were lost hash a whole object: a window
    at a time, to wherever it ends."""
    s, _ = served
    monkeypatch.setattr(objects, "WHOLE_READ_WINDOW", 3000)
    data = os.urandom(10 * 1024)
    stored = _put(s, data)
    asked = _store_gets(s)
    d = s.store.digests_of(stored.key, stored.version_id)
    assert d.hexdigests()[0] == hashlib.sha256(data).hexdigest() and d.size == len(data)
    # Before: one GET of the whole object, (0, 0).
    assert asked == [(0, 3000), (3000, 3000), (6000, 3000), (9000, 3000)], asked
