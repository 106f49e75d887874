"""Altered evidence is never served, on both databases and the real store: bytes changed on the
storage server's disk are cut off short as they stream and the item is quarantined; a quarantined
item is refused except to an administrator reviewing it (recorded on custody); a row whose digests
no longer say what its signed record says is refused; a range is checked against the whole."""

from __future__ import annotations

import json
import mmap
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from storage.embedded import EmbeddedSeaweed
from tests.conftest import free_base_port, make_settings, start_server
from tests.test_incidents_kit import bearer, staff, store_item, user

SIZE = 1024 * 1024  # over one read block: something is sent before the cut


@pytest.fixture
def own_store(tmp_path: Path, database_url: str) -> Iterator[tuple[object, EmbeddedSeaweed, str]]:
    """Services on a store of their own (its volumes are damaged on disk) and a live server."""
    from ingest.services import build_services

    seaweed = EmbeddedSeaweed(tmp_path / "own-s3", free_base_port(), "512MiB")
    seaweed.start()
    s = build_services(make_settings(tmp_path, database_url, seaweed))
    server, thread, url = start_server(s)
    yield s, seaweed, url
    server.should_exit = True
    thread.join(15)
    s.db.dispose()
    seaweed.kill()  # thrown away with tmp_path: no graceful stop (about 2 s)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C = _crc32c_table()


def _crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(c: int) -> int:
    """SeaweedFS keeps a needle's CRC-32C either as it is or masked like this (it accepts both)."""
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _alter_on_disk(seaweed: EmbeddedSeaweed, data: bytes, offset: int) -> None:
    """Change one byte of the object holding ``data`` in the storage server's volume files, and the
    needle's own CRC to match, as someone with the disk would: the store then serves the altered
    bytes without complaint (a single flipped bit it would refuse by itself)."""
    altered = bytearray(data)
    altered[offset] ^= 0x01
    old, new = _crc32c(data), _crc32c(bytes(altered))
    done = False
    for dat in Path(seaweed.data_dir).rglob("*.dat"):
        with open(dat, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            at = m.find(data[:64])
            if at < 0:
                continue
            m[at + offset] ^= 0x01
            end = at + len(data)
            for form in (lambda c: c, _masked):
                found = m.find(form(old).to_bytes(4, "big"), end, end + 1024)
                if found >= 0:
                    m[found : found + 4] = form(new).to_bytes(4, "big")
                    done = True
    assert done, "object bytes and their needle checksum not found on the volume"


def flip_on_disk(seaweed: EmbeddedSeaweed, marker: bytes) -> None:
    """Flip one bit of the object that starts with ``marker`` (ten bytes past it) in the storage
    server's volume files, leaving the needle's checksum as it was (the store may refuse the bytes
    itself)."""
    flipped = False
    for dat in Path(seaweed.data_dir).rglob("*.dat"):
        if dat.stat().st_size < len(marker):
            continue
        with open(dat, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            at = m.find(marker)
            if at >= 0:
                m[at + len(marker) + 10] ^= 0x01
                flipped = True
    assert flipped, "object bytes not found on the volume"


READ = {"reason": "checking the footage"}  # an original is read with a stated reason


def _clip(s: Any, wearer: str | None = None, block_list: bool = True) -> tuple[EvidenceItem, bytes, bytes]:
    marker = b"EVIDENCE-SERVED-" + uuid.uuid4().hex.encode()
    data = marker + os.urandom(SIZE)
    return store_item(s, data=data, wearer=wearer, block_list=block_list), data, marker


def _status(s: Any, item_id: str) -> tuple[str, list[dict[str, object]]]:
    with s.db.session() as session:
        row = session.get(EvidenceItem, item_id)
        assert row is not None
        trail = [e.to_json() for e in Ledger.item_entries(session, item_id)]
    return row.status, trail


def _cut_short(url: str, headers: dict[str, str]) -> int:
    """Stream a response that must break off short of its Content-Length; how much arrived."""
    got = bytearray()
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("GET", url, headers=headers) as resp:
            assert resp.status_code in (200, 206), resp.status_code
            for block in resp.iter_bytes():
                got += block
    return len(got)


def test_altered_bytes_are_cut_off_and_the_item_quarantined(own_store: Any) -> None:
    s, seaweed, url = own_store
    user(s, "boss", "admin")
    user(s, "north", "security_manager", "NORTH")
    staff(s, "S-N", "nurse", "NORTH")
    admin, manager = bearer(s, "boss"), bearer(s, "north")
    clip, data, marker = _clip(s, "S-N")
    target = f"{url}/api/v1/evidence/{clip.id}/content"
    whole = httpx.get(target, headers=admin, params=READ)
    assert whole.status_code == 200 and whole.content == data
    _alter_on_disk(seaweed, data, SIZE // 2)
    assert _cut_short(target + "?reason=checking+the+footage", admin) < len(data)
    status, trail = _status(s, clip.id)
    assert status == "quarantined" and trail[-1]["action"] == "quarantined"
    assert "found while serving it to" in str(trail[-1]["details"])
    # Quarantined: refused to everyone, a reason or not...
    for who in (admin, manager):
        r = httpx.get(target, headers=who)
        assert r.status_code == 409 and r.json()["reason"] == "quarantined", r.text
    r = httpx.get(target, headers=manager, params={"review_reason": "I would like to see it anyway"})
    assert r.status_code == 409
    # ...but an administrator reviewing it, with a reason recorded on custody, as it is held.
    reason = "finding out what changed on the volume"
    r = httpx.get(target, headers=admin, params={"review_reason": reason})
    assert r.status_code == 200 and r.headers["x-evidence-status"] == "quarantined"
    assert "etag" not in r.headers and len(r.content) == len(data) and r.content != data
    _, trail = _status(s, clip.id)
    assert trail[-1]["action"] == "viewed" and trail[-1]["details"]["purpose"] == "quarantine review"
    assert trail[-1]["details"]["reason"] == reason


def test_a_range_is_checked_against_the_whole_object_then_block_by_block(own_store: Any) -> None:
    """The first range read of an object checks the whole of it (the recorded digest is of the
    whole): a byte changed beyond the range asked for is found then, and nothing is served. Once the
    whole has checked, a range is checked against the digests of the blocks it lies in: a byte
    changed inside it is never served (cut off before the block, the item quarantined). The items
    are stored without block lists, as before lists were kept (``test_block_lists`` for those)."""
    s, seaweed, url = own_store
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    # Changed beyond the range, before any whole check: refused, quarantined.
    clip, data, marker = _clip(s, block_list=False)
    target = f"{url}/api/v1/evidence/{clip.id}/content"
    _alter_on_disk(seaweed, data, SIZE)
    r = httpx.get(target, headers={**admin, "Range": "bytes=0-99"}, params=READ)
    assert r.status_code == 409 and r.json()["reason"] == "quarantined", r.text
    assert _status(s, clip.id)[0] == "quarantined"
    # Checked whole by a first range read; then changed inside a later range: not served.
    clip, data, marker = _clip(s, block_list=False)
    target = f"{url}/api/v1/evidence/{clip.id}/content"
    r = httpx.get(target, headers={**admin, "Range": "bytes=0-99"}, params=READ)
    assert r.status_code == 206 and r.content == data[:100]
    _alter_on_disk(seaweed, data, SIZE)
    assert (
        _cut_short(
            target + "?reason=checking+the+footage", {**admin, "Range": f"bytes={SIZE - 10}-{SIZE + 10}"}
        )
        < 21
    )
    status, trail = _status(s, clip.id)
    assert status == "quarantined" and trail[-1]["action"] == "quarantined"
    assert "found while serving it to" in str(trail[-1]["details"])
    # Changed inside the first block of a later range: that block is checked while the range is
    # recorded, so the read is refused outright (nothing sent at all), and the item quarantined.
    clip, data, marker = _clip(s, block_list=False)
    target = f"{url}/api/v1/evidence/{clip.id}/content"
    r = httpx.get(target, headers={**admin, "Range": "bytes=0-99"}, params=READ)
    assert r.status_code == 206 and r.content == data[:100]
    _alter_on_disk(seaweed, data, SIZE)
    r = httpx.get(target, headers={**admin, "Range": f"bytes={SIZE}-{SIZE + 10}"}, params=READ)
    assert r.status_code == 409 and r.json()["reason"] == "quarantined", r.text
    status, trail = _status(s, clip.id)
    assert status == "quarantined" and trail[-1]["action"] == "quarantined"


def test_a_row_that_disagrees_with_its_signed_record_is_not_served(own_store: Any) -> None:
    """The bytes are swapped and the row's digests edited to match them: the signed 'stored' entry
    still says otherwise, so nothing is served and the item is quarantined."""
    s, _seaweed, url = own_store
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    clip, _data, _marker = _clip(s)
    other = store_item(s, data=b"the swapped-in bytes " * 1000)
    with s.db.session() as session:
        session.execute(
            update(EvidenceItem)
            .where(EvidenceItem.id == clip.id)
            .values(
                object_key=other.object_key,
                version_id=other.version_id,
                sha256=other.sha256,
                blake3=other.blake3,
                size=other.size,
            )
        )
    r = httpx.get(f"{url}/api/v1/evidence/{clip.id}/content", headers=admin, params=READ)
    assert r.status_code == 409 and r.json()["reason"] == "record_altered", r.text
    status, trail = _status(s, clip.id)
    assert status == "quarantined" and trail[-1]["action"] == "quarantined"
    assert "in the custody record" in json.dumps(trail[-1]["details"])
