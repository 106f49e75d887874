"""The last readers of an alarm column SQL can set take the alarm as the service vouches, on both
databases.

An attacker who can write to the database but holds none of the service's secrets can alter any
column of an alarm. What each reader here did with one: the alarms list's ``status=`` filter went by
the status column (an SOS resolved by SQL was listed as resolved, and not among the raised); the
board put an alarm where its ``raised_at`` said, and showed it raised then (the column is under the
lifecycle seal, which then no longer holds, but the board took it as it stood); the store of the
payloads that waited for object storage passed over an event whose alarm row was set provisional by
SQL; a low-battery alarm resolved by SQL when the battery was charged stayed open for good once the
clock's sweep put it back. A timer's alarm raised while a row planted by SQL holds its key is
raised all the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from alarms import rules
from alarms.models import AlarmRecord
from tests.test_alarms_kit import enrol, later
from tests.test_incidents_kit import bearer, user
from tests.test_lifecycle_seals import _row
from tests.test_planted_alarm_readers import _board, _kinds, _plant_newer, _resolve_by_sql, _whole_sos
from tests.test_planted_alarm_rows import _plant_alarm, _sos_while_storage_down
from tests.test_visit_seals import _sql

_ALARMS = AlarmRecord.__table__


# -- 1. the alarms list's status filter ------------------------------------------------------------


def _listed(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/v1/alarms", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json())


def test_the_alarms_list_filters_by_the_status_the_service_vouches_for(services: Any) -> None:
    """``GET /api/v1/alarms?status=…`` went by the status column: an SOS marked resolved by SQL was
    listed under ``resolved`` and missing from ``raised``, an alarm resolved by an operator and
    marked raised again by SQL was listed under ``raised``, and a row planted raised was listed too.
    Each is listed under the status its seal, or its custody record, vouches for, and rows are
    judged before they count (the planted rows, newer than the rest, take no place on a page)."""
    from ingest.app import create_app

    device = enrol(services, "LW-SF", staff_id="S-SF", site="NORTH")
    now = datetime.now(UTC)
    open_sos = _whole_sos(services, device, now)
    closed = _whole_sos(services, device, later(5, now))
    services.alarms.lifecycle.act(
        closed, rules.Resolve(by="user:op", at=later(6, now), outcome=rules.Outcome.TEST)
    )
    services.alarms.fire_deadlines(later(7, now))  # the sweep: custody holds the SOS open
    _resolve_by_sql(services, open_sos, later(8, now))
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == closed).values(status="raised"))
    planted = _plant_newer(services, "LW-SF", "NORTH", 3)
    user(services, "admin", "admin")
    user(services, "north_mgr", "security_manager", "NORTH")
    with TestClient(create_app(services.settings, services)) as client:
        for who in ("admin", "north_mgr"):
            headers = bearer(services, who)
            raised = _listed(client, headers, status="raised")
            assert [(a["id"], a["status"]) for a in raised] == [(open_sos, "raised")], (who, raised, planted)
            resolved = _listed(client, headers, status="resolved")
            assert [(a["id"], a["status"]) for a in resolved] == [(closed, "resolved")], (who, resolved)
            first = _listed(client, headers, status=["raised", "resolved"], limit=1)
            assert [a["id"] for a in first] == [closed], (who, first)
            second = _listed(client, headers, status=["raised", "resolved"], limit=1, offset=1)
            assert [a["id"] for a in second] == [open_sos], (who, second)


# -- 2. the board's order and the raise time it shows ----------------------------------------------


@pytest.mark.parametrize("moved", ["later", "earlier"])
def test_an_alarm_given_another_raise_time_in_the_database_keeps_its_place_on_the_board(
    services: Any, moved: str
) -> None:
    """``raised_at`` is under the lifecycle seal, but the board took the row as it stood: an SOS
    given a raise time an hour later by SQL moved after one raised after it (and showed it had been
    raised a minute ago), one given an hour earlier moved before one raised before it. The board
    orders and shows an alarm whose seal does not hold by the raise time its ``alarm_raised``
    custody entry records."""
    device = enrol(services, "LW-BT", staff_id="S-BT", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=5)
    first = _whole_sos(services, device, now)
    second = _whole_sos(services, device, later(5, now))
    recorded = {a: _row(services, a).raised_at for a in (first, second)}
    target, shift = (first, timedelta(hours=1)) if moved == "later" else (second, -timedelta(hours=1))
    _sql(
        services,
        update(_ALARMS).where(_ALARMS.c.id == target).values(raised_at=recorded[target] + shift),
    )
    user(services, "admin", "admin")
    user(services, "north_mgr", "security_manager", "NORTH")
    for who in ("admin", "north_mgr"):
        board = _board(services, who)
        shown = [(a["id"], datetime.fromisoformat(a["raised_at"])) for a in board]
        assert shown == [(first, recorded[first]), (second, recorded[second])], (who, shown)


# -- 3. a timer's alarm whose key a planted row holds ----------------------------------------------


def test_a_row_planted_under_the_key_of_the_next_offline_alarm_neither_silences_nor_takes_it(
    services: Any,
) -> None:
    """A timer's alarm is raised under a key of its own (unique): a row written by SQL under the key
    the device's next offline alarm takes could have made its raise fail, pass after pass. The
    offline alarm is raised, the device's state names it (not the planted row), and the device's
    next message clears it and leaves the planted row as it was."""
    from chain_of_custody.canonical import rfc3339
    from devices.models import LoneWorkerState

    device = enrol(services, "LW-FK", staff_id="S-FK", site="NORTH")
    now = datetime.now(UTC)
    _whole_sos(services, device, now)
    services.alarms.fire_deadlines(later(1, now))
    with services.db.session() as session:
        state = session.get(LoneWorkerState, "LW-FK")
        assert state is not None and state.last_seen_at is not None
        key = f"device_offline:LW-FK:{rfc3339(state.last_seen_at)}"
    planted = _plant_alarm(
        services, "LW-FK", None, kind="device_offline", severity="amber", status="raised", dedupe_key=key
    )
    services.alarms.raise_offline(later(600, now))
    raised = [a for a in _kinds(services, "LW-FK", "device_offline") if a.id != planted]
    assert len(raised) == 1, raised
    (offline,) = raised
    assert (offline.site, offline.wearer, offline.status) == ("NORTH", "S-FK", "raised")
    with services.db.session() as session:
        state = session.get(LoneWorkerState, "LW-FK")
        assert state is not None and state.offline_alarm_id == offline.id
    services.alarms.handle(*device.heartbeat(sent_at=later(700, now)), now=later(700, now))
    shown = {a.id: a.condition_cleared_at is not None for a in _kinds(services, "LW-FK", "device_offline")}
    assert shown == {offline.id: True, planted: False}, shown
    assert _row(services, planted).status == "raised"


# -- 4. a payload that waited for object storage ---------------------------------------------------


def test_an_alarm_set_provisional_in_the_database_does_not_keep_its_payload_from_evidence(
    services: Any,
) -> None:
    """An SOS received while object storage was down waits for its payload to be stored. The pass
    passed over every event whose alarm row says ``provisional`` (making it whole stores its own):
    a whole SOS set provisional by SQL never had its payload stored. The flag is under the raise
    seal, which then does not hold: the payload is stored, and the alarm put back whole with it."""
    alarms, sos = _sos_while_storage_down(services, "LW-PD")
    row = _row(services, sos.alarm_id)
    assert (row.provisional, row.evidence_item_id) == (False, None)
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == sos.alarm_id).values(provisional=True))
    assert alarms.store_deferred_evidence(later(5)) == 1
    row = _row(services, sos.alarm_id)
    assert (row.provisional, row.evidence_item_id is not None) == (False, True), row.evidence_item_id


def test_a_provisional_alarm_still_stores_its_payload_by_being_made_whole(services: Any) -> None:
    """The control: an alarm the service holds provisional (its raise seal holds) is left to be
    made whole, which stores its payload itself: the pass does not store it twice."""
    from alarms.models import LoneWorkerEvent

    device = enrol(services, "LW-PK", staff_id="S-PK", site="NORTH")
    services.alarms.make_whole_inline = False  # as under the MQTT consumer (a worker makes them whole)
    sos = services.alarms.handle(*device.sos())
    assert sos.alarm_id is not None and _row(services, sos.alarm_id).provisional, sos
    with services.db.session() as session:
        waiting = session.scalars(
            select(LoneWorkerEvent.event_id).where(LoneWorkerEvent.alarm_id == sos.alarm_id)
        ).all()
    assert waiting
    assert not set(waiting) & set(services.alarms.payloads.deferred(later(5), 20))
    assert services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id, later(6))
    assert services.alarms.store_deferred_evidence(later(7)) == 0
    assert _row(services, sos.alarm_id).evidence_item_id is not None


# -- 5. a low-battery alarm resolved in the database ------------------------------------------------


def test_a_low_battery_alarm_resolved_in_the_database_is_cleared_by_the_charged_battery(
    services: Any,
) -> None:
    """A device's low-battery alarm marked resolved by SQL: the charged battery's reading found no
    open one and took the device as no longer low, so once the clock's sweep put the alarm back open
    (its custody record says so) no reading cleared it again: it stayed open for good. The alarm is
    open as the service vouches, and the charged battery clears it."""
    device = enrol(services, "LW-LR", staff_id="S-LR", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(battery=5, sent_at=now), now=now)
    (low,) = _kinds(services, "LW-LR", "low_battery")
    services.alarms.lifecycle.make_whole_if_provisional(low.id, later(1, now))
    services.alarms.fire_deadlines(later(2, now))  # the sweep: custody holds it open
    _resolve_by_sql(services, low.id, later(3, now))
    services.alarms.handle(*device.heartbeat(battery=95, sent_at=later(10, now)), now=later(10, now))
    services.alarms.timekeeper.restore_deadlines(later(20, now))
    services.alarms.handle(*device.heartbeat(battery=96, sent_at=later(30, now)), now=later(30, now))
    row = _row(services, low.id)
    assert (row.status, row.outcome, row.resolved_by) == ("resolved", "cleared", "service")
