"""Device messages through ``AlarmService.handle`` on both databases: alarms, evidence, custody,
incidents, acks, the change feed, deadlines, duplicates and every rejection reason."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select

from alarms import rules
from alarms.escalations import ESCALATION_TOPIC
from alarms.models import AlarmChange, AlarmRecord, LoneWorkerEvent, LoneWorkerVisit
from alarms.service import AlarmService, run_pass
from alarms.voice_memos import VoiceMemoRefused
from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import verify_service
from devices.lone_worker_wire import canonical_json, sign_payload, verify_ack
from devices.models import LoneWorkerState
from devices.service import enrol_lone_worker, set_status
from incidents.models import Incident, IncidentLink
from storage.objects import ObjectStore
from tests.test_alarms_kit import DeviceKit, acks, custody, enrol, later, outbox


def alarms_of(services: Any, **where: Any) -> list[AlarmRecord]:
    with services.db.session() as session:
        q = select(AlarmRecord).order_by(AlarmRecord.raised_at)
        for name, value in where.items():
            q = q.where(getattr(AlarmRecord, name) == value)
        return list(session.scalars(q))


def one_alarm(services: Any, alarm_id: str) -> AlarmRecord:
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        assert row is not None
        return row


def feed(services: Any) -> list[tuple[str, str]]:
    with services.db.session() as session:
        return [(r.alarm_id, r.change) for r in session.scalars(select(AlarmChange).order_by(AlarmChange.id))]


def rejections(reason: str) -> float:
    return REGISTRY.get_sample_value("evidence_lone_worker_rejections_total", {"reason": reason}) or 0.0


@pytest.fixture
def alarms(services: Any) -> AlarmService:
    return AlarmService(services)


class Lite(NamedTuple):
    services: Any
    alarms: AlarmService


@pytest.fixture
def lite(sqlite_services: Any) -> Lite:
    """Most behaviour does not depend on the database: SQLite only, to keep the suite fast. The
    services and their alarm side, as ``services, alarms = lite``."""
    return Lite(sqlite_services, AlarmService(sqlite_services))


def test_sos_becomes_evidence_alarm_incident_and_ack(services: Any, alarms: AlarmService) -> None:
    device = enrol(services, "LW-1", staff_id="S-1")
    topic, raw = device.sos()
    result = alarms.handle(topic, raw)
    assert result.outcome == "accepted" and result.alarm_id

    alarm = one_alarm(services, result.alarm_id)
    assert (alarm.kind, alarm.severity, alarm.status) == ("sos", "red", "raised")
    assert alarm.wearer == "S-1" and alarm.lat == pytest.approx(51.5072) and alarm.battery == 80
    assert alarm.next_deadline == alarm.ack_due_at and alarm.ack_due_at is not None

    # The exact bytes received are a locked evidence item with a custody trail.
    with services.db.session() as session:
        item = session.get(EvidenceItem, alarm.evidence_item_id)
        assert item is not None
    assert (item.kind, item.status, item.sha256) == ("alarm", "stored", hashlib.sha256(raw).hexdigest())
    assert services.store.get_bytes(item.object_key, item.version_id) == raw
    assert services.store.info(item.object_key, item.version_id).retention_mode == "COMPLIANCE"
    trail = custody(services, item.id)
    assert [e.action for e in trail] == [
        "captured",
        "received",
        "stored",
        "verified",
        "alarm_raised",
        "linked",
    ]
    assert json.loads(trail[0].details)["device_signature"] == json.loads(raw)["sig"]

    # A red alarm opens an incident for the wearer, with the alarm and its evidence linked.
    with services.db.session() as session:
        incident = session.get(Incident, alarm.incident_id)
        assert incident is not None and incident.wearer == "S-1" and incident.category == "lone_worker_alarm"
        links = {(link.target_kind, link.target_id) for link in session.scalars(select(IncidentLink))}
    assert links == {("alarm", alarm.id), ("evidence", item.id)}

    # The device is told, with an ack signed by the service key; operators see it on the feed.
    (ack,) = acks(services, "LW-1")
    assert (
        ack["status"] == "received"
        and ack["alarm_id"] == alarm.id
        and ack["event_id"] == json.loads(raw)["event_id"]
    )
    verify_ack(canonical_json(ack), services.key.public_raw)
    assert feed(services) == [(alarm.id, "raised"), (alarm.id, "incident_linked")]

    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    assert report.ok, report.problems


def test_provisional_alarm_is_acknowledged_first_and_made_whole_after(services: Any) -> None:
    """A provisional alarm: alarm row, feed and ack in one commit; evidence, custody and incident after it.
    Any later change to the alarm makes a provisional alarm whole first, so custody keeps its order."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False  # as under the MQTT consumer (a worker makes them whole)
    device = enrol(services, "LW-F1", staff_id="S-F1")
    topic, raw = device.sos()
    result = alarms.handle(topic, raw)
    assert result.outcome == "accepted" and result.provisional and result.publish
    alarm = one_alarm(services, result.alarm_id)
    assert alarm.status == "raised" and alarm.provisional
    assert alarm.evidence_item_id is None and alarm.incident_id is None
    assert acks(services, "LW-F1")[0]["status"] == "received" and feed(services) == [(alarm.id, "raised")]
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(EvidenceItem)) == 0

    # The operator acts before the worker made it whole: it is made whole first.
    alarms.act(alarm.id, rules.Acknowledge(by="user:op", at=datetime.now(UTC)))
    alarm = one_alarm(services, alarm.id)
    assert not alarm.provisional and alarm.incident_id and alarm.evidence_item_id
    assert [e.action for e in custody(services, alarm.evidence_item_id)] == [
        "captured",
        "received",
        "stored",
        "verified",
        "alarm_raised",
        "linked",
        "alarm_changed",
    ]
    assert [c for _, c in feed(services)] == ["raised", "incident_linked", "acknowledged"]
    assert alarms.make_provisional_alarms_whole() == 0  # nothing left, and nothing done twice

    # A second alarm is finished by the worker's pass (or, had this instance died, by the loop's).
    topic, raw = device.sos()
    second = alarms.handle(topic, raw).alarm_id
    assert run_pass(alarms, httpx.Client(), later(1)).made_whole == 0  # too fresh for the loop
    assert run_pass(alarms, httpx.Client(), later(10)).made_whole == 1
    alarm = one_alarm(services, second)
    assert not alarm.provisional and alarm.incident_id and alarm.evidence_item_id
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    assert report.ok, report.problems


def test_a_burst_is_handled_in_one_transaction(services: Any) -> None:
    """Messages of several devices committed together: each gets what it would have got alone."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False
    devices = [enrol(services, f"LW-B{i}", staff_id=f"S-B{i}") for i in range(4)]
    commits = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(services.db.engine, "commit", listener)
    try:
        results = alarms.handle_many(
            [
                (*devices[0].sos(), False),
                (*devices[1].sos(), False),
                (*devices[2].message("heartbeat", None), False),
                (*DeviceKit("LW-B3").sos(), False),  # another key: refused, and the others are not
            ]
        )
    finally:
        event.remove(services.db.engine, "commit", listener)
    assert [r.outcome for r in results] == ["accepted", "accepted", "accepted", "rejected"]
    assert results[3].reason == "bad_signature"
    assert len(commits) == 1
    assert alarms.make_provisional_alarms_whole() == 2
    for i in (0, 1):
        alarm = one_alarm(services, results[i].alarm_id)
        assert alarm.wearer == f"S-B{i}" and alarm.incident_id and alarm.evidence_item_id
        assert [a["status"] for a in acks(services, f"LW-B{i}")] == ["received"]
    assert acks(services, "LW-B3") == []


def test_resent_event_is_absorbed_and_acknowledged_again(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-2")
    topic, raw = device.sos()
    first = alarms.handle(topic, raw)
    event_id = json.loads(raw)["event_id"]
    before = rejections("duplicate")

    again = alarms.handle(topic, raw)  # the very same bytes again (a broker re-delivery)
    assert again.outcome == "duplicate" and again.alarm_id == first.alarm_id
    resent = alarms.handle(*device.sos(event_id=event_id))  # a re-send: same event, new seq
    assert resent.outcome == "duplicate" and resent.alarm_id == first.alarm_id
    # Beyond the replay state's memory of 32 events, the event table still knows it.
    for _ in range(40):
        alarms.handle(*device.heartbeat())
        alarms.handle(*device.checkin_end("V-x"))
    late = alarms.handle(*device.sos(event_id=event_id))
    assert late.outcome == "duplicate" and late.alarm_id == first.alarm_id

    assert len(alarms_of(services, kind="sos")) == 1
    statuses = [a["status"] for a in acks(services, "LW-2") if a["event_id"] == event_id]
    assert statuses == ["received", "duplicate", "duplicate", "duplicate"]
    assert rejections("duplicate") - before == 3


def test_amber_turns_red_then_escalates_when_nobody_acknowledges(services: Any, alarms: AlarmService) -> None:
    device = enrol(services, "LW-3", staff_id=None)
    now = datetime.now(UTC)
    result = alarms.handle(*device.amber(60, sent_at=now), now=now)
    alarm = one_alarm(services, result.alarm_id)
    assert (alarm.severity, alarm.incident_id) == ("amber", None)
    assert alarm.next_deadline == alarm.amber_deadline

    assert alarms.fire_deadlines(later(59, now)) == 0
    assert alarms.fire_deadlines(later(61, now)) == 1
    alarm = one_alarm(services, alarm.id)
    assert (alarm.severity, alarm.status) == ("red", "raised")
    assert alarm.incident_id is not None  # no wearer: an incident of its own
    assert alarm.next_deadline == alarm.ack_due_at

    assert alarms.fire_deadlines(later(60 + 31, now)) == 1
    alarm = one_alarm(services, alarm.id)
    assert (alarm.status, alarm.escalation_reason, alarm.next_deadline) == ("escalated", "ack_timeout", None)
    assert [c for a, c in feed(services) if a == alarm.id] == ["raised", "turned_red", "escalated"]
    (control,) = outbox(services, ESCALATION_TOPIC)
    body = json.loads(control.payload)
    assert body["alarm_id"] == alarm.id and body["reason"] == "ack_timeout" and body["kind"] == "amber"
    assert [a["status"] for a in acks(services, "LW-3")] == ["received", "escalated", "escalated"]


def test_amber_cancelled_in_time_is_resolved(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-4")
    topic, raw = device.amber(120)
    raised = alarms.handle(topic, raw)
    event_id = json.loads(raw)["event_id"]
    topic, raw = device.cancel(event_id)
    cancelled = alarms.handle(topic, raw)
    assert cancelled.alarm_id == raised.alarm_id
    alarm = one_alarm(services, raised.alarm_id)
    assert (alarm.status, alarm.outcome, alarm.next_deadline) == ("resolved", "cancelled", None)
    assert alarms.fire_deadlines(later(500)) == 0
    resolved = [a for a in acks(services, "LW-4") if a["status"] == "resolved"]
    assert [a["event_id"] for a in resolved] == [json.loads(raw)["event_id"]]
    with services.db.session() as session:  # the cancel itself is evidence too
        items = session.scalar(
            select(func.count()).select_from(EvidenceItem).where(EvidenceItem.kind == "alarm")
        )
    assert items == 2


def test_cancel_that_overtakes_its_alarm_is_applied_when_the_alarm_arrives(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-5")
    raise_topic, raise_raw = device.amber(120)
    event_id = json.loads(raise_raw)["event_id"]
    cancel = alarms.handle(*device.cancel(event_id))  # processed first (another instance was slower)
    assert cancel.outcome == "accepted" and cancel.alarm_id is None
    assert acks(services, "LW-5")[0]["status"] == "received"
    raised = alarms.handle(raise_topic, raise_raw)  # lower seq, still inside the window
    assert raised.outcome == "accepted"
    alarm = one_alarm(services, raised.alarm_id)
    assert (alarm.status, alarm.outcome) == ("resolved", "cancelled")


def test_cancel_of_a_red_alarm_only_tells_the_operator(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-6")
    topic, raw = device.sos()
    raised = alarms.handle(topic, raw)
    alarms.handle(*device.cancel(json.loads(raw)["event_id"], kind="sos"))
    alarm = one_alarm(services, raised.alarm_id)
    assert alarm.status == "raised" and alarm.cancel_requested_at is not None
    assert feed(services)[-1] == (alarm.id, "cancel_requested")


def test_operator_acknowledges_escalates_and_resolves(services: Any, alarms: AlarmService) -> None:
    device = enrol(services, "LW-7")
    raised = alarms.handle(*device.sos())
    now = datetime.now(UTC)
    view = alarms.act(raised.alarm_id, rules.Acknowledge(by="user:op", at=now))
    assert (
        view["status"] == "acknowledged"
        and view["acknowledged_by"] == "user:op"
        and view["next_deadline"] is None
    )
    with pytest.raises(rules.AlarmTransitionError):
        alarms.act(raised.alarm_id, rules.Acknowledge(by="user:op2", at=now))
    view = alarms.act(raised.alarm_id, rules.Escalate(by="user:op", at=now, note="police called"))
    assert view["status"] == "escalated" and view["escalation_reason"] == "operator"
    view = alarms.act(raised.alarm_id, rules.Resolve(by="user:op", at=now, outcome=rules.Outcome.GENUINE))
    assert view["status"] == "resolved" and view["outcome"] == "genuine"
    with pytest.raises(rules.AlarmTransitionError):
        alarms.act(raised.alarm_id, rules.Resolve(by="user:op", at=now, outcome=rules.Outcome.TEST))
    statuses = [a["status"] for a in acks(services, "LW-7")]
    assert statuses == ["received", "operator_acknowledged", "escalated", "resolved"]
    changes = [c for _, c in feed(services)]
    assert changes == ["raised", "incident_linked", "acknowledged", "escalated", "resolved"]
    trail = custody(services, one_alarm(services, raised.alarm_id).evidence_item_id or "")
    assert [e.action for e in trail].count("alarm_changed") == 3
    assert {e.actor for e in trail if e.action == "alarm_changed"} == {"user:op"}


def test_overdue_checkin_raises_an_alarm_that_the_end_checkin_clears(
    services: Any, alarms: AlarmService
) -> None:
    device = enrol(services, "LW-8")
    now = datetime.now(UTC)
    alarms.handle(*device.checkin_start("V-1", now + timedelta(minutes=30)))
    with services.db.session() as session:
        visit = session.scalars(select(LoneWorkerVisit)).one()
        assert visit.due_at == now.replace(microsecond=(now.microsecond // 1000) * 1000) + timedelta(
            minutes=35
        )
    assert alarms.raise_missed_checkins(later(34 * 60, now)) == 0
    assert alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    assert alarms.raise_missed_checkins(later(37 * 60, now)) == 0  # raised once
    (missed,) = alarms_of(services, kind="missed_checkin")
    assert (missed.severity, missed.visit_id, missed.wearer) == ("amber", "V-1", "S-1")
    assert missed.source_event_id is None and missed.dedupe_key == "missed_checkin:LW-8:V-1"

    alarms.handle(*device.checkin_end("V-1"))
    missed = one_alarm(services, missed.id)
    assert (missed.status, missed.outcome) == ("resolved", "cleared")
    assert [a["status"] for a in acks(services, "LW-8")] == ["received", "received"]


def test_device_silent_during_a_visit_raises_offline_until_it_is_heard_again(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-9")
    idle = enrol(services, "LW-10")
    now = datetime.now(UTC)
    alarms.handle(*device.checkin_start("V-2", now + timedelta(hours=2)), now=now)
    alarms.handle(*idle.heartbeat(), now=now)  # silent too, but not on a visit: no alarm
    assert alarms.raise_offline(later(170, now)) == 0
    assert alarms.raise_offline(later(181, now)) == 2
    (offline,) = alarms_of(services, kind="device_offline")
    assert offline.device_id == "LW-9" and offline.severity == "warning" and offline.visit_id == "V-2"
    assert alarms.raise_offline(later(400, now)) == 0  # once per silence

    alarms.handle(*device.heartbeat(), now=later(200, now))
    offline = one_alarm(services, offline.id)
    assert (offline.status, offline.outcome) == ("resolved", "cleared")
    with services.db.session() as session:
        state = session.get(LoneWorkerState, "LW-9")
        assert state is not None and state.offline_alarm_id is None and state.presence == "unknown"


def test_low_battery_from_heartbeats_raises_and_clears(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-11")
    alarms.handle(*device.heartbeat(battery=40))
    alarms.handle(*device.heartbeat(battery=12))
    alarms.handle(*device.heartbeat(battery=11))  # already raised
    (low,) = alarms_of(services, kind="low_battery")
    assert (low.severity, low.status, low.battery) == ("warning", "raised", 12)
    alarms.handle(*device.heartbeat(battery=20))  # not yet recovered (hysteresis)
    assert one_alarm(services, low.id).status == "raised"
    alarms.handle(*device.heartbeat(battery=60))
    assert (one_alarm(services, low.id).status, one_alarm(services, low.id).outcome) == (
        "resolved",
        "cleared",
    )


def test_presence_follows_status_and_a_stale_will_is_ignored(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-12")
    alarms.handle(*device.message("status", {"state": "online", "session": "s2"}, battery=None))
    will = canonical_json(
        {"v": 1, "type": "status", "device_id": "LW-12", "status": {"state": "offline", "session": "s1"}}
    )
    assert alarms.handle("lw/v1/LW-12/status", will).outcome == "accepted"
    with services.db.session() as session:
        assert session.get(LoneWorkerState, "LW-12").presence == "online"  # an older connection's will
    will = will.replace(b'"s1"', b'"s2"')
    alarms.handle("lw/v1/LW-12/status", will)
    with services.db.session() as session:
        assert session.get(LoneWorkerState, "LW-12").presence == "offline"


def test_every_rejection_reason_is_refused_and_counted(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-13")
    disabled = enrol(services, "LW-OFF")
    with services.db.session() as session:
        set_status(session, services.ledger, "LW-OFF", "disabled", "test")
    stranger = DeviceKit("LW-NOBODY")
    impostor = DeviceKit("LW-13")  # right id, wrong key
    good_topic, _ = device.sos()
    seen = alarms.handle(*device.sos())
    assert seen.outcome == "accepted"
    for _ in range(300):
        alarms.handle(*device.heartbeat())
    skewed_topic, skewed = device.sos(sent_at=datetime.now(UTC) + timedelta(minutes=10))
    cases = {
        "oversize": (good_topic, b"{" + b" " * 17000 + b"}"),
        "bad_json": (good_topic, b'{"v":1,"v":1}'),
        "bad_schema": (
            good_topic,
            canonical_json({**device.payload("alarm", {"kind": "sos", "action": "raise"}), "x": 1}),
        ),
        "topic_mismatch": ("lw/v1/LW-13/heartbeat", device.sos()[1]),
        "unknown_device": stranger.sos(),
        "disabled_device": disabled.sos(),
        "bad_signature": impostor.sos(),
        "stale_sequence": device.sos(seq=5),
        "sequence_jump": device.sos(seq=2**53 - 1),
        "replay": device.heartbeat(seq=device.seq - 3),
        "clock_skew": (skewed_topic, skewed),
    }
    for reason, (topic, raw) in cases.items():
        before = rejections(reason)
        result = alarms.handle(topic, raw)
        assert (result.outcome, result.reason) == ("rejected", reason), result
        assert rejections(reason) - before == 1, reason
    # Only the clock skew earns an answer: a signed "rejected" with the server's time, sent at once.
    assert [a["status"] for a in acks(services, "LW-13")] == ["received"]
    assert len(alarms_of(services)) == 1


def test_a_leaping_sequence_number_costs_one_message_and_enrolling_again_resyncs(lite: Lite) -> None:
    """A validly signed seq of 2^53 - 1 used to lock its device out until it was enrolled again; now
    only that message is refused (logged and counted) and the next SOS is taken as usual."""
    services, alarms = lite
    device = enrol(services, "LW-SEQ", staff_id=None)
    assert alarms.handle(*device.sos()).outcome == "accepted"
    before = rejections("sequence_jump")
    leap = alarms.handle(*device.sos(seq=2**53 - 1))
    assert (leap.outcome, leap.reason) == ("rejected", "sequence_jump")
    assert rejections("sequence_jump") - before == 1
    assert alarms.handle(*device.sos()).outcome == "accepted"
    assert [a["status"] for a in acks(services, "LW-SEQ")] == ["received", "received"]
    # A device whose counter leapt for good (a firmware fault) is refused message after message until
    # it is enrolled again: its sequence then starts afresh, whatever it was.
    device.seq += 2**33
    assert alarms.handle(*device.sos()).reason == "sequence_jump"
    fresh = DeviceKit("LW-SEQ")
    with services.db.session() as session:
        enrol_lone_worker(session, services.ledger, "LW-SEQ", fresh.public_b64, "test")
    assert alarms.handle(*fresh.sos()).outcome == "accepted"
    assert len(alarms_of(services, device_id="LW-SEQ")) == 3


def test_clock_skew_is_answered_with_the_server_time(sqlite_services: Any) -> None:
    services = sqlite_services
    sent: list[Any] = []
    alarms = AlarmService(services)
    alarms.publisher = sent.extend
    device = enrol(services, "LW-14")
    result = alarms.handle(*device.sos(sent_at=datetime.now(UTC) + timedelta(hours=1)))
    assert result.reason == "clock_skew"
    (message,) = sent
    ack = verify_ack(message.payload, services.key.public_raw)
    assert (ack["status"], ack["reason"], message.outbox_id) == ("rejected", "clock_skew", None)
    assert (
        abs((datetime.fromisoformat(ack["at"].replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds())
        < 5
    )


def test_alarm_goes_through_while_object_storage_is_down(sqlite_services: Any) -> None:
    services = sqlite_services
    broken = ObjectStore(
        "127.0.0.1:9", "x", "y", bucket=services.store.bucket, staging_bucket="s", timeout_seconds=1
    )
    real = services.store
    services.store = broken
    try:
        alarms = AlarmService(services)
        device = enrol(services, "LW-15")
        topic, raw = device.sos()
        result = alarms.handle(topic, raw)
        alarm = one_alarm(services, result.alarm_id)
        assert alarm.status == "raised" and alarm.evidence_item_id is None and alarm.incident_id is not None
        assert acks(services, "LW-15")[0]["status"] == "received"
    finally:
        services.store = real
    assert alarms.store_deferred_evidence(later(5)) == 1
    alarm = one_alarm(services, alarm.id)
    with services.db.session() as session:
        item = session.get(EvidenceItem, alarm.evidence_item_id)
        links = session.scalar(
            select(func.count())
            .select_from(IncidentLink)
            .where(IncidentLink.target_id == alarm.evidence_item_id)
        )
    assert item is not None and item.sha256 == hashlib.sha256(raw).hexdigest() and links == 1
    assert services.store.get_bytes(item.object_key, item.version_id) == raw


def test_voice_memo_is_signed_stored_and_linked(lite: Lite) -> None:
    services, alarms = lite
    device = enrol(services, "LW-16")
    topic, raw = device.amber(600)
    event_id = json.loads(raw)["event_id"]
    memo = b"OggS" + bytes(range(256)) * 40
    headers = device.voice_memo_headers(event_id, memo)
    sign = {
        "content_type": "audio/ogg",
        "sent_at": headers["X-Device-Sent-At"],
        "signature": headers["X-Device-Signature"],
    }
    with pytest.raises(VoiceMemoRefused) as refused:
        alarms.attach_voice_memo("LW-16", event_id, memo, **sign)
    assert refused.value.reason == "alarm_unknown"
    raised = alarms.handle(topic, raw)
    with pytest.raises(VoiceMemoRefused) as refused:
        alarms.attach_voice_memo("LW-16", event_id, memo + b"x", **sign)
    assert refused.value.reason == "bad_signature"
    item_id, created = alarms.attach_voice_memo("LW-16", event_id, memo, **sign)
    assert created and alarms.attach_voice_memo("LW-16", event_id, memo, **sign) == (item_id, False)
    alarm = one_alarm(services, raised.alarm_id)
    assert alarm.voice_memo_item_id == item_id
    trail = [e.action for e in custody(services, item_id)]
    assert trail == ["captured", "received", "stored", "verified"]
    alarms.fire_deadlines(later(601))  # turns red: the incident gets the alarm, its payload and the memo
    alarm = one_alarm(services, raised.alarm_id)
    with services.db.session() as session:
        linked = set(
            session.scalars(
                select(IncidentLink.target_id).where(IncidentLink.incident_id == alarm.incident_id)
            )
        )
    assert linked == {alarm.id, alarm.evidence_item_id, item_id}
    assert feed(services)[1] == (alarm.id, "voice_memo")


def test_voice_memo_for_an_alarm_still_pending_follows_its_raise(lite: Lite) -> None:
    """A memo uploaded while the alarm is provisional: it is made whole first, so custody keeps its order."""
    services, alarms = lite
    alarms.make_whole_inline = False
    device = enrol(services, "LW-17")
    topic, raw = device.sos()
    event_id = json.loads(raw)["event_id"]
    alarm_id = alarms.handle(topic, raw).alarm_id
    assert one_alarm(services, alarm_id).provisional
    memo = b"OggS" + bytes(range(256)) * 8
    headers = device.voice_memo_headers(event_id, memo)
    alarms.attach_voice_memo(
        "LW-17",
        event_id,
        memo,
        content_type="audio/ogg",
        sent_at=headers["X-Device-Sent-At"],
        signature=headers["X-Device-Signature"],
    )
    alarm = one_alarm(services, alarm_id)
    assert not alarm.provisional and alarm.evidence_item_id and alarm.incident_id
    trail = [e.action for e in custody(services, alarm.evidence_item_id)]
    assert trail.index("alarm_raised") < trail.index("alarm_changed")
    assert alarms.make_provisional_alarms_whole() == 0


def test_replay_state_is_compare_and_set_across_threads(services: Any) -> None:
    """Eight threads handle one device's messages at once (as several instances would): each alarm is
    stored once, none is lost, and the sequence window ends up knowing every one."""
    device = enrol(services, "LW-17")
    messages = [device.sos() if i % 3 else device.heartbeat() for i in range(60)]
    messages += messages[::4]  # some delivered twice
    results: list[Any] = []
    lock = threading.Lock()

    def run(part: list[tuple[str, bytes]]) -> None:
        alarms = AlarmService(services)
        for topic, raw in part:
            outcome = alarms.handle(topic, raw)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, args=(messages[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    outcomes = [(r.type, r.outcome, r.reason) for r in results]
    assert outcomes.count(("alarm", "accepted", None)) == 40
    assert outcomes.count(("heartbeat", "accepted", None)) == 20
    assert outcomes.count(("alarm", "duplicate", None)) == 10  # re-delivered alarms: acknowledged again
    assert outcomes.count(("heartbeat", "rejected", "replay")) == 5  # re-delivered heartbeats: dropped
    assert len(alarms_of(services, kind="sos")) == 40
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(LoneWorkerEvent)) == 40


def test_escalation_pass_calls_the_signed_webhook(sqlite_services: Any) -> None:
    services = sqlite_services
    from tests.test_alarms_kit import WebhookReceiver

    hook = WebhookReceiver()
    try:
        services.settings.escalation_webhook_url = hook.url
        alarms = AlarmService(services)
        device = enrol(services, "LW-18")
        raised = alarms.handle(*device.sos())
        with httpx.Client(timeout=5) as http:
            report = run_pass(alarms, http, later(31))
        assert report.deadlines == 1 and report.webhooks == 1
        ((headers, body),) = hook.wait(1)
        assert json.loads(body)["alarm_id"] == raised.alarm_id
        from chain_of_custody.keys import verify_signature

        assert verify_signature(services.key.public, headers["x-evidence-signature"], body)
        with httpx.Client(timeout=5) as http:
            assert run_pass(alarms, http, later(60)).webhooks == 0  # sent once
    finally:
        hook.close()


def test_payload_signed_over_other_fields_only(lite: Lite) -> None:
    """A message signed correctly but carrying a field the protocol does not know is refused."""
    services, alarms = lite
    device = enrol(services, "LW-19")
    payload = device.payload("alarm", {"kind": "sos", "action": "raise"}, sign=False)
    payload["extra"] = "x"
    raw = canonical_json(sign_payload(payload, device.key))
    assert alarms.handle("lw/v1/LW-19/alarm", raw).reason == "bad_schema"


def test_amber_escalated_on_arrival_names_its_incident(services: Any) -> None:
    """An amber held on the device past its timer and the acknowledgement time is escalated as it is
    raised; its escalation message must name the incident, so it is never provisional."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False  # as under the MQTT consumer
    device = enrol(services, "LW-E1", staff_id="S-E1")
    now = datetime.now(UTC)
    held = now - timedelta(seconds=120)  # 60 s timer + 30 s to acknowledge, both long gone
    result = alarms.handle(*device.amber(60, occurred_at=held, sent_at=now), now=now)
    alarm = one_alarm(services, result.alarm_id)
    assert (alarm.status, alarm.escalation_reason) == ("escalated", "ack_timeout")
    (control,) = outbox(services, ESCALATION_TOPIC)
    assert json.loads(control.payload)["incident_id"] == alarm.incident_id is not None
    assert alarm.evidence_item_id is not None and not result.provisional  # the whole path, at once


def test_payload_evidence_names_the_key_it_was_verified_with(services: Any) -> None:
    """The device's key changes while the alarm is provisional: the evidence item still names
    the key the signature was verified with, and that key verifies it."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False
    device = enrol(services, "LW-K1", staff_id="S-K1")
    accepted_with = device.public_b64
    topic, raw = device.sos()
    result = alarms.handle(topic, raw)
    assert result.provisional
    with services.db.session() as session:  # re-enrolled with a new key before it is made whole
        enrol_lone_worker(
            session, services.ledger, "LW-K1", DeviceKit("LW-K1").public_b64, "test", staff_id="S-K1"
        )
    assert alarms.make_provisional_alarms_whole() == 1
    alarm = one_alarm(services, result.alarm_id)
    (captured,) = [e for e in custody(services, alarm.evidence_item_id) if e.action == "captured"]
    details = json.loads(captured.details)
    assert details["device_public_key"] == accepted_with
    signed = {k: v for k, v in json.loads(raw).items() if k != "sig"}
    device.key.public_key().verify(base64.b64decode(details["device_signature"]), canonical_json(signed))


def test_device_messages_update_their_state_row_in_place(services: Any) -> None:
    """Every device message rewrites its device's state row. None of the columns it writes may be
    indexed, so PostgreSQL updates the row on its own page (HOT) and prunes old versions without
    VACUUM; half of each page is left for that. An index on one of them makes the primary key and
    the table bloat with every heartbeat (the alarm path's reads slowed down run after run)."""
    from sqlalchemy import inspect, text

    from alarms.device_state import CAS as _CAS

    written = {getattr(c, "key", c) for c in _CAS._values}  # type: ignore[attr-defined]
    assert "replay_state" in written and "offline_due_at" in written
    with services.db.session() as session:
        indexed = {
            column
            for index in inspect(session.connection()).get_indexes("lone_worker_states")
            for column in index["column_names"]
        }
        assert indexed & written == set()
        if services.db.is_postgres:
            options = session.scalar(
                text("SELECT reloptions FROM pg_class WHERE relname = 'lone_worker_states'")
            )
            assert "fillfactor=50" in (options or [])


def test_a_staged_insert_that_waits_does_not_hold_the_feed_lock(
    tmp_path: Any, pg_url: str, seaweed: Any
) -> None:
    """The rows an SOS inserts at commit go in before the change feed's lock is taken. An insert that
    waits on another transaction (here: the same event id, from another device, not yet committed)
    must not hold that lock, or every other alarm's commit would wait behind it (and the other
    transaction's own commit, wanting the lock, would deadlock with it)."""
    import psycopg

    from ingest.services import build_services
    from tests.conftest import make_settings, wait_for

    services = build_services(make_settings(tmp_path, pg_url, seaweed))
    try:
        alarms = AlarmService(services)
        alarms.make_whole_inline = False
        device = enrol(services, "LW-L1", staff_id="S-L1")
        enrol(services, "LW-L2", staff_id="S-L2")
        event_id = "6f0c1b8e-0000-4000-8000-00000000abcd"
        other = psycopg.connect(pg_url)
        other.execute(
            "INSERT INTO lone_worker_events (event_id, device_id, type, action, seq, occurred_at, sent_at,"
            " received_at, late, topic, raw, sha256) VALUES (%s, 'LW-L2', 'alarm', 'cancel', 1, now(), now(),"
            " now(), false, 'lw/v1/LW-L2/alarm', '{}', '')",
            (event_id,),
        )
        outcome: list[Any] = []
        worker = threading.Thread(
            target=lambda: outcome.append(alarms.handle(*device.sos(event_id=event_id)))
        )
        worker.start()
        with psycopg.connect(pg_url, autocommit=True) as watch:

            def waiting() -> bool:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'WITH staged_0%%'"
                ).fetchone()
                return bool(row and row[0])

            wait_for(waiting, 20, what="the SOS's commit to wait on the other transaction")
            held = watch.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            ).fetchone()
            assert held == (0,)
        other.rollback()  # the SOS's commit goes on, and the event is its own after all
        other.close()
        worker.join(20)
        assert outcome and outcome[0].outcome == "accepted" and outcome[0].alarm_id
    finally:
        services.db.dispose()


def test_a_raise_and_its_cancel_handed_over_together_are_both_applied(services: Any) -> None:
    """One device twice in a batch: a raise's rows are written at commit, so its cancel in the same
    transaction would not find the alarm; such a batch is handled one message at a time."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False
    device = enrol(services, "LW-B2", staff_id="S-B2")
    raise_topic, raise_raw = device.amber(120)
    cancel = device.cancel(json.loads(raise_raw)["event_id"])
    raised, cancelled = alarms.handle_many([(raise_topic, raise_raw, False), (*cancel, False)])
    assert cancelled.alarm_id == raised.alarm_id is not None
    alarm = one_alarm(services, raised.alarm_id)
    assert (alarm.status, alarm.outcome) == ("resolved", "cancelled")
