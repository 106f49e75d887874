"""An export reads each media object a window at a time, in its build and in every download.

One GET naming the whole of a 2 GB clip held SeaweedFS's answers to a player's ranges of the same
object up by 100-600 ms while it ran (docs/benchmarks.md, "Seeking"). The build's pass and each
download ask ``WHOLE_READ_WINDOW`` bytes a GET instead, to wherever the object ends (not where its
record says), so an object shorter or longer than its record still fails its check, the item is
quarantined, and no package or whole-looking download comes of it.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import incidents.export.media as export_media
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import EvidenceItem
from incidents.export.assemble import assemble
from incidents.export.plan import PACKAGE_KIND, ExportError, OriginalsPermission
from storage import objects
from storage.digests import BLOCK
from tests.conftest import start_server
from tests.test_export_api import link_to, package_with_link
from tests.test_export_package import (
    assert_nothing_exported,
    custody_count,
    export,
    layout_of,
    put_evidence,
    put_mismatched,
)

WINDOW = 4 * BLOCK
SIZE = 10 * BLOCK + 123
WINDOWS = [(0, WINDOW), (WINDOW, WINDOW), (2 * WINDOW, WINDOW)]  # every byte of SIZE, a window at a time


def _gets(s: Any) -> dict[str, list[tuple[int, int]]]:
    """The (offset, length) of every GET the store's client sends from now on, by object key."""
    asked: dict[str, list[tuple[int, int]]] = {}
    lock = threading.Lock()
    client = s.store.client
    original = client.get_object

    def get_object(bucket: str, key: str, offset: int = 0, length: int = 0, **more: Any) -> Any:
        with lock:
            asked.setdefault(key, []).append((offset, length))
        return original(bucket, key, offset=offset, length=length, **more)

    client.get_object = get_object
    return asked


@pytest.fixture
def windowed(sqlite_services: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(objects, "WHOLE_READ_WINDOW", WINDOW)
    return sqlite_services


def _memo(s: Any, data: bytes) -> EvidenceItem:
    return put_evidence(s, data, Provenance(kind="voice_memo", actor="test", content_type="audio/ogg"))


@pytest.mark.parametrize("package_hash", [False, True], ids=["checked-in-parallel", "in-zip-order"])
def test_a_build_reads_each_media_object_a_window_at_a_time(windowed: Any, package_hash: bool) -> None:
    s = windowed
    big = _memo(s, os.urandom(SIZE))
    small = _memo(s, os.urandom(BLOCK))
    asked = _gets(s)
    result = export(s, [big.id, small.id], package_hash=package_hash)
    assert sorted(result.included) == sorted([big.id, small.id])
    # Before: one GET of each whole object, (0, 0).
    assert asked[big.object_key] == WINDOWS, asked
    assert asked[small.object_key] == [(0, WINDOW)], asked  # shorter than a window: one GET


def test_a_download_reads_each_media_object_a_window_at_a_time(windowed: Any) -> None:
    """The whole zip and a range within a media member, through the link's route: each reads the
    member whole to check it, a window at a time."""
    s = windowed
    memo = _memo(s, os.urandom(SIZE))
    result, token = package_with_link(s, [memo.id])
    member = layout_of(s, result.export_id).media[0]
    expected = b"".join(assemble(s.store, layout_of(s, result.export_id)))
    server, thread, url = start_server(s)
    try:
        target = f"{url}/api/v1/exports/download/{token}"
        asked = _gets(s)
        whole = httpx.get(target, timeout=60)
        assert whole.status_code == 200 and whole.content == expected
        assert asked[memo.object_key] == WINDOWS, asked  # before: (0, 0)
        asked.clear()
        lo = member.start + BLOCK
        part = httpx.get(target, headers={"Range": f"bytes={lo}-{lo + 99}"}, timeout=60)
        assert part.status_code == 206 and part.content == expected[lo : lo + 100]
        assert asked[memo.object_key] == WINDOWS, asked
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_package_stored_whole_downloads_a_window_at_a_time(windowed: Any) -> None:
    """A package of the older form, its zip stored whole as the package item: served from that
    object, checked against its own record as it streams, a window at a time."""
    s = windowed
    data = os.urandom(SIZE)
    export_id = str(uuid.uuid4())
    stored = s.store.put_bytes(
        f"exports/{export_id}.zip",
        data,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="application/zip",
    )
    with s.db.session() as session:
        record_evidence(
            session,
            s.ledger,
            stored,
            Provenance(kind=PACKAGE_KIND, actor="test", filename="pkg.zip", content_type="application/zip"),
            item_id=export_id,
        )
    token = link_to(s, export_id)
    server, thread, url = start_server(s)
    try:
        asked = _gets(s)
        got = httpx.get(f"{url}/api/v1/exports/download/{token}", timeout=60)
        assert got.status_code == 200 and got.content == data
        assert asked[stored.key] == WINDOWS, asked  # before: (0, 0)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize(
    ("held_blocks", "recorded_blocks"),
    [(8, 12), (9, 12), (12, 8)],
    ids=["cut-short-at-a-window", "cut-short-within-a-window", "longer-than-its-record"],
)
def test_an_object_not_as_long_as_its_record_fails_the_build_through_windows(
    windowed: Any, held_blocks: int, recorded_blocks: int
) -> None:
    """The store holds ``held_blocks`` blocks, the signed record ``recorded_blocks`` (the same bytes
    as far as both go): the build's windows go on to wherever the object ends, the check fails,
    nothing is exported and the item is quarantined, as with one GET."""
    s = windowed
    common = os.urandom(max(held_blocks, recorded_blocks) * BLOCK)
    bad = put_mismatched(s, common[: held_blocks * BLOCK], common[: recorded_blocks * BLOCK])
    before = custody_count(s)
    asked = _gets(s)
    with pytest.raises(ExportError, match=f"{bad.id} hashes to BLAKE3 .* \\({held_blocks * BLOCK} bytes\\)"):
        export(s, [bad.id])
    assert all(0 < n <= WINDOW for _, n in asked[bad.object_key]), asked
    assert max(at for at, _ in asked[bad.object_key]) >= (held_blocks - 1) * BLOCK // WINDOW * WINDOW
    assert_nothing_exported(s, before + 1)  # the quarantine's entry alone
    with s.db.session() as session:
        row = session.get(EvidenceItem, bad.id)
        assert row is not None and row.status == "quarantined"


def test_a_download_over_an_object_cut_short_breaks_off_and_quarantines(
    windowed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package made while the object was whole, the object since cut short at a window's end:
    the download stops short of its Content-Length (nothing that looks whole arrives) and the
    item is quarantined."""
    s = windowed
    recorded = os.urandom(12 * BLOCK)
    held = recorded[: 8 * BLOCK]
    memo = put_mismatched(s, held, recorded)
    # The build's check would refuse it: leave it out, so the package is made as before the cut.
    monkeypatch.setattr(
        export_media, "_scan_parallel", lambda store, items, counter: {memo.id: zlib.crc32(recorded)}
    )
    result, token = package_with_link(s, [memo.id])
    server, thread, url = start_server(s)
    try:
        asked = _gets(s)
        got = bytearray()
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("GET", f"{url}/api/v1/exports/download/{token}", timeout=60) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-length"] == str(result.package_size)
                for block in resp.iter_bytes():
                    got += block
        assert len(got) < result.package_size
        # The third window finds nothing: the object ends where the second did (before: (0, 0)).
        assert asked[memo.object_key] == [(0, WINDOW), (WINDOW, WINDOW), (2 * WINDOW, WINDOW)], asked
        with s.db.session() as session:
            row = session.get(EvidenceItem, memo.id)
            assert row is not None and row.status == "quarantined"
    finally:
        server.should_exit = True
        thread.join(15)


def test_an_export_of_a_large_object_holds_a_few_windows_in_memory(sqlite_services: Any) -> None:
    """A 96 MiB object built into a package and downloaded whole: the Python heap's peak over each
    pass stays a small part of the object (its read-ahead chunks), not the object."""
    s = sqlite_services
    size = 96 * 1024 * 1024
    block = os.urandom(1024 * 1024)

    class Repeated:
        def __init__(self) -> None:
            self.left = size

        def read(self, n: int = -1) -> bytes:
            n = min(self.left, len(block) if n < 0 else n)
            self.left -= n
            return (block * (n // len(block) + 1))[:n]

    stored = s.store.put_stream(
        f"test/{uuid.uuid4()}",
        Repeated(),  # type: ignore[arg-type]
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
        length=size,
    )
    with s.db.session() as session:
        clip = record_evidence(session, s.ledger, stored, Provenance(kind="clip", actor="test"))
    tracemalloc.start()
    try:
        result = export(s, [clip.id], OriginalsPermission("user:boss", "admin", "the court asked for it"))
        _, built_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        n = sum(len(b) for b in assemble(s.store, layout_of(s, result.export_id)))
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == result.package_size > size
    print(f"peak traced: build {built_peak / 2**20:.1f} MiB, download {download_peak / 2**20:.1f} MiB")
    assert built_peak < size // 3, built_peak
    assert download_peak < size // 3, download_peak
