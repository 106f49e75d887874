"""Faults on the dock path: cuts, refusals, a killed service and a storage outage lose nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from blake3 import blake3
from sqlalchemy import func, select

from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.verify import verify_service
from firmware_simulators.camera import CameraIdentity, record_clip
from firmware_simulators.dock import Dock
from firmware_simulators.tus import RetryPolicy, UploadRefused
from storage.embedded import EmbeddedSeaweed
from tests.clipkit import clip_metadata, sha256
from tests.conftest import (
    SIGN_IN_TIMEOUT,
    free_base_port,
    free_port,
    make_settings,
    settings_env,
    start_server,
    wait_for,
)
from tests.media import make_test_clip

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
# Cut uploads the suite sends; ``CUT_UPLOADS=50`` is the longer soak, run outside the suite's time budget.
CUT_UPLOADS = int(os.environ.get("CUT_UPLOADS", "15"))


def _camera(live, serial: str, wearer: str, tmp_path: Path) -> CameraIdentity:  # type: ignore[no-untyped-def]
    ident = CameraIdentity.generate(serial)
    httpx.post(
        f"{live.url}/api/v1/staff", json={"id": wearer, "name": wearer}, headers=live.admin()
    ).raise_for_status()
    httpx.post(
        f"{live.url}/api/v1/devices/cameras",
        json={"id": serial, "public_key": ident.public_key_b64(), "staff_id": wearer},
        headers=live.admin(),
    ).raise_for_status()
    return ident


def _dock_token(live, dock_id: str = "DOCK-A") -> str:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{live.url}/api/v1/devices/docks", json={"id": dock_id}, headers=live.admin())
    r.raise_for_status()
    return str(r.json()["token"])


def _stored_bytes(services, item_id: str) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        item = session.get(EvidenceItem, item_id)
    return services.store.sha256_of(item.object_key, item.version_id)


@pytest.fixture
def sqlite_live(tmp_path, seaweed):  # type: ignore[no-untyped-def]
    from ingest.services import build_services
    from tests.conftest import ADMIN_PASSWORD, LiveServer, recorded_user

    s = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", seaweed))
    with s.db.session() as session:
        recorded_user(session, s.ledger, "admin", ADMIN_PASSWORD, "admin")
    server, thread, url = start_server(s)
    token = httpx.post(
        f"{url}/api/v1/auth/token",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=SIGN_IN_TIMEOUT,
    ).json()
    yield LiveServer(url, s, token["access_token"])
    server.should_exit = True
    thread.join(15)
    s.db.dispose()


def test_cut_uploads_resume_to_identical_evidence(sqlite_live, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Uploads cut at random points (a real clip's bytes at the start of every fifth, every other
    one sent in 3 MiB requests) resume to the very bytes the camera hashed."""
    live = sqlite_live
    camera = _camera(live, "CAM-CUT", "S-CUT", tmp_path)
    token = _dock_token(live)
    rng = random.Random(1234)
    real = make_test_clip(tmp_path / "real.mp4", seconds=2).read_bytes()
    results = []
    for i in range(CUT_UPLOADS):
        size = rng.randrange(256 * 1024, 12 * 1024 * 1024)
        body = (real + os.urandom(size))[:size] if i % 5 == 0 else os.urandom(size)
        path = tmp_path / f"clip{i:02d}.mp4"
        path.write_bytes(body)
        clip = record_clip(
            camera,
            path,
            "S-CUT",
            START + timedelta(minutes=i),
            START + timedelta(minutes=i, seconds=30),
            write_sidecar=False,
        )
        cut = rng.randrange(1, size)
        dock = Dock(
            live.url,
            token,
            cut_at=cut,
            chunk_size=(3 * 1024 * 1024 if i % 2 else None),
            retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.5),
        )
        with dock:
            result = dock.upload(clip)
        assert result.resumes >= 1, f"clip {i} was not cut"
        assert result.evidence_status == "stored", (i, result)
        results.append((result.evidence_item_id, sha256(body), size))
        path.unlink()
    for item_id, digest, size in results:
        assert _stored_bytes(live.services, item_id) == (digest, size)
    with live.services.db.session() as session:
        assert verify_service(session, live.services.store, live.services.key).ok


def test_bad_input_gets_reasoned_refusal_and_loses_nothing(sqlite_live, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live = sqlite_live
    s = live.services
    camera = _camera(live, "CAM-F", "S-F", tmp_path)
    _camera(live, "CAM-OTHER", "S-OTHER", tmp_path)
    token = _dock_token(live)
    path = make_test_clip(tmp_path / "good.mp4", seconds=2)
    good = record_clip(camera, path, "S-F", START, START + timedelta(seconds=2), write_sidecar=False)
    with Dock(live.url, token) as dock:
        first = dock.upload(good)
    assert first.evidence_status == "stored"

    def fresh_clip(name: str, wearer: str = "S-F", ident: CameraIdentity = camera):  # type: ignore[no-untyped-def]
        p = tmp_path / name
        p.write_bytes(path.read_bytes() + name.encode())
        return record_clip(ident, p, wearer, START, START + timedelta(seconds=2), write_sidecar=False)

    # Paperwork wrong: kept, but quarantined with the reason in the custody record.
    for knob, clue in (
        ("wrong_hash", "camera reported"),
        ("bad_signature", "signature"),
        ("corrupt_byte_at", "camera reported"),
    ):
        kwargs: dict[str, object] = {knob: 100 if knob == "corrupt_byte_at" else True}
        with Dock(live.url, token, **kwargs) as dock:  # type: ignore[arg-type]
            r = dock.upload(fresh_clip(f"{knob}.mp4"))
        assert r.evidence_status == "quarantined", knob
        trail = httpx.get(
            f"{live.url}/api/v1/evidence/{r.evidence_item_id}/custody", headers=live.admin()
        ).json()
        assert trail[-1]["action"] == "quarantined" and clue in trail[-1]["details"]["reason"], trail[-1]

    # Refused outright, with a stable reason.
    stranger = CameraIdentity.generate("CAM-UNKNOWN")
    cases = [
        (lambda: Dock(live.url, token).upload(fresh_clip("u.mp4", ident=stranger)), 403, "unknown_camera"),
        (
            lambda: Dock(live.url, token).upload(fresh_clip("m.mp4", wearer="S-OTHER")),
            403,
            "camera_not_assigned",
        ),
        (lambda: Dock(live.url, "DOCK-A.wrongsecret").upload(fresh_clip("t.mp4")), 401, None),
        (lambda: Dock(live.url, "nonsense").upload(fresh_clip("t2.mp4")), 401, None),
    ]
    for call, status, reason in cases:
        with pytest.raises(UploadRefused) as err:
            call()
        assert err.value.status == status
        if reason:
            assert err.value.reason == reason

    # Raw protocol abuse the simulator would never send.
    h = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    up = f"{live.url}/api/v1/dock/uploads"

    class _F:
        url, dock_token, camera_serial, camera_key, wearer = (
            live.url,
            token,
            "CAM-F",
            camera.private_key,
            "S-F",
        )

    meta = clip_metadata(_F, "a" * 64, 10)  # type: ignore[arg-type]
    assert (
        httpx.post(
            up, headers={**h, "Upload-Length": "10", "Upload-Metadata": meta + ",x " + "QUFB" * 2000}
        ).status_code
        == 431
    )
    assert (
        httpx.post(up, headers={**h, "Upload-Length": str(10**15), "Upload-Metadata": meta}).status_code
        == 413
    )
    assert httpx.post(up, headers={**h, "Upload-Length": "ten", "Upload-Metadata": meta}).status_code == 400
    assert (
        httpx.post(up, headers={**h, "Upload-Length": "10", "Upload-Metadata": "filename !!!"}).status_code
        == 400
    )
    assert (
        httpx.post(
            up, headers={"Authorization": h["Authorization"], "Upload-Length": "10", "Upload-Metadata": meta}
        ).status_code
        == 412
    )
    for bad_name in (
        "../../etc/passwd",
        "a/b.mp4",
        "..\\x.mp4",
        ".hidden",
        "clip\x00.mp4",
        "clip\u202e4pm.mp4",
        "..",
    ):
        r = httpx.post(
            up,
            headers={
                **h,
                "Upload-Length": "10",
                "Upload-Metadata": clip_metadata(_F, "a" * 64, 10, filename=bad_name),
            },
        )  # type: ignore[arg-type]
        assert r.status_code == 400 and r.json()["reason"] == "bad_filename", (bad_name, r.text)
    # Huge headers are cut off by the HTTP layer before they reach any handler.
    r = httpx.post(up, headers={**h, "X-Junk": "j" * 200_000})
    assert r.status_code in (400, 431)

    # Offset and checksum discipline.
    r = httpx.post(up, headers={**h, "Upload-Length": "10", "Upload-Metadata": meta})
    loc = live.url + r.headers["location"]
    patch = {**h, "Content-Type": "application/offset+octet-stream"}
    assert httpx.patch(loc, content=b"12345", headers={**patch, "Upload-Offset": "3"}).status_code == 409
    assert (
        httpx.patch(
            loc,
            content=b"12345",
            headers={**patch, "Upload-Offset": "0", "Upload-Checksum": "sha256 " + "A" * 44},
        ).status_code
        == 460
    )
    assert httpx.head(loc, headers=h).headers["upload-offset"] == "0"
    assert (
        httpx.patch(loc, content=b"12345678901", headers={**patch, "Upload-Offset": "0"}).status_code == 400
    )
    assert httpx.patch(loc, content=b"1", headers={**h, "Upload-Offset": "0"}).status_code == 415
    assert httpx.delete(loc, headers=h).status_code == 204
    assert httpx.head(loc, headers=h).status_code == 404
    other_dock = _dock_token(live, "DOCK-B")
    assert (
        httpx.head(
            f"{live.url}/api/v1/dock/uploads/{first.upload_url.rsplit('/', 1)[1]}",
            headers={**h, "Authorization": f"Bearer {other_dock}"},
        ).status_code
        == 404
    )
    # A finished clip is evidence: termination is refused.
    assert httpx.delete(first.upload_url, headers=h).status_code == 403

    # Replaying a finished clip is absorbed: same evidence, nothing stored twice.
    with Dock(live.url, token) as dock:
        again = dock.upload(good)
    assert again.evidence_item_id == first.evidence_item_id

    # Nothing accepted was lost: 4 items (1 good, 3 quarantined), all verify.
    with s.db.session() as session:
        assert session.scalar(select(func.count()).select_from(EvidenceItem)) == 4
        assert session.scalar(select(func.count()).where(CustodyEntry.action == "quarantined")) == 3
        report = verify_service(session, s.store, s.key)
    assert report.ok, report.problems
    assert _stored_bytes(s, first.evidence_item_id) == (sha256(path.read_bytes()), path.stat().st_size)


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "serve", "--port", str(port)],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[1],
    )


def test_service_killed_mid_upload_resumes_after_restart(tmp_path: Path, seaweed: EmbeddedSeaweed) -> None:
    from ingest.services import build_services
    from tests.conftest import recorded_user

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", seaweed, upload_lease_seconds=2)
    s = build_services(settings)
    with s.db.session() as session:
        recorded_user(session, s.ledger, "admin", "correct horse battery staple", "admin")
    env = settings_env(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(env, port, tmp_path / "serve.log")
    try:
        wait_for(lambda: _up(url), 30, 0.1, "service to start")
        token = httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": "admin", "password": "correct horse battery staple"},
            timeout=SIGN_IN_TIMEOUT,
        ).json()["access_token"]

        class L:
            def __init__(self) -> None:
                self.url = url

            def admin(self) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

        camera = _camera(L(), "CAM-K", "S-K", tmp_path)
        dock_token = _dock_token(L())
        data = os.urandom(13 * 1024 * 1024 + 77)
        clip_path = tmp_path / "k.mp4"
        clip_path.write_bytes(data)
        clip = record_clip(camera, clip_path, "S-K", START, START + timedelta(seconds=9), write_sidecar=False)
        h = {"Authorization": f"Bearer {dock_token}", "Tus-Resumable": "1.0.0"}
        from firmware_simulators.dock import upload_metadata
        from firmware_simulators.tus import encode_metadata

        r = httpx.post(
            f"{url}/api/v1/dock/uploads",
            headers={
                **h,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": encode_metadata(upload_metadata(clip)),
            },
        )
        loc = url + r.headers["location"]
        hold = threading.Event()

        def body():  # type: ignore[no-untyped-def]
            for i in range(0, 7 * 1024 * 1024, 1024 * 1024):
                yield data[i : i + 1024 * 1024]
            hold.wait(60)

        def send() -> None:
            try:
                httpx.patch(
                    loc,
                    content=body(),
                    timeout=90,
                    headers={**h, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                )
            except httpx.HTTPError:
                pass

        sender = threading.Thread(target=send)
        sender.start()
        wait_for(
            lambda: int(httpx.head(loc, headers=h).headers["upload-offset"]) >= 5 * 1024 * 1024,
            30,
            what="first part to be stored",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        hold.set()
        sender.join(30)
        proc = _serve(env, port, tmp_path / "serve.log")
        wait_for(lambda: _up(url), 30, 0.1, "service to restart")
        offset = int(httpx.head(loc, headers=h).headers["upload-offset"])
        assert offset >= 5 * 1024 * 1024
        with Dock(url, dock_token, retry=RetryPolicy(base_delay_s=0.2, max_delay_s=1.0)) as dock:
            result = dock.upload(clip, upload_url=loc)
        assert result.evidence_status == "stored"
        assert _stored_bytes(s, result.evidence_item_id) == (sha256(data), len(data))
        # The running digests died with the process: both were taken again from the finished object.
        with s.db.session() as session:
            item = session.get(EvidenceItem, result.evidence_item_id)
            assert item is not None and item.sha256 == sha256(data)
            assert item.blake3 == blake3(data).hexdigest()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        s.db.dispose()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_storage_outage_answers_503_and_the_clip_completes_later(tmp_path: Path) -> None:
    from accounts.service import create_user
    from ingest.services import build_services
    from tests.conftest import ADMIN_PASSWORD, LiveServer

    store = EmbeddedSeaweed(tmp_path / "own-s3", free_base_port(), "512MiB")
    store.start()
    s = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", store))
    with s.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=s.key)
    server, thread, url = start_server(s)
    try:
        token = httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": "admin", "password": ADMIN_PASSWORD},
            timeout=SIGN_IN_TIMEOUT,
        ).json()
        live = LiveServer(url, s, token["access_token"])
        camera = _camera(live, "CAM-O", "S-O", tmp_path)
        dock_token = _dock_token(live)
        data = os.urandom(12 * 1024 * 1024)
        p = tmp_path / "o.mp4"
        p.write_bytes(data)
        clip = record_clip(camera, p, "S-O", START, START + timedelta(seconds=5), write_sidecar=False)
        h = {"Authorization": f"Bearer {dock_token}", "Tus-Resumable": "1.0.0"}
        from firmware_simulators.dock import upload_metadata
        from firmware_simulators.tus import encode_metadata

        r = httpx.post(
            f"{url}/api/v1/dock/uploads",
            headers={
                **h,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": encode_metadata(upload_metadata(clip)),
            },
        )
        loc = url + r.headers["location"]
        patch = {**h, "Content-Type": "application/offset+octet-stream"}
        r = httpx.patch(
            loc, content=data[: 6 * 1024 * 1024], headers={**patch, "Upload-Offset": "0"}, timeout=60
        )
        assert r.status_code == 204
        offset = int(r.headers["upload-offset"])

        store.kill()
        r = httpx.patch(
            loc, content=data[offset:], headers={**patch, "Upload-Offset": str(offset)}, timeout=60
        )
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert r.json()["reason"] == "storage_unavailable"
        # Creation is refused the same way while storage is down.
        assert (
            httpx.post(
                f"{url}/api/v1/dock/uploads",
                headers={
                    **h,
                    "Upload-Length": "5",
                    "Upload-Metadata": encode_metadata(upload_metadata(clip)),
                },
            ).status_code
            == 503
        )

        restarter = threading.Timer(2.0, store.start)
        restarter.start()
        with Dock(
            url, dock_token, retry=RetryPolicy(base_delay_s=0.3, max_delay_s=2.0, max_elapsed_s=120)
        ) as dock:
            result = dock.upload(clip, upload_url=loc)
        restarter.join()
        assert result.retries >= 1
        assert result.evidence_status == "stored"
        assert _stored_bytes(s, result.evidence_item_id) == (sha256(data), len(data))
        # The running digests died with the process: both were taken again from the finished object.
        with s.db.session() as session:
            item = session.get(EvidenceItem, result.evidence_item_id)
            assert item is not None and item.sha256 == sha256(data)
            assert item.blake3 == blake3(data).hexdigest()
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()
        store.kill()  # thrown away with tmp_path: no graceful stop (about 2 s)
