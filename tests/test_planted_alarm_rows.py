"""Rows of the alarms table written by SQL are not alarms the service raised, on both databases.

An alarm raised from a device's message holds that message's event id (``source_event_id``, a
unique column), so a row written by SQL holding the event id of an SOS still to come had the
genuine SOS fail to be stored, attempt after attempt, and never raised. The intake now takes an
alarm row holding a raise's event id as the alarm already raised from it only when the service
vouches for its keys (its lifecycle seal, or its custody record); any other row is set aside as it
stood (never deleted), named in a warning, an ``alarm_set_aside`` custody entry and by ``evidence
verify``, and the SOS is raised. An alarm's record lists the device's genuine messages first: rows
written by SQL with early receipt times no longer crowd them out of it."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from alarms.models import AlarmRecord, AlarmSetAside, LoneWorkerEvent
from chain_of_custody.models import CustodyEntry
from tests.test_alarms_kit import acks, enrol, later
from tests.test_incidents_kit import bearer, user
from tests.test_lifecycle_seals import _row
from tests.test_visit_seals import _cli, _sql

_ALARMS = AlarmRecord.__table__


def _event_id(raw: bytes) -> str:
    return str(json.loads(raw)["event_id"])


def _plant_alarm(services: Any, device_id: str, event_id: str, **more: Any) -> str:
    """An alarm row written by SQL holding ``event_id`` as its source; its id."""
    alarm_id = str(uuid.uuid4())
    at = datetime.now(UTC) - timedelta(minutes=1)
    values = {
        "id": alarm_id,
        "device_id": device_id,
        "kind": "sos",
        "severity": "red",
        "status": "resolved",
        "raised_at": at,
        "occurred_at": at,
        "source_event_id": event_id,
        "provisional": False,
        "incident_requested": False,
        "late": False,
        "updated_at": at,
        **more,
    }
    _sql(services, insert(_ALARMS).values(**values))
    return alarm_id


def _set_aside(services: Any) -> list[AlarmSetAside]:
    with services.db.session() as session:
        rows = list(session.scalars(select(AlarmSetAside).order_by(AlarmSetAside.id)))
        for row in rows:
            session.expunge(row)
        return rows


def _entries(services: Any, action: str) -> list[dict[str, Any]]:
    with services.db.session() as session:
        found = session.scalars(select(CustodyEntry.details).where(CustodyEntry.action == action))
        return [json.loads(d) for d in found]


def test_an_alarm_row_planted_with_an_sos_event_id_does_not_stop_the_sos(services: Any) -> None:
    """The SOS is raised and acknowledged with its own alarm; the planted row is set aside as it was,
    named by a custody entry and by verify."""
    device = enrol(services, "LW-AK", staff_id="S-AK", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    event_id = _event_id(raw)
    planted = _plant_alarm(services, "LW-AK", event_id, note="planted")
    raised = services.alarms.handle(topic, raw, now=later(1, now))
    assert (raised.outcome, raised.type) == ("accepted", "alarm"), raised
    assert raised.alarm_id is not None and raised.alarm_id != planted, raised
    row = _row(services, raised.alarm_id)
    assert (row.source_event_id, row.status) == (event_id, "raised")
    ack = [a for a in acks(services, "LW-AK") if a["event_id"] == event_id]
    assert [(a["status"], a["alarm_id"]) for a in ack] == [("received", raised.alarm_id)], ack
    with services.db.session() as session:
        assert session.get(AlarmRecord, planted) is None  # moved aside, not left beside it
    kept = _set_aside(services)
    assert [(k.alarm_id, k.source_event_id, k.device_id) for k in kept] == [(planted, event_id, "LW-AK")]
    columns = json.loads(kept[0].columns)
    assert (columns["note"], columns["status"]) == ("planted", "resolved")
    assert kept[0].sha256 == hashlib.sha256(kept[0].columns.encode()).hexdigest()
    entries = _entries(services, "alarm_set_aside")
    assert [(e["alarm_id"], e["source_event_id"], e["sha256"]) for e in entries] == [
        (planted, event_id, kept[0].sha256)
    ]
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0 and "alarm_set_aside" in found.output, found.output
    assert f"alarm {planted}" in found.output, found.output


def test_an_alarm_row_of_another_device_holding_the_sos_event_id_does_not_stop_it(services: Any) -> None:
    """The unique event id is the whole table's: a row naming another device blocked the SOS too."""
    device = enrol(services, "LW-AO", staff_id="S-AO", site="NORTH")
    enrol(services, "LW-AO2", staff_id="S-AO2", site="SOUTH")
    topic, raw = device.sos()
    planted = _plant_alarm(services, "LW-AO2", _event_id(raw))
    raised = services.alarms.handle(topic, raw)
    assert raised.outcome == "accepted" and raised.alarm_id not in (None, planted), raised
    assert [k.alarm_id for k in _set_aside(services)] == [planted]


def test_planted_event_and_alarm_rows_together_do_not_absorb_the_sos(services: Any) -> None:
    """An event row and an alarm row both planted with the SOS's event id: the event row set aside,
    the alarm row was then taken for the alarm the SOS had raised already, and the SOS acknowledged
    as a duplicate of it, never raised. Both are set aside and the SOS raised."""
    from tests.test_planted_event_rows import _plant_with_id

    device = enrol(services, "LW-AB", staff_id="S-AB", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    event_id = _event_id(raw)
    _plant_with_id(services, "LW-AB", {"kind": "sos", "action": "raise"}, event_id, "alarm")
    planted = _plant_alarm(services, "LW-AB", event_id)
    raised = services.alarms.handle(topic, raw, now=later(1, now))
    assert (raised.outcome, raised.alarm_id is not None) == ("accepted", True), raised
    assert raised.alarm_id != planted
    assert _row(services, raised.alarm_id).source_event_id == event_id
    assert [k.alarm_id for k in _set_aside(services)] == [planted]


def test_a_genuine_alarm_whose_event_row_was_deleted_is_not_raised_twice(services: Any) -> None:
    """The control: an SOS raised, its event row then deleted by SQL, the SOS delivered again after
    its device's replay window was started afresh: its alarm is the service's (its seal holds), so
    the device is told we have it, with that alarm, and nothing is set aside."""
    from sqlalchemy import delete

    from devices.service import enrol_lone_worker

    device = enrol(services, "LW-AG", staff_id="S-AG", site="NORTH")
    now = datetime.now(UTC)
    body = {"kind": "sos", "action": "raise"}
    event_id = str(uuid.uuid4())
    sos = services.alarms.handle(*device.message("alarm", body, event_id=event_id, sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id, sos
    _sql(services, delete(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id))
    with services.db.session() as session:
        enrol_lone_worker(
            session, services.ledger, "LW-AG", device.public_b64, "test", staff_id="S-AG", site="NORTH"
        )
    again = services.alarms.handle(
        *device.message("alarm", body, event_id=event_id, sent_at=later(5, now)), now=later(5, now)
    )
    assert (again.outcome, again.alarm_id) == ("duplicate", sos.alarm_id), again
    assert _set_aside(services) == []


def test_a_genuine_alarm_given_an_upcoming_sos_event_id_keeps_its_row(services: Any) -> None:
    """An alarm the service raised, its source event id changed by SQL to that of an SOS still to
    come: the SOS is raised, and the altered alarm is not moved out of the alarms table (it is the
    service's and may be open): its key is put back to what its custody record says."""
    device = enrol(services, "LW-AR", staff_id="S-AR", site="NORTH")
    now = datetime.now(UTC)
    first = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert first.alarm_id is not None
    services.alarms.lifecycle.make_whole_if_provisional(first.alarm_id)
    original = _row(services, first.alarm_id).source_event_id
    topic, raw = device.sos(sent_at=later(5, now))
    event_id = _event_id(raw)
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == first.alarm_id).values(source_event_id=event_id))
    raised = services.alarms.handle(topic, raw, now=later(5, now))
    assert raised.outcome == "accepted" and raised.alarm_id not in (None, first.alarm_id), raised
    assert _row(services, raised.alarm_id).source_event_id == event_id
    assert _row(services, first.alarm_id).source_event_id == original
    kept = _set_aside(services)
    assert [(k.alarm_id, k.source_event_id, k.moved) for k in kept] == [(first.alarm_id, event_id, False)]


def _plant_messages(services: Any, alarm_id: str, count: int) -> None:
    """``count`` rows written by SQL naming the alarm, received (they say) before anything else."""
    with services.db.session() as session:
        alarm = session.get(AlarmRecord, alarm_id)
        assert alarm is not None
        device, start = alarm.device_id, alarm.raised_at - timedelta(days=1)
        for n in range(count):
            raw = f'{{"n": {n}}}'.encode()
            at = start + timedelta(seconds=n)
            session.add(
                LoneWorkerEvent(
                    event_id=str(uuid.uuid4()),
                    device_id=device,
                    type="alarm",
                    action="cancel",
                    alarm_id=alarm_id,
                    seq=n,
                    occurred_at=at,
                    sent_at=at,
                    received_at=at,
                    topic=f"lw/v1/{device}/alarm",
                    raw=raw,
                    sha256=hashlib.sha256(raw).hexdigest(),
                )
            )


def test_rows_planted_with_early_receipt_times_do_not_crowd_the_device_out_of_the_record(
    services: Any,
) -> None:
    """200 rows naming the alarm, received (they say) a day before it: the record held those and not
    the SOS nor its cancel. The device's messages are listed first; what was left out is flagged."""
    from ingest.app import create_app

    device = enrol(services, "LW-AC", staff_id="S-AC", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    sos = services.alarms.handle(topic, raw, now=now)
    assert sos.alarm_id is not None
    cancel = services.alarms.handle(
        *device.cancel(_event_id(raw), kind="sos", sent_at=later(2, now)), now=later(2, now)
    )
    assert cancel.outcome == "accepted", cancel
    _plant_messages(services, sos.alarm_id, 200)
    user(services, "admin", "admin")
    with TestClient(create_app(services.settings, services)) as client:
        r = client.get(f"/api/v1/alarms/{sos.alarm_id}/record", headers=bearer(services, "admin"))
    assert r.status_code == 200, r.text
    record = r.json()
    genuine = [(m["type"], m["action"], m["holds"]) for m in record["messages"] if m["holds"]]
    assert genuine == [("alarm", "raise", True), ("alarm", "cancel", True)], record["messages"][:3]
    assert len(record["messages"]) == 200 and record["messages_more"] is True


def _whole_sos(services: Any, device: Any, now: datetime) -> str:
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.alarm_id is not None
    services.alarms.lifecycle.make_whole_if_provisional(sos.alarm_id)
    return str(sos.alarm_id)


def test_a_visit_id_written_into_an_alarm_is_not_sealed_when_its_lifecycle_is_put_back(
    services: Any,
) -> None:
    """An SOS given a visit by SQL: the lifecycle seal (which covers it) no longer held, and when the
    alarm was put back to its custody record the row was sealed again with the visit it was given.
    Its keys are put back with its lifecycle, and the entry that records it names what was found."""
    from alarms import rules

    device = enrol(services, "LW-AV", staff_id="S-AV", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == alarm_id).values(visit_id="V-NOT-ITS"))
    services.alarms.lifecycle.act(alarm_id, rules.Acknowledge("user:op", later(5, now)))
    row = _row(services, alarm_id)
    assert (row.visit_id, row.status) == (None, "acknowledged"), (row.visit_id, row.status)
    put_back = [e["put_back"] for e in _entries(services, "alarm_changed") if "put_back" in e]
    assert [p["found"].get("visit_id") for p in put_back] == ["V-NOT-ITS"], put_back


def test_an_alarms_record_does_not_take_another_visits_check_ins_for_its_own(services: Any) -> None:
    """An SOS pointed by SQL at a visit of its device's: its record listed that visit's check-ins,
    signed by the device, as the alarm's own messages. It finds messages by the keys the service
    vouches for."""
    from ingest.app import create_app

    device = enrol(services, "LW-AW", staff_id="S-AW", site="NORTH")
    now = datetime.now(UTC) - timedelta(minutes=10)
    start = services.alarms.handle(*device.checkin_start("V-AW", later(600, now), sent_at=now), now=now)
    end = services.alarms.handle(*device.checkin_end("V-AW", sent_at=later(60, now)), now=later(60, now))
    assert (start.outcome, end.outcome) == ("accepted", "accepted")
    alarm_id = _whole_sos(services, device, later(120, now))
    _sql(services, update(_ALARMS).where(_ALARMS.c.id == alarm_id).values(visit_id="V-AW"))
    user(services, "admin", "admin")
    with TestClient(create_app(services.settings, services)) as client:
        r = client.get(f"/api/v1/alarms/{alarm_id}/record", headers=bearer(services, "admin"))
    assert r.status_code == 200, r.text
    shown = [(m["type"], m["action"]) for m in r.json()["messages"]]
    assert shown == [("alarm", "raise")], shown


def test_a_provisional_alarm_row_planted_is_not_made_whole_and_adopted(services: Any) -> None:
    """A provisional row written by SQL holding an upcoming SOS's event id: the pass that makes
    provisional alarms whole sealed it and recorded it in custody as the device's alarm, so the
    service itself then vouched for its key and the SOS was told it had been raised already. It is
    set aside instead, and the SOS raised."""
    device = enrol(services, "LW-AP", staff_id="S-AP", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    event_id = _event_id(raw)
    planted = _plant_alarm(services, "LW-AP", event_id, status="raised", provisional=True)
    services.alarms.lifecycle.make_provisional_alarms_whole(now=later(1, now))
    assert [e["alarm_id"] for e in _entries(services, "alarm_raised")] == []
    assert [(k.alarm_id, k.moved) for k in _set_aside(services)] == [(planted, True)]
    raised = services.alarms.handle(topic, raw, now=later(2, now))
    assert raised.outcome == "accepted" and raised.alarm_id not in (None, planted), raised


def _sos_while_storage_down(services: Any, device_id: str) -> tuple[Any, Any]:
    """(an alarm service, the result of an SOS it took while object storage was down)."""
    from alarms.service import AlarmService
    from storage.objects import ObjectStore

    real = services.store
    services.store = ObjectStore(
        "127.0.0.1:9", "x", "y", bucket=real.bucket, staging_bucket="s", timeout_seconds=1
    )
    try:
        alarms = AlarmService(services)
        device = enrol(services, device_id, staff_id=f"S-{device_id}", site="NORTH")
        sos = alarms.handle(*device.sos())
        assert sos.alarm_id is not None
    finally:
        services.store = real
    return alarms, sos


def test_rows_planted_with_early_receipt_times_do_not_keep_a_payload_from_being_stored(
    sqlite_services: Any,
) -> None:
    """An SOS received while object storage was down waits for its payload to be stored. The pass
    took the first 20 such rows by ``received_at`` and then passed over those that are not the
    service's receipt: 20 planted rows received (they say) a day before kept the SOS's payload
    waiting for ever. The pass counts only receipts of the service's."""
    services = sqlite_services
    alarms, sos = _sos_while_storage_down(services, "LW-AD")
    assert _row(services, sos.alarm_id).evidence_item_id is None
    _plant_messages(services, sos.alarm_id, 20)
    with services.db.session() as session:  # each with a seal, not the service's
        session.execute(
            update(LoneWorkerEvent)
            .where(LoneWorkerEvent.event_id != sos.event_id)
            .values(type="alarm", receipt_seal="0" * 64, alarm_id=None)
        )
    assert alarms.store_deferred_evidence(later(5)) == 1
    assert _row(services, sos.alarm_id).evidence_item_id is not None


def test_alarm_rows_planted_with_early_raise_times_do_not_crowd_a_sites_board(services: Any) -> None:
    """The board took the first open alarms of the site by ``raised_at`` and then dropped those whose
    seal does not hold: rows written by SQL, raised (they say) before any other, filled its places
    and the site's own SOS was not on it. Rows are judged before they count."""
    from accounts.service import Principal
    from console.sources import open_alarms

    device = enrol(services, "LW-AS", staff_id="S-AS", site="NORTH")
    sos = services.alarms.handle(*device.sos())
    assert sos.alarm_id is not None
    for _ in range(3):
        _plant_alarm(services, "LW-AS", str(uuid.uuid4()), status="raised", site="NORTH")
    manager = Principal(0, "sm", "security_manager", "NORTH")
    with services.db.session() as session:
        board = open_alarms(session, manager, services.key, limit=3)
    assert [a["id"] for a in board] == [sos.alarm_id], board
