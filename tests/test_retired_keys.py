"""A device key replaced at re-enrolment, against whoever still holds it (a handset handed back, a
key copied), on both databases, by its effects (the clock driven by an explicit "now", changes made
by SQL behind the service's back): the service takes a stored message as the device's word when a
key of the device's vouches for it, and a key since replaced vouched for any message dated before
its replacement, whatever the date said. Whoever kept the old key signed messages dated back (a
raise saying "false alarm" somewhere else, a cancel of the alarm), wrote them into the database
after the re-enrolment, and the service took them as the device's. A key since replaced now
vouches only for the messages the service received while it was in force, as the service sealed
their receipt; the device's own messages from before still hold."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from alarms.models import AlarmRecord, LoneWorkerEvent
from chain_of_custody.canonical import canonical_json
from devices.service import enrol_lone_worker
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_lifecycle_seals import _alter, _row
from tests.test_raise_seals import _ELSEWHERE, _NOTE, _PLACE, _record, _sos_with_note
from tests.test_visit_seals import _sql

_FORGED_NOTE = "false alarm, ignore"


def _reenrol(services: Any, device_id: str, staff_id: str) -> DeviceKit:
    """The device enrolled again with a new key (the old one kept by someone); the new kit."""
    new = DeviceKit(device_id)
    with services.db.session() as session:
        enrol_lone_worker(session, services.ledger, device_id, new.public_b64, "test", staff_id=staff_id)
    return new


@pytest.mark.parametrize("forged", [False, True])
def test_a_replaced_key_vouches_for_no_back_dated_raise_written_after_its_replacement(
    services: Any, forged: bool
) -> None:
    """A provisional SOS, its device enrolled again with a new key: its message, received while the
    old key was in force, still puts back a note and place changed by SQL (the control). Its stored
    bytes overwritten with a message signed with the old key, dated as the genuine one (before the
    re-enrolment), saying "false alarm" somewhere else: it was taken as the device's word."""
    device = enrol(services, "LW-KR", staff_id="S-KR", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _reenrol(services, "LW-KR", "S-KR")
    event_id = str(_row(services, alarm_id).source_event_id)
    if forged:
        body = {"kind": "sos", "action": "raise", "note": _FORGED_NOTE}
        raw = canonical_json(
            device.payload("alarm", body, event_id=event_id, seq=1, sent_at=now, position=_ELSEWHERE)
        )
        _sql(services, update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(raw=raw))
    _alter(services, alarm_id, note=_FORGED_NOTE, **_ELSEWHERE)
    services.alarms.make_whole(alarm_id, later(2, now))
    row = _row(services, alarm_id)
    if forged:
        assert (row.note, row.lat, row.lon, row.evidence_item_id) == (None,) * 4
    else:
        assert (row.note, row.lat, row.lon) == (_NOTE, _PLACE["lat"], _PLACE["lon"])
        assert row.evidence_item_id is not None


def _planted(services: Any, device: DeviceKit, type_: str, body: dict[str, Any], at: datetime) -> str:
    """A message of the device's, signed with ``device``'s key and dated ``at``, written into the
    event table by SQL; its event id."""
    event_id = str(uuid.uuid4())
    raw = canonical_json(device.payload(type_, body, event_id=event_id, seq=99, sent_at=at))
    values = {
        "event_id": event_id,
        "device_id": device.device_id,
        "type": type_,
        "action": body["action"],
        "kind": body.get("kind"),
        "ref_event_id": body.get("ref_event_id"),
        "visit_id": body.get("visit_id"),
        "seq": 99,
        "occurred_at": at,
        "sent_at": at,
        "received_at": at,
        "late": False,
        "topic": f"lw/v1/{device.device_id}/{type_}",
        "raw": raw,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    _sql(services, insert(LoneWorkerEvent).values(**values))
    return event_id


def test_a_replaced_key_vouches_for_no_back_dated_cancel_written_after_its_replacement(
    services: Any,
) -> None:
    """An SOS raised, its device enrolled again with a new key, then a cancel of the SOS signed with
    the old key, dated a minute after the SOS (before the re-enrolment), written into the event
    table: the alarm's record showed the control room the device's cancel, as the device signed
    it. The SOS's own message, received while the old key was in force, still holds."""
    device = enrol(services, "LW-KC", staff_id="S-KC", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now)
    source = str(_row(services, alarm_id).source_event_id)
    _reenrol(services, "LW-KC", "S-KC")
    cancel = _planted(
        services, device, "alarm", {"kind": "sos", "action": "cancel", "ref_event_id": source}, later(60, now)
    )
    sent = services.alarms.handle(*device.cancel(source, kind="sos"))  # the live path knows one key
    assert (sent.outcome, sent.reason) == ("rejected", "bad_signature"), sent
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(120, now))["messages"]}
    assert shown[source]["holds"] is True, shown[source]
    assert (shown[cancel]["holds"], shown[cancel]["payload"]) == (False, None), shown[cancel]


def test_a_replaced_key_vouches_for_no_back_dated_end_checkin_written_after_its_replacement(
    services: Any,
) -> None:
    """A visit runs over and its missed check-in is raised; its device enrolled again with a new key,
    an end check-in signed with the old key, dated before the missed check-in, written into the
    event table: the alarm's record showed the worker checking out in time."""
    device = enrol(services, "LW-KE", staff_id="S-KE", site="NORTH")
    now = datetime.now(UTC) - timedelta(hours=1)
    start = device.checkin_start("V-KE", now + timedelta(minutes=30), sent_at=now)
    assert services.alarms.handle(*start, now=now).outcome == "accepted"
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    with services.db.session() as session:
        alarm_id = session.scalars(select(AlarmRecord.id).where(AlarmRecord.device_id == "LW-KE")).one()
    _reenrol(services, "LW-KE", "S-KE")
    end = _planted(services, device, "checkin", {"action": "end", "visit_id": "V-KE"}, later(25 * 60, now))
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(40 * 60, now))["messages"]}
    assert [m["holds"] for m in shown.values() if m["action"] == "start"] == [True], shown
    assert (shown[end]["holds"], shown[end]["payload"]) == (False, None), shown[end]
