"""One writer per dock upload, over real HTTP and the real SeaweedFS, on both databases.

A request whose lease ran out is refused and what it sent is discarded (never the bytes already
acknowledged to the newer request); a quarantined clip can be sent again as a new item; a dock never
learns or disturbs another dock's uploads; a PATCH that stops sending is ended and frees the upload;
a refused PATCH leaves the upload's offset settled at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from chain_of_custody.models import EvidenceItem
from ingest.models import Upload
from storage.embedded import EmbeddedSeaweed
from tests.clipkit import Fleet, clip_metadata, enrol, sha256
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, LiveServer, make_settings, start_server, wait_for

MiB = 1024 * 1024
PART = 5 * MiB


@pytest.fixture
def dock_live(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, seaweed: EmbeddedSeaweed
) -> Iterator[LiveServer]:
    """A live service whose upload lease and stall timeout the test chooses (``@pytest.mark.upload``)."""
    from accounts.service import create_user
    from ingest.services import build_services

    marker = request.node.get_closest_marker("upload")
    overrides = dict(marker.kwargs) if marker else {}
    s = build_services(make_settings(tmp_path, database_url, seaweed, **overrides))
    with s.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=s.key)
    server, thread, url = start_server(s)
    token = httpx.post(
        f"{url}/api/v1/auth/token",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=SIGN_IN_TIMEOUT,
    )
    yield LiveServer(url, s, token.json()["access_token"])
    server.should_exit = True
    thread.join(15)
    s.db.dispose()


def _create(fleet: Fleet, data: bytes, token: str | None = None, **meta: object) -> httpx.Response:
    headers = fleet.dock_headers()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(
        f"{fleet.url}/api/v1/dock/uploads",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), **meta),  # type: ignore[arg-type]
        },
    )


def _patch(fleet: Fleet, location: str, offset: int, body: bytes, token: str | None = None) -> httpx.Response:
    headers = fleet.dock_headers()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.patch(
        fleet.url + location,
        content=body,
        timeout=60,
        headers={**headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
    )


def _head(fleet: Fleet, location: str, token: str | None = None) -> httpx.Response:
    headers = fleet.dock_headers()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.head(fleet.url + location, headers=headers)


class SlowPatch:
    """A PATCH written by hand on a socket, so a test decides when (and whether) its body goes on."""

    def __init__(self, fleet: Fleet, location: str, offset: int, length: int) -> None:
        url = urlparse(fleet.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=30)
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {fleet.dock_token}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        self.sock.sendall(head.encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def status(self, timeout: float) -> int:
        """The status code of the answer, waiting at most ``timeout`` seconds for it."""
        self.sock.settimeout(timeout)
        got = b""
        while b"\r\n" not in got:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed without an answer: {got!r}")
            got += chunk
        return int(got.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def _row(live: LiveServer, location: str) -> Upload:
    with live.services.db.session() as session:  # type: ignore[attr-defined]
        row = session.get(Upload, location.rsplit("/", 1)[1])
        assert row is not None
        session.expunge(row)
        return row


def _content(live: LiveServer, item_id: str) -> bytes:
    r = httpx.get(
        f"{live.url}/api/v1/evidence/{item_id}/content",
        headers=live.admin(),
        params={"reason": "checking the upload"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.content


@pytest.mark.upload(upload_lease_seconds=1, upload_stall_seconds=60)
def test_a_writer_whose_lease_ran_out_is_refused_and_the_newer_bytes_are_kept(dock_live) -> None:  # type: ignore[no-untyped-def]
    fleet = enrol(dock_live.url, dock_live.admin())
    good = os.urandom(2 * PART + 1000)  # what the camera recorded, and the newer writer sends
    stale = os.urandom(len(good))  # what the writer that lost its lease goes on sending
    location = _create(fleet, good).headers["location"]

    old = SlowPatch(fleet, location, 0, len(stale))
    old.send(stale[:MiB])
    now = lambda: datetime.now(UTC)  # noqa: E731
    wait_for(
        lambda: (r := _row(dock_live, location)).lease_id is not None and r.lease_until <= now(),  # type: ignore[operator]
        20,
        what="the first writer's lease to run out",
    )
    newer = _patch(fleet, location, 0, good[: PART + 500])
    assert newer.status_code == 204, newer.text
    assert newer.headers["upload-offset"] == str(PART + 500)

    # The old writer wakes and sends the rest of its body, crossing both part boundaries.
    try:
        old.send(stale[MiB:])
    except OSError:
        pass  # the service may already have ended that request
    assert old.status(30) == 409
    old.close()

    head = _head(fleet, location)
    assert head.headers["upload-offset"] == str(PART + 500) and "evidence-item-id" not in head.headers
    done = _patch(fleet, location, PART + 500, good[PART + 500 :])
    assert done.status_code == 204, done.text
    assert done.headers["evidence-status"] == "stored"
    assert _content(dock_live, done.headers["evidence-item-id"]) == good


def test_a_quarantined_clip_can_be_sent_again_as_a_new_item(dock_live) -> None:  # type: ignore[no-untyped-def]
    fleet = enrol(dock_live.url, dock_live.admin())
    good = os.urandom(PART + 4096)
    damaged = good[:100] + bytes([good[100] ^ 1]) + good[101:]  # one byte changed on the way
    first = _create(fleet, good)
    bad = _patch(fleet, first.headers["location"], 0, damaged)
    assert bad.headers["evidence-status"] == "quarantined"
    quarantined = bad.headers["evidence-item-id"]

    again = _create(fleet, good)  # the same clip, the same signed metadata
    assert again.status_code == 201
    assert again.headers["location"] != first.headers["location"]
    assert "evidence-item-id" not in again.headers and again.headers["upload-offset"] == "0"
    sent = _patch(fleet, again.headers["location"], 0, good)
    assert sent.status_code == 204 and sent.headers["evidence-status"] == "stored"
    item = sent.headers["evidence-item-id"]
    assert item != quarantined and _content(dock_live, item) == good

    # Both are on the custody record, the new one naming the quarantined one it was sent again for.
    trail = httpx.get(f"{dock_live.url}/api/v1/evidence/{item}/custody", headers=dock_live.admin()).json()
    received = next(e for e in trail if e["action"] == "received")
    assert received["details"]["resent_for"] == [quarantined]
    old_trail = httpx.get(
        f"{dock_live.url}/api/v1/evidence/{quarantined}/custody", headers=dock_live.admin()
    ).json()
    assert old_trail[-1]["action"] == "quarantined"
    with dock_live.services.db.session() as session:
        assert session.get(EvidenceItem, quarantined).status == "quarantined"  # type: ignore[union-attr]

    # A stored clip sent again is still absorbed: the same upload and item, nothing stored twice.
    replay = _create(fleet, good)
    assert replay.headers["location"] == again.headers["location"]
    assert replay.headers["evidence-item-id"] == item


def test_a_dock_never_learns_or_disturbs_another_docks_upload(dock_live) -> None:  # type: ignore[no-untyped-def]
    fleet = enrol(dock_live.url, dock_live.admin())
    other = httpx.post(
        f"{dock_live.url}/api/v1/devices/docks", json={"id": "DOCK-B"}, headers=dock_live.admin()
    ).json()["token"]
    clip = os.urandom(PART + 10)
    a = _create(fleet, clip)
    finished = _patch(fleet, a.headers["location"], 0, clip)
    assert finished.headers["evidence-status"] == "stored"

    # Dock B with dock A's clip and metadata: a fresh upload of its own, nothing of A's.
    b = _create(fleet, clip, token=other)
    assert b.status_code == 201
    assert b.headers["location"] != a.headers["location"]
    assert "evidence-item-id" not in b.headers and "evidence-status" not in b.headers
    for method in ("HEAD", "DELETE"):
        r = httpx.request(
            method,
            fleet.url + a.headers["location"],
            headers={**fleet.dock_headers(), "Authorization": f"Bearer {other}"},
        )
        assert r.status_code == 404 and "evidence-item-id" not in r.headers, method

    # While dock A writes, dock B's PATCH of A's upload is a plain 404: no busy answer, no lease taken.
    second = os.urandom(PART + 20)
    location = _create(fleet, second, filename="second.mp4").headers["location"]
    writing = SlowPatch(fleet, location, 0, len(second))
    writing.send(second[:MiB])
    wait_for(lambda: _row(dock_live, location).lease_id is not None, 20, what="dock A to hold its upload")
    holder = _row(dock_live, location).lease_id
    assert _patch(fleet, location, 0, b"x", token=other).status_code == 404
    assert _row(dock_live, location).lease_id == holder
    writing.send(second[MiB:])
    assert writing.status(30) == 204
    writing.close()
    assert _head(fleet, location).headers["evidence-status"] == "stored"
    # And with nobody writing, B's PATCH still takes nothing from A.
    assert _patch(fleet, location, len(second), b"", token=other).status_code == 404


@pytest.mark.upload(upload_lease_seconds=60, upload_stall_seconds=1)
def test_a_patch_that_stops_sending_is_ended_and_frees_the_upload(dock_live) -> None:  # type: ignore[no-untyped-def]
    fleet = enrol(dock_live.url, dock_live.admin())
    clip = os.urandom(PART + 300)
    location = _create(fleet, clip).headers["location"]
    stalled = SlowPatch(fleet, location, 0, len(clip))
    stalled.send(clip[: MiB + 7])  # and then nothing more
    assert stalled.status(15) == 408
    stalled.close()
    row = _row(dock_live, location)
    assert row.lease_id is None and row.offset == MiB + 7  # what arrived is kept, the upload is free
    done = _patch(fleet, location, MiB + 7, clip[MiB + 7 :])
    assert done.status_code == 204 and done.headers["evidence-status"] == "stored"
    assert _content(dock_live, done.headers["evidence-item-id"]) == clip


@pytest.mark.upload(upload_part_bytes=16 * MiB)  # big parts: the last is still on its way at the refusal
def test_a_patch_refused_for_its_length_leaves_the_offset_settled(dock_live) -> None:  # type: ignore[no-untyped-def]
    fleet = enrol(dock_live.url, dock_live.admin())
    clip = os.urandom(2 * 16 * MiB + 100)
    location = _create(fleet, clip).headers["location"]
    over = SlowPatch(fleet, location, 0, len(clip) + 1)
    over.send(clip[: 2 * 16 * MiB])  # two full parts: the second sets off for the store
    wait_for(lambda: _row(dock_live, location).committed >= 16 * MiB, 30, what="the first part recorded")
    over.send(clip[2 * 16 * MiB :] + b"!")  # and one byte too many
    assert over.status(30) == 400
    over.close()
    offset = int(_head(fleet, location).headers["upload-offset"])
    row = _row(dock_live, location)
    assert row.lease_id is None and row.lease_until is None and row.offset == offset
    # The retry at that offset goes straight through: no stale offset, no busy answer.
    done = _patch(fleet, location, offset, clip[offset:])
    assert done.status_code == 204, done.text
    assert _content(dock_live, done.headers["evidence-item-id"]) == clip
