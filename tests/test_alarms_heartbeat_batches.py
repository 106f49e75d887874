"""Heartbeats handled in batches: one read of the devices and one pipelined write of their state rows
per batch, and a telemetry worker that waits a moment for company; nothing a heartbeat must do is lost."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select

from alarms.models import AlarmRecord
from alarms.service import AlarmService
from devices.lone_worker_wire import ReplayState
from devices.models import LoneWorkerState
from ingest.mqtt_consumer import AlarmConsumer, _Delivery
from tests.conftest import wait_for
from tests.test_alarms_kit import DeviceKit, enrol, later


def _statements(services: Any) -> tuple[list[tuple[str, bool]], Any]:
    seen: list[tuple[str, bool]] = []

    def note(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, executemany))

    event.listen(services.db.engine, "before_cursor_execute", note)
    return seen, note


def test_a_batch_of_heartbeats_keeps_liveness_in_one_read_and_one_write(services: Any) -> None:
    alarms = AlarmService(services)
    devices = [enrol(services, f"LW-H{i}", staff_id=f"S-H{i}") for i in range(3)]
    stranger = enrol(services, "LW-H3", staff_id="S-H3")
    now = datetime.now(UTC)
    for device in devices:  # on a visit, so silence raises an offline alarm
        alarms.handle(*device.checkin_start(f"V-{device.device_id}", now + timedelta(hours=2)), now=now)
    alarms.handle(*stranger.heartbeat(), now=now)
    alarms.raise_offline(later(181, now))
    with services.db.session() as session:
        offline = session.scalars(select(AlarmRecord).where(AlarmRecord.kind == "device_offline")).all()
        assert {a.device_id for a in offline} == {d.device_id for d in devices}

    heard = later(200, now)
    beats = [(*d.heartbeat(battery=70 + i), False) for i, d in enumerate(devices)]
    forged = DeviceKit("LW-H3", seq=stranger.seq)  # another key in the device's name
    beats.insert(1, (*forged.heartbeat(), False))
    seen, note = _statements(services)
    try:
        results = alarms.handle_many(beats, now=heard)
    finally:
        event.remove(services.db.engine, "before_cursor_execute", note)
    assert [r.outcome for r in results] == ["accepted", "rejected", "accepted", "accepted"]
    assert results[1].reason == "bad_signature"
    state_updates = [
        (s, many) for s, many in seen if s.lstrip().upper().startswith("UPDATE LONE_WORKER_STATES")
    ]
    replay_writes = [(s, many) for s, many in state_updates if "replay_state" in s]
    assert replay_writes == [(replay_writes[0][0], True)], "one executemany for the batch's state rows"
    snapshot_reads = [s for s, _ in seen if "FROM devices" in s and "replay_state" in s]
    assert len(snapshot_reads) == 1, "one read of the batch's devices"

    with services.db.session() as session:
        for i, device in enumerate(devices):
            state = session.get(LoneWorkerState, device.device_id)
            assert state is not None and state.offline_alarm_id is None
            assert state.last_seen_at == heard and state.offline_due_at > heard
            assert state.battery == 70 + i
            assert ReplayState.from_json(state.replay_state).highest == device.seq
        stranger_state = session.get(LoneWorkerState, "LW-H3")
        assert stranger_state is not None and stranger_state.last_seen_at < heard  # the forgery moved nothing
        for alarm in session.scalars(select(AlarmRecord).where(AlarmRecord.kind == "device_offline")):
            assert (alarm.status, alarm.outcome) == ("resolved", "cleared")
    # The window moved: the same heartbeats again are replays.
    again = alarms.handle_many([b for i, b in enumerate(beats) if i != 1], now=heard)
    assert [r.reason for r in again] == ["replay"] * 3


def _deliveries(kits: list[DeviceKit]) -> list[_Delivery]:
    out = []
    for mid, kit in enumerate(kits, 1):
        topic, raw = kit.heartbeat()
        out.append(_Delivery(0, kit.device_id, topic, raw, mid, 0, False))
    return out


def _worker(consumer: AlarmConsumer) -> threading.Thread:
    consumer._running = True
    thread = threading.Thread(target=consumer._work, args=(consumer._telemetry, False), daemon=True)
    thread.start()
    return thread


def test_telemetry_waits_for_company_and_nothing_is_lost_at_shutdown(services: Any) -> None:
    kits = [enrol(services, f"LW-L{i}", staff_id=f"S-L{i}") for i in range(5)]
    for kit in kits:  # their state rows exist
        services.alarms.handle(*kit.heartbeat())
    first, *rest = _deliveries(kits)
    commits: list[int] = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(services.db.engine, "commit", listener)
    consumer = AlarmConsumer(services, workers=1, linger_s=30.0)
    try:
        thread = _worker(consumer)
        consumer._telemetry.enqueue(first.device, first)
        wait_for(lambda: not consumer._telemetry._turns, 5, 0.01, "the worker to take the first")
        for delivery in rest[:2]:  # while it waits for company
            consumer._telemetry.enqueue(delivery.device, delivery)
        time.sleep(0.05)  # (nothing to wait on: the worker is lingering by design)
        assert consumer.handled == 0
        stopped = time.monotonic()
        consumer._running = False  # what stop() does first; the batch taken is still handled
        consumer._telemetry.close()
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - stopped < 5  # the wait was cut short
    finally:
        event.remove(services.db.engine, "commit", listener)
        consumer._running = False
        consumer._telemetry.close()
    assert consumer.handled == 3 and len(commits) == 1
    with services.db.session() as session:
        for kit, delivery in zip(kits[:3], [first, *rest[:2]], strict=True):
            state = session.get(LoneWorkerState, kit.device_id)
            assert state is not None
            assert ReplayState.from_json(state.replay_state).highest == json.loads(delivery.payload)["seq"]
