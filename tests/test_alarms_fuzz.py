"""10,000 generated device payloads straight into ``AlarmService.handle``: it never raises, every
refusal carries a documented reason, and nothing that is not an authentic, well-formed message is
ever stored. (A few hundred more go through the real broker in test_alarms_e2e.py.)"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from alarms.models import AlarmRecord, LoneWorkerEvent
from alarms.service import AlarmService
from chain_of_custody.models import EvidenceItem
from devices.lone_worker_wire import (
    Accepted,
    DeviceKey,
    ReasonCode,
    ReplayState,
    canonical_json,
    format_time,
    sign_payload,
    verify_device_message,
)
from devices.service import set_status
from ingest.services import build_services
from tests.conftest import make_settings
from tests.test_alarms_kit import DeviceKit, enrol, raw_public

REASONS = {r.value for r in ReasonCode}
TOPIC_DEVICES = ["LW-F1", "LW-F2", "LW-OFF", "LW-NONE", "bad/id", "+", "#", ""]
LEAVES = ["alarm", "heartbeat", "location", "checkin", "status", "ack", "command", "nope", ""]


class Fuzz:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.alarms = AlarmService(services)
        self.devices = {d: enrol(services, d, staff_id=f"S-{d}") for d in ("LW-F1", "LW-F2", "LW-OFF")}
        with services.db.session() as session:
            set_status(session, services.ledger, "LW-OFF", "disabled", "test")
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.seq = 0

    def handle(self, topic: str, raw: bytes) -> None:
        result = self.alarms.handle(topic, raw)  # must never raise
        assert result.outcome in ("accepted", "duplicate", "rejected")
        if result.outcome == "rejected":
            assert result.reason in REASONS, result
        self.outcomes[result.outcome] += 1
        self.reasons[result.reason or result.outcome] += 1


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, seaweed: Any) -> Iterator[Fuzz]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    services = build_services(make_settings(tmp, f"sqlite:///{tmp / 'fuzz.db'}", seaweed))
    yield Fuzz(services)
    services.db.dispose()


# Cheap strategies on purpose: 10,000 payloads must stay fast (Hypothesis costs per value drawn).
# The alphabet still has what breaks naive parsers: NUL, quotes, backslash, non-ASCII, emoji.
ALPHABET = st.sampled_from(list('aZ09-_:/. é\x00\ud7ff🙂"\\'))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(ALPHABET, max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(ALPHABET, max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
topics = st.builds(
    lambda d, leaf: f"lw/v1/{d}/{leaf}", st.sampled_from(TOPIC_DEVICES), st.sampled_from(LEAVES)
) | st.text(max_size=30)
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@settings(FUZZ, max_examples=1500)
@given(
    topic=topics,
    raw=st.binary(max_size=400) | st.integers(16 * 1024 - 2, 20_000).map(lambda n: b"{" + b" " * n + b"}"),
)
def test_random_bytes(fuzz: Fuzz, topic: str, raw: bytes) -> None:
    fuzz.handle(topic, raw)


FIELDS = ["v", "device_id", "event_id", "seq", "type", "sent_at", "occurred_at", "position", "battery"]
FIELDS += ["alarm", "checkin", "status", "sig"]
envelopes = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


@settings(FUZZ, max_examples=1500)
@given(topic=topics, value=json_values | envelopes)
def test_random_json(fuzz: Fuzz, topic: str, value: Any) -> None:
    fuzz.handle(topic, json.dumps(value).encode())


BODIES: dict[str, Any] = {
    "sos": ("alarm", {"kind": "sos", "action": "raise"}),
    "amber": ("alarm", {"kind": "amber", "action": "raise", "amber_timeout_s": 600}),
    "man_down": ("alarm", {"kind": "man_down", "action": "raise", "reason": "fall"}),
    "cancel": ("alarm", {"kind": "amber", "action": "cancel", "ref_event_id": str(uuid.uuid4())}),
    "start": ("checkin", {"action": "start", "visit_id": "V-1", "expected_end": "2030-01-01T00:00:00Z"}),
    "end": ("checkin", {"action": "end", "visit_id": "V-1"}),
    "heartbeat": ("heartbeat", None),
    "location": ("location", None),
    "status": ("status", {"state": "online", "session": "s"}),
}
# Weighted towards messages that are cheap to accept (an accepted SOS opens an incident).
KINDS = (
    ["heartbeat"] * 6 + ["location"] * 3 + ["status", "start", "end", "cancel", "amber", "sos", "man_down"]
)
PATHS = [
    "v",
    "device_id",
    "event_id",
    "seq",
    "type",
    "sent_at",
    "occurred_at",
    "position",
    "battery",
    "sig",
    "x",
]
NESTED = [
    "kind",
    "action",
    "amber_timeout_s",
    "ref_event_id",
    "reason",
    "note",
    "visit_id",
    "expected_end",
    "lat",
]
# Values that sit on the edges of the schema, chosen by index (cheap to draw).
EDGES: list[Any] = [
    None,
    True,
    0,
    -1,
    1,
    100,
    101,
    2**53 - 1,
    2**53,
    -(2**63),
    1.5,
    1e308,
    -0.0,
    "",
    "x" * 501,
    "sos",
    "amber",
    "raise",
    "cancel",
    "fall",
    "start",
    "end",
    "online",
    "offline",
    "LW-F1",
    "LW-F2",
    "LW-OFF",
    "../etc",
    "2026-11-22T14:00:00Z",
    "2026-11-22T14:00:00+01:00",
    "2026-13-40T99:00:00Z",
    "2999-01-01T00:00:00.000Z",
    str(uuid.uuid4()),
    str(uuid.uuid4()).upper(),
    "AAAA",
    "A" * 86 + "==",
    [],
    {},
    [1, 2],
    {"lat": 91, "lon": 0},
    {"lat": 1, "lon": 1, "accuracy_m": -1},
    {"nested": {"deep": [None]}},
    "é🙂\x00",
]
SHIFTS = [0, 0, 0, 0, -3600, -86400 * 3, 200, 400, 86400 * 365]


@st.composite
def mutated_batch(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Ten valid messages of enrolled devices, each with up to three edits of fields or body values
    (edge values by index, or a generated JSON value), re-signed (mostly) or not, on its own topic
    (mostly) or another device's."""
    batch = []
    for _ in range(10):
        device = draw(st.integers(0, 2))
        ops = []
        for _ in range(draw(st.integers(0, 3))):
            where = draw(st.integers(0, len(PATHS) + len(NESTED) - 1))
            value = (
                EDGES[draw(st.integers(0, len(EDGES) - 1))] if draw(st.integers(0, 7)) else draw(json_values)
            )
            ops.append((draw(st.integers(0, 2)), where, value))
        batch.append(
            {
                "device": device,
                "kind": draw(st.integers(0, len(KINDS) - 1)),
                "ops": ops,
                "shift": draw(st.integers(0, len(SHIFTS) - 1)),
                "resign": draw(st.integers(0, 2)) > 0,
                "other_topic": draw(st.integers(0, 9)) == 0,
            }
        )
    return batch


def build_mutated(devices: dict[str, DeviceKit], case: dict[str, Any]) -> tuple[str, bytes]:
    """The payload and topic a generated case describes (its device signs it, or does not)."""
    device_id = ["LW-F1", "LW-F2", "LW-OFF"][case["device"]]
    kit = devices[device_id]
    type_, body = BODIES[KINDS[case["kind"]]]
    sent = datetime.now(UTC) + timedelta(seconds=SHIFTS[case["shift"]])
    payload = kit.payload(type_, json.loads(json.dumps(body)) if body else None, sent_at=sent, sign=False)
    if type_ == "status":
        payload.pop("occurred_at", None)
    for op, where, value in case["ops"]:
        key = (PATHS + NESTED)[where]
        if op == 0 or (op == 2 and not isinstance(payload.get(type_), dict)):
            payload[key] = value
        elif op == 1:
            payload.pop(key, None)
        else:
            payload[type_][key] = value
    try:
        signed = sign_payload(payload, kit.key) if case["resign"] else {**payload, "sig": "A" * 86 + "=="}
        raw = canonical_json(signed)
    except ValueError:  # not representable as canonical JSON (e.g. a lone surrogate)
        raw = json.dumps(payload).encode()
    topic_device = "LW-F2" if case["other_topic"] else device_id
    return f"lw/v1/{topic_device}/{type_}", raw


@settings(FUZZ, max_examples=700)
@given(batch=mutated_batch())
def test_mutated_signed_messages(fuzz: Fuzz, batch: list[dict[str, Any]]) -> None:
    for case in batch:
        fuzz.handle(*build_mutated(fuzz.devices, case))


def test_nothing_but_authentic_messages_was_stored(fuzz: Fuzz) -> None:
    """Runs after the generated cases (file order): everything stored checks out on its own."""
    services = fuzz.services
    assert sum(fuzz.outcomes.values()) == 1500 + 1500 + 700 * 10
    assert fuzz.outcomes["accepted"] > 100 and fuzz.outcomes["rejected"] > 5000, fuzz.outcomes
    assert {
        "oversize",
        "bad_json",
        "bad_schema",
        "topic_mismatch",
        "bad_signature",
        "disabled_device",
    } <= set(fuzz.reasons), fuzz.reasons
    registry = {d: DeviceKey(raw_public(k.key)) for d, k in fuzz.devices.items()}
    with services.db.session() as session:
        events = list(session.scalars(select(LoneWorkerEvent)))
        alarms = list(session.scalars(select(AlarmRecord)))
        items = {i.id: i for i in session.scalars(select(EvidenceItem).where(EvidenceItem.kind == "alarm"))}
    assert events, "some generated messages must have been accepted"
    for event in events:
        verdict = verify_device_message(
            event.raw, event.topic, registry.get, event.received_at, 300, 16 * 1024, lambda _d: ReplayState()
        )
        assert isinstance(verdict, Accepted), (event.raw, verdict)
        assert event.device_id in ("LW-F1", "LW-F2")  # never the disabled one
    raises = {e.event_id for e in events if e.type == "alarm" and e.action == "raise"}
    from_devices = [a for a in alarms if a.source_event_id is not None]
    assert {a.source_event_id for a in from_devices} == raises
    assert all(
        a.kind in ("low_battery", "device_offline", "missed_checkin")
        for a in alarms
        if a.source_event_id is None
    )
    for event in events:
        if event.type == "alarm":
            item = items[event.evidence_item_id]
            assert item.sha256 == event.sha256 and item.size == len(event.raw)
    # ``format_time`` keeps sent_at within the schema; a sanity check that the clock skew path ran too.
    assert fuzz.reasons["clock_skew"] > 0 and format_time(datetime.now(UTC))
