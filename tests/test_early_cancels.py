"""A device can only speak for itself, on both databases, by its effects (the clock driven by an
explicit "now", changes made by SQL behind the service's back): a cancel that comes before its
raise waits in the event table and is applied when the raise arrives. The waiting row's columns
were taken as the device's word: a cancel row written there by SQL (signed with a key the device
never had, or with one it no longer has), or a genuine cancel of an earlier alarm pointed at a
raise still to come, resolved an amber alarm the moment it arrived, or told the control room a
worker had cancelled an SOS. Such a row is now named in a warning and ignored (the raise stands)
and ``evidence verify`` names it; the device's own early cancel is still applied. Beside it, the
evidence item of a payload stored late names the key the service sealed its receipt under, not
whatever key the event row's column says."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from alarms.models import AlarmRecord, LoneWorkerEvent
from alarms.service import AlarmService
from chain_of_custody.models import EvidenceItem
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
    real = services.store
    services.store = ObjectStore(
        "127.0.0.1:9", "x", "y", bucket=real.bucket, staging_bucket="s", timeout_seconds=1
    )
    try:
        alarms = AlarmService(services)
        device = enrol(services, "LW-EKD", staff_id="S-EKD", site="NORTH")
        topic, raw = device.sos()
        raised = alarms.handle(topic, raw)
        assert raised.outcome == "accepted" and _row(services, raised.alarm_id).evidence_item_id is None
    finally:
        services.store = real
    _set_key(services, _event_id(raw), _STRANGER)
    assert alarms.store_deferred_evidence(later(5)) == 1
    with services.db.session() as session:
        item_id = session.scalar(
            select(AlarmRecord.evidence_item_id).where(AlarmRecord.id == raised.alarm_id)
        )
        assert session.get(EvidenceItem, item_id) is not None
    assert _named_key(services, item_id) == device.public_b64
