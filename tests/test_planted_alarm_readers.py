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
from tests.test_lifecycle_seals import _row
from tests.test_planted_alarm_rows import _entries, _event_id, _plant_alarm, _set_aside
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


def _sos_with_its_key_planted(services: Any, device_id: str) -> tuple[Any, str, str, str, tuple[str, bytes]]:
    """A device's whole SOS whose own key was moved away by SQL, and a row planted holding it:
    (the device, the SOS's alarm id, its event id, the planted row's id, the SOS as sent)."""
    device = enrol(services, device_id, staff_id=f"S-{device_id}", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    sos = services.alarms.handle(topic, raw, now=now)
    assert sos.alarm_id is not None
    services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id, now)
    _sql(
        services,
        update(_ALARMS).where(_ALARMS.c.id == sos.alarm_id).values(source_event_id=str(uuid.uuid4())),
    )
    event_id = _event_id(raw)
    planted = _plant_alarm(services, device_id, event_id, status="raised", site="NORTH")
    return device, str(sos.alarm_id), event_id, planted, (topic, raw)


def test_a_voice_memo_does_not_go_to_a_row_planted_with_its_alarms_event_id(services: Any) -> None:
    """The device's memo for its alarm went to whatever row held the alarm's event id: a planted one
    took it, and the service recorded the memo as that row's. The memo is refused as for an alarm not
    there yet (the device sends it again), until the service's own alarm holds its key again."""
    from alarms.voice_memos import VoiceMemoRefused

    device, _, event_id, planted, _ = _sos_with_its_key_planted(services, "LW-VM")
    with pytest.raises(VoiceMemoRefused) as refused:
        admission = device.admit_voice_memo(services.alarms, event_id)
        assert admission.alarm_id != planted, admission
    assert refused.value.reason == "alarm_unknown"


def test_a_duplicate_raise_is_not_told_a_planted_row_is_its_alarm(services: Any) -> None:
    """An SOS sent again was acknowledged as a duplicate with the id of whatever row held its event
    id: a planted row, once the alarm's own key was moved away. It names no alarm the service does
    not vouch for."""
    from tests.test_alarms_kit import acks

    _, _, event_id, planted, (topic, raw) = _sos_with_its_key_planted(services, "LW-DA")
    now = datetime.now(UTC)
    again = services.alarms.handle(topic, raw, now=later(2, now))
    assert again.outcome == "duplicate", again
    assert again.alarm_id != planted, again
    told = [a["alarm_id"] for a in acks(services, "LW-DA") if a["event_id"] == event_id]
    assert planted not in told, told


# -- 6. a planted provisional row is not made whole on the way to the rules -------------------------


def _plant_provisional(services: Any, device_id: str, event_id: str, at: datetime) -> str:
    return _plant_alarm(
        services,
        device_id,
        event_id,
        status="raised",
        provisional=True,
        site="NORTH",
        raised_at=at,
        occurred_at=at,
        ack_due_at=at,
        next_deadline=at,
    )


def _adopted(services: Any, alarm_id: str) -> list[str]:
    """The custody entries that record the row as an alarm of the service's."""
    return [
        e["alarm_id"]
        for action in ("alarm_raised", "alarm_changed")
        for e in _entries(services, action)
        if e.get("alarm_id") == alarm_id
    ]


@pytest.mark.parametrize("way", ["sweep", "deadline", "operator"])
def test_a_planted_provisional_row_is_not_made_whole_by_the_clock_or_an_operator(
    services: Any, way: str
) -> None:
    """A provisional row written by SQL holding an upcoming SOS's event id, due now: the clock's
    sweep, its deadline pass, or an operator acting on it took it to the rules, which made it whole
    first (sealed, recorded in custody as the device's alarm), so the service then vouched for it
    and the SOS was absorbed as its duplicate. It is set aside instead, named by a custody entry,
    and the SOS raised."""
    from alarms.lifecycle import AlarmNotFound

    device = enrol(services, "LW-PW", staff_id="S-PW", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=later(30, now))
    planted = _plant_provisional(services, "LW-PW", _event_id(raw), now)
    if way == "sweep":
        services.alarms.timekeeper.restore_deadlines(later(10, now))
    elif way == "deadline":
        services.alarms.fire_deadlines(later(10, now))
    else:
        with pytest.raises(AlarmNotFound):
            services.alarms.act(planted, rules.Acknowledge("user:op", later(10, now)))
    assert _adopted(services, planted) == []
    assert [(k.alarm_id, k.moved) for k in _set_aside(services)] == [(planted, True)]
    assert [e["alarm_id"] for e in _entries(services, "alarm_set_aside")] == [planted]
    raised = services.alarms.handle(topic, raw, now=later(30, now))
    assert raised.outcome == "accepted" and raised.alarm_id not in (None, planted), raised


# -- 5. an alarm with no lifecycle seal is sealed, or acted on, only with the keys custody records ---


def test_upgrade_seals_refuses_an_unsealed_alarm_whose_keys_are_not_its_custody_records(
    services: Any,
) -> None:
    """``upgrade-seals`` (its seal-lifecycle step) sealed an alarm with no lifecycle seal once its
    status, severity, outcome and deadline were what custody records, its device, source event and
    visit as they stood: a visit written by SQL was then vouched for by the seal (an alarm's record
    lists that visit's check-ins as its own). It refuses such an alarm, naming the key."""
    from tests.test_visit_seals import _cli

    device = enrol(services, "LW-UK", staff_id="S-UK", site="NORTH")
    now = datetime.now(UTC)
    kept, moved = _whole_sos(services, device, now), _whole_sos(services, device, later(5, now))
    _sql(services, update(_ALARMS).where(_ALARMS.c.id.in_([kept, moved])).values(lifecycle_seal=None))
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == moved).values(visit_id="V-NOT-ITS"))
    done = _cli(services, "upgrade-seals", "--yes")
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("alarm ")}
    assert "matches its custody record" in lines[f"alarm {kept}"], done.output
    assert "REFUSED" in lines[f"alarm {moved}"] and "visit" in lines[f"alarm {moved}"], done.output
    assert _row(services, kept).lifecycle_seal is not None and _row(services, moved).lifecycle_seal is None


def test_an_unsealed_alarm_acted_on_has_its_keys_put_back_not_sealed(services: Any) -> None:
    """An alarm with no lifecycle seal whose status is what custody records was taken as it stood
    when an operator acted on it, and sealed so, with a source event written by SQL (its record and
    its incident's links then went by another raise's messages, and the custody entry of the action
    recorded that key as the service's). Its keys are put back to its custody record first."""
    device = enrol(services, "LW-UA", staff_id="S-UA", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    source = _row(services, alarm_id).source_event_id
    elsewhere = str(uuid.uuid4())
    _sql(
        services,
        update(_ALARMS)
        .where(_ALARMS.c.id == alarm_id)
        .values(lifecycle_seal=None, source_event_id=elsewhere),
    )
    services.alarms.act(alarm_id, rules.Acknowledge("user:op", later(5, now)))
    row = _row(services, alarm_id)
    assert (row.source_event_id, row.status) == (source, "acknowledged"), row.source_event_id
    recorded = [
        e["source_event_id"] for e in _entries(services, "alarm_changed") if e["alarm_id"] == alarm_id
    ]
    assert elsewhere not in recorded, recorded


# -- siblings: an alarm put back to its record while a planted row holds its key -----------------------


def test_an_alarm_put_back_to_its_key_that_a_planted_row_holds_still_escalates(services: Any) -> None:
    """An SOS's key moved away by SQL and a row planted holding it: putting the SOS back to its
    custody record put its key back too, which the planted row held (the key is unique), so the
    put-back failed, pass after pass, and the SOS never escalated. The planted row is set aside
    (moved out as it stood, named by a custody entry), the key put back, and the SOS escalates."""
    _, alarm_id, event_id, planted, _ = _sos_with_its_key_planted(services, "LW-KC")
    now = datetime.now(UTC)
    services.alarms.fire_deadlines(later(3600, now))
    row = _row(services, alarm_id)
    assert (row.source_event_id, row.escalation_reason) == (event_id, "ack_timeout"), (
        row.source_event_id,
        row.escalation_reason,
    )
    assert [(k.alarm_id, k.moved) for k in _set_aside(services)] == [(planted, True)]
    assert [e["alarm_id"] for e in _entries(services, "alarm_set_aside")] == [planted]


# -- 7. the clock's readers: a silent device, a trail, a missed check-in ----------------------------


def _resolve_by_sql(services: Any, alarm_id: str, at: datetime) -> None:
    """The alarm marked resolved in the database (after the clock's sweep has looked at it)."""
    _sql(
        services,
        update(_ALARMS)
        .where(_ALARMS.c.id == alarm_id)
        .values(status="resolved", resolved_at=at, resolved_by="user:nobody", outcome="false_alarm"),
    )


def _kinds(services: Any, device_id: str, kind: str) -> list[AlarmRecord]:
    from sqlalchemy import select

    with services.db.session() as session:
        rows = list(
            session.scalars(
                select(AlarmRecord).where(AlarmRecord.device_id == device_id, AlarmRecord.kind == kind)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


@pytest.mark.parametrize("deadline", ["as it was", "cleared"])
def test_an_sos_resolved_in_the_database_does_not_keep_its_silent_device_off_the_watch(
    services: Any, deadline: str
) -> None:
    """A device with an SOS open falls silent: its offline alarm is due. The SOS marked resolved by
    SQL between two sweeps of the clock (its ``offline_due_at`` left, or cleared too) took the device
    off the watch, both when it fell due and when the sweep looked for a deadline cleared, so no
    offline alarm was raised (for good, the column set again after each sweep). The SOS is open as
    its custody record says: the offline alarm is raised."""
    from tests.test_visit_seals import set_state_row

    device = enrol(services, "LW-OW", staff_id="S-OW", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    services.alarms.fire_deadlines(later(1, now))  # the sweep: custody holds the SOS open
    _resolve_by_sql(services, alarm_id, later(2, now))
    if deadline == "cleared":
        set_state_row(services, "LW-OW", offline_due_at=None)
    services.alarms.raise_offline(later(600, now))
    (offline,) = _kinds(services, "LW-OW", "device_offline")
    assert (offline.site, offline.wearer) == ("NORTH", "S-OW"), (offline.site, offline.wearer)


def test_an_alarm_row_planted_open_does_not_put_a_silent_device_on_the_watch(services: Any) -> None:
    """The other way: an SOS row written by SQL, open, made its silent device (on no visit, with no
    alarm open) worth an offline alarm. No seal nor custody entry vouches for it: none is raised."""
    device = enrol(services, "LW-OP", staff_id="S-OP", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(sent_at=now), now=now)
    _plant_newer(services, "LW-OP", "NORTH", 1)
    services.alarms.fire_deadlines(later(1, now))
    services.alarms.raise_offline(later(600, now))
    assert _kinds(services, "LW-OP", "device_offline") == []


def _moved(services: Any, device_id: str, dlat: float) -> None:
    from devices.models import LoneWorkerState

    with services.db.session() as session:
        state = session.get(LoneWorkerState, device_id)
        assert state is not None and state.lat is not None
        state.lat += dlat
        state.position_at = (state.position_at or datetime.now(UTC)) + timedelta(seconds=5)


def _points(services: Any, device_id: str) -> int:
    from sqlalchemy import func, select

    from alarms.models import LoneWorkerPosition

    with services.db.session() as session:
        q = (
            select(func.count())
            .select_from(LoneWorkerPosition)
            .where(LoneWorkerPosition.device_id == device_id)
        )
        return int(session.scalar(q) or 0)


def test_an_sos_resolved_in_the_database_keeps_its_trail(services: Any) -> None:
    """While an SOS is open the clock keeps where its wearer goes (its trail, and a ``moved`` change
    the map follows). Marked resolved by SQL, the SOS's trail stopped: the points while it stayed so
    were never kept. They are, as its custody record says it is open."""
    device = enrol(services, "LW-TK", staff_id="S-TK", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(sent_at=later(-5, now)), now=later(-5, now))  # where it is
    alarm_id = _whole_sos(services, device, now)
    services.alarms.fire_deadlines(later(1, now))
    assert services.alarms.sample_trails(later(2, now)) == 1
    _resolve_by_sql(services, alarm_id, later(3, now))
    _moved(services, "LW-TK", 0.002)
    assert services.alarms.sample_trails(later(4, now)) == 1
    assert _points(services, "LW-TK") == 2


def test_an_sos_resolved_in_the_database_does_not_have_its_trail_forgotten(services: Any) -> None:
    """Trail points past their retention are forgotten, except those of a device with an alarm open:
    an SOS marked resolved by SQL had its trail erased, with no trace. It is kept."""
    from ingest.app import forget_personal_data

    device = enrol(services, "LW-TF", staff_id="S-TF", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(sent_at=later(-5, now)), now=later(-5, now))  # where it is
    alarm_id = _whole_sos(services, device, now)
    services.alarms.sample_trails(later(1, now))
    assert _points(services, "LW-TF") == 1
    _resolve_by_sql(services, alarm_id, later(2, now))
    retention = timedelta(days=services.settings.position_trail_retention_days)
    forget_personal_data(services, now + retention + timedelta(days=1))
    assert _points(services, "LW-TF") == 1


def test_a_row_planted_under_a_visits_missed_checkin_key_silences_no_missed_checkin(services: Any) -> None:
    """A visit whose seal does not hold names a missed check-in only if the service raised one for
    it, found by its dedupe key: a row written by SQL under that key, beside its id written into the
    visit, was taken as raised, and the lone worker's missed check-in never came. It is raised once."""
    from alarms.models import LoneWorkerVisit
    from tests.test_visit_seals import _start

    device = enrol(services, "LW-MK", staff_id="S-MK", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-MK", now)
    planted = _plant_alarm(
        services,
        "LW-MK",
        None,
        kind="missed_checkin",
        severity="amber",
        status="raised",
        site="NORTH",
        visit_id="V-MK",
        dedupe_key="missed_checkin:LW-MK:V-MK",
    )
    _sql(
        services,
        update(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == "V-MK").values(missed_alarm_id=planted),
    )
    assert services.alarms.raise_missed_checkins(later(36 * 60, now)) == 1
    assert services.alarms.raise_missed_checkins(later(40 * 60, now)) == 0  # raised once
    raised = [a.id for a in _kinds(services, "LW-MK", "missed_checkin") if a.id != planted]
    assert len(raised) == 1, raised


def test_a_lone_worker_whose_sos_was_resolved_in_the_database_is_not_listed_as_safe(services: Any) -> None:
    """The lone workers' list and the console's fleet count each device's open alarms: by the status
    column, a worker whose SOS was marked resolved by SQL was listed with none open (as safe), and a
    worker with a row planted open, with one. Each counts the alarms open as the service vouches."""
    from accounts.service import Principal
    from console.sources import fleet

    device = enrol(services, "LW-LS", staff_id="S-LS", site="NORTH")
    enrol(services, "LW-LQ", staff_id="S-LQ", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    services.alarms.fire_deadlines(later(1, now))
    _resolve_by_sql(services, alarm_id, later(2, now))
    _plant_newer(services, "LW-LQ", "NORTH", 1)
    listed = {d["id"]: d["open_alarms"] for d in services.alarms.queries.lone_workers()}
    assert (listed["LW-LS"], listed["LW-LQ"]) == (1, 0), listed
    with services.db.session() as session:
        shown = fleet(session, Principal(0, "ad", "admin", None), services.key)
    counted = {d["id"]: d["open_alarms"] for d in shown}
    assert (counted["LW-LS"], counted["LW-LQ"]) == (1, 0), counted


def test_the_open_alarms_list_takes_an_alarm_as_the_service_vouches_it_stands(services: Any) -> None:
    """``GET /api/v1/alarms?open=true`` went by the status column: an SOS marked resolved by SQL was
    not among the open alarms, and a row planted open was. The SOS is listed, as its custody record
    says it stands, and the planted row is not."""
    from ingest.app import create_app

    device = enrol(services, "LW-OL", staff_id="S-OL", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    services.alarms.fire_deadlines(later(1, now))
    _resolve_by_sql(services, alarm_id, later(2, now))
    planted = _plant_newer(services, "LW-OL", "NORTH", 1)
    user(services, "admin", "admin")
    user(services, "north_mgr", "security_manager", "NORTH")
    with TestClient(create_app(services.settings, services)) as client:
        for who in ("admin", "north_mgr"):
            r = client.get("/api/v1/alarms", params={"open": "true"}, headers=bearer(services, who))
            assert r.status_code == 200, r.text
            listed = {a["id"]: a["status"] for a in r.json()}
            assert listed == {alarm_id: "raised"}, (who, listed, planted)


def test_a_low_battery_row_planted_open_does_not_keep_the_devices_own_alarm_open(services: Any) -> None:
    """A charged battery clears the device's low-battery alarm, unless a reading from before it ran
    low: a row written by SQL, open, raised (it says) after the charge, made every reading look
    early, so the device's own alarm stayed open for good (and the planted row was cleared as the
    device's). The device's alarm is cleared; the planted row is left as it is."""
    device = enrol(services, "LW-LB", staff_id="S-LB", site="NORTH")
    now = datetime.now(UTC)
    services.alarms.handle(*device.heartbeat(battery=5, sent_at=now), now=now)
    (own,) = _kinds(services, "LW-LB", "low_battery")
    ahead = later(3600, now)
    planted = _plant_alarm(
        services,
        "LW-LB",
        None,
        kind="low_battery",
        severity="warning",
        status="raised",
        site="NORTH",
        raised_at=ahead,
        occurred_at=ahead,
    )
    services.alarms.handle(*device.heartbeat(battery=95, sent_at=later(10, now)), now=later(10, now))
    shown = {a.id: a.status for a in _kinds(services, "LW-LB", "low_battery")}
    assert shown == {own.id: "resolved", planted: "raised"}, shown
    assert _adopted(services, planted) == []
