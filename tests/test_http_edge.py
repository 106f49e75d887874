"""The HTTP edge has limits, met with raw sockets by the server ``evidence serve`` runs (``ingest.http_edge``).

A 64 MB header is refused with 431; half-sent requests and stalled bodies are closed after their
timeouts; twenty unfinished 8 MB headers do not grow the server's memory; one address cannot hold
more than its share of connections, and another address is still served.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage.embedded import EmbeddedSeaweed
from tests.conftest import make_settings, start_server, wait_for

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
PER_CLIENT = 8


@dataclass
class Edge:
    host: str
    port: int
    max_header_bytes: int


@pytest.fixture
def edge(tmp_path: Path, seaweed: EmbeddedSeaweed) -> Iterator[Edge]:
    from ingest.services import build_services

    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'evidence.db'}",
        seaweed,
        http_header_timeout_seconds=HEADER_TIMEOUT,
        http_body_idle_timeout_seconds=BODY_TIMEOUT,
        http_max_connections_per_client=PER_CLIENT,
    )
    services = build_services(settings)
    server, thread, url = start_server(services)
    host, port = url.removeprefix("http://").split(":")
    yield Edge(host, int(port), settings.http_max_header_bytes)
    server.should_exit = True
    thread.join(15)
    services.db.dispose()


def _connect(edge: Edge, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(30)
    s.connect((edge.host, edge.port))
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _healthz(edge: Edge, source: str = "127.0.0.1") -> bytes:
    with _connect(edge, source) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(s)


def _send_big_header(s: socket.socket, total: int) -> None:
    """A request whose one header is ``total`` bytes long, sent in 64 KiB pieces until refused."""
    piece = b"a" * 65536
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(total // len(piece)):
            s.sendall(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_a_64_mb_header_is_refused_with_431(edge: Edge) -> None:
    with _connect(edge) as s:
        _send_big_header(s, 64 * 1024 * 1024)
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["reason"] == "headers_too_large"
    assert _healthz(edge).startswith(b"HTTP/1.1 200")
    # a header block just under the limit is still served
    with _connect(edge) as s:
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Fill: "
            + b"f" * (edge.max_header_bytes - 200)
            + b"\r\n\r\n"
        )
        assert _read_all(s).startswith(b"HTTP/1.1 200")


def test_half_sent_requests_are_closed_after_the_header_timeout(edge: Edge) -> None:
    sockets = [_connect(edge) for _ in range(PER_CLIENT - 2)]
    sockets[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
    sockets[1].sendall(b"GET /hea")
    # (the others send nothing at all)
    t0 = time.monotonic()
    answers = [_read_all(s) for s in sockets]
    elapsed = time.monotonic() - t0
    for s in sockets:
        s.close()
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers), answers
    assert HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 5, elapsed


def test_a_trickled_header_is_closed_at_its_deadline_not_kept_alive_by_each_byte(edge: Edge) -> None:
    stop = threading.Event()
    with _connect(edge) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()

        def drip() -> None:
            while not stop.wait(0.3):
                try:
                    s.sendall(b"X-Drip: 1\r\n")
                except OSError:
                    return

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            answer = _read_all(s)
        finally:
            stop.set()
            dripper.join(5)
        elapsed = time.monotonic() - t0
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 5, elapsed


def test_a_stalled_body_is_closed_after_the_idle_timeout(edge: Edge) -> None:
    with _connect(edge) as s:
        s.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nusername=a"
        )
        t0 = time.monotonic()
        _read_all(s)
        elapsed = time.monotonic() - t0
    assert BODY_TIMEOUT - 0.5 < elapsed < BODY_TIMEOUT + 5, elapsed
    assert _healthz(edge).startswith(b"HTTP/1.1 200")


def test_a_body_read_in_many_pieces_sets_its_idle_timer_once(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that keeps coming, forty pieces over longer than the idle timeout, is read whole and
    answered; its idle timer is set when the headers end, not again for each piece read (a clip's
    megabytes arrive in thousands of reads)."""
    from ingest.http_edge import EdgeProtocol

    armed: list[str] = []
    arm = EdgeProtocol._arm

    def counted(self: EdgeProtocol, seconds: float, callback: Any) -> None:
        armed.append(callback.__name__)
        arm(self, seconds, callback)

    monkeypatch.setattr(EdgeProtocol, "_arm", counted)
    body = b"username=a&password=" + b"b" * 79
    pieces = [body[i : i + 2] for i in range(20, len(body), 2)]
    with _connect(edge) as s:
        s.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:20]
        )
        for piece in pieces:  # 40 pieces, 75 ms apart: 3 s in all, each gap well inside the timeout
            time.sleep(BODY_TIMEOUT * 0.0375)
            s.sendall(piece)
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]  # read whole and answered, not cut off
    assert armed.count("_body_idle") <= 2, armed  # set when the headers end (and once again at most)
    monkeypatch.undo()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_twenty_unfinished_8_mb_headers_do_not_grow_memory(edge: Edge) -> None:
    before = _rss_mb()
    sockets = [_connect(edge, f"127.0.1.{i + 1}") for i in range(20)]
    senders = [threading.Thread(target=_send_big_header, args=(s, 8 * 1024 * 1024)) for s in sockets]
    for t in senders:
        t.start()
    for t in senders:
        t.join(60)
    grown = _rss_mb() - before
    print(f"memory grown with twenty unfinished 8 MB headers: {grown:.1f} MB")
    for s in sockets:
        s.close()
    assert grown < 30, f"server memory grew {grown:.0f} MB"  # before the limit: 123 MB


def test_one_address_cannot_hold_more_than_its_share_of_connections(edge: Edge) -> None:
    held = [_connect(edge, "127.0.0.2") for _ in range(PER_CLIENT)]
    try:
        with _connect(edge, "127.0.0.2") as extra:
            answer = _read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after" in answer.lower(), answer[:200]
        assert _healthz(edge, "127.0.0.3").startswith(b"HTTP/1.1 200")  # another address is served
    finally:
        for s in held:
            s.close()
    # once its connections close, the address is served again
    assert wait_for(lambda: _healthz(edge, "127.0.0.2").startswith(b"HTTP/1.1 200"), 10, what="a freed slot")


def test_a_body_over_the_limit_is_refused_with_413_except_where_it_streams(edge: Edge) -> None:
    big = 9 * 1024 * 1024
    with _connect(edge) as s:
        s.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(big).encode() + b"\r\n\r\n"
        )
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, answer[:300]
    with _connect(edge) as s:  # chunked: counted as it is read
        s.sendall(
            b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n"
        )
        chunk = b"a" * 65536
        try:
            for _ in range(big // len(chunk)):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_the_header_limit_holds_for_the_next_request_on_a_kept_alive_connection(edge: Edge) -> None:
    with _connect(edge) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not (b'{"status":"ok",' in first and first.endswith(b"}")):  # the whole answer read
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        _send_big_header(s, 8 * 1024 * 1024)
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
