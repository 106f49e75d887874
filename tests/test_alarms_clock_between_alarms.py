"""The clock's pass in a process with an MQTT consumer goes between its alarms, never beside them: each
piece of the pass (a transaction) waits while an alarm is waiting or being handled, so an SOS never
shares the interpreter's lock with the clock's work; without a consumer the pass waits for nothing."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from alarms.service import run_pass, wait_for_nothing
from ingest.mqtt_consumer import AlarmConsumer, _Delivery
from tests.test_alarms_kit import acks, enrol

PIECES = (
    "fire_deadlines",
    "make_provisional_alarms_whole",
    "raise_missed_checkins",
    "raise_offline",
    "sample_trails",
    "store_deferred_evidence",
)


def _watch_pieces(
    services: Any, monkeypatch: pytest.MonkeyPatch, consumer: AlarmConsumer, reached: threading.Event
) -> list[tuple[str, bool]]:
    """Each piece of the pass, recorded with whether the consumer had an alarm in hand as it began."""
    seen: list[tuple[str, bool]] = []

    def watched(name: str, piece: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, not consumer._urgent_idle.is_set()))
            reached.set()
            return piece(*args, **kwargs)

        return run

    for name in PIECES:
        monkeypatch.setattr(services.alarms, name, watched(name, getattr(services.alarms, name)))
    webhooks = services.alarms.outbox.send_webhooks
    monkeypatch.setattr(services.alarms.outbox, "send_webhooks", watched("send_webhooks", webhooks))
    return seen


def test_the_clock_pass_waits_while_the_consumer_has_an_alarm_in_hand(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the alarm being done lets the pass go on (not the longest wait running out).
    monkeypatch.setattr("ingest.mqtt_consumer.PRIORITY_PAUSE_S", 600.0)
    kit = enrol(services, "LW-CLOCK", staff_id="S-CLOCK")
    topic, raw = kit.sos()
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True
    consumer._take_over_effects()
    reached = threading.Event()  # the pass began a piece of its work, or began to wait for alarms
    seen = _watch_pieces(services, monkeypatch, consumer, reached)
    first = services.alarms.alarms_first

    def waiting() -> object:
        reached.set()
        return first()

    monkeypatch.setattr(services.alarms, "alarms_first", waiting)

    # An SOS has arrived and waits for the alarm worker.
    consumer._urgent.enqueue("LW-CLOCK", _Delivery(0, "LW-CLOCK", topic, raw, 1, 0, False), urgent_raise=True)
    with httpx.Client() as http:
        clock = threading.Thread(target=run_pass, args=(services.alarms, http), daemon=True)
        clock.start()
        assert reached.wait(30), "the pass neither began its work nor waited"
        # The alarm worker's turn: the SOS is handled and acknowledged, then the consumer is idle.
        [(device, delivery)] = consumer._urgent.take(1)
        consumer._process(delivery)
        consumer._urgent.done([device])
        clock.join(60)
    assert not clock.is_alive()
    consumer._running = False

    assert [a["status"] for a in acks(services, "LW-CLOCK")] == ["received"]
    assert {name for name, _ in seen} == {*PIECES, "send_webhooks"}, "the whole pass ran"
    beside = [name for name, in_hand in seen if in_hand]
    assert not beside, f"pieces of the pass ran while an alarm was in hand: {beside}"

    monkeypatch.undo()  # the consumer's own wait back in place, then handed back as a stop does
    consumer._hand_back_effects()
    assert services.alarms.alarms_first is wait_for_nothing


def test_without_a_consumer_the_pass_waits_for_nothing(services: Any) -> None:
    assert services.alarms.alarms_first is wait_for_nothing
    with httpx.Client() as http:
        assert run_pass(services.alarms, http).deadlines == 0


def test_under_a_stream_of_alarms_the_pass_stops_waiting_and_runs(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alarm always in hand: the pass waits before its first pieces only, then runs the rest."""
    monkeypatch.setattr("ingest.mqtt_consumer.PRIORITY_PAUSE_S", 0.05)
    monkeypatch.setattr("alarms.service.PASS_WAITS_S", 0.2)
    consumer = AlarmConsumer(services, workers=1)
    consumer._running = True
    consumer._take_over_effects()
    reached = threading.Event()
    seen = _watch_pieces(services, monkeypatch, consumer, reached)
    first = services.alarms.alarms_first
    waits: list[object] = []

    def counted() -> object:
        waits.append(first())
        return waits[-1]

    monkeypatch.setattr(services.alarms, "alarms_first", counted)
    kit = enrol(services, "LW-STREAM", staff_id="S-STREAM")
    topic, raw = kit.sos()
    consumer._urgent.enqueue(
        "LW-STREAM", _Delivery(0, "LW-STREAM", topic, raw, 1, 0, False), urgent_raise=True
    )
    with httpx.Client() as http:
        run_pass(services.alarms, http)
    consumer._running = False

    assert {name for name, _ in seen} == {*PIECES, "send_webhooks"}, "the whole pass ran"
    assert all(in_hand for _, in_hand in seen)
    assert 1 <= len(waits) <= 5, f"{len(waits)} waits of 0.05 s begun in a pass that stops after 0.2 s"
