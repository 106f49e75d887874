"""Rows of the device messages' table written by SQL are not a device's word, on both databases.

A row holding a message's event id means "received already": one planted there with the event id of
a message still to come (an SOS, a check-in) had the genuine message absorbed as a duplicate and
never acted on. It is now set aside as evidence (never deleted), named by an ``event_set_aside``
custody entry and by ``evidence verify``, and the message is acted on. A duplicate's ack names the
alarm its message raised, not the row's unsealed ``alarm_id``. The alarm's record and its incident
took rows by their unsealed columns: a message of another alarm (another wearer's) pointed at an
alarm by SQL was shown in its record, byte for byte, and its payload linked into its incident; they
now take a message by what its device signed."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from alarms.models import LoneWorkerEvent, LoneWorkerEventSetAside, LoneWorkerVisit
from chain_of_custody.models import CustodyEntry
from chain_of_custody.raise_seals import receipt_holds
from devices.seals import device_seal_key
from devices.service import enrol_lone_worker
from tests.test_alarms_kit import DeviceKit, acks, enrol, later
from tests.test_lifecycle_seals import _row
from tests.test_retired_keys import _planted
from tests.test_visit_seals import _cli, _sql


def _event_id(raw: bytes) -> str:
    return str(json.loads(raw)["event_id"])


def _plant_with_id(services: Any, device_id: str, body: dict[str, Any], event_id: str, type_: str) -> bytes:
    """A message signed with a key the device never had, written by SQL with ``event_id``; its bytes."""
    planted = _planted(services, DeviceKit(device_id), type_, body, later(-60))
    moved = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == planted)
    _sql(services, moved.values(event_id=event_id))
    with services.db.session() as session:
        row = session.get(LoneWorkerEvent, event_id)
        assert row is not None
        return bytes(row.raw)


def test_a_row_planted_with_an_sos_event_id_is_set_aside_and_recorded(services: Any) -> None:
    """The SOS is raised from the device's message, acknowledged as received (not a duplicate) with
    its alarm; the planted row is kept apart as it was, named by a custody entry and by verify; the
    event's row is now the service's receipt of the genuine bytes."""
    device = enrol(services, "LW-PS", staff_id="S-PS", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    event_id = _event_id(raw)
    planted = _plant_with_id(services, "LW-PS", {"kind": "sos", "action": "raise"}, event_id, "alarm")
    raised = services.alarms.handle(topic, raw, now=later(1, now))
    assert (raised.outcome, raised.alarm_id is not None) == ("accepted", True), raised
    assert _row(services, raised.alarm_id).source_event_id == event_id
    ack = [a for a in acks(services, "LW-PS") if a["event_id"] == event_id]
    assert [(a["status"], a["alarm_id"]) for a in ack] == [("received", raised.alarm_id)], ack
    with services.db.session() as session:
        kept = session.scalars(select(LoneWorkerEventSetAside)).all()
        assert [(k.event_id, k.device_id, k.raw) for k in kept] == [(event_id, "LW-PS", planted)]
        assert kept[0].sha256 == hashlib.sha256(planted).hexdigest()
        row = session.get(LoneWorkerEvent, event_id)
        assert row is not None and bytes(row.raw) == raw
        assert receipt_holds(device_seal_key(services.key), row)
        entries = session.scalars(select(CustodyEntry).where(CustodyEntry.action == "event_set_aside")).all()
    assert [json.loads(e.details)["event_id"] for e in entries] == [event_id]
    assert json.loads(entries[0].details)["sha256"] == kept[0].sha256
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0 and "device_event_set_aside" in found.output, found.output
    assert f"event {event_id}" in found.output, found.output


def test_a_row_planted_with_a_start_check_ins_event_id_does_not_swallow_the_visit(services: Any) -> None:
    """A start check-in's event id planted: the worker's visit was never opened (no missed check-in
    would ever be raised). It is opened, and the planted row set aside."""
    device = enrol(services, "LW-PV", staff_id="S-PV", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.checkin_start("V-PV-1", later(3600, now), sent_at=now)
    event_id = _event_id(raw)
    body = {"action": "start", "visit_id": "V-PV-1", "expected_end": "2020-01-01T00:00:00Z"}
    _plant_with_id(services, "LW-PV", body, event_id, "checkin")
    started = services.alarms.handle(topic, raw, now=later(1, now))
    assert started.outcome == "accepted", started
    with services.db.session() as session:
        visit = session.scalar(
            select(LoneWorkerVisit).where(
                LoneWorkerVisit.device_id == "LW-PV", LoneWorkerVisit.visit_id == "V-PV-1"
            )
        )
        assert visit is not None and visit.start_event_id == event_id
        assert session.scalar(select(LoneWorkerEventSetAside.event_id)) == event_id


def test_a_duplicates_ack_names_the_alarm_its_message_raised(services: Any) -> None:
    """An SOS's event row pointed by SQL at another alarm of the device's: the SOS delivered again
    was acknowledged with that other alarm's id. It names its own."""
    device = enrol(services, "LW-PD", staff_id="S-PD", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    first = services.alarms.handle(*device.amber(600, sent_at=now), now=now)
    topic, raw = device.sos(sent_at=later(10, now))
    sos = services.alarms.handle(topic, raw, now=later(10, now))
    assert first.alarm_id and sos.alarm_id and first.alarm_id != sos.alarm_id
    pointed = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == _event_id(raw))
    _sql(services, pointed.values(alarm_id=first.alarm_id))
    again = services.alarms.handle(topic, raw, now=later(12, now))
    assert (again.outcome, again.alarm_id) == ("duplicate", sos.alarm_id), again


def test_a_genuine_sos_delivered_again_is_still_a_duplicate(services: Any) -> None:
    """The control: the device's own SOS delivered again is absorbed, nothing set aside."""
    device = enrol(services, "LW-PG", staff_id="S-PG", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    sos = services.alarms.handle(topic, raw, now=now)
    again = services.alarms.handle(topic, raw, now=later(2, now))
    assert (again.outcome, again.alarm_id) == ("duplicate", sos.alarm_id), again
    with services.db.session() as session:
        assert session.scalars(select(LoneWorkerEventSetAside)).all() == []


def test_an_sos_whose_row_was_altered_after_its_alarm_is_not_raised_twice(services: Any) -> None:
    """An SOS raised, its event row's bytes then rewritten by SQL, and the SOS sent again after the
    device's replay window was started afresh (enrolled again with its key): its row is set aside,
    the SOS's row is its bytes again, and the device is told we have it, with its alarm (one event
    raises one alarm)."""
    device = enrol(services, "LW-PA", staff_id="S-PA", site="NORTH")
    now = datetime.now(UTC)
    body = {"kind": "sos", "action": "raise"}
    event_id = str(uuid.uuid4())
    topic, raw = device.message("alarm", body, event_id=event_id, sent_at=now)
    sos = services.alarms.handle(topic, raw, now=now)
    assert sos.outcome == "accepted" and sos.alarm_id, sos
    altered = raw.replace(b'"sos"', b'"amber"')
    _sql(services, update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(raw=altered))
    with services.db.session() as session:
        enrol_lone_worker(
            session, services.ledger, "LW-PA", device.public_b64, "test", staff_id="S-PA", site="NORTH"
        )
    again = services.alarms.handle(
        *device.message("alarm", body, event_id=event_id, sent_at=later(5, now)), now=later(5, now)
    )
    assert (again.outcome, again.alarm_id) == ("duplicate", sos.alarm_id), again
    with services.db.session() as session:
        assert session.scalars(select(LoneWorkerEventSetAside.raw)).all() == [altered]
        row = session.get(LoneWorkerEvent, event_id)
        assert (
            row is not None
            and row.alarm_id == sos.alarm_id
            and receipt_holds(device_seal_key(services.key), row)
        )
