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

from alarms.models import AlarmRecord
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
