"""What lone-worker devices say on the wire, and whether to believe it.

Pure logic, no I/O: the MQTT consumer hands each message here with the device's registered key and
its replay state, and gets back a verdict. The contract is docs/PROTOCOLS.md ("Lone-worker devices").

The replay state is deliberately small and serialisable (one JSON value a device) so several service
instances sharing the alarm stream can keep it in one database row and update it with
compare-and-set: load the row, verify, write the returned state back only if the row is unchanged,
otherwise reload and verify again.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from chain_of_custody.canonical import canonical_json, rfc3339, unique_keys
from chain_of_custody.keys import verify_signature

PROTOCOL_VERSION = 1
TOPIC_ROOT = "lw/v1"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
EVENT_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
VISIT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
MAX_SAFE_INTEGER = 2**53 - 1  # largest integer every JSON implementation keeps exact
# How far one message may move a device's sequence past the highest accepted, and the highest the
# first message after enrolment may start at. Unbounded, one validly signed seq of 2^53 - 1 (a
# firmware bug, a corrupted counter) would leave no number above it, locking the device out until
# re-enrolment. Bounded, reaching the top takes about a million such messages. The step lets a
# counter in milliseconds skip 49 days, the start lets one begin at the time in microseconds.
MAX_SEQ_STEP = 2**32
MAX_FIRST_SEQ = 2**52

# Topics a device publishes on (the last topic level), and the ones the service publishes to it.
DEVICE_TOPICS = ("alarm", "heartbeat", "location", "checkin", "status")
SERVICE_TOPICS = ("ack", "command")

_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


# --------------------------------------------------------------------------- canonical form


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a ``Z``, as devices and the service write times."""
    return rfc3339(moment, 3)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 UTC time ending in ``Z``; anything else is refused (no local times)."""
    if not isinstance(text, str) or not _RFC3339_UTC.match(text):
        raise ValueError("time must be RFC 3339 UTC like 2026-11-22T14:00:00.123Z")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def _as_time(value: Any) -> Any:
    return parse_time(value) if isinstance(value, str) else value


def topic_for(device_id: str, leaf: str) -> str:
    """``lw/v1/<device_id>/<leaf>``."""
    return f"{TOPIC_ROOT}/{device_id}/{leaf}"


def parse_topic(topic: str) -> tuple[str, str] | None:
    """``(device_id, leaf)`` for a well-formed device topic, else ``None``."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        return None
    if not _DEVICE_ID_RE.match(parts[2]) or parts[3] not in DEVICE_TOPICS + SERVICE_TOPICS:
        return None
    return parts[2], parts[3]


def service_subscriptions(share_group: str | None, leaves: Iterable[str] = DEVICE_TOPICS) -> list[str]:
    """Topic filters the service subscribes to (for the given device topics, all by default); with a
    share group, instances split the stream."""
    wanted = set(leaves)
    filters = [f"{TOPIC_ROOT}/+/{leaf}" for leaf in DEVICE_TOPICS if leaf in wanted]
    return [f"$share/{share_group}/{f}" for f in filters] if share_group else filters


# --------------------------------------------------------------------------- payload models

UtcTime = Annotated[datetime, BeforeValidator(_as_time)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
EventId = Annotated[str, Field(pattern=EVENT_ID_PATTERN)]
Seq = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
Note = Annotated[str, Field(max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Position(_Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    accuracy_m: float | None = Field(default=None, ge=0, le=1_000_000)


class AlarmBody(_Strict):
    kind: Literal["sos", "amber", "man_down", "low_battery"]
    action: Literal["raise", "cancel"]
    amber_timeout_s: int | None = Field(default=None, ge=1, le=86_400)
    ref_event_id: EventId | None = None
    reason: Literal["fall", "no_movement"] | None = None
    note: Note | None = None

    @model_validator(mode="after")
    def _fields_fit_kind_and_action(self) -> AlarmBody:
        raising = self.action == "raise"
        if raising and self.kind == "amber" and self.amber_timeout_s is None:
            raise ValueError("an amber raise needs amber_timeout_s")
        if self.amber_timeout_s is not None and not (raising and self.kind == "amber"):
            raise ValueError("amber_timeout_s only belongs to an amber raise")
        if self.action == "cancel" and self.ref_event_id is None:
            raise ValueError("a cancel needs ref_event_id")
        if self.ref_event_id is not None and self.action != "cancel":
            raise ValueError("ref_event_id only belongs to a cancel")
        if raising and self.kind == "man_down" and self.reason is None:
            raise ValueError("a man_down raise needs reason")
        if self.reason is not None and not (raising and self.kind == "man_down"):
            raise ValueError("reason only belongs to a man_down raise")
        return self


class CheckinBody(_Strict):
    action: Literal["start", "end"]
    visit_id: Annotated[str, Field(pattern=VISIT_ID_PATTERN)]
    expected_end: UtcTime | None = None
    note: Note | None = None

    @model_validator(mode="after")
    def _expected_end_only_on_start(self) -> CheckinBody:
        if (self.action == "start") != (self.expected_end is not None):
            raise ValueError("expected_end is required on start and not allowed on end")
        return self


class StatusBody(_Strict):
    state: Literal["online", "offline"]
    session: Annotated[str, Field(max_length=64)] | None = None


class _Envelope(_Strict):
    """Fields every signed device message carries."""

    v: Literal[1]
    device_id: DeviceId
    event_id: EventId
    seq: Seq
    sent_at: UtcTime
    occurred_at: UtcTime | None = None
    position: Position | None = None
    battery: int | None = Field(default=None, ge=0, le=100)
    sig: str

    @property
    def event_time(self) -> datetime:
        """When it happened by the device's clock (a buffered alarm keeps its original time)."""
        return self.occurred_at or self.sent_at


class AlarmMessage(_Envelope):
    type: Literal["alarm"]
    occurred_at: UtcTime
    alarm: AlarmBody


class HeartbeatMessage(_Envelope):
    type: Literal["heartbeat"]
    battery: int = Field(ge=0, le=100)


class LocationMessage(_Envelope):
    type: Literal["location"]
    position: Position


class CheckinMessage(_Envelope):
    type: Literal["checkin"]
    occurred_at: UtcTime
    checkin: CheckinBody


class StatusMessage(_Strict):
    """Presence. ``online`` is signed like any message; the ``offline`` last will cannot be
    (it is fixed at connect time), so an unsigned status may only say ``offline``."""

    v: Literal[1]
    type: Literal["status"]
    device_id: DeviceId
    status: StatusBody
    event_id: EventId | None = None
    seq: Seq | None = None
    sent_at: UtcTime | None = None
    occurred_at: UtcTime | None = None
    battery: int | None = Field(default=None, ge=0, le=100)
    position: Position | None = None
    sig: str | None = None

    @model_validator(mode="after")
    def _signed_or_offline_will(self) -> StatusMessage:
        signed_fields = (self.event_id, self.seq, self.sent_at, self.sig)
        if self.sig is None:
            if self.status.state != "offline":
                raise ValueError("only an offline status (the last will) may be unsigned")
            if any(f is not None for f in signed_fields):
                raise ValueError("an unsigned will carries no event_id, seq or sent_at")
        elif any(f is None for f in signed_fields):
            raise ValueError("a signed status needs event_id, seq, sent_at and sig")
        return self


AnyDeviceMessage = AlarmMessage | HeartbeatMessage | LocationMessage | CheckinMessage | StatusMessage
DeviceMessage = Annotated[AnyDeviceMessage, Field(discriminator="type")]
_MESSAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(DeviceMessage)


# --------------------------------------------------------------------------- replay state


@dataclass(frozen=True)
class ReplayState:
    """Which sequence numbers of one device have been accepted, as a sliding window.

    ``highest`` is the largest accepted seq; bit ``i`` of ``bits`` says ``highest - i`` was seen.
    A seq above ``highest`` is new (unless it leaps more than ``MAX_SEQ_STEP`` past it); one inside
    the window is new unless its bit is set (so messages split across instances may be processed out
    of order); one below the window is stale.
    ``recent_events`` remembers the last alarm and check-in event ids so a re-send (same event id,
    new seq) is recognised as a duplicate and re-acknowledged instead of acted on twice.
    """

    highest: int = -1
    bits: int = 0
    recent_events: tuple[str, ...] = ()
    window: int = 256
    max_events: int = 32

    def classify(self, seq: int) -> Literal["new", "replay", "stale", "jump"]:
        if seq > self.highest:
            limit = MAX_FIRST_SEQ if self.highest < 0 else self.highest + MAX_SEQ_STEP
            return "new" if seq <= limit else "jump"
        distance = self.highest - seq
        if distance >= self.window:
            return "stale"
        return "replay" if (self.bits >> distance) & 1 else "new"

    def has_event(self, event_id: str) -> bool:
        return event_id in self.recent_events

    def record(self, seq: int, event_id: str | None = None) -> ReplayState:
        """The state after accepting ``seq`` (and remembering ``event_id`` if given)."""
        mask = (1 << self.window) - 1
        if seq > self.highest:
            shift = seq - self.highest
            bits = ((self.bits << shift) | 1) & mask if shift < self.window else 1
            highest = seq
        else:
            distance = self.highest - seq
            if distance >= self.window:
                raise ValueError(f"seq {seq} is below the replay window")
            bits, highest = self.bits | (1 << distance), self.highest
        events = self.recent_events
        if event_id is not None and event_id not in events:
            events = (events + (event_id,))[-self.max_events :]
        return replace(self, highest=highest, bits=bits, recent_events=events)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "highest": self.highest,
                "bits": format(self.bits, "x"),
                "events": list(self.recent_events),
                "window": self.window,
                "max_events": self.max_events,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> ReplayState:
        """Load a stored state; ``None`` or empty means a device never heard from."""
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            highest=int(data["highest"]),
            bits=int(data["bits"], 16),
            recent_events=tuple(data["events"]),
            window=int(data["window"]),
            max_events=int(data["max_events"]),
        )


# --------------------------------------------------------------------------- verdicts


class ReasonCode(StrEnum):
    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"
    BAD_SCHEMA = "bad_schema"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    DISABLED_DEVICE = "disabled_device"
    BAD_SIGNATURE = "bad_signature"
    STALE_SEQUENCE = "stale_sequence"
    SEQUENCE_JUMP = "sequence_jump"
    REPLAY = "replay"
    CLOCK_SKEW = "clock_skew"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class DeviceKey:
    """What the registry knows that matters here: the 32 raw public key bytes and whether enabled."""

    public_key: bytes
    enabled: bool = True


@dataclass(frozen=True)
class Accepted:
    """Authentic, fresh and new: act on it, then store ``replay_state`` (compare-and-set).

    ``clock_offset_s`` is device clock minus server clock at receipt (negative when late); a message
    far behind is still accepted (``late``): the broker may have held it while the service was down,
    and the sequence window, not the clock, is what rules out replays.
    """

    message: AnyDeviceMessage
    replay_state: ReplayState
    signed: bool = True
    clock_offset_s: float = 0.0
    late: bool = False


@dataclass(frozen=True)
class Duplicate:
    """An event already accepted, sent again: do not act again, re-acknowledge it, store the state."""

    message: AnyDeviceMessage
    replay_state: ReplayState
    reason: ReasonCode = ReasonCode.DUPLICATE


@dataclass(frozen=True)
class Rejected:
    """Not believed. ``message`` is set only when the signature checked out (clock skew, replay),
    so the service may still tell the device (a signed ``rejected`` ack with its own time)."""

    reason: ReasonCode
    detail: str
    device_id: str | None = None
    message: AnyDeviceMessage | None = field(default=None, compare=False)
    # The type the payload said it was, once that is one of the device topics (never free text: it
    # labels metrics); None before the payload could be read as a message.
    claimed_type: str | None = None


Verdict = Accepted | Duplicate | Rejected


@dataclass(frozen=True)
class FirstLook:
    """What the cheap checks made of a message, before any key, database or signature work."""

    device_id: str | None
    type: str | None  # the topic's device message type (one of ``DEVICE_TOPICS``), if it is one
    refused: Rejected | None = None
    urgent_raise: bool = False  # shaped like an alarm being raised: it goes ahead of other work


def first_look(raw: bytes, topic: str, max_bytes: int) -> FirstLook:
    """Size, topic, JSON object and the envelope's ``type`` and ``device_id`` against the topic:
    checks costing microseconds that refuse most garbage before it can queue for the costly ones
    (the device's key, its replay state, the signature). A message they pass may still be refused
    by :func:`verify_device_message`, which checks all of it again."""
    parts = parse_topic(topic)
    device, leaf = parts if parts is not None else (None, None)
    kind = leaf if leaf in DEVICE_TOPICS else None
    if len(raw) > max_bytes:
        return FirstLook(
            device, kind, Rejected(ReasonCode.OVERSIZE, f"{len(raw)} bytes > {max_bytes}", device)
        )
    if parts is None or kind is None:
        return FirstLook(
            device, None, Rejected(ReasonCode.TOPIC_MISMATCH, f"not a device topic: {topic[:100]}")
        )
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeError, RecursionError) as exc:
        return FirstLook(
            device, kind, Rejected(ReasonCode.BAD_JSON, str(exc)[:200], device, claimed_type=kind)
        )
    if not isinstance(payload, dict):
        refused = Rejected(ReasonCode.BAD_JSON, "payload is not a JSON object", device, claimed_type=kind)
        return FirstLook(device, kind, refused)
    said_type, said_device = payload.get("type"), payload.get("device_id")
    if not isinstance(said_type, str) or not isinstance(said_device, str):
        refused = Rejected(
            ReasonCode.BAD_SCHEMA, "type and device_id must be strings", device, claimed_type=kind
        )
        return FirstLook(device, kind, refused)
    if said_device != device or said_type != kind:
        detail = f"{said_type[:20]} message of {said_device[:64]} on the topic {topic[:100]}"
        return FirstLook(device, kind, Rejected(ReasonCode.TOPIC_MISMATCH, detail, device, claimed_type=kind))
    body = payload.get("alarm")
    urgent_raise = (
        kind == "alarm"
        and isinstance(body, dict)
        and body.get("action") == "raise"
        and body.get("kind") in ("sos", "amber", "man_down")
    )
    return FirstLook(device, kind, None, urgent_raise)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_object(raw: bytes) -> dict[str, Any]:
    text = raw.decode("utf-8")
    obj = json.loads(text, object_pairs_hook=unique_keys, parse_constant=_no_constants)
    if not isinstance(obj, dict):
        raise ValueError("payload is not a JSON object")
    canonical_json(obj)  # refuses lone surrogates and anything else that cannot be signed
    return obj


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _signature_ok(public_key: bytes, payload: Mapping[str, Any]) -> bool:
    unsigned = {k: v for k, v in payload.items() if k != "sig"}
    try:
        message = canonical_json(unsigned)
    except (ValueError, UnicodeEncodeError):
        return False
    return verify_signature(bytes(public_key), payload["sig"], message)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def topic_device_id(topic: str) -> str | None:
    """The device id a topic speaks for (the broker guarantees the publisher is that device)."""
    parsed = parse_topic(topic)
    return parsed[0] if parsed else None


def verify_device_message(
    raw: bytes,
    topic: str,
    public_key_lookup: Callable[[str], DeviceKey | None],
    now: datetime,
    max_skew: float | timedelta,
    max_bytes: int,
    replay_guard: Callable[[str], ReplayState],
) -> Verdict:
    """Decide whether one device message is authentic, fresh and new.

    Checks, in order: size, JSON, schema, topic (a device may only speak for itself, on the topic
    of its message type), device known and enabled, signature, duplicate event, sequence window,
    clock. ``replay_guard(device_id)`` returns the device's stored :class:`ReplayState`.
    Retained ``status`` messages skip the sequence and clock checks: the broker re-delivers the
    last one to every new subscriber, and presence is a hint, never evidence.
    """
    topic_parts = parse_topic(topic)
    topic_device = topic_parts[0] if topic_parts else None
    # Until the payload is read, the type it claims is the topic's (a device topic's, or none).
    on = topic_parts[1] if topic_parts and topic_parts[1] in DEVICE_TOPICS else None
    if len(raw) > max_bytes:
        return Rejected(ReasonCode.OVERSIZE, f"{len(raw)} bytes > {max_bytes}", topic_device, claimed_type=on)
    try:
        payload = _load_object(raw)
    except (ValueError, UnicodeError, RecursionError) as exc:
        return Rejected(ReasonCode.BAD_JSON, str(exc)[:200], topic_device, claimed_type=on)
    try:
        message = _MESSAGE_ADAPTER.validate_python(payload)
        if message.sig is not None and len(_b64decode(message.sig)) != 64:
            raise ValueError("sig must be 64 bytes of standard base64")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return Rejected(
            ReasonCode.BAD_SCHEMA, f"{where}: {first['msg']}"[:200], topic_device, claimed_type=on
        )
    except (ValueError, binascii.Error) as exc:
        return Rejected(ReasonCode.BAD_SCHEMA, str(exc)[:200], topic_device, claimed_type=on)

    said = message.type  # one of the schema's literal types: fit to label a metric
    if topic_parts is None:
        return Rejected(
            ReasonCode.TOPIC_MISMATCH, f"not a device topic: {topic[:100]}", None, claimed_type=said
        )
    if topic_device != message.device_id:
        return Rejected(
            ReasonCode.TOPIC_MISMATCH,
            f"payload device {message.device_id} on the topic of {topic_device}",
            topic_device,
            claimed_type=said,
        )
    if topic_parts[1] != message.type:
        return Rejected(
            ReasonCode.TOPIC_MISMATCH,
            f"{message.type} message on the {topic_parts[1]} topic",
            topic_device,
            claimed_type=said,
        )

    device_id = message.device_id
    key = public_key_lookup(device_id)
    if key is None:
        return Rejected(
            ReasonCode.UNKNOWN_DEVICE, f"device {device_id} is not enrolled", device_id, claimed_type=said
        )
    if not key.enabled:
        return Rejected(
            ReasonCode.DISABLED_DEVICE, f"device {device_id} is disabled", device_id, claimed_type=said
        )

    state = replay_guard(device_id)
    if message.sig is None:  # the offline last will: authenticated by the broker, not signed
        return Accepted(message, state, signed=False)
    if not _signature_ok(key.public_key, payload):
        return Rejected(
            ReasonCode.BAD_SIGNATURE,
            "signature does not verify with the device key",
            device_id,
            claimed_type=said,
        )

    offset = (message.sent_at - now).total_seconds()
    if message.type == "status":
        return Accepted(message, state, clock_offset_s=offset)

    remembers_event = message.type in ("alarm", "checkin")
    if state.has_event(message.event_id):
        fresh = state.classify(message.seq) == "new"
        return Duplicate(message, state.record(message.seq) if fresh else state)

    verdict = state.classify(message.seq)
    if verdict == "stale":
        return Rejected(
            ReasonCode.STALE_SEQUENCE,
            f"seq {message.seq} is older than the window below {state.highest}",
            device_id,
            message,
            said,
        )
    if verdict == "replay":
        return Rejected(
            ReasonCode.REPLAY, f"seq {message.seq} was already accepted", device_id, message, said
        )
    if verdict == "jump":  # refused without moving the window: the device's next message still counts
        return Rejected(
            ReasonCode.SEQUENCE_JUMP,
            f"seq {message.seq} leaps more than {MAX_SEQ_STEP} past the highest accepted ({state.highest})",
            device_id,
            message,
            said,
        )

    skew = _seconds(max_skew)
    if offset > skew:
        return Rejected(
            ReasonCode.CLOCK_SKEW,
            f"sent_at is {offset:.0f} s ahead of the server clock",
            device_id,
            message,
            said,
        )
    new_state = state.record(message.seq, message.event_id if remembers_event else None)
    return Accepted(message, new_state, clock_offset_s=offset, late=offset < -skew)


# --------------------------------------------------------------------------- signing helpers


class AckStatus(StrEnum):
    RECEIVED = "received"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    OPERATOR_ACKNOWLEDGED = "operator_acknowledged"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


def sign_payload(payload: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """``payload`` plus ``sig``: Ed25519 over the canonical JSON of every other field."""
    unsigned = {k: v for k, v in payload.items() if k != "sig"}
    signature = private_key.sign(canonical_json(unsigned))
    return {**unsigned, "sig": base64.b64encode(signature).decode("ascii")}


def build_ack(
    *,
    private_key: Ed25519PrivateKey,
    device_id: str,
    event_id: str,
    status: AckStatus | str,
    at: datetime,
    alarm_id: str | None = None,
    reason: str | None = None,
) -> bytes:
    """The service's signed answer on ``lw/v1/<device_id>/ack``.

    ``device_id`` is inside the signed body so an ack cannot be replayed to another device.
    A ``rejected`` ack carries ``reason`` (only ``clock_skew`` is ever sent) and ``at`` is the
    server's time, so the device can correct its clock and send the event again.
    """
    status = AckStatus(status)
    if (status == AckStatus.REJECTED) != (reason is not None):
        raise ValueError("reason is required for, and only for, a rejected ack")
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "device_id": device_id,
        "event_id": event_id,
        "alarm_id": alarm_id,
        "status": status.value,
        "at": format_time(at),
    }
    if reason is not None:
        body["reason"] = reason
    return canonical_json(sign_payload(body, private_key))


def verify_ack(raw: bytes, public_key: bytes) -> dict[str, Any]:
    """Parse and check a service ack; raises ``ValueError`` when it is not authentic."""
    payload = _load_object(raw)
    if not isinstance(payload.get("sig"), str) or not _signature_ok(public_key, payload):
        raise ValueError("ack signature does not verify with the service key")
    return payload
