"""Completing (and expiring) a dock upload, over real HTTP and the real SeaweedFS, on both databases.

The store's round trips of a completion (reading and lengthening the object's lock) happen with no
write transaction open: on SQLite one write transaction holds the database's only write lock, and
sixteen docks finishing at once queued behind each other's round trips. The item is recorded in a
short transaction of its own, which records one item however many requests complete the upload, and
checks the camera key the clip was checked with is still the one enrolled. Expiring abandoned
uploads aborts them in the store with no write transaction open either.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import urllib3
from sqlalchemy import event, func, select

from chain_of_custody.models import CustodyEntry, EvidenceItem
from devices.models import Device
from ingest.models import Upload
from ingest.uploads import complete_upload
from storage.db import READ_ONLY
from tests.clipkit import Fleet, clip_metadata, enrol, sha256
from tests.conftest import LiveServer, backends_waiting_on_a_lock, wait_for

MiB = 1024 * 1024
PART = 5 * MiB


def _upload(fleet: Fleet, data: bytes, *, pieces: int = 1, **meta: object) -> httpx.Response:
    """Create an upload and send ``data`` in ``pieces`` PATCH requests; the last answer."""
    headers = fleet.dock_headers()
    r = httpx.post(
        f"{fleet.url}/api/v1/dock/uploads",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), **meta),  # type: ignore[arg-type]
        },
    )
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    step = -(-len(data) // pieces)
    for offset in range(0, len(data), step):
        r = httpx.patch(
            fleet.url + location,
            content=data[offset : offset + step],
            timeout=60,
            headers={
                **headers,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert r.status_code == 204, r.text
    return r


class WriteTransactions:
    """Which threads have a write transaction open on the service's database (a read-only one,
    ``Database.reading``, takes no write lock and is not counted)."""

    def __init__(self, engine: Any) -> None:
        self.open: dict[int, int] = {}
        self.engine = engine
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _begin(self, conn: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY):
            me = threading.get_ident()
            self.open[me] = self.open.get(me, 0) + 1

    def _end(self, conn: Any) -> None:
        me = threading.get_ident()
        if self.open.get(me):
            self.open[me] -= 1

    def held(self) -> bool:
        return self.open.get(threading.get_ident(), 0) > 0

    def remove(self) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "commit", self._end)
        event.remove(self.engine, "rollback", self._end)


@contextmanager
def store_requests(engine: Any) -> Iterator[list[tuple[str, str, bool]]]:
    """Every request to the store meanwhile: method, URL, and whether its thread had a write
    transaction open on ``engine``."""
    writes = WriteTransactions(engine)
    seen: list[tuple[str, str, bool]] = []
    urlopen = urllib3.PoolManager.urlopen

    def watched(self: urllib3.PoolManager, method: str, url: str, *args: Any, **kw: Any) -> Any:
        seen.append((method, url, writes.held()))
        return urlopen(self, method, url, *args, **kw)

    urllib3.PoolManager.urlopen = watched  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        urllib3.PoolManager.urlopen = urlopen  # type: ignore[method-assign]
        writes.remove()


def _inside(seen: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    return [(method, url.split("?")[0].rsplit("/", 1)[-1]) for method, url, held in seen if held]


def test_no_store_request_is_made_inside_a_write_transaction_of_a_dock_upload(live: LiveServer) -> None:
    """Every request to the store while a clip is uploaded in two PATCHes (a staged tail between) and
    completed comes from a thread with no write transaction open; the completion's own requests
    (the object's lock read) are among them."""
    fleet = enrol(live.url, live.admin())
    with store_requests(live.services.db.engine) as seen:  # type: ignore[attr-defined]
        r = _upload(fleet, os.urandom(2 * PART + 4096), pieces=2)
    assert r.headers["evidence-status"] == "stored"
    assert any(method == "HEAD" for method, _, _ in seen), "the completion read the object's lock"
    assert _inside(seen) == [], "store requests made inside a write transaction"


def test_expiring_uploads_aborts_them_with_no_write_transaction_open(live: LiveServer) -> None:
    """Two abandoned uploads (one with a staged tail) past their expiry: the pass aborts both in the
    store and marks both expired, and no store request comes from inside a write transaction."""
    fleet = enrol(live.url, live.admin())
    s = live.services  # type: ignore[attr-defined]
    headers = fleet.dock_headers()
    ids = []
    for n in range(2):
        data = os.urandom(PART + 4096)
        r = httpx.post(
            f"{fleet.url}/api/v1/dock/uploads",
            headers={
                **headers,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename=f"c{n}.mp4"),
            },
        )
        assert r.status_code == 201, r.text
        ids.append(r.headers["location"].rsplit("/", 1)[1])
        if n == 0:
            r = httpx.patch(
                fleet.url + r.headers["location"],
                content=data[:4096],
                headers={**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            )
            assert r.status_code == 204 and r.headers["upload-offset"] == "4096"
    with s.db.session() as session:
        for upload_id in ids:
            row = session.get(Upload, upload_id)
            assert row is not None
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)

    with store_requests(s.db.engine) as seen:
        assert s.uploads.expire() == 2
    assert _inside(seen) == [], "store requests made inside a write transaction"
    assert sum(method == "DELETE" for method, _, _ in seen) == 3  # two aborts, one staged tail
    with s.db.session() as session:
        assert [session.get(Upload, i).status for i in ids] == ["expired", "expired"]  # type: ignore[union-attr]
    assert s.uploads.expire() == 0


def test_completing_an_upload_again_records_no_second_item(live: LiveServer) -> None:
    """A second completion of an upload already recorded (a request that got past the lease while the
    first was completing, say; the store completes the same object again) answers with the item
    recorded and adds neither an item nor a custody entry."""
    fleet = enrol(live.url, live.admin())
    r = _upload(fleet, os.urandom(PART + 4096))
    item_id = r.headers["evidence-item-id"]
    s = live.services  # type: ignore[attr-defined]
    with s.db.session() as session:
        row = session.get(Upload, r.url.path.rsplit("/", 1)[1])
        assert row is not None
        session.expunge(row)
        entries = session.scalar(select(func.count()).select_from(CustodyEntry))

    state = complete_upload(SimpleNamespace(s=s), row, json.loads(row.parts), None)  # type: ignore[arg-type]

    assert state.evidence_item_id == item_id and state.evidence_status == "stored"
    with s.db.session() as session:
        items = session.scalars(select(EvidenceItem.id).where(EvidenceItem.object_key == row.object_key))
        assert list(items) == [item_id]
        assert session.scalar(select(func.count()).select_from(CustodyEntry)) == entries


def test_a_camera_unenrolled_while_its_clip_completes_is_recorded_as_found(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The camera loses its key after the completion read it and while the object's lock is settled:
    the item is recorded with the checks the key it then finds gives (quarantined, the capture time
    not vouched for), and storage holds the lock the item records, from receipt."""
    fleet = enrol(live.url, live.admin())
    s = live.services  # type: ignore[attr-defined]
    info = s.store.info
    unenrolled: list[bool] = []

    def unenrol_once(key: str, version_id: str | None = None) -> Any:
        if not unenrolled:
            with s.db.session() as session:
                camera = session.get(Device, fleet.camera_serial)
                assert camera is not None
                camera.public_key = None
            unenrolled.append(True)
        return info(key, version_id)

    monkeypatch.setattr(s.store, "info", unenrol_once)
    now = datetime.now(UTC).replace(microsecond=0)
    recorded = {
        "recorded_start": (now - timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
        "recorded_stop": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    r = _upload(fleet, os.urandom(PART + 4096), **recorded)
    monkeypatch.undo()

    assert unenrolled and r.headers["evidence-status"] == "quarantined"
    with s.db.session() as session:
        item = session.get(EvidenceItem, r.headers["evidence-item-id"])
        assert item is not None and item.retain_until is not None
        assert item.quarantine_reason == "camera no longer enrolled: signature cannot be checked"
        upload = session.scalar(select(Upload).where(Upload.evidence_item_id == item.id))
        assert upload is not None
        stored = session.scalar(
            select(CustodyEntry).where(CustodyEntry.item_id == item.id, CustodyEntry.action == "stored")
        )
        captured = session.scalar(
            select(CustodyEntry).where(CustodyEntry.item_id == item.id, CustodyEntry.action == "captured")
        )
        assert stored is not None and captured is not None
    assert json.loads(stored.details)["retention_basis"]["from"] == "receipt"
    assert json.loads(captured.details)["camera_public_key"] is None
    # The lock from receipt, not from the (earlier) capture time the multipart upload began with.
    assert item.retain_until >= upload.created_at + timedelta(days=1)
    held = s.store.info(item.object_key, item.version_id).retain_until
    assert held == item.retain_until


def test_a_clip_its_dock_sent_twice_is_recorded_once(live: LiveServer) -> None:
    """A dock creates the upload of a clip again before the first one answered (a client that timed
    out and started over): both uploads are sent whole. The second completion names the item the
    first recorded and records neither an item nor a custody entry."""
    fleet = enrol(live.url, live.admin())
    s = live.services  # type: ignore[attr-defined]
    data = os.urandom(PART + 4096)
    headers = fleet.dock_headers()
    meta = clip_metadata(fleet, sha256(data), len(data))
    locations = []
    for _ in range(2):
        r = httpx.post(
            f"{fleet.url}/api/v1/dock/uploads",
            headers={**headers, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
        )
        assert r.status_code == 201, r.text
        locations.append(r.headers["location"])
    assert locations[0] != locations[1]

    def send(location: str) -> httpx.Response:
        r = httpx.patch(
            fleet.url + location,
            content=data,
            timeout=60,
            headers={**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert r.status_code == 204, r.text
        return r

    first = send(locations[0])
    item_id = first.headers["evidence-item-id"]
    with s.db.session() as session:
        entries = session.scalar(select(func.count()).select_from(CustodyEntry))
    second = send(locations[1])

    assert second.headers["evidence-item-id"] == item_id
    assert second.headers["evidence-status"] == "stored"
    head = httpx.head(fleet.url + locations[1], headers={**headers})
    assert head.headers["upload-offset"] == str(len(data)) and head.headers["evidence-item-id"] == item_id
    with s.db.session() as session:
        items = list(session.scalars(select(EvidenceItem.id).where(EvidenceItem.sha256 == sha256(data))))
        assert items == [item_id]
        assert session.scalar(select(func.count()).select_from(CustodyEntry)) == entries


def test_two_completions_of_one_upload_at_once_record_one_item(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second completion of the upload (a request that got past the lease) enters its recording
    transaction while the first is inside its own, before it recorded anything. On PostgreSQL the
    second must wait for the first's commit and then find the upload recorded (it is let go once it
    is seen waiting on a lock, or once it has got past where it would have had to wait); on SQLite
    the second's transaction cannot begin until the first's ends. One item, one set of entries."""
    from ingest import uploads

    fleet = enrol(live.url, live.admin())
    s = live.services  # type: ignore[attr-defined]
    real_complete, real_key = uploads.complete_upload, uploads.camera_key
    first_args: list[Any] = []
    calls: dict[int, int] = {}
    second_past_the_check = threading.Event()
    second: list[Any] = []
    errors: list[BaseException] = []

    def complete(*args: Any) -> Any:
        first_args.append(args)
        return real_complete(*args)

    def run_second() -> None:
        try:
            engine, upload, parts, _ = first_args[0]
            second.append(real_complete(engine, upload, parts, None))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    other = threading.Thread(target=run_second, name="second-completion")

    def key(session: Any, serial: str, *sealed_by: Any) -> Any:
        me = threading.get_ident()
        calls[me] = calls.get(me, 0) + 1
        if calls[me] == 2 and me == other.ident:  # the second one's recording transaction got this far
            second_past_the_check.set()
        elif calls[me] == 2 and not other.is_alive() and not second:  # the first one's, before its record
            other.start()
            if s.db.is_postgres:
                wait_for(
                    lambda: second_past_the_check.is_set() or backends_waiting_on_a_lock(s.db.engine),
                    30,
                    what="the second completion to wait for the first or get past it",
                )
        return real_key(session, serial, *sealed_by)

    monkeypatch.setattr(uploads, "complete_upload", complete)
    monkeypatch.setattr(uploads, "camera_key", key)
    data = os.urandom(PART + 4096)
    r = _upload(fleet, data)
    monkeypatch.undo()
    other.join(60)
    assert not other.is_alive() and not errors, errors

    item_id = r.headers["evidence-item-id"]
    assert second and second[0].evidence_item_id == item_id
    with s.db.session() as session:
        items = list(session.scalars(select(EvidenceItem.id).where(EvidenceItem.sha256 == sha256(data))))
        stored = session.scalar(
            select(func.count()).select_from(CustodyEntry).where(CustodyEntry.action == "stored")
        )
    assert items == [item_id] and stored == 1
