"""Helpers shared by the alarm tests (no tests here): signed device messages, enrolment, a private broker."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

import alarms.lifecycle
from alarms.models import AlarmOutbox
from chain_of_custody.models import CustodyEntry
from devices.broker_access import BrokerAccount, BrokerProcess, hash_password, start_private_broker
from devices.lone_worker_wire import canonical_json, format_time, sign_payload, topic_for
from devices.service import add_staff, broker_accounts, enrol_lone_worker

SERVICE_USER = "evidence-service"


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class DeviceKit:
    """A lone-worker device as the tests drive it directly: its key, its sequence, signed messages."""

    device_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    password: str | None = None

    @property
    def public_b64(self) -> str:
        return base64.b64encode(raw_public(self.key)).decode()

    def payload(
        self,
        type_: str,
        body: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
        seq: int | None = None,
        sent_at: datetime | None = None,
        occurred_at: datetime | None = None,
        battery: int | None = 80,
        sign: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        now = sent_at or datetime.now(UTC)
        out: dict[str, Any] = {
            "v": 1,
            "device_id": self.device_id,
            "event_id": event_id or str(uuid.uuid4()),
            "seq": seq,
            "type": type_,
            "sent_at": format_time(now),
            "position": {"lat": 51.5072, "lon": -0.1276, "accuracy_m": 8},
        }
        if battery is not None:
            out["battery"] = battery
        if type_ in ("alarm", "checkin"):
            out["occurred_at"] = format_time(occurred_at or now)
        if body is not None:
            out[type_] = body
        out.update(extra)
        return sign_payload(out, self.key) if sign else out

    def message(self, type_: str, body: dict[str, Any] | None = None, **kw: Any) -> tuple[str, bytes]:
        payload = self.payload(type_, body, **kw)
        return topic_for(self.device_id, type_), canonical_json(payload)

    def sos(self, **kw: Any) -> tuple[str, bytes]:
        return self.message("alarm", {"kind": "sos", "action": "raise"}, **kw)

    def amber(self, timeout_s: int, **kw: Any) -> tuple[str, bytes]:
        return self.message("alarm", {"kind": "amber", "action": "raise", "amber_timeout_s": timeout_s}, **kw)

    def cancel(self, ref_event_id: str, kind: str = "amber", **kw: Any) -> tuple[str, bytes]:
        return self.message("alarm", {"kind": kind, "action": "cancel", "ref_event_id": ref_event_id}, **kw)

    def checkin_start(self, visit_id: str, expected_end: datetime, **kw: Any) -> tuple[str, bytes]:
        body = {"action": "start", "visit_id": visit_id, "expected_end": format_time(expected_end)}
        return self.message("checkin", body, **kw)

    def checkin_end(self, visit_id: str, **kw: Any) -> tuple[str, bytes]:
        return self.message("checkin", {"action": "end", "visit_id": visit_id}, **kw)

    def heartbeat(self, battery: int = 80, **kw: Any) -> tuple[str, bytes]:
        return self.message("heartbeat", None, battery=battery, **kw)

    def voice_memo_headers(
        self, event_id: str, data: bytes, content_type: str = "audio/ogg", sent_at: datetime | None = None
    ) -> dict[str, str]:
        import hashlib

        from alarms.voice_memos import voice_memo_manifest

        sent_at = format_time(sent_at or datetime.now(UTC))
        digest = hashlib.sha256(data).hexdigest()
        manifest = voice_memo_manifest(self.device_id, event_id, digest, len(data), content_type, sent_at)
        return {
            "Content-Type": content_type,
            "X-Device-Sent-At": sent_at,
            "X-Device-Content-SHA256": digest,
            "X-Device-Signature": base64.b64encode(self.key.sign(manifest)).decode(),
        }

    def admit_voice_memo(self, alarms: Any, event_id: str) -> Any:
        """Ask the service to admit a small memo of this device's alarm, signed by this kit's key."""
        headers = self.voice_memo_headers(event_id, b"OggS" + bytes(60))
        return alarms.voice_memos.admit(
            self.device_id,
            event_id,
            sha256=headers["X-Device-Content-SHA256"],
            size=64,
            content_type=headers["Content-Type"],
            sent_at=headers["X-Device-Sent-At"],
            signature=headers["X-Device-Signature"],
        )


def seal_as_enrolled(session: Any, ledger: Any) -> int:
    """Record and seal every device row planted without a seal, as the service's enrolment would
    (a ``device_enrolled`` entry on its subject, the row sealed bound to it); how many."""
    from devices.models import Device
    from devices.seals import record_device

    planted = list(session.scalars(select(Device).where(Device.seal.is_(None)).order_by(Device.id)))
    for d in planted:
        details = {"device": d.id, "kind": d.kind, "site": d.site, "staff": d.assigned_staff_id}
        record_device(session, ledger, d, "device_enrolled", "test", details)
    return len(planted)


def enrol(
    services: Any, device_id: str, staff_id: str | None = "S-1", site: str | None = "Ward 7"
) -> DeviceKit:
    """Enrol a device (and its member of staff) straight into the registry."""
    kit = DeviceKit(device_id)
    with services.db.session() as session:
        if staff_id is not None:
            add_staff(session, services.ledger, staff_id, f"Staff {staff_id}", "nurse", site, actor="test")
        enrolled = enrol_lone_worker(
            session, services.ledger, device_id, kit.public_b64, "test", staff_id=staff_id, site=site
        )
        kit.password = enrolled.mqtt_password
    return kit


def outbox(services: Any, target: str | None = None) -> list[AlarmOutbox]:
    with services.db.session() as session:
        q = select(AlarmOutbox).order_by(AlarmOutbox.id)
        if target is not None:
            q = q.where(AlarmOutbox.target == target)
        return list(session.scalars(q))


def acks(services: Any, device_id: str) -> list[dict[str, Any]]:
    """Acks queued for a device, decoded, oldest first."""
    return [json.loads(r.payload) for r in outbox(services, topic_for(device_id, "ack"))]


def custody(services: Any, item_id: str) -> list[CustodyEntry]:
    with services.db.session() as session:
        return list(
            session.scalars(
                select(CustodyEntry).where(CustodyEntry.item_id == item_id).order_by(CustodyEntry.item_seq)
            )
        )


def later(seconds: float, start: datetime | None = None) -> datetime:
    return (start or datetime.now(UTC)) + timedelta(seconds=seconds)


def service_password() -> str:
    return "service-" + uuid.uuid4().hex


def start_broker(directory: Path, services: Any, service_pw: str) -> BrokerProcess:
    """A private Mosquitto from the project's template, with accounts generated from the registry."""
    with services.db.session() as session:
        devices = broker_accounts(session)
    return start_private_broker(
        directory, devices=devices, service=BrokerAccount(SERVICE_USER, hash_password(service_pw))
    )


def refresh_broker(broker: BrokerProcess, services: Any, service_pw: str) -> None:
    with services.db.session() as session:
        devices = broker_accounts(session)
    broker.update_accounts(devices=devices, service=BrokerAccount(SERVICE_USER, hash_password(service_pw)))


class WebhookReceiver:
    """A tiny HTTP server that records every POST (the escalation endpoint)."""

    def __init__(self, status: int = 200) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.status = status
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.cond:
                    receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.cond.notify_all()
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/escalations"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"webhook called {len(self.calls)} times, expected {count}")
            return list(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse ``text/event-stream`` lines into events (``id``, ``event``, ``data`` as JSON)."""
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value


_TEST_DEVICES: dict[int, dict[str, DeviceKit]] = {}  # per services object, devices enrolled here


def raise_test_alarm(services: Any, device_id: str = "LW-MATRIX", site: str = "NORTH") -> str:
    """A fresh SOS alarm from an enrolled device (enrolled on first use, at ``site``: the site the
    role tests' people work at); returns its id."""
    from devices.models import Device

    cache = _TEST_DEVICES.setdefault(id(services), {})
    kit = cache.get(device_id)
    if kit is None:
        with services.db.session() as session:
            known = session.get(Device, device_id) is not None
        kit = enrol(services, device_id, staff_id=None, site=site) if not known else None
        assert kit is not None, f"{device_id} was enrolled outside raise_test_alarm"
        cache[device_id] = kit
    result = services.alarms.handle(*kit.sos())
    assert result.outcome == "accepted" and result.alarm_id, result
    return result.alarm_id


def count_lifecycle_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the alarms whose lifecycle seal is checked from now on, in the order checked (the
    list fills as the service checks them; clear it between passes)."""
    checked: list[str] = []
    holds = alarms.lifecycle.lifecycle_holds

    def counted(secret: bytes, row: Any) -> bool:
        checked.append(str(row.id))
        return holds(secret, row)

    monkeypatch.setattr(alarms.lifecycle, "lifecycle_holds", counted)
    return checked
