"""A burst of alarms from 20 devices into two service instances on PostgreSQL, sharing the stream
through an MQTT v5 shared subscription; mid-burst one instance is killed (SIGKILL) and later restarted
with the same persistent session, and the broker itself is restarted. Every alarm is stored exactly
once, and every device hears back about every alarm.

The suite sends 10 rounds (200 alarms); ``BURST_ROUNDS=25 .venv/bin/pytest tests/test_alarms_burst.py``
is the 500-alarm soak, run outside the suite's time budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from alarms.models import AlarmRecord, LoneWorkerEvent
from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import VerifyOptions, verify_service
from devices.broker_access import BrokerProcess, wait_for_port
from firmware_simulators.lone_worker import Fleet
from ingest.services import build_services
from tests.conftest import make_settings, wait_for
from tests.test_alarms_kit import SERVICE_USER, enrol, start_broker

DEVICES = 20
PER_DEVICE = int(os.environ.get("BURST_ROUNDS", "10"))
ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """``evidence alarm-worker`` in its own process, as a deployed instance runs."""

    def __init__(self, env: dict[str, str], client_id: str, log_dir: Path) -> None:
        self.client_id = client_id
        self.env = env
        self.log_path = log_dir / f"{client_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ingest.cli", "alarm-worker", "--client-id", self.client_id],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def kill(self) -> None:
        """No goodbye: no DISCONNECT, no PUBACK for what it was handling, no clean shutdown."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class RetryTimer:
    """What device firmware does when an alarm's ack does not come: send it again (same event id, new
    sequence number) every ``every_s`` until it is acknowledged.

    Reconnecting devices resend everything pending anyway; this covers alarms the broker accepted
    and then lost. Mosquitto 2.0.11 drops messages for a shared subscription whose members are all
    still reconnecting after a broker restart (the restored shared subscription receives nothing
    until its client subscribes again), so without it those alarms would wait for the device's
    next reconnect.
    """

    def __init__(self, fleet: Fleet, every_s: float = 5.0) -> None:
        self.fleet = fleet
        self.every_s = every_s
        self.resent = 0
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for device in self.fleet.devices:
                for event_id in device.pending_event_ids:
                    first = self._last.setdefault(event_id, now)
                    if now - first >= self.every_s and device.connected:
                        device.resend(event_id)
                        self._last[event_id] = now
                        self.resent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def connected(broker: BrokerProcess, client_id: str, times: int = 1) -> bool:
    return broker.log_path.read_text(errors="replace").count(f" as {client_id} ") >= times


@pytest.fixture
def burst_env(tmp_path: Path, pg_url: str, seaweed: Any) -> Iterator[dict[str, Any]]:
    service_password = "svc-burst-password"
    settings = make_settings(
        tmp_path,
        pg_url,
        seaweed,
        mqtt_host="127.0.0.1",
        mqtt_username=SERVICE_USER,
        mqtt_password=service_password,
    )
    services = build_services(settings)  # migrates, makes the buckets and the service key
    kits = [enrol(services, f"LW-B{i:02d}", staff_id=f"S-B{i % 5}") for i in range(DEVICES)]
    broker = start_broker(tmp_path / "mosquitto", services, service_password)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EVIDENCE_")},
        "EVIDENCE_DATA_DIR": str(settings.data_dir),
        "EVIDENCE_DATABASE_URL": pg_url,
        "EVIDENCE_S3_ENDPOINT": settings.s3_endpoint or "",
        "EVIDENCE_S3_ACCESS_KEY": settings.s3_access_key,
        "EVIDENCE_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "EVIDENCE_BUCKET": settings.bucket,
        "EVIDENCE_STAGING_BUCKET": settings.staging_bucket,
        "EVIDENCE_RETENTION_DAYS": "1",
        "EVIDENCE_MIN_FREE_BYTES": "0",
        "EVIDENCE_MQTT_HOST": "127.0.0.1",
        "EVIDENCE_MQTT_PORT": str(broker.port),
        "EVIDENCE_MQTT_USERNAME": SERVICE_USER,
        "EVIDENCE_MQTT_PASSWORD": service_password,
        "EVIDENCE_MQTT_SHARE_GROUP": "evidence",
        "EVIDENCE_LOG_LEVEL": "WARNING",
    }
    workers = {name: Worker(env, name, tmp_path) for name in ("svc-a", "svc-b")}
    yield {"services": services, "kits": kits, "broker": broker, "workers": workers, "tmp": tmp_path}
    for worker in workers.values():
        worker.stop()
    broker.stop()
    services.db.dispose()


def test_burst_of_alarms_through_a_killed_instance_and_a_broker_restart(
    burst_env: dict[str, Any],
) -> None:
    services = burst_env["services"]
    broker: BrokerProcess = burst_env["broker"]
    workers: dict[str, Worker] = burst_env["workers"]
    for worker in workers.values():
        worker.start()
    wait_for(lambda: all(connected(broker, w) for w in workers), 60, 0.2, "both instances to connect")

    fleet = Fleet(
        [(k.device_id, k.password or "") for k in burst_env["kits"]],
        port=broker.port,
        service_public_key=services.key.public_raw,
        reconnect_delay_s=0.2,
    )
    for device, kit in zip(fleet.devices, burst_env["kits"], strict=True):
        device._key = kit.key  # the enrolled key
    events: list[str] = []
    retry = RetryTimer(fleet)
    try:
        fleet.connect_all(30)
        for round_ in range(PER_DEVICE):
            for device in fleet.devices:
                events.append(device.sos())
            if round_ == PER_DEVICE // 4:  # instance A dies with alarms in hand
                workers["svc-a"].kill()
            if round_ == PER_DEVICE // 2:  # the broker restarts (its persistence keeps the queued alarms)
                broker.stop()
                broker.start()
                wait_for_port("127.0.0.1", broker.port, 10)
            if round_ == 2 * PER_DEVICE // 3:  # A comes back, same session, takes what was kept for it
                workers["svc-a"].start()
            time.sleep(0.02)

        def settled() -> bool:
            return all(not d.pending_event_ids for d in fleet.devices)

        try:
            wait_for(settled, 150, 0.5, "every device to hear back about every alarm")
        except AssertionError:
            pending = [e for d in fleet.devices for e in d.pending_event_ids]
            with services.db.session() as session:
                stored = set(session.scalars(select(AlarmRecord.source_event_id)))
            raise AssertionError(
                f"{len(pending)} alarms unanswered, {len(set(pending) & stored)} of them stored; "
                f"{len(stored)} stored in all"
            ) from None
    finally:
        retry.stop()
        fleet.close()

    assert len(events) == len(set(events)) == DEVICES * PER_DEVICE

    def made_whole() -> bool:  # acknowledged first; evidence, custody entry and incident follow
        with services.db.session() as session:
            pending = session.scalar(
                select(func.count()).select_from(AlarmRecord).where(AlarmRecord.provisional.is_(True))
            )
        return pending == 0

    wait_for(made_whole, 120, 0.5, "every acknowledged alarm's evidence and incident")
    with services.db.session() as session:
        stored = list(session.scalars(select(AlarmRecord.source_event_id)))
        items = session.scalar(
            select(func.count()).select_from(EvidenceItem).where(EvidenceItem.kind == "alarm")
        )
        received = session.scalar(select(func.count()).select_from(LoneWorkerEvent))
    assert len(stored) == len(set(stored)) == DEVICES * PER_DEVICE  # exactly once
    assert set(stored) == set(events)
    assert items == received == DEVICES * PER_DEVICE
    # svc-a: before the kill and after its restart; svc-b: before and after the broker restart
    assert connected(broker, "svc-a", times=2) and connected(broker, "svc-b", times=2)
    # The workers are still running (their clock escalates what nobody acknowledged within 30 s):
    # verify reads one moment of the database, as `evidence verify` does beside a live service.
    with services.db.reading() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    assert report.ok, report.problems
