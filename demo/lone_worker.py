"""The lone-worker part of the demo: a private Mosquitto from the project's configuration, two
simulated lone-worker devices, an SOS and an amber alarm that the worker cancels.

The broker is started before the service (whose consumer finds it through ``EVIDENCE_MQTT_*``), the
devices are enrolled through the API, and the broker's password and rules files are regenerated from
the registry, exactly as an administrator would with ``evidence broker-access``.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devices.broker_access import (
    BrokerAccount,
    BrokerProcess,
    find_mosquitto,
    hash_password,
    start_private_broker,
)
from firmware_simulators.lone_worker import LoneWorkerDevice
from storage.embedded import write_private

SERVICE_USER = "evidence-service"
DEVICES = [("LW-0001", "S-1001"), ("LW-0002", "S-1002")]


@dataclass
class LoneWorkerDemo:
    broker: BrokerProcess
    service_password: str
    devices: list[LoneWorkerDevice] = field(default_factory=list)

    def stop(self) -> None:
        for device in self.devices:
            device.close()
        self.broker.stop()


def start_broker(demo_dir: Path, say: Callable[[str], None]) -> LoneWorkerDemo | None:
    """Start Mosquitto for the demo and point the service at it (through the environment the service
    process inherits); ``None`` when Mosquitto is not installed."""
    try:
        find_mosquitto()
    except FileNotFoundError:
        say("Mosquitto is not installed: the lone-worker part of the demo is skipped.")
        return None
    secret = demo_dir / "mqtt-service-password.txt"
    if not secret.exists():
        write_private(secret, secrets.token_urlsafe(24).encode())
    password = secret.read_text().strip()
    broker = start_private_broker(
        demo_dir / "mosquitto", devices=[], service=BrokerAccount(SERVICE_USER, hash_password(password))
    )
    os.environ.update(
        EVIDENCE_MQTT_HOST=broker.host,
        EVIDENCE_MQTT_PORT=str(broker.port),
        EVIDENCE_MQTT_USERNAME=SERVICE_USER,
        EVIDENCE_MQTT_PASSWORD=password,
    )
    say(f"Started Mosquitto for lone-worker devices on {broker.host}:{broker.port}.")
    return LoneWorkerDemo(broker, password)


def _broker_accounts(database_url: str) -> list[BrokerAccount]:
    from devices.service import broker_accounts
    from storage.db import Database

    db = Database(database_url)
    try:
        with db.session() as session:
            return broker_accounts(session)
    finally:
        db.dispose()


def run(
    demo: LoneWorkerDemo,
    url: str,
    http: httpx.Client,
    admin: dict[str, str],
    database_url: str,
    demo_dir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Enrol the devices, regenerate the broker's files, raise an SOS and a cancelled amber alarm."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    service_public = b""
    enrolled: list[tuple[str, str, Ed25519PrivateKey]] = []
    for device_id, staff_id in DEVICES:
        key_path = demo_dir / f"{device_id}.pem"
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, Ed25519PrivateKey)
        else:
            key = Ed25519PrivateKey.generate()
            write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        r = http.post(
            f"{url}/api/v1/devices/lone-workers",
            json={"id": device_id, "public_key": base64.b64encode(public).decode(), "staff_id": staff_id},
            headers=admin,
        )
        r.raise_for_status()
        enrolled.append((device_id, r.json()["mqtt_password"], key))
        service_public = base64.b64decode(r.json()["service_public_key"])
    demo.broker.update_accounts(
        devices=_broker_accounts(database_url),
        service=BrokerAccount(SERVICE_USER, hash_password(demo.service_password)),
    )
    say(f"Enrolled lone-worker devices {', '.join(d for d, _ in DEVICES)}; broker files regenerated.")

    for device_id, password, key in enrolled:
        device = LoneWorkerDevice(
            device_id,
            password,
            host=demo.broker.host,
            port=demo.broker.port,
            private_key=key,
            service_public_key=service_public,  # the devices check every ack's signature
            reconnect_delay_s=0.3,
        )
        demo.devices.append(device)
        for attempt in range(30):  # the broker re-reads its files a moment after SIGHUP
            try:
                device.connect(timeout=5)
                break
            except ConnectionError:
                device.connect_error = None
                if attempt == 29:
                    raise

    nurse, porter = demo.devices
    sos = nurse.sos(note="aggressive visitor, bay 4")
    latency = nurse.wait_ack(sos, "received", timeout=20)
    sos_alarm = nurse.acks_for(sos)[0].payload["alarm_id"]
    say(
        f"  {nurse.device_id} pressed SOS: alarm stored and device acknowledged in {latency * 1000:.0f} ms;"
        " its evidence item and incident follow"
    )
    amber = porter.amber(600, note="entering flat 12 alone")
    porter.wait_ack(amber, "received", timeout=20)
    amber_alarm = porter.acks_for(amber)[0].payload["alarm_id"]
    cancel = porter.cancel(amber)
    porter.wait_ack(cancel, "resolved", timeout=20)
    say(f"  {porter.device_id} raised an amber alarm (10 min timer) and cancelled it: resolved as cancelled")
    return {"sos_alarm": sos_alarm, "amber_alarm": amber_alarm}
