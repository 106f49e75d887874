"""How clip parts travel to S3: a few per upload, a bounded number across the service, the last one
beside the others; and a slow store is given time to take a request body."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import urllib3

from storage.objects import _pool_manager
from tests.clipkit import clip_metadata, enrol, sha256
from tests.test_dock_capacity import _live

MiB = 1024 * 1024


class _Watch:
    """Wraps ``upload_part``: slows it down and records how many run at once, per upload and in all."""

    def __init__(self, store, delay: float) -> None:  # type: ignore[no-untyped-def]
        self.inner = store.upload_part
        self.delay = delay
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.total = 0
        self.most_total = 0
        self.spans: dict[tuple[str, int], tuple[float, float, int]] = {}
        store.upload_part = self

    def __call__(self, key: str, upload_id: str, number: int, data) -> str:  # type: ignore[no-untyped-def]
        with self.lock:
            self.now[key] = self.now.get(key, 0) + 1
            self.most[key] = max(self.most.get(key, 0), self.now[key])
            self.total += 1
            self.most_total = max(self.most_total, self.total)
        start = time.monotonic()
        try:
            time.sleep(self.delay)
            return self.inner(key, upload_id, number, data)
        finally:
            with self.lock:
                self.now[key] -= 1
                self.total -= 1
                self.spans[(key, number)] = (start, time.monotonic(), len(data))


def _upload(url: str, fleet, data: bytes, name: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    h = fleet.dock_headers()
    r = httpx.post(
        f"{url}/api/v1/dock/uploads",
        headers={
            **h,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename=name),
        },
    )
    r.raise_for_status()
    patch = {**h, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    return httpx.patch(url + r.headers["location"], content=data, headers=patch, timeout=120)


def test_parts_in_flight_per_upload_and_across_the_service(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    s, server, thread, url, admin = _live(tmp_path, seaweed, upload_parts_in_flight=2, upload_part_senders=3)
    try:
        watch = _Watch(s.store, delay=0.15)
        fleet = enrol(url, admin)
        clips = [os.urandom(4 * 5 * MiB + 1000 + i) for i in range(4)]  # four full parts and a short one
        # One upload alone has senders to spare: its parts travel two at a time, never more.
        alone = _upload(url, fleet, clips[3], "c3.mp4")
        assert alone.status_code == 204, alone.text
        assert list(watch.most.values()) == [2], watch.most
        watch.most.clear()
        # Three at once share the three service-wide senders, each within its own two.
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda i: _upload(url, fleet, clips[i], f"c{i}.mp4"), range(3)))
        for r in answers:
            assert r.status_code == 204, r.text
            assert r.headers["evidence-status"] == "stored"  # the stored bytes hash to the camera's hash
        assert len(watch.most) == 3
        assert max(watch.most.values()) <= 2, watch.most  # never more than upload_parts_in_flight per clip
        assert watch.most_total == 3  # the service-wide senders are shared, and used
        for clip, item in zip(clips[:3], answers, strict=True):
            r = httpx.get(
                f"{url}/api/v1/evidence/{item.headers['evidence-item-id']}/content",
                headers=admin,
                params={"reason": "checking the upload"},
            )
            assert r.status_code == 200 and r.content == clip
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def test_last_short_part_travels_beside_the_others(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    s, server, thread, url, admin = _live(tmp_path, seaweed, upload_parts_in_flight=3)
    try:
        watch = _Watch(s.store, delay=0.5)
        fleet = enrol(url, admin)
        r = _upload(url, fleet, os.urandom(2 * 5 * MiB + 12345), "short-tail.mp4")
        assert r.status_code == 204 and r.headers["evidence-status"] == "stored"
        spans = sorted(watch.spans.values())
        assert [size for _, _, size in spans] == [5 * MiB, 5 * MiB, 12345]
        first_end = min(end for _, end, _ in spans[:2])
        tail_start = spans[2][0]
        # The short part set off before the full ones were stored, not after them.
        assert tail_start < first_end, (tail_start, first_end)
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def _slow_reader(server: socket.socket, got: list[int]) -> None:
    """Accept one request and read its body slowly (about 2 MB/s), then answer 200."""
    conn, _ = server.accept()
    with conn:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        n = len(body)
        while n < length:
            chunk = conn.recv(32768)
            if not chunk:
                break
            n += len(chunk)
            time.sleep(0.015)
        got.append(n)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("ours", [True, False])
def test_a_slow_store_gets_the_read_timeout_for_a_body(ours: bool) -> None:
    """urllib3 sends a body under the connect timeout, counted by ``sendall`` over the whole body;
    the store's pool gives it the read timeout instead (the plain pool shows the failure it avoids)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    got: list[int] = []
    reader = threading.Thread(target=_slow_reader, args=(server, got), daemon=True)
    reader.start()
    body = os.urandom(8 * MiB)
    if ours:
        http = _pool_manager(0.5, 30.0, 2)
    else:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=0.5, read=30.0), retries=False)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/bucket/key"
    started = time.monotonic()
    try:
        if ours:
            r = http.request("PUT", url, body=body, retries=False)
            assert r.status == 200
            assert got == [len(body)]
            assert time.monotonic() - started > 0.5  # it outlasted the connect timeout
        else:
            with pytest.raises(urllib3.exceptions.HTTPError):
                http.request("PUT", url, body=body)
    finally:
        server.close()
        reader.join(15)


def test_refused_final_chunk_leaves_no_trace_and_its_retry_completes(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    """The last part may set off before the request's checksum is checked; a mismatch still rolls back."""
    import base64
    import hashlib

    s, server, thread, url, admin = _live(tmp_path, seaweed)
    try:
        fleet = enrol(url, admin)
        h = fleet.dock_headers()
        data = os.urandom(2 * 5 * MiB + 1000)
        r = httpx.post(
            f"{url}/api/v1/dock/uploads",
            headers={
                **h,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename="chunks.mp4"),
            },
        )
        loc = url + r.headers["location"]

        def patch(offset: int, body: bytes, digest_of: bytes) -> httpx.Response:
            digest = base64.b64encode(hashlib.sha256(digest_of).digest()).decode()
            return httpx.patch(
                loc,
                content=body,
                headers={
                    **h,
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Offset": str(offset),
                    "Upload-Checksum": f"sha256 {digest}",
                },
                timeout=60,
            )

        cut = 5 * MiB + 500  # a full part and a staged tail
        assert patch(0, data[:cut], data[:cut]).status_code == 204
        rest = data[cut:]
        wrong = patch(cut, rest, rest[:-1] + bytes([rest[-1] ^ 1]))
        assert wrong.status_code == 460
        assert httpx.head(loc, headers=h).headers["upload-offset"] == str(cut)
        done = patch(cut, rest, rest)
        assert done.status_code == 204 and done.headers["evidence-status"] == "stored"
        got = httpx.get(
            f"{url}/api/v1/evidence/{done.headers['evidence-item-id']}/content",
            headers=admin,
            params={"reason": "checking the upload"},
        )
        assert got.status_code == 200 and got.content == data
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def test_part_bodies_are_signed_unless_the_store_is_on_loopback() -> None:
    """Unsigned bodies only where there is no wire to guard (TLS: minio's own choice)."""
    from storage.objects import ObjectStore, is_loopback

    assert is_loopback("127.0.0.1:8333") and is_loopback("[::1]:8333") and is_loopback("LOCALHOST:9000")
    assert is_loopback("::1") and is_loopback("127.0.0.1")
    assert not is_loopback("10.0.0.5:9000") and not is_loopback("s3.example.org:443")

    def store(endpoint: str) -> ObjectStore:
        return ObjectStore(endpoint, "a", "b", bucket="ev-bucket", staging_bucket="ev-staging")

    host = "127.0.0.1:8333"
    headers, _ = store(host).client._build_headers(host, {}, b"body", store(host).client._provider.retrieve())
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" and headers["Content-Length"] == "4"
    remote = store("10.0.0.5:9000")
    headers, _ = remote.client._build_headers(
        "10.0.0.5:9000", {}, b"body", remote.client._provider.retrieve()
    )
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"body").hexdigest()


def test_a_request_lets_its_part_buffers_go_when_it_ends(tmp_path: Path, seaweed, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without waiting for Python's cycle collector: a finished clip, an interrupted one (its tail
    staged) and a refused one keep none of their part buffers once answered."""
    import gc
    import weakref

    from ingest import uploads

    writers: list[weakref.ref[uploads._PartWriter]] = []
    init = uploads._PartWriter.__init__

    def recorded(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        writers.append(weakref.ref(self))

    monkeypatch.setattr(uploads._PartWriter, "__init__", recorded)
    s, server, thread, url, admin = _live(tmp_path, seaweed)
    gc.disable()
    try:
        fleet = enrol(url, admin)
        whole = _upload(url, fleet, os.urandom(2 * 5 * MiB + 12345), "whole.mp4")
        assert whole.status_code == 204 and whole.headers["evidence-status"] == "stored"
        h = fleet.dock_headers()
        data = os.urandom(2 * 5 * MiB + 1000)
        r = httpx.post(
            f"{url}/api/v1/dock/uploads",
            headers={
                **h,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data), filename="parts.mp4"),
            },
        )
        loc = url + r.headers["location"]
        patch = {**h, "Content-Type": "application/offset+octet-stream"}
        cut = 5 * MiB + 500  # a full part and a staged tail
        assert (
            httpx.patch(loc, content=data[:cut], headers={**patch, "Upload-Offset": "0"}).status_code == 204
        )
        past = httpx.patch(loc, content=data[cut:] + b"x", headers={**patch, "Upload-Offset": str(cut)})
        assert past.status_code == 400 and past.json()["reason"] == "exceeds_length"
        assert len(writers) == 3
        kept = [w for w in (ref() for ref in writers) if w is not None]
        assert [(len(w.buffer), len(w.spare)) for w in kept] == [(0, 0)] * len(kept)
    finally:
        gc.enable()
        server.should_exit = True
        thread.join(15)
        s.db.dispose()
