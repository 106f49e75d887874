"""What one dock upload costs the database and the store, over real HTTP and the real SeaweedFS, on
both databases.

Sixteen docks finishing at once share one event loop, a handful of worker threads and, on SQLite,
one write lock: every round trip a PATCH makes, each of them makes. A PATCH takes the part numbers
its body fills in the transaction that takes its lease (not one transaction a part), the dock's
token is looked up without the write lock, and the completion reads the object's lock from one HEAD
(not a HEAD, a retention request and a legal-hold request answered with an error).
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import UTC, datetime
from typing import Any

import pytest
from minio.datatypes import Object
from sqlalchemy import event

import ingest.dock_api
import ingest.uploads
from chain_of_custody.models import EvidenceItem
from ingest.models import Upload
from ingest.part_numbers import PART_NUMBER_BLOCK, parts_for
from ingest.uploads import UploadEngine
from storage.db import READ_ONLY
from storage.objects import _lock_date
from tests.clipkit import enrol
from tests.conftest import LiveServer
from tests.test_upload_completion import PART, _upload, store_requests


def test_parts_a_body_fills() -> None:
    """Whole parts from where the parts stand, the last short one only at the clip's end, never
    more than a block."""
    assert parts_for(0, 2 * PART + 10, 2 * PART + 10, PART) == 3
    assert parts_for(0, 2 * PART + 10, 3 * PART, PART) == 2  # the rest waits as a staged tail
    assert parts_for(PART, PART + 10, 3 * PART, PART) == 0
    assert parts_for(0, 100 * PART, 100 * PART, PART) == PART_NUMBER_BLOCK


def test_a_heads_lock_date_is_read_only_in_the_form_s3_gives_it() -> None:
    """S3's ISO 8601 date, with or without fractions; any other form is not guessed at (the
    retention is then asked for on its own)."""
    assert _lock_date("2026-12-07T22:41:13Z") == datetime(2026, 12, 7, 22, 41, 13, tzinfo=UTC)
    assert _lock_date("2026-12-07T22:41:13.000Z") == datetime(2026, 12, 7, 22, 41, 13, tzinfo=UTC)
    assert _lock_date("Mon, 07 Dec 2026 22:41:13 GMT") is None
    assert _lock_date(None) is None


def test_a_patch_takes_its_part_numbers_with_its_lease(live: LiveServer) -> None:
    """A clip of two whole parts and a short one sent in one PATCH: its three part numbers are handed
    out by one statement, in the transaction that takes the lease (before, one transaction a part,
    each on the way of the body), and the parts are numbered 1 to 3."""
    fleet = enrol(live.url, live.admin())
    engine = live.services.db.engine  # type: ignore[attr-defined]
    issued: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if sql.lstrip().upper().startswith("UPDATE") and "parts_issued" in sql:
            issued.append(sql)

    event.listen(engine, "before_cursor_execute", statement)
    try:
        r = _upload(fleet, os.urandom(2 * PART + 4096))
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    assert r.headers["evidence-status"] == "stored"
    assert len(issued) == 1, issued
    with live.services.db.session() as session:  # type: ignore[attr-defined]
        row = session.get(Upload, r.url.path.rsplit("/", 1)[1])
        assert row is not None
        assert row.parts_issued == 3
        assert [n for n, _ in json.loads(row.parts)] == [1, 2, 3]


def test_a_body_cut_into_pieces_never_reuses_a_part_number(live: LiveServer) -> None:
    """Three PATCHes of a clip of three parts (tails staged between): every part number is new and
    none is handed out that a body could not fill."""
    fleet = enrol(live.url, live.admin())
    r = _upload(fleet, os.urandom(2 * PART + 4096), pieces=3)
    assert r.headers["evidence-status"] == "stored"
    with live.services.db.session() as session:  # type: ignore[attr-defined]
        row = session.get(Upload, r.url.path.rsplit("/", 1)[1])
        assert row is not None
        numbers = [n for n, _ in json.loads(row.parts)]
        assert numbers == sorted(set(numbers)) and len(numbers) == 3
        assert row.parts_issued == 3


def test_a_docks_token_is_looked_up_without_the_write_lock(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request of a dock looks its token up in a read-only transaction (on SQLite a write
    transaction takes the database's one write lock, for a read)."""
    fleet = enrol(live.url, live.admin())
    found: list[bool] = []
    authenticate = ingest.dock_api.authenticate_dock

    def watched(session: Any, token: str, *rest: Any) -> Any:
        found.append(bool(session.connection().get_execution_options().get(READ_ONLY)))
        return authenticate(session, token, *rest)

    monkeypatch.setattr(ingest.dock_api, "authenticate_dock", watched)
    r = _upload(fleet, os.urandom(PART + 4096))
    assert r.headers["evidence-status"] == "stored"
    assert found == [True, True]  # the creation and the PATCH


def test_a_creation_checks_the_camera_and_the_docks_room_without_the_write_lock(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an upload reads the camera, a replay and the dock's open uploads in read-only
    transactions; only the count under the dock's row lock, with the new row, writes."""
    fleet = enrol(live.url, live.admin())
    seen: dict[str, list[bool]] = {"camera": [], "room": []}

    def read_only(session: Any) -> bool:
        return bool(session.connection().get_execution_options().get(READ_ONLY))

    camera_for_clip, room_for_one_more = ingest.uploads.camera_for_clip, ingest.uploads.room_for_one_more

    def camera(session: Any, *args: Any) -> Any:
        seen["camera"].append(read_only(session))
        return camera_for_clip(session, *args)

    def room(session: Any, *args: Any) -> None:
        seen["room"].append(read_only(session))
        room_for_one_more(session, *args)

    monkeypatch.setattr(ingest.uploads, "camera_for_clip", camera)
    monkeypatch.setattr(ingest.uploads, "room_for_one_more", room)
    r = _upload(fleet, os.urandom(PART + 4096))
    assert r.headers["evidence-status"] == "stored"
    assert seen == {"camera": [True], "room": [True, False]}


def test_the_patch_that_completes_a_clip_gives_its_lease_up_with_the_record(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clip in two PATCHes: the first gives its lease up on its own, the second in the transaction
    that records the item (no write transaction of its own after it), and the upload is left free."""
    fleet = enrol(live.url, live.admin())
    released: list[str] = []
    release = UploadEngine._release

    def counted(self: UploadEngine, upload_id: str, lease: str) -> None:
        released.append(upload_id)
        release(self, upload_id, lease)

    monkeypatch.setattr(UploadEngine, "_release", counted)
    r = _upload(fleet, os.urandom(PART + 4096), pieces=2)
    assert r.headers["evidence-status"] == "stored"
    upload_id = r.url.path.rsplit("/", 1)[1]
    assert released == [upload_id]  # the first PATCH's
    with live.services.db.session() as session:  # type: ignore[attr-defined]
        row = session.get(Upload, upload_id)
        assert row is not None and row.status == "complete"
        assert row.lease_id is None and row.lease_until is None


def test_the_completion_reads_the_objects_lock_in_one_request(live: LiveServer) -> None:
    """Completing a clip whose lock needs no lengthening asks the store about the object once, a
    HEAD, and the item records the lock storage holds (read back on its own)."""
    fleet = enrol(live.url, live.admin())
    s = live.services  # type: ignore[attr-defined]
    with store_requests(s.db.engine) as seen:
        r = _upload(fleet, os.urandom(PART + 4096))
    assert r.headers["evidence-status"] == "stored"
    with s.db.session() as session:
        item = session.get(EvidenceItem, r.headers["evidence-item-id"])
        assert item is not None
        session.expunge(item)
    asked = [(method, url.split(item.object_key, 1)[1]) for method, url, _ in seen if item.object_key in url]
    reads = [(method, query) for method, query in asked if method in ("HEAD", "GET")]
    assert reads == [("HEAD", f"?versionId={item.version_id}")], reads
    retention = s.store.client.get_object_retention(
        s.store.bucket, item.object_key, version_id=item.version_id
    )
    assert retention.mode == "COMPLIANCE"
    assert retention.retain_until_date == item.retain_until


def test_an_objects_lock_is_asked_for_when_the_head_does_not_say(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose HEAD carries no lock headers: the retention and the legal hold are read with
    requests of their own, and say the same."""
    fleet = enrol(live.url, live.admin())
    s = live.services  # type: ignore[attr-defined]
    r = _upload(fleet, os.urandom(PART + 4096))
    with s.db.session() as session:
        item = session.get(EvidenceItem, r.headers["evidence-item-id"])
        assert item is not None
        session.expunge(item)
    s.store.set_legal_hold(item.object_key, item.version_id, True)
    told = s.store.info(item.object_key, item.version_id)
    stat = s.store.client.stat_object

    def silent(*args: Any, **kw: Any) -> Object:
        found = stat(*args, **kw)
        headers = {k: v for k, v in (found.metadata or {}).items() if "object-lock" not in k.lower()}
        return Object(
            found.bucket_name,
            found.object_name,
            size=found.size,
            version_id=found.version_id,
            metadata=headers,
        )

    monkeypatch.setattr(s.store.client, "stat_object", silent)
    with store_requests(s.db.engine) as seen:
        asked = s.store.info(item.object_key, item.version_id)
    monkeypatch.undo()
    assert told.legal_hold and told.retention_mode == "COMPLIANCE"
    assert asked == told
    assert [method for method, _, _ in seen] == ["HEAD", "GET", "GET"]
    assert "retention" in seen[1][1] and "legal-hold" in seen[2][1]


def test_a_completion_takes_the_write_lock_twice(live: LiveServer) -> None:
    """A clip of one whole part and a short one in one PATCH: the lease and its part numbers, the
    first part's record, then the completion in two write transactions: the last part is recorded
    by the statement that fences the completion (not a record and a fence of its own), and the
    item. On SQLite each write transaction queues for the one write lock, with sixteen docks
    finishing at once."""
    fleet = enrol(live.url, live.admin())
    engine = live.services.db.engine  # type: ignore[attr-defined]
    writes: list[str] = []

    def begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            return
        here = [f.name for f in traceback.extract_stack() if f.filename.endswith("ingest/uploads.py")]
        if here and here[0] != "create":
            writes.append([name for name in here if name != "_get"][-1])  # the transaction's owner

    event.listen(engine, "begin", begin)
    try:
        r = _upload(fleet, os.urandom(PART + 4096))
    finally:
        event.remove(engine, "begin", begin)
    assert r.headers["evidence-status"] == "stored"
    assert writes == ["_acquire", "_record", "_record", "complete_upload"], writes
