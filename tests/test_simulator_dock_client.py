"""The dock and camera simulators as tus clients, against a small tus server written here.

The server below is not the service: it follows docs/PROTOCOLS.md just far enough to store bytes to a
file, check the camera's hash and signature on completion, and misbehave on request (busy answers,
dropped connections, corrupted bodies, a held PATCH) so the client's resume and retry logic can be
proved with real sockets.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

from firmware_simulators.__main__ import app
from firmware_simulators.camera import (
    CameraIdentity,
    KeyFileError,
    RecordedClip,
    canonical_json,
    clip_manifest,
    record_clip,
    sign_manifest,
    verify_manifest,
)
from firmware_simulators.dock import Dock, DockQueue, UploadState, clip_key
from firmware_simulators.tus import (
    RetriesExhausted,
    RetryPolicy,
    UploadRefused,
    decode_metadata,
    encode_metadata,
    parse_retry_after,
)

TOKEN = "DOCK-7.s3cret"
ROOT = Path(__file__).resolve().parents[1]
UPLOADS = "/api/v1/dock/uploads"
FAST_RETRY = RetryPolicy(max_attempts=6, max_elapsed_s=20, base_delay_s=0.01, max_delay_s=0.05)
MiB = 1024 * 1024


# --------------------------------------------------------------------------- the test server


@dataclass
class ServerUpload:
    id: str
    length: int
    metadata: dict[str, str]
    path: Path
    offset: int = 0
    evidence_item_id: str | None = None
    evidence_status: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    arrived: float
    answered: float | None = None
    status: int | None = None  # None: the connection was dropped without an answer


@dataclass
class Scripted:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, str] | None = None


class TusServer:
    """Enough tus 1.0 to exercise a client, plus knobs to misbehave."""

    def __init__(self, root: Path, cameras: dict[str, str]) -> None:
        self.root = root
        self.cameras = cameras  # serial -> base64 public key
        self.uploads: dict[str, ServerUpload] = {}
        self.seen: list[Seen] = []
        self.script: dict[str, deque[Scripted]] = {m: deque() for m in ("POST", "HEAD", "PATCH", "DELETE")}
        self.drop_after: deque[int] = deque()  # next PATCHes: hang up after this many body bytes
        self.mangle_next_patch = False  # flip a received byte once (wire corruption)
        self.hold_after: int | None = None  # PATCHes stop reading here until `release` is set, then hang up
        self.release = threading.Event()
        self.held = 0
        self.active_patches = 0
        self.cond = threading.Condition()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TusServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def changed(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "server never reached the expected state"

    def requests(self, method: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method]

    def only(self) -> ServerUpload:
        assert len(self.uploads) == 1, list(self.uploads)
        return next(iter(self.uploads.values()))

    def finalise(self, upload: ServerUpload) -> None:
        """What the service promises on completion: hash and signature checked, quarantine if wrong."""
        with open(upload.path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        meta = upload.metadata
        manifest = {
            k: meta[k] for k in ("camera_serial", "filename", "recorded_start", "recorded_stop", "sha256")
        }
        manifest.update(size=upload.length, v=1, wearer=meta["wearer"])
        signed = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(self.cameras[meta["camera_serial"]]))
        try:
            key.verify(base64.b64decode(meta["signature"]), signed)
            signature_ok = True
        except (InvalidSignature, ValueError):
            signature_ok = False
        good = signature_ok and digest == meta["sha256"]
        upload.evidence_item_id = str(uuid.uuid4())
        upload.evidence_status = "stored" if good else "quarantined"


REQUIRED_KEYS = (
    "filename",
    "camera_serial",
    "wearer",
    "recorded_start",
    "recorded_stop",
    "sha256",
    "signature",
)


def _handler_for(server: TusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(
            self, seen: Seen, status: int, headers: dict[str, str] | None = None, body: Any = None
        ) -> None:
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Tus-Resumable", "1.0.0")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            seen.answered, seen.status = time.monotonic(), status
            server.changed()

        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _drain(self) -> None:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                got = self.rfile.read(min(remaining, 65536))
                if not got:
                    break
                remaining -= len(got)

        def _dispatch(self) -> None:
            seen = Seen(self.command, self.path, dict(self.headers), time.monotonic())
            server.seen.append(seen)
            server.changed()
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._drain()
                return self._answer(seen, 401, body={"error": "bad dock token", "reason": "bad_token"})
            if self.headers.get("Tus-Resumable") != "1.0.0":
                self._drain()
                return self._answer(seen, 412, {"Tus-Version": "1.0.0"})
            if server.script[self.command]:
                scripted = server.script[self.command].popleft()
                self._drain()
                return self._answer(seen, scripted.status, scripted.headers, scripted.body)
            getattr(self, "_" + self.command.lower())(seen)

        do_POST = do_HEAD = do_PATCH = do_DELETE = _dispatch

        def _upload(self, seen: Seen) -> ServerUpload | None:
            upload = server.uploads.get(self.path.rsplit("/", 1)[-1])
            if upload is None or not self.path.startswith(UPLOADS + "/"):
                self._drain()
                self._answer(seen, 404, body={"error": "no such upload", "reason": "unknown_upload"})
            return upload

        def _post(self, seen: Seen) -> None:
            meta = decode_metadata(self.headers.get("Upload-Metadata", ""))
            missing = [k for k in REQUIRED_KEYS if k not in meta]
            if missing or not (self.headers.get("Upload-Length") or "").isdigit():
                return self._answer(seen, 400, body={"error": f"missing {missing}", "reason": "bad_metadata"})
            if meta["camera_serial"] not in server.cameras:
                return self._answer(seen, 403, body={"error": "camera unknown", "reason": "camera_unknown"})
            upload_id = uuid.uuid4().hex
            path = server.root / upload_id
            path.touch()
            upload = ServerUpload(upload_id, int(self.headers["Upload-Length"]), meta, path)
            server.uploads[upload_id] = upload
            if upload.length == 0:
                server.finalise(upload)
            self._answer(seen, 201, {"Location": f"{UPLOADS}/{upload_id}", "Upload-Offset": "0"})

        def _head(self, seen: Seen) -> None:
            upload = self._upload(seen)
            if upload is None:
                return
            with upload.lock:  # waits for a PATCH still winding down after its client vanished
                headers = {
                    "Upload-Offset": str(upload.offset),
                    "Upload-Length": str(upload.length),
                    "Cache-Control": "no-store",
                }
                if upload.evidence_item_id:
                    headers |= {
                        "Evidence-Item-Id": upload.evidence_item_id,
                        "Evidence-Status": upload.evidence_status,
                    }
            self._answer(seen, 200, headers)

        def _delete(self, seen: Seen) -> None:
            upload = self._upload(seen)
            if upload is None:
                return
            if upload.evidence_item_id:
                return self._answer(
                    seen, 403, body={"error": "finished clips are evidence", "reason": "finished"}
                )
            del server.uploads[upload.id]
            self._answer(seen, 204)

        def _patch(self, seen: Seen) -> None:
            upload = self._upload(seen)
            if upload is None:
                return
            with server.cond:
                server.active_patches += 1
            try:
                with upload.lock:
                    self._patch_locked(seen, upload)
            finally:
                with server.cond:
                    server.active_patches -= 1
                    server.cond.notify_all()

        def _patch_locked(self, seen: Seen, upload: ServerUpload) -> None:
            if self.headers.get("Content-Type") != "application/offset+octet-stream":
                self._drain()
                return self._answer(seen, 415)
            if int(self.headers["Upload-Offset"]) != upload.offset:
                self._drain()
                return self._answer(seen, 409, {"Upload-Offset": str(upload.offset)})
            remaining = int(self.headers["Content-Length"])
            checksum = self.headers.get("Upload-Checksum")
            digest = hashlib.sha256() if checksum else None
            drop_at = server.drop_after.popleft() if server.drop_after else None
            got_here = 0
            with open(upload.path, "r+b") as fh:
                fh.seek(upload.offset)

                def give_up() -> None:  # a checksummed body is all or nothing; a plain one keeps its bytes
                    if digest is not None:
                        fh.truncate(upload.offset)
                    self._hang_up()

                while remaining:
                    if drop_at is not None and got_here >= drop_at:
                        return give_up()
                    if server.hold_after is not None and got_here >= server.hold_after:
                        with server.cond:
                            server.held += 1
                            server.cond.notify_all()
                        server.release.wait(30)
                        return give_up()
                    step = min(remaining, 65536)
                    if drop_at is not None:
                        step = min(step, drop_at - got_here)
                    if server.hold_after is not None:
                        step = min(step, server.hold_after - got_here)
                    try:
                        block = self.rfile.read(step)
                    except OSError:
                        block = b""
                    if not block:  # the client went away
                        return give_up()
                    if server.mangle_next_patch:
                        server.mangle_next_patch = False
                        block = bytes([block[0] ^ 0xFF]) + block[1:]
                    got_here += len(block)
                    remaining -= len(block)
                    fh.write(block)
                    if digest is not None:
                        digest.update(block)
                    else:
                        fh.flush()
                        upload.offset += len(block)
                if digest is not None:
                    algorithm, _, value = checksum.partition(" ")
                    assert algorithm == "sha256"
                    if digest.digest() != base64.b64decode(value):
                        fh.truncate(upload.offset)
                        return self._answer(
                            seen, 460, body={"error": "checksum mismatch", "reason": "checksum"}
                        )
                    upload.offset += got_here
            if upload.offset == upload.length:
                server.finalise(upload)
            if drop_at is not None and got_here >= drop_at:
                return self._hang_up()
            headers = {"Upload-Offset": str(upload.offset)}
            if upload.evidence_item_id:
                headers |= {
                    "Evidence-Item-Id": upload.evidence_item_id,
                    "Evidence-Status": upload.evidence_status,
                }
            self._answer(seen, 204, headers)

    return Handler


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def camera() -> CameraIdentity:
    return CameraIdentity.generate("CAM-0001")


@pytest.fixture
def server(tmp_path: Path, camera: CameraIdentity) -> Iterator[TusServer]:
    store = tmp_path / "server"
    store.mkdir()
    srv = TusServer(store, {camera.serial: camera.public_key_b64()}).start()
    yield srv
    srv.stop()


def write_random(path: Path, size: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, MiB)
            fh.write(rng.randbytes(n))
            left -= n
    return path


def make_clip(
    folder: Path, camera: CameraIdentity, name: str = "clip.mp4", size: int = 2 * MiB, seed: int = 7
):
    folder.mkdir(parents=True, exist_ok=True)
    path = write_random(folder / name, size, seed)
    minute = seed % 60  # distinct clips start at distinct times, hence distinct names
    return record_clip(
        camera, path, "S-1042", f"2026-11-22T14:{minute:02d}:00Z", f"2026-11-22T14:{minute:02d}:30Z"
    )


def dock(server: TusServer, **knobs: Any) -> Dock:
    return Dock(server.base_url, TOKEN, retry=knobs.pop("retry", FAST_RETRY), **knobs)


# --------------------------------------------------------------------------- camera


def test_manifest_matches_protocol_and_signature_verifies(tmp_path: Path, camera: CameraIdentity) -> None:
    clip = make_clip(tmp_path, camera, size=300_000)
    m = clip.manifest
    assert (
        list(m)
        == sorted(m)
        == [
            "camera_serial",
            "filename",
            "recorded_start",
            "recorded_stop",
            "sha256",
            "size",
            "v",
            "wearer",
        ]
    )
    assert m["sha256"] == hashlib.sha256(clip.path.read_bytes()).hexdigest()
    assert (m["size"], m["v"], m["filename"]) == (300_000, 1, "20261122T140700Z_CAM-0001.mp4")
    assert (
        canonical_json(m)
        == (
            '{"camera_serial":"CAM-0001","filename":"20261122T140700Z_CAM-0001.mp4",'
            '"recorded_start":"2026-11-22T14:07:00Z","recorded_stop":"2026-11-22T14:07:30Z",'
            f'"sha256":"{m["sha256"]}","size":300000,"v":1,"wearer":"S-1042"}}'
        ).encode()
    )
    # Verified with nothing but the raw public key, as the service holds it.
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(camera.public_key_b64()))
    key.verify(base64.b64decode(clip.signature), canonical_json(m))
    assert verify_manifest(camera.public_key_b64(), m, clip.signature)
    assert not verify_manifest(camera.public_key_b64(), {**m, "wearer": "S-9999"}, clip.signature)
    other = CameraIdentity.generate("CAM-0001")
    assert not verify_manifest(other.public_key_b64(), m, clip.signature)
    # The sidecar brings back exactly the same paperwork.
    again = RecordedClip.load_sidecar(clip.sidecar_path)
    assert again == clip


def test_canonical_json_keeps_unicode_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": "Zoë"}) == '{"a":"Zoë","b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_manifest_refuses_bad_names_and_naive_times(tmp_path: Path) -> None:
    path = write_random(tmp_path / "c.mp4", 10)
    with pytest.raises(ValueError, match="filename"):
        clip_manifest(
            path, "CAM-1", "S-1", "2026-11-22T14:00:00Z", "2026-11-22T14:00:01Z", filename="../x.mp4"
        )
    from datetime import datetime

    with pytest.raises(ValueError, match="naive"):
        clip_manifest(path, "CAM-1", "S-1", datetime(2026, 11, 22), "2026-11-22T14:00:01Z")
    with pytest.raises(ValueError, match="before"):
        clip_manifest(path, "CAM-1", "S-1", "2026-11-22T14:00:01Z", "2026-11-22T14:00:00Z")


def test_identity_pem_round_trip_with_mode_0600(tmp_path: Path, camera: CameraIdentity) -> None:
    key_file = camera.save(tmp_path / "cam.pem")
    assert key_file.stat().st_mode & 0o777 == 0o600
    loaded = CameraIdentity.load(key_file)
    assert (loaded.serial, loaded.public_key_b64()) == (camera.serial, camera.public_key_b64())
    manifest = {"v": 1, "x": "y"}
    assert verify_manifest(camera.public_key_b64(), manifest, sign_manifest(loaded, manifest))
    with pytest.raises(FileExistsError):
        camera.save(key_file)
    key_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        CameraIdentity.load(key_file)


def test_hashing_streams_a_50mb_clip_in_bounded_memory(tmp_path: Path) -> None:
    path = write_random(tmp_path / "big.mp4", 50 * MiB)
    with open(path, "rb") as fh:
        expected = hashlib.file_digest(fh, "sha256").hexdigest()
    tracemalloc.start()
    try:
        manifest = clip_manifest(path, "CAM-1", "S-1", "2026-11-22T14:00:00Z", "2026-11-22T14:10:00Z")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest["sha256"] == expected and manifest["size"] == 50 * MiB
    assert peak < 8 * MiB, f"hashing peaked at {peak / MiB:.1f} MiB"


def test_cli_camera_keygen_and_close(tmp_path: Path) -> None:
    runner = CliRunner()
    key_file = tmp_path / "cam.pem"
    out = runner.invoke(app, ["camera-keygen", "--serial", "CAM-0042", "--out", str(key_file)])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert CameraIdentity.load(key_file).public_key_b64() == printed["public_key"]
    clip = write_random(tmp_path / "raw.mp4", 1000)
    args = ["camera-close", str(clip), "--key", str(key_file), "--wearer", "S-7"]
    out = runner.invoke(app, [*args, "--start", "2026-11-22T14:00:00Z", "--stop", "2026-11-22T14:00:09Z"])
    assert out.exit_code == 0, out.output
    recorded = RecordedClip.load_sidecar(tmp_path / "raw.mp4.manifest.json")
    assert recorded.manifest["camera_serial"] == "CAM-0042" and recorded.manifest["wearer"] == "S-7"
    assert verify_manifest(printed["public_key"], recorded.manifest, recorded.signature)


# --------------------------------------------------------------------------- tus pieces


def test_metadata_encoding_round_trips_unicode() -> None:
    meta = {"filename": "a b,c.mp4", "wearer": "Zoë"}
    header = encode_metadata(meta)
    assert header.count(",") == 1 and decode_metadata(header) == meta
    with pytest.raises(ValueError):
        encode_metadata({"bad key": "x"})


def test_retry_after_parses_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 14, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Sun, 22 Nov 2026 14:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sun, 22 Nov 2026 13:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --------------------------------------------------------------------------- uploads


def assert_stored_identically(server: TusServer, clip: RecordedClip) -> None:
    upload = server.only()
    assert upload.offset == upload.length == clip.path.stat().st_size
    assert upload.path.read_bytes() == clip.path.read_bytes()


def test_single_patch_upload_carries_the_manifest(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    with dock(server) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    upload = server.only()
    assert (
        result.evidence_status == "stored" == upload.evidence_status
    )  # hash and signature checked server-side
    assert result.evidence_item_id == upload.evidence_item_id
    assert result.upload_url == f"{server.base_url}{UPLOADS}/{upload.id}"
    assert (result.offset, result.resumes, result.attempts) == (clip.manifest["size"], 0, 2)
    assert len(server.requests("PATCH")) == 1
    assert "Upload-Checksum" not in server.requests("PATCH")[0].headers
    meta = upload.metadata
    assert {k: meta[k] for k in clip.manifest if k in meta} == {
        k: v for k, v in clip.manifest.items() if k not in ("size", "v")
    }
    assert meta["signature"] == clip.signature and meta["content_type"] == "video/mp4"
    post = server.requests("POST")[0]
    assert post.headers["Upload-Length"] == str(clip.manifest["size"])


@pytest.mark.parametrize("chunk_size", [None, 8 * MiB], ids=["one-patch", "chunked-checksummed"])
def test_upload_streams_the_clip_in_bounded_memory(
    tmp_path: Path, camera: CameraIdentity, server: TusServer, chunk_size: int | None
) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=32 * MiB)
    with dock(server, chunk_size=chunk_size) as station:
        tracemalloc.start()  # traces the in-process server too, which reads 64 KiB at a time
        try:
            station.upload(clip)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert server.only().offset == 32 * MiB and server.only().evidence_status == "stored"
    assert peak < 8 * MiB, f"upload peaked at {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("chunk_size", [None, 256 * 1024], ids=["one-patch", "chunked-checksummed"])
def test_resume_after_a_cut_at_a_random_offset_is_byte_identical(
    tmp_path: Path, camera: CameraIdentity, server: TusServer, chunk_size: int | None
) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    seed = int.from_bytes(os.urandom(4))
    cut = random.Random(seed).randrange(1, clip.manifest["size"])
    with dock(server, chunk_size=chunk_size, cut_at=cut) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    assert result.resumes == 1 and result.evidence_status == "stored", f"seed {seed}, cut {cut}"
    # The server kept what arrived before the cut; a checksummed chunk is all or nothing.
    expected_resume = cut if chunk_size is None else cut - cut % chunk_size
    patches = server.requests("PATCH")
    cut_patch = next(i for i, p in enumerate(patches) if p.status is None)
    assert int(patches[cut_patch + 1].headers["Upload-Offset"]) == expected_resume, f"seed {seed}, cut {cut}"
    assert server.requests("HEAD"), "the client must ask the server where it got to"
    if chunk_size:
        assert all(p.headers["Upload-Checksum"].startswith("sha256 ") for p in patches)
        assert all(int(p.headers["Content-Length"]) <= chunk_size for p in patches)


@pytest.mark.parametrize("edge", ["first-byte", "last-byte"])
def test_cut_at_the_edges(tmp_path: Path, camera: CameraIdentity, server: TusServer, edge: str) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=100_000)
    cut = 0 if edge == "first-byte" else 99_999
    with dock(server, cut_at=cut) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    assert result.resumes == 1


@pytest.mark.parametrize("drop", ["mid-body", "after-last-byte"])
def test_server_hang_up_resumes_from_its_offset(
    tmp_path: Path, camera: CameraIdentity, server: TusServer, drop: str
) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    at = 700_001 if drop == "mid-body" else clip.manifest["size"]
    server.drop_after.append(at)
    with dock(server) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    patches = server.requests("PATCH")
    assert patches[0].status is None
    if drop == "mid-body":
        assert int(patches[1].headers["Upload-Offset"]) == at
    else:
        # The final answer was lost; the evidence id still reaches the dock through HEAD.
        assert len(patches) == 1
    assert result.evidence_item_id == server.only().evidence_item_id and result.evidence_status == "stored"


def test_503_retry_after_is_honoured(tmp_path: Path, camera: CameraIdentity, server: TusServer) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=200_000)
    server.script["PATCH"].append(Scripted(503, {"Retry-After": "1"}, {"error": "busy", "reason": "busy"}))
    with dock(server) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    busy = next(s for s in server.seen if s.status == 503)
    after = server.seen[server.seen.index(busy) + 1]
    assert after.arrived - busy.answered >= 1.0, "the dock came back before Retry-After"
    assert after.method == "HEAD", "after a 5xx the dock asks for the offset before sending again"
    assert result.waits_s[0] >= 1.0 and result.retries == 1


def test_busy_without_retry_after_backs_off_exponentially_then_gives_up(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=1000)
    for _ in range(10):
        server.script["POST"].append(Scripted(503))
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.03)
    with dock(server, retry=policy, sleep=waits.append) as station, pytest.raises(RetriesExhausted) as err:
        station.upload(clip)
    assert err.value.last_status == 503
    assert len(server.requests("POST")) == 5 and len(waits) == 4
    for n, wait in enumerate(waits, start=1):
        ceiling = min(0.03, 0.01 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling


def test_retry_after_beyond_the_time_budget_gives_up_without_waiting(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=1000)
    server.script["POST"].append(Scripted(503, {"Retry-After": "3600"}))
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=5, max_elapsed_s=60)
    with (
        dock(server, retry=policy, sleep=waits.append) as station,
        pytest.raises(RetriesExhausted, match="budget"),
    ):
        station.upload(clip)
    assert waits == [] and len(server.seen) == 1


@pytest.mark.parametrize(
    ("method", "status"), [("POST", 403), ("POST", 413), ("PATCH", 400), ("PATCH", 410), ("HEAD", 404)]
)
def test_4xx_stops_at_once_with_the_reason(
    tmp_path: Path, camera: CameraIdentity, server: TusServer, method: str, status: int
) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=1000)
    server.script[method].append(Scripted(status, body={"error": "refused here", "reason": f"code_{status}"}))
    if method == "HEAD":
        server.drop_after.append(10)  # a drop makes the dock ask HEAD, which is refused
    with dock(server) as station, pytest.raises(UploadRefused) as err:
        station.upload(clip)
    reason = None if method == "HEAD" else f"code_{status}"  # a HEAD answer has no body to say why
    assert (err.value.status, err.value.method, err.value.reason) == (status, method, reason)
    assert method == "HEAD" or "refused here" in str(err.value)
    assert len(server.requests(method)) == 1, "a refusal that never changes must not be retried"


def test_unknown_camera_is_refused_by_the_server_with_403(tmp_path: Path, server: TusServer) -> None:
    stranger = CameraIdentity.generate("CAM-9999")
    clip = make_clip(tmp_path / "cam", stranger, size=1000)
    with dock(server) as station, pytest.raises(UploadRefused) as err:
        station.upload(clip)
    assert (err.value.status, err.value.reason) == (403, "camera_unknown")


def test_409_makes_the_dock_ask_for_the_offset_and_continue(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    server.script["PATCH"].append(Scripted(409))
    with dock(server, chunk_size=MiB) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    assert [s.method for s in server.seen[:4]] == ["POST", "PATCH", "HEAD", "PATCH"]
    assert result.resumes == 1


def test_460_resends_the_same_chunk(tmp_path: Path, camera: CameraIdentity, server: TusServer) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    server.mangle_next_patch = True
    with dock(server, chunk_size=512 * 1024) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    patches = server.requests("PATCH")
    assert patches[0].status == 460 and patches[1].headers["Upload-Offset"] == "0"
    assert patches[1].headers["Upload-Checksum"] == patches[0].headers["Upload-Checksum"]
    assert len(patches) == 5 and result.retries == 1 and result.evidence_status == "stored"


def test_bad_token_is_refused(tmp_path: Path, camera: CameraIdentity, server: TusServer) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=1000)
    with (
        Dock(server.base_url, "DOCK-7.wrong", retry=FAST_RETRY) as station,
        pytest.raises(UploadRefused) as err,
    ):
        station.upload(clip)
    assert err.value.status == 401


def test_terminate_an_unfinished_upload(tmp_path: Path, camera: CameraIdentity, server: TusServer) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=100_000)
    server.script["PATCH"].append(Scripted(400, body={"error": "stop", "reason": "stop"}))
    created: list[str] = []
    with dock(server) as station:
        with pytest.raises(UploadRefused):
            station.upload(clip, on_created=created.append)
        station.terminate(created[0])
    assert server.uploads == {}


# --------------------------------------------------------------------------- fault knobs


def test_corrupt_byte_is_sent_and_the_manifest_is_not_changed(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    with dock(server, chunk_size=256 * 1024, corrupt_byte_at=300_000) as station:
        result = station.upload(clip)
    stored, original = server.only().path.read_bytes(), clip.path.read_bytes()
    assert [i for i in range(len(original)) if stored[i] != original[i]] == [300_000]
    assert server.only().metadata["sha256"] == clip.manifest["sha256"]
    assert result.evidence_status == "quarantined"


def test_wrong_hash_keeps_the_signature_over_the_true_manifest(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    with dock(server, wrong_hash=True) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    meta = server.only().metadata
    assert meta["sha256"] != clip.manifest["sha256"] and len(meta["sha256"]) == 64
    assert verify_manifest(camera.public_key_b64(), clip.manifest, meta["signature"])
    assert result.evidence_status == "quarantined"


def test_bad_signature_does_not_verify(tmp_path: Path, camera: CameraIdentity, server: TusServer) -> None:
    clip = make_clip(tmp_path / "cam", camera)
    with dock(server, bad_signature=True) as station:
        result = station.upload(clip)
    assert_stored_identically(server, clip)
    meta = server.only().metadata
    assert len(base64.b64decode(meta["signature"])) == 64
    assert not verify_manifest(camera.public_key_b64(), clip.manifest, meta["signature"])
    assert result.evidence_status == "quarantined"


def test_replay_sends_the_same_clip_again(tmp_path: Path, camera: CameraIdentity, server: TusServer) -> None:
    clip = make_clip(tmp_path / "cam", camera, size=100_000)
    with dock(server, replay=True) as station:
        result = station.upload(clip)
    assert result.replay is not None and result.replay.upload_url != result.upload_url
    first, second = server.uploads.values()
    assert first.metadata == second.metadata
    assert first.path.read_bytes() == second.path.read_bytes() == clip.path.read_bytes()
    assert len(server.requests("POST")) == 2 and len(station.history) == 2


# --------------------------------------------------------------------------- the queue


def test_queue_resumes_its_uploads_after_being_killed(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    folder = tmp_path / "dock"
    clips = [make_clip(folder, camera, f"c{i}.mp4", size=MiB, seed=i) for i in range(3)]
    state = tmp_path / "state.json"
    held_at = 128 * 1024
    server.hold_after = held_at
    cmd = [sys.executable, "-m", "firmware_simulators", "dock", str(folder), "--url", server.base_url]
    cmd += ["--token", TOKEN, "--state", str(state), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server.wait_for(lambda: server.held == 2)  # two workers, each stuck mid-clip
    finally:
        proc.kill()
        proc.wait(10)
    saved = json.loads(state.read_text())["clips"]
    assert len(saved) == 2 and not any(entry["done"] for entry in saved.values())
    server.hold_after = None
    server.release.set()
    server.wait_for(lambda: server.active_patches == 0)
    assert sorted(u.offset for u in server.uploads.values()) == [held_at, held_at]

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {line["clip"] for line in lines} == {clip_key(c) for c in clips}
    assert all(line["evidence_status"] == "stored" for line in lines)
    assert len(server.requests("POST")) == 3, "the restarted dock must resume, not start over"
    resumed = [p for p in server.requests("PATCH") if p.headers["Upload-Offset"] != "0"]
    assert len(resumed) == 2 and all(p.headers["Upload-Offset"] == str(held_at) for p in resumed)
    by_name = {u.metadata["filename"]: u for u in server.uploads.values()}
    assert len(by_name) == 3
    for clip in clips:
        assert by_name[clip.manifest["filename"]].path.read_bytes() == clip.path.read_bytes()
    # A third start has nothing left to do and says nothing to the server.
    before = len(server.seen)
    with dock(server) as station:
        report = DockQueue(station, folder, state, workers=2).run()
    assert report.results == {} and report.failures == {} and len(server.seen) == before
    assert all(UploadState(state).get(clip_key(c))["done"] for c in clips)


def test_queue_starts_over_when_its_saved_upload_is_gone(
    tmp_path: Path, camera: CameraIdentity, server: TusServer
) -> None:
    folder = tmp_path / "dock"
    clip = make_clip(folder, camera, size=50_000)
    state = UploadState(tmp_path / "state.json")
    state.update(clip_key(clip), upload_url=f"{server.base_url}{UPLOADS}/expired", done=False)
    with dock(server) as station:
        report = DockQueue(station, folder, state.path, workers=1).run()
    assert report.failures == {}
    assert_stored_identically(server, clip)
    assert [s.method for s in server.seen[:2]] == ["HEAD", "POST"]


# --------------------------------------------------------------------------- boundaries


def test_simulators_import_nothing_of_the_service() -> None:
    forbidden = {"storage", "chain_of_custody", "devices", "incidents", "redaction", "ingest"}
    for source in (ROOT / "firmware_simulators").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & forbidden, f"{source.name} imports {names}"
