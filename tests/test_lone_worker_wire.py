"""Lone-worker wire checks: every rejection reason, the replay window, the service's signed acks."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.lone_worker_wire import (
    MAX_FIRST_SEQ,
    MAX_SAFE_INTEGER,
    MAX_SEQ_STEP,
    Accepted,
    AckStatus,
    AlarmMessage,
    CheckinMessage,
    DeviceKey,
    Duplicate,
    ReasonCode,
    Rejected,
    ReplayState,
    StatusMessage,
    build_ack,
    canonical_json,
    format_time,
    parse_time,
    parse_topic,
    service_subscriptions,
    sign_payload,
    verify_ack,
    verify_device_message,
)

NOW = datetime(2026, 11, 22, 14, 0, 0, tzinfo=UTC)
MAX_BYTES = 16 * 1024
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


REGISTRY = {
    "LW-0001": DeviceKey(raw_public(KEY)),
    "LW-0002": DeviceKey(raw_public(OTHER_KEY)),
    "LW-OFF": DeviceKey(raw_public(KEY), enabled=False),
}


def payload(type_: str = "alarm", seq: int = 1, device_id: str = "LW-0001", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "device_id": device_id,
        "event_id": str(uuid.uuid4()),
        "seq": seq,
        "type": type_,
        "sent_at": format_time(NOW),
        "battery": 81,
        "position": {"lat": 51.5072, "lon": -0.1276, "accuracy_m": 12},
    }
    if type_ == "alarm":
        body["occurred_at"] = format_time(NOW - timedelta(seconds=2))
        body["alarm"] = {"kind": "sos", "action": "raise"}
    elif type_ == "checkin":
        body["occurred_at"] = format_time(NOW)
        body["checkin"] = {
            "action": "start",
            "visit_id": "V-1",
            "expected_end": format_time(NOW + timedelta(hours=1)),
        }
    elif type_ == "status":
        body["status"] = {"state": "online", "session": "s1"}
    body.update(extra)
    return body


def signed(body: dict[str, Any], key: Ed25519PrivateKey = KEY) -> bytes:
    return canonical_json(sign_payload(body, key))


def check(
    raw: bytes,
    topic: str = "lw/v1/LW-0001/alarm",
    state: ReplayState | None = None,
    now: datetime = NOW,
) -> Any:
    return verify_device_message(
        raw, topic, REGISTRY.get, now, 300, MAX_BYTES, lambda _device: state or ReplayState()
    )


def topic_of(body: dict[str, Any]) -> str:
    return f"lw/v1/{body['device_id']}/{body['type']}"


# --------------------------------------------------------------------------- canonical form


def test_canonical_json_is_sorted_compact_utf8_and_refuses_nan() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": "é", "c": [1, 2]}}) == '{"a":{"c":[1,2],"d":"é"},"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_times_are_rfc3339_utc_only() -> None:
    assert format_time(NOW + timedelta(microseconds=123456)) == "2026-11-22T14:00:00.123Z"
    assert parse_time("2026-11-22T14:00:00.123Z") == NOW + timedelta(milliseconds=123)
    for bad in ("2026-11-22T14:00:00+01:00", "2026-11-22 14:00:00Z", "2026-11-22T14:00:00"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_topics_parse_and_service_filters_cover_every_device_topic() -> None:
    assert parse_topic("lw/v1/LW-0001/alarm") == ("LW-0001", "alarm")
    assert parse_topic("lw/v1/LW-0001/alarm/extra") is None
    assert parse_topic("lw/v2/LW-0001/alarm") is None
    assert parse_topic("lw/v1/+/alarm") is None
    assert service_subscriptions("evidence") == [
        "$share/evidence/lw/v1/+/alarm",
        "$share/evidence/lw/v1/+/heartbeat",
        "$share/evidence/lw/v1/+/location",
        "$share/evidence/lw/v1/+/checkin",
        "$share/evidence/lw/v1/+/status",
    ]


# --------------------------------------------------------------------------- what is accepted


@pytest.mark.parametrize(
    "type_, extra",
    [
        ("alarm", {}),
        ("alarm", {"alarm": {"kind": "amber", "action": "raise", "amber_timeout_s": 900, "note": "flat 4"}}),
        ("alarm", {"alarm": {"kind": "man_down", "action": "raise", "reason": "no_movement"}}),
        ("alarm", {"alarm": {"kind": "low_battery", "action": "raise"}}),
        ("alarm", {"alarm": {"kind": "amber", "action": "cancel", "ref_event_id": str(uuid.uuid4())}}),
        ("heartbeat", {}),
        ("location", {}),
        ("checkin", {}),
        ("checkin", {"checkin": {"action": "end", "visit_id": "V-1"}}),
        ("status", {}),
    ],
)
def test_each_kind_of_valid_message_is_accepted(type_: str, extra: dict[str, Any]) -> None:
    body = payload(type_, **extra)
    verdict = check(signed(body), topic_of(body))
    assert isinstance(verdict, Accepted), verdict
    assert verdict.message.event_id == body["event_id"]
    assert verdict.signed


def test_accepted_alarm_carries_parsed_fields_and_new_state() -> None:
    body = payload(seq=7)
    verdict = check(signed(body))
    assert isinstance(verdict, Accepted)
    assert isinstance(verdict.message, AlarmMessage)
    assert verdict.message.alarm.kind == "sos"
    assert verdict.message.event_time == NOW - timedelta(seconds=2)
    assert verdict.replay_state.highest == 7
    assert verdict.replay_state.has_event(body["event_id"])


def test_unsigned_offline_will_is_accepted_as_unsigned() -> None:
    will = canonical_json(
        {"v": 1, "type": "status", "device_id": "LW-0001", "status": {"state": "offline", "session": "s1"}}
    )
    verdict = check(will, "lw/v1/LW-0001/status")
    assert isinstance(verdict, Accepted) and not verdict.signed
    assert isinstance(verdict.message, StatusMessage) and verdict.message.status.state == "offline"


def test_retained_status_seen_again_is_not_a_replay() -> None:
    raw = signed(payload("status", seq=3))
    first = check(raw, "lw/v1/LW-0001/status")
    assert isinstance(first, Accepted)
    again = check(raw, "lw/v1/LW-0001/status", state=ReplayState().record(10))
    assert isinstance(again, Accepted)


def test_late_message_is_accepted_and_flagged() -> None:
    """A message the broker held while the service was down is still accepted (flagged late)."""
    body = payload(sent_at=format_time(NOW - timedelta(minutes=20)))
    verdict = check(signed(body))
    assert isinstance(verdict, Accepted)
    assert verdict.late and verdict.clock_offset_s == pytest.approx(-1200)


def test_non_ascii_note_signed_by_device_verifies() -> None:
    body = payload(
        alarm={"kind": "amber", "action": "raise", "amber_timeout_s": 60, "note": "Zoë’s flat — 4º"}
    )
    assert isinstance(check(signed(body)), Accepted)


# --------------------------------------------------------------------------- each rejection


def reason_of(verdict: Any) -> ReasonCode:
    assert isinstance(verdict, Rejected), verdict
    return verdict.reason


def test_oversize() -> None:
    body = payload(alarm={"kind": "sos", "action": "raise", "note": "x" * 400})
    raw = signed(body)
    assert (
        reason_of(
            verify_device_message(
                raw, topic_of(body), REGISTRY.get, NOW, 300, len(raw) - 1, lambda _: ReplayState()
            )
        )
        == ReasonCode.OVERSIZE
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1,2,3]",
        b'{"v":1,"seq":NaN}',
        b'{"v":1,"v":1}',
        b'{"note":"\\ud800"}',
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["not-utf8", "not-json", "array", "nan", "duplicate-key", "lone-surrogate", "deep-nesting"],
)
def test_bad_json(raw: bytes) -> None:
    assert reason_of(check(raw)) == ReasonCode.BAD_JSON


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: _without(b, "event_id"),
        lambda b: _without(b, "occurred_at"),
        lambda b: {**b, "extra": 1},
        lambda b: {**b, "v": 2},
        lambda b: {**b, "seq": True},
        lambda b: {**b, "seq": "5"},
        lambda b: {**b, "seq": -1},
        lambda b: {**b, "seq": 2**60},
        lambda b: {**b, "battery": 101},
        lambda b: {**b, "event_id": "not-a-uuid"},
        lambda b: {**b, "event_id": str(uuid.uuid4()).upper()},
        lambda b: {**b, "sent_at": "2026-11-22T14:00:00+00:00"},
        lambda b: {**b, "type": "selfie"},
        lambda b: {**b, "device_id": "LW/0001"},
        lambda b: {**b, "position": {"lat": 91, "lon": 0}},
        lambda b: {**b, "alarm": {"kind": "amber", "action": "raise"}},
        lambda b: {**b, "alarm": {"kind": "sos", "action": "raise", "amber_timeout_s": 5}},
        lambda b: {**b, "alarm": {"kind": "sos", "action": "cancel"}},
        lambda b: {**b, "alarm": {"kind": "man_down", "action": "raise"}},
        lambda b: {**b, "alarm": {"kind": "sos", "action": "raise", "reason": "fall"}},
        lambda b: {**b, "alarm": {"kind": "sos", "action": "raise", "note": "x" * 501}},
    ],
)
def test_bad_schema(mutate: Any) -> None:
    body = mutate(payload())
    assert reason_of(check(signed(body))) == ReasonCode.BAD_SCHEMA


def test_bad_schema_for_unsigned_online_status_and_malformed_signature() -> None:
    unsigned_online = canonical_json(
        {"v": 1, "type": "status", "device_id": "LW-0001", "status": {"state": "online"}}
    )
    assert reason_of(check(unsigned_online, "lw/v1/LW-0001/status")) == ReasonCode.BAD_SCHEMA
    body = sign_payload(payload(), KEY)
    for sig in ("%%%not-base64%%%", base64.b64encode(b"short").decode()):
        assert reason_of(check(canonical_json({**body, "sig": sig}))) == ReasonCode.BAD_SCHEMA
    checkin_end_with_expected = payload(
        "checkin", checkin={"action": "end", "visit_id": "V-1", "expected_end": format_time(NOW)}
    )
    assert (
        reason_of(check(signed(checkin_end_with_expected), "lw/v1/LW-0001/checkin")) == ReasonCode.BAD_SCHEMA
    )


def test_topic_mismatch_when_speaking_for_another_device() -> None:
    """LW-0002 (signing with its own key) puts LW-0001's id in the payload on its own topic."""
    body = payload(device_id="LW-0001")
    verdict = check(signed(body, OTHER_KEY), "lw/v1/LW-0002/alarm")
    assert reason_of(verdict) == ReasonCode.TOPIC_MISMATCH
    assert verdict.device_id == "LW-0002"


def test_topic_mismatch_for_wrong_message_type_or_malformed_topic() -> None:
    raw = signed(payload())
    assert reason_of(check(raw, "lw/v1/LW-0001/heartbeat")) == ReasonCode.TOPIC_MISMATCH
    assert reason_of(check(raw, "lw/v1/LW-0001/alarm/x")) == ReasonCode.TOPIC_MISMATCH
    assert reason_of(check(raw, "somewhere/else")) == ReasonCode.TOPIC_MISMATCH


def test_unknown_and_disabled_devices() -> None:
    stranger = payload(device_id="LW-9999")
    assert reason_of(check(signed(stranger), topic_of(stranger))) == ReasonCode.UNKNOWN_DEVICE
    disabled = payload(device_id="LW-OFF")
    assert reason_of(check(signed(disabled), topic_of(disabled))) == ReasonCode.DISABLED_DEVICE


def test_bad_signature_for_forged_key_and_for_any_tampered_field() -> None:
    assert reason_of(check(signed(payload(), OTHER_KEY))) == ReasonCode.BAD_SIGNATURE
    good = sign_payload(payload(), KEY)
    for field, value in [("seq", 99), ("battery", 5), ("sent_at", format_time(NOW + timedelta(seconds=1)))]:
        assert reason_of(check(canonical_json({**good, field: value}))) == ReasonCode.BAD_SIGNATURE
    tampered_alarm = {**good, "alarm": {"kind": "sos", "action": "raise", "note": "added later"}}
    assert reason_of(check(canonical_json(tampered_alarm))) == ReasonCode.BAD_SIGNATURE


def test_stale_sequence_below_window() -> None:
    state = ReplayState().record(1000)
    verdict = check(signed(payload(seq=1000 - state.window)), state=state)
    assert reason_of(verdict) == ReasonCode.STALE_SEQUENCE
    assert verdict.message is not None  # authenticated, so the service may log who it was


def test_one_validly_signed_top_sequence_number_does_not_lock_the_device_out() -> None:
    """seq 2^53 - 1 once left no number above it: every later message was a replay or stale until
    the device was enrolled again. Now it is refused and the device carries on where it was."""
    state = check(signed(payload(seq=5))).replay_state
    verdict = check(signed(payload(seq=MAX_SAFE_INTEGER)), state=state)
    assert reason_of(verdict) == ReasonCode.SEQUENCE_JUMP and verdict.message is not None
    nxt = check(signed(payload(seq=6)), state=state)
    assert isinstance(nxt, Accepted) and nxt.replay_state.highest == 6


def test_the_sequence_moves_at_most_one_step_per_message() -> None:
    state = check(signed(payload(seq=100))).replay_state
    assert (
        reason_of(check(signed(payload(seq=100 + MAX_SEQ_STEP + 1)), state=state)) == ReasonCode.SEQUENCE_JUMP
    )
    far = check(signed(payload(seq=100 + MAX_SEQ_STEP)), state=state)  # a counter in ms, 49 days later
    assert isinstance(far, Accepted)
    # A resent alarm under a leaping seq is still re-acknowledged, but does not move the window.
    body = payload(seq=101)
    first = check(signed(body), state=state)
    assert isinstance(first, Accepted)
    again = check(signed({**body, "seq": MAX_SAFE_INTEGER}), state=first.replay_state)
    assert isinstance(again, Duplicate) and again.replay_state == first.replay_state


def test_the_first_message_after_enrolment_may_start_high_but_not_at_the_top() -> None:
    """A device whose counter is a time in microseconds (about 2^50.6 today) starts where it is."""
    micros = int(NOW.timestamp() * 1_000_000)
    start = check(signed(payload("heartbeat", seq=micros)), "lw/v1/LW-0001/heartbeat")
    assert isinstance(start, Accepted)
    assert isinstance(check(signed(payload(seq=MAX_FIRST_SEQ))), Accepted)
    assert reason_of(check(signed(payload(seq=MAX_FIRST_SEQ + 1)))) == ReasonCode.SEQUENCE_JUMP
    assert reason_of(check(signed(payload(seq=MAX_SAFE_INTEGER)))) == ReasonCode.SEQUENCE_JUMP


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, MAX_SAFE_INTEGER), min_size=1, max_size=50))
def test_no_run_of_signed_messages_leaves_a_device_without_a_next_number(seqs: list[int]) -> None:
    """Whatever a device (or whoever holds its key) sends, a next message is still possible."""
    state = ReplayState()
    for seq in seqs:
        if state.classify(seq) == "new":
            state = state.record(seq)
    assert state.classify(state.highest + 1) == "new" and state.highest + 1 <= MAX_SAFE_INTEGER


def test_replay_of_an_accepted_message() -> None:
    raw = signed(payload("heartbeat", seq=5))
    first = check(raw, "lw/v1/LW-0001/heartbeat")
    assert isinstance(first, Accepted)
    assert reason_of(check(raw, "lw/v1/LW-0001/heartbeat", state=first.replay_state)) == ReasonCode.REPLAY


def test_duplicate_event_is_absorbed_not_rejected() -> None:
    """A re-sent alarm (same event id, new seq, re-signed) is a Duplicate to re-acknowledge."""
    body = payload(seq=5)
    first = check(signed(body))
    assert isinstance(first, Accepted)
    resend = {**body, "seq": 9, "sent_at": format_time(NOW + timedelta(seconds=30))}
    again = check(signed(resend), state=first.replay_state)
    assert isinstance(again, Duplicate) and again.reason == ReasonCode.DUPLICATE
    assert again.message.event_id == body["event_id"]
    assert again.replay_state.highest == 9
    # an exact redelivery of the original (MQTT at-least-once) is also just a duplicate
    assert isinstance(check(signed(body), state=again.replay_state), Duplicate)


def test_clock_skew_ahead_is_rejected_but_authenticated() -> None:
    body = payload(sent_at=format_time(NOW + timedelta(seconds=301)))
    verdict = check(signed(body))
    assert reason_of(verdict) == ReasonCode.CLOCK_SKEW
    assert verdict.message is not None and verdict.message.event_id == body["event_id"]
    assert isinstance(check(signed(payload(sent_at=format_time(NOW + timedelta(seconds=299))))), Accepted)


def test_rejections_do_not_advance_the_replay_state() -> None:
    """Nothing but an Accepted/Duplicate carries a state to store."""
    for raw in (signed(payload(), OTHER_KEY), signed(payload(sent_at=format_time(NOW + timedelta(hours=1))))):
        verdict = check(raw)
        assert isinstance(verdict, Rejected) and not hasattr(verdict, "replay_state")


# --------------------------------------------------------------------------- replay window


def test_replay_state_round_trips_through_json() -> None:
    state = ReplayState()
    for seq, event in [(3, "e3"), (1, None), (300, "e300"), (299, None)]:
        state = state.record(seq, event)
    again = ReplayState.from_json(state.to_json())
    assert again == state
    assert ReplayState.from_json(None) == ReplayState()
    assert len(state.to_json()) < 200


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700), st.booleans()), max_size=200), st.sampled_from([8, 64, 256]))
def test_replay_window_matches_a_reference_model(arrivals: list[tuple[int, bool]], window: int) -> None:
    """Against a model that remembers every seq: new iff unseen and within ``window`` of the highest."""
    state, seen, highest = ReplayState(window=window), set(), -1
    for seq, _ in arrivals:
        expected = "new" if seq > highest or (highest - seq < window and seq not in seen) else None
        if expected is None:
            expected = "stale" if highest - seq >= window else "replay"
        assert state.classify(seq) == expected
        if expected == "new":
            state, highest = state.record(seq), max(highest, seq)
            seen.add(seq)


_HEARTBEATS = {s: signed(payload("heartbeat", seq=s)) for s in range(1, 81)}
_OLD_SEQ_NEW_EVENT = {s: signed(payload("heartbeat", seq=s)) for s in range(1, 81)}


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.randoms(use_true_random=False))
def test_instances_splitting_the_stream_accept_each_message_exactly_once(
    instances: int, rnd: random.Random
) -> None:
    """Messages of one device split over several instances and processed out of order, the state
    kept in one row updated by compare-and-set (read, verify, write only if unchanged, else retry),
    with redeliveries of old seqs mixed in: each original message is accepted exactly once."""
    seqs = list(_HEARTBEATS)
    keyed = sorted(seqs, key=lambda s: s + rnd.uniform(0, 40))  # each moves at most 40 places
    deliveries = [_HEARTBEATS[s] for s in keyed] + [_HEARTBEATS[s] for s in rnd.sample(seqs, 10)]
    deliveries += [_OLD_SEQ_NEW_EVENT[s] for s in rnd.sample(seqs, 10)]  # replayed seqs, other event ids
    row = {"version": 0, "state": ReplayState().to_json()}
    queues = [deliveries[i::instances] for i in range(instances)]
    in_flight: dict[int, tuple[bytes, int, Accepted]] = {}  # read and verified, not yet written
    accepted: list[int] = []
    while any(queues) or in_flight:
        i = rnd.choice([i for i in range(instances) if queues[i] or i in in_flight])
        if i in in_flight:
            raw, read_version, verdict = in_flight.pop(i)
            if row["version"] == read_version:
                row = {"version": read_version + 1, "state": verdict.replay_state.to_json()}
                accepted.append(verdict.message.seq)
            else:  # another instance wrote first: read again and verify again
                queues[i].insert(0, raw)
            continue
        raw = queues[i].pop(0)
        verdict = check(raw, "lw/v1/LW-0001/heartbeat", state=ReplayState.from_json(row["state"]))
        if isinstance(verdict, Accepted):
            in_flight[i] = (raw, row["version"], verdict)
        else:  # the stored state only grows, so a refusal read from an older state still holds
            assert verdict.reason in (ReasonCode.REPLAY, ReasonCode.STALE_SEQUENCE)
    assert sorted(accepted) == seqs


def test_only_the_last_events_are_remembered_for_duplicates() -> None:
    state = ReplayState(max_events=3)
    for i in range(5):
        state = state.record(i, f"e{i}")
    assert state.recent_events == ("e2", "e3", "e4")
    assert not state.has_event("e0")


# --------------------------------------------------------------------------- acks


def test_service_ack_is_signed_canonical_and_bound_to_the_device() -> None:
    service_key = Ed25519PrivateKey.generate()
    raw = build_ack(
        private_key=service_key,
        device_id="LW-0001",
        event_id="e-1",
        status=AckStatus.RECEIVED,
        at=NOW,
        alarm_id="A-9",
    )
    ack = verify_ack(raw, raw_public(service_key))
    assert ack["status"] == "received" and ack["device_id"] == "LW-0001" and ack["alarm_id"] == "A-9"
    assert raw == canonical_json(json.loads(raw))
    forged = canonical_json({**json.loads(raw), "device_id": "LW-0002"})
    with pytest.raises(ValueError):
        verify_ack(forged, raw_public(service_key))
    with pytest.raises(ValueError):
        verify_ack(raw, raw_public(OTHER_KEY))


def test_rejected_ack_needs_a_reason_and_only_it_has_one() -> None:
    key = Ed25519PrivateKey.generate()
    nack = build_ack(
        private_key=key, device_id="D", event_id="e", status="rejected", at=NOW, reason="clock_skew"
    )
    assert json.loads(nack)["reason"] == "clock_skew"
    with pytest.raises(ValueError):
        build_ack(private_key=key, device_id="D", event_id="e", status="rejected", at=NOW)
    with pytest.raises(ValueError):
        build_ack(private_key=key, device_id="D", event_id="e", status="received", at=NOW, reason="x")


def test_checkin_message_model() -> None:
    body = payload("checkin")
    verdict = check(signed(body), "lw/v1/LW-0001/checkin")
    assert isinstance(verdict, Accepted) and isinstance(verdict.message, CheckinMessage)
    assert verdict.message.checkin.expected_end == NOW + timedelta(hours=1)
