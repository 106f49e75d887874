"""Lone-worker alarm latency under a heartbeating fleet, beside a raw broker round trip in the same run.

The real service runs as its own process (HTTP API, MQTT consumer for alarms and check-ins,
escalation loop), with the telemetry companion it starts for heartbeats, locations and status
(``EVIDENCE_MQTT_TELEMETRY_PROCESS=true``; ``--single-process`` turns it off), on a private
SeaweedFS and a scratch PostgreSQL database, against a private Mosquitto started from the project's
generated configuration (its real per-device ACLs, ``max_queued_messages 0``). Simulated devices
(``firmware_simulators.lone_worker``, one I/O thread for the whole fleet) are enrolled with the
service's own enrolment function, log in with the passwords it issued, and send a signed heartbeat
every 10 s, spread evenly over the period. At the first fleet size (2,000), after 20 unmeasured
SOS that warm the service up:

- **steady**: 300 SOS from distinct random devices, 2 a second (7,200 an hour, far above any real
  fleet's rate, yet slow enough that what is measured is one alarm's path, not a queue of them);
- **burst**: 200 SOS from 200 devices at once.

For every SOS: publish → the device receiving the service's signed ``received`` ack (measured by the
device itself), publish → the alarm row's commit (a deferred constraint trigger, added by this
benchmark to the scratch database only, stamps ``clock_timestamp()`` at COMMIT, just before the WAL
flush) and publish → the service starting to handle it (``lone_worker_events.received_at``). Same
machine, same clock. An SOS with no alarm row at the end is lost; one with no ack is unacknowledged.

Baseline, same broker, same moments: a plain paho client on the fleet's own I/O thread publishes a
QoS 1 message of an alarm's size every 50 ms on a bench-only topic; a plain paho echo client in its
own process (as the service is), subscribed the way the service subscribes (MQTT v5 shared
subscription, QoS 1, TCP_NODELAY), publishes it back at QoS 1; the probe times publish → echo
received. The two bench logins are added to the generated ACL on their own topics only.

Then the capacity ramp: the fleet grows (4,000, 8,000, ...) while the service keeps up (no SOS
lost or unacknowledged, heartbeats handled as fast as they are sent); each size gets one heartbeat
period of warm-up and a steady phase of 120 SOS. Then a search for the largest fleet whose
steady-phase SOS p99 publish → ack is under 100 ms: halving below the smallest failure while nothing
has passed, else bisecting (multiples of 250). A fleet shrinks by disconnecting an even sample of
its devices and grows by reconnecting or enrolling more; before each size is measured the
heartbeats pause until the service has handled everything queued. The whole run stops starting new
sizes after 14 minutes. Writes bench/results/alarms.json and prints markdown tables.

Run: ``.venv/bin/python bench/alarms.py [--quick]`` (``--help`` for the knobs). ``--trace`` also splits
the slowest steady SOS into their steps inside the service (``bench/sos_trace_report.py``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import bindparam, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alarms.models import AlarmRecord, LoneWorkerEvent  # noqa: E402
from bench.common import (  # noqa: E402
    BenchService,
    ScratchPostgres,
    latency_summary,
    load_average,
    scratch,
    write_results,
)
from bench.sos_trace_report import breakdown  # noqa: E402
from devices.broker_access import (  # noqa: E402
    BrokerAccount,
    BrokerProcess,
    ExtraLogins,
    generate_password,
    hash_password,
    start_private_broker,
)
from devices.broker_rules import RECEIVE, SEND, SUBSCRIBE_LITERAL, Acl, Client, Role  # noqa: E402
from devices.models import LoneWorkerState  # noqa: E402
from devices.service import (  # noqa: E402
    add_staff,
    broker_accounts,
    enrol_lone_worker,
)
from firmware_simulators.lone_worker import IoLoop, LoneWorkerDevice  # noqa: E402
from ingest.services import Services, build_services  # noqa: E402
from storage.settings import Settings  # noqa: E402

PG_ADMIN_URL = os.environ.get("EVIDENCE_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVICE_USER = "evidence-service"
PROBE_USER = "bench-probe"
ECHO_USER = "bench-echo"
PING_TOPIC = "bench/v1/ping"
PONG_TOPIC = "bench/v1/pong"
ECHO_SHARE = f"$share/bench/{PING_TOPIC}"
# Refusals before any costly work (ingest.device_share): the cheap checks and each device's share.
DOOR_REASONS = ("oversize", "bad_json", "bad_schema", "topic_mismatch", "rate_limited", "queue_full")
FLOODER = "LW-FLOOD"
ROOT = Path(__file__).resolve().parents[1]
PROBE_PAD = 420  # a signed SOS is about 450 bytes; the probe's messages are the same size

COMMIT_TRIGGER_SQL = [
    "CREATE TABLE bench_alarm_commits (alarm_id text PRIMARY KEY, source_event_id text, "
    "committed_at timestamptz NOT NULL)",
    """CREATE FUNCTION bench_note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO bench_alarm_commits VALUES (NEW.id, NEW.source_event_id, clock_timestamp());
         RETURN NULL;
       END $$""",
    "CREATE CONSTRAINT TRIGGER bench_alarm_commit AFTER INSERT ON alarms "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_note_commit()",
]


# --------------------------------------------------------------------------- the echo (own process)


def run_echo(port: int) -> None:
    """The baseline's far end: answer every ping at once, the way the service's consumer is connected."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-echo-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(ECHO_USER, os.environ["BENCH_ECHO_PASSWORD"])

    def opened(_c: mqtt.Client, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connected(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            print(f"echo refused: {reason}", flush=True)
            return
        c.subscribe([(ECHO_SHARE, SubscribeOptions(qos=1))])

    def message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        c.publish(PONG_TOPIC, msg.payload, qos=1)

    client.on_socket_open = opened
    client.on_connect = connected
    client.on_message = message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_forever(retry_first_connection=True)


class EchoProcess:
    def __init__(self, port: int, password: str, log_path: Path) -> None:
        self.port, self.password, self.log_path = port, password, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--echo-port", str(self.port)],
                env={**os.environ, "BENCH_ECHO_PASSWORD": self.password},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------- the probe (fleet's I/O thread)


class RoundTripProbe:
    """A plain paho client on the fleet's I/O loop: QoS 1 ping out, echo back, time the round trip."""

    def __init__(self, loop: IoLoop, port: int, password: str, hz: float) -> None:
        self.loop = loop
        self.port = port
        self.interval = 1.0 / hz
        self.phase = "idle"
        self._lock = threading.Lock()
        self._sent: dict[int, tuple[str, float]] = {}
        self._received: dict[int, float] = {}
        self._seq = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=PROBE_USER, protocol=mqtt.MQTTv5)
        client.username_pw_set(PROBE_USER, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = lambda *_: self._ready.set()
        client.on_message = self._on_message
        self.client = client

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe([(PONG_TOPIC, SubscribeOptions(qos=1))])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        if not self._stop.is_set():  # the broker restarted (many devices enrolled at once)
            self.loop.call_later(0.5, self._reconnect)

    def _reconnect(self) -> None:
        try:
            self.client.reconnect()
        except OSError:
            self.loop.call_later(0.5, self._reconnect)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        seq = int(bytes(msg.payload).split(b" ", 1)[0])
        with self._lock:
            self._received.setdefault(seq, at)

    def start(self, timeout: float = 20.0) -> None:
        self.loop.attach(self.client)
        self.loop.call_soon(partial(self.client.connect, "127.0.0.1", self.port, 30))
        if not self._ready.wait(timeout):
            raise RuntimeError("the round-trip probe did not connect and subscribe")
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.ping()
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def ping(self) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
        payload = f"{seq} ".encode() + b"x" * PROBE_PAD
        self.client.publish(PING_TOPIC, payload, qos=1)
        sent = time.monotonic()  # taken where the devices take theirs: once publish() has returned
        with self._lock:
            self._sent[seq] = (self.phase, sent)
        self.loop.call_soon(partial(self.loop.flush, self.client))

    def results(self, phase: str, grace_s: float = 2.0) -> dict[str, Any]:
        """Round trips of pings sent during ``phase``; a ping unanswered ``grace_s`` later counts as lost."""
        now = time.monotonic()
        with self._lock:
            sent = [(s, t) for s, (p, t) in self._sent.items() if p == phase]
            rtts = [self._received[s] - t for s, t in sent if s in self._received]
            lost = sum(1 for s, t in sent if s not in self._received and now - t > grace_s)
        return {**latency_summary(rtts), "unanswered": lost}

    def pings(self, phase: str) -> list[tuple[float, float]]:
        """(wall-clock send time, round trip seconds) of the answered pings sent during ``phase``."""
        offset = time.time() - time.monotonic()
        with self._lock:
            return [
                (t + offset, self._received[s] - t)
                for s, (p, t) in self._sent.items()
                if p == phase and s in self._received
            ]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


# --------------------------------------------------------------------------- broker access with bench logins


class BrokerAccess:
    """The broker's password and rules files as the service generates them, plus the two bench logins
    (each allowed only its own bench topic), brought into the running broker."""

    def __init__(self, broker: BrokerProcess, service: BrokerAccount, probe_pw: str, echo_pw: str) -> None:
        self.broker = broker
        self.service = service
        probe_rules = {Acl(SEND, PING_TOPIC), Acl(SUBSCRIBE_LITERAL, PONG_TOPIC), Acl(RECEIVE, PONG_TOPIC)}
        echo_rules = {Acl(SUBSCRIBE_LITERAL, ECHO_SHARE), Acl(RECEIVE, PING_TOPIC), Acl(SEND, PONG_TOPIC)}
        self.extra = ExtraLogins(
            accounts=(
                BrokerAccount(PROBE_USER, hash_password(probe_pw)),
                BrokerAccount(ECHO_USER, hash_password(echo_pw)),
            ),
            clients=(
                Client(PROBE_USER, ("bench-probe",), clientid=PROBE_USER),
                Client(ECHO_USER, ("bench-echo",)),
            ),
            roles=(Role("bench-probe", frozenset(probe_rules)), Role("bench-echo", frozenset(echo_rules))),
        )

    def write(self, devices: list[BrokerAccount]) -> None:
        """Many new devices at once reach the broker by a restart (devices, echo and probe reconnect)."""
        self.broker.update_accounts(devices=devices, service=self.service, extra=self.extra)


def wait_login(port: int, username: str, password: str, timeout: float = 15.0) -> None:
    """Return once the broker accepts ``username`` (it re-reads its files asynchronously after SIGHUP).

    Drives paho by hand on an epoll selector: paho's own ``loop()`` uses ``select()``, which cannot
    watch a descriptor above 1023, and this process holds a socket per device.
    """
    deadline = time.monotonic() + timeout
    while True:
        outcome: list[bool] = []

        def on_connect(
            _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any, out: list[bool] = outcome
        ) -> None:
            out.append(not reason.is_failure)

        # a device may only log in with its own id as client id
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.on_connect = on_connect
        try:
            client.connect("127.0.0.1", port, keepalive=10)
            sock = client.socket()
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                until = time.monotonic() + 5
                while not outcome and time.monotonic() < until and client.socket() is not None:
                    if client.want_write():
                        client.loop_write()
                    if selector.select(0.05):
                        client.loop_read()
            client.disconnect()
            if client.want_write():
                client.loop_write()
        except OSError:
            pass
        finally:
            if client.socket() is not None:
                client.socket().close()
        if outcome and outcome[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"broker does not accept {username} after reloading its files")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the fleet


@dataclass
class SosRecord:
    device_id: str
    event_id: str
    phase: str
    fleet: int
    wall_sent: float
    ack_s: float | None = None


@dataclass
class Credentials:
    device_id: str
    password: str
    key: Ed25519PrivateKey


class BenchFleet:
    """Every simulated device on one shared I/O loop. ``active`` devices are connected and beating;
    the fleet shrinks by disconnecting some (kept for reuse) and grows by reconnecting or adding."""

    def __init__(self, port: int, service_public_key: bytes) -> None:
        self.loop = IoLoop("bench-fleet")
        self.port = port
        self.service_public_key = service_public_key
        self.devices: list[LoneWorkerDevice] = []
        self.by_id: dict[str, LoneWorkerDevice] = {}
        self.active: list[LoneWorkerDevice] = []
        self.heartbeats_sent = 0
        self.statuses_sent = 0
        self._trim_lock = threading.Lock()

    def add(self, creds: list[Credentials]) -> list[LoneWorkerDevice]:
        added = [
            LoneWorkerDevice(
                c.device_id,
                c.password,
                port=self.port,
                private_key=c.key,
                service_public_key=self.service_public_key,
                battery=90,
                reconnect_delay_s=1.0,
                io_loop=self.loop,
            )
            for c in creds
        ]
        self.devices += added
        self.by_id.update((d.device_id, d) for d in added)
        return added

    @property
    def idle(self) -> list[LoneWorkerDevice]:
        active = {id(d) for d in self.active}
        return [d for d in self.devices if id(d) not in active]

    def activate(self, devices: list[LoneWorkerDevice], chunk: int = 250, timeout: float = 120.0) -> None:
        """Connect, in chunks, so the broker's listen backlog never overflows (a lost SYN would stall
        the I/O thread for a second); :meth:`resume` starts their heartbeats."""
        deadline = time.monotonic() + timeout
        for start in range(0, len(devices), chunk):
            part = devices[start : start + chunk]
            for device in part:
                device.connect(wait=False)
            for device in part:
                device.wait_connected(max(0.1, deadline - time.monotonic()))
        self.active += devices

    def pause(self) -> None:
        """Stop every active device's heartbeats (they stay connected)."""
        active = list(self.active)

        def stop_all() -> None:
            for device in active:
                device.stop_reporting()

        self._on_loop(stop_all)

    def resume(self, heartbeat_s: float) -> None:
        """Every active device beats every ``heartbeat_s``, the fleet spread evenly over the period."""
        active = list(self.active)

        def start_all() -> None:
            for k, device in enumerate(active):
                device.start_reporting(heartbeat_s, first_after_s=heartbeat_s * k / len(active))

        self._on_loop(start_all)

    def deactivate(self, keep: int) -> list[LoneWorkerDevice]:
        """Keep ``keep`` active devices, an even sample so the survivors' heartbeats stay evenly
        spread; the others stop beating and disconnect cleanly."""
        n = len(self.active)
        chosen = {int(j * n / keep) for j in range(keep)}
        survivors = [d for i, d in enumerate(self.active) if i in chosen]
        leaving = [d for i, d in enumerate(self.active) if i not in chosen]

        def stop_some() -> None:
            for device in leaving:
                device.stop_reporting()

        self._on_loop(stop_some)
        for device in leaving:
            device.disconnect(timeout=10)
        self.active = survivors
        return leaving

    def _on_loop(self, fn: Any) -> None:
        """Run ``fn`` on the I/O thread, where the heartbeat timers fire (starting or stopping them
        from another thread races with a timer re-arming itself), and wait for it."""
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon(call)
        if not done.wait(60):
            raise TimeoutError("the fleet's I/O thread did not get to the call")

    def trim(self) -> int:
        """Count heartbeats and statuses sent since the last call and drop the devices' copies of sent messages
        (kept by the simulator for replay attacks; a long run would otherwise hold them all)."""
        with self._trim_lock:
            for device in self.devices:
                n = len(device.sent)
                if n:
                    chunk = device.sent[:n]
                    del device.sent[:n]
                    self.heartbeats_sent += sum(1 for t, _ in chunk if t.endswith("/heartbeat"))
                    self.statuses_sent += sum(1 for t, _ in chunk if t.endswith("/status"))
            return self.heartbeats_sent

    def stop_reporting(self) -> None:
        def stop_all() -> None:
            for device in self.devices:
                device.stop_reporting()

        self._on_loop(stop_all)

    def close(self) -> None:
        self.loop.stop()
        for device in self.devices:  # the I/O thread has gone: nothing can re-arm a timer now
            device.stop_reporting()


# --------------------------------------------------------------------------- measuring


class CpuMeter:
    """CPU seconds used by the service, the broker, the echo, PostgreSQL's backends of the scratch
    database and this process (the fleet and the probe) between two snapshots, as % of one core."""

    def __init__(self, pids: dict[str, int], pg_database: str | None) -> None:
        self.pids = pids
        self.pg_database = pg_database

    def _pg(self) -> dict[int, float]:
        out: dict[int, float] = {}
        if not self.pg_database:
            return out
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.info["name"] == "postgres" and f" {self.pg_database} " in f" {cmd} ":
                    t = proc.cpu_times()
                    out[proc.pid] = t.user + t.system
            except psutil.Error:
                continue
        return out

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"at": time.monotonic(), "pg": self._pg()}
        for name, pid in self.pids.items():
            try:
                t = psutil.Process(pid).cpu_times()
                snap[name] = t.user + t.system
            except psutil.Error:
                snap[name] = 0.0
        return snap

    def percent(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        wall = max(1e-9, b["at"] - a["at"])
        out = {name: round(100 * (b[name] - a[name]) / wall, 1) for name in self.pids}
        if self.pg_database:
            used = sum(v - a["pg"].get(pid, 0.0) for pid, v in b["pg"].items())
            out["postgres"] = round(100 * used / wall, 1)
        return out


def service_metrics(svc: BenchService, headers: dict[str, str]) -> dict[str, float]:
    """The service's own counters: heartbeats accepted and handled (any outcome), and the
    handling-time histogram's sum and count."""
    r = httpx.get(f"{svc.url}/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    out = {
        "heartbeats": 0.0,
        "heartbeats_handled": 0.0,
        "statuses_handled": 0.0,
        "handle_sum": 0.0,
        "handle_count": 0.0,
        "refused_at_the_door": 0.0,
        "devices_over_share": 0.0,
    }
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == "evidence_lone_worker_messages_total":
                if sample.labels.get("type") == "heartbeat":
                    out["heartbeats_handled"] += sample.value
                    if sample.labels.get("outcome") == "accepted":
                        out["heartbeats"] += sample.value
                elif sample.labels.get("type") == "status":
                    out["statuses_handled"] += sample.value
            elif sample.name == "evidence_lone_worker_rejections_total":
                if sample.labels.get("reason") in DOOR_REASONS:
                    out["refused_at_the_door"] += sample.value
            elif sample.name == "evidence_lone_worker_devices_over_share":
                out["devices_over_share"] += sample.value
            elif sample.name == "evidence_lone_worker_handle_seconds_sum":
                out["handle_sum"] += sample.value
            elif sample.name == "evidence_lone_worker_handle_seconds_count":
                out["handle_count"] += sample.value
    return out


def send_sos(
    fleet: BenchFleet, devices: list[LoneWorkerDevice], phase: str, rate: float | None
) -> list[SosRecord]:
    """One SOS from each device, ``rate`` a second (all at once when None)."""
    records = []
    start = time.monotonic()
    for i, device in enumerate(devices):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        wall = time.time()
        event_id = device.sos()
        records.append(SosRecord(device.device_id, event_id, phase, len(fleet.active), wall))
    return records


def collect_acks(fleet: BenchFleet, records: list[SosRecord], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for r in records:
        if r.ack_s is not None:
            continue
        try:
            r.ack_s = fleet.by_id[r.device_id].wait_ack(
                r.event_id, timeout=max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            pass


def db_times(
    services: Services, records: list[SosRecord], commit_trigger: bool
) -> dict[str, dict[str, float]]:
    """For each SOS event id: when the service began handling it and when its alarm row committed."""
    ids = [r.event_id for r in records]
    out: dict[str, dict[str, float]] = {}
    commits = text(
        "SELECT source_event_id, committed_at FROM bench_alarm_commits WHERE source_event_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    with services.db.session() as session:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            q = select(LoneWorkerEvent.event_id, LoneWorkerEvent.received_at).where(
                LoneWorkerEvent.event_id.in_(chunk)
            )
            for event_id, received_at in session.execute(q):
                out[event_id] = {"received": received_at.timestamp()}
            if commit_trigger:
                for event_id, committed_at in session.execute(commits, {"ids": chunk}):
                    out.setdefault(event_id, {})["committed"] = committed_at.timestamp()
    return out


def stored_alarm_events(services: Services, event_ids: list[str]) -> set[str]:
    found: set[str] = set()
    with services.db.session() as session:
        for start in range(0, len(event_ids), 1000):
            found.update(
                session.scalars(
                    select(AlarmRecord.source_event_id).where(
                        AlarmRecord.source_event_id.in_(event_ids[start : start + 1000])
                    )
                )
            )
    return found


def phase_report(
    records: list[SosRecord], times: dict[str, dict[str, float]], stored: set[str], rate: float | None
) -> dict[str, Any]:
    acks = [r.ack_s for r in records if r.ack_s is not None]
    commits = [
        times[r.event_id]["committed"] - r.wall_sent
        for r in records
        if "committed" in times.get(r.event_id, {})
    ]
    received = [times[r.event_id]["received"] - r.wall_sent for r in records if r.event_id in times]
    span = (records[-1].wall_sent - records[0].wall_sent) if len(records) > 1 else 0.0
    last_commit = max(
        (times[r.event_id].get("committed", 0.0) for r in records if r.event_id in times), default=0.0
    )
    report: dict[str, Any] = {
        "sos": len(records),
        "rate_per_s": rate if rate else None,
        "sent_over_s": round(span, 3),
        "last_commit_after_first_send_s": round(last_commit - records[0].wall_sent, 3)
        if last_commit
        else None,
        "publish_to_ack": latency_summary(acks),
        "publish_to_commit": latency_summary(commits),
        "publish_to_service_handling": latency_summary(received),
        "unacknowledged": sum(1 for r in records if r.ack_s is None),
        "lost": sum(1 for r in records if r.event_id not in stored),
    }
    if rate and span >= 20:
        report["timeline_10s"] = timeline(records, times, 10.0)
    return report


def timeline(
    records: list[SosRecord], times: dict[str, dict[str, float]], bucket_s: float
) -> list[dict[str, Any]]:
    """Per ``bucket_s`` of sending: how many SOS, their median and worst ack, and the longest any
    waited in the service's queue, so a stall can be told from a steady cost."""
    start = records[0].wall_sent
    buckets: dict[int, list[SosRecord]] = {}
    for r in records:
        buckets.setdefault(int((r.wall_sent - start) // bucket_s), []).append(r)
    out = []
    for index, rs in sorted(buckets.items()):
        acks = latency_summary([r.ack_s for r in rs if r.ack_s is not None])
        waits = [times[r.event_id]["received"] - r.wall_sent for r in rs if r.event_id in times]
        out.append(
            {
                "from_s": index * bucket_s,
                "sos": len(rs),
                "ack_p50_ms": acks.get("p50_ms"),
                "ack_max_ms": acks.get("max_ms"),
                "queue_wait_max_ms": round(1000 * max(waits), 1) if waits else None,
            }
        )
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    started: float = field(default_factory=time.monotonic)
    pg: ScratchPostgres | None = None
    broker: BrokerProcess | None = None
    svc: BenchService | None = None
    echo: EchoProcess | None = None
    services: Services | None = None
    fleet: BenchFleet | None = None
    probe: RoundTripProbe | None = None
    access: BrokerAccess | None = None
    commit_trigger: bool = False
    creds: list[Credentials] = field(default_factory=list)
    flooder: Credentials | None = None
    sos: list[SosRecord] = field(default_factory=list)

    @property
    def single_process(self) -> bool:
        """The telemetry companion needs PostgreSQL."""
        return bool(self.args.single_process or self.args.sqlite)

    def remaining(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)


def enrol(run: Run, upto: int) -> float:
    """Enrol devices (each assigned to its own member of staff) with the service's enrolment function."""
    services = run.services
    assert services is not None
    t = time.perf_counter()
    first = len(run.creds)
    for start in range(first, upto, 250):
        with services.db.session() as session:
            for i in range(start, min(upto, start + 250)):
                staff = add_staff(
                    session, services.ledger, f"S-{i:05d}", f"Nurse {i}", "nurse", "Community", actor="bench"
                )
                key = Ed25519PrivateKey.generate()
                public = key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                enrolled = enrol_lone_worker(
                    session,
                    services.ledger,
                    f"LW-{i:05d}",
                    base64.b64encode(public).decode(),
                    "bench",
                    staff_id=staff.id,
                    site="Community",
                )
                run.creds.append(Credentials(f"LW-{i:05d}", enrolled.mqtt_password, key))
    return time.perf_counter() - t


def enrol_flooder(run: Run) -> Credentials:
    """One more enrolled device, outside the fleet: the one that floods."""
    services = run.services
    assert services is not None
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with services.db.session() as session:
        staff = add_staff(
            session, services.ledger, "S-FLOOD", "Nurse Flood", "nurse", "Community", actor="bench"
        )
        enrolled = enrol_lone_worker(
            session, services.ledger, FLOODER, base64.b64encode(public).decode(), "bench",
            staff_id=staff.id, site="Community",
        )  # fmt: skip
    return Credentials(FLOODER, enrolled.mqtt_password, key)


def wait_online(services: Services, count: int, timeout: float) -> float:
    """Seconds until the service has taken every device's signed ``online`` status."""
    t = time.monotonic()
    deadline = t + timeout
    while True:
        with services.db.session() as session:
            online = session.scalar(
                select(func.count()).select_from(LoneWorkerState).where(LoneWorkerState.presence == "online")
            )
        if online is not None and online >= count:
            return time.monotonic() - t
        if time.monotonic() > deadline:
            raise TimeoutError(f"service recorded {online} of {count} devices online within {timeout} s")
        time.sleep(0.25)


def fd_headroom() -> int:
    """Devices this process (and the broker, which inherits the same limit) can hold connections for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft - 512


def set_size(run: Run, size: int) -> dict[str, Any]:
    """Bring the fleet to ``size`` connected, heartbeating devices: shrink by disconnecting an even
    sample, grow by reconnecting idle devices and then enrolling and connecting new ones."""
    services, fleet, broker, access = run.services, run.fleet, run.broker, run.access
    assert services and fleet and broker and access
    out: dict[str, Any] = {}
    if size < len(fleet.active):
        t = time.monotonic()
        gone = fleet.deactivate(size)
        out["disconnected"] = len(gone)
        out["disconnect_s"] = round(time.monotonic() - t, 2)
        print(f"disconnected {len(gone)} devices in {out['disconnect_s']} s", flush=True)
        return out
    wanted = size - len(fleet.active)
    joining = fleet.idle[:wanted]
    missing = wanted - len(joining)
    if missing > 0:
        if len(run.creds) < len(fleet.devices) + missing:
            out["enrolled"] = len(fleet.devices) + missing - len(run.creds)
            out["enrol_s"] = round(enrol(run, len(fleet.devices) + missing), 2)
            print(f"enrolled {out['enrolled']} in {out['enrol_s']} s", flush=True)
            publish_accounts(run)
        joining += fleet.add(run.creds[len(fleet.devices) : len(fleet.devices) + missing])
    t = time.monotonic()
    fleet.activate(joining)
    out["connected"] = len(joining)
    out["connect_s"] = round(time.monotonic() - t, 2)
    print(f"connected {len(joining)} in {out['connect_s']} s", flush=True)
    out["online_statuses_handled_s"] = round(wait_online(services, size, 180), 2)
    return out


def publish_accounts(run: Run) -> None:
    """Regenerate the broker's files from the registry (plus the bench logins) and reload it."""
    assert run.services and run.access and run.broker
    with run.services.db.session() as session:
        accounts = broker_accounts(session)
    run.access.write(accounts)
    newest = run.creds[-1]
    wait_login(run.broker.port, newest.device_id, newest.password)


def wait_caught_up(run: Run, headers: dict[str, str], timeout: float = 240.0) -> float:
    """Pause the heartbeats until the service has handled every heartbeat and status message sent
    so far, then resume them (evenly spread): a backlog left by an overloaded size, or the statuses
    of devices joining or leaving, would otherwise land in the next measurement. Returns the seconds."""
    assert run.fleet and run.svc
    t = time.monotonic()
    run.fleet.pause()
    try:
        while True:
            run.fleet.trim()
            metrics = service_metrics(run.svc, headers)
            behind = (run.fleet.heartbeats_sent - metrics["heartbeats_handled"]) + (
                run.fleet.statuses_sent - metrics["statuses_handled"]
            )
            if behind <= 20:
                return time.monotonic() - t
            if time.monotonic() - t > timeout:
                raise TimeoutError(f"service still {behind:.0f} messages behind after {timeout} s")
            time.sleep(0.5)
    finally:
        run.fleet.resume(run.args.heartbeat_s)


def run_step(run: Run, size: int, *, first: bool, headers: dict[str, str], cpu: CpuMeter) -> dict[str, Any]:
    args = run.args
    services, fleet, probe, svc = run.services, run.fleet, run.probe, run.svc
    assert services and fleet and probe and svc
    print(f"\n== {size} devices ==", flush=True)
    step: dict[str, Any] = {"devices": size}
    step.update(set_size(run, size))
    step["backlog_drained_s"] = round(wait_caught_up(run, headers), 2)

    # One full heartbeat period so the whole fleet is beating before anything is measured; if the
    # service cannot keep up with the heartbeats alone, no alarm is sent into the growing queue.
    probe.phase = f"{size}:heartbeats"
    fleet.trim()
    hb0, m0, l0 = fleet.heartbeats_sent, service_metrics(svc, headers), time.monotonic()
    time.sleep(args.heartbeat_s)
    fleet.trim()
    hb1, m1, l1 = fleet.heartbeats_sent, service_metrics(svc, headers), time.monotonic()
    warm_rates = {
        "interval_s": args.heartbeat_s,
        "sent_per_s": round((hb1 - hb0) / (l1 - l0), 1),
        "handled_per_s": round((m1["heartbeats_handled"] - m0["heartbeats_handled"]) / (l1 - l0), 1),
        "accepted_per_s": round((m1["heartbeats"] - m0["heartbeats"]) / (l1 - l0), 1),
    }
    if warm_rates["handled_per_s"] < 0.95 * warm_rates["sent_per_s"]:
        print(f"the service does not keep up with the heartbeats alone: {warm_rates}", flush=True)
        fleet.pause()  # the next size resumes them once the service has drained what is queued
        step.update(
            heartbeats=warm_rates,
            keeps_up=False,
            passes=False,
            note="the service did not keep up with the heartbeats alone; no SOS was sent",
            raw_round_trip_heartbeats_only=probe.results(f"{size}:heartbeats", grace_s=0.5),
            load_average_after=load_average(),
        )
        return step
    rng = random.Random(size)
    if first and args.warmup:
        # Not measured: the service's first alarms pay for connection set-up, statement caches and
        # prepared statements; a running service has paid long ago.
        probe.phase = f"{size}:warmup"
        warm = send_sos(fleet, rng.sample(fleet.active, args.warmup), "warmup", args.rate)
        collect_acks(fleet, warm, args.ack_timeout_s)
        run.sos += warm
        time.sleep(1.0)
    step["load_average_before"] = load_average()

    phases: dict[str, Any] = {}
    isolated: list[SosRecord] = []
    if first and args.isolated:
        # One SOS a second: one alarm's cost with the fleet beating but no other alarm in hand.
        probe.phase = f"{size}:isolated"
        isolated = send_sos(fleet, rng.sample(fleet.active, args.isolated), "isolated", 1.0)
        collect_acks(fleet, isolated, args.ack_timeout_s)
        run.sos += isolated
        time.sleep(1.0)

    fleet.trim()
    hb0, m0, c0, l0 = fleet.heartbeats_sent, service_metrics(svc, headers), cpu.snapshot(), time.monotonic()
    count = args.steady if first else args.ramp_steady
    probe.phase = f"{size}:steady"
    steady = send_sos(fleet, rng.sample(fleet.active, min(count, size)), "steady", args.rate)
    collect_acks(fleet, steady, args.ack_timeout_s)
    fleet.trim()
    hb1, m1, c1, l1 = fleet.heartbeats_sent, service_metrics(svc, headers), cpu.snapshot(), time.monotonic()
    run.sos += steady

    burst: list[SosRecord] = []
    if first and args.burst:
        probe.phase = f"{size}:settle"
        time.sleep(2.0)
        probe.phase = f"{size}:burst"
        burst = send_sos(fleet, rng.sample(fleet.active, min(args.burst, size)), "burst", None)
        collect_acks(fleet, burst, args.ack_timeout_s)
        run.sos += burst
    calm: list[SosRecord] = []
    flooded: list[SosRecord] = []
    if first and args.flood_rate and run.flooder is not None:
        calm, flooded, step["flood"] = flood_phases(run, size, rng, headers)
        run.sos += calm + flooded
    probe.phase = f"{size}:after"
    step["load_average_after"] = load_average()

    wall = max(1e-9, l1 - l0)
    step["heartbeats"] = {
        "interval_s": args.heartbeat_s,
        "sent_per_s": round((hb1 - hb0) / wall, 1),
        "handled_per_s": round((m1["heartbeats_handled"] - m0["heartbeats_handled"]) / wall, 1),
        "accepted_per_s": round((m1["heartbeats"] - m0["heartbeats"]) / wall, 1),
    }
    handled = m1["handle_count"] - m0["handle_count"]
    step["service_mean_handle_ms_all_messages"] = (
        round(1000 * (m1["handle_sum"] - m0["handle_sum"]) / handled, 2) if handled else None
    )
    step["cpu_percent_of_one_core_during_steady"] = cpu.percent(c0, c1)

    time.sleep(2.5)  # let the probe's last pings of the phase come back or count as unanswered
    everything = isolated + steady + burst + calm + flooded
    times = db_times(services, everything, run.commit_trigger)
    stored = stored_alarm_events(services, [r.event_id for r in everything])
    for name, records, rate in (
        ("isolated", isolated, 1.0),
        ("steady", steady, args.rate),
        ("burst", burst, None),
        ("unflooded", calm, args.rate),
        ("flooded", flooded, args.rate),
    ):
        if records:
            phases[name] = phase_report(records, times, stored, rate)
            phases[name]["raw_round_trip"] = probe.results(f"{size}:{name}")
    step["raw_round_trip_heartbeats_only"] = probe.results(f"{size}:heartbeats")
    if args.trace and first:
        samples = [
            {"device": r.device_id, "sent": r.wall_sent, "ack_s": r.ack_s, **times.get(r.event_id, {})}
            for r in steady
        ]
        step["trace"] = breakdown(samples, run.work / "trace.log", probe.pings(f"{size}:steady"))
    step["phases"] = phases
    if calm and flooded:
        a, b = phases["unflooded"]["publish_to_ack"], phases["flooded"]["publish_to_ack"]
        if a.get("p50_ms") and b.get("p50_ms"):
            step["flood"]["p50_flooded_over_unflooded"] = round(b["p50_ms"] / a["p50_ms"], 2)
            step["flood"]["p99_flooded_over_unflooded"] = round(b["p99_ms"] / a["p99_ms"], 2)
    p99 = phases["steady"]["publish_to_ack"].get("p99_ms")
    lost = sum(phase["lost"] + phase["unacknowledged"] for phase in phases.values())
    if "flood" in step:
        print(f"flood: {step['flood']}", flush=True)
    hb = step["heartbeats"]
    step["keeps_up"] = bool(lost == 0 and hb["handled_per_s"] >= 0.95 * hb["sent_per_s"])
    step["passes"] = bool(step["keeps_up"] and p99 is not None and p99 < args.ramp_limit_ms)
    for name, phase in phases.items():
        a, c, rt = phase["publish_to_ack"], phase["publish_to_commit"], phase["raw_round_trip"]
        print(
            f"{name}: {phase['sos']} SOS, ack p50/p99 {a.get('p50_ms')}/{a.get('p99_ms')} ms, "
            f"commit p50/p99 {c.get('p50_ms')}/{c.get('p99_ms')} ms, raw round trip p50/p99 "
            f"{rt.get('p50_ms')}/{rt.get('p99_ms')} ms, lost {phase['lost']}, unacked {phase['unacknowledged']}",
            flush=True,
        )
    print(
        f"heartbeats {hb}, cpu {step['cpu_percent_of_one_core_during_steady']}, "
        f"load {step['load_average_after']}",
        flush=True,
    )
    return step


def flood_phases(
    run: Run, size: int, rng: random.Random, headers: dict[str, str]
) -> tuple[list[SosRecord], list[SosRecord], dict[str, Any]]:
    """The same SOS phase twice: first without, then while one enrolled device floods its own
    ``alarm`` topic with garbage (``tests/flood_device.py``, a process of its own writing MQTT
    packets straight to its socket: a third not JSON, a third the wrong shape, a third shaped like
    an SOS but signed by a stranger's key; two seconds in, its wearer's genuine SOS, sent again
    each second until acknowledged)."""
    args, fleet, probe, svc = run.args, run.fleet, run.probe, run.svc
    assert fleet and probe and svc and run.flooder and run.broker
    probe.phase = f"{size}:settle-before-unflooded"
    time.sleep(2.0)
    probe.phase = f"{size}:unflooded"
    calm = send_sos(fleet, rng.sample(fleet.active, args.flood_sos), "unflooded", args.rate)
    collect_acks(fleet, calm, args.ack_timeout_s)
    before = service_metrics(svc, headers)
    key = run.flooder.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()
    command = [
        sys.executable, "-m", "tests.flood_device", str(run.broker.port), run.flooder.device_id,
        run.flooder.password, key, str(args.flood_rate), "3600",
    ]  # fmt: skip
    flooder = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        probe.phase = f"{size}:flood-starting"
        time.sleep(3.0)  # under way, and its wearer's SOS among its garbage
        probe.phase = f"{size}:flooded"
        flooded = send_sos(fleet, rng.sample(fleet.active, args.flood_sos), "flooded", args.rate)
        collect_acks(fleet, flooded, args.ack_timeout_s)
        out, _ = flooder.communicate("", timeout=120)
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait(10)
    after = service_metrics(svc, headers)
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    seconds = max(1e-9, time.monotonic() - started)
    flood = {
        "flooder": report,
        "flood_rate_asked_per_s": args.flood_rate,
        "flood_rate_sent_per_s": round(report.get("sent", 0) / max(1e-9, report.get("seconds", seconds)), 1),
        "refused_at_the_door": int(after["refused_at_the_door"] - before["refused_at_the_door"]),
        "devices_over_share_before": before["devices_over_share"],
        "devices_over_share_after": after["devices_over_share"],
        "flooders_genuine_sos_acked_after_s": report.get("own_sos_s"),
    }
    return calm, flooded, flood


def next_size(run: Run, steps: list[dict[str, Any]], ramp: list[int], headroom: int) -> int | None:
    """The fleet size to measure next, or None when the search is done.

    First up the ramp while the service keeps up (its capacity); then toward the largest fleet
    whose steady-phase p99 is under the limit: halving below the smallest failure while nothing
    has passed, else halfway between the largest pass and the smallest failure above it.
    """
    if run.args.first_only:
        return None
    tried = {s["devices"]: s for s in steps}
    last = steps[-1]
    going_up = all(s["devices"] <= last["devices"] for s in steps) and last.get("keeps_up")
    if going_up:
        larger = [s for s in ramp if s > last["devices"] and s <= headroom]
        if larger:
            return larger[0]
    passed = [n for n, s in tried.items() if s.get("passes")]
    best = max(passed, default=0)
    failed_above = [n for n, s in tried.items() if not s.get("passes") and n > best]
    if not failed_above:
        return None
    ceiling = min(failed_above)
    step = run.args.resolution
    candidate = ceiling // 2 if not best else (best + ceiling) // 2
    candidate = max(step, round(candidate / step) * step)
    if candidate in tried or candidate <= best or candidate >= ceiling or candidate < run.args.floor:
        return None
    return candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--echo-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (200 devices)")
    parser.add_argument("--fleet", type=int, default=2000, help="first fleet size (the headline figures)")
    parser.add_argument("--ramp", default="4000,8000,12000,16000", help="larger fleet sizes to try, in order")
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    parser.add_argument("--steady", type=int, default=300, help="SOS in the first steady phase")
    parser.add_argument("--ramp-steady", type=int, default=120, help="SOS in the later steady phases")
    parser.add_argument("--rate", type=float, default=2.0, help="SOS a second in the steady phases")
    parser.add_argument("--burst", type=int, default=200, help="SOS at once after the first steady phase")
    parser.add_argument("--isolated", type=int, default=0, help="SOS at 1/s before the first steady phase")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured SOS before the first phases")
    parser.add_argument("--floor", type=int, default=250, help="smallest fleet the search goes down to")
    parser.add_argument("--resolution", type=int, default=250, help="fleet sizes are multiples of this")
    parser.add_argument("--ramp-limit-ms", type=float, default=100.0)
    parser.add_argument("--ack-timeout-s", type=float, default=60.0)
    parser.add_argument("--ping-hz", type=float, default=20.0)
    parser.add_argument("--budget-s", type=float, default=840.0, help="stop ramping before this")
    parser.add_argument("--sqlite", action="store_true", help="service on SQLite instead of PostgreSQL")
    parser.add_argument(
        "--single-process",
        action="store_true",
        help="heartbeats in the service process too (no EVIDENCE_MQTT_TELEMETRY_PROCESS)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=2000.0,
        help="garbage a second from one device (0: no flood phase)",
    )
    parser.add_argument("--flood-sos", type=int, default=100, help="SOS in each of the flood's two phases")
    parser.add_argument("--first-only", action="store_true", help="measure the first fleet size only")
    parser.add_argument("--out", help="results name (default alarms, or alarms-quick)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="trace the service (bench/site/bench_sos_trace.py) and break the slowest steady SOS down by step",
    )
    args = parser.parse_args()
    if args.echo_port:
        run_echo(args.echo_port)
        return
    if args.quick:
        args.fleet, args.ramp, args.steady, args.ramp_steady, args.burst = 200, "400", 50, 50, 50
        args.isolated, args.warmup, args.floor, args.resolution = 5, 10, 100, 50
        args.heartbeat_s = 5.0

    run = Run(args, scratch("bench-alarms-"))
    results: dict[str, Any] = {}
    try:
        results = execute(run)
    finally:
        teardown(run)
    if results:
        report(results, args.quick, args.out)


def trace_env(trace: bool, work: Path) -> dict[str, str]:
    """The service's environment for ``--trace``: the benchmarks' ``sitecustomize`` on its path, with
    the SOS trace's hook (``bench/site/bench_sos_trace.py``)."""
    if not trace:
        return {}
    tracer = Path(__file__).resolve().parent / "site"
    return {
        "BENCH_SOS_TRACE": str(work / "trace.log"),
        "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}{os.pathsep}{tracer}",
    }


def execute(run: Run) -> dict[str, Any]:
    args, work = run.args, run.work
    headroom = fd_headroom()
    ramp = sorted(int(s) for s in args.ramp.split(",") if s.strip())
    load_at_start = load_average()
    print(f"load average at start: {load_at_start}", flush=True)

    if args.sqlite:
        database_url = f"sqlite:///{work / 'bench.db'}"
    else:
        run.pg = ScratchPostgres(PG_ADMIN_URL, "evidence_bench_alarms")
        database_url = run.pg.create()
    run.commit_trigger = not args.sqlite

    service_pw, probe_pw, echo_pw = generate_password(), generate_password(), generate_password()
    service = BrokerAccount(SERVICE_USER, hash_password(service_pw))
    run.broker = start_private_broker(work / "mosquitto", devices=[], service=service)
    run.access = BrokerAccess(run.broker, service, probe_pw, echo_pw)
    run.access.write([])
    wait_login(run.broker.port, PROBE_USER, probe_pw)
    client_id = f"evidence-bench-{uuid.uuid4().hex[:8]}"
    run.svc = BenchService(
        work,
        EVIDENCE_DATABASE_URL=database_url,
        EVIDENCE_MQTT_HOST="127.0.0.1",
        EVIDENCE_MQTT_PORT=str(run.broker.port),
        EVIDENCE_MQTT_USERNAME=SERVICE_USER,
        EVIDENCE_MQTT_PASSWORD=service_pw,
        EVIDENCE_MQTT_CLIENT_ID=client_id,
        # Nobody plays the operator here: an hour's ack timeout keeps the escalation of hundreds of
        # unacknowledged bench alarms (30 s by default) from landing inside later phases.
        EVIDENCE_ALARM_ACK_TIMEOUT_SECONDS="3600",
        # Devices taken out of the fleet (to measure a smaller one) would otherwise raise
        # device-offline alarms for their open SOS three minutes later, in the middle of a phase.
        EVIDENCE_DEVICE_OFFLINE_AFTER_SECONDS="86400",
        EVIDENCE_MQTT_TELEMETRY_PROCESS="false" if run.single_process else "true",
        **trace_env(args.trace, work),
    )
    run.svc.start()
    deadline = time.monotonic() + 30
    consumers = [client_id] if run.single_process else [client_id, f"{client_id}-telemetry"]
    while not all(f" as {c} " in run.broker.log_path.read_text(errors="replace") for c in consumers):
        if time.monotonic() > deadline:
            raise RuntimeError("the service's alarm consumers did not connect to the broker")
        time.sleep(0.1)
    if run.commit_trigger:
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            for statement in COMMIT_TRIGGER_SQL:
                conn.execute(statement)
    headers = run.svc.admin_headers()
    run.services = build_services(
        Settings(
            data_dir=work / "var",
            database_url=database_url,
            s3_endpoint=run.svc.seaweed.endpoint,
            s3_access_key=run.svc.seaweed.credentials.access_key,
            s3_secret_key=run.svc.seaweed.credentials.secret_key,
            min_free_bytes=0,
            redaction_enabled=False,
        ),
        migrate=False,
    )
    run.echo = EchoProcess(run.broker.port, echo_pw, work / "echo.log")
    run.echo.start()
    run.fleet = BenchFleet(run.broker.port, run.services.key.public_raw)
    run.probe = RoundTripProbe(run.fleet.loop, run.broker.port, probe_pw, args.ping_hz)
    run.probe.start()
    housekeeping = threading.Event()

    def trim_forever() -> None:
        while not housekeeping.wait(5.0):
            run.fleet.trim()  # type: ignore[union-attr]

    threading.Thread(target=trim_forever, daemon=True).start()
    assert run.svc.proc is not None and run.echo.proc is not None
    broker_pid = next((p.pid for p in psutil.Process().children() if p.name() == "mosquitto"), None)
    pids = {"service": run.svc.proc.pid, "echo": run.echo.proc.pid, "bench_fleet_and_probe": os.getpid()}
    if not run.single_process:
        pids["service_telemetry"] = next(p.pid for p in psutil.Process(run.svc.proc.pid).children())
    if broker_pid:
        pids["broker"] = broker_pid
    cpu = CpuMeter(pids, run.pg.name if run.pg else None)

    # Enrolment is not what is measured: do the first two sizes' worth before anything beats.
    t = time.perf_counter()
    enrol(run, min(headroom, max([args.fleet, *ramp[:1]])))
    enrol_rate = len(run.creds) / (time.perf_counter() - t)
    if args.flood_rate:
        run.flooder = enrol_flooder(run)
    print(f"enrolled {len(run.creds)} devices at {enrol_rate:.0f}/s", flush=True)
    publish_accounts(run)

    steps: list[dict[str, Any]] = []
    stopped_because = "search finished"
    size: int | None = args.fleet
    while size is not None:
        if steps and run.remaining() < 90 + 3 * args.heartbeat_s + max(0, size - len(run.creds)) / 50:
            stopped_because = f"time budget ({args.budget_s:.0f} s) would be exceeded at {size} devices"
            break
        try:
            first = not any("phases" in s for s in steps)
            step = run_step(run, size, first=first, headers=headers, cpu=cpu)
        except (ConnectionError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            step = {"devices": size, "error": error, "keeps_up": False, "passes": False}
            print(f"{size} devices: {exc}", flush=True)
        steps.append(step)
        size = next_size(run, steps, ramp, headroom)
    housekeeping.set()

    # Final reckoning over every SOS of the run: stop the heartbeats, give the service time to drain.
    run.fleet.stop_reporting()
    collect_acks(run.fleet, run.sos, args.ack_timeout_s)
    all_ids = [r.event_id for r in run.sos]
    stored = stored_alarm_events(run.services, all_ids)
    with run.services.db.session() as session:
        rows = session.scalar(
            select(func.count()).select_from(AlarmRecord).where(AlarmRecord.source_event_id.is_not(None))
        )
    passed = [s["devices"] for s in steps if s.get("passes")]
    failed = [s["devices"] for s in steps if not s.get("passes")]
    largest = max(passed, default=None)
    first = steps[0] if steps else {}
    steady = first.get("phases", {}).get("steady", {})
    headline_p99 = steady.get("publish_to_ack", {}).get("p99_ms")
    return {
        "description": __doc__.split("\n\n")[0],
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "database": "sqlite" if args.sqlite else "postgresql",
        "broker": {
            "server": "mosquitto",
            "version": _mosquitto_version(),
            "config": "devices/broker/evidence.conf",
        },
        "settings": {
            "fleet": args.fleet,
            "heartbeat_interval_s": args.heartbeat_s,
            "steady_sos_first_fleet": args.steady,
            "steady_sos_larger_fleets": args.ramp_steady,
            "steady_rate_per_s": args.rate,
            "burst_sos": args.burst,
            "flood_rate_per_s": args.flood_rate,
            "flood_sos_each_phase": args.flood_sos,
            "isolated_sos": args.isolated,
            "warmup_sos": args.warmup,
            "probe_pings_per_s": args.ping_hz,
            "service_alarm_ack_timeout_s": 3600,
            "service_processes": "one" if run.single_process else "alarms + telemetry companion",
            "service_mqtt_workers": int(
                run.svc.env().get("EVIDENCE_MQTT_WORKERS", Settings.model_fields["mqtt_workers"].default)
            ),
        },
        "method": {
            "publish_to_ack": "device side: from the moment the device's publish() returned to the device "
            "reading the service's signed 'received' ack (the simulator's own measure)",
            "publish_to_commit": "PostgreSQL clock_timestamp() stamped by a deferred constraint trigger on "
            "INSERT INTO alarms (fires at COMMIT, just before the WAL flush), minus the wall-clock time "
            "taken just before the device's sos() call; same machine clock"
            if run.commit_trigger
            else "not measured on SQLite",
            "publish_to_service_handling": "lone_worker_events.received_at (when the service took the "
            "message off its queue and began handling it) minus the device's send time",
            "raw_round_trip": "baseline on the same broker in the same seconds: a plain paho client on the "
            "fleet's I/O thread publishes a QoS 1 message of an alarm's size (~450 B) every "
            f"{1000 / args.ping_hz:.0f} ms; a plain paho client in its own process, subscribed like the "
            "service (MQTT v5 shared subscription, QoS 1, TCP_NODELAY), publishes it straight back at "
            "QoS 1; timed from publish() returning to the echo being read. Both bench logins are added "
            "to the generated ACL on bench/v1/ping and bench/v1/pong only",
            "lost": "SOS whose event id has no alarm row once the run is over",
            "ramp": "first up the ramp while the service keeps up (no SOS lost or unacknowledged within "
            f"{args.ack_timeout_s:.0f} s, heartbeats handled at >= 95 % of the rate sent); then a search for the "
            f"largest fleet whose steady-phase SOS p99 publish->ack is under {args.ramp_limit_ms:.0f} ms "
            "(halving below the smallest failure while nothing passed, else bisecting; sizes in "
            f"multiples of {args.resolution}, not below {args.floor}). A fleet shrinks by disconnecting an "
            "even sample of devices (their heartbeats stay spread) and grows by reconnecting or enrolling; "
            "before each measurement the service's heartbeat backlog is drained and the fleet beats for "
            "one full period",
            "warmup": f"{args.warmup} unmeasured SOS at the first size before the measured phases",
            "service_settings_changed": "EVIDENCE_ALARM_ACK_TIMEOUT_SECONDS=3600 (nobody plays the operator, "
            "so escalations after 30 s would land in later phases), EVIDENCE_DEVICE_OFFLINE_AFTER_SECONDS=86400 "
            "(devices taken out of the fleet keep open SOS alarms)",
            "cpu": "percent of one core over the steady phase; 2 cores in all, shared with other work",
        },
        "target": {
            "alarms_lost": 0,
            "p99_publish_to_ack_ms_at_2000": 25,
            "ramp_p99_publish_to_ack_ms": args.ramp_limit_ms,
        },
        "steps": steps,
        "search_stopped_because": stopped_because,
        "largest_fleet_under_limit": largest,
        "smallest_fleet_over_limit": min((n for n in failed if largest is None or n > largest), default=None),
        "capacity_ramp": [
            {
                "devices": s["devices"],
                "keeps_up": s.get("keeps_up"),
                "heartbeats": s.get("heartbeats"),
                "steady_p99_ms": s.get("phases", {})
                .get("steady", {})
                .get("publish_to_ack", {})
                .get("p99_ms"),
            }
            for s in steps
        ],
        "enrolment_per_s": round(enrol_rate, 1),
        "totals": {
            "sos_sent": len(all_ids),
            "sos_with_alarm_row": len(stored),
            "alarms_lost": len(all_ids) - len(stored),
            "sos_unacknowledged_at_end": sum(1 for r in run.sos if r.ack_s is None),
            "device_alarm_rows_in_db": rows,
        },
        "verdict": {
            "zero_alarms_lost": len(all_ids) == len(stored),
            "p99_publish_to_ack_under_25ms_at_first_fleet": headline_p99 is not None and headline_p99 < 25,
        },
    }


def _mosquitto_version() -> str:
    from devices.broker_access import find_mosquitto

    out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout
    return out.splitlines()[0].removeprefix("mosquitto version ").strip() if out else "unknown"


def teardown(run: Run) -> None:
    """Stop everything this run started, in an order that lets nothing wait on a dead peer."""
    if run.probe is not None:
        run.probe.stop()
    if run.svc is not None:
        try:
            run.svc.stop()
        except subprocess.TimeoutExpired:
            if run.svc.proc is not None:
                run.svc.proc.kill()
                run.svc.proc.wait(10)
            run.svc.seaweed.stop()
    if run.fleet is not None:
        run.fleet.close()
    if run.echo is not None:
        run.echo.stop()
    if run.broker is not None:
        run.broker.stop()
    if run.services is not None:
        run.services.db.dispose()
    if run.pg is not None:
        try:
            run.pg.drop()
        except Exception as exc:  # noqa: BLE001 - report, do not hide the run's own error
            print(f"could not drop scratch database {run.pg.name}: {exc}", file=sys.stderr)
    if run.args.keep:
        print(f"scratch directory kept: {run.work}")
    else:
        shutil.rmtree(run.work, ignore_errors=True)


def _fmt(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "–" if value is None else f"{value:g}"


def report(results: dict[str, Any], quick: bool, name: str | None = None) -> None:
    out = write_results(name or ("alarms" + ("-quick" if quick else "")), results)
    print(
        "\n| devices | phase | SOS | ack p50 | ack p95 | ack p99 | ack max | commit p50 | commit p99 | "
        "raw RTT p50 | raw RTT p99 | lost | unacked |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for step in results["steps"]:
        for name, phase in step.get("phases", {}).items():
            a, c, rt = phase["publish_to_ack"], phase["publish_to_commit"], phase["raw_round_trip"]
            label = f"{name} ({phase['rate_per_s']:g}/s)" if phase["rate_per_s"] else f"{name} (at once)"
            print(
                f"| {step['devices']} | {label} | {phase['sos']} | {_fmt(a, 'p50_ms')} | {_fmt(a, 'p95_ms')} | "
                f"{_fmt(a, 'p99_ms')} | {_fmt(a, 'max_ms')} | {_fmt(c, 'p50_ms')} | {_fmt(c, 'p99_ms')} | "
                f"{_fmt(rt, 'p50_ms')} | {_fmt(rt, 'p99_ms')} | {phase['lost']} | {phase['unacknowledged']} |"
            )
    print(
        "\n(milliseconds; raw RTT = plain paho publish → echo → back on the same broker in the same seconds)"
    )
    print(
        "\n| devices | heartbeats sent/s | handled/s | service CPU % | broker % | PostgreSQL % | fleet % | "
        "load avg | keeps up | steady p99 under limit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for step in results["steps"]:
        if "heartbeats" not in step:
            print(f"| {step['devices']} | – | – | – | – | – | – | – | no: {step.get('error', '')[:60]} | – |")
            continue
        cpu = step.get("cpu_percent_of_one_core_during_steady", {})
        print(
            f"| {step['devices']} | {step['heartbeats']['sent_per_s']} | {step['heartbeats']['handled_per_s']} | "
            f"{cpu.get('service', '–')} | {cpu.get('broker', '–')} | {cpu.get('postgres', '–')} | "
            f"{cpu.get('bench_fleet_and_probe', '–')} | {step['load_average_after'][0]} | "
            f"{'yes' if step['keeps_up'] else 'no'} | {'yes' if step['passes'] else 'no'} |"
        )
    totals = results["totals"]
    print(
        f"\nSOS sent {totals['sos_sent']}, lost {totals['alarms_lost']}, unacknowledged at the end "
        f"{totals['sos_unacknowledged_at_end']}; largest fleet under {results['target']['ramp_p99_publish_to_ack_ms']:g} ms "
        f"p99: {results['largest_fleet_under_limit']} ({results['search_stopped_because']})"
    )
    for step in results["steps"]:
        if "flood" in step:
            print(f"\nflood at {step['devices']} devices: {step['flood']}")
    print(f"load average start {results['load_average_at_start']}, end {results['load_average_at_end']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
