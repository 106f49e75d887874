"""Block lists, on both databases and the real store: every stored item keeps the BLAKE3 of each
256 KiB block in the pass that stores it, committed to by its signed ``stored`` entry, so a ranged
read reads and checks only the blocks its range lies in, with no whole check first; a changed byte
in a block served is never served (cut off, the item quarantined); a list edited in the database is
refused (409 ``record_altered``) and ``evidence verify`` names it."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from blake3 import blake3
from sqlalchemy import delete, select, update

from chain_of_custody.block_lists import commitment
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceBlockList, EvidenceItem
from chain_of_custody.read_checks import VERIFIED, WHOLE_CHECKS, object_key
from chain_of_custody.verify import VerifyOptions, verify_service
from storage.digests import BLOCK, Digests
from tests.clipkit import enrol
from tests.conftest import LiveServer
from tests.test_altered_evidence import _alter_on_disk, _cut_short, own_store  # noqa: F401
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_read_cost import _count_store_reads, served  # noqa: F401
from tests.test_upload_completion import PART, _upload

SIZE = 8 * BLOCK + 123
READ = {"reason": "checking the footage"}


@pytest.fixture(autouse=True)
def nothing_kept() -> Iterator[None]:
    VERIFIED.clear()
    yield
    VERIFIED.clear()


def _status(s: Any, item_id: str) -> str:
    with s.db.session() as session:
        row = session.get(EvidenceItem, item_id)
        assert row is not None
        return row.status


def _admin_and_clip(s: Any, url: str) -> tuple[dict[str, str], bytes, EvidenceItem, str]:
    """An administrator's bearer headers, a stored clip's bytes and item, and its content address."""
    user(s, "boss", "admin")
    data = os.urandom(SIZE)
    clip = store_item(s, data=data)
    return bearer(s, "boss"), data, clip, f"{url}/api/v1/evidence/{clip.id}/content"


def test_the_block_digests_are_taken_in_the_one_pass_however_the_bytes_arrive() -> None:
    data = os.urandom(3 * BLOCK + 1000)
    expected = tuple(blake3(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))
    pieces = random.Random(7)
    d, at = Digests(), 0
    while at < len(data):
        n = pieces.randint(1, BLOCK + 5000)
        d.update(data[at : at + n])
        at += n
        if pieces.random() < 0.3:
            d = d.copy()  # an upload's running digests, kept between requests
    assert d.block_digests() == expected
    assert d.hexdigests()[1] == blake3(data).hexdigest() and d.size == len(data)
    assert Digests(block_list=False).block_digests() is None


def test_a_first_range_reads_only_the_blocks_it_lies_in(served: Any) -> None:  # noqa: F811
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    clip = store_item(s, data=data)
    digests = tuple(blake3(data[i : i + BLOCK]).digest() for i in range(0, SIZE, BLOCK))
    with s.db.session() as session:
        entry = Ledger.stored_entry(session, clip.id)
        assert entry is not None
        assert json.loads(entry.body.details)["blocks"] == commitment(digests)
        assert commitment(digests)["count"] == 9
    target = f"{url}/api/v1/evidence/{clip.id}/content"
    reads = _count_store_reads(s)
    lo, hi = 3 * BLOCK + 10, 4 * BLOCK + 9  # across the boundary of blocks 3 and 4
    r = httpx.get(target, headers={**admin, "Range": f"bytes={lo}-{hi}"}, params=READ, timeout=60)
    assert r.status_code == 206 and r.content == data[lo : hi + 1]
    assert sum(reads) == 2 * BLOCK, reads  # the two blocks, not the object
    # A player's first read (every byte, dropped once the index is in) starts no whole check.
    with httpx.stream("GET", target, headers={**admin, "Range": "bytes=0-"}, params=READ, timeout=60) as r:
        assert r.status_code == 206
        next(r.iter_bytes())
    assert object_key(clip) not in VERIFIED._running and WHOLE_CHECKS.held() == 0
    r = httpx.get(target, headers={**admin, "Range": f"bytes={SIZE - 5}-"}, params=READ, timeout=60)
    assert r.status_code == 206 and r.content == data[-5:]
    assert reads[-1] == SIZE - 8 * BLOCK  # the short last block alone


def test_an_altered_block_is_cut_off_and_the_item_quarantined(own_store: Any) -> None:  # noqa: F811
    s, seaweed, url = own_store
    user(s, "boss", "admin")

    def clip() -> tuple[EvidenceItem, bytes, str]:
        data = b"BLOCKS-SERVED-" + uuid.uuid4().hex.encode() + os.urandom(SIZE)
        item = store_item(s, data=data)
        return item, data, f"{url}/api/v1/evidence/{item.id}/content"

    altered_blocks_are_never_served(s, seaweed, bearer(s, "boss"), clip)


def altered_blocks_are_never_served(
    s: Any, seaweed: Any, admin: dict[str, str], clip: Callable[[], tuple[EvidenceItem, bytes, str]]
) -> None:
    """Ranges of items ``clip`` stores (each with a block list) once a byte of them is changed on
    the store's disk: only the blocks a range lies in are read, a block that changed is never sent."""
    # Changed in block 5: a range of blocks 1-2 is served (only its blocks are read and checked)...
    item, data, target = clip()
    _alter_on_disk(seaweed, data, 5 * BLOCK + 77)
    r = httpx.get(target, headers={**admin, "Range": f"bytes={BLOCK}-{3 * BLOCK - 1}"}, params=READ)
    assert r.status_code == 206 and r.content == data[BLOCK : 3 * BLOCK]
    assert _status(s, item.id) == "stored"
    # ...one over blocks 3-6 is cut off short of block 5, and the item quarantined.
    asked = {**admin, "Range": f"bytes={3 * BLOCK}-{7 * BLOCK - 1}"}
    assert _cut_short(target + "?reason=checking+the+footage", asked) <= 2 * BLOCK
    assert _status(s, item.id) == "quarantined"
    with s.db.session() as session:
        last = Ledger.item_entries(session, item.id)[-1].to_json()
    assert last["action"] == "quarantined" and "found while serving it to" in str(last["details"])
    # Changed in the first block of the range: refused outright, nothing sent, quarantined.
    item, data, target = clip()
    _alter_on_disk(seaweed, data, 2 * BLOCK + 1)
    r = httpx.get(target, headers={**admin, "Range": f"bytes={2 * BLOCK}-{2 * BLOCK + 9}"}, params=READ)
    assert r.status_code == 409 and r.json()["reason"] == "quarantined", r.text
    assert _status(s, item.id) == "quarantined"


def test_an_altered_block_list_is_refused_and_verify_names_it(served: Any) -> None:  # noqa: F811
    s, url = served
    admin, data, clip, target = _admin_and_clip(s, url)
    with s.db.session() as session:
        row = session.get(EvidenceBlockList, clip.id)
        assert row is not None and row.count == 9
        altered = bytearray(row.digests)
        altered[4 * 32] ^= 0x01
        session.execute(
            update(EvidenceBlockList)
            .where(EvidenceBlockList.item_id == clip.id)
            .values(digests=bytes(altered))
        )
    r = httpx.get(target, headers={**admin, "Range": "bytes=100-199"}, params=READ, timeout=60)
    assert r.status_code == 409 and r.json()["reason"] == "record_altered", r.text
    assert "block list" in r.json()["error"]
    assert _status(s, clip.id) == "stored"  # the list is not the evidence: its bytes are not in doubt
    whole = httpx.get(target, headers=admin, params=READ, timeout=60)
    assert whole.status_code == 200 and whole.content == data  # checked whole as it streams
    with s.db.reading() as session:
        report = verify_service(session, s.store, s.key, VerifyOptions(item_ids=[clip.id]))
    assert [p.kind for p in report.problems] == ["block_list_altered"], report.problems
    assert clip.id in report.problems[0].where


def test_a_missing_block_list_is_named_and_its_ranges_checked_whole(served: Any) -> None:  # noqa: F811
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    clip, old = store_item(s, data=data), store_item(s, data=os.urandom(SIZE), block_list=False)
    with s.db.session() as session:
        assert session.get(EvidenceBlockList, old.id) is None
        entry = Ledger.stored_entry(session, old.id)
        assert entry is not None and "blocks" not in json.loads(entry.body.details)
        session.execute(delete(EvidenceBlockList).where(EvidenceBlockList.item_id == clip.id))
    reads = _count_store_reads(s)
    r = httpx.get(
        f"{url}/api/v1/evidence/{clip.id}/content",
        headers={**admin, "Range": "bytes=100-199"},
        params=READ,
        timeout=60,
    )
    assert r.status_code == 206 and r.content == data[100:200]
    assert reads[0] == SIZE  # no list to go by: the whole object checked first, as before lists
    with s.db.reading() as session:
        report = verify_service(session, s.store, s.key, VerifyOptions(item_ids=[clip.id, old.id]))
    assert [(p.kind, clip.id in p.where) for p in report.problems] == [("block_list_altered", True)]


def test_a_dock_upload_keeps_its_block_list_across_its_requests(live: LiveServer) -> None:
    """A clip sent in two PATCHes (a staged tail between, the running digests kept between requests)
    is recorded with the block list of its bytes, committed to by its ``stored`` entry; an upload
    whose running digests were lost has its object read once for both (``digests_of``)."""
    s = live.services
    fleet = enrol(live.url, live.admin())
    data = os.urandom(2 * PART + 4096 + 17)
    r = _upload(fleet, data, pieces=2)
    assert r.headers["evidence-status"] == "stored"
    digests = tuple(blake3(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))
    with s.db.session() as session:  # type: ignore[attr-defined]
        item = session.scalars(select(EvidenceItem).where(EvidenceItem.size == len(data))).one()
        row = session.get(EvidenceBlockList, item.id)
        assert row is not None and row.digests == b"".join(digests) and row.count == len(digests)
        entry = Ledger.stored_entry(session, item.id)
        assert entry is not None and json.loads(entry.body.details)["blocks"] == commitment(digests)
    again = s.store.digests_of(item.object_key, item.version_id, block_list=True)  # type: ignore[attr-defined]
    assert again.block_digests() == digests


def _server_timing(answer: httpx.Response) -> dict[str, float]:
    spans = {}
    for part in answer.headers.get("server-timing", "").split(","):
        name, _, ms = part.strip().partition(";dur=")
        if name:
            spans[name] = float(ms)
    return spans


def test_a_range_says_where_its_wait_for_the_first_byte_went(served: Any) -> None:  # noqa: F811
    s, url = served
    admin, data, clip, target = _admin_and_clip(s, url)
    # The first range: its look-up, its block list loaded and checked, its record, the store's first
    # block and its check, all within the wait for the answer (``ready``).
    r = httpx.get(target, headers={**admin, "Range": f"bytes={BLOCK}-{3 * BLOCK - 1}"}, params=READ)
    assert r.status_code == 206 and r.content == data[BLOCK : 3 * BLOCK]
    spans = _server_timing(r)
    assert {"list", "record", "store", "check", "ready"} <= set(spans), spans
    assert "held" not in spans
    assert all(ms >= 0 for ms in spans.values())
    assert spans["ready"] >= max(spans["store"], spans["record"], spans["list"])
    # The store's part, split: the request written, the answer's headers in, the first block in hand.
    assert {"store_send", "store_wait", "store_body"} <= set(spans), spans
    parts = spans["store_send"] + spans["store_wait"] + spans["store_body"]
    assert abs(parts - spans["store"]) <= 0.3, spans  # each rounded to 0.1 ms
    # The next, from where the player dropped the last: its first block was held as it was checked.
    r = httpx.get(target, headers={**admin, "Range": f"bytes={2 * BLOCK + 5}-{4 * BLOCK}"}, params=READ)
    assert r.status_code == 206 and r.content == data[2 * BLOCK + 5 : 4 * BLOCK + 1]
    spans = _server_timing(r)
    assert {"look", "record", "held", "ready"} <= set(spans), spans
    assert not {"store", "store_send", "store_wait", "store_body"} & set(spans), spans


def test_evidence_bytes_are_never_kept_in_a_browsers_cache(served: Any) -> None:  # noqa: F811
    s, url = served
    admin, data, clip, target = _admin_and_clip(s, url)
    # A range of a viewing (recorded with its look-up), the player's first range of every byte, and
    # a whole read: none of them may be stored by the browser, which would keep footage on a shared
    # workstation outside custody.
    for asked in (f"bytes={BLOCK}-{3 * BLOCK - 1}", f"bytes={2 * BLOCK}-{4 * BLOCK}", "bytes=0-", None):
        headers = {**admin, "Range": asked} if asked else admin
        r = httpx.get(target, headers=headers, params=READ)
        assert r.status_code in (200, 206), r.text
        assert r.headers.get("cache-control") == "no-store", (asked, r.headers)
