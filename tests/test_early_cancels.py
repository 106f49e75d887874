"""A device can only speak for itself, on both databases, by its effects (the clock driven by an
explicit "now", changes made by SQL behind the service's back): a cancel that comes before its
raise waits in the event table and is applied when the raise arrives. The waiting row's columns
were taken as the device's word: a cancel row written there by SQL (signed with a key the device
never had, or with one it no longer has), or a genuine cancel of an earlier alarm pointed at a
raise still to come, resolved an amber alarm the moment it arrived, or told the control room a
worker had cancelled an SOS. Such a row is now named in a warning and ignored (the raise stands)
and ``evidence verify`` names it; the device's own early cancel is still applied. Beside it, the
evidence item of a payload stored late names the key the service sealed its receipt under, not
whatever key the event row's column says, and a waiting cancel's payload item is linked into the
alarm's incident only when it is its device's record of the cancel's own bytes."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from alarms.models import AlarmRecord, LoneWorkerEvent
from alarms.service import AlarmService
from chain_of_custody.models import EvidenceItem
from incidents.models import IncidentLink
from storage.objects import ObjectStore
from tests.test_alarms_kit import DeviceKit, custody, enrol, later, raw_public
from tests.test_lifecycle_seals import _row
from tests.test_raise_seals import _sos_with_note
from tests.test_retired_keys import _planted, _reenrol
from tests.test_sweep_custody import _named
from tests.test_visit_seals import _cli, _sql


def _event_id(raw: bytes) -> str:
    return str(json.loads(raw)["event_id"])


def _waiting(services: Any, event_id: str) -> LoneWorkerEvent:
    with services.db.session() as session:
        row = session.get(LoneWorkerEvent, event_id)
        assert row is not None
        session.expunge(row)
        return row


def _verify_names(services: Any, event_id: str) -> None:
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0, found.output
    assert f"event {event_id}" in found.output and "device_cancel_altered" in found.output, found.output


def test_a_cancel_that_overtakes_its_raise_is_applied_when_the_raise_arrives(services: Any) -> None:
    """The control: the device's own cancel, handled before its amber raise, resolves it on arrival,
    and ``evidence verify`` names no cancel."""
    device = enrol(services, "LW-EC0", staff_id="S-EC0", site="NORTH")
    now = datetime.now(UTC)
    raise_topic, raise_raw = device.amber(120, sent_at=now)
    cancel = services.alarms.handle(*device.cancel(_event_id(raise_raw), sent_at=now), now=later(1, now))
    assert (cancel.outcome, cancel.alarm_id) == ("accepted", None), cancel
    raised = services.alarms.handle(raise_topic, raise_raw, now=later(2, now))
    row = _row(services, raised.alarm_id)
    assert (row.status, row.outcome) == ("resolved", "cancelled")
    assert _waiting(services, str(cancel.event_id)).alarm_id == row.id
    assert "device_cancel_altered" not in _cli(services, "verify", "--json").output


def _plant_cancel(services: Any, how: str, device: DeviceKit, raise_id: str, now: datetime) -> str:
    """A cancel row, waiting for the raise ``raise_id``, that is not the device's cancel of it; its id."""
    body = {"kind": "amber", "action": "cancel", "ref_event_id": raise_id}
    if how == "stranger":  # signed with a key the device never had
        return _planted(services, DeviceKit(device.device_id), "alarm", body, later(-60, now))
    if how == "retired":  # signed with the key the device had before it was enrolled again
        return _planted(services, device, "alarm", body, later(-60, now))
    # a genuine cancel of an earlier alarm of the device's, pointed at the raise still to come
    earlier = device.amber(120, sent_at=later(-120, now))
    assert services.alarms.handle(*earlier, now=later(-120, now)).outcome == "accepted"
    topic, raw = device.cancel(_event_id(earlier[1]), sent_at=later(-60, now))
    cancel = services.alarms.handle(topic, raw, now=later(-60, now))
    assert cancel.outcome == "accepted" and cancel.alarm_id, cancel
    event_id = str(cancel.event_id)
    moved = {"ref_event_id": raise_id, "alarm_id": None}
    _sql(services, update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(**moved))
    return event_id


@pytest.mark.parametrize("how", ["stranger", "retired", "moved"])
def test_a_cancel_written_into_the_database_before_its_raise_silences_no_alarm(
    services: Any, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A cancel row waiting for an amber raise still to come (its event id guessed or watched for),
    written by SQL: signed with a key the device never had, with the key it had before it was
    enrolled again, or a genuine cancel of an earlier alarm pointed at the raise. The raise was
    resolved as cancelled the moment it arrived: it stands, a warning names the row, and ``evidence
    verify`` names it."""
    device_id = f"LW-EC{how}"
    device = enrol(services, device_id, staff_id=f"S-EC{how}", site="NORTH")
    now = datetime.now(UTC)
    sender = _reenrol(services, device_id, f"S-EC{how}") if how == "retired" else device
    raise_topic, raise_raw = sender.amber(120, sent_at=now)
    raise_id = _event_id(raise_raw)
    planted = _plant_cancel(services, how, device, raise_id, now)
    with caplog.at_level(logging.WARNING):
        raised = services.alarms.handle(raise_topic, raise_raw, now=later(1, now))
    assert raised.outcome == "accepted" and raised.alarm_id, raised
    row = _row(services, raised.alarm_id)
    assert (row.status, row.outcome, row.cancel_requested_at) == ("raised", None, None)
    assert _waiting(services, planted).alarm_id is None
    assert _named(caplog, event_id=planted, **{"raise": raise_id}), caplog.text
    _verify_names(services, planted)
    services.alarms.fire_deadlines(later(125, now))  # still counting down: it turns red on time
    assert _row(services, raised.alarm_id).severity == "red"


def test_a_cancel_written_into_the_database_before_an_sos_tells_the_control_room_nothing(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancel row waiting for an SOS still to come, signed with a key the device never had: the
    control room was told the worker had cancelled the SOS. It is not: no cancel is requested."""
    device = enrol(services, "LW-ECS", staff_id="S-ECS", site="NORTH")
    now = datetime.now(UTC)
    raise_topic, raise_raw = device.sos(sent_at=now)
    body = {"kind": "sos", "action": "cancel", "ref_event_id": _event_id(raise_raw)}
    planted = _planted(services, DeviceKit("LW-ECS"), "alarm", body, later(-60, now))
    with caplog.at_level(logging.WARNING):
        raised = services.alarms.handle(raise_topic, raise_raw, now=later(1, now))
    row = _row(services, raised.alarm_id)
    assert (row.status, row.cancel_requested_at) == ("raised", None)
    assert _named(caplog, event_id=planted, **{"raise": body["ref_event_id"]}), caplog.text
    _verify_names(services, planted)


def test_the_devices_own_early_cancel_is_applied_beside_one_written_into_the_database(
    services: Any,
) -> None:
    """A planted cancel waiting beside the device's own early cancel of the same raise neither
    hides it nor is applied: the device's own resolves the amber alarm, and ``evidence verify``
    names the planted one only."""
    device = enrol(services, "LW-ECB", staff_id="S-ECB", site="NORTH")
    now = datetime.now(UTC)
    raise_topic, raise_raw = device.amber(120, sent_at=now)
    raise_id = _event_id(raise_raw)
    body = {"kind": "amber", "action": "cancel", "ref_event_id": raise_id}
    planted = _planted(services, DeviceKit("LW-ECB"), "alarm", body, later(-60, now))
    own = services.alarms.handle(*device.cancel(raise_id, sent_at=now), now=later(1, now))
    raised = services.alarms.handle(raise_topic, raise_raw, now=later(2, now))
    row = _row(services, raised.alarm_id)
    assert (row.status, row.outcome) == ("resolved", "cancelled")
    assert (_waiting(services, str(own.event_id)).alarm_id, _waiting(services, planted).alarm_id) == (
        row.id,
        None,
    )
    _verify_names(services, planted)


def test_a_waiting_cancels_payload_pointed_at_another_item_is_not_linked(services: Any) -> None:
    """The device's own cancel of an SOS, handled before the SOS, its row's payload item then
    pointed by SQL at another wearer's alarm payload (another site's): the SOS's incident took that
    item in. The cancel is still applied (a cancel requested), the other item is not linked."""
    device = enrol(services, "LW-ECI", staff_id="S-ECI", site="NORTH")
    other = enrol(services, "LW-ECO", staff_id="S-ECO", site="SOUTH")
    now = datetime.now(UTC)
    theirs = services.alarms.handle(*other.sos(sent_at=later(-300, now)), now=later(-300, now))
    services.alarms.make_whole(theirs.alarm_id)
    their_item = _row(services, theirs.alarm_id).evidence_item_id
    assert their_item is not None
    raise_topic, raise_raw = device.sos(sent_at=now)
    cancel = services.alarms.handle(
        *device.cancel(_event_id(raise_raw), kind="sos", sent_at=now), now=later(1, now)
    )
    assert cancel.outcome == "accepted" and cancel.alarm_id is None, cancel
    pointed = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == cancel.event_id)
    _sql(services, pointed.values(evidence_item_id=their_item))
    raised = services.alarms.handle(raise_topic, raise_raw, now=later(2, now))
    row = _row(services, raised.alarm_id)
    assert row.cancel_requested_at is not None and row.incident_id is not None
    with services.db.session() as session:
        linked = set(
            session.scalars(select(IncidentLink.target_id).where(IncidentLink.incident_id == row.incident_id))
        )
    assert their_item not in linked, linked


# -- the key a payload stored late names ------------------------------------------------------------


def _named_key(services: Any, item_id: str | None) -> str | None:
    """The device key the payload item's ``captured`` entry says its signature was verified with."""
    assert item_id is not None
    captured = custody(services, item_id)[0]
    assert captured.action == "captured"
    return json.loads(captured.details)["device_public_key"]


def _set_key(services: Any, event_id: str, key_b64: str | None) -> None:
    _sql(
        services,
        update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(device_public_key=key_b64),
    )


@contextmanager
def _storage_down(services: Any) -> Iterator[AlarmService]:
    """Object storage unreachable while the block runs; an alarm side of its own meanwhile."""
    real = services.store
    services.store = ObjectStore(
        "127.0.0.1:9", "x", "y", bucket=real.bucket, staging_bucket="s", timeout_seconds=1
    )
    try:
        yield AlarmService(services)
    finally:
        services.store = real


_STRANGER = base64.b64encode(raw_public(DeviceKit("nobody").key)).decode()


@pytest.mark.parametrize("how", ["stranger", "cleared"])
def test_a_payload_made_whole_names_the_key_its_receipt_was_sealed_under(services: Any, how: str) -> None:
    """A provisional SOS, its event row's ``device_public_key`` then set by SQL to a key the device
    never had (or cleared, the device since enrolled again with a new key): the payload's evidence
    item, made whole, named in a signed custody entry that key (or the new one, which never
    verified it) as the key the device's signature was verified with. It names the key the service
    sealed the message's receipt under."""
    device_id = f"LW-EK{how}"
    device = enrol(services, device_id, staff_id=f"S-EK{how}", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    event_id = str(_row(services, alarm_id).source_event_id)
    if how == "cleared":
        _reenrol(services, device_id, f"S-EK{how}")
    _set_key(services, event_id, _STRANGER if how == "stranger" else None)
    services.alarms.make_whole(alarm_id, later(2, now))
    assert _named_key(services, _row(services, alarm_id).evidence_item_id) == device.public_b64


def test_a_payload_stored_after_storage_was_down_names_the_key_its_receipt_was_sealed_under(
    services: Any,
) -> None:
    """An SOS while object storage is down, its event row's ``device_public_key`` set by SQL to a
    key the device never had before the payload is stored: the evidence item named that key. It
    names the device's."""
    with _storage_down(services) as alarms:
        device = enrol(services, "LW-EKD", staff_id="S-EKD", site="NORTH")
        topic, raw = device.sos()
        raised = alarms.handle(topic, raw)
        assert raised.outcome == "accepted" and _row(services, raised.alarm_id).evidence_item_id is None
    _set_key(services, _event_id(raw), _STRANGER)
    assert alarms.store_deferred_evidence(later(5)) == 1
    with services.db.session() as session:
        item_id = session.scalar(
            select(AlarmRecord.evidence_item_id).where(AlarmRecord.id == raised.alarm_id)
        )
        assert session.get(EvidenceItem, item_id) is not None
    assert _named_key(services, item_id) == device.public_b64


# -- a payload's item and its alarm, from the event row ----------------------------------------------


def test_a_provisional_alarms_payload_item_pointed_at_another_item_is_not_taken(services: Any) -> None:
    """A provisional SOS whose event row's payload item was pointed by SQL at another wearer's alarm
    payload (another site's) before it was made whole: that item became the alarm's sealed payload.
    Its own bytes become its payload."""
    device = enrol(services, "LW-EP", staff_id="S-EP", site="NORTH")
    other = enrol(services, "LW-EPO", staff_id="S-EPO", site="SOUTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    theirs = services.alarms.handle(*other.sos(sent_at=now), now=now)
    services.alarms.make_whole(theirs.alarm_id)
    their_item = _row(services, theirs.alarm_id).evidence_item_id
    alarm_id = _sos_with_note(services, device, later(10, now), whole=False)
    event_id = str(_row(services, alarm_id).source_event_id)
    pointed = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id)
    _sql(services, pointed.values(evidence_item_id=their_item))
    services.alarms.make_whole(alarm_id, later(12, now))
    item_id = _row(services, alarm_id).evidence_item_id
    assert item_id is not None and item_id != their_item
    received = _waiting(services, event_id).sha256
    with services.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None and item.sha256 == received


def test_a_deferred_payload_pointed_at_another_alarm_takes_neither_its_wearer_nor_its_incident(
    services: Any,
) -> None:
    """Two SOS alarms of two sites while object storage is down; the first's event row pointed by SQL
    at the second alarm: the first's payload, stored later, took the second's wearer (and so its
    site's reach) and joined the second's incident, and the first alarm never had its payload. It is
    the first alarm's, of its wearer."""
    with _storage_down(services) as alarms:
        device = enrol(services, "LW-EA", staff_id="S-EA", site="NORTH")
        other = enrol(services, "LW-EAO", staff_id="S-EAO", site="SOUTH")
        topic, raw = device.sos()
        first = alarms.handle(topic, raw)
        second = alarms.handle(*other.sos())
    pointed = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == _event_id(raw))
    _sql(services, pointed.values(alarm_id=second.alarm_id))
    assert alarms.store_deferred_evidence(later(5)) == 2
    item_id = _row(services, first.alarm_id).evidence_item_id
    assert item_id is not None
    incident = _row(services, second.alarm_id).incident_id
    with services.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None and item.wearer == "S-EA"
        linked = set(
            session.scalars(select(IncidentLink.target_id).where(IncidentLink.incident_id == incident))
        )
    assert item_id not in linked, linked


def test_a_row_written_with_a_raises_own_event_id_does_not_absorb_the_raise(services: Any) -> None:
    """A row written into the event table with the event id of an SOS still to come (signed with a
    key the device never had) had the SOS, when it comes, taken for a message stored long ago:
    acknowledged to the device as a duplicate, and no alarm raised. The row is set aside and the
    SOS raised (``tests.test_planted_event_rows``)."""
    device = enrol(services, "LW-ED", staff_id="S-ED", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    body = {"kind": "sos", "action": "raise"}
    planted = _planted(services, DeviceKit("LW-ED"), "alarm", body, later(-60, now))
    moved = update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == planted)
    _sql(services, moved.values(event_id=_event_id(raw)))
    raised = services.alarms.handle(topic, raw, now=later(1, now))
    assert (raised.outcome, raised.alarm_id is not None) == ("accepted", True), raised
