"""One device cannot slow everyone else: an enrolled device floods its own ``alarm`` topic with
garbage (about 2,000 messages a second, QoS 1, from a process of its own) through the real Mosquitto
while a genuine device raises SOS after SOS against the running service; its acknowledgements come
as fast as without the flood, the flooding device is flagged once and its refusals counted."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from alarms.models import AlarmRecord
from firmware_simulators.lone_worker import LoneWorkerDevice
from tests.conftest import wait_for
from tests.test_alarms_e2e import Stack, stack  # noqa: F401 - the running service and its broker

ROOT = Path(__file__).resolve().parent.parent
FLOOD_RATE = 2000.0
SOS_EACH_PHASE = 25


DOOR_REASONS = ("oversize", "bad_json", "bad_schema", "topic_mismatch", "rate_limited", "queue_full")


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def refusals() -> float:
    """Messages refused by the cheap checks or for the device's share."""
    return sum(sample("evidence_lone_worker_rejections_total", {"reason": r}) for r in DOOR_REASONS)


def sos_latencies(device: LoneWorkerDevice, count: int) -> list[float]:
    """One SOS at a time, each acknowledged before the next (seconds from publish to ack)."""
    out = []
    for _ in range(count):
        event_id = device.sos()
        out.append(device.wait_ack(event_id, "received", timeout=30))
    return out


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def consumer_lines() -> Iterator[Lines]:
    handler = Lines()
    loggers = [logging.getLogger(n) for n in ("ingest.mqtt_consumer", "alarms.intake")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_a_flooding_device_does_not_slow_anothers_sos(stack: Stack, consumer_lines: Lines) -> None:  # noqa: F811
    flooder_kit = stack.enrol("LW-FLOOD", staff_id="S-FLOOD")
    genuine = stack.device(stack.enrol("LW-CALM", staff_id="S-CALM"))
    sos_latencies(genuine, 3)  # warm up the path
    unflooded = sos_latencies(genuine, SOS_EACH_PHASE)

    before = refusals()
    key = flooder_kit.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()
    seconds = 120.0  # at most: the flood stops when the SOS phase is over
    flooder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flood_device",
            str(stack.broker.port),
            "LW-FLOOD",
            flooder_kit.password or "",
            key,
            str(FLOOD_RATE),
            str(seconds),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The flood is under way (the service is refusing its messages) before the SOS start.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and refusals() <= before + 1000:
            time.sleep(0.05)
        flooded = sos_latencies(genuine, SOS_EACH_PHASE)
        out, _ = flooder.communicate("", timeout=60)  # end of input: the flood stops
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait(10)
    report = json.loads(out.strip().splitlines()[-1])
    base, under = statistics.median(unflooded), statistics.median(flooded)
    figures = f"unflooded p50 {base * 1000:.1f} ms, flooded p50 {under * 1000:.1f} ms, flood {report}"
    # It really flooded: most of 2,000 a second were published and taken by the broker.
    assert report["sent"] >= 0.8 * FLOOD_RATE * report["seconds"], figures
    assert report["acked"] >= 0.95 * report["sent"], figures
    # Before each device had its share, no SOS was acknowledged within 30 s of the flood starting.
    # The target is twice the unflooded median; here the service shares its process (and the
    # interpreter) with the test and its devices on a machine others load too, and refusing 2,000
    # messages a second in the consumer's network thread costs it time: bench/alarms.py measures the
    # service in a process of its own. Allowed here: twice the median and a quarter of a second.
    assert under <= 2 * base + 0.25, figures
    assert max(flooded) < 5.0, figures

    # (The flooding device's own genuine SOS, sent again each second, competes with its forgeries
    # shaped like an SOS for the little it may send beyond its rate: it gets through by chance only,
    # so it is reported, not asserted; without forgeries in the flood it goes ahead, see
    # test_device_share.py.)

    # Flagged once (one log line, a gauge), its refusals counted, not logged one by one.
    assert refusals() - before >= 0.9 * report["sent"], figures
    flags = [r for r in consumer_lines.records if r.getMessage().startswith("device flagged")]
    assert [getattr(r, "device", None) for r in flags] == ["LW-FLOOD"], figures
    rejected_lines = [
        r
        for r in consumer_lines.records
        if r.getMessage() == "lone-worker message rejected" and getattr(r, "device", None) == "LW-FLOOD"
    ]
    assert len(rejected_lines) <= 2 + report["seconds"] / 10, len(rejected_lines)  # one every 10 s at most
    consumer = stack.services.mqtt_consumer
    assert "LW-FLOOD" in consumer.flagged_devices()

    def record(device: str) -> dict[str, object]:
        return next(d for d in stack.api("GET", "/lone-workers").json() if d["id"] == device)

    wait_for(lambda: record("LW-FLOOD")["over_share_since"], 10, what="the flag on the device's record")
    assert record("LW-CALM")["over_share_since"] is None
    assert sample("evidence_lone_worker_devices_over_share") >= 1
    assert consumer.connected
    with stack.services.db.session() as session:
        raised = session.scalar(
            select(func.count()).select_from(AlarmRecord).where(AlarmRecord.device_id == "LW-CALM")
        )
        from_flooder = session.scalar(
            select(func.count()).select_from(AlarmRecord).where(AlarmRecord.device_id == "LW-FLOOD")
        )
    assert raised == 3 + 2 * SOS_EACH_PHASE
    assert from_flooder == (1 if report["own_sos_s"] is not None else 0)  # none of its garbage
