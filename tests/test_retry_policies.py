"""The named retry policies as their callers use them: a device's replay state that changed under a
message is read and decided again at once, 50 tries in all; a private broker whose free port was
taken meanwhile is started again on another, three tries in all (a port asked for, once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alarms.device_state import CasConflict
from devices import broker_access
from devices.broker_access import BrokerAccount, BrokerProcess, hash_password, start_private_broker
from tests.test_alarms_kit import enrol


def test_a_replay_state_changed_under_a_message_is_decided_again_until_it_holds(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = services.alarms.intake
    topic, raw = enrol(services, "LW-CAS", staff_id="S-CAS").sos()
    handle_once = intake._handle_once
    tries: list[str] = []

    def changed_twice(*args: Any) -> Any:
        tries.append(args[0])
        if len(tries) <= 2:
            raise CasConflict("LW-CAS")
        return handle_once(*args)

    monkeypatch.setattr(intake, "_handle_once", changed_twice)
    result = services.alarms.handle(topic, raw)
    assert len(tries) == 3 and result.alarm_id


def test_a_replay_state_that_keeps_changing_is_given_up_after_fifty_tries(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = services.alarms.intake
    tries: list[str] = []

    def always_changed(topic: str, *args: Any) -> Any:
        tries.append(topic)
        raise CasConflict("LW-MOVING")

    monkeypatch.setattr(intake, "_handle_once", always_changed)
    with pytest.raises(RuntimeError, match="replay state of lw/v1/LW-MOVING/alarm kept changing under us"):
        services.alarms.handle("lw/v1/LW-MOVING/alarm", b"{}")
    assert len(tries) == 50


def _taken_twice(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    ports: list[int] = []

    def start(self: BrokerProcess, timeout: float = 10.0) -> BrokerProcess:
        ports.append(self.port)
        if len(ports) <= 2:
            raise RuntimeError("broker exited with code 1")
        return self

    monkeypatch.setattr(BrokerProcess, "start", start)
    return ports


def test_a_private_broker_whose_port_was_taken_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = _taken_twice(monkeypatch)
    free = iter([41001, 41002, 41003, 41004])
    monkeypatch.setattr(broker_access, "free_port", lambda host="127.0.0.1": next(free))
    service = BrokerAccount("svc", hash_password("service-password"))
    broker = start_private_broker(tmp_path, devices=[], service=service)
    assert ports == [41001, 41002, 41003] and broker.port == 41003


def test_a_private_broker_on_a_port_asked_for_is_tried_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = _taken_twice(monkeypatch)
    service = BrokerAccount("svc", hash_password("service-password"))
    with pytest.raises(RuntimeError, match="exited"):
        start_private_broker(tmp_path, devices=[], service=service, port=41010)
    assert ports == [41010]


def test_a_private_broker_that_never_starts_is_given_up_after_three_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports: list[int] = []

    def never(self: BrokerProcess, timeout: float = 10.0) -> BrokerProcess:
        ports.append(self.port)
        raise RuntimeError(f"broker exited with code {len(ports)}")

    monkeypatch.setattr(BrokerProcess, "start", never)
    service = BrokerAccount("svc", hash_password("service-password"))
    with pytest.raises(RuntimeError, match="code 3"):
        start_private_broker(tmp_path, devices=[], service=service)
    assert len(ports) == 3
