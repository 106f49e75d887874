"""What an alarm was raised with sealed (``chain_of_custody.raise_seals``), on both databases, by its
effects, the clock driven by an explicit "now" (no sleeps): a note, position or payload item
changed by SQL is not shown and is put back to the custody record (or the device's own message);
a provisional flag changed by SQL neither leaves an alarm unmade nor makes one whole twice; an
alarm altered while still provisional is not recorded as it stands; ``evidence verify`` names each
and ``evidence upgrade-seals`` seals only what custody bears out."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from alarms import rules
from alarms.escalations import ESCALATION_TOPIC
from alarms.feed import record_change
from alarms.models import AlarmChange, AlarmOutbox, AlarmRecord, LoneWorkerEvent
from alarms.reach import change_body
from alarms.records import MessageKeys, alarm_record
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.canonical import canonical_json
from chain_of_custody.models import CustodyEntry
from chain_of_custody.reach_seals import reach_secret
from devices.service import enrol_lone_worker, set_status
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_lifecycle_seals import _alter, _row, _sos
from tests.test_sweep_custody import _forge, _named
from tests.test_visit_seals import _cli, _sql

_PLACE = {"lat": 51.5072, "lon": -0.1276, "accuracy_m": 8.0}  # where the kit's device says it is
_NOTE = "back stairwell, level 2"


def _sos_with_note(services: Any, device: DeviceKit, at: datetime, *, whole: bool = True) -> str:
    topic, raw = device.message("alarm", {"kind": "sos", "action": "raise", "note": _NOTE}, sent_at=at)
    services.alarms.make_whole_inline = False
    sos = services.alarms.handle(topic, raw, now=at)
    assert sos.outcome == "accepted" and sos.alarm_id
    if whole:
        services.alarms.make_whole(sos.alarm_id)
    return str(sos.alarm_id)


def _alarm_entries(services: Any, alarm_id: str) -> list[tuple[str, dict[str, Any]]]:
    with services.db.session() as session:
        rows = session.execute(
            select(CustodyEntry.action, CustodyEntry.details)
            .where(CustodyEntry.action.in_(("alarm_raised", "alarm_changed")))
            .order_by(CustodyEntry.seq)
        )
        out = [(action, json.loads(details)) for action, details in rows]
    return [(a, d) for a, d in out if d.get("alarm_id") == alarm_id]


def _record(services: Any, alarm_id: str, now: datetime) -> dict[str, Any]:
    with services.db.session() as session:
        record = alarm_record(
            session, alarm_id, now, None, reach_secret(services.key), MessageKeys.of(services.key)
        )
    assert record is not None
    return record


_ALTERED = {
    "lat": {"lat": 53.4808},
    "lon": {"lon": -2.2426},
    "accuracy_m": {"accuracy_m": 5000.0},
    "note": {"note": "false alarm, ignore"},
}


@pytest.mark.parametrize("column", sorted(_ALTERED))
def test_a_note_or_position_changed_in_the_database_is_not_shown_and_is_put_back(
    services: Any, column: str
) -> None:
    """Changed by SQL, the alarm's place (or the worker's words) was shown to the control room, in
    its list and its record, and sent with its escalation: it is shown as unknown instead, put back
    to its custody record at the service's next look (an entry records what was found), escalates with the place the
    device gave, and ``evidence verify`` names it."""
    device = enrol(services, f"LW-R{column}", staff_id=f"S-R{column}", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now)
    _alter(services, alarm_id, **_ALTERED[column])
    shown = services.alarms.get(alarm_id)
    listed = [a for a in services.alarms.list_alarms() if a["id"] == alarm_id]
    for view in (shown, listed[0], _record(services, alarm_id, now)["alarm"]):
        assert view["position"] in (None, _PLACE) and view["note"] in (None, _NOTE), view
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0
    assert f"alarm {alarm_id}" in found.output and "alarm_raise_altered" in found.output, found.output
    services.alarms.fire_deadlines(later(3600, now))  # unacknowledged: it escalates
    put_back = [d["raise_put_back"] for _, d in _alarm_entries(services, alarm_id) if "raise_put_back" in d]
    assert [p["found"][column] for p in put_back] == list(_ALTERED[column].values()), put_back
    row = _row(services, alarm_id)
    assert (row.lat, row.lon, row.accuracy_m, row.note) == (*_PLACE.values(), _NOTE)
    assert (row.status, row.escalation_reason) == ("escalated", "ack_timeout")
    with services.db.session() as session:
        bodies = session.scalars(
            select(AlarmOutbox.payload).where(
                AlarmOutbox.alarm_id == alarm_id, AlarmOutbox.target == ESCALATION_TOPIC
            )
        ).all()
    assert [json.loads(b)["position"] for b in bodies] == [_PLACE]
    assert services.alarms.get(alarm_id)["position"] == _PLACE
    after = _cli(services, "verify", "--json")
    assert "alarm_raise_altered" in after.output and "put back" in after.output, after.output


def test_a_payload_pointed_at_another_alarms_item_is_not_shown_nor_linked(services: Any) -> None:
    """Pointed by SQL at the device's item of another alarm (another wearer's, before the device
    changed hands), the alarm's record showed that item as its payload: it shows none, and an
    operator's action puts it back to the item its custody record names."""
    device = enrol(services, "LW-RP", staff_id="S-RP1", site="NORTH")
    now = datetime.now(UTC)
    first = _sos(services, device, later(-600, now))
    second = _sos(services, device, now)
    theirs, own = _row(services, first).evidence_item_id, _row(services, second).evidence_item_id
    assert theirs and own and theirs != own
    _alter(services, second, evidence_item_id=theirs)
    record = _record(services, second, now)
    assert record["payload"] is None and record["alarm"]["evidence_item_id"] is None, record["payload"]
    services.alarms.act(second, rules.Acknowledge(by="user:op", at=later(5, now)))
    assert _row(services, second).evidence_item_id == own
    assert _record(services, second, now)["payload"]["id"] == own
    assert "alarm_raise_altered" in _cli(services, "verify", "--json").output


def test_a_provisional_alarm_cleared_of_provisional_in_the_database_is_made_whole(services: Any) -> None:
    """Marked not provisional by SQL before it was made whole, an SOS was never made whole: no
    ``alarm_raised`` entry, no payload as evidence. The service's next look at it makes it whole,
    raise first, and ``evidence verify`` names it."""
    device = enrol(services, "LW-RV", staff_id="S-RV", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _alter(services, alarm_id, provisional=False)
    assert services.alarms.make_provisional_alarms_whole(later(60, now)) == 0  # it is not listed
    services.alarms.fire_deadlines(later(3600, now))
    actions = [a for a, _ in _alarm_entries(services, alarm_id)]
    assert actions[0] == "alarm_raised" and actions.count("alarm_raised") == 1, actions
    row = _row(services, alarm_id)
    assert (row.provisional, row.status) == (False, "escalated")
    assert row.evidence_item_id is not None
    assert "alarm_raise_altered" in _cli(services, "verify", "--json").output


def test_a_whole_alarm_marked_provisional_in_the_database_is_not_raised_twice(services: Any) -> None:
    """Marked provisional again by SQL, a whole alarm was made whole a second time (a second
    ``alarm_raised`` entry, as if raised again): it is put back to whole, once."""
    device = enrol(services, "LW-RW", staff_id="S-RW", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos(services, device, now)
    _alter(services, alarm_id, provisional=True)
    services.alarms.make_provisional_alarms_whole(later(60, now))
    actions = [a for a, _ in _alarm_entries(services, alarm_id)]
    assert actions.count("alarm_raised") == 1, actions
    assert _row(services, alarm_id).provisional is False
    assert "alarm_raise_altered" in _cli(services, "verify", "--json").output


def _acknowledged_by_sql(services: Any, alarm_id: str, now: datetime) -> None:
    _alter(
        services,
        alarm_id,
        status="acknowledged",
        acknowledged_at=later(1, now),
        acknowledged_by="user:nobody",
        ack_due_at=None,
        next_deadline=None,
    )


def test_an_alarm_acknowledged_in_the_database_while_provisional_still_escalates(services: Any) -> None:
    """Marked acknowledged by SQL before it was made whole, an SOS was made whole as its row then
    stood: custody recorded it acknowledged, and it never escalated. It is made whole as raised,
    due now, and escalates at the clock's next look; ``evidence verify`` names it."""
    device = enrol(services, "LW-RA", staff_id="S-RA", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _acknowledged_by_sql(services, alarm_id, now)
    services.alarms.make_whole(alarm_id, later(2, now))
    raised = [d for a, d in _alarm_entries(services, alarm_id) if a == "alarm_raised"]
    assert [d["status"] for d in raised] == ["raised"], raised
    services.alarms.fire_deadlines(later(3, now))
    row = _row(services, alarm_id)
    assert (row.status, row.escalation_reason, row.acknowledged_by) == ("escalated", "ack_timeout", None)
    found = _cli(services, "verify", "--json")
    assert "alarm_lifecycle_altered" in found.output and "put back" in found.output, found.output


def test_a_provisional_alarms_note_changed_in_the_database_is_put_back_to_the_devices_message(
    services: Any,
) -> None:
    """Nothing in custody records a provisional alarm yet: its note changed by SQL is put back to the
    note of the device's own signed message when it is made whole, and recorded so."""
    device = enrol(services, "LW-RN", staff_id="S-RN", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _alter(services, alarm_id, note="false alarm, ignore", lat=0.0)
    services.alarms.make_whole(alarm_id, later(2, now))
    row = _row(services, alarm_id)
    assert (row.note, row.lat) == (_NOTE, _PLACE["lat"])
    raised = [d for a, d in _alarm_entries(services, alarm_id) if a == "alarm_raised"]
    assert [(d["note"], d["position"]) for d in raised] == [(_NOTE, _PLACE)]
    assert "raise_put_back" in raised[0]
    assert "alarm_raise_altered" in _cli(services, "verify", "--json").output


def test_upgrade_seals_seals_raises_the_custody_record_bears_out(services: Any) -> None:
    """Alarms raised before their note, position and payload were sealed have no seal: ``upgrade-seals
    --yes`` seals one whose values its custody record (and its device's message) bear out, refuses
    one moved by SQL meanwhile, and that one stays unsealed."""
    kept_device = enrol(services, "LW-RU1", staff_id="S-RU1", site="NORTH")
    moved_device = enrol(services, "LW-RU2", staff_id="S-RU2", site="NORTH")
    now = datetime.now(UTC)
    kept, moved = _sos(services, kept_device, now), _sos(services, moved_device, now)
    for alarm_id in (kept, moved):
        _alter(services, alarm_id, raise_seal=None)
    _alter(services, moved, lat=53.4808)
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["alarm_raises"] == 2
    done = _cli(services, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output
    assert "seal-raise" in done.output, done.output
    lines = [line for line in done.output.splitlines() if "note, position and payload;" in line]
    verdicts = {line.split(":")[0]: line for line in lines}
    assert "matches its custody record" in verdicts[f"alarm {kept}"], done.output
    assert "REFUSED" in verdicts[f"alarm {moved}"] and "lat" in verdicts[f"alarm {moved}"], done.output
    assert _row(services, kept).raise_seal is not None and _row(services, moved).raise_seal is None


# -- what the put-back takes: entries that hold, messages as the device signed them ---------------

_ELSEWHERE = {"lat": 53.4808, "lon": -2.2426, "accuracy_m": 5.0}


def _edit_message(services: Any, alarm_id: str, **said: Any) -> str:
    """The stored bytes of the alarm's device message edited by SQL (its signature kept): ``note``
    and ``kind`` into its alarm body, anything else at its top level; the event's id."""
    row = _row(services, alarm_id)
    with services.db.session() as session:
        event = session.get(LoneWorkerEvent, row.source_event_id)
        assert event is not None
        message = json.loads(event.raw)
        for name, value in said.items():
            if name in ("note", "kind"):
                message["alarm"][name] = value
            else:
                message[name] = value
        raw = canonical_json(message)
        event_id = event.event_id
    values: dict[str, Any] = {"raw": raw}
    if "kind" in said:
        values["kind"] = said["kind"]
    _sql(services, update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(**values))
    return str(event_id)


def _acknowledged_and_put_back(
    services: Any, caplog: pytest.LogCaptureFixture, alarm_id: str, own: str, now: datetime
) -> AlarmRecord:
    """An operator acknowledges the alarm; it is found put back to the note, place and payload its
    device gave (``own``: its payload's item)."""
    with caplog.at_level(logging.WARNING):
        services.alarms.act(alarm_id, rules.Acknowledge(by="user:op", at=later(5, now)))
    row = _row(services, alarm_id)
    assert (row.lat, row.lon, row.accuracy_m, row.note) == (*_PLACE.values(), _NOTE)
    assert row.evidence_item_id == own
    return row


def test_a_forged_entry_is_not_what_an_altered_alarm_is_put_back_to(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``alarm_changed`` entry written by SQL (not signed by the service's key) recording another
    place, another note and another wearer's payload, and the row changed to match: the alarm was
    put back to the forgery and sealed over it. It is put back to its entries that hold, a warning
    names the forged entry, and ``evidence verify`` names the alarm."""
    device = enrol(services, "LW-RF1", staff_id="S-RF1", site="NORTH")
    other = enrol(services, "LW-RF2", staff_id="S-RF2", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now)
    own = _row(services, alarm_id).evidence_item_id
    theirs = _row(services, _sos(services, other, now)).evidence_item_id
    assert own and theirs and own != theirs
    forged = _forge(services, alarm_id, item_id=theirs, note="false alarm, ignore", position=_ELSEWHERE)
    _alter(services, alarm_id, note="false alarm, ignore", evidence_item_id=theirs, **_ELSEWHERE)
    _acknowledged_and_put_back(services, caplog, alarm_id, own, now)
    assert _named(caplog, entry=forged), [r.getMessage() for r in caplog.records]
    found = _cli(services, "verify", "--json")
    assert f"alarm {alarm_id}" in found.output and "alarm_raise_altered" in found.output, found.output


def test_an_edited_device_message_lends_an_altered_provisional_alarm_nothing(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing in custody records a provisional alarm yet: its note and place changed by SQL, and its
    device's stored message edited to say the same, the alarm was put back to the edited message.
    The message is checked against its device's key: it does not hold, so the alarm is put back to
    no note and no place (not a wrong one), a warning names the event, and nothing of it is stored
    as evidence."""
    device = enrol(services, "LW-RM", staff_id="S-RM", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    event_id = _edit_message(services, alarm_id, note="false alarm, ignore", position=_ELSEWHERE)
    _alter(services, alarm_id, note="false alarm, ignore", **_ELSEWHERE)
    with caplog.at_level(logging.WARNING):
        services.alarms.make_whole(alarm_id, later(2, now))
    row = _row(services, alarm_id)
    assert (row.note, row.lat, row.lon, row.accuracy_m, row.evidence_item_id) == (None,) * 5
    assert _named(caplog, event_id=event_id), [r.getMessage() for r in caplog.records]
    raised = [d for a, d in _alarm_entries(services, alarm_id) if a == "alarm_raised"]
    assert [(d["note"], d["position"]) for d in raised] == [(None, None)], raised
    assert raised[0]["payload_refused"]["event_id"] == event_id


def test_an_edited_device_message_is_not_stored_as_the_alarms_evidence(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The stored bytes of a provisional alarm's device message edited by SQL (another note) became
    its payload's evidence when it was made whole, and later when stored late: they are stored
    neither way, a warning names the event, and its ``alarm_raised`` entry records why."""
    device = enrol(services, "LW-RE", staff_id="S-RE", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    event_id = _edit_message(services, alarm_id, note="false alarm, ignore")
    with caplog.at_level(logging.WARNING):
        services.alarms.make_whole(alarm_id, later(2, now))
        assert services.alarms.store_deferred_evidence(later(60, now)) == 0
    row = _row(services, alarm_id)
    assert (row.provisional, row.evidence_item_id, row.note) == (False, None, _NOTE)
    with services.db.session() as session:
        event = session.get(LoneWorkerEvent, event_id)
        assert event is not None and event.evidence_item_id is None
    assert _named(caplog, event_id=event_id), [r.getMessage() for r in caplog.records]
    raised = [d for a, d in _alarm_entries(services, alarm_id) if a == "alarm_raised"]
    assert raised[0]["payload_refused"]["event_id"] == event_id, raised


def test_an_alarm_whose_device_message_was_edited_is_made_whole_as_an_sos(services: Any) -> None:
    """A provisional SOS acknowledged by SQL, its event's kind and stored message edited to a low
    battery warning (one that clears itself): it was made whole as the kind its event said, a
    warning. The edited message does not hold and says nothing of its kind: it is made whole as an
    SOS, red, and escalates."""
    device = enrol(services, "LW-RK", staff_id="S-RK", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _edit_message(services, alarm_id, kind="low_battery")
    _acknowledged_by_sql(services, alarm_id, now)
    services.alarms.make_whole(alarm_id, later(2, now))
    services.alarms.fire_deadlines(later(3600, now))
    row = _row(services, alarm_id)
    assert (row.kind, row.severity, row.status) == ("sos", "red", "escalated"), (row.kind, row.status)


@pytest.mark.parametrize("changed", ["note", "position", "payload"])
def test_an_alarm_whose_raise_seal_was_cleared_is_held_to_its_custody_record(
    services: Any, caplog: pytest.LogCaptureFixture, changed: str
) -> None:
    """Its raise seal set to NULL by SQL and its note, place or payload changed with it, the alarm
    counted as raised before seals: its changed values were shown, kept and sealed by the upgrade.
    Its custody entries record what it was raised with, so it is treated as altered: not shown, put
    back at the service's next look, with a warning, named by ``evidence verify``, and refused by
    ``upgrade-seals``."""
    device = enrol(services, f"LW-RN{changed}", staff_id=f"S-RN{changed}", site="NORTH")
    other = enrol(services, f"LW-RO{changed}", staff_id=f"S-RO{changed}", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now)
    own = _row(services, alarm_id).evidence_item_id
    theirs = _row(services, _sos(services, other, now)).evidence_item_id
    values = {
        "note": {"note": "false alarm, ignore"},
        "position": _ELSEWHERE,
        "payload": {"evidence_item_id": theirs},
    }
    _alter(services, alarm_id, raise_seal=None, **values[changed])
    shown = services.alarms.get(alarm_id)
    assert shown["note"] in (None, _NOTE) and shown["position"] in (None, _PLACE), shown
    assert shown["evidence_item_id"] in (None, own), shown
    upgrade = _cli(services, "upgrade-seals", "--yes")
    assert f"alarm {alarm_id}: note, position and payload; REFUSED" in upgrade.output, upgrade.output
    assert _row(services, alarm_id).raise_seal is None
    found = _cli(services, "verify", "--json")
    assert f"alarm {alarm_id}" in found.output and "alarm_raise_altered" in found.output, found.output
    logging.getLogger().addHandler(caplog.handler)  # the command set logging up afresh
    row = _acknowledged_and_put_back(services, caplog, alarm_id, own, now)
    assert row.raise_seal is not None
    assert _named(caplog, alarm=alarm_id), [r.getMessage() for r in caplog.records]
    put_back = [d for _, d in _alarm_entries(services, alarm_id) if "raise_put_back" in d]
    assert len(put_back) == 1, put_back


def test_the_live_stream_shows_no_unchecked_note_or_position(services: Any) -> None:
    """A change on the stream of an alarm whose raise seal was set to NULL by SQL (its place changed
    with it) carried the changed place: the stream cannot check it against custody, so it shows
    none."""
    device = enrol(services, "LW-RS", staff_id="S-RS", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now)
    _alter(services, alarm_id, raise_seal=None, **_ELSEWHERE)
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        assert row is not None
        record_change(session, row, "moved", later(3, now))
    with services.db.session() as session:
        bodies = session.scalars(
            select(AlarmChange.body).where(AlarmChange.alarm_id == alarm_id).order_by(AlarmChange.id.desc())
        ).all()
    sent = change_body(reach_secret(services.key), False, bodies[0])
    assert sent is not None
    assert json.loads(sent)["alarm"]["position"] in (None, _PLACE), sent


def test_an_alarms_record_shows_no_device_message_edited_in_the_database(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An alarm's record showed the device's stored messages byte for byte, whatever wrote them: an
    SOS's message edited by SQL to say "false alarm" was shown to the operator as the device's word.
    It is now listed as not holding, with no payload, while a message as the device signed it is
    shown as it came."""
    device = enrol(services, "LW-RR", staff_id="S-RR", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now)
    before = _record(services, alarm_id, now)["messages"]
    assert [(m["holds"], _NOTE in (m["payload"] or "")) for m in before] == [(True, True)], before
    event_id = _edit_message(services, alarm_id, note="false alarm, ignore")
    with caplog.at_level(logging.WARNING):
        after = _record(services, alarm_id, now)["messages"]
    assert [(m["event_id"], m["holds"], m["payload"]) for m in after] == [(event_id, False, None)], after
    assert _named(caplog, event_id=event_id), [r.getMessage() for r in caplog.records]


def test_a_provisional_alarm_with_its_seals_cleared_is_not_made_whole_as_it_stands(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every alarm is raised with both seals. A provisional SOS whose seals were cleared by SQL, with
    another note and place and marked resolved, was made whole as it stood: the forged values were
    sealed and signed into its ``alarm_raised`` entry, and the SOS never escalated. It is now put back
    to its device's message and made whole as raised, due now."""
    device = enrol(services, "LW-RN", staff_id="S-RN", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _alter(
        services,
        alarm_id,
        raise_seal=None,
        lifecycle_seal=None,
        note="false alarm, ignore",
        status="resolved",
        next_deadline=None,
        **_ELSEWHERE,
    )
    with caplog.at_level(logging.WARNING):
        services.alarms.make_whole(alarm_id, later(2, now))
    row = _row(services, alarm_id)
    assert row.provisional is False
    assert (row.note, row.lat, row.lon, row.accuracy_m) == (_NOTE, *_PLACE.values())
    assert row.status != "resolved" and row.next_deadline is not None
    raised = [d for a, d in _alarm_entries(services, alarm_id) if a == "alarm_raised"]
    assert len(raised) == 1 and raised[0]["note"] == _NOTE, raised
    assert raised[0]["status"] != "resolved", raised
    assert any("not as the service sealed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("dated_after_rotation", [False, True])
def test_a_key_replaced_vouches_only_for_messages_dated_before_its_replacement(
    services: Any, caplog: pytest.LogCaptureFixture, dated_after_rotation: bool
) -> None:
    """Every key a device was ever enrolled with vouched for its messages: after the device was
    enrolled again with a new key, whoever kept the old one (a handset handed back, a key copied)
    could sign a message in the device's name, dated after, write it over a provisional alarm's
    stored bytes and its note and place over the alarm's, and it was put back to what they wrote. A
    key since replaced now vouches only for a message dated before the enrolment that replaced it:
    the device's own message from before still holds; one dated after says nothing."""
    device = enrol(services, "LW-RK", staff_id="S-RK", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    with services.db.session() as session:  # enrolled again with a new key (the old one kept)
        enrol_lone_worker(
            session, services.ledger, "LW-RK", DeviceKit("LW-RK").public_b64, "test", staff_id="S-RK"
        )
    event_id = str(_row(services, alarm_id).source_event_id)
    if dated_after_rotation:  # signed with the old key, dated an hour on, saying something else
        body = {"kind": "sos", "action": "raise", "note": "false alarm, ignore"}
        forged = device.payload(
            "alarm", body, event_id=event_id, seq=1, sent_at=later(3600, now), position=_ELSEWHERE
        )
        raw = canonical_json(forged)
        _sql(services, update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(raw=raw))
    _alter(services, alarm_id, note="false alarm, ignore", **_ELSEWHERE)
    with caplog.at_level(logging.WARNING):
        services.alarms.make_whole(alarm_id, later(2, now))
    row = _row(services, alarm_id)
    if dated_after_rotation:
        assert (row.note, row.lat, row.lon, row.evidence_item_id) == (None,) * 4
        assert _named(caplog, event_id=event_id), [r.getMessage() for r in caplog.records]
    else:
        assert (row.note, row.lat, row.lon) == (_NOTE, _PLACE["lat"], _PLACE["lon"])
        assert row.evidence_item_id is not None


@pytest.mark.parametrize("tampered", ["details", "at", "action", "deleted"])
def test_a_key_replaced_by_an_enrolment_edited_in_the_database_vouches_for_no_later_message(
    services: Any, caplog: pytest.LogCaptureFixture, tampered: str
) -> None:
    """An enrolment entry that did not hold was passed over as if it had never been written: whoever
    kept a device's old key edited one byte of the entry that enrolled the new one (or its time,
    or its action, or deleted it), the old key was taken as the device's latest and vouched for a
    message of any date. The edited entry still ends the old key's period, at the last entry that
    holds before it (and is named); a deleted one leaves the old key vouching for nothing: a
    message signed with the old key, dated after the rotation, is not adopted."""
    device = enrol(services, "LW-RE", staff_id="S-RE", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    new_key = DeviceKit("LW-RE").public_b64
    with services.db.session() as session:  # enrolled again with a new key (the old one kept)
        enrol_lone_worker(session, services.ledger, "LW-RE", new_key, "test", staff_id="S-RE")
    for status in ("disabled", "active"):  # entries after it: its deletion leaves a gap
        with services.db.session() as session:
            set_status(session, services.ledger, "LW-RE", status, "test")
    with services.db.session() as session:
        entries = session.execute(
            select(CustodyEntry.seq, CustodyEntry.details).where(CustodyEntry.action == "device_enrolled")
        ).all()
    seq = next(s for s, d in entries if json.loads(d).get("public_key") == new_key)
    edits = {
        "details": {"details": json.dumps({"public_key": new_key, "note": "x"})},
        "at": {"at": "2099-01-01T00:00:00+00:00"},
        "action": {"action": "device_changed"},
    }
    entry = CustodyEntry.seq == seq
    _sql(
        services,
        delete(CustodyEntry).where(entry)
        if tampered == "deleted"
        else update(CustodyEntry).where(entry).values(**edits[tampered]),
    )
    event_id = str(_row(services, alarm_id).source_event_id)
    body = {"kind": "sos", "action": "raise", "note": "false alarm, ignore"}
    forged = device.payload(
        "alarm", body, event_id=event_id, seq=1, sent_at=later(3600, now), position=_ELSEWHERE
    )
    _sql(
        services,
        update(LoneWorkerEvent)
        .where(LoneWorkerEvent.event_id == event_id)
        .values(raw=canonical_json(forged)),
    )
    _alter(services, alarm_id, note="false alarm, ignore", **_ELSEWHERE)
    with caplog.at_level(logging.WARNING):
        services.alarms.make_whole(alarm_id, later(2, now))
    row = _row(services, alarm_id)
    assert (row.note, row.lat, row.lon, row.evidence_item_id) == (None,) * 4
    assert _named(caplog, event_id=event_id), [r.getMessage() for r in caplog.records]
    if tampered != "deleted":
        assert _named(caplog, entry=seq), [r.getMessage() for r in caplog.records]
