"""A docking station: takes finished clips off a camera and uploads them to the service over tus.

Fault knobs let tests drive the service through what real docks do wrong: cut connections,
corrupted bytes, paperwork that does not match the footage, and the same clip sent twice.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from firmware_simulators.camera import SIDECAR_SUFFIX, RecordedClip
from firmware_simulators.tus import RetryPolicy, TusClient, UploadRefused, UploadResult

UPLOADS_PATH = "/api/v1/dock/uploads"
STATE_VERSION = 1
log = logging.getLogger(__name__)


class ConnectionCut(httpx.WriteError):
    """The dock dropped the connection mid-PATCH on purpose (``cut_at``)."""


def upload_metadata(
    clip: RecordedClip, *, sha256: str | None = None, signature: str | None = None
) -> dict[str, str]:
    """tus metadata for a clip as docs/PROTOCOLS.md lists it; ``size`` and ``v`` travel as Upload-Length and v1."""
    manifest = clip.manifest
    return {
        "filename": manifest["filename"],
        "camera_serial": manifest["camera_serial"],
        "wearer": manifest["wearer"],
        "recorded_start": manifest["recorded_start"],
        "recorded_stop": manifest["recorded_stop"],
        "sha256": sha256 or manifest["sha256"],
        "signature": signature or clip.signature,
        "content_type": "video/mp4",
    }


def _flip_signature(signature_b64: str) -> str:
    """A well-formed signature that no key made over this manifest."""
    raw = bytearray(base64.b64decode(signature_b64))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def _other_sha256(sha256: str) -> str:
    """A valid-looking hex digest that is not the clip's."""
    last = "0" if sha256[-1] != "0" else "1"
    return sha256[:-1] + last


def _corrupter(at: int) -> Callable[[int, bytes], bytes]:
    """Invert the byte at file offset ``at`` in every read that covers it."""

    def transform(offset: int, block: bytes) -> bytes:
        if offset <= at < offset + len(block):
            changed = bytearray(block)
            changed[at - offset] ^= 0xFF
            return bytes(changed)
        return block

    return transform


def _cutter(at: int) -> Callable[[int, Iterator[bytes]], Iterator[bytes]]:
    """Abort the first PATCH that carries file offset ``at`` right after sending the bytes before it."""
    fired = threading.Event()

    def hook(start: int, body: Iterator[bytes]) -> Iterator[bytes]:
        position = start
        for block in body:
            if not fired.is_set() and position <= at < position + len(block):
                fired.set()
                if at > position:
                    yield block[: at - position]
                raise ConnectionCut(f"connection cut by the dock at byte {at}")
            yield block
            position += len(block)

    return hook


@dataclass
class Dock:
    """One docking station with its dock token, speaking tus to ``base_url`` + ``/api/v1/dock/uploads``.

    ``chunk_size=None`` sends the rest of a clip in one PATCH (fastest; bytes received before a drop are
    kept by the server). With a chunk size each PATCH carries ``Upload-Checksum`` when ``checksum``.
    Fault knobs (file offsets are absolute in the clip):
    ``cut_at`` drops the connection once after sending the bytes before that offset;
    ``corrupt_byte_at`` flips that byte in everything sent (manifest unchanged, so the service must
    quarantine); ``wrong_hash`` sends another sha256 while the signature stays over the true manifest;
    ``bad_signature`` sends a signature that does not verify; ``replay`` sends the clip again after it
    finished, as a new upload.
    """

    base_url: str
    token: str
    chunk_size: int | None = None
    checksum: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 120.0
    cut_at: int | None = None
    corrupt_byte_at: int | None = None
    wrong_hash: bool = False
    bad_signature: bool = False
    replay: bool = False
    sleep: Callable[[float], None] | None = None
    history: list[UploadResult] = field(default_factory=list, init=False)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
            follow_redirects=False,
        )

    @property
    def endpoint(self) -> str:
        """The tus creation URL."""
        return self.base_url.rstrip("/") + UPLOADS_PATH

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def __enter__(self) -> Dock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tus(self) -> TusClient:
        """A tus client wired with this dock's settings and faults (a fresh one per upload: cuts fire once)."""
        extra: dict[str, Any] = {"sleep": self.sleep} if self.sleep is not None else {}
        return TusClient(
            self._http,
            self.endpoint,
            chunk_size=self.chunk_size,
            checksum=self.checksum,
            retry=self.retry,
            transform=_corrupter(self.corrupt_byte_at) if self.corrupt_byte_at is not None else None,
            body_hook=_cutter(self.cut_at) if self.cut_at is not None else None,
            **extra,
        )

    def metadata(self, clip: RecordedClip) -> dict[str, str]:
        """What this dock will put in ``Upload-Metadata`` for ``clip``, faults included."""
        return upload_metadata(
            clip,
            sha256=_other_sha256(clip.manifest["sha256"]) if self.wrong_hash else None,
            signature=_flip_signature(clip.signature) if self.bad_signature else None,
        )

    def upload(
        self,
        clip: RecordedClip,
        *,
        upload_url: str | None = None,
        on_created: Callable[[str], None] | None = None,
    ) -> UploadResult:
        """Upload one clip (resuming ``upload_url`` if given) and return how it ended."""
        size = clip.path.stat().st_size
        if size != clip.manifest["size"]:
            log.warning("clip %s is %d bytes, its manifest says %d", clip.path, size, clip.manifest["size"])
        metadata = self.metadata(clip)
        result = self.tus().upload(
            clip.path, metadata, length=size, upload_url=upload_url, on_created=on_created
        )
        self.history.append(result)
        if self.replay:
            replayed = self.tus().upload(clip.path, metadata, length=size)
            self.history.append(replayed)
            result.replay = replayed
        return result

    def terminate(self, upload_url: str) -> None:
        """Abandon an unfinished upload on the server."""
        self.tus().delete(upload_url)


@dataclass
class QueueReport:
    """What a queue run achieved: results by clip key, and the clips that failed with why."""

    results: dict[str, UploadResult] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class UploadState:
    """The dock's small JSON memory of upload URLs, so a restarted dock resumes instead of starting over.

    Written atomically (temporary file, fsync, rename) under a lock, since workers share it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._clips: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            body = json.loads(self.path.read_text("utf-8"))
            if body.get("v") != STATE_VERSION:
                raise ValueError(f"{self.path}: unknown state version {body.get('v')!r}")
            self._clips = body.get("clips", {})

    def get(self, key: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._clips.get(key, {}))

    def update(self, key: str, **fields: Any) -> None:
        with self._lock:
            self._clips.setdefault(key, {}).update(fields)
            self._write()

    def forget_url(self, key: str) -> None:
        with self._lock:
            self._clips.get(key, {}).pop("upload_url", None)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"v": STATE_VERSION, "clips": self._clips}, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def find_clips(folder: str | os.PathLike[str]) -> list[RecordedClip]:
    """Every clip in ``folder`` that has its manifest sidecar next to it, in name order."""
    clips = []
    for sidecar in sorted(Path(folder).glob("*" + SIDECAR_SUFFIX)):
        clip = RecordedClip.load_sidecar(sidecar)
        if clip.path.exists():
            clips.append(clip)
        else:
            log.warning("sidecar %s names a missing clip %s", sidecar, clip.path)
    return clips


def clip_key(clip: RecordedClip) -> str:
    """A clip's name in the state file: its file name and hash, so a replaced file is a new clip."""
    return f"{clip.path.name}:{clip.manifest['sha256']}"


class DockQueue:
    """Uploads a folder of clips with ``workers`` threads, resuming from its state file after a restart."""

    def __init__(
        self, dock: Dock, folder: str | os.PathLike[str], state_path: str | os.PathLike[str], workers: int = 2
    ):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.dock = dock
        self.folder = Path(folder)
        self.state = UploadState(state_path)
        self.workers = workers

    def run(self) -> QueueReport:
        """Upload every clip not yet done; one clip's failure does not stop the others."""
        report = QueueReport()
        lock = threading.Lock()
        pending = [clip for clip in find_clips(self.folder) if not self.state.get(clip_key(clip)).get("done")]

        def work(clip: RecordedClip) -> None:
            key = clip_key(clip)
            try:
                result = self._upload(clip, key)
            except Exception as exc:  # one bad clip must not stop the dock; the report says why
                log.error("upload of %s failed: %s", clip.path, exc)
                with lock:
                    report.failures[key] = f"{type(exc).__name__}: {exc}"
                return
            with lock:
                report.results[key] = result

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dock-upload") as pool:
            list(pool.map(work, pending))
        return report

    def _upload(self, clip: RecordedClip, key: str) -> UploadResult:
        url = self.state.get(key).get("upload_url")

        def remember(new_url: str) -> None:
            self.state.update(key, upload_url=new_url, done=False)

        try:
            result = self.dock.upload(clip, upload_url=url, on_created=remember)
        except UploadRefused as exc:
            if url is None or exc.status not in (404, 410):
                raise
            log.warning("upload %s for %s is gone (%d); starting again", url, clip.path, exc.status)
            self.state.forget_url(key)
            result = self.dock.upload(clip, on_created=remember)
        self.state.update(
            key,
            upload_url=result.upload_url,
            done=True,
            evidence_item_id=result.evidence_item_id,
            evidence_status=result.evidence_status,
        )
        return result
