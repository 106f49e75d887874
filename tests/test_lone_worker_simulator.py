"""The lone-worker device simulator against a real private Mosquitto and the service's wire rules.

``WireResponder`` below is a test harness, not the ingest consumer: it runs the service's own
verification (``devices.lone_worker_wire``) on every message and answers with signed acks, which
is enough to hold the simulator to the protocol. The end-to-end path through ingest is tested there.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from devices.broker_access import (
    BrokerAccount,
    BrokerProcess,
    generate_password,
    hash_password,
    start_private_broker,
)
from devices.lone_worker_wire import (
    Accepted,
    AckStatus,
    DeviceKey,
    Duplicate,
    ReasonCode,
    Rejected,
    ReplayState,
    build_ack,
    service_subscriptions,
    verify_device_message,
)
from firmware_simulators.lone_worker import Fleet, LoneWorkerDevice

SERVICE = ("evidence-service", generate_password())
SINGLE_DEVICES = [f"LW-{i:02d}" for i in range(12)]
FLEET_SIZE = 200
FLEET_DEVICES = [f"FL-{i:04d}" for i in range(FLEET_SIZE)]
PASSWORDS = {d: generate_password() for d in SINGLE_DEVICES + FLEET_DEVICES}


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    accounts = [BrokerAccount(d, hash_password(p)) for d, p in PASSWORDS.items()]
    process = start_private_broker(
        tmp_path_factory.mktemp("mosquitto"),
        devices=accounts,
        service=BrokerAccount(SERVICE[0], hash_password(SERVICE[1])),
    )
    yield process
    process.stop()


class WireResponder:
    """Verifies every device message with the service's rules and acknowledges alarms and check-ins."""

    def __init__(self, port: int, key: Ed25519PrivateKey, registry: dict[str, DeviceKey]) -> None:
        self.key = key
        self.registry = registry
        self.states: dict[str, ReplayState] = {}
        self.verdicts: list[tuple[str, Any]] = []
        self.acking = True
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"svc-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(*SERVICE)
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f, 1) for f in service_subscriptions("evidence")]
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5), "responder did not subscribe"

    def _ack(self, device_id: str, event_id: str, status: AckStatus, reason: str | None = None) -> None:
        raw = build_ack(
            private_key=self.key,
            device_id=device_id,
            event_id=event_id,
            status=status,
            at=datetime.now(UTC),
            alarm_id=f"AL-{event_id[:8]}",
            reason=reason,
        )
        self.client.publish(f"lw/v1/{device_id}/ack", raw, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        verdict = verify_device_message(
            msg.payload,
            msg.topic,
            self.registry.get,
            datetime.now(UTC),
            300,
            16 * 1024,
            lambda d: self.states.get(d, ReplayState()),
        )
        if isinstance(verdict, Accepted | Duplicate):
            self.states[verdict.message.device_id] = verdict.replay_state
            if self.acking and verdict.message.type in ("alarm", "checkin"):
                status = AckStatus.RECEIVED if isinstance(verdict, Accepted) else AckStatus.DUPLICATE
                self._ack(verdict.message.device_id, verdict.message.event_id, status)
        elif verdict.reason == ReasonCode.CLOCK_SKEW and verdict.message is not None:
            self._ack(verdict.message.device_id, verdict.message.event_id, AckStatus.REJECTED, "clock_skew")
        with self.cond:
            self.verdicts.append((msg.topic, verdict))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        """The first verdict matching ``predicate`` (waiting for it if need be)."""

        def found() -> Any:
            return next((v for _, v in self.verdicts if predicate(v)), None)

        with self.cond:
            if not self.cond.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(
                    f"no matching verdict among {[type(v).__name__ for _, v in self.verdicts]}"
                )
            return found()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


SERVICE_KEY = Ed25519PrivateKey.generate()
_UNUSED_DEVICE_IDS = iter(SINGLE_DEVICES)


@pytest.fixture
def make_device(broker: BrokerProcess) -> Iterator[Callable[..., tuple[LoneWorkerDevice, WireResponder]]]:
    """A device enrolled (key registered) with a fresh responder; both closed afterwards."""
    made: list[Any] = []

    def make(
        responder_key: Ed25519PrivateKey = SERVICE_KEY, **options: Any
    ) -> tuple[LoneWorkerDevice, WireResponder]:
        device_id = next(_UNUSED_DEVICE_IDS)  # a new id each time: retained status outlives a test
        device = LoneWorkerDevice(
            f"{device_id}",
            PASSWORDS[device_id],
            port=broker.port,
            service_public_key=raw_public(SERVICE_KEY),
            reconnect_delay_s=0.1,
            **options,
        )
        responder = WireResponder(
            broker.port, responder_key, {device.device_id: DeviceKey(device.public_key)}
        )
        made.extend([device, responder])
        return device, responder

    yield make
    for thing in made:
        thing.close()


def message_of(event_id: str, kind: type = Accepted) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, kind) and v.message is not None and v.message.event_id == event_id


# --------------------------------------------------------------------------- protocol conformance, no broker


def test_every_message_the_simulator_builds_passes_the_service_checks() -> None:
    device = LoneWorkerDevice("LW-X", "unused", io_loop=None)
    try:
        registry = {"LW-X": DeviceKey(device.public_key)}
        state = ReplayState()
        now = datetime.now(UTC)
        bodies = [
            ("alarm", {"alarm": {"kind": "sos", "action": "raise", "note": "Zoë — bay 4"}}),
            ("alarm", {"alarm": {"kind": "amber", "action": "raise", "amber_timeout_s": 60}}),
            ("alarm", {"alarm": {"kind": "man_down", "action": "raise", "reason": "fall"}}),
            ("checkin", {"checkin": {"action": "end", "visit_id": "V-9"}}),
            ("heartbeat", {}),
            ("location", {}),
            ("status", {"status": {"state": "online", "session": "abc"}}),
        ]
        for type_, extra in bodies:
            occurred = now.strftime("%Y-%m-%dT%H:%M:%S.000Z") if type_ in ("alarm", "checkin") else None
            topic, raw = device.build(type_, extra, occurred_at=occurred)
            verdict = verify_device_message(
                raw, topic, registry.get, now, 300, 16384, lambda _, state=state: state
            )
            assert isinstance(verdict, Accepted), (type_, verdict)
            state = verdict.replay_state
        will = device._will("abc")
        verdict = verify_device_message(
            will, "lw/v1/LW-X/status", registry.get, now, 300, 16384, lambda _: state
        )
        assert isinstance(verdict, Accepted) and not verdict.signed
    finally:
        device.close()


# --------------------------------------------------------------------------- against the broker


def test_sos_gets_a_signed_ack_and_its_latency_is_measured(make_device: Callable[..., Any]) -> None:
    device, responder = make_device()
    device.connect()
    online = responder.wait_for(lambda v: isinstance(v, Accepted) and v.message.type == "status")
    assert online.message.status.state == "online" and online.signed
    event_id = device.sos()
    latency = device.wait_ack(event_id)
    assert 0 < latency < 2.0
    accepted = responder.wait_for(message_of(event_id))
    assert accepted.message.alarm.kind == "sos"
    assert device.pending_event_ids == [] and device.rejected_acks == 0


def test_an_ack_not_signed_by_the_service_is_ignored(make_device: Callable[..., Any]) -> None:
    device, responder = make_device(responder_key=Ed25519PrivateKey.generate())
    device.connect()
    event_id = device.sos()
    responder.wait_for(message_of(event_id))
    with device._changed:
        assert device._changed.wait_for(lambda: device.rejected_acks == 1, 5)
    assert device.acks_for(event_id) == [] and device.pending_event_ids == [event_id]


def test_alarm_raised_while_offline_is_kept_and_sent_on_reconnect(make_device: Callable[..., Any]) -> None:
    device, responder = make_device()
    device.connect()
    device.drop_connection()
    will = responder.wait_for(lambda v: isinstance(v, Accepted) and not v.signed)
    assert will.message.status.state == "offline" and will.message.status.session == device.session
    raised_at = datetime.now(UTC)
    event_id = device.amber(900, note="entering flat 12")
    assert device.pending_event_ids == [event_id]
    assert not any(message_of(event_id)(v) for _, v in responder.verdicts)
    device.connect()
    device.wait_ack(event_id)
    accepted = responder.wait_for(message_of(event_id))
    assert accepted.message.alarm.amber_timeout_s == 900
    assert accepted.message.occurred_at <= raised_at + timedelta(seconds=1)  # keeps when it happened
    assert device.pending_event_ids == []


def test_unacknowledged_alarm_is_sent_again_after_reconnect_and_absorbed(
    make_device: Callable[..., Any],
) -> None:
    device, responder = make_device()
    device.connect()
    responder.acking = False  # the service takes the alarm but its ack is lost
    event_id = device.man_down("no_movement")
    first = responder.wait_for(message_of(event_id))
    device.drop_connection()
    responder.acking = True
    device.connect()
    assert device.wait_ack(event_id, status="duplicate") > 0
    again = responder.wait_for(message_of(event_id, Duplicate))
    assert again.message.seq > first.message.seq and again.message.sent_at >= first.message.sent_at
    assert again.message.occurred_at == first.message.occurred_at


def test_a_deliberate_resend_is_answered_as_a_duplicate(make_device: Callable[..., Any]) -> None:
    device, responder = make_device()
    device.connect()
    start = device.checkin_start("V-1", datetime.now(UTC) + timedelta(hours=1), note="Mrs B, 4 Elm Rd")
    device.wait_ack(start)
    device.resend(start)
    device.wait_ack(start, status="duplicate")
    end = device.checkin_end("V-1")
    device.wait_ack(end)
    ended = responder.wait_for(message_of(end))
    assert ended.message.checkin.action == "end"


def test_attacks_are_each_refused_for_the_right_reason(make_device: Callable[..., Any]) -> None:
    device, responder = make_device(heartbeat_qos=1)
    device.connect()
    device.attack_forged_signature()
    responder.wait_for(
        lambda v: (
            isinstance(v, Rejected)
            and v.reason == ReasonCode.BAD_SIGNATURE
            and v.device_id == device.device_id
        )
    )

    beat = device.heartbeat()
    responder.wait_for(message_of(beat))
    _, replayed = device.attack_replay(-1)
    assert json.loads(replayed)["event_id"] == beat
    assert responder.wait_for(message_of(beat, Rejected)).reason == ReasonCode.REPLAY

    alarm = device.sos()
    device.wait_ack(alarm)
    device.attack_replay(-1)  # an exact copy of a known alarm is absorbed, never acted on twice
    responder.wait_for(message_of(alarm, Duplicate))

    device.attack_spoof_device_id("LW-VICTIM")
    spoof = responder.wait_for(lambda v: isinstance(v, Rejected) and v.reason == ReasonCode.TOPIC_MISMATCH)
    assert spoof.device_id == device.device_id and "LW-VICTIM" in spoof.detail

    _, raw, result = device.attack_publish_as("LW-VICTIM")
    assert device.wait_puback(result) == 135  # the broker refuses it (and drops the connection)
    device.wait_connected()  # the device comes back by itself
    marker = device.sos()
    device.wait_ack(marker)
    stolen_id = json.loads(raw)["event_id"]
    assert not any(v.message is not None and v.message.event_id == stolen_id for _, v in responder.verdicts)


def test_device_with_a_fast_clock_corrects_it_from_the_service_and_resends(
    make_device: Callable[..., Any],
) -> None:
    device, responder = make_device(clock_offset_s=900)
    device.connect()
    event_id = device.sos()
    latency = device.wait_ack(event_id, timeout=5)
    statuses = [a.status for a in device.acks_for(event_id)]
    assert statuses == ["rejected", "received"]
    assert abs(device.clock_offset_s) < 5
    assert responder.wait_for(message_of(event_id, Rejected)).reason == ReasonCode.CLOCK_SKEW
    assert latency < 2.0


def test_heartbeats_and_positions_flow_on_an_interval(make_device: Callable[..., Any]) -> None:
    device, responder = make_device(heartbeat_qos=1)
    device.connect()
    device.start_reporting(heartbeat_s=0.05, location_s=0.05)
    with responder.cond:
        assert responder.cond.wait_for(
            lambda: (
                sum(1 for t, v in responder.verdicts if isinstance(v, Accepted) and t.endswith("/heartbeat"))
                >= 3
                and any(isinstance(v, Accepted) and t.endswith("/location") for t, v in responder.verdicts)
            ),
            5,
        )
    device.stop_reporting()
    seqs = [v.message.seq for t, v in responder.verdicts if isinstance(v, Accepted) and v.signed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert not [
        v for _, v in responder.verdicts if isinstance(v, Rejected) and v.device_id == device.device_id
    ]


def test_reporting_stopped_from_another_thread_stays_stopped(make_device: Callable[..., Any]) -> None:
    """Restarting and stopping reporting while its timers fire on the I/O thread leaves no timer
    chain behind (it used to fail with an IndexError, or keep beating after the stop)."""
    device, _ = make_device()
    device.connect()
    for _ in range(200):
        device.start_reporting(heartbeat_s=0.001, location_s=0.001)
    device.stop_reporting()

    def beats() -> int:
        return sum(1 for t, _ in device.sent if t.endswith(("/heartbeat", "/location")))

    passed = threading.Event()  # a beat already being sent when stop returned is allowed to finish
    device._loop.call_soon(passed.set)
    assert passed.wait(5)
    before = beats()
    time.sleep(0.3)  # absence can only be shown over a window: 300 timer periods
    assert beats() == before


def test_a_fleet_of_devices_each_on_its_own_connection_and_topic(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    with Fleet(
        [(d, PASSWORDS[d]) for d in FLEET_DEVICES],
        port=broker.port,
        service_public_key=raw_public(SERVICE_KEY),
    ) as fleet:
        registry = {d: DeviceKey(fleet[d].public_key) for d in FLEET_DEVICES}
        responder = WireResponder(broker.port, SERVICE_KEY, registry)
        try:
            started = time.monotonic()
            fleet.connect_all(timeout=60)
            connect_s = time.monotonic() - started
            events = {device.device_id: device.sos() for device in fleet}
            latencies = [fleet[d].wait_ack(e, timeout=30) for d, e in events.items()]
            accepted = {
                v.message.device_id for _, v in responder.verdicts if isinstance(v, Accepted) and v.signed
            }
            assert accepted >= set(FLEET_DEVICES)
            assert not [
                v for _, v in responder.verdicts if isinstance(v, Rejected) and v.device_id in registry
            ]
        finally:
            responder.close()
    latencies.sort()
    print(
        f"\nfleet of {FLEET_SIZE}: connected in {connect_s:.2f} s; SOS->ack p50 "
        f"{statistics.median(latencies) * 1000:.1f} ms, p95 {latencies[int(0.95 * len(latencies))] * 1000:.1f} ms"
    )
