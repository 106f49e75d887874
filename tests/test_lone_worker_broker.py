"""Broker access for lone-worker devices, against a real private Mosquitto started from the generated files."""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.broker_access import (
    BrokerAccount,
    BrokerProcess,
    acl_file,
    generate_password,
    hash_password,
    password_file,
    render_broker_config,
    start_private_broker,
    verify_password,
)

NOT_AUTHORISED = 135
ACCEPTED = (0, 16)  # success, or success with "no matching subscribers" (MQTT 5)


# --------------------------------------------------------------------------- password and ACL files


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """Our $7$ hash is the one mosquitto_passwd writes, byte for byte given the same salt."""
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "LW-0001", "s3cret pass"], check=True)
    username, theirs = path.read_text().strip().split(":", 1)
    assert username == "LW-0001"
    _, seven, iterations, salt_b64, _ = theirs.split("$")
    assert seven == "7"
    assert verify_password("s3cret pass", theirs) and not verify_password("s3cret pas", theirs)
    ours = hash_password("s3cret pass", iterations=int(iterations), salt=base64.b64decode(salt_b64))
    assert ours == theirs
    fresh = hash_password("another")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", fresh)
    assert verify_password("another", fresh) and not verify_password("another", "$6$nope")


@pytest.mark.parametrize("bad", ["LW/1", "LW+1", "LW#1", "LW 1", "LW:1", "LW-1\nuser root", "", "_control"])
def test_names_that_could_widen_access_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        acl_file([bad], "evidence-service")


def test_duplicate_or_colliding_accounts_are_refused() -> None:
    with pytest.raises(ValueError):
        acl_file(["LW-1", "LW-1"], "svc")
    with pytest.raises(ValueError):
        acl_file(["svc"], "svc")
    with pytest.raises(ValueError):
        password_file([BrokerAccount("a", hash_password("x")), BrokerAccount("a", hash_password("y"))])
    with pytest.raises(ValueError):
        password_file([BrokerAccount("a", "plain-text")])


def test_acl_lists_each_device_with_only_its_own_topics() -> None:
    text = acl_file(["LW-1", "LW-2"], "svc")
    block = text.split("user LW-1\n")[1].split("\n\n")[0].splitlines()
    assert block == [
        "topic write lw/v1/LW-1/alarm",
        "topic write lw/v1/LW-1/heartbeat",
        "topic write lw/v1/LW-1/location",
        "topic write lw/v1/LW-1/checkin",
        "topic write lw/v1/LW-1/status",
        "topic read lw/v1/LW-1/ack",
        "topic read lw/v1/LW-1/command",
    ]
    assert "pattern" not in text and "LW-2/alarm" not in "\n".join(block)


def test_rendered_config_never_drops_queued_messages(tmp_path: Path) -> None:
    conf = render_broker_config(
        port=1234, data_dir=tmp_path, password_path=tmp_path / "p", acl_path=tmp_path / "a"
    )
    lines = {line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")}
    for expected in (
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "persistence true",
        "per_listener_settings true",
        "allow_anonymous false",
        "listener 1234 127.0.0.1",
        f"password_file {tmp_path / 'p'}",
        f"acl_file {tmp_path / 'a'}",
    ):
        assert expected in lines
    assert "$" not in conf.replace("$share", "")  # every field was filled in


# --------------------------------------------------------------------------- a real broker


@dataclass
class Accounts:
    service: tuple[str, str]
    devices: dict[str, str]


@pytest.fixture(scope="module")
def accounts() -> Accounts:
    return Accounts(
        ("evidence-service", generate_password()), {"LW-A": generate_password(), "LW-B": generate_password()}
    )


def _broker_accounts(accounts: Accounts) -> tuple[list[BrokerAccount], BrokerAccount]:
    devices = [BrokerAccount(d, hash_password(p)) for d, p in accounts.devices.items()]
    return devices, BrokerAccount(accounts.service[0], hash_password(accounts.service[1]))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, accounts: Accounts) -> Iterator[BrokerProcess]:
    devices, service = _broker_accounts(accounts)
    process = start_private_broker(tmp_path_factory.mktemp("mosquitto"), devices=devices, service=service)
    yield process
    process.stop()


class Probe:
    """A bare MQTT client for poking at the broker's access rules."""

    def __init__(
        self, port: int, username: str, password: str, protocol: Any = mqtt.MQTTv5, **kw: Any
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=kw.get("client_id", f"probe-{uuid.uuid4().hex[:8]}"),
            protocol=protocol,
            reconnect_on_failure=False,
            **({"clean_session": kw["clean_session"]} if "clean_session" in kw else {}),
        )
        self.client.username_pw_set(username, password)
        self.port = port
        self.cond = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, int] = {}
        self.disconnected = False
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _notify(self, fn: Callable[[], None]) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self._notify(lambda: setattr(self, "connack", reason))

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self._notify(lambda: self.messages.append((msg.topic, msg.payload)))

    def _on_subscribe(self, c: Any, u: Any, mid: int, reasons: list[Any], props: Any) -> None:
        self._notify(lambda: self.subacks.__setitem__(mid, reasons))

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        self._notify(lambda: self.pubacks.__setitem__(mid, reason.value))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self._notify(lambda: setattr(self, "disconnected", True))

    def wait(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise TimeoutError(f"timed out waiting for {what}")
            return predicate()

    def connect(self) -> Probe:
        self.client.connect("127.0.0.1", self.port, keepalive=60)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None, what="CONNACK")
        return self

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        _, mid = self.client.subscribe(topic, qos)
        return self.wait(lambda: self.subacks.get(mid), what="SUBACK")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        info = self.client.publish(topic, payload, qos=qos)
        self.wait(lambda: info.mid in self.pubacks, what="PUBACK")
        return self.pubacks[info.mid]

    def received(self, topic: str) -> list[bytes]:
        with self.cond:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes(broker: BrokerProcess, accounts: Accounts) -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    def make(username: str, protocol: Any = mqtt.MQTTv5) -> Probe:
        password = accounts.service[1] if username == accounts.service[0] else accounts.devices[username]
        probe = Probe(broker.port, username, password, protocol).connect()
        assert not probe.connack.is_failure, probe.connack
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def test_device_publishes_on_its_own_topic_and_receives_its_own_ack(probes: Callable[..., Probe]) -> None:
    service = probes("evidence-service")
    assert not service.subscribe("$share/evidence/lw/v1/+/alarm")[0].is_failure
    device = probes("LW-A")
    device.subscribe("lw/v1/LW-A/ack")
    assert device.publish("lw/v1/LW-A/alarm", b"sos") in ACCEPTED
    service.wait(lambda: service.received("lw/v1/LW-A/alarm") == [b"sos"], what="alarm at the service")
    assert service.publish("lw/v1/LW-A/ack", b"ack") in ACCEPTED
    device.wait(lambda: device.received("lw/v1/LW-A/ack") == [b"ack"], what="ack at the device")


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("leaf", ["alarm", "status"])
def test_publishing_on_another_devices_topic_is_not_delivered(
    probes: Callable[..., Probe], protocol: Any, leaf: str
) -> None:
    service = probes("evidence-service")
    service.subscribe("lw/v1/+/#")
    intruder = probes("LW-A", protocol)
    code = intruder.publish(f"lw/v1/LW-B/{leaf}", b"forged")
    if protocol == mqtt.MQTTv5:
        assert code == NOT_AUTHORISED
    # a marker published afterwards on an allowed topic arrives; the forged message never did
    marker = probes("LW-A")
    assert marker.publish("lw/v1/LW-A/alarm", b"marker") in ACCEPTED
    service.wait(lambda: b"marker" in service.received("lw/v1/LW-A/alarm"), what="marker")
    assert service.received(f"lw/v1/LW-B/{leaf}") == []


@pytest.mark.parametrize("leaf", ["ack", "command", "anything"])
def test_a_device_cannot_publish_acks_or_commands_even_to_itself(
    probes: Callable[..., Probe], leaf: str
) -> None:
    listener = probes("LW-A")
    listener.subscribe(f"lw/v1/LW-A/{leaf}")
    faker = probes("LW-A")
    assert faker.publish(f"lw/v1/LW-A/{leaf}", b"fake") == NOT_AUTHORISED
    service = probes("evidence-service")
    assert service.publish("lw/v1/LW-A/ack", b"real") in ACCEPTED
    if leaf == "ack":
        listener.wait(lambda: listener.received("lw/v1/LW-A/ack") == [b"real"], what="real ack")
    else:
        listener.subscribe("lw/v1/LW-A/ack")
        assert service.publish("lw/v1/LW-A/ack", b"real2") in ACCEPTED
        listener.wait(lambda: b"real2" in listener.received("lw/v1/LW-A/ack"), what="real ack")
        assert listener.received(f"lw/v1/LW-A/{leaf}") == []


def test_a_device_cannot_read_another_devices_acks(probes: Callable[..., Probe]) -> None:
    snoop = probes("LW-A")
    snoop.subscribe("lw/v1/LW-B/ack")
    snoop.subscribe("lw/v1/#")
    snoop.subscribe("lw/v1/LW-A/ack")
    owner = probes("LW-B")
    owner.subscribe("lw/v1/LW-B/ack")
    service = probes("evidence-service")
    assert service.publish("lw/v1/LW-B/ack", b"for B") in ACCEPTED
    assert service.publish("lw/v1/LW-A/ack", b"for A") in ACCEPTED
    owner.wait(lambda: owner.received("lw/v1/LW-B/ack") == [b"for B"], what="B's ack")
    snoop.wait(lambda: b"for A" in snoop.received("lw/v1/LW-A/ack"), what="A's own ack")
    assert snoop.received("lw/v1/LW-B/ack") == []


@pytest.mark.parametrize("who", ["wrong-password", "unknown-user"])
def test_logins_other_than_enrolled_ones_are_refused(broker: BrokerProcess, who: str) -> None:
    username = "LW-A" if who == "wrong-password" else "LW-Z"
    probe = Probe(broker.port, username, "not-the-password").connect()
    try:
        assert probe.connack.is_failure
    finally:
        probe.close()


def test_regenerated_files_take_effect_on_reload(broker: BrokerProcess, accounts: Accounts) -> None:
    devices, service = _broker_accounts(accounts)
    newcomer = generate_password()
    broker.update_accounts(
        devices=[*devices, BrokerAccount("LW-NEW", hash_password(newcomer))], service=service
    )
    deadline = time.monotonic() + 10
    while True:  # the broker re-reads its files asynchronously after SIGHUP
        probe = Probe(broker.port, "LW-NEW", newcomer).connect()
        if not probe.connack.is_failure or time.monotonic() > deadline:
            break
        probe.close()
    try:
        assert not probe.connack.is_failure, broker.log_tail()
        assert probe.publish("lw/v1/LW-NEW/alarm", b"hello") in ACCEPTED
    finally:
        probe.close()
    probe = Probe(broker.port, "LW-NEW", newcomer).connect()
    try:
        assert probe.publish("lw/v1/LW-A/alarm", b"hello") == NOT_AUTHORISED
    finally:
        probe.close()
    broker.update_accounts(devices=devices, service=service)  # leave the module's broker as it was


# --------------------------------------------------------------------------- no silent drops


N_MESSAGES = 5000


class StalledSubscriber:
    """A QoS 1 subscriber (the service account, MQTT 3.1.1 so the broker's in-flight limit of 20
    applies) that is driven by hand: once subscribed it reads nothing until told to catch up."""

    def __init__(self, port: int, accounts: Accounts, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(*accounts.service)
        self.got: set[int] = set()
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.got.add(int(m.payload))
        self.client.on_subscribe = lambda c, u, mid, reasons, props: subscribed.set()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("lw/v1/+/alarm", 1)
        self.client.connect("127.0.0.1", port, keepalive=120)
        deadline = time.monotonic() + 5
        while not subscribed.is_set():
            self.client.loop(0.05)
            assert time.monotonic() < deadline, "subscriber did not subscribe"

    def catch_up(self, timeout: float, until: int = N_MESSAGES) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < until and time.monotonic() < deadline:
            self.client.loop(0.1)

    def close(self) -> None:
        self.client.disconnect()


def _flood(port: int, accounts: Accounts) -> None:
    """A device publishes 5,000 QoS 1 alarms; returns once the broker has taken (PUBACKed) each."""
    device = Probe(port, "LW-A", accounts.devices["LW-A"]).connect()
    try:
        infos = [device.client.publish("lw/v1/LW-A/alarm", str(i).encode(), qos=1) for i in range(N_MESSAGES)]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        device.close()


def test_slow_qos1_subscriber_receives_every_one_of_5000_alarms(
    broker: BrokerProcess, accounts: Accounts
) -> None:
    slow = StalledSubscriber(broker.port, accounts, "slow-service")
    try:
        _flood(broker.port, accounts)
        slow.catch_up(timeout=60)
        assert slow.got == set(range(N_MESSAGES))
    finally:
        slow.close()
    assert "dropped" not in broker.log_path.read_text()


def test_the_default_queue_limit_would_have_lost_alarms(tmp_path: Path, accounts: Accounts) -> None:
    """Control: the same flood against Mosquitto's usual limit of 1,000 queued messages loses alarms."""
    devices, service = _broker_accounts(accounts)
    control = start_private_broker(tmp_path, devices=devices, service=service)
    control.stop()
    conf = control.files.config.read_text()
    control.files.config.write_text(conf.replace("max_queued_messages 0", "max_queued_messages 1000"))
    control.start()
    try:
        slow = StalledSubscriber(control.port, accounts, "slow-control")
        try:
            _flood(control.port, accounts)
            # it still delivers what it kept (1,000 queued), but says it dropped the rest
            slow.catch_up(timeout=10, until=1000)
            assert len(slow.got) >= 1000
        finally:
            slow.close()
        assert "Outgoing messages are being dropped" in control.log_path.read_text()
    finally:
        control.stop()
