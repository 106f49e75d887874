"""What each broker login may do, as Mosquitto's dynamic-security plugin enforces it, and how a running
broker is brought in line with the registry.

Why the plugin and not Mosquitto's ACL file: an ACL file only filters what is *delivered*; it grants
every SUBSCRIBE. A device that subscribed to the service's shared group (``$share/<group>/lw/v1/+/alarm``)
was handed its turn of other devices' alarms, which the broker then dropped for lack of read access,
after PUBACKing the sender. The plugin refuses such a subscription outright (SUBACK ``0x87``), denies
whatever no rule allows, and binds each device's client id to its username, so no device can take over
the service's session (or another device's) by connecting with its client id.

Secrets stay out of it. Passwords are in Mosquitto's password file (re-read on SIGHUP); a plugin client
without a password is checked here for its client id and then authenticated by the password file. So
the whole document can be derived from the registry, without any device's password, and pushed to a
running broker over the plugin's control topic (the plugin never re-reads its file after start-up).

Mosquitto 2.0's plugin matches a ``$share/...`` subscription against the rules as written, group and
all; ``subscribePattern`` treats the requested filter as a topic (``+`` in a rule matches any one level,
``#`` in a request only matches ``#`` in a rule).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.lone_worker_wire import DEVICE_ID_PATTERN, DEVICE_TOPICS, SERVICE_TOPICS, TOPIC_ROOT

CONTROL_TOPIC_ROOT = f"{TOPIC_ROOT}/_control"  # service instances only; no device id starts with "_"
PLUGIN_CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
PLUGIN_RESPONSE_TOPIC = f"{PLUGIN_CONTROL_TOPIC}/response"
# The login that administers the rules of a running broker. "@" cannot appear in a device id, so it
# never collides with one.
ADMIN_USERNAME = "admin@broker"
SERVICE_ROLE = "service"
ADMIN_ROLE = "broker-admin"

SEND = "publishClientSend"
RECEIVE = "publishClientReceive"
SUBSCRIBE_LITERAL = "subscribeLiteral"
SUBSCRIBE_PATTERN = "subscribePattern"

# Deny by default. Unsubscribing only ever touches the caller's own session.
DEFAULT_ACCESS: Mapping[str, bool] = {
    SEND: False,
    RECEIVE: False,
    "subscribe": False,
    "unsubscribe": True,
}

# One request to the plugin: well under the broker's packet limit, and few commands, because the
# plugin rewrites its whole file after every change (Mosquitto 2.0), which pauses the broker.
_REQUEST_BYTES = 12 * 1024
_REQUEST_COMMANDS = 20
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class BrokerRulesError(RuntimeError):
    """The broker refused a rule change, or could not be asked."""


@dataclass(frozen=True, order=True)
class Acl:
    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "priority": self.priority, "allow": self.allow}


@dataclass(frozen=True)
class Role:
    name: str
    acls: frozenset[Acl]


@dataclass(frozen=True)
class Client:
    """A login known to the plugin. ``clientid``: the only client id it may connect with (``None``:
    any, for the service, whose instances each have their own)."""

    username: str
    roles: tuple[str, ...]
    clientid: str | None = None
    groups: tuple[str, ...] = ()
    disabled: bool = False


@dataclass(frozen=True)
class Rules:
    """The plugin's whole state: clients, roles and the default access."""

    clients: Mapping[str, Client] = field(default_factory=dict)
    roles: Mapping[str, Role] = field(default_factory=dict)
    default_access: Mapping[str, bool] = field(default_factory=lambda: dict(DEFAULT_ACCESS))

    def with_accounts(self, clients: Iterable[Client], roles: Iterable[Role]) -> Rules:
        """These rules plus more logins (a benchmark's own probes, say); names must be new."""
        merged_clients, merged_roles = dict(self.clients), dict(self.roles)
        for client in clients:
            if client.username in merged_clients:
                raise ValueError(f"broker login {client.username!r} appears twice")
            merged_clients[client.username] = client
        for role in roles:
            if role.name in merged_roles:
                raise ValueError(f"broker role {role.name!r} appears twice")
            merged_roles[role.name] = role
        return Rules(merged_clients, merged_roles, self.default_access)

    def document(self) -> dict[str, Any]:
        """The plugin's configuration file (``plugin_opt_config_file``), read once at start-up."""
        clients = []
        for client in sorted(self.clients.values(), key=lambda c: c.username):
            entry: dict[str, Any] = {
                "username": client.username,
                "roles": [{"rolename": r} for r in client.roles],
            }
            if client.clientid is not None:
                entry["clientid"] = client.clientid
            clients.append(entry)
        roles = [
            {"rolename": role.name, "acls": [a.as_json() for a in sorted(role.acls)]}
            for role in sorted(self.roles.values(), key=lambda r: r.name)
        ]
        return {
            "clients": clients,
            "roles": roles,
            "groups": [],
            "defaultACLAccess": dict(self.default_access),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Rules:
        """Rules from the plugin's file, as :meth:`document` writes it or the plugin saves it."""
        return cls.from_listing(
            document.get("clients", []),
            document.get("roles", []),
            [{"acltype": k, "allow": v} for k, v in document.get("defaultACLAccess", {}).items()],
        )

    @classmethod
    def from_listing(
        cls, clients: list[dict[str, Any]], roles: list[dict[str, Any]], default_acls: list[dict[str, Any]]
    ) -> Rules:
        """Rules as a running plugin reports them (``listClients``/``listRoles`` verbose and
        ``getDefaultACLAccess``)."""
        return cls(
            clients={
                c["username"]: Client(
                    c["username"],
                    tuple(r["rolename"] for r in c.get("roles", [])),
                    c.get("clientid"),
                    tuple(g["groupname"] for g in c.get("groups", []) or []),
                    bool(c.get("disabled", False)),
                )
                for c in clients
            },
            roles={
                r["rolename"]: Role(
                    r["rolename"],
                    frozenset(
                        Acl(a["acltype"], a["topic"], bool(a["allow"]), int(a.get("priority", 0)))
                        for a in r.get("acls", [])
                    ),
                )
                for r in roles
            },
            default_access={a["acltype"]: bool(a["allow"]) for a in default_acls},
        )


def device_role(device_id: str) -> str:
    return f"device:{device_id}"


def device_rules(device_id: str) -> Role:
    """A device publishes only its own device topics and reads only its own ``ack`` and ``command``,
    each subscribed by its literal name (no wildcard, no shared group)."""
    base = f"{TOPIC_ROOT}/{device_id}"
    acls = {Acl(SEND, f"{base}/{leaf}") for leaf in DEVICE_TOPICS}
    for leaf in SERVICE_TOPICS:
        acls |= {Acl(SUBSCRIBE_LITERAL, f"{base}/{leaf}"), Acl(RECEIVE, f"{base}/{leaf}")}
    return Role(device_role(device_id), frozenset(acls))


def service_rules() -> Role:
    """The service reads every device topic (in any shared group: only it may subscribe to one) and
    answers each device; it alone writes the control topic."""
    return Role(
        SERVICE_ROLE,
        frozenset(
            {
                Acl(SUBSCRIBE_PATTERN, f"{TOPIC_ROOT}/#"),
                Acl(SUBSCRIBE_PATTERN, f"$share/+/{TOPIC_ROOT}/#"),
                Acl(RECEIVE, f"{TOPIC_ROOT}/#"),
                *(Acl(SEND, f"{TOPIC_ROOT}/+/{leaf}") for leaf in SERVICE_TOPICS),
                Acl(SEND, f"{CONTROL_TOPIC_ROOT}/#"),
            }
        ),
    )


def admin_rules() -> Role:
    """The administering login may only talk to the plugin's control topic."""
    return Role(
        ADMIN_ROLE,
        frozenset(
            {
                Acl(SEND, PLUGIN_CONTROL_TOPIC),
                Acl(SUBSCRIBE_LITERAL, PLUGIN_RESPONSE_TOPIC),
                Acl(RECEIVE, PLUGIN_RESPONSE_TOPIC),
            }
        ),
    )


def rules_for(
    device_ids: Iterable[str], service_username: str, admin_username: str = ADMIN_USERNAME
) -> Rules:
    """The rules for the registry's active devices, the service login and the administering login.

    Devices are listed one by one (the plugin in Mosquitto 2.0 has no ``%u`` patterns), each bound
    to its own client id; a login that is not listed here may log in but do nothing at all.
    """
    check_username(service_username, device=False)
    check_username(admin_username, device=False)
    if service_username == admin_username:
        raise ValueError("the service and the broker admin need different logins")
    clients = {
        service_username: Client(service_username, (SERVICE_ROLE,)),
        admin_username: Client(admin_username, (ADMIN_ROLE,), clientid=admin_username),
    }
    roles = {SERVICE_ROLE: service_rules(), ADMIN_ROLE: admin_rules()}
    for device_id in device_ids:
        check_username(device_id, device=True)
        if device_id in clients:
            raise ValueError(f"device id {device_id!r} is duplicated or is the service account")
        role = device_rules(device_id)
        clients[device_id] = Client(device_id, (role.name,), clientid=device_id)
        roles[role.name] = role
    return Rules(clients, roles)


def check_username(name: str, *, device: bool) -> None:
    """Refuse a login name that could widen access (``/``, ``+``, ``#``, spaces, new lines...)."""
    pattern = _DEVICE_ID_RE if device else _USERNAME_RE
    if not pattern.match(name):
        raise ValueError(f"{'device id' if device else 'username'} {name!r} is not allowed on the broker")


# --------------------------------------------------------------------------- bringing a broker in line


def changes(current: Rules, wanted: Rules) -> list[dict[str, Any]]:
    """The plugin commands that turn ``current`` into ``wanted`` (none when they already agree).

    Roles first (so clients can be given them), then clients, then what is no longer wanted: a deleted
    client is disconnected by the plugin at once.
    """
    commands: list[dict[str, Any]] = []
    for name, role in sorted(wanted.roles.items()):
        have = current.roles.get(name)
        if have is None:
            commands.append({"command": "createRole", "rolename": name, "acls": _acls(role.acls)})
            continue
        for acl in sorted(have.acls - role.acls):
            commands.append(
                {"command": "removeRoleACL", "rolename": name, "acltype": acl.acltype, "topic": acl.topic}
            )
        for acl in sorted(role.acls - have.acls):
            commands.append({"command": "addRoleACL", "rolename": name, **acl.as_json()})
    for username, client in sorted(wanted.clients.items()):
        old = current.clients.get(username)
        if old is None:
            create: dict[str, Any] = {
                "command": "createClient",
                "username": username,
                "roles": [{"rolename": r} for r in client.roles],
            }
            if client.clientid is not None:
                create["clientid"] = client.clientid
            commands.append(create)
            continue
        if old.clientid != client.clientid:
            set_id: dict[str, Any] = {"command": "setClientId", "username": username}
            if client.clientid is not None:
                set_id["clientid"] = client.clientid
            commands.append(set_id)
        for rolename in sorted(set(old.roles) - set(client.roles)):
            commands.append({"command": "removeClientRole", "username": username, "rolename": rolename})
        for rolename in sorted(set(client.roles) - set(old.roles)):
            commands.append({"command": "addClientRole", "username": username, "rolename": rolename})
        for group in sorted(old.groups):
            commands.append({"command": "removeGroupClient", "groupname": group, "username": username})
        if old.disabled:
            commands.append({"command": "enableClient", "username": username})
    for username in sorted(set(current.clients) - set(wanted.clients)):
        commands.append({"command": "deleteClient", "username": username})
    for name in sorted(set(current.roles) - set(wanted.roles)):
        commands.append({"command": "deleteRole", "rolename": name})
    if dict(current.default_access) != dict(wanted.default_access):
        commands.append(
            {
                "command": "setDefaultACLAccess",
                "acls": [{"acltype": k, "allow": v} for k, v in sorted(wanted.default_access.items())],
            }
        )
    return commands


def _acls(acls: Iterable[Acl]) -> list[dict[str, Any]]:
    return [a.as_json() for a in sorted(acls)]


def _batches(commands: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for command in commands:
        length = len(json.dumps(command))
        if batch and (size + length > _REQUEST_BYTES or len(batch) == _REQUEST_COMMANDS):
            yield batch
            batch, size = [], 0
        batch.append(command)
        size += length + 1
    if batch:
        yield batch


class BrokerAdmin:
    """A connection as the administering login to a running broker's rule plugin."""

    def __init__(
        self, host: str, port: int, password: str, *, username: str = ADMIN_USERNAME, timeout: float = 60.0
    ) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._responses: list[bytes] = []
        self._connack: Any = None
        self._suback: Any = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def _notify(self, attr: str, value: Any) -> None:
        with self._cond:
            setattr(self, attr, value)
            self._cond.notify_all()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._notify("_connack", reason)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        self._notify("_suback", reasons)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self._responses.append(message.payload)
            self._cond.notify_all()

    def _wait(self, predicate: Any, what: str) -> Any:
        with self._cond:
            if not self._cond.wait_for(predicate, self.timeout):
                raise BrokerRulesError(f"the broker did not answer ({what}) within {self.timeout} s")
            return predicate()

    def __enter__(self) -> BrokerAdmin:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise BrokerRulesError(f"cannot reach the broker at {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        try:
            connack = self._wait(lambda: self._connack, "CONNACK")
            if connack.is_failure:
                raise BrokerRulesError(f"the broker refused the admin login: {connack}")
            self._client.subscribe(PLUGIN_RESPONSE_TOPIC, qos=1)
            reasons = self._wait(lambda: self._suback, "SUBACK")
            if any(r.is_failure for r in reasons):
                raise BrokerRulesError("the admin login may not read the rule plugin's answers")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` (in batches) and return the plugin's answers; any refusal raises."""
        answers: list[dict[str, Any]] = []
        for batch in _batches(commands):
            with self._cond:
                self._responses.clear()
            tag = uuid.uuid4().hex
            body = [{**c, "correlationData": f"{tag}:{i}"} for i, c in enumerate(batch)]
            self._client.publish(PLUGIN_CONTROL_TOPIC, json.dumps({"commands": body}), qos=1)
            raw = self._wait(lambda: self._responses[0] if self._responses else None, batch[0]["command"])
            responses = json.loads(raw).get("responses", [])
            if [r.get("correlationData") for r in responses] != [c["correlationData"] for c in body]:
                raise BrokerRulesError("the rule plugin answered another request")
            errors = [f"{r.get('command')}: {r['error']}" for r in responses if r.get("error")]
            if errors:
                raise BrokerRulesError("the rule plugin refused: " + "; ".join(errors[:5]))
            answers += responses
        return answers

    def rules(self) -> Rules:
        """The running plugin's rules."""
        clients, roles, default = self.run(
            [
                {"command": "listClients", "verbose": True},
                {"command": "listRoles", "verbose": True},
                {"command": "getDefaultACLAccess"},
            ]
        )
        return Rules.from_listing(clients["data"]["clients"], roles["data"]["roles"], default["data"]["acls"])

    def bring_in_line(self, wanted: Rules) -> int:
        """Make the running broker's rules equal ``wanted``; the number of changes made."""
        todo = changes(self.rules(), wanted)
        if todo:
            self.run(todo)
        return len(todo)
