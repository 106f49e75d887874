"""A player's range is asked of the store a window at a time, not as the rest of the object.

Chromium asks for open ranges (``bytes=N-``), keeps a megabyte or two of each and drops it. Asked
as one GET, such a range named the rest of a 2 GB clip, and SeaweedFS answered a GET of the same
object sent in the next half second up to 0.6 s late (the next range's first block, in the first
seeks). Each GET now names at most ``STORE_WINDOW`` bytes; the bytes served, their checks against
the block digests and what an object cut short of its record does are as before.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from blake3 import blake3

from chain_of_custody import read_checks
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import EvidenceItem
from storage.digests import BLOCK, Digests
from storage.objects import StoredObject
from tests.test_altered_evidence import _cut_short
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_read_cost import served  # noqa: F401 - a fixture

WINDOW = 4 * BLOCK
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
    stored = s.store.put_bytes(
        f"test/{uuid.uuid4()}",
        data,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
    )

    def read(offset: int, length: int, window: int) -> bytes:
        return b"".join(s.store.read(stored.key, stored.version_id, offset, length, 1000, window=window))

    assert read(0, len(data), 3000) == data
    assert read(777, len(data) - 777, 3000) == data[777:]
    assert read(0, 12 * 1024, 4000) == data  # the object ends within a window
    assert read(0, 15 * 1024, 5 * 1024) == data  # ...and where a window ends: nothing past it
    assert read(2048, 15 * 1024, 0) == data[2048:]  # one GET, as before


def _recorded(s: Any, stored: StoredObject) -> Any:
    """A clip recorded as evidence of ``stored`` (its record as the test chose it)."""
    with s.db.session() as session:
        return record_evidence(
            session,
            s.ledger,
            stored,
            Provenance(
                kind="clip",
                actor="test",
                content_type="video/mp4",
                retain_until=datetime.now(UTC) + timedelta(days=1),
            ),
            received={"by": "test"},
            verified={"ok": True},
        )


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
    item = _recorded(s, StoredObject.hashed(put.bucket, put.key, put.version_id, len(recorded), d))
    target = f"{url}/api/v1/evidence/{item.id}/content?reason=checking+the+footage"
    assert _cut_short(target, {**admin, "Range": f"bytes={BLOCK}-"}) <= 7 * BLOCK
    with s.db.session() as session:
        row = session.get(EvidenceItem, item.id)
        assert row is not None and row.status == "quarantined"


def test_a_whole_read_asks_a_window_at_a_time_and_still_reads_every_byte_held(served: Any) -> None:  # noqa: F811
    s, _ = served
    for size in (0, 1, 3000, 9000, 10 * 1024):
        data = os.urandom(size)
        stored = s.store.put_bytes(
            f"test/{uuid.uuid4()}",
            data,
            retain_until=datetime.now(UTC) + timedelta(days=1),
            content_type="video/mp4",
        )
        got = b"".join(s.store.read(stored.key, stored.version_id, chunk=1000, window=3000))
        assert got == data, size


def test_a_players_first_read_of_every_byte_asks_a_window_at_a_time(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``<video>`` first asks for every byte (``bytes=0-``) and drops it once it has the index: that
    read, checked whole as it streams, asks the store a window at a time too."""
    s, url = served
    monkeypatch.setattr(read_checks, "STORE_WINDOW", WINDOW, raising=False)
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    size = 10 * BLOCK + 123
    data = os.urandom(size)
    clip = store_item(s, data=data)
    asked = _store_gets(s)
    r = httpx.get(
        f"{url}/api/v1/evidence/{clip.id}/content",
        headers={**admin, "Range": "bytes=0-"},
        params=READ,
        timeout=60,
    )
    assert r.status_code == 206 and r.content == data
    # Before: one GET of the whole object, (0, 0).
    assert asked == [(0, WINDOW), (WINDOW, WINDOW), (2 * WINDOW, WINDOW)], asked


def test_an_object_longer_than_its_record_read_whole_is_still_cut_off_and_quarantined(
    served: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object holds 12 blocks, its signed record the first 8: read whole, the windows go on to
    the object's end, so the check sees the 4 blocks more, and the answer is cut off short of its
    last block with the item quarantined, as with one GET."""
    s, url = served
    monkeypatch.setattr(read_checks, "STORE_WINDOW", WINDOW, raising=False)
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    recorded = os.urandom(8 * BLOCK)
    put = s.store.put_bytes(
        f"test/{uuid.uuid4()}",
        recorded + os.urandom(4 * BLOCK),
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
    )
    d = Digests()
    d.update(recorded)
    item = _recorded(s, StoredObject.hashed(put.bucket, put.key, put.version_id, len(recorded), d))
    target = f"{url}/api/v1/evidence/{item.id}/content?reason=checking+the+footage"
    assert _cut_short(target, admin) < len(recorded)
    with s.db.session() as session:
        row = session.get(EvidenceItem, item.id)
        assert row is not None and row.status == "quarantined"
