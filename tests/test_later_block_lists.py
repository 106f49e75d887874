"""Block lists for items stored before lists were kept, on both databases and the real store: the
first whole check that matches an item's record keeps its list in the database, committed to by a
signed ``blocks_listed`` entry, so a later process's first range reads only its blocks (no second
whole check); ``evidence keep-block-lists`` does the same ahead of any viewing, and quarantines an
object that no longer matches; a changed byte in a block is still never served; a list kept so and
then edited is refused and named by ``evidence verify``, one removed is not kept again."""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

import httpx
from blake3 import blake3
from sqlalchemy import delete, select, update

from chain_of_custody.block_lists import LISTED, commitment
from chain_of_custody.later_lists import keep_lists
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, EvidenceBlockList, EvidenceItem
from chain_of_custody.read_checks import VERIFIED
from chain_of_custody.verify import VerifyOptions, verify_service
from storage.digests import BLOCK
from tests.conftest import wait_for
from tests.test_altered_evidence import _alter_on_disk, _cut_short, own_store  # noqa: F401
from tests.test_block_lists import READ, SIZE, _status, altered_blocks_are_never_served, nothing_kept  # noqa: F401
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_read_cost import _count_store_reads, served  # noqa: F401


def _digests(data: bytes) -> tuple[bytes, ...]:
    return tuple(blake3(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))


def _listed_entries(s: Any, item_id: str) -> list[dict[str, Any]]:
    with s.db.session() as session:
        return [
            json.loads(e.details)
            for e in session.scalars(
                select(CustodyEntry).where(CustodyEntry.item_id == item_id, CustodyEntry.action == LISTED)
            )
        ]


def _verify(s: Any, *item_ids: str) -> list[tuple[str, str]]:
    with s.db.reading() as session:
        report = verify_service(session, s.store, s.key, VerifyOptions(item_ids=list(item_ids)))
    return [(p.kind, p.where) for p in report.problems]


def _older_clip(s: Any, url: str) -> tuple[dict[str, str], bytes, EvidenceItem, str, list[int]]:
    """An admin's headers, and a clip stored as before lists were kept: its bytes, its row, its
    content's address, and the store's reads counted from now on."""
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    clip = store_item(s, data=data, block_list=False)  # stored before lists were kept
    return admin, data, clip, f"{url}/api/v1/evidence/{clip.id}/content", _count_store_reads(s)


def test_a_first_whole_check_keeps_the_list_for_every_later_process(served: Any) -> None:  # noqa: F811
    s, url = served
    admin, data, clip, target, reads = _older_clip(s, url)
    r = httpx.get(target, headers={**admin, "Range": f"bytes={BLOCK}-{BLOCK + 99}"}, params=READ, timeout=60)
    assert r.status_code == 206 and r.content == data[BLOCK : BLOCK + 100]
    assert reads[0] == SIZE  # no list yet: the whole object checked first, as before
    wait_for(lambda: _listed_entries(s, clip.id), what="the block list kept after the whole check")
    [details] = _listed_entries(s, clip.id)
    assert details["blocks"] == commitment(_digests(data))
    assert (details["sha256"], details["size"]) == (clip.sha256, SIZE)
    with s.db.session() as session:
        row = session.get(EvidenceBlockList, clip.id)
        assert row is not None and row.digests == b"".join(_digests(data))
    # Another process, a restart or a quarter of an hour later: nothing of the check held in memory.
    VERIFIED.clear()
    reads.clear()
    lo = 5 * BLOCK + 7
    r = httpx.get(target, headers={**admin, "Range": f"bytes={lo}-{lo + 9}"}, params=READ, timeout=60)
    assert r.status_code == 206 and r.content == data[lo : lo + 10]
    assert reads == [BLOCK], reads  # its one block, not the object again
    # One list and one entry for it, however often the item is read; verify finds nothing amiss.
    assert len(_listed_entries(s, clip.id)) == 1
    assert _verify(s, clip.id) == []


def test_keep_block_lists_gives_older_items_their_lists_ahead_of_any_viewing(served: Any) -> None:  # noqa: F811
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    old, new = store_item(s, data=data, block_list=False), store_item(s, data=os.urandom(SIZE))
    listed = keep_lists(s.db, s.ledger, s.store, yes=False)
    assert [(line.item_id, line.refused) for line in listed] == [(old.id, False)]  # not the one with its list
    assert _listed_entries(s, old.id) == []  # listing only: nothing kept
    done = keep_lists(s.db, s.ledger, s.store, yes=True)
    assert [(line.item_id, line.refused) for line in done] == [(old.id, False)], done
    assert "block list kept (9 blocks)" in done[0].line()
    assert [d["blocks"] for d in _listed_entries(s, old.id)] == [commitment(_digests(data))]
    assert keep_lists(s.db, s.ledger, s.store, yes=True) == []  # once
    # A player's first seek into it reads only the blocks its range lies in.
    reads = _count_store_reads(s)
    lo, hi = 3 * BLOCK + 10, 4 * BLOCK + 9
    r = httpx.get(
        f"{url}/api/v1/evidence/{old.id}/content",
        headers={**admin, "Range": f"bytes={lo}-{hi}"},
        params=READ,
        timeout=60,
    )
    assert r.status_code == 206 and r.content == data[lo : hi + 1]
    assert sum(reads) == 2 * BLOCK, reads
    assert _verify(s, old.id, new.id) == []


def test_a_changed_byte_in_a_block_of_a_list_kept_later_is_never_served(own_store: Any) -> None:  # noqa: F811
    s, seaweed, url = own_store
    user(s, "boss", "admin")
    admin = bearer(s, "boss")

    def clip() -> tuple[EvidenceItem, bytes, str]:
        data = b"LATER-LISTED-" + uuid.uuid4().hex.encode() + os.urandom(SIZE)
        item = store_item(s, data=data, block_list=False)
        return item, data, f"{url}/api/v1/evidence/{item.id}/content"

    def listed_later() -> tuple[EvidenceItem, bytes, str]:
        item, data, target = clip()
        assert [line.refused for line in keep_lists(s.db, s.ledger, s.store, yes=True)] == [False]
        VERIFIED.clear()  # its list read from the database, as by another process
        return item, data, target

    altered_blocks_are_never_served(s, seaweed, admin, listed_later)
    # Changed before any list was kept: the command finds it, quarantines it and keeps no list.
    item, data, target = clip()
    _alter_on_disk(seaweed, data, 6 * BLOCK + 3)
    [line] = keep_lists(s.db, s.ledger, s.store, yes=True)
    assert line.refused and line.item_id == item.id and "quarantined" in line.line()
    assert _status(s, item.id) == "quarantined" and _listed_entries(s, item.id) == []
    with s.db.session() as session:
        assert session.get(EvidenceBlockList, item.id) is None
        last = Ledger.item_entries(session, item.id)[-1].to_json()
    assert last["action"] == "quarantined" and "keeping its block list" in str(last["details"])


def test_a_list_kept_later_then_edited_is_refused_and_one_removed_is_not_kept_again(
    served: Any,  # noqa: F811
) -> None:
    s, url = served
    user(s, "boss", "admin")
    admin = bearer(s, "boss")
    data = os.urandom(SIZE)
    edited, removed = (
        store_item(s, data=data if n == 0 else os.urandom(SIZE), block_list=False) for n in (0, 1)
    )
    assert len(keep_lists(s.db, s.ledger, s.store, yes=True)) == 2
    with s.db.session() as session:
        row = session.get(EvidenceBlockList, edited.id)
        assert row is not None
        altered = bytearray(row.digests)
        altered[3 * 32] ^= 0x01
        session.execute(
            update(EvidenceBlockList)
            .where(EvidenceBlockList.item_id == edited.id)
            .values(digests=bytes(altered))
        )
        session.execute(delete(EvidenceBlockList).where(EvidenceBlockList.item_id == removed.id))
    r = httpx.get(
        f"{url}/api/v1/evidence/{edited.id}/content",
        headers={**admin, "Range": "bytes=100-199"},
        params=READ,
        timeout=60,
    )
    assert r.status_code == 409 and r.json()["reason"] == "record_altered", r.text
    assert "block list" in r.json()["error"]
    assert _status(s, edited.id) == "stored"  # the list is not the evidence: its bytes are not in doubt
    # The removed one: its ranges are checked whole, and the check keeps no second list.
    reads = _count_store_reads(s)
    r = httpx.get(
        f"{url}/api/v1/evidence/{removed.id}/content",
        headers={**admin, "Range": "bytes=100-199"},
        params=READ,
        timeout=60,
    )
    assert r.status_code == 206 and reads[0] == SIZE
    wait_for(
        lambda: not any(t.name == "evidence-whole-check" for t in threading.enumerate()),
        what="the whole check, and its try at keeping a list, done",
    )
    assert keep_lists(s.db, s.ledger, s.store, yes=False) == []
    assert len(_listed_entries(s, removed.id)) == 1
    with s.db.session() as session:
        assert session.get(EvidenceBlockList, removed.id) is None
    found = _verify(s, edited.id, removed.id)
    assert sorted(kind for kind, _ in found) == ["block_list_altered", "block_list_altered"], found
    assert {edited.id in where for _, where in found} == {True, False}


def test_the_command_lists_then_keeps_and_says_so(services: Any, tmp_path: Any) -> None:
    """``evidence keep-block-lists`` (the installed command, on the service's own settings): without
    ``--yes`` it lists and keeps nothing; with it, each list kept, a line each; exit 0."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import settings_env

    s = services
    item = store_item(s, data=os.urandom(3 * BLOCK), block_list=False)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "evidence"), "keep-block-lists", *args],
            env=settings_env(s.settings),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )

    listed = run()
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"{item.id} ({3 * BLOCK} bytes): would be read whole" in listed.stdout
    assert _listed_entries(s, item.id) == []
    kept = run("--yes")
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert f"{item.id} ({3 * BLOCK} bytes): block list kept (3 blocks)" in kept.stdout
    assert len(_listed_entries(s, item.id)) == 1


def test_a_whole_download_keeps_the_list_it_took_as_it_streamed(own_store: Any) -> None:  # noqa: F811
    """A download of an older item (no ``Range``) takes its block digests as it streams and, once
    the whole has matched its record, keeps them as a ranged read's whole check would: a later
    process's first seek reads only its block. One whose object was altered is cut short and
    quarantined, and keeps no list."""
    s, seaweed, url = own_store
    admin, data, clip, target, reads = _older_clip(s, url)
    r = httpx.get(target, headers=admin, params=READ, timeout=60)
    assert r.status_code == 200 and r.content == data
    assert reads == [SIZE], reads  # the download's own read: no second one for the list
    wait_for(lambda: _listed_entries(s, clip.id), what="the block list kept after the download")
    [details] = _listed_entries(s, clip.id)
    assert details["blocks"] == commitment(_digests(data)) and details["checked_by"] == "a whole read"
    VERIFIED.clear()  # another process
    reads.clear()
    lo = 7 * BLOCK + 1
    r = httpx.get(target, headers={**admin, "Range": f"bytes={lo}-{lo + 9}"}, params=READ, timeout=60)
    assert r.status_code == 206 and r.content == data[lo : lo + 10]
    assert reads == [BLOCK], reads
    # A second download keeps no second list.
    assert httpx.get(target, headers=admin, params=READ, timeout=60).content == data
    assert len(_listed_entries(s, clip.id)) == 1
    assert _verify(s, clip.id) == []

    altered = b"ALTERED-" + uuid.uuid4().hex.encode() + os.urandom(SIZE)
    item = store_item(s, data=altered, block_list=False)
    _alter_on_disk(seaweed, altered, 4 * BLOCK + 5)
    with httpx.stream("GET", f"{url}/api/v1/evidence/{item.id}/content", headers=admin, params=READ) as r:
        assert r.status_code == 200
        got = b""
        try:
            for chunk in r.iter_bytes():
                got += chunk
        except httpx.HTTPError:
            pass  # cut short of its Content-Length
    assert len(got) < len(altered)
    wait_for(lambda: _status(s, item.id) == "quarantined", what="the altered item quarantined")
    assert _listed_entries(s, item.id) == []
    with s.db.session() as session:
        assert session.get(EvidenceBlockList, item.id) is None
