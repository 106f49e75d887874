"""Broker access for lone-worker devices, against a real private Mosquitto started from the generated files."""

from __future__ import annotations

import base64
import contextlib
import json
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.broker_access import (
    BrokerAccount,
    BrokerProcess,
    ExtraLogins,
    generate_password,
    hash_password,
    password_file,
    read_rules,
    render_broker_config,
    start_private_broker,
    verify_password,
)
from devices.broker_rules import (
    ADMIN_USERNAME,
    RECEIVE,
    SEND,
    SUBSCRIBE_LITERAL,
    Acl,
    Client,
    Role,
    Rules,
    changes,
    rules_for,
)

NOT_AUTHORISED = 135
ACCEPTED = (0, 16)  # success, or success with "no matching subscribers" (MQTT 5)
SUBACK_REFUSED = (0x87, 0x80)  # MQTT 5 "not authorised"; MQTT 3.1.1 "failure"


def hostile_subscriptions(me: str, other: str, groups: list[str]) -> list[str]:
    """Every subscription a device has no business making: shared groups (the real one and guesses),
    wildcards, other devices' topics, its own device topics, ``$`` topics, the service's topics."""
    shared = [f"$share/{g}/lw/v1/+/{leaf}" for g in groups for leaf in ("alarm", "checkin", "heartbeat")]
    shared += [f"$share/{g}/lw/v1/#" for g in groups] + [f"$share/{g}/#" for g in groups]
    shared += [f"$share/{groups[0]}/lw/v1/{me}/ack", f"$share/{groups[0]}/lw/v1/{other}/alarm"]
    return [
        *shared,
        "#",
        "+",
        "+/#",
        "lw/#",
        "lw/v1/#",
        "lw/v1/+/alarm",
        "lw/v1/+/+",
        "lw/v1/+/ack",
        f"lw/v1/{other}/alarm",
        f"lw/v1/{other}/ack",
        f"lw/v1/{other}/command",
        f"lw/v1/{other}/#",
        f"lw/v1/{me}/#",
        f"lw/v1/{me}/+",
        f"lw/v1/{me}/alarm",
        f"lw/v1/{me}/status",
        "lw/v1/_control/#",
        "lw/v1/_control/escalations",
        "$SYS/#",
        "$SYS/broker/clients/connected",
        "$CONTROL/#",
        "$CONTROL/dynamic-security/v1/response",
    ]


# --------------------------------------------------------------------------- password and rules files


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


@pytest.mark.parametrize(
    "bad", ["LW/1", "LW+1", "LW#1", "LW 1", "LW:1", "LW-1\nuser root", "", "_control", "a@b"]
)
def test_names_that_could_widen_access_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        rules_for([bad], "evidence-service")


def test_duplicate_or_colliding_accounts_are_refused() -> None:
    with pytest.raises(ValueError):
        rules_for(["LW-1", "LW-1"], "svc")
    with pytest.raises(ValueError):
        rules_for(["svc"], "svc")
    with pytest.raises(ValueError):
        rules_for([], ADMIN_USERNAME)
    with pytest.raises(ValueError):
        password_file([BrokerAccount("a", hash_password("x")), BrokerAccount("a", hash_password("y"))])
    with pytest.raises(ValueError):
        password_file([BrokerAccount("a", "plain-text")])
    with pytest.raises(ValueError):
        rules_for(["LW-1"], "svc").with_accounts([Client("LW-1", ())], [])


def test_each_device_is_bound_to_its_client_id_and_only_its_own_topics() -> None:
    rules = rules_for(["LW-1", "LW-2"], "svc")
    device = rules.clients["LW-1"]
    assert device.clientid == "LW-1" and device.roles == ("device:LW-1",)
    assert rules.clients["svc"].clientid is None  # each service instance has its own client id
    assert rules.clients[ADMIN_USERNAME].clientid == ADMIN_USERNAME
    assert rules.roles["device:LW-1"].acls == {
        *(
            Acl(SEND, f"lw/v1/LW-1/{leaf}")
            for leaf in ("alarm", "heartbeat", "location", "checkin", "status")
        ),
        Acl(SUBSCRIBE_LITERAL, "lw/v1/LW-1/ack"),
        Acl(SUBSCRIBE_LITERAL, "lw/v1/LW-1/command"),
        Acl(RECEIVE, "lw/v1/LW-1/ack"),
        Acl(RECEIVE, "lw/v1/LW-1/command"),
    }
    assert rules.default_access == {SEND: False, RECEIVE: False, "subscribe": False, "unsubscribe": True}
    document = rules.document()
    assert "password" not in json.dumps(document)  # secrets live in the password file only
    assert Rules.from_document(json.loads(json.dumps(document))) == rules


def test_changes_bring_a_broker_from_any_state_to_the_registrys() -> None:
    wanted = rules_for(["LW-1", "LW-2"], "svc")
    assert changes(wanted, wanted) == []
    made = changes(Rules(default_access={RECEIVE: True}), wanted)  # the plugin's own default lets all read
    created = {(c["command"], c.get("username") or c.get("rolename")) for c in made}
    assert ("createClient", "LW-1") in created and ("createRole", "device:LW-2") in created
    assert next(c for c in made if c.get("username") == "LW-1")["clientid"] == "LW-1"
    assert made[-1]["command"] == "setDefaultACLAccess"
    # A disabled device is dropped; a rule, a client id, a group or a role added by hand is undone.
    drifted = rules_for(["LW-1", "LW-2", "LW-OLD"], "svc").with_accounts(
        [Client("intruder", ("service",))], [Role("spare", frozenset())]
    )
    role = drifted.roles["device:LW-1"]
    tampered = dict(drifted.roles) | {
        "device:LW-1": Role(role.name, role.acls | {Acl("subscribePattern", "#")})
    }
    clients = dict(drifted.clients) | {
        "LW-2": Client("LW-2", ("device:LW-2", "service"), clientid=None, groups=("g",), disabled=True)
    }
    made = changes(Rules(clients, tampered, drifted.default_access), wanted)
    assert {json.dumps(c, sort_keys=True) for c in made} == {
        json.dumps(c, sort_keys=True)
        for c in [
            {
                "command": "removeRoleACL",
                "rolename": "device:LW-1",
                "acltype": "subscribePattern",
                "topic": "#",
            },
            {"command": "setClientId", "username": "LW-2", "clientid": "LW-2"},
            {"command": "removeClientRole", "username": "LW-2", "rolename": "service"},
            {"command": "removeGroupClient", "groupname": "g", "username": "LW-2"},
            {"command": "enableClient", "username": "LW-2"},
            {"command": "deleteClient", "username": "LW-OLD"},
            {"command": "deleteClient", "username": "intruder"},
            {"command": "deleteRole", "rolename": "device:LW-OLD"},
            {"command": "deleteRole", "rolename": "spare"},
        ]
    }


def test_rendered_config_never_drops_queued_messages_and_checks_every_listener(tmp_path: Path) -> None:
    conf = render_broker_config(
        port=1234,
        data_dir=tmp_path,
        password_path=tmp_path / "p",
        rules_path=tmp_path / "r",
        plugin_path=tmp_path / "plugin.so",
    )
    lines = [line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    for expected in (
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "persistence true",
        "per_listener_settings false",
        "allow_anonymous false",
        "listener 1234 127.0.0.1",
        f"password_file {tmp_path / 'p'}",
        f"plugin {tmp_path / 'plugin.so'}",
        f"plugin_opt_config_file {tmp_path / 'r'}",
    ):
        assert expected in lines
    assert not any(line.startswith("acl_file") for line in lines)  # it grants every subscription
    # security settings come before the first listener, so they hold for every listener
    assert lines.index("allow_anonymous false") < lines.index("listener 1234 127.0.0.1")
    assert "$" not in conf  # every field was filled in


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
    """A bare MQTT client for poking at the broker's access rules (client id: its username, unless told)."""

    def __init__(
        self,
        port: int,
        username: str,
        password: str,
        protocol: Any = mqtt.MQTTv5,
        *,
        client_id: str | None = None,
        clean_session: bool | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=username if client_id is None else client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            **({"clean_session": clean_session} if clean_session is not None else {}),
        )
        self.client.username_pw_set(username, password)
        self.username = username
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

    def connect(self, *, clean_start: bool | None = None, session_expiry: int | None = None) -> Probe:
        kw: dict[str, Any] = {}
        if clean_start is not None:
            kw["clean_start"] = clean_start
        if session_expiry is not None:
            kw["properties"] = Properties(PacketTypes.CONNECT)
            kw["properties"].SessionExpiryInterval = session_expiry
        self.client.connect("127.0.0.1", self.port, keepalive=60, **kw)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None or self.disconnected, what="CONNACK")
        return self

    @property
    def refused(self) -> bool:
        return self.connack is None or self.connack.is_failure

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        _, mid = self.client.subscribe(topic, qos)
        return self.wait(lambda: self.subacks.get(mid), what="SUBACK")

    def suback_code(self, topic: str) -> int:
        return int(self.subscribe(topic)[0].value)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
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

    def make(username: str, protocol: Any = mqtt.MQTTv5, **kw: Any) -> Probe:
        password = accounts.service[1] if username == accounts.service[0] else accounts.devices[username]
        if username == accounts.service[0]:
            kw.setdefault("client_id", f"svc-{uuid.uuid4().hex[:8]}")
        probe = Probe(broker.port, username, password, protocol, **kw).connect()
        assert not probe.refused, probe.connack
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def marker_arrives(service: Probe, device: Probe, leaf: str = "alarm") -> None:
    """A message the device may send reaches the service: whatever it tried before did not get through
    ahead of it (one connection, one order)."""
    marker = uuid.uuid4().hex.encode()
    topic = f"lw/v1/{device.username}/{leaf}"
    assert device.publish(topic, marker) in ACCEPTED
    service.wait(lambda: marker in service.received(topic), what="marker")


def test_device_publishes_on_its_own_topic_and_receives_its_own_ack(probes: Callable[..., Probe]) -> None:
    service = probes("evidence-service")
    assert not service.subscribe("$share/evidence/lw/v1/+/alarm")[0].is_failure
    device = probes("LW-A")
    assert not device.subscribe("lw/v1/LW-A/ack")[0].is_failure
    assert not device.subscribe("lw/v1/LW-A/command")[0].is_failure
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
    marker_arrives(service, probes("LW-A"))
    assert service.received(f"lw/v1/LW-B/{leaf}") == []


@pytest.mark.parametrize("leaf", ["ack", "command", "anything"])
def test_a_device_cannot_publish_acks_or_commands_even_to_itself(
    probes: Callable[..., Probe], leaf: str
) -> None:
    service = probes("evidence-service")
    service.subscribe("lw/v1/#")
    faker = probes("LW-A")
    assert faker.publish(f"lw/v1/LW-A/{leaf}", b"fake") == NOT_AUTHORISED
    marker_arrives(service, probes("LW-A"))
    assert service.received(f"lw/v1/LW-A/{leaf}") == []


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_every_subscription_a_device_has_no_business_making_is_refused(
    probes: Callable[..., Probe], protocol: Any
) -> None:
    """Refused at the SUBACK, not merely filtered on delivery: the ACL file granted all of these."""
    device = probes("LW-A", protocol)
    granted = {
        topic: code
        for topic in hostile_subscriptions("LW-A", "LW-B", ["evidence", "g0", "alarms"])
        if (code := device.suback_code(topic)) not in SUBACK_REFUSED
    }
    assert granted == {}
    assert device.suback_code("lw/v1/LW-A/ack") == 1  # its own acks: granted QoS 1


def test_a_device_in_the_services_share_group_takes_none_of_the_alarms(probes: Callable[..., Probe]) -> None:
    """With the ACL file, each hostile member of the group was handed its turn of the alarms, which the
    broker then dropped (5 of 10 arrived with one such member)."""
    service = probes("evidence-service")
    assert not service.subscribe("$share/evidence/lw/v1/+/alarm")[0].is_failure
    thief = probes("LW-A")
    code = thief.suback_code("$share/evidence/lw/v1/+/alarm")
    sender = probes("LW-B")
    sent = [f"sos-{i}".encode() for i in range(10)]
    for payload in sent:
        assert sender.publish("lw/v1/LW-B/alarm", payload) in ACCEPTED  # the broker took each one
    with contextlib.suppress(TimeoutError):
        service.wait(lambda: len(service.received("lw/v1/LW-B/alarm")) == len(sent), what="ten alarms")
    assert service.received("lw/v1/LW-B/alarm") == sent
    assert code in SUBACK_REFUSED and thief.messages == []


def test_another_login_cannot_take_over_a_session_by_its_client_id(
    broker: BrokerProcess, probes: Callable[..., Probe], accounts: Accounts
) -> None:
    """Devices connect only as themselves: the service's client ids (live ones, the telemetry
    companion's, the one once documented), another device's, an empty one and near misses are refused,
    and whoever holds that client id keeps its connection and its session."""
    service = probes("evidence-service", client_id="evidence-live")
    service.subscribe("lw/v1/+/alarm")
    victim = probes("LW-B")
    victim.subscribe("lw/v1/LW-B/ack")
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        for client_id in [
            "evidence-live",
            "evidence-live-telemetry",
            "evidence-service",
            "LW-B",
            "",
            "lw-a",
            "LW-A ",
        ]:
            if client_id == "" and protocol == mqtt.MQTTv311:
                attempt = Probe(
                    broker.port, "LW-A", accounts.devices["LW-A"], protocol, client_id="", clean_session=True
                )
            else:
                attempt = Probe(broker.port, "LW-A", accounts.devices["LW-A"], protocol, client_id=client_id)
            try:
                attempt.connect()
                assert attempt.refused, (client_id, attempt.connack)
            finally:
                attempt.close()
    assert not service.disconnected and not victim.disconnected
    assert "already connected, closing old connection" not in broker.log_tail(400)
    # both sessions still deliver
    marker_arrives(service, probes("LW-A"))
    assert service.publish("lw/v1/LW-B/ack", b"still yours") in ACCEPTED
    victim.wait(lambda: victim.received("lw/v1/LW-B/ack") == [b"still yours"], what="victim's ack")


def test_a_device_holds_one_connection_at_most(broker: BrokerProcess, accounts: Accounts) -> None:
    """Before, one device's password opened as many connections (and persistent sessions, each with
    its own queue) as it had client ids to make up; now a second connection replaces the first."""
    password = accounts.devices["LW-A"]
    first = Probe(broker.port, "LW-A", password).connect(clean_start=False, session_expiry=3600)
    extra = [Probe(broker.port, "LW-A", password, client_id=f"LW-A-{i}").connect() for i in range(3)]
    try:
        assert [p.refused for p in extra] == [True, True, True]
        assert not first.disconnected
        second = Probe(broker.port, "LW-A", password).connect()
        first.wait(lambda: first.disconnected, what="the first connection to be replaced")
        second.close()
    finally:
        for probe in [first, *extra]:
            probe.close()


def test_a_login_without_rules_can_do_nothing(broker: BrokerProcess, accounts: Accounts) -> None:
    """A password the rules do not know of (a device not yet applied, a hand-added login) logs in and is
    denied everything: the rules fail closed."""
    devices, service = _broker_accounts(accounts)
    ghost_password = generate_password()
    ghost_login = ExtraLogins(accounts=(BrokerAccount("LW-GHOST", hash_password(ghost_password)),))
    broker.update_accounts(devices=devices, service=service, extra=ghost_login)
    try:
        ghost = wait_login(broker, "LW-GHOST", ghost_password)
        try:
            assert ghost.suback_code("lw/v1/LW-GHOST/ack") in SUBACK_REFUSED
            assert ghost.publish("lw/v1/LW-GHOST/alarm", b"x") == NOT_AUTHORISED
        finally:
            ghost.close()
    finally:
        broker.update_accounts(devices=devices, service=service)


def wait_login(broker: BrokerProcess, username: str, password: str, timeout: float = 10.0) -> Probe:
    """A connected probe once the broker has re-read its password file (asynchronously after SIGHUP)."""
    deadline = time.monotonic() + timeout
    while True:
        probe = Probe(broker.port, username, password).connect()
        if not probe.refused or time.monotonic() > deadline:
            assert not probe.refused, broker.log_tail()
            return probe
        probe.close()
        time.sleep(0.05)


def test_wills_retained_messages_and_dollar_topics_are_held_to_the_same_rules(
    broker: BrokerProcess, probes: Callable[..., Probe], accounts: Accounts
) -> None:
    """A will is accepted at CONNECT but checked when it fires; a retained message on another device's
    topic is refused like any other; nobody but the broker's admin login reaches the rule plugin."""
    service = probes("evidence-service")
    service.subscribe("lw/v1/#")
    for topic in ["lw/v1/LW-B/status", "lw/v1/LW-A/ack", "lw/v1/_control/escalations", "$SYS/broker/x"]:
        dying = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="LW-A", protocol=mqtt.MQTTv5)
        dying.username_pw_set("LW-A", accounts.devices["LW-A"])
        dying.will_set(topic, b"will", qos=1, retain=True)
        dying.connect("127.0.0.1", broker.port)
        dying.loop_start()
        wait_for_connected(dying)
        dying.loop_stop()
        dying.socket().close()  # gone without a DISCONNECT: the will fires
    device = probes("LW-A")
    assert device.publish("lw/v1/LW-B/status", b"retained", retain=True) == NOT_AUTHORISED
    device = probes("LW-A")
    assert device.publish("lw/v1/_control/escalations", b"{}") == NOT_AUTHORISED
    device = probes("LW-A")
    grant = {
        "commands": [
            {
                "command": "addRoleACL",
                "rolename": "device:LW-A",
                "acltype": "subscribePattern",
                "topic": "#",
                "priority": 0,
                "allow": True,
            }
        ]
    }
    assert device.publish("$CONTROL/dynamic-security/v1", json.dumps(grant).encode()) == NOT_AUTHORISED
    device = probes("LW-A")
    assert device.publish("$SYS/broker/uptime", b"0") == NOT_AUTHORISED
    device = probes("LW-A")
    assert device.suback_code("#") in SUBACK_REFUSED  # the grant never reached the plugin
    assert (
        read_rules(broker.files.rules_file).roles["device:LW-A"].acls
        == rules_for(["LW-A"], "x").roles["device:LW-A"].acls
    )
    marker_arrives(service, device)
    assert [t for t, _ in service.messages if not t.startswith("lw/v1/LW-A/alarm")] == []
    late = probes("evidence-service")  # a new subscriber is handed no retained forgery either
    late.subscribe("lw/v1/+/status")
    marker_arrives(late, probes("LW-A"), "status")
    assert late.received("lw/v1/LW-B/status") == []


def wait_for_connected(client: mqtt.Client, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.is_connected():
        assert time.monotonic() < deadline, "did not connect"
        time.sleep(0.01)


def test_regenerated_files_take_effect_at_once(broker: BrokerProcess, accounts: Accounts) -> None:
    """A new device may log in once the broker has re-read its passwords; one taken out of the
    registry is disconnected at once and cannot log in again."""
    devices, service = _broker_accounts(accounts)
    newcomer = generate_password()
    broker.update_accounts(
        devices=[*devices, BrokerAccount("LW-NEW", hash_password(newcomer))], service=service
    )
    probe = wait_login(broker, "LW-NEW", newcomer)
    try:
        assert probe.publish("lw/v1/LW-NEW/alarm", b"hello") in ACCEPTED
        assert probe.publish("lw/v1/LW-A/alarm", b"hello") == NOT_AUTHORISED
    finally:
        probe.close()
    probe = wait_login(broker, "LW-NEW", newcomer)
    broker.update_accounts(devices=devices, service=service)  # LW-NEW disabled
    probe.wait(lambda: probe.disconnected, what="the removed device to be disconnected")
    probe.close()
    deadline = time.monotonic() + 10
    while True:  # the password file is re-read asynchronously; meanwhile the rules deny everything
        again = Probe(broker.port, "LW-NEW", newcomer).connect()
        refused = again.refused
        if not refused:
            assert again.publish("lw/v1/LW-NEW/alarm", b"x") == NOT_AUTHORISED
        again.close()
        if refused:
            break
        assert time.monotonic() < deadline, "the removed device could still log in"
        time.sleep(0.05)


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
