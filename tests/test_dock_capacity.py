"""Capacity answers: busy gives 503 + Retry-After, a full store gives 507, and nothing accepted is lost."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx

from tests.clipkit import clip_metadata, enrol, sha256
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, make_settings, start_server, wait_for


def _live(tmp_path: Path, seaweed, **overrides):  # type: ignore[no-untyped-def]
    from accounts.service import create_user
    from ingest.services import build_services

    s = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", seaweed, **overrides))
    with s.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=s.key)
    server, thread, url = start_server(s)
    token = httpx.post(
        f"{url}/api/v1/auth/token",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=SIGN_IN_TIMEOUT,
    ).json()
    return s, server, thread, url, {"Authorization": f"Bearer {token['access_token']}"}


def test_busy_service_answers_503_with_retry_after(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    s, server, thread, url, admin = _live(tmp_path, seaweed, max_concurrent_patches=1, retry_after_seconds=7)
    try:
        fleet = enrol(url, admin)
        h = fleet.dock_headers()
        uploads = []
        for i in range(2):
            data = os.urandom(1024 * 1024 + i)
            r = httpx.post(
                f"{url}/api/v1/dock/uploads",
                headers={
                    **h,
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename=f"c{i}.mp4"),
                },
            )
            uploads.append((url + r.headers["location"], data))
        release = threading.Event()
        first_sent = threading.Event()

        def slow_body():  # type: ignore[no-untyped-def]
            yield uploads[0][1][:1000]
            first_sent.set()
            release.wait(30)
            yield uploads[0][1][1000:]

        patch = {**h, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
        results: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: results.append(
                httpx.patch(uploads[0][0], content=slow_body(), headers=patch, timeout=60)
            )
        )
        t.start()
        assert first_sent.wait(10)
        # The client has sent part of the body; the 503 is due once the service holds its slot (asked
        # before, the second PATCH would take the free slot and store its clip instead).
        wait_for(s.uploads.active.locked, 10, what="the slow upload to hold the service's one slot")
        busy = wait_for(
            lambda: (
                (
                    r := httpx.patch(uploads[1][0], content=uploads[1][1], headers=patch, timeout=30)
                ).status_code
                == 503
                and r
            ),
            10,
            what="a 503",
        )
        assert busy.headers["retry-after"] == "7" and busy.json()["reason"] == "busy"
        release.set()
        t.join(30)
        assert results[0].status_code == 204 and results[0].headers["evidence-status"] == "stored"
        # Once the service has capacity again the refused clip goes through in full.
        r = httpx.patch(uploads[1][0], content=uploads[1][1], headers=patch, timeout=30)
        assert r.status_code == 204 and r.headers["evidence-status"] == "stored"
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def test_one_dock_cannot_take_every_upload_slot(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    """A dock holding its share of the PATCH slots gets 503 for more; another dock still uploads."""
    s, server, thread, url, admin = _live(
        tmp_path, seaweed, max_concurrent_patches=8, max_patches_per_dock=1, retry_after_seconds=3
    )
    try:
        greedy = enrol(url, admin)
        other = enrol(url, admin, dock_id="DOCK-2", serial="CAM-2", wearer="S-2")

        def create(fleet, i: int) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
            data = os.urandom(256 * 1024 + i)
            r = httpx.post(
                f"{url}/api/v1/dock/uploads",
                headers={
                    **fleet.dock_headers(),
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename=f"d{i}.mp4"),
                },
            )
            return url + r.headers["location"], data

        held, more, theirs = create(greedy, 0), create(greedy, 1), create(other, 2)
        release, first_sent = threading.Event(), threading.Event()

        def slow_body():  # type: ignore[no-untyped-def]
            yield held[1][:1000]
            first_sent.set()
            release.wait(30)
            yield held[1][1000:]

        def patch(fleet) -> dict[str, str]:  # type: ignore[no-untyped-def]
            return {
                **fleet.dock_headers(),
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
            }

        results: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: results.append(
                httpx.patch(held[0], content=slow_body(), headers=patch(greedy), timeout=60)
            )
        )
        t.start()
        assert first_sent.wait(10)
        wait_for(
            lambda: sum(s.uploads.per_dock.values()) == 1, 10, what="the slow upload to hold its dock's slot"
        )
        busy = wait_for(
            lambda: (
                (r := httpx.patch(more[0], content=more[1], headers=patch(greedy), timeout=30)).status_code
                == 503
                and r
            ),
            10,
            what="a 503 for the greedy dock",
        )
        assert busy.headers["retry-after"] == "3" and busy.json()["reason"] == "busy"
        r = httpx.patch(theirs[0], content=theirs[1], headers=patch(other), timeout=30)
        assert (
            r.status_code == 204 and r.headers["evidence-status"] == "stored"
        )  # the other dock is not held up
        release.set()
        t.join(30)
        assert results[0].status_code == 204
        r = httpx.patch(more[0], content=more[1], headers=patch(greedy), timeout=30)
        assert r.status_code == 204 and r.headers["evidence-status"] == "stored"
    finally:
        release.set()
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def test_full_storage_answers_507_and_keeps_what_it_has(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    s, server, thread, url, admin = _live(tmp_path, seaweed)
    try:
        fleet = enrol(url, admin)
        h = fleet.dock_headers()
        data = os.urandom(2 * 1024 * 1024)
        r = httpx.post(
            f"{url}/api/v1/dock/uploads",
            headers={
                **h,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data)),
            },
        )
        loc = url + r.headers["location"]
        patch = {**h, "Content-Type": "application/offset+octet-stream"}
        assert (
            httpx.patch(loc, content=data[:1000], headers={**patch, "Upload-Offset": "0"}).status_code == 204
        )
        # The embedded store's disk is now "full": ask for more free space than any disk has.
        s.embedded = seaweed
        s.settings.min_free_bytes = 10**18
        r = httpx.patch(loc, content=data[1000:], headers={**patch, "Upload-Offset": "1000"})
        assert r.status_code == 507 and r.json()["reason"] == "storage_full" and "retry-after" in r.headers
        data2 = os.urandom(100)
        r = httpx.post(
            f"{url}/api/v1/dock/uploads",
            headers={
                **h,
                "Upload-Length": "100",
                "Upload-Metadata": clip_metadata(fleet, sha256(data2), 100, filename="b.mp4"),
            },
        )
        assert r.status_code == 507
        # Space is back: the first 1000 bytes were kept and the clip completes.
        s.settings.min_free_bytes = 0
        assert httpx.head(loc, headers=h).headers["upload-offset"] == "1000"
        r = httpx.patch(loc, content=data[1000:], headers={**patch, "Upload-Offset": "1000"})
        assert r.status_code == 204 and r.headers["evidence-status"] == "stored"
    finally:
        s.embedded = None
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def test_a_dock_has_a_bounded_number_of_open_uploads(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    """Three unfinished uploads fill a dock's share: a fourth is 429 with Retry-After, naming the open
    ones, while another dock still opens one. Finishing, terminating or the expiry of an abandoned one
    makes room again, and what the refused dock had already sent is all still there."""
    s, server, thread, url, admin = _live(
        tmp_path, seaweed, max_open_uploads_per_dock=3, retry_after_seconds=4
    )
    try:
        greedy = enrol(url, admin)
        other = enrol(url, admin, dock_id="DOCK-2", serial="CAM-2", wearer="S-2")

        def create(fleet, i: int) -> tuple[httpx.Response, bytes]:  # type: ignore[no-untyped-def]
            data = os.urandom(64 * 1024 + i)
            r = httpx.post(
                f"{url}/api/v1/dock/uploads",
                headers={
                    **fleet.dock_headers(),
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename=f"o{i}.mp4"),
                },
            )
            return r, data

        patch = {**greedy.dock_headers(), "Content-Type": "application/offset+octet-stream"}
        opened = [create(greedy, i) for i in range(3)]
        assert [r.status_code for r, _ in opened] == [201, 201, 201]
        first, first_data = opened[0]
        first_loc = url + first.headers["location"]
        assert (
            httpx.patch(
                first_loc, content=first_data[:1000], headers={**patch, "Upload-Offset": "0"}
            ).status_code
            == 204
        )

        refused, _ = create(greedy, 3)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "4"
        body = refused.json()
        assert body["reason"] == "too_many_open_uploads"
        ids = [r.headers["location"].rsplit("/", 1)[1] for r, _ in opened]
        assert body["detail"]["open_uploads"] == ids
        assert create(other, 4)[0].status_code == 201  # another dock is not held up

        # Finishing one makes room; the bytes accepted before the refusal are all there.
        assert httpx.head(first_loc, headers=greedy.dock_headers()).headers["upload-offset"] == "1000"
        r = httpx.patch(first_loc, content=first_data[1000:], headers={**patch, "Upload-Offset": "1000"})
        assert r.status_code == 204 and r.headers["evidence-status"] == "stored"
        again, _ = create(greedy, 5)
        assert again.status_code == 201
        assert create(greedy, 6)[0].status_code == 429

        # Terminating one makes room too.
        second_loc = url + opened[1][0].headers["location"]
        assert httpx.delete(second_loc, headers=greedy.dock_headers()).status_code == 204
        assert create(greedy, 7)[0].status_code == 201
        assert create(greedy, 8)[0].status_code == 429

        # An abandoned upload expires: the dock is not locked out for longer than the expiry.
        from datetime import UTC, datetime, timedelta

        from ingest.models import Upload

        abandoned = opened[2][0].headers["location"].rsplit("/", 1)[1]
        with s.db.session() as session:
            row = session.get(Upload, abandoned)
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        assert create(greedy, 9)[0].status_code == 201
        assert s.uploads.expire() == 1
        assert (
            httpx.head(url + opened[2][0].headers["location"], headers=greedy.dock_headers()).status_code
            == 410
        )
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()
