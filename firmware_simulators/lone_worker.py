"""A lone-worker device (pendant, badge or phone app) speaking the public MQTT protocol.

A reference client written from docs/PROTOCOLS.md alone: it imports nothing from the service.
Each device holds its own Ed25519 key and sequence counter, logs in to the broker as itself,
announces itself with a signed retained ``online`` status (an unsigned ``offline`` last will covers
a lost connection), sends heartbeats and positions, raises and cancels alarms, starts and ends
visits, keeps every alarm and check-in until the service acknowledges it (sending it again, same
event id, new sequence number, after a reconnect), and measures how long acks take. An attacker
mode forges signatures, replays captured messages and speaks for other devices.

Many devices share one I/O thread (:class:`IoLoop`), each on its own MQTT connection and its own
topics, so a :class:`Fleet` of thousands needs no thousands of threads.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from .io_loop import IoLoop, Timer

log = logging.getLogger(__name__)

TOPIC_ROOT = "lw/v1"
DELIVERED_STATUSES = frozenset({"received", "duplicate", "operator_acknowledged", "escalated", "resolved"})


def canonical_json(obj: Any) -> bytes:
    """The signed form: sorted keys, no whitespace, UTF-8 (docs/PROTOCOLS.md)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def format_time(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def topic(device_id: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{leaf}"


# --------------------------------------------------------------------------- one device


@dataclass
class AckReceipt:
    status: str
    payload: dict[str, Any]
    latency_s: float | None  # from the event's first publish to this ack


@dataclass
class _Event:
    event_id: str
    type: str  # alarm | checkin
    body: dict[str, Any]
    occurred_at: str
    first_sent: float | None = None
    sends: int = 0


@dataclass
class PublishResult:
    mid: int
    reason_code: int | None = None
    done: threading.Event = field(default_factory=threading.Event)


class LoneWorkerDevice:
    """One device. Methods may be called from any thread; network work happens on the I/O loop."""

    def __init__(
        self,
        device_id: str,
        password: str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        private_key: Ed25519PrivateKey | None = None,
        service_public_key: bytes | None = None,
        battery: int = 100,
        position: tuple[float, float, float] | None = (51.5072, -0.1276, 12.0),
        clock_offset_s: float = 0.0,
        keepalive_s: int = 30,
        heartbeat_qos: int = 0,
        auto_reconnect: bool = True,
        reconnect_delay_s: float = 1.0,
        io_loop: IoLoop | None = None,
        ack_retry_s: float | None = 10.0,
    ) -> None:
        self.device_id = device_id
        # Resend an alarm or check-in with no ack after this long (docs/PROTOCOLS.md); None: only on reconnect.
        self.ack_retry_s = ack_retry_s
        self.password = password
        self.host, self.port = host, port
        self._key = private_key or Ed25519PrivateKey.generate()
        self.service_public_key = service_public_key
        self.battery = battery
        self.position = position
        self.clock_offset_s = clock_offset_s
        self.keepalive_s = keepalive_s
        self.heartbeat_qos = heartbeat_qos
        self.auto_reconnect = auto_reconnect
        self.reconnect_delay_s = reconnect_delay_s
        self._owns_loop = io_loop is None
        self._loop = io_loop or IoLoop(f"lw-{device_id}")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        self._client: mqtt.Client | None = None
        self._connected = False
        self._subscribed = False
        self._want_online = False
        self.connect_error: str | None = None
        self.session: str | None = None
        self._events: dict[str, _Event] = {}
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._acks: dict[str, list[AckReceipt]] = {}
        # PUBACK bookkeeping has its own lock: paho calls on_publish while holding its own mutex,
        # which a publishing thread takes while holding ``_lock``.
        self._pub_lock = threading.Lock()
        self._publishes: dict[tuple[int, int], PublishResult] = {}
        self._early_pubacks: dict[tuple[int, int], int] = {}
        self._reporting: list[Timer] = []
        # Which start_reporting the running timers belong to: a timer that fires while reporting is
        # stopped or restarted from another thread must neither send nor schedule itself again.
        self._report_lock = threading.Lock()
        self._report_generation: object | None = None
        self.sent: list[tuple[str, bytes]] = []  # every message published, for replay attacks
        self.commands: list[dict[str, Any]] = []
        self.rejected_acks = 0  # acks that failed the signature or named another device

    # ------------------------------------------------------------------ identity and clock
    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()

    def now(self) -> datetime:
        """The device's clock (which may be wrong by ``clock_offset_s``)."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def pending_event_ids(self) -> list[str]:
        """Alarms and check-ins not yet acknowledged by the service."""
        with self._lock:
            return list(self._pending)

    # ------------------------------------------------------------------ building messages
    def build(
        self,
        type_: str,
        extra: dict[str, Any],
        *,
        event_id: str | None = None,
        occurred_at: str | None = None,
        payload_device_id: str | None = None,
        topic_device_id: str | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> tuple[str, bytes]:
        """A signed message and its topic, using the next sequence number. No network."""
        with self._lock:
            self._seq += 1
            payload: dict[str, Any] = {
                "v": 1,
                "device_id": payload_device_id or self.device_id,
                "event_id": event_id or str(uuid.uuid4()),
                "seq": self._seq,
                "type": type_,
                "sent_at": format_time(self.now()),
                "battery": self.battery,
                **extra,
            }
            if occurred_at is not None:
                payload["occurred_at"] = occurred_at
            if self.position is not None:
                lat, lon, accuracy = self.position
                payload["position"] = {"lat": lat, "lon": lon, "accuracy_m": accuracy}
            signature = (key or self._key).sign(canonical_json(payload))
            payload["sig"] = base64.b64encode(signature).decode()
        return topic(topic_device_id or payload_device_id or self.device_id, type_), canonical_json(payload)

    def _will(self, session: str) -> bytes:
        return canonical_json(
            {
                "v": 1,
                "type": "status",
                "device_id": self.device_id,
                "status": {"state": "offline", "session": session},
            }
        )

    # ------------------------------------------------------------------ connection
    def connect(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Connect (and keep reconnecting while wanted); on connect, send everything pending."""
        with self._lock:
            self._want_online = True
            self.connect_error = None
        self._loop.call_soon(self._open_connection)
        if wait:
            self.wait_connected(timeout)

    def wait_connected(self, timeout: float = 10.0) -> None:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: (self._connected and self._subscribed) or self.connect_error, timeout
            )
        if self.connect_error:
            raise ConnectionError(f"{self.device_id}: {self.connect_error}")
        if not ok:
            raise TimeoutError(f"{self.device_id} did not connect within {timeout} s")

    @property
    def connected(self) -> bool:
        return self._connected and self._subscribed

    def disconnect(self, timeout: float = 5.0) -> None:
        """Go offline cleanly: a signed retained ``offline`` status, then DISCONNECT (no will)."""
        self._go_offline(with_will=False, timeout=timeout)

    def drop_connection(self, timeout: float = 5.0) -> None:
        """Lose the connection as if the network failed: the broker publishes the last will."""
        self._go_offline(with_will=True, timeout=timeout)

    def close(self) -> None:
        self.stop_reporting()
        if self._client is not None:
            self._go_offline(with_will=False, timeout=5.0)
        if self._owns_loop:
            self._loop.stop()

    def _go_offline(self, *, with_will: bool, timeout: float) -> None:
        with self._lock:
            self._want_online = False
            client = self._client
            if client is not None and self._connected and not with_will:
                extra = {"status": {"state": "offline", "session": self.session}}
                self._publish_locked(*self.build("status", extra), qos=1, retain=True)
        if client is None:
            return
        reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message") if with_will else None
        self._loop.call_soon(partial(self._disconnect_client, client, reason))
        with self._changed:
            if not self._changed.wait_for(lambda: self._client is None, timeout):
                raise TimeoutError(f"{self.device_id} did not disconnect within {timeout} s")

    def _disconnect_client(self, client: mqtt.Client, reason: ReasonCode | None) -> None:
        if client.disconnect(reasoncode=reason) == mqtt.MQTT_ERR_NO_CONN:
            self._forget_client(client)

    def _open_connection(self) -> None:
        """(Loop thread.) A fresh paho client for every connection, so nothing of an old one is resent."""
        with self._lock:
            if self._client is not None or not self._want_online:
                return
            session = uuid.uuid4().hex
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5, userdata=session
            )
            client.username_pw_set(self.device_id, self.password)
            client.will_set(topic(self.device_id, "status"), self._will(session), qos=1, retain=True)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.on_subscribe = self._on_subscribe
            client.on_publish = self._on_publish
            self._loop.attach(client)
            self._client, self.session = client, session
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s, clean_start=True)
        except OSError as exc:
            self._forget_client(client)
            log.debug("%s: connect failed: %s", self.device_id, exc)
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        with self._lock:
            again = self._want_online and self.auto_reconnect and self.connect_error is None
        if again:
            self._loop.call_later(self.reconnect_delay_s, self._open_connection)

    def _forget_client(self, client: mqtt.Client) -> None:
        with self._changed:
            if self._client is client:
                self._client = None
                self._connected = self._subscribed = False
                self._changed.notify_all()
        with self._pub_lock:
            for key in [k for k in self._publishes if k[0] == id(client)]:
                self._publishes.pop(key).done.set()
            for key in [k for k in self._early_pubacks if k[0] == id(client)]:
                del self._early_pubacks[key]

    def _on_connect(
        self, client: mqtt.Client, session: str, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            with self._changed:
                self.connect_error = f"connection refused: {reason}"
                self._want_online = False
                self._changed.notify_all()
            client.disconnect()
            return
        client.subscribe([(topic(self.device_id, "ack"), 1), (topic(self.device_id, "command"), 1)])
        with self._changed:
            self._connected = True
            self._publish_locked(
                *self.build("status", {"status": {"state": "online", "session": session}}), 1, True
            )
            for event_id in list(self._pending):
                self._send_event_locked(self._events[event_id])
            self._changed.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        with self._changed:
            if client is self._client:
                self._subscribed = all(not r.is_failure for r in reasons)
                if not self._subscribed:
                    self.connect_error = f"subscription refused: {reasons}"
                self._changed.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._forget_client(client)
        self._schedule_reconnect()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        with self._pub_lock:
            result = self._publishes.pop((id(client), mid), None)
            if result is None:  # the PUBACK beat the publisher's bookkeeping
                self._early_pubacks[(id(client), mid)] = reason.value
                return
        result.reason_code = reason.value
        result.done.set()

    # ------------------------------------------------------------------ publishing
    def _publish_locked(
        self, topic_: str, raw: bytes, qos: int = 1, retain: bool = False
    ) -> PublishResult | None:
        """Publish now if connected (caller holds the lock); None when offline."""
        client = self._client
        if client is None or not self._connected:
            return None
        info = client.publish(topic_, raw, qos=qos, retain=retain)
        self.sent.append((topic_, raw))
        result = PublishResult(info.mid)
        key = (id(client), info.mid)
        with self._pub_lock:
            early = self._early_pubacks.pop(key, None)
            if qos > 0 and early is None:
                self._publishes[key] = result
            else:
                result.reason_code = early
                result.done.set()
        self._loop.call_soon(partial(self._loop.flush, client))
        return result

    def publish_raw(self, topic_: str, raw: bytes, qos: int = 1) -> PublishResult:
        """Send exact bytes (for replay and spoofing tests); raises when offline."""
        with self._lock:
            result = self._publish_locked(topic_, raw, qos)
        if result is None:
            raise ConnectionError(f"{self.device_id} is not connected")
        return result

    def wait_puback(self, result: PublishResult, timeout: float = 5.0) -> int | None:
        """The broker's PUBACK reason code (0 accepted, 135 not authorised); None if the link dropped."""
        if not result.done.wait(timeout):
            raise TimeoutError(f"no PUBACK for message {result.mid}")
        return result.reason_code

    def _send_event_locked(self, event: _Event) -> None:
        """Publish ``event`` now if connected; otherwise it stays pending until the next connect."""
        if not self._connected:
            return
        extra = {event.type: event.body}
        topic_, raw = self.build(event.type, extra, event_id=event.event_id, occurred_at=event.occurred_at)
        self._publish_locked(topic_, raw, qos=1)
        event.sends += 1
        if event.first_sent is None:
            event.first_sent = time.monotonic()
        if self.ack_retry_s is not None:
            delay = min(self.ack_retry_s * 2 ** (event.sends - 1), 60.0)
            self._loop.call_later(delay, partial(self._resend_if_unacked, event.event_id, event.sends))

    def _resend_if_unacked(self, event_id: str, sends: int) -> None:
        """The broker's PUBACK is not the service's ack: send again until the service answers."""
        with self._lock:
            event = self._events.get(event_id)
            if event is not None and event_id in self._pending and event.sends == sends:
                self._send_event_locked(event)

    def _emit(self, type_: str, body: dict[str, Any], occurred_at: datetime | None = None) -> str:
        event = _Event(str(uuid.uuid4()), type_, body, format_time(occurred_at or self.now()))
        with self._lock:
            self._events[event.event_id] = event
            self._pending[event.event_id] = None
            self._send_event_locked(event)
        return event.event_id

    def resend(self, event_id: str) -> None:
        """Send an event again (same event id, new seq, fresh sent_at, new signature)."""
        with self._lock:
            self._send_event_locked(self._events[event_id])

    # ------------------------------------------------------------------ what a wearer does
    def sos(self, note: str | None = None) -> str:
        return self._emit("alarm", {"kind": "sos", "action": "raise", **({"note": note} if note else {})})

    def amber(self, timeout_s: int, note: str | None = None) -> str:
        body = {"kind": "amber", "action": "raise", "amber_timeout_s": int(timeout_s)}
        return self._emit("alarm", {**body, **({"note": note} if note else {})})

    def man_down(self, reason: str = "fall") -> str:
        return self._emit("alarm", {"kind": "man_down", "action": "raise", "reason": reason})

    def low_battery(self) -> str:
        return self._emit("alarm", {"kind": "low_battery", "action": "raise"})

    def cancel(self, ref_event_id: str) -> str:
        with self._lock:
            kind = self._events[ref_event_id].body["kind"] if ref_event_id in self._events else "amber"
        return self._emit("alarm", {"kind": kind, "action": "cancel", "ref_event_id": ref_event_id})

    def checkin_start(self, visit_id: str, expected_end: datetime, note: str | None = None) -> str:
        body = {"action": "start", "visit_id": visit_id, "expected_end": format_time(expected_end)}
        return self._emit("checkin", {**body, **({"note": note} if note else {})})

    def checkin_end(self, visit_id: str) -> str:
        return self._emit("checkin", {"action": "end", "visit_id": visit_id})

    def heartbeat(self) -> str | None:
        """Liveness and battery; not buffered while offline (a stale heartbeat says nothing)."""
        return self._send_report("heartbeat")

    def _send_report(self, type_: str) -> str | None:
        with self._lock:
            if not self._connected:
                return None
            topic_, raw = self.build(type_, {})
            self._publish_locked(topic_, raw, qos=self.heartbeat_qos)
        return json.loads(raw)["event_id"]

    def location(self) -> str | None:
        if self.position is None:
            raise ValueError("device has no position")
        return self._send_report("location")

    def start_reporting(
        self, heartbeat_s: float, location_s: float | None = None, first_after_s: float = 0.0
    ) -> None:
        """Send heartbeats (and positions) on an interval from the I/O loop until stopped."""
        self.stop_reporting()
        generation = object()

        def every(interval: float, send: Callable[[], Any], slot: int) -> None:
            with self._report_lock:
                if self._report_generation is not generation:
                    return
            if self._connected:
                send()
            with self._report_lock:
                if self._report_generation is generation:
                    self._reporting[slot] = self._loop.call_later(
                        interval, partial(every, interval, send, slot)
                    )

        with self._report_lock:
            self._report_generation = generation
            self._reporting = [
                self._loop.call_later(first_after_s, partial(every, heartbeat_s, self.heartbeat, 0))
            ]
            if location_s:
                self._reporting.append(
                    self._loop.call_later(first_after_s, partial(every, location_s, self.location, 1))
                )

    def stop_reporting(self) -> None:
        with self._report_lock:
            self._report_generation = None
            timers, self._reporting = self._reporting, []
        for timer in timers:
            timer.cancel()

    # ------------------------------------------------------------------ acks and commands
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topic(self.device_id, "ack"):
            self._handle_ack(bytes(msg.payload))
        elif msg.topic == topic(self.device_id, "command"):
            try:
                self.commands.append(json.loads(msg.payload))
            except ValueError:
                self.rejected_acks += 1

    def _ack_authentic(self, payload: dict[str, Any]) -> bool:
        if payload.get("device_id") != self.device_id:
            return False
        if self.service_public_key is None:
            return True
        unsigned = {k: v for k, v in payload.items() if k != "sig"}
        try:
            signature = base64.b64decode(payload["sig"], validate=True)
            Ed25519PublicKey.from_public_bytes(self.service_public_key).verify(
                signature, canonical_json(unsigned)
            )
        except (KeyError, TypeError, ValueError, InvalidSignature):
            return False
        return True

    def _handle_ack(self, raw: bytes) -> None:
        received = time.monotonic()
        try:
            payload = json.loads(raw)
            event_id, status = payload["event_id"], payload["status"]
        except (ValueError, KeyError, TypeError):
            payload = None
        with self._changed:
            if payload is None or not self._ack_authentic(payload):
                self.rejected_acks += 1
                self._changed.notify_all()
                return
            event = self._events.get(event_id)
            latency = received - event.first_sent if event and event.first_sent else None
            self._acks.setdefault(event_id, []).append(AckReceipt(status, payload, latency))
            if status == "rejected" and payload.get("reason") == "clock_skew":
                # The service says our clock is off: take its time and send the event again.
                self.clock_offset_s += (parse_time(payload["at"]) - self.now()).total_seconds()
                if event is not None and event_id in self._pending:
                    self._send_event_locked(event)
            elif status in DELIVERED_STATUSES:
                self._pending.pop(event_id, None)
            self._changed.notify_all()

    def acks_for(self, event_id: str) -> list[AckReceipt]:
        with self._lock:
            return list(self._acks.get(event_id, []))

    def wait_ack(self, event_id: str, status: str | None = None, timeout: float = 5.0) -> float:
        """Wait for the service's ack of ``event_id`` (``received`` or ``duplicate`` unless
        ``status`` names one); return the seconds from the event's first publish to that ack."""
        wanted = {status} if status else {"received", "duplicate"}

        def found() -> AckReceipt | None:
            return next((a for a in self._acks.get(event_id, []) if a.status in wanted), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(
                    f"{self.device_id}: no {sorted(wanted)} ack for {event_id} within {timeout} s"
                )
            receipt = found()
        assert receipt is not None
        return receipt.latency_s if receipt.latency_s is not None else 0.0

    # ------------------------------------------------------------------ attacker mode
    def attack_forged_signature(self) -> tuple[str, bytes]:
        """An SOS signed with a key that is not this device's."""
        alarm = {"alarm": {"kind": "sos", "action": "raise"}}
        topic_, raw = self.build(
            "alarm", alarm, occurred_at=format_time(self.now()), key=Ed25519PrivateKey.generate()
        )
        self.publish_raw(topic_, raw)
        return topic_, raw

    def attack_replay(self, index: int = -1) -> tuple[str, bytes]:
        """Publish again the exact bytes of an earlier message."""
        topic_, raw = self.sent[index]
        self.publish_raw(topic_, raw)
        return topic_, raw

    def attack_publish_as(self, other_device_id: str) -> tuple[str, bytes, PublishResult]:
        """An SOS in another device's name, on that device's topic (the broker should refuse it)."""
        alarm = {"alarm": {"kind": "sos", "action": "raise"}}
        topic_, raw = self.build(
            "alarm", alarm, occurred_at=format_time(self.now()), payload_device_id=other_device_id
        )
        return topic_, raw, self.publish_raw(topic_, raw)

    def attack_spoof_device_id(self, other_device_id: str) -> tuple[str, bytes]:
        """On its own topic, an SOS whose payload claims to be another device (signed with own key)."""
        alarm = {"alarm": {"kind": "sos", "action": "raise"}}
        topic_, raw = self.build(
            "alarm",
            alarm,
            occurred_at=format_time(self.now()),
            payload_device_id=other_device_id,
            topic_device_id=self.device_id,
        )
        self.publish_raw(topic_, raw)
        return topic_, raw


# --------------------------------------------------------------------------- many devices


class Fleet:
    """N devices on one I/O thread, each with its own key, login, connection and topics."""

    def __init__(
        self,
        accounts: Iterable[tuple[str, str]],
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        service_public_key: bytes | None = None,
        **device_options: Any,
    ) -> None:
        self.loop = IoLoop("lone-worker-fleet")
        self.devices = [
            LoneWorkerDevice(
                device_id,
                password,
                host=host,
                port=port,
                service_public_key=service_public_key,
                io_loop=self.loop,
                **device_options,
            )
            for device_id, password in accounts
        ]
        self._by_id = {d.device_id: d for d in self.devices}

    def enrolment(self) -> list[tuple[str, str]]:
        """``(device_id, public key base64)`` for each device, to register with the service."""
        return [(d.device_id, d.public_key_b64) for d in self.devices]

    def connect_all(self, timeout: float = 60.0) -> None:
        for device in self.devices:
            device.connect(wait=False)
        deadline = time.monotonic() + timeout
        for device in self.devices:
            device.wait_connected(max(0.0, deadline - time.monotonic()))

    def start_reporting(self, heartbeat_s: float, location_s: float | None = None) -> None:
        """Heartbeats on an interval, spread evenly so the fleet does not beat in step."""
        for i, device in enumerate(self.devices):
            device.start_reporting(heartbeat_s, location_s, first_after_s=heartbeat_s * i / max(1, len(self)))

    def close(self) -> None:
        for device in self.devices:
            device.stop_reporting()
            with device._lock:
                device._want_online = False
        for device in self.devices:
            if device._client is not None:
                try:
                    device.disconnect(timeout=5.0)
                except TimeoutError:
                    log.warning("%s did not disconnect cleanly", device.device_id)
        self.loop.stop()

    def __getitem__(self, key: int | str) -> LoneWorkerDevice:
        return self._by_id[key] if isinstance(key, str) else self.devices[key]

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[LoneWorkerDevice]:
        return iter(self.devices)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
