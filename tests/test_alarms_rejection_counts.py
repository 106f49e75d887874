"""Refused device messages are counted by the type they claimed (a closed set), never as "unknown"
once the payload says what it is, and never by a free-text label."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from alarms.service import AlarmService
from tests.test_alarms_kit import DeviceKit, enrol


def counted(type_: str) -> float:
    labels = {"type": type_, "outcome": "rejected"}
    return REGISTRY.get_sample_value("evidence_lone_worker_messages_total", labels) or 0.0


def test_bad_signatures_and_bad_bodies_are_counted_by_their_claimed_type(services: Any) -> None:
    alarms = AlarmService(services)
    genuine = enrol(services, "LW-COUNT", staff_id="S-COUNT")
    forger = DeviceKit("LW-COUNT", key=Ed25519PrivateKey.generate())  # the device's id, not its key
    before = {t: counted(t) for t in ("alarm", "heartbeat", "unknown")}

    assert alarms.handle(*forger.sos()).reason == "bad_signature"
    assert alarms.handle(*forger.message("heartbeat", battery=50)).reason == "bad_signature"
    assert alarms.handle("lw/v1/LW-COUNT/alarm", b"\xff not json").reason == "bad_json"
    assert alarms.handle(*genuine.sos()).outcome == "accepted"

    assert counted("alarm") == before["alarm"] + 2  # the forged SOS and the body that is not JSON
    assert counted("heartbeat") == before["heartbeat"] + 1
    assert counted("unknown") == before["unknown"]
