"""Voice memo uploads against the running service on the real SeaweedFS: a request that is not the
device's own is refused before its body is read, one device cannot hold every reader, and a memo
quarantined on the way can be sent again as a new item beside the old one."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from alarms.models import AlarmRecord
from chain_of_custody.models import CustodyEntry, EvidenceItem
from storage.embedded import EmbeddedSeaweed
from tests.conftest import make_settings, start_server
from tests.test_alarms_kit import DeviceKit, enrol

MEMO_LIMIT = 8 * 1024 * 1024


@dataclass
class Service:
    url: str
    host: str
    port: int
    services: Any

    def amber(self, kit: DeviceKit) -> str:
        """An amber alarm of this device, raised through the alarm service; its event id."""
        topic, raw = kit.amber(600)
        assert self.services.alarms.handle(topic, raw).outcome == "accepted"
        return str(json.loads(raw)["event_id"])

    def path(self, kit: DeviceKit, event_id: str) -> str:
        return f"/api/v1/lone-worker/devices/{kit.device_id}/alarms/{event_id}/voice-memo"


def _serve(services: Any) -> Iterator[Service]:
    server, thread, url = start_server(services)
    host, port = url.removeprefix("http://").split(":")
    yield Service(url, host, int(port), services)
    server.should_exit = True
    thread.join(15)
    services.db.dispose()


@pytest.fixture
def memo_service(tmp_path: Path, seaweed: EmbeddedSeaweed) -> Iterator[Service]:
    from ingest.services import build_services

    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'evidence.db'}",
        seaweed,
        max_voice_memo_uploads=3,
        max_voice_memo_uploads_per_device=2,
    )
    yield from _serve(build_services(settings))


@pytest.fixture
def memo_service_any_db(services: Any) -> Iterator[Service]:
    yield from _serve(services)


def _open_upload(
    service: Service, kit: DeviceKit, event_id: str, memo: bytes, part: int, **headers: str
) -> socket.socket:
    """Send a memo's headers and the first ``part`` bytes of its body, and leave the rest unsent."""
    sign = {**kit.voice_memo_headers(event_id, memo), **headers}
    lines = [f"PUT {service.path(kit, event_id)} HTTP/1.1", f"Host: {service.host}:{service.port}"]
    lines += [f"{k}: {v}" for k, v in sign.items()]
    lines += [f"Content-Length: {len(memo)}", "", ""]
    s = socket.create_connection((service.host, service.port), timeout=10)
    s.sendall("\r\n".join(lines).encode() + memo[:part])
    return s


def _answer(s: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and JSON body of the answer on this socket (waits at most ``timeout``)."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no whole answer within {timeout} s: {data[:200]!r}")
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(body) if body else {}


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_memo_not_signed_by_its_device_is_refused_before_its_body(memo_service: Service) -> None:
    """8 MiB announced, 1 KiB sent, a signature by another key: the 401 comes at once, without
    waiting for the body (before, the service read up to 8 MiB from anyone before checking)."""
    service = memo_service
    kit = enrol(service.services, "LW-M1")
    event_id = service.amber(kit)
    memo = b"OggS" + bytes(MEMO_LIMIT - 4)
    forger = DeviceKit("LW-M1")  # the same device id, another key
    forged = forger.voice_memo_headers(event_id, memo)
    lines = _Lines()  # the refusal's log line (the service's logging replaces the root's handlers)
    ingest_log = logging.getLogger("ingest")
    level = ingest_log.level
    ingest_log.addHandler(lines)
    ingest_log.setLevel(logging.INFO)
    started = time.monotonic()
    s = _open_upload(service, kit, event_id, memo, 1024, **forged)
    try:
        status, _, body = _answer(s)
    finally:
        s.close()
    assert (status, body["reason"]) == (401, "bad_signature")
    assert time.monotonic() - started < 5
    ingest_log.removeHandler(lines)
    ingest_log.setLevel(level)
    assert any(getattr(r, "reason", None) == "bad_signature" for r in lines.records)
    # A request without the declared digest is refused from its headers too.
    bare = {k: v for k, v in kit.voice_memo_headers(event_id, memo[:10]).items() if "SHA256" not in k}
    r = httpx.put(service.url + service.path(kit, event_id), content=memo[:10], headers=bare)
    assert (r.status_code, r.json()["reason"]) == (400, "no_digest")
    with service.services.db.session() as session:
        assert session.query(EvidenceItem).filter_by(kind="voice_memo").count() == 0


def test_one_device_cannot_hold_every_memo_reader(memo_service: Service) -> None:
    """Two slow uploads of one device fill its share: its third is 429 at once while another device
    is still served; the process's whole (3) full, a third device gets 503. Nothing accepted is lost:
    the held uploads finish and are stored."""
    service = memo_service
    noisy, quiet, third = (enrol(service.services, d, staff_id=f"S-{d}") for d in ("LW-N1", "LW-Q1", "LW-T1"))
    held: list[tuple[socket.socket, bytes]] = []
    try:
        for _ in range(2):
            memo = b"OggS" + bytes(range(256)) * 64
            event_id = service.amber(noisy)
            held.append((_open_upload(service, noisy, event_id, memo, 100), memo))
        # Admission is checked before a slot is taken; wait until both hold theirs.
        deadline = time.monotonic() + 10
        while service.services.alarms.memo_uploads.held("LW-N1") < 2:
            assert time.monotonic() < deadline, "the two uploads never started"
            time.sleep(0.02)
        memo = b"OggS" + b"n" * 5000
        extra = _open_upload(service, noisy, service.amber(noisy), memo, len(memo))
        status, headers, body = _answer(extra)
        extra.close()
        assert (status, body["reason"]) == (429, "too_many_uploads") and int(headers["retry-after"]) > 0

        quiet_memo = b"OggS" + b"q" * 5000
        q = _open_upload(service, quiet, service.amber(quiet), quiet_memo, 100)
        held.append((q, quiet_memo))
        deadline = time.monotonic() + 10
        while service.services.alarms.memo_uploads.held() < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t_memo = b"OggS" + b"t" * 5000
        t = _open_upload(service, third, service.amber(third), t_memo, len(t_memo))
        status, headers, body = _answer(t)
        t.close()
        assert (status, body["reason"]) == (503, "busy") and "retry-after" in headers

        for s, memo in held:
            s.sendall(memo[100:])
            status, _, body = _answer(s)
            assert (status, body["status"]) == (201, "stored"), body
        assert service.services.alarms.memo_uploads.held() == 0
    finally:
        for s, _ in held:
            s.close()
    # The refused device, once its uploads are done, is served again.
    event_id = service.amber(noisy)
    memo = b"OggS" + b"again" * 100
    r = httpx.put(
        service.url + service.path(noisy, event_id),
        content=memo,
        headers=noisy.voice_memo_headers(event_id, memo),
    )
    assert r.status_code == 201, r.text


def test_a_quarantined_memo_is_sent_again_as_a_new_item(memo_service_any_db: Service) -> None:
    """Bytes damaged on the way are kept quarantined; the device sends the memo again, signed later:
    a new item beside the quarantined one, which its custody names, and the alarm's memo is the new
    one (before, the re-send was refused 409 memo_exists)."""
    service = memo_service_any_db
    s = service.services
    kit = enrol(s, "LW-R1")
    event_id = service.amber(kit)
    url = service.url + service.path(kit, event_id)
    memo = b"OggS" + bytes(range(256)) * 100
    signed = kit.voice_memo_headers(event_id, memo, sent_at=datetime.now(UTC) - timedelta(seconds=5))
    damaged = memo[:-1] + b"\x00"
    r = httpx.put(url, content=damaged, headers=signed)
    assert (r.status_code, r.json()["status"]) == (201, "quarantined"), r.text
    quarantined = r.json()["evidence_item_id"]

    # The same request again (a replay, or a retry signed no later) does not make another copy.
    r = httpx.put(url, content=memo, headers=signed)
    assert (r.status_code, r.json()["reason"]) == (409, "stale_resend")
    r = httpx.put(url, content=memo, headers=kit.voice_memo_headers(event_id, memo))
    assert (r.status_code, r.json()["status"]) == (201, "stored"), r.text
    resent = r.json()["evidence_item_id"]
    assert resent != quarantined

    with s.db.session() as session:
        old = session.get(EvidenceItem, quarantined)
        new = session.get(EvidenceItem, resent)
        assert old is not None and new is not None
        assert (old.status, new.status) == ("quarantined", "stored")
        assert old.object_key != new.object_key and new.sha256 == hashlib.sha256(memo).hexdigest()
        alarm = session.query(AlarmRecord).filter_by(source_event_id=event_id).one()
        assert alarm.voice_memo_item_id == resent
        received = session.query(CustodyEntry).filter_by(item_id=resent, action="received").one()
        assert json.loads(received.details)["resent_for"] == [quarantined]
        changed = [
            json.loads(e.details) for e in session.query(CustodyEntry).filter_by(action="alarm_changed")
        ]
        changed = [c for c in changed if c.get("alarm_id") == alarm.id and "voice_memo" in c]
        assert [c.get("replaces") for c in changed if "voice_memo" in c] == [None, quarantined]
        old_key, old_version = old.object_key, old.version_id
    assert s.store.get_bytes(old_key, old_version) == damaged  # the quarantined copy is kept, unchanged

    # Now the alarm has a stored memo: the same again is absorbed, a different one refused.
    r = httpx.put(url, content=memo, headers=kit.voice_memo_headers(event_id, memo))
    assert (r.status_code, r.json()["evidence_item_id"]) == (200, resent)
    other = memo + b"more"
    r = httpx.put(url, content=other, headers=kit.voice_memo_headers(event_id, other))
    assert (r.status_code, r.json()["reason"]) == (409, "memo_exists")
