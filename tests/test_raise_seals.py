"""What an alarm was raised with sealed (``chain_of_custody.raise_seals``), on both databases, by its
effects, the clock driven by an explicit "now" (no sleeps): a note, position or payload item
changed by SQL is not shown and is put back to the custody record (or the device's own message);
a provisional flag changed by SQL neither leaves an alarm unmade nor makes one whole twice; an
alarm altered while still provisional is not recorded as it stands; ``evidence verify`` names each
and ``evidence upgrade-seals`` seals only what custody bears out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from alarms import rules
from alarms.lifecycle import ESCALATION_TOPIC
from alarms.models import AlarmOutbox
from alarms.records import alarm_record
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.models import CustodyEntry
from chain_of_custody.reach_seals import reach_secret
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_lifecycle_seals import _alter, _row, _sos
from tests.test_visit_seals import _cli

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
        record = alarm_record(session, alarm_id, now, None, reach_secret(services.key))
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


def test_an_alarm_acknowledged_in_the_database_while_provisional_still_escalates(services: Any) -> None:
    """Marked acknowledged by SQL before it was made whole, an SOS was made whole as its row then
    stood: custody recorded it acknowledged, and it never escalated. It is made whole as raised,
    due now, and escalates at the clock's next look; ``evidence verify`` names it."""
    device = enrol(services, "LW-RA", staff_id="S-RA", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _alter(
        services,
        alarm_id,
        status="acknowledged",
        acknowledged_at=later(1, now),
        acknowledged_by="user:nobody",
        ack_due_at=None,
        next_deadline=None,
    )
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
