"""Lone-worker alarms end to end: simulated devices on a private Mosquitto started from the project's
generated configuration, the service running (HTTP API, MQTT consumer, escalation loop) on the real
SeaweedFS, operators using the REST API and the live stream."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY
from sqlalchemy import select

from alarms.models import AlarmOutbox, AlarmRecord, LoneWorkerEvent
from alarms.service import AlarmService
from chain_of_custody.keys import verify_signature
from chain_of_custody.verify import verify_service
from devices.broker_access import BrokerAccount, BrokerProcess, hash_password, start_private_broker
from devices.lone_worker_wire import Accepted, DeviceKey, ReplayState, canonical_json, verify_device_message
from devices.models import LoneWorkerState
from devices.service import broker_accounts
from firmware_simulators.lone_worker import LoneWorkerDevice
from ingest.services import build_services
from tests.clipkit import canonical
from tests.conftest import SIGN_IN_TIMEOUT, make_settings, recorded_user, start_server, wait_for
from tests.test_alarms_fuzz import FUZZ, build_mutated, mutated_batch
from tests.test_alarms_kit import SERVICE_USER, DeviceKit, WebhookReceiver, raw_public, sse_events
from tests.test_lone_worker_broker import SUBACK_REFUSED, Probe, hostile_subscriptions

PASSWORD = "operator password 1"


@dataclass
class Stack:
    url: str
    services: Any
    broker: BrokerProcess
    service_password: str
    hook: WebhookReceiver
    admin: dict[str, str]
    tmp: Path
    kits: dict[str, DeviceKit] = field(default_factory=dict)
    devices: list[LoneWorkerDevice] = field(default_factory=list)
    ghosts: list[BrokerAccount] = field(default_factory=list)  # broker logins the registry does not know

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=self.admin, timeout=15, **kw)

    def enrol(self, device_id: str, staff_id: str | None = None) -> DeviceKit:
        """Enrol through the API, regenerate the broker's files from the registry and reload it."""
        kit = DeviceKit(device_id)
        if staff_id:
            self.api(
                "POST",
                "/staff",
                json={"id": staff_id, "name": f"Nurse {staff_id}", "group": "nurse", "site": "Community"},
            ).raise_for_status()
        r = self.api(
            "POST",
            "/devices/lone-workers",
            json={"id": device_id, "public_key": kit.public_b64, "staff_id": staff_id, "site": "Community"},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert (
            body["mqtt_username"] == device_id and body["service_public_key"] == self.services.key.public_b64
        )
        kit.password = body["mqtt_password"]
        self.kits[device_id] = kit
        with self.services.db.session() as session:
            accounts = broker_accounts(session)
        self.broker.update_accounts(
            devices=[*accounts, *self.ghosts],
            service=BrokerAccount(SERVICE_USER, hash_password(self.service_password)),
        )
        return kit

    def device(self, kit: DeviceKit, **options: Any) -> LoneWorkerDevice:
        device = LoneWorkerDevice(
            kit.device_id,
            kit.password or "",
            port=self.broker.port,
            private_key=kit.key,
            service_public_key=self.services.key.public_raw,
            reconnect_delay_s=0.2,
            **options,
        )
        self.devices.append(device)
        deadline = time.monotonic() + 10
        while True:  # the broker re-reads its password file asynchronously after SIGHUP
            try:
                device.connect(timeout=5)
                return device
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                device.connect_error = None
                time.sleep(0.1)

    def alarm(self, alarm_id: str) -> dict[str, Any]:
        r = self.api("GET", f"/alarms/{alarm_id}")
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, seaweed: Any) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("alarms-e2e")
    service_password = "svc-" + uuid.uuid4().hex
    broker = start_private_broker(
        tmp / "mosquitto", devices=[], service=BrokerAccount(SERVICE_USER, hash_password(service_password))
    )
    hook = WebhookReceiver()
    settings_ = make_settings(
        tmp,
        f"sqlite:///{tmp / 'evidence.db'}",
        seaweed,
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_username=SERVICE_USER,
        mqtt_password=service_password,
        mqtt_client_id=f"evidence-{uuid.uuid4().hex[:8]}",
        alarm_ack_timeout_seconds=2,
        missed_checkin_grace_seconds=1,
        escalation_poll_seconds=0.2,
        escalation_webhook_url=hook.url,
    )
    services = build_services(settings_)
    with services.db.session() as session:
        recorded_user(session, services.ledger, "admin", PASSWORD, "admin")
    server, thread, url = start_server(services)
    token = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}, timeout=SIGN_IN_TIMEOUT
    ).json()
    s = Stack(
        url,
        services,
        broker,
        service_password,
        hook,
        {"Authorization": f"Bearer {token['access_token']}"},
        tmp,
    )
    consumer = wait_for(lambda: services.mqtt_consumer, 10, what="consumer to start")
    assert consumer.wait_ready(10), broker.log_tail()
    yield s
    for device in s.devices:
        device.close()
    server.should_exit = True
    thread.join(15)
    hook.close()
    broker.stop()
    services.db.dispose()


class StreamReader:
    """Reads the SSE stream over a plain socket in a thread and keeps every alarm event.

    A plain socket so that ``close`` really hangs up (``shutdown`` wakes the blocked reader), as a
    browser tab being closed would; the server then ends the stream at once.
    """

    def __init__(self, url: str, headers: dict[str, str], last_event_id: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        parsed = httpx.URL(url)
        self.sock = socket.create_connection((parsed.host, parsed.port or 80), timeout=10)
        lines = [
            f"GET {parsed.raw_path.decode()} HTTP/1.1",
            f"Host: {parsed.host}",
            "Accept: text/event-stream",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline().decode()
        assert " 200 " in status, status
        while self.file.readline() not in (b"\r\n", b""):
            pass
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _lines(self) -> Iterator[str]:
        """The body, de-chunked, as lines."""
        buffer = b""
        while True:
            size_line = self.file.readline()
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            buffer += self.file.read(size)
            self.file.readline()
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode().rstrip("\r")

    def _run(self) -> None:
        try:
            for event in sse_events(self._lines()):
                with self.cond:
                    self.events.append(event)
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if predicate(e)), None)

        with self.cond:
            if not self.cond.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"no such event among {[e['data']['change'] for e in self.events]}")
            event = found()
        assert event is not None
        return event

    def changes(self, alarm_id: str) -> list[str]:
        with self.cond:
            return [e["data"]["change"] for e in self.events if e["data"]["alarm"]["id"] == alarm_id]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.sock.close()


def change(alarm_id: str, name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["data"]["alarm"]["id"] == alarm_id and e["data"]["change"] == name


def upload_clip(
    stack: Stack, camera_key: Ed25519PrivateKey, dock_token: str, start: datetime, wearer: str
) -> str:
    """A clip of ``wearer``'s camera recorded from ``start`` for a minute, through the dock protocol."""
    data = b"\x00\x00\x00\x18ftypmp42" + uuid.uuid4().bytes * 200
    stop = start + timedelta(minutes=1)
    manifest = {
        "camera_serial": f"CAM-{wearer}",
        "filename": f"{start:%Y%m%dT%H%M%SZ}.mp4",
        "recorded_start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recorded_stop": stop.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "v": 1,
        "wearer": wearer,
    }
    meta = {k: v for k, v in manifest.items() if k not in ("size", "v")}
    meta["signature"] = base64.b64encode(camera_key.sign(canonical(manifest))).decode()
    headers = {"Authorization": f"Bearer {dock_token}", "Tus-Resumable": "1.0.0"}
    r = httpx.post(
        f"{stack.url}/api/v1/dock/uploads",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": ",".join(
                f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in meta.items()
            ),
        },
    )
    assert r.status_code == 201, r.text
    r = httpx.patch(
        stack.url + r.headers["location"],
        content=data,
        headers={**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert r.status_code == 204 and r.headers["evidence-status"] == "stored", r.text
    return r.headers["evidence-item-id"]


def test_sos_reaches_operators_on_every_instance_with_ack_incident_and_custody(stack: Stack) -> None:
    kit = stack.enrol("LW-SOS", staff_id="S-501")
    # The wearer's camera, and a clip recorded just before the alarm (already stored when it comes).
    camera_key = Ed25519PrivateKey.generate()
    stack.api(
        "POST",
        "/devices/cameras",
        json={
            "id": "CAM-S-501",
            "public_key": base64.b64encode(raw_public(camera_key)).decode(),
            "staff_id": "S-501",
        },
    ).raise_for_status()
    dock_token = stack.api("POST", "/devices/docks", json={"id": "DOCK-SOS"}).json()["token"]
    now = datetime.now(UTC).replace(microsecond=0)
    before = upload_clip(stack, camera_key, dock_token, now - timedelta(minutes=5), "S-501")
    unrelated = upload_clip(stack, camera_key, dock_token, now - timedelta(hours=3), "S-501")

    # A second instance of the service (API only) on the same database: its stream sees everything.
    other = build_services(
        stack.services.settings.model_copy(update={"mqtt_consumer_enabled": False, "mqtt_username": None})
    )
    server, thread, other_url = start_server(other)
    stream = StreamReader(f"{other_url}/api/v1/alarms/stream", stack.admin)
    try:
        device = stack.device(kit)
        event_id = device.sos()
        latency = device.wait_ack(event_id, "received", timeout=10)
        alarm_id = device.acks_for(event_id)[0].payload["alarm_id"]
        raised = stream.wait(change(alarm_id, "raised"))
        assert raised["data"]["alarm"]["kind"] == "sos" and raised["data"]["alarm"]["severity"] == "red"
        # The ack went as soon as the alarm was stored; its evidence and incident follow it.
        linked = stream.wait(change(alarm_id, "incident_linked"))
        assert linked["data"]["alarm"]["incident_id"] and linked["data"]["alarm"]["evidence_item_id"]

        alarm = stack.alarm(alarm_id)
        assert alarm["status"] == "raised" and alarm["wearer"] == "S-501" and alarm["incident_id"]
        trail = stack.api("GET", f"/evidence/{alarm['evidence_item_id']}/custody").json()
        assert [e["action"] for e in trail][:5] == [
            "captured",
            "received",
            "stored",
            "verified",
            "alarm_raised",
        ]
        stored = stack.api("GET", f"/evidence/{alarm['evidence_item_id']}/content").content
        assert json.loads(stored)["event_id"] == event_id and json.loads(stored)["sig"]

        # The operator takes it: the device hears so, and so does every stream.
        r = stack.api("POST", f"/alarms/{alarm_id}/acknowledge")
        assert r.status_code == 200 and r.json()["status"] == "acknowledged"
        device.wait_ack(event_id, "operator_acknowledged", timeout=10)
        stream.wait(change(alarm_id, "acknowledged"))
        assert stack.api("POST", f"/alarms/{alarm_id}/acknowledge").status_code == 409

        # Footage of the wearer around the alarm is linked, whichever arrived first.
        after = upload_clip(stack, camera_key, dock_token, now + timedelta(minutes=2), "S-501")
        incident = stack.api("GET", f"/incidents/{alarm['incident_id']}").json()
        linked = {(link["kind"], link["target_id"]) for link in incident["links"]}
        assert {
            ("alarm", alarm_id),
            ("evidence", alarm["evidence_item_id"]),
            ("evidence", before),
            ("evidence", after),
        } <= linked
        assert ("evidence", unrelated) not in linked
        assert incident["category"] == "lone_worker_alarm" and incident["wearer"] == "S-501"

        r = stack.api(
            "POST", f"/alarms/{alarm_id}/resolve", json={"outcome": "genuine", "note": "police attended"}
        )
        assert r.json()["status"] == "resolved"
        device.wait_ack(event_id, "resolved", timeout=10)
        stream.wait(change(alarm_id, "resolved"))
        assert stream.changes(alarm_id) == ["raised", "incident_linked", "acknowledged", "resolved"]
        # A browser that reconnects with Last-Event-ID gets what it missed, in order.
        again = StreamReader(
            f"{stack.url}/api/v1/alarms/stream", stack.admin, last_event_id=int(raised["id"]) - 1
        )
        try:
            again.wait(change(alarm_id, "resolved"))
            assert again.changes(alarm_id) == ["raised", "incident_linked", "acknowledged", "resolved"]
        finally:
            again.close()
        assert latency < 5
    finally:
        stream.close()
        server.should_exit = True
        thread.join(15)
        other.db.dispose()
    with stack.services.db.session() as session:
        report = verify_service(session, stack.services.store, stack.services.key)
    assert report.ok, report.problems


class ControlListener:
    """The service account on the control topic, as another system on the broker would listen."""

    def __init__(self, stack: Stack) -> None:
        self.messages: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"ctl-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(SERVICE_USER, stack.service_password)
        self.client.on_connect = lambda c, *a: c.subscribe("lw/v1/_control/#", 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", stack.broker.port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append(json.loads(msg.payload))
            self.cond.notify_all()

    def wait(self, alarm_id: str, timeout: float = 15) -> dict[str, Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(m["alarm_id"] == alarm_id for m in self.messages), timeout)
            return next(m for m in self.messages if m["alarm_id"] == alarm_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_amber_that_runs_out_turns_red_and_escalates_everywhere(stack: Stack) -> None:
    kit = stack.enrol("LW-AMB1", staff_id="S-502")
    device = stack.device(kit)
    stream = StreamReader(f"{stack.url}/api/v1/alarms/stream", stack.admin)
    control = ControlListener(stack)
    try:
        event_id = device.amber(1, note="going into flat 4")
        device.wait_ack(event_id, "received", timeout=10)
        alarm_id = device.acks_for(event_id)[0].payload["alarm_id"]
        device.wait_ack(event_id, "escalated", timeout=10)  # turned red
        stream.wait(change(alarm_id, "turned_red"))
        stream.wait(change(alarm_id, "escalated"))  # nobody acknowledged within 2 s
        message = control.wait(alarm_id)
        assert message["type"] == "alarm_escalated" and message["reason"] == "ack_timeout"
        calls = [c for c in stack.hook.wait(1) if json.loads(c[1])["alarm_id"] == alarm_id]
        headers, body = calls[0]
        assert verify_signature(stack.services.key.public, headers["x-evidence-signature"], body)
        alarm = stack.alarm(alarm_id)
        assert (alarm["status"], alarm["severity"], alarm["escalation_reason"]) == (
            "escalated",
            "red",
            "ack_timeout",
        )
        assert alarm["note"] == "going into flat 4" and alarm["incident_id"]
        assert stream.changes(alarm_id) == ["raised", "turned_red", "escalated"]
    finally:
        stream.close()
        control.close()


def test_amber_cancelled_in_time_with_its_voice_memo(stack: Stack) -> None:
    kit = stack.enrol("LW-AMB2", staff_id="S-503")
    device = stack.device(kit)
    event_id = device.amber(120)
    device.wait_ack(event_id, "received", timeout=10)
    alarm_id = device.acks_for(event_id)[0].payload["alarm_id"]
    memo = b"OggS" + uuid.uuid4().bytes * 300
    url = f"{stack.url}/api/v1/lone-worker/devices/LW-AMB2/alarms/{event_id}/voice-memo"
    headers = kit.voice_memo_headers(event_id, memo)
    assert httpx.put(url, content=memo + b"!", headers=headers).status_code == 401
    r = httpx.put(url, content=memo, headers=headers)
    assert r.status_code == 201, r.text
    memo_id = r.json()["evidence_item_id"]
    assert httpx.put(url, content=memo, headers=headers).status_code == 200
    assert httpx.put(url, content=memo, headers={**headers, "Content-Type": "text/plain"}).status_code == 415

    cancel_id = device.cancel(event_id)
    device.wait_ack(cancel_id, "resolved", timeout=10)
    alarm = stack.alarm(alarm_id)
    assert (alarm["status"], alarm["outcome"], alarm["voice_memo_item_id"]) == (
        "resolved",
        "cancelled",
        memo_id,
    )
    assert stack.api("GET", f"/evidence/{memo_id}/content").content == memo
    time.sleep(0)  # nothing further may happen to it: the deadline is gone
    assert alarm["next_deadline"] is None and alarm["incident_id"] is None


def test_overdue_checkin_raises_missed_checkin_until_the_worker_checks_out(stack: Stack) -> None:
    kit = stack.enrol("LW-VISIT", staff_id="S-504")
    device = stack.device(kit)
    stream = StreamReader(f"{stack.url}/api/v1/alarms/stream", stack.admin)
    try:
        start_id = device.checkin_start("visit-42", datetime.now(UTC) + timedelta(seconds=1))
        device.wait_ack(start_id, "received", timeout=10)
        raised = stream.wait(
            lambda e: (
                e["data"]["alarm"]["kind"] == "missed_checkin"
                and e["data"]["alarm"]["device_id"] == "LW-VISIT"
            )
        )
        alarm = raised["data"]["alarm"]
        assert (
            alarm["visit_id"] == "visit-42"
            and alarm["source_event_id"] is None
            and alarm["severity"] == "amber"
        )
        device.wait_ack(device.checkin_end("visit-42"), "received", timeout=10)
        stream.wait(change(alarm["id"], "resolved"))
        assert stack.alarm(alarm["id"])["outcome"] == "cleared"
        listing = stack.api("GET", "/lone-workers").json()
        mine = next(d for d in listing if d["id"] == "LW-VISIT")
        assert (
            mine["presence"] == "online" and mine["active_visit_id"] is None and mine["staff_id"] == "S-504"
        )
    finally:
        stream.close()


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("evidence_lone_worker_rejections_total", {"reason": reason}) or 0.0


def test_every_rejection_reason_through_the_broker(stack: Stack) -> None:
    ghost = DeviceKit(
        "LW-GHOST", password="ghost-password"
    )  # the broker lets it in; the registry does not know it
    stack.ghosts.append(BrokerAccount("LW-GHOST", hash_password("ghost-password")))
    kit = stack.enrol("LW-REJ")
    loser = stack.enrol("LW-LOST")
    device = stack.device(kit)
    lost = stack.device(loser)
    stack.api("PATCH", "/devices/LW-LOST", json={"status": "disabled"}).raise_for_status()
    ghost_device = stack.device(ghost)
    counts = {
        r: rejected(r)
        for r in (
            "oversize",
            "bad_json",
            "bad_schema",
            "topic_mismatch",
            "unknown_device",
            "disabled_device",
            "bad_signature",
            "stale_sequence",
            "replay",
            "clock_skew",
            "duplicate",
        )
    }

    device.heartbeat()
    device.attack_replay(next(i for i, (t, _) in enumerate(device.sent) if t.endswith("heartbeat")))
    device.publish_raw("lw/v1/LW-REJ/alarm", b"{" + b" " * 20_000 + b"}")
    device.publish_raw("lw/v1/LW-REJ/alarm", b"\xff\xfe not json")
    device.publish_raw("lw/v1/LW-REJ/heartbeat", canonical_json({"v": 1, "type": "heartbeat"}))
    device.attack_spoof_device_id("LW-LOST")
    ghost_device.sos()
    lost.sos()
    device.attack_forged_signature()
    _, stale = kit.sos(seq=1)
    device._seq += 1000  # the device moves on, far past the replay window
    device.heartbeat()

    def moved_on() -> bool:  # alarms and heartbeats have queues of their own: no order between them
        with stack.services.db.session() as session:
            state = session.get(LoneWorkerState, "LW-REJ")
            return state is not None and ReplayState.from_json(state.replay_state).highest >= device._seq

    wait_for(moved_on, 10, what="the heartbeat far past the replay window to be handled")
    device.publish_raw("lw/v1/LW-REJ/alarm", stale)
    device.clock_offset_s = 600  # its clock runs ten minutes fast
    event_id = device.sos()
    latency = device.wait_ack(event_id, "received", timeout=15)  # it set its clock from the rejection
    assert device.acks_for(event_id)[0].status == "rejected" and abs(device.clock_offset_s) < 60
    device.resend(event_id)
    device.wait_ack(event_id, "duplicate", timeout=10)

    def all_counted() -> bool:
        return all(rejected(r) > counts[r] for r in counts)

    wait_for(all_counted, 15, what=f"every reason counted: {[r for r in counts if rejected(r) <= counts[r]]}")
    assert latency < 15
    with stack.services.db.session() as session:
        kinds = list(
            session.scalars(
                select(AlarmRecord.device_id).where(
                    AlarmRecord.device_id.in_(["LW-REJ", "LW-LOST", "LW-GHOST"])
                )
            )
        )
    assert kinds == ["LW-REJ"]  # only the SOS that was sent again after the clock correction
    consumer = stack.services.mqtt_consumer
    assert consumer.connected


_BROKER_FUZZ: dict[str, Any] = {}


def _fuzz_device(stack: Stack) -> tuple[DeviceKit, LoneWorkerDevice]:
    if "device" not in _BROKER_FUZZ:
        kit = stack.enrol("LW-FZ", staff_id="S-FZ")
        _BROKER_FUZZ["kit"], _BROKER_FUZZ["device"] = kit, stack.device(kit)
    return _BROKER_FUZZ["kit"], _BROKER_FUZZ["device"]


@settings(FUZZ, max_examples=30)
@given(batch=mutated_batch())
def test_fuzzed_payloads_through_the_broker(stack: Stack, batch: list[dict[str, Any]]) -> None:
    """300 generated payloads (30 batches of 10) published by a real device on its own topics."""
    kit, device = _fuzz_device(stack)
    for case in batch:
        case["other_topic"] = False  # the broker only lets a device publish on its own topics
        topic, raw = build_mutated({"LW-F1": kit, "LW-F2": kit, "LW-OFF": kit}, {**case, "device": 0})
        device.publish_raw(topic.replace("/LW-F1/", "/LW-FZ/"), raw)


def test_after_the_broker_fuzz_the_consumer_stands_and_only_authentic_messages_were_stored(
    stack: Stack,
) -> None:
    kit, _device = _fuzz_device(stack)
    # The consumer is still there and answers. A fresh device asks: the fuzz may have had an authentic
    # message with a very high sequence number accepted, after which LW-FZ's own next seq is stale.
    probe = stack.device(stack.enrol("LW-FZ-AFTER", staff_id="S-FZ"))
    event_id = probe.sos()
    probe.wait_ack(event_id, "received", timeout=30)
    registry = {"LW-FZ": DeviceKey(raw_public(kit.key))}
    with stack.services.db.session() as session:
        events = list(session.scalars(select(LoneWorkerEvent).where(LoneWorkerEvent.device_id == "LW-FZ")))
        alarms = list(session.scalars(select(AlarmRecord).where(AlarmRecord.device_id == "LW-FZ")))
    assert len(events) > 1
    for event in events:
        verdict = verify_device_message(
            event.raw, event.topic, registry.get, event.received_at, 300, 16384, lambda _d: ReplayState()
        )
        assert isinstance(verdict, Accepted), event.raw
    raises = {e.event_id for e in events if e.type == "alarm" and e.action == "raise"}
    assert {a.source_event_id for a in alarms if a.source_event_id} == raises
    assert stack.services.mqtt_consumer.connected


def test_effects_left_in_the_outbox_are_sent_by_the_relay(stack: Stack) -> None:
    """An instance that committed an alarm but died before publishing its ack: the ack waits in the
    outbox and the running instance's relay sends it."""
    kit = stack.enrol("LW-RELAY", staff_id="S-505")
    device = stack.device(kit)
    crashed = AlarmService(stack.services)  # no publisher: as if it died right after the commit
    topic, raw = kit.sos(seq=device.seq + 100)
    result = crashed.handle(topic, raw)
    assert result.outcome == "accepted" and result.publish  # the ack it would have sent
    event_id = json.loads(raw)["event_id"]
    wait_for(lambda: device.acks_for(event_id), 15, 0.1, "the relayed ack")
    ack = device.acks_for(event_id)[0]
    assert ack.status == "received" and ack.payload["alarm_id"] == result.alarm_id
    with stack.services.db.session() as session:
        row = session.scalars(select(AlarmOutbox).where(AlarmOutbox.id == result.publish[0].outbox_id)).one()
    wait_for(lambda: _sent(stack, row.id), 10, 0.1, "the outbox row marked sent")


def _sent(stack: Stack, row_id: int) -> bool:
    with stack.services.db.session() as session:
        return session.get(AlarmOutbox, row_id).sent_at is not None


def test_alarm_routes_by_role(stack: Stack) -> None:
    """Operators act, auditors read, investigators go through incidents, and nobody gets in without a token."""
    headers = {}
    with stack.services.db.session() as session:
        for role in ("operator", "auditor", "investigator"):
            recorded_user(session, stack.services.ledger, f"{role}-roles", PASSWORD, role)
    for role in ("operator", "auditor", "investigator"):
        r = httpx.post(
            f"{stack.url}/api/v1/auth/token",
            data={"username": f"{role}-roles", "password": PASSWORD},
            timeout=SIGN_IN_TIMEOUT,
        )
        headers[role] = {"Authorization": f"Bearer {r.json()['access_token']}"}

    def call(method: str, path: str, who: str | None, extra: dict[str, str] | None = None, **kw: Any) -> int:
        sent = {**headers.get(who or "", {}), **(extra or {})}
        return httpx.request(method, f"{stack.url}/api/v1{path}", headers=sent, **kw).status_code

    kit = stack.enrol("LW-ROLES")
    device = stack.device(kit)
    event_id = device.sos()
    device.wait_ack(event_id, "received", timeout=10)
    alarm_id = device.acks_for(event_id)[0].payload["alarm_id"]
    # Acknowledge at once: this stack escalates unacknowledged alarms after 2 s.
    assert call("POST", f"/alarms/{alarm_id}/acknowledge", "operator") == 200
    reads = ["/alarms", f"/alarms/{alarm_id}", "/lone-workers", "/alarms/stream?after=0&follow=false"]
    for path in reads:
        assert call("GET", path, None) == 401
        assert call("GET", path, "operator") == 200 and call("GET", path, "auditor") == 200
        assert call("GET", path, "investigator") == 403
    for action in ("acknowledge", "escalate"):
        assert call("POST", f"/alarms/{alarm_id}/{action}", None) == 401
        assert call("POST", f"/alarms/{alarm_id}/{action}", "auditor") == 403
    assert call("POST", f"/alarms/{alarm_id}/escalate", "operator") == 200
    assert call("POST", f"/alarms/{alarm_id}/resolve", "operator", json={"outcome": "maybe"}) == 422
    assert call("POST", f"/alarms/{alarm_id}/resolve", "operator", json={"outcome": "test"}) == 200
    assert call("GET", "/alarms/no-such-alarm", "operator") == 404
    body = {"id": "LW-NEW", "public_key": kit.public_b64}
    assert call("POST", "/devices/lone-workers", "operator", json=body) == 403
    memo = f"/lone-worker/devices/LW-ROLES/alarms/{event_id}/voice-memo"
    assert call("PUT", memo, "operator", {"Content-Type": "audio/ogg"}, content=b"x") == 401
    backlog = httpx.get(
        f"{stack.url}/api/v1/alarms/stream?after=0&follow=false", headers=headers["auditor"]
    ).text
    changes = [
        e["data"]["change"]
        for e in sse_events(iter(backlog.splitlines()))
        if e["data"]["alarm"]["id"] == alarm_id
    ]
    assert changes == ["raised", "incident_linked", "acknowledged", "escalated", "resolved"]


def test_a_hostile_device_cannot_touch_the_alarm_stream(stack: Stack) -> None:
    """An enrolled device tries every subscription and client-id trick while a genuine device raises
    SOS after SOS: each trick is refused by the broker, every SOS is acknowledged within the usual
    time (no resend needed), and the alarm consumer keeps its one connection and its session."""
    settings = stack.services.settings
    consumer = stack.services.mqtt_consumer
    port = stack.broker.port
    hostile = stack.enrol("LW-HOSTILE")
    genuine = stack.device(stack.enrol("LW-GENUINE", staff_id="S-GEN"))
    password = hostile.password or ""
    consumer_logins = stack.broker.log_path.read_text().count(f" as {consumer.client_id} (")

    # A session of its own, kept: every subscription it has no business making is refused.
    thief = Probe(port, "LW-HOSTILE", password).connect(clean_start=False, session_expiry=3600)
    groups = [settings.service_share_group, "evidence", "g", consumer.client_id]
    granted = {
        t: code
        for t in hostile_subscriptions("LW-HOSTILE", "LW-GENUINE", groups)
        if (code := thief.suback_code(t)) not in SUBACK_REFUSED
    }
    thief.client.unsubscribe(f"$share/{settings.service_share_group}/lw/v1/+/alarm")  # its own session only

    # Meanwhile it keeps trying to connect as the service (both instances' ids, the id once printed in
    # the README), as the other device, with no id and near misses, with clean and kept sessions.
    ids = [
        consumer.client_id,
        f"{consumer.client_id}-telemetry",
        "evidence-service",
        "LW-GENUINE",
        "",
        "lw-hostile",
        settings.service_share_group,
    ]
    admitted: list[tuple[str, int, bool]] = []
    stop = threading.Event()

    def takeovers() -> None:
        while not stop.is_set():
            for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
                for client_id in ids:
                    for clean in (True, False):
                        if protocol == mqtt.MQTTv311:
                            probe = Probe(
                                port,
                                "LW-HOSTILE",
                                password,
                                protocol,
                                client_id=client_id,
                                clean_session=clean or not client_id,
                            )
                            probe.connect()
                        else:
                            probe = Probe(port, "LW-HOSTILE", password, protocol, client_id=client_id)
                            probe.connect(clean_start=clean, session_expiry=0 if clean else 3600)
                        if not probe.refused:
                            admitted.append((client_id, protocol, clean))
                        probe.close()

    attacker = threading.Thread(target=takeovers, daemon=True)
    attacker.start()
    try:
        latencies = []
        for _ in range(10):
            event_id = genuine.sos()
            try:
                latencies.append(round(genuine.wait_ack(event_id, "received", timeout=15), 3))
            except TimeoutError:
                latencies.append(float("inf"))
    finally:
        stop.set()
        attacker.join(30)
    assert max(latencies) < 3, latencies  # a lost SOS would have waited for its resend, 10 s later
    assert granted == {}
    assert admitted == []
    assert thief.messages == [] and not thief.disconnected
    assert consumer.connected
    log = stack.broker.log_path.read_text()
    assert log.count(f" as {consumer.client_id} (") == consumer_logins, "the consumer was put out"
    thief.close()
