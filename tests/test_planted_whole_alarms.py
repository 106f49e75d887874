"""A whole alarm row planted by SQL is never sealed, escalated or recorded as the service's.

An attacker who can write to the database but holds none of the service's secrets can insert an
alarm row that says it is whole (not provisional) and open, with no seal and no custody entry. The
clock's sweep took such a row as it stood (an alarm "raised before the seals"), sealed the deadline
its lifecycle gives, and the next tick escalated it: the control topic and the webhook carried an
SOS nobody raised, recorded in custody as the service's, and every reader that trusts the seal then
trusted it. A provisional row naming a genuine check-in or cancel of its device was made whole as
that device's SOS. Both are set aside, as a provisional row naming nothing of the service's is."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from alarms.models import AlarmRecord
from tests.test_alarms_kit import enrol, later, outbox
from tests.test_planted_alarm_rows import _entries, _event_id, _plant_alarm, _set_aside
from tests.test_visit_seals import _cli, _sql


def _escalations(services: Any) -> list[dict[str, Any]]:
    """Every escalation queued for the control topic or the webhook."""
    found = (json.loads(r.payload) for r in outbox(services))
    return [body for body in found if isinstance(body, dict) and body.get("type") == "alarm_escalated"]


def _named(services: Any, alarm_id: str) -> list[str]:
    """The custody actions whose details name the alarm."""
    return [
        action
        for action in ("alarm_raised", "alarm_changed", "alarm_set_aside")
        for entry in _entries(services, action)
        if entry.get("alarm_id") == alarm_id
    ]


def _row(services: Any, alarm_id: str) -> AlarmRecord | None:
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        if row is not None:
            session.expunge(row)
        return row


def _tick(services: Any, at: datetime) -> None:
    """The clock's sweep, then every deadline due (the sweep's first, then ten minutes on), as the
    running service does."""
    services.alarms.timekeeper.swept_at = None
    services.alarms.fire_deadlines(at)
    services.alarms.fire_deadlines(at + timedelta(minutes=10))


def test_a_whole_open_sos_row_planted_by_sql_is_set_aside_not_escalated(services: Any) -> None:
    """No seal, no entry, not provisional, open and overdue: before, the sweep sealed its deadline
    and the tick escalated it as the service's."""
    enrol(services, "LW-WP", staff_id="S-WP", site="NORTH")
    now = datetime.now(UTC)
    planted = _plant_alarm(
        services,
        "LW-WP",
        str(uuid.uuid4()),
        status="raised",
        site="NORTH",
        wearer="S-WP",
        ack_due_at=now - timedelta(minutes=5),
        next_deadline=now - timedelta(minutes=5),
    )
    _tick(services, now)
    assert _escalations(services) == []
    assert _named(services, planted) == ["alarm_set_aside"]
    assert [(k.alarm_id, k.moved) for k in _set_aside(services)] == [(planted, True)]
    assert _row(services, planted) is None


def test_a_whole_open_timer_alarm_row_planted_by_sql_is_set_aside_not_escalated(services: Any) -> None:
    """The same row with no device event behind it, as the service's own offline or missed
    check-in alarms are, and no deadline: before, the sweep gave it one and sealed it."""
    enrol(services, "LW-WT", staff_id="S-WT", site="NORTH")
    now = datetime.now(UTC)
    planted = _plant_alarm(
        services,
        "LW-WT",
        None,
        kind="offline",
        status="raised",
        dedupe_key=f"offline:LW-WT:{now.isoformat()}",
        ack_due_at=now - timedelta(minutes=5),
    )
    _tick(services, now)
    assert _escalations(services) == []
    assert _named(services, planted) == ["alarm_set_aside"]
    assert [(k.alarm_id, k.source_event_id, k.moved) for k in _set_aside(services)] == [(planted, None, True)]
    assert _row(services, planted) is None
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0 and f"alarm {planted}" in found.output, found.output
    assert "naming device LW-WT and no raise" in found.output, found.output


def test_a_whole_row_planted_naming_a_received_check_in_is_set_aside(services: Any) -> None:
    """The check-in is the service's receipt of its device's message, but no alarm's: a row naming
    it says nothing the service raised."""
    device = enrol(services, "LW-WC", staff_id="S-WC", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.checkin_start("V-WC", now + timedelta(hours=1), sent_at=now)
    assert services.alarms.handle(topic, raw, now=now).outcome == "accepted"
    planted = _plant_alarm(services, "LW-WC", _event_id(raw), status="raised", site="NORTH", ack_due_at=now)
    _tick(services, later(1, now))
    assert _escalations(services) == []
    assert _named(services, planted) == ["alarm_set_aside"]


def test_a_provisional_row_planted_naming_a_received_cancel_is_not_made_whole(services: Any) -> None:
    """Before, it was made whole as its device's SOS (a cancel names a kind; nothing checked it
    raised anything), recorded in custody and escalated at the next tick."""
    device = enrol(services, "LW-WX", staff_id="S-WX", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.cancel(str(uuid.uuid4()), kind="sos", sent_at=now)
    assert services.alarms.handle(topic, raw, now=now).outcome == "accepted"
    planted = _plant_alarm(services, "LW-WX", _event_id(raw), status="raised", provisional=True)
    services.alarms.lifecycle.make_provisional_alarms_whole(now=later(1, now))
    _tick(services, later(2, now))
    assert _entries(services, "alarm_raised") == []
    assert _escalations(services) == []
    assert _named(services, planted) == ["alarm_set_aside"]


def test_a_genuine_whole_sos_whose_seals_were_cleared_is_still_escalated(services: Any) -> None:
    """What the set-aside must not catch: the service's own SOS, its three seals cleared by SQL,
    still has its custody entry and its receipt, is put back and escalates when unanswered."""
    from sqlalchemy import update

    device = enrol(services, "LW-WG", staff_id="S-WG", site="NORTH")
    now = datetime.now(UTC)
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id
    services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id, now)
    table = AlarmRecord.__table__
    _sql(
        services,
        update(table)
        .where(table.c.id == sos.alarm_id)
        .values(seal=None, lifecycle_seal=None, raise_seal=None),
    )
    _tick(services, later(1, now))
    assert _set_aside(services) == []
    row = _row(services, sos.alarm_id)
    assert row is not None and row.status == "escalated", row and row.status
