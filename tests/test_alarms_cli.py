"""The commands an administrator runs: enrol a lone-worker device, regenerate the broker's files from
the registry, and a real Mosquitto started from those files admits exactly what the registry says."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from devices.broker_access import BrokerFiles, BrokerProcess, free_port
from devices.service import add_staff, set_status
from ingest.app import background_loops, run_consumer
from tests.conftest import settings_env
from tests.test_alarms_kit import SERVICE_USER, DeviceKit
from tests.test_lone_worker_broker import ACCEPTED, NOT_AUTHORISED, Probe

ROOT = Path(__file__).resolve().parents[1]


def evidence(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_enrol_and_broker_access_commands(sqlite_services: Any, tmp_path: Path) -> None:
    s = sqlite_services
    assert run_consumer not in background_loops(s.settings)  # no broker login configured: no consumer
    with s.db.session() as session:
        add_staff(session, "S-CLI", "Community nurse", "nurse")
    env = settings_env(s.settings)
    env.update(EVIDENCE_MQTT_USERNAME=SERVICE_USER, EVIDENCE_MQTT_PASSWORD="service-" + uuid.uuid4().hex)
    kits = [DeviceKit("LW-CLI-1"), DeviceKit("LW-CLI-2")]
    passwords = []
    for kit in kits:
        r = evidence(env, "device", "lone-worker", kit.device_id, kit.public_b64, "--staff-id", "S-CLI")
        assert r.returncode == 0, r.stderr
        passwords.append(r.stdout.strip())
    assert len(passwords[0]) >= 40 and passwords[0] != passwords[1]
    r = evidence(env, "device", "lone-worker", "LW-CLI-3", "not-a-key")
    assert r.returncode == 2 and "public key" in r.stderr
    with s.db.session() as session:
        set_status(session, s.ledger, "LW-CLI-2", "disabled", "test")

    port = free_port()
    out = tmp_path / "broker"
    r = evidence(env, "broker-access", "--out", str(out), "--port", str(port), "--run-as-user", "root")
    assert r.returncode == 0, r.stderr
    acl = (out / "acl").read_text()
    assert "user LW-CLI-1" in acl and "LW-CLI-2" not in acl  # a disabled device cannot log in
    assert "max_queued_messages 0" in (out / "mosquitto.conf").read_text()

    files = BrokerFiles(out / "mosquitto.conf", out / "passwords", out / "acl", out / "data", port)
    with BrokerProcess(files) as broker:
        device = Probe(broker.port, "LW-CLI-1", passwords[0]).connect()
        try:
            assert not device.connack.is_failure
            assert device.publish("lw/v1/LW-CLI-1/alarm", b"x") in ACCEPTED
            assert device.publish("lw/v1/LW-CLI-2/alarm", b"x") == NOT_AUTHORISED
        finally:
            device.close()
        disabled = Probe(broker.port, "LW-CLI-2", passwords[1]).connect()
        try:
            assert disabled.connack.is_failure
        finally:
            disabled.close()
