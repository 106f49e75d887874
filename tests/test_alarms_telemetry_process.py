"""``evidence serve`` with ``EVIDENCE_MQTT_TELEMETRY_PROCESS=true`` on PostgreSQL and a real broker:
alarms are handled in the service process, heartbeats in the companion it starts; ``/metrics`` counts
both; a companion killed with SIGKILL is restarted and misses nothing its session held; stopping
the service stops the companion."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from accounts.service import create_user
from alarms.models import AlarmRecord
from firmware_simulators.lone_worker import Fleet
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, free_port, wait_for
from tests.test_alarms_burst import burst_env, connected  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent


def companions(service: psutil.Process) -> list[psutil.Process]:
    return [p for p in service.children(recursive=True) if "alarm-worker" in " ".join(p.cmdline())]


def heartbeats_counted(url: str, headers: dict[str, str]) -> float:
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    return sum(
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == "evidence_lone_worker_messages_total"
        and s.labels.get("type") == "heartbeat"
        and s.labels.get("outcome") == "accepted"
    )


def enrolled_fleet(stack: dict[str, Any], size: int) -> Fleet:
    """The first ``size`` enrolled devices, heartbeating at QoS 1 so none is dropped."""
    kits = stack["kits"][:size]
    fleet = Fleet(
        [(k.device_id, k.password or "") for k in kits],
        port=stack["broker"].port,
        service_public_key=stack["services"].key.public_raw,
        heartbeat_qos=1,
    )
    for device, kit in zip(fleet.devices, kits, strict=True):
        device._key = kit.key
    return fleet


def start_serve(stack: dict[str, Any], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **stack["workers"]["svc-a"].env,
        "EVIDENCE_MQTT_CLIENT_ID": "svc-t",
        "EVIDENCE_MQTT_TELEMETRY_PROCESS": "true",
        "EVIDENCE_HTTP_PORT": str(port),
        "EVIDENCE_LOG_LEVEL": "INFO",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "serve", "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_telemetry_in_a_companion_process(burst_env: dict[str, Any]) -> None:  # noqa: F811
    services, broker, tmp = burst_env["services"], burst_env["broker"], burst_env["tmp"]
    with services.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=services.key)
    port = free_port()
    log_path = tmp / "serve.log"
    process = start_serve(burst_env, port, log_path)
    fleet: Fleet | None = None
    try:
        service = psutil.Process(process.pid)
        wait_for(
            lambda: connected(broker, "svc-t") and connected(broker, "svc-t-telemetry"),
            60,
            0.2,
            "the service and its telemetry process to connect",
        )
        first = companions(service)
        assert len(first) == 1
        assert first[0].nice() >= os.nice(0) + 5  # the scheduler favours the alarm process

        url = f"http://127.0.0.1:{port}"
        token = httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": "admin", "password": ADMIN_PASSWORD},
            timeout=SIGN_IN_TIMEOUT,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        fleet = enrolled_fleet(burst_env, 4)
        fleet.connect_all(30)

        for device in fleet.devices:
            device.heartbeat()
        wait_for(lambda: heartbeats_counted(url, headers) >= 4, 30, 0.2, "heartbeats counted at /metrics")
        event = fleet.devices[0].sos()
        fleet.devices[0].wait_ack(event, timeout=30)
        # The service never redacts (workers do): cv2 and numpy, about 35 MB, are not loaded into it;
        # nor Pillow (behind ReportLab) until a continuity PDF is asked for.
        loaded = {m.path for m in service.memory_maps()}
        unused = ("/cv2/", "/numpy/", "/numpy.libs/", "/PIL/", "/pillow.libs/")
        assert not [path for path in loaded if any(part in path for part in unused)]

        # The companion dies without a goodbye; heartbeats sent meanwhile wait in its session.
        first[0].send_signal(signal.SIGKILL)
        first[0].wait(10)
        for device in fleet.devices:
            device.heartbeat()
        event = fleet.devices[1].sos()  # alarms do not depend on it
        fleet.devices[1].wait_ack(event, timeout=30)
        wait_for(
            lambda: [p.pid for p in companions(service)] not in ([], [first[0].pid]),
            30,
            0.2,
            "a new telemetry process",
        )
        wait_for(lambda: heartbeats_counted(url, headers) >= 8, 60, 0.2, "the held heartbeats handled")
        with services.db.session() as session:
            assert session.scalar(select(func.count()).select_from(AlarmRecord)) == 2
        # The service process itself subscribed to alarms and check-ins only.
        text = log_path.read_text(errors="replace")
        assert "types=alarm,checkin" in text or '"types": "alarm,checkin"' in text, text[-3000:]
    finally:
        if fleet is not None:
            fleet.close()
        left = companions(psutil.Process(process.pid)) if process.poll() is None else []
        process.send_signal(signal.SIGTERM)  # the service alone: it stops its companion
        try:
            process.wait(30)
            still = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert left and not still, "the telemetry process outlived the service"
    tail = log_path.read_text(errors="replace").split("client_id=svc-t-telemetry session_present")[-1]
    assert "alarm consumer stopped" in tail  # cleanly: what it had in hand finished and acknowledged


def test_companion_leaves_when_the_service_is_killed(burst_env: dict[str, Any]) -> None:  # noqa: F811
    """Left running, it would fight the restarted service's companion for the same client id."""
    broker = burst_env["broker"]
    process = start_serve(burst_env, free_port(), burst_env["tmp"] / "serve.log")
    try:
        wait_for(lambda: connected(broker, "svc-t-telemetry"), 60, 0.2, "the telemetry process to connect")
        (companion,) = companions(psutil.Process(process.pid))
        process.send_signal(signal.SIGKILL)  # no chance to stop it
        process.wait(10)
        companion.wait(15)  # raises if it is still running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_message_types_of_an_instance(tmp_path: Path) -> None:
    from devices.lone_worker_wire import DEVICE_TOPICS
    from devices.lone_worker_wire import DEVICE_TOPICS as DEVICE_MESSAGE_TYPES
    from ingest.mqtt_consumer import consumed_types
    from ingest.settings import ServiceSettings as Settings
    from ingest.telemetry_process import telemetry_process_wanted

    assert set(DEVICE_MESSAGE_TYPES) == set(DEVICE_TOPICS)

    def settings(**values: Any) -> Settings:
        return Settings(data_dir=tmp_path, **values)

    def types(**values: Any) -> frozenset[str]:
        s = settings(**values)
        return consumed_types(s, companion=telemetry_process_wanted(s))

    assert types() == {"alarm", "checkin", "heartbeat", "location", "status"}
    assert types(mqtt_message_types=" heartbeat, status ") == {"heartbeat", "status"}
    pg = {"database_url": "postgresql://127.0.0.1/x", "mqtt_username": "svc"}
    assert types(mqtt_telemetry_process=True, **pg) == {"alarm", "checkin"}
    # No companion on SQLite (two processes cannot share it well), without a consumer, or without
    # both kinds of type to split: everything configured is consumed here.
    assert len(types(mqtt_telemetry_process=True, mqtt_username="svc")) == 5
    assert len(types(mqtt_telemetry_process=True, database_url="postgresql://127.0.0.1/x")) == 5
    assert types(mqtt_message_types="heartbeat", mqtt_telemetry_process=True, **pg) == {"heartbeat"}
    assert types(mqtt_message_types="alarm", mqtt_telemetry_process=True, **pg) == {"alarm"}
    # A standalone alarm-worker sharing the service's settings starts no companion: it takes all.
    assert consumed_types(settings(mqtt_telemetry_process=True, **pg)) == set(DEVICE_TOPICS)
    # A typo stops the service at start, instead of leaving alarms unconsumed.
    with pytest.raises(ValueError, match="unknown type.*heartbeats"):
        settings(mqtt_message_types="alarm,heartbeats")


def test_an_earlier_companion_session_is_cleared_when_none_is_wanted(
    burst_env: dict[str, Any],  # noqa: F811
) -> None:
    """Its shared subscriptions would otherwise keep taking a share of the heartbeats for 14 days."""
    from ingest.app import run_consumer
    from ingest.mqtt_consumer import AlarmConsumer

    services, broker = burst_env["services"], burst_env["broker"]
    settings = services.settings.model_copy(update={"mqtt_client_id": "svc-c", "mqtt_port": broker.port})
    services.settings = settings
    # A companion's persistent session, left behind with its subscriptions.
    old = AlarmConsumer(services, client_id="svc-c-telemetry").start()
    assert old.wait_ready(20)
    old.client.disconnect()
    old.client.loop_stop()
    old._running = False

    async def run_briefly() -> None:
        task = asyncio.create_task(run_consumer(services))
        await asyncio.to_thread(
            wait_for, lambda: services.mqtt_consumer is not None, 20, 0.1, "the consumer to start"
        )
        await asyncio.to_thread(services.mqtt_consumer.wait_ready, 20)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run_briefly())
    # The broker logs the clean start that ended the old session.
    assert connected(broker, "svc-c-telemetry", times=2)
    fleet = enrolled_fleet(burst_env, 6)
    try:
        fleet.connect_all(30)
        consumer = AlarmConsumer(services, client_id="svc-c").start()
        try:
            assert consumer.wait_ready(20)
            before = consumer.handled
            for device in fleet.devices:
                device.heartbeat()
            wait_for(lambda: consumer.handled - before >= 6, 20, 0.1, "every heartbeat handled here")
        finally:
            consumer.stop()
    finally:
        fleet.close()
