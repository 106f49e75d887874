"""The readers of alarm rows take a row only as the service vouches for it, on both databases.

An attacker who can write to the database but holds none of the service's secrets can plant rows
in ``alarms`` and alter any column. What each reader did with such rows: the alarms list and the
incident workspace's alarms to link took the first N rows and dropped the unsealed ones only then
(short or empty pages, the site's own alarms pushed off them); the board took ``status`` as it
stood (an SOS resolved by SQL dropped off it); a voice memo and a duplicate's acknowledgement
went to whatever row held the raise's event id; an alarm's incident linked the items of the
messages of whatever event its row named; ``evidence upgrade-seals`` sealed an unsealed alarm's
keys as they stood; and the clock, an operator's action or a voice memo made a planted provisional
row whole, so the service itself recorded it in custody as a device's alarm."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from alarms import rules
from alarms.models import AlarmRecord
from tests.test_alarms_kit import enrol, later
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, user
from tests.test_planted_alarm_rows import _event_id, _plant_alarm
from tests.test_visit_seals import _sql

_ALARMS = AlarmRecord.__table__


def _whole_sos(services: Any, device: Any, at: datetime) -> str:
    sos = services.alarms.handle(*device.sos(sent_at=at), now=at)
    assert sos.outcome == "accepted" and sos.alarm_id, sos
    services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id, at)
    return str(sos.alarm_id)


def _plant_newer(services: Any, device_id: str, site: str, count: int) -> list[str]:
    """``count`` open alarm rows written by SQL, raised (they say) after everything else."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    return [
        _plant_alarm(
            services,
            device_id,
            str(uuid.uuid4()),
            status="raised",
            site=site,
            raised_at=ahead,
            occurred_at=ahead,
        )
        for _ in range(count)
    ]


# -- 1. the alarms list and the alarms offered for linking ------------------------------------------


def test_alarm_rows_planted_newer_do_not_empty_a_sites_alarm_list(services: Any) -> None:
    """The list took a page of rows by raise time and only then dropped those whose seal does not
    hold: rows written by SQL raised (they say) after the site's own filled the page, which came
    back empty, with no next page. Rows are judged before they count, and paging goes on past them."""
    from ingest.app import create_app

    device = enrol(services, "LW-LP", staff_id="S-LP", site="NORTH")
    now = datetime.now(UTC)
    first = _whole_sos(services, device, now)
    second = _whole_sos(services, device, later(5, now))
    _plant_newer(services, "LW-LP", "NORTH", 3)
    user(services, "north_mgr", "security_manager", "NORTH")
    with TestClient(create_app(services.settings, services)) as client:
        headers = bearer(services, "north_mgr")
        r = client.get("/api/v1/alarms", params={"limit": 1}, headers=headers)
        assert r.status_code == 200, r.text
        assert [a["id"] for a in r.json()] == [second], r.json()
        after = r.headers.get("X-Next-After")
        assert after, r.headers
        r = client.get("/api/v1/alarms", params={"limit": 1, "after": after}, headers=headers)
        assert [a["id"] for a in r.json()] == [first], r.json()
        r = client.get("/api/v1/alarms", params={"limit": 1, "offset": 1}, headers=headers)
        assert [a["id"] for a in r.json()] == [first], r.json()


def test_alarm_rows_planted_newer_do_not_crowd_the_alarms_offered_for_linking(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The incident workspace offered the newest alarms of the manager's sites, its places taken
    first and the unsealed rows dropped after: planted rows newer than the site's own left the list
    with none of them. Rows are judged before they count."""
    from accounts.service import Principal
    from chain_of_custody.reach_seals import reach_secret
    from console import workspace_sources

    monkeypatch.setattr(workspace_sources, "CANDIDATES", 2)
    device = enrol(services, "LW-LC", staff_id="S-LC", site="NORTH")
    now = datetime.now(UTC)
    first = _whole_sos(services, device, now)
    second = _whole_sos(services, device, later(5, now))
    _plant_newer(services, "LW-LC", "NORTH", 3)
    manager = Principal(0, "sm", "security_manager", "NORTH")
    with services.db.session() as session:
        offered = workspace_sources.alarm_candidates(
            session, manager, str(uuid.uuid4()), reach_secret(services.key)
        )
    assert [a["id"] for a in offered] == [second, first], offered


# -- 2. the board shows an alarm as the service vouches it stands -----------------------------------


def _board(services: Any, username: str) -> list[dict[str, Any]]:
    from ingest.app import create_app

    with TestClient(create_app(services.settings, services)) as client:
        r = client.get("/map/data.json", headers=cookie(services, username))
    assert r.status_code == 200, r.text[:300]
    return list(json.loads(r.text)["alarms"])


def test_an_sos_resolved_in_the_database_stays_on_the_board(services: Any) -> None:
    """Marked resolved by SQL (its seal no longer holds), the SOS dropped off the control room's
    board until the clock's sweep put it back. The board shows it open, as its custody record says,
    to a manager of its site and to a reader of every site."""
    device = enrol(services, "LW-BR", staff_id="S-BR", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    _sql(
        services,
        update(_ALARMS)
        .where(_ALARMS.c.id == alarm_id)
        .values(
            status="resolved",
            resolved_at=later(1, now),
            resolved_by="user:nobody",
            outcome="false_alarm",
            next_deadline=None,
        ),
    )
    user(services, "north_mgr", "security_manager", "NORTH")
    user(services, "admin", "admin")
    for who in ("north_mgr", "admin"):
        board = {a["id"]: a for a in _board(services, who)}
        assert alarm_id in board, (who, board)
        shown = board[alarm_id]
        assert (shown["status"], shown["outcome"], shown["resolved_by"]) == ("raised", None, None), shown


def test_a_resolved_alarm_marked_open_in_the_database_is_not_on_the_board(services: Any) -> None:
    """The other way: an alarm an operator resolved, marked raised again by SQL, came back onto the
    board as open. Its custody record says it is resolved: it is not on the board."""
    device = enrol(services, "LW-BO", staff_id="S-BO", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    services.alarms.lifecycle.act(
        alarm_id, rules.Resolve(by="user:op", at=later(5, now), outcome=rules.Outcome.TEST)
    )
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == alarm_id).values(status="raised"))
    user(services, "admin", "admin")
    assert alarm_id not in {a["id"] for a in _board(services, "admin")}


def test_an_alarm_row_planted_open_is_not_on_the_board_of_a_reader_of_every_site(services: Any) -> None:
    """A row written by SQL, no seal nor custody entry of the service's behind it, was on the board
    of every reader of all sites as an open SOS. It is not; the service's own alarm is."""
    device = enrol(services, "LW-BP", staff_id="S-BP", site="NORTH")
    alarm_id = _whole_sos(services, device, datetime.now(UTC))
    planted = _plant_newer(services, "LW-BP", "NORTH", 1)
    user(services, "admin", "admin")
    shown = [a["id"] for a in _board(services, "admin")]
    assert alarm_id in shown and planted[0] not in shown, shown


# -- 3. a voice memo and a duplicate's acknowledgement -------------------------------------------


def _key_moved_to_a_planted_row(services: Any, device_id: str, alarm_id: str, event_id: str) -> str:
    """The alarm's own key moved away by SQL and a row planted holding it; the planted row's id."""
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == alarm_id).values(source_event_id=str(uuid.uuid4())))
    return _plant_alarm(services, device_id, event_id, status="raised", site="NORTH")


def test_a_voice_memo_does_not_go_to_a_row_planted_with_its_alarms_event_id(services: Any) -> None:
    """The device's memo for its alarm went to whatever row held the alarm's event id: a planted one
    took it, and the service recorded the memo as that row's. The memo is refused as for an alarm not
    there yet (the device sends it again), until the service's own alarm holds its key again."""
    from alarms.voice_memos import VoiceMemoRefused

    device = enrol(services, "LW-VM", staff_id="S-VM", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    event_id = _event_id(raw)
    sos = services.alarms.handle(topic, raw, now=now)
    assert sos.alarm_id is not None
    services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id, now)
    planted = _key_moved_to_a_planted_row(services, "LW-VM", sos.alarm_id, event_id)
    with pytest.raises(VoiceMemoRefused) as refused:
        admission = device.admit_voice_memo(services.alarms, event_id)
        assert admission.alarm_id != planted, admission
    assert refused.value.reason == "alarm_unknown"


def test_a_duplicate_raise_is_not_told_a_planted_row_is_its_alarm(services: Any) -> None:
    """An SOS sent again was acknowledged as a duplicate with the id of whatever row held its event
    id: a planted row, once the alarm's own key was moved away. It names no alarm the service does
    not vouch for."""
    from tests.test_alarms_kit import acks

    device = enrol(services, "LW-DA", staff_id="S-DA", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    event_id = _event_id(raw)
    sos = services.alarms.handle(topic, raw, now=now)
    assert sos.alarm_id is not None
    services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id, now)
    planted = _key_moved_to_a_planted_row(services, "LW-DA", sos.alarm_id, event_id)
    again = services.alarms.handle(topic, raw, now=later(2, now))
    assert again.outcome == "duplicate", again
    assert again.alarm_id != planted, again
    told = [a["alarm_id"] for a in acks(services, "LW-DA") if a["event_id"] == event_id]
    assert planted not in told, told
