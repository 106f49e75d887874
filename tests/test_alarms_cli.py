"""The commands an administrator runs: enrol a lone-worker device, regenerate the broker's files from
the registry, and a real Mosquitto started from those files admits exactly what the registry says."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


def _has_mosquitto_user() -> bool:
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return False
    return True


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the ``mosquitto`` account can reach (pytest's own temporary tree is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="evidence-broker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def login(port: int, username: str, password: str, timeout: float = 10.0) -> Probe:
    """A connected device once the broker has re-read its passwords (asynchronously after SIGHUP)."""
    deadline = time.monotonic() + timeout
    while True:
        probe = Probe(port, username, password).connect()
        if not probe.refused or time.monotonic() > deadline:
            return probe
        probe.close()
        time.sleep(0.05)


@pytest.mark.skipif(os.geteuid() != 0 or not _has_mosquitto_user(), reason="needs root and a mosquitto user")
def test_enrol_and_broker_access_commands(sqlite_services: Any, open_dir: Path) -> None:
    """Without ``--run-as-user`` the files belong to ``mosquitto``, which Mosquitto started as root
    switches to: it can read its passwords and rewrite its rules (they were root's, mode 0600, and
    the broker could not start). Enrolment and disabling then reach the running broker."""
    s = sqlite_services
    assert run_consumer not in background_loops(s.settings)  # no broker login configured: no consumer
    with s.db.session() as session:
        add_staff(session, s.ledger, "S-CLI", "Community nurse", "nurse", actor="test")
    env = settings_env(s.settings)
    env.update(EVIDENCE_MQTT_USERNAME=SERVICE_USER, EVIDENCE_MQTT_PASSWORD="service-" + uuid.uuid4().hex)
    kits = [DeviceKit("LW-CLI-1"), DeviceKit("LW-CLI-2"), DeviceKit("LW-CLI-4")]
    passwords = []
    for kit in kits[:2]:
        r = evidence(env, "device", "lone-worker", kit.device_id, kit.public_b64, "--staff-id", "S-CLI")
        assert r.returncode == 0, r.stderr
        passwords.append(r.stdout.strip())
    assert len(passwords[0]) >= 40 and passwords[0] != passwords[1]
    r = evidence(env, "device", "lone-worker", "LW-CLI-3", "not-a-key")
    assert r.returncode == 2 and "public key" in r.stderr
    with s.db.session() as session:
        set_status(session, s.ledger, "LW-CLI-2", "disabled", "test")

    port = free_port()
    out = open_dir / "broker"
    r = evidence(env, "broker-access", "--out", str(out), "--port", str(port))
    assert r.returncode == 0, r.stderr
    rules = (out / "data" / "rules.json").read_text()
    assert '"LW-CLI-1"' in rules and "LW-CLI-2" not in rules  # a disabled device cannot log in
    assert "max_queued_messages 0" in (out / "mosquitto.conf").read_text()
    account = pwd.getpwnam("mosquitto")
    for path in (out / "data", out / "data" / "rules.json"):  # what the broker writes is its own
        assert (path.stat().st_uid, path.stat().st_mode & 0o077) == (account.pw_uid, 0), path
    # what it only reads is not: it cannot change its configuration, its passwords or the admin's
    for path in (out, out / "mosquitto.conf", out / "passwords", out / "broker-admin"):
        assert path.stat().st_uid == 0, path
    hashes = (out / "passwords").stat()
    assert (hashes.st_gid, hashes.st_mode & 0o777) == (account.pw_gid, 0o640)
    assert (out / "broker-admin").stat().st_mode & 0o077 == 0

    files = BrokerFiles.in_directory(out, port)
    with BrokerProcess(files) as broker:
        device = Probe(broker.port, "LW-CLI-1", passwords[0]).connect()
        try:
            assert not device.refused, broker.log_tail()
            assert device.publish("lw/v1/LW-CLI-1/alarm", b"x") in ACCEPTED
            assert device.publish("lw/v1/LW-CLI-2/alarm", b"x") == NOT_AUTHORISED
        finally:
            device.close()
        disabled = Probe(broker.port, "LW-CLI-2", passwords[1]).connect()
        try:
            assert disabled.refused
        finally:
            disabled.close()

        # A device enrolled while the broker runs can log in, and one disabled is put out, once the
        # files are regenerated with --reload-pid (passwords by SIGHUP, rules over the control topic).
        live = Probe(broker.port, "LW-CLI-1", passwords[0]).connect()
        r = evidence(env, "device", "lone-worker", "LW-CLI-4", kits[2].public_b64, "--staff-id", "S-CLI")
        assert r.returncode == 0, r.stderr
        newcomer_password = r.stdout.strip()
        with s.db.session() as session:
            set_status(session, s.ledger, "LW-CLI-1", "disabled", "test")
        assert broker.pid is not None
        reload = ("--reload-pid", str(broker.pid))
        r = evidence(env, "broker-access", "--out", str(out), "--port", str(port), *reload)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "in line (4 changes)" in r.stderr  # LW-CLI-4 in (role, client), LW-CLI-1 out
        live.wait(lambda: live.disconnected, what="the disabled device to be put out")
        live.close()
        newcomer = login(broker.port, "LW-CLI-4", newcomer_password)
        try:
            assert not newcomer.refused, broker.log_tail()
            assert newcomer.publish("lw/v1/LW-CLI-4/alarm", b"x") in ACCEPTED
            assert newcomer.suback_code("lw/v1/LW-CLI-4/ack") == 1
            assert newcomer.suback_code("lw/v1/+/alarm") == NOT_AUTHORISED
        finally:
            newcomer.close()
        saved = out / "data" / "rules.json"  # still the broker's to rewrite as it changes them
        assert saved.stat().st_uid == account.pw_uid and "LW-CLI-4" in saved.read_text()


@pytest.mark.skipif(os.geteuid() != 0 or not _has_mosquitto_user(), reason="needs root and a mosquitto user")
def test_broker_access_under_a_strict_umask_writes_files_the_broker_can_read(
    sqlite_services: Any, open_dir: Path
) -> None:
    """Root's umask is often 077: the directory made and the password file written (meant for the
    broker's group, 0640) came out 0700 and 0600, and Mosquitto, once it had switched to its own
    account, could not read its passwords or its rules and did not start."""
    env = settings_env(sqlite_services.settings)
    password = "service-" + uuid.uuid4().hex
    env.update(EVIDENCE_MQTT_USERNAME=SERVICE_USER, EVIDENCE_MQTT_PASSWORD=password)
    port = free_port()
    out = open_dir / "broker"  # (a parent it cannot enter is refused with the reason, below)
    r = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "broker-access", "--out", str(out), "--port", str(port)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o077),
    )
    assert r.returncode == 0, r.stderr
    account = pwd.getpwnam("mosquitto")
    hashes = (out / "passwords").stat()
    assert (hashes.st_gid, hashes.st_mode & 0o777) == (account.pw_gid, 0o640)
    assert (out / "broker-admin").stat().st_mode & 0o077 == 0  # still root's alone
    with BrokerProcess(BrokerFiles.in_directory(out, port)) as broker:
        service = Probe(broker.port, SERVICE_USER, password).connect()
        try:
            assert not service.refused, broker.log_tail()
        finally:
            service.close()


def test_broker_access_refuses_a_directory_the_broker_cannot_reach(
    sqlite_services: Any, open_dir: Path
) -> None:
    """Files the broker cannot read are refused up front, with the reason, not left to a broker that
    will not start."""
    env = settings_env(sqlite_services.settings)
    env.update(EVIDENCE_MQTT_USERNAME=SERVICE_USER, EVIDENCE_MQTT_PASSWORD="service-" + uuid.uuid4().hex)
    hidden = open_dir / "private"
    hidden.mkdir(mode=0o700)
    if os.geteuid() == 0 and _has_mosquitto_user():
        r = evidence(env, "broker-access", "--out", str(hidden / "broker"))
        assert r.returncode == 2
        assert "mosquitto" in r.stderr and "cannot enter" in r.stderr and str(hidden) in r.stderr
    r = evidence(env, "broker-access", "--out", str(hidden / "b2"), "--run-as-user", "no-such-user-x")
    assert r.returncode == 2 and "no-such-user-x" in r.stderr
