"""Readers of the device messages' table take a message by what its device signed, on both
databases. An event row's ``alarm_id``, ``kind``, ``action``, ``ref_event_id`` and ``visit_id`` are
no seal's (the receipt seal covers the device, the event id, the bytes' hash and the key): the
alarm's record listed every row whose ``alarm_id`` named the alarm, another wearer's message among
them byte for byte, and showed a message's kind and action from its columns; the alarm's incident
linked the payload of every such row of its device's, an earlier wearer's among them. A message is
now the alarm's when its device is the alarm's and its signed bytes raise or cancel the alarm (or
check in on its visit); its kind and action are what those bytes say."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from alarms.models import LoneWorkerEvent
from devices.service import add_staff, enrol_lone_worker
from incidents.models import IncidentLink
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_lifecycle_seals import _row
from tests.test_raise_seals import _record, _sos_with_note
from tests.test_visit_seals import _sql


def _event_id(raw: bytes) -> str:
    return str(json.loads(raw)["event_id"])


def test_another_wearers_message_pointed_at_an_alarm_is_not_in_its_record(services: Any) -> None:
    """Another device's (another wearer's) SOS, its event row's ``alarm_id`` pointed by SQL at this
    alarm: it was listed among this alarm's messages, byte for byte, as holding. It is not listed."""
    mine = enrol(services, "LW-PR", staff_id="S-PR", site="NORTH")
    theirs = enrol(services, "LW-PRO", staff_id="S-PRO", site="SOUTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, mine, now)
    their_topic, their_raw = theirs.sos(sent_at=later(5, now))
    assert services.alarms.handle(their_topic, their_raw, now=later(5, now)).outcome == "accepted"
    pointed = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == _event_id(their_raw))
    _sql(services, pointed.values(alarm_id=alarm_id))
    shown = [m["event_id"] for m in _record(services, alarm_id, later(60, now))["messages"]]
    assert shown == [_row(services, alarm_id).source_event_id], shown


def test_an_earlier_alarms_message_pointed_at_an_alarm_is_not_in_its_record(services: Any) -> None:
    """The device's own earlier SOS, its row pointed by SQL at its later alarm: shown in its record."""
    device = enrol(services, "LW-PE", staff_id="S-PE", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    earlier = _sos_with_note(services, device, now)
    alarm_id = _sos_with_note(services, device, later(30, now))
    pointed = update(LoneWorkerEvent).where(
        LoneWorkerEvent.event_id == _row(services, earlier).source_event_id
    )
    _sql(services, pointed.values(alarm_id=alarm_id))
    shown = [m["event_id"] for m in _record(services, alarm_id, later(60, now))["messages"]]
    assert shown == [_row(services, alarm_id).source_event_id], shown


def test_a_messages_kind_and_action_are_shown_as_the_device_signed_them(services: Any) -> None:
    """An SOS's event row rewritten by SQL to read as an amber alarm's cancel: the record said the
    worker had cancelled. It shows what the device's signed bytes say."""
    device = enrol(services, "LW-PK", staff_id="S-PK", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now)
    source = _row(services, alarm_id).source_event_id
    _sql(
        services,
        update(LoneWorkerEvent)
        .where(LoneWorkerEvent.event_id == source)
        .values(kind="amber", action="cancel"),
    )
    shown = _record(services, alarm_id, later(60, now))["messages"]
    assert [(m["event_id"], m["holds"], m["kind"], m["action"]) for m in shown] == [
        (source, True, "sos", "raise")
    ], shown


def test_an_earlier_wearers_payload_pointed_at_an_alarm_is_not_linked_into_its_incident(
    services: Any,
) -> None:
    """The device's SOS while it was one worker's, its event row pointed by SQL at an SOS raised
    after the device was handed to another worker: the first worker's payload was linked into the
    second's incident, for its investigators to see. It is not."""
    first = enrol(services, "LW-PI", staff_id="S-PI1", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=10)
    earlier = _sos_with_note(services, first, now)
    their_item = _row(services, earlier).evidence_item_id
    assert their_item is not None
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-PI2", "Staff S-PI2", "nurse", "NORTH", actor="test")
        second = DeviceKit("LW-PI")
        enrol_lone_worker(
            session, services.ledger, "LW-PI", second.public_b64, "test", staff_id="S-PI2", site="NORTH"
        )
    alarm_id = _sos_with_note(services, second, later(60, now), whole=False)
    pointed = update(LoneWorkerEvent).where(
        LoneWorkerEvent.event_id == _row(services, earlier).source_event_id
    )
    _sql(services, pointed.values(alarm_id=alarm_id))
    services.alarms.make_whole(alarm_id, later(62, now))
    row = _row(services, alarm_id)
    assert row.incident_id is not None and row.incident_id != _row(services, earlier).incident_id
    with services.db.session() as session:
        linked = set(
            session.scalars(select(IncidentLink.target_id).where(IncidentLink.incident_id == row.incident_id))
        )
    assert row.evidence_item_id in linked and their_item not in linked, linked
