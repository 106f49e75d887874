"""A device message met by a fault of the database is waited out with the backoff and handled once;
one that meets none is handled by a plain call (the retry bookkeeping starts only after a failure)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from alarms.models import AlarmRecord, DeadLetter
from ingest.mqtt_consumer import AlarmConsumer, _Delivery
from tests.test_alarms_kit import acks, enrol


def _transient_errors() -> float:
    return REGISTRY.get_sample_value("evidence_mqtt_consumer_errors_total", {"kind": "transient"}) or 0.0


def _sos_delivery(services: Any, device_id: str, staff_id: str) -> _Delivery:
    kit = enrol(services, device_id, staff_id=staff_id)
    topic, raw = kit.sos()
    return _Delivery(0, device_id, topic, raw, 1, 0, False)


def test_a_database_fault_is_waited_out_with_the_backoff_and_the_alarm_stored_once(
    services: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = _sos_delivery(services, "LW-RETRY", "S-RETRY")
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True
    handle = services.alarms.handle
    calls: list[float] = []

    def unreachable_once(topic: str, raw: bytes, *, retained: bool = False) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database went away"))
        return handle(topic, raw, retained=retained)

    monkeypatch.setattr(services.alarms, "handle", unreachable_once)
    errors = _transient_errors()
    with caplog.at_level(logging.WARNING, logger="ingest.mqtt_consumer"):
        consumer._process(delivery)
    consumer._running = False

    assert len(calls) == 2, "one failed attempt, then one that went through"
    assert calls[1] - calls[0] >= 0.35, "the second attempt waited the first backoff (0.4 s)"
    assert _transient_errors() == errors + 1
    retried = [r for r in caplog.records if r.getMessage() == "device message not handled yet; retrying"]
    assert len(retried) == 1 and getattr(retried[0], "retry_in", None) == pytest.approx(0.4)
    assert consumer.handled == 1
    with services.db.session() as session:
        alarms = session.scalars(select(AlarmRecord).where(AlarmRecord.device_id == "LW-RETRY")).all()
    assert len(alarms) == 1 and alarms[0].kind == "sos"
    assert [a["status"] for a in acks(services, "LW-RETRY")] == ["received"]


def test_a_message_that_meets_no_fault_is_handled_by_one_plain_call(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery = _sos_delivery(services, "LW-PLAIN", "S-PLAIN")
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True

    def no_retrying(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("retry bookkeeping set up for a message that met no fault")

    monkeypatch.setattr("ingest.mqtt_consumer.Retrying", no_retrying)
    consumer._process(delivery)
    consumer._running = False
    assert consumer.handled == 1
    assert [a["status"] for a in acks(services, "LW-PLAIN")] == ["received"]


def test_a_fault_that_stays_is_retried_until_the_consumer_stops_and_left_with_the_broker(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery = _sos_delivery(services, "LW-AWAY", "S-AWAY")
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True
    calls: list[float] = []

    def unreachable(topic: str, raw: bytes, *, retained: bool = False) -> Any:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            consumer._running = False  # stopping while the database is still away
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database went away"))

    monkeypatch.setattr(services.alarms, "handle", unreachable)
    consumer._process(delivery)
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 0.7, "the backoff doubles (0.4 s, then 0.8 s)"
    assert consumer.handled == 0, "left unacknowledged: the broker delivers it again"
    with services.db.session() as session:
        assert session.scalars(select(AlarmRecord).where(AlarmRecord.device_id == "LW-AWAY")).all() == []


def _kept_aside(services: Any, topic: str) -> list[str]:
    with services.db.session() as session:
        return [d.error for d in session.scalars(select(DeadLetter).where(DeadLetter.topic == topic))]


def test_a_fault_of_ours_is_tried_three_times_at_once_then_kept_aside_and_acknowledged(
    services: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = _sos_delivery(services, "LW-ASIDE", "S-ASIDE")
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True
    calls: list[float] = []

    def broken(topic: str, raw: bytes, *, retained: bool = False) -> Any:
        calls.append(time.monotonic())
        raise ValueError(f"a fault of ours, try {len(calls)}")

    monkeypatch.setattr(services.alarms, "handle", broken)
    internal = REGISTRY.get_sample_value("evidence_mqtt_consumer_errors_total", {"kind": "internal"}) or 0.0
    with caplog.at_level(logging.ERROR, logger="ingest.mqtt_consumer"):
        consumer._process(delivery)
    consumer._running = False

    assert len(calls) == 3 and calls[2] - calls[0] < 0.3, "three tries in a row, no backoff"
    assert (
        REGISTRY.get_sample_value("evidence_mqtt_consumer_errors_total", {"kind": "internal"}) == internal + 3
    )
    failed = [r for r in caplog.records if r.getMessage() == "device message handling failed"]
    assert len(failed) == 3 and all(r.exc_info for r in failed)
    assert _kept_aside(services, delivery.topic) == ["ValueError: a fault of ours, try 3"]
    assert consumer.handled == 1, "kept aside, then acknowledged"


def _keeping_aside(
    services: Any, monkeypatch: pytest.MonkeyPatch, device_id: str, *, kept_at: int | None, stops: bool
) -> tuple[AlarmConsumer, _Delivery, list[str], list[float]]:
    """A message whose handling always fails with a fault of ours, and whose keeping aside fails
    until try ``kept_at`` (None: always); the pauses between are recorded, and end the consumer
    if ``stops``. Returns what happened, in order."""
    delivery = _sos_delivery(services, device_id, f"S-{device_id}")
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True
    calls: list[str] = []
    pauses: list[float] = []
    keep = services.alarms.dead_letter

    def broken(topic: str, raw: bytes, *, retained: bool = False) -> Any:
        calls.append("handle")
        raise ValueError("a fault of ours")

    def dead_letter(topic: str, raw: bytes, error: str) -> None:
        calls.append("keep")
        if kept_at is None or calls.count("keep") < kept_at:
            raise OSError("the database went away too")
        keep(topic, raw, error)

    def pause(seconds: float) -> bool:
        calls.append("pause")
        pauses.append(seconds)
        consumer._running = not stops
        return not stops

    monkeypatch.setattr(services.alarms, "handle", broken)
    monkeypatch.setattr(services.alarms, "dead_letter", dead_letter)
    monkeypatch.setattr(consumer, "_sleep", pause)
    consumer._process(delivery)
    consumer._running = False
    return consumer, delivery, calls, pauses


def test_a_message_that_cannot_be_kept_aside_is_tried_again_after_a_pause_until_it_can(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, delivery, calls, pauses = _keeping_aside(
        services, monkeypatch, "LW-KEEP", kept_at=2, stops=False
    )
    assert calls == ["handle"] * 3 + ["keep", "pause", "handle", "keep"]
    assert pauses == [5.0]
    assert _kept_aside(services, delivery.topic) == ["ValueError: a fault of ours"]
    assert consumer.handled == 1


def test_a_message_that_cannot_be_kept_aside_is_left_with_the_broker_when_the_consumer_stops(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, delivery, calls, _ = _keeping_aside(services, monkeypatch, "LW-LEFT", kept_at=None, stops=True)
    assert calls == ["handle"] * 3 + ["keep", "pause"]
    assert consumer.handled == 0, "left unacknowledged: the broker delivers it again"
    assert _kept_aside(services, delivery.topic) == []
