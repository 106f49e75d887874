"""The deadlines that decide when a lone worker's timer alarm fires, against a change made in the
database behind the service's back, on both databases, by its effects: the clock is driven by an
explicit "now" (no sleeps), and a deadline cleared or moved by SQL must not silence the alarm.

- a visit's missed check-in is due by its expected end (``chain_of_custody.visit_seals``): the
  visit's seal covers its expected end and its end, a visit whose seal does not hold is taken at
  what its custody entries record, its missed check-in is still raised, a warning names it, and
  ``evidence verify`` names the alteration;
- a device's offline alarm is driven by ``offline_due_at`` (put back by the clock's sweep) and
  ``last_seen_at`` (sealed: ``chain_of_custody.heard_seals``, tests/test_heard_seals.py), and an
  alarm's escalation by ``alarms.next_deadline`` (put back from its lifecycle columns, which no
  seal covers yet: strict xfails, the hole shown)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from alarms import rules
from alarms.models import AlarmOutbox, AlarmRecord, LoneWorkerVisit
from alarms.visits import UNVOUCHED_NOTE
from chain_of_custody.models import CustodyEntry
from chain_of_custody.visit_seals import visit_seal_v1
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_outbox_seals import forged_below
from tests.test_sweep_custody import forged_on_tip
from tests.test_visit_seals import _cli, _sql, set_state_row


def _visit(visit_id: str, **values: Any) -> Any:
    return update(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == visit_id).values(**values)


def _start(services: Any, device: DeviceKit, visit_id: str, now: datetime) -> None:
    start = device.checkin_start(visit_id, now + timedelta(minutes=30), sent_at=now)
    assert services.alarms.handle(*start, now=now).outcome == "accepted"


def _alarms(services: Any, device_id: str, kind: str) -> list[AlarmRecord]:
    with services.db.session() as session:
        q = select(AlarmRecord).where(AlarmRecord.device_id == device_id, AlarmRecord.kind == kind)
        return list(session.scalars(q))


def _warned_of(caplog: pytest.LogCaptureFixture, visit_id: str) -> bool:
    return any(r.levelno == logging.WARNING and getattr(r, "visit", None) == visit_id for r in caplog.records)


# -- a visit's missed check-in --------------------------------------------------------------------


def test_a_visit_runs_over_and_its_missed_checkin_is_raised_once(services: Any) -> None:
    """The control: due 30 min after the start plus the grace period, raised once, on time."""
    device = enrol(services, "LW-D0", staff_id="S-0", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D0", now)
    assert services.alarms.raise_missed_checkins(later(20 * 60, now)) == 0
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    [missed] = _alarms(services, "LW-D0", "missed_checkin")
    assert (missed.wearer, missed.note) == ("S-0", None)
    services.alarms.raise_missed_checkins(later(40 * 60, now))
    assert len(_alarms(services, "LW-D0", "missed_checkin")) == 1


def test_a_visit_deadline_cleared_in_the_database_silences_no_missed_checkin(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``due_at`` set to NULL by SQL took the visit off the clock: no missed check-in ever."""
    device = enrol(services, "LW-D1", staff_id="S-1", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D1", now)
    _sql(services, _visit("V-D1", due_at=None))
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_missed_checkins(later(36 * 60, now))
    [missed] = _alarms(services, "LW-D1", "missed_checkin")
    assert missed.visit_id == "V-D1" and missed.wearer == "S-1", (missed.visit_id, missed.wearer)
    assert _warned_of(caplog, "V-D1")


def test_a_visit_deadline_moved_in_the_database_silences_no_missed_checkin(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``due_at`` and ``expected_end`` moved a day on by SQL: the missed check-in is raised when
    the expected end the device sent (and custody recorded) runs over, nobody's, with a note."""
    device = enrol(services, "LW-D2", staff_id="S-2", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D2", now)
    _sql(services, _visit("V-D2", due_at=later(86400, now), expected_end=later(86400, now)))
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_missed_checkins(later(36 * 60, now))
    [missed] = _alarms(services, "LW-D2", "missed_checkin")
    assert (missed.visit_id, missed.wearer, missed.note) == ("V-D2", None, UNVOUCHED_NOTE)
    assert _warned_of(caplog, "V-D2")


def test_a_visit_ended_in_the_database_silences_no_missed_checkin(services: Any) -> None:
    """``ended_at`` written by SQL (no end check-in ever came) made the visit look over."""
    device = enrol(services, "LW-D3", staff_id="S-3", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D3", now)
    _sql(services, _visit("V-D3", ended_at=later(60, now), due_at=None))
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [a.visit_id for a in _alarms(services, "LW-D3", "missed_checkin")] == ["V-D3"]


def test_a_visit_ended_in_the_database_with_a_forged_end_checkin_silences_no_missed_checkin(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``ended_at`` written by SQL, and a ``visit_changed`` entry recording an end check-in written
    on the ledger by SQL (signed with a key of the writer's own): the visit whose seal did not hold
    was taken as ended by what that entry said, and its missed check-in was never raised. Only
    entries that hold record a visit's end: it is named and passed over, and the alarm is raised."""
    device = enrol(services, "LW-D4", staff_id="S-4", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D4", now)
    ended = {"visit": "V-D4", "device": "LW-D4", "checkin": "end", "unsealed": True}
    forged = forged_below(services, later(60, now), "visit_changed", ended)
    _sql(services, _visit("V-D4", ended_at=later(60, now), due_at=None))
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [a.visit_id for a in _alarms(services, "LW-D4", "missed_checkin")] == ["V-D4"]
    assert any(getattr(r, "entry", None) == forged for r in caplog.records)


def test_verify_names_a_visit_whose_deadline_was_moved_in_the_database(services: Any) -> None:
    device = enrol(services, "LW-D4", staff_id="S-4", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D4", now)
    assert _cli(services, "verify", "--json").exit_code == 0
    _sql(services, _visit("V-D4", expected_end=later(86400, now)))
    r = _cli(services, "verify", "--json")
    assert r.exit_code != 0
    assert "visit V-D4 of device LW-D4" in r.output and "visit_seal_broken" in r.output, r.output
    assert "visit_deadline_altered" in r.output, r.output


# -- the holes left (not sealed yet) --------------------------------------------------------------


@pytest.mark.parametrize("altered", ["offline_due_at", "last_seen_at"])
def test_an_offline_deadline_changed_in_the_database_silences_no_offline_alarm(
    services: Any, altered: str
) -> None:
    """A unit on a visit falls silent: ``offline_due_at`` cleared, or ``last_seen_at`` moved a day
    on, by SQL took it off the clock."""
    device = enrol(services, "LW-D5", staff_id="S-5", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-D5", now)
    services.alarms.handle(*device.heartbeat(sent_at=later(10, now)), now=later(10, now))
    set_state_row(services, "LW-D5", **{altered: None if altered == "offline_due_at" else later(86400, now)})
    services.alarms.raise_offline(later(600, now))
    assert len(_alarms(services, "LW-D5", "device_offline")) == 1


@pytest.mark.parametrize("deadline", [None, "a day on"])
def test_an_escalation_deadline_changed_in_the_database_silences_no_escalation(
    services: Any, deadline: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """An SOS nobody acknowledges escalates when its acknowledgement is overdue: its
    ``next_deadline`` cleared, or moved a day on, by SQL took it off the clock."""
    device = enrol(services, "LW-D7", staff_id="S-7", site="NORTH")
    now = datetime.now(UTC)
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id
    services.alarms.make_whole(sos.alarm_id)
    moved = None if deadline is None else later(86400, now)
    _sql(services, update(AlarmRecord).where(AlarmRecord.id == sos.alarm_id).values(next_deadline=moved))
    with caplog.at_level(logging.WARNING):
        services.alarms.fire_deadlines(later(3600, now))
    with services.db.session() as session:
        row = session.get(AlarmRecord, sos.alarm_id)
        assert row is not None and row.escalated_at is not None, row.status
        assert row.escalation_reason == "ack_timeout", row.escalation_reason
    assert any(
        getattr(r, "alarm", None) == sos.alarm_id and "deadline" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("altered", ["acknowledged", "ack due a day on", "resolved"])
def test_an_alarms_lifecycle_changed_in_the_database_silences_no_escalation(
    services: Any, altered: str
) -> None:
    """An SOS nobody acknowledges: its lifecycle columns (and with them its ``next_deadline``) set
    by SQL to acknowledged, to an acknowledgement due a day on, or to resolved, took it off the
    clock, and the sweep that puts deadlines back reads the same columns."""
    device = enrol(services, "LW-D16", staff_id="S-16", site="NORTH")
    now = datetime.now(UTC)
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id
    services.alarms.make_whole(sos.alarm_id)
    values: dict[str, Any] = {
        "acknowledged": {"status": "acknowledged", "acknowledged_at": later(5, now), "ack_due_at": None},
        "ack due a day on": {"ack_due_at": later(86400, now)},
        "resolved": {"status": "resolved", "resolved_at": later(5, now), "ack_due_at": None},
    }[altered]
    moved = values.get("ack_due_at")
    _sql(
        services,
        update(AlarmRecord).where(AlarmRecord.id == sos.alarm_id).values(next_deadline=moved, **values),
    )
    services.alarms.fire_deadlines(later(3600, now))
    with services.db.session() as session:
        row = session.get(AlarmRecord, sos.alarm_id)
        assert row is not None and row.escalated_at is not None, row.status


def _seal_as_version_1(services: Any, visit_id: str) -> None:
    """The row as a service before deadlines were sealed left it: under a version 1 seal."""
    with services.db.session() as session:
        v = session.scalars(select(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == visit_id)).one()
        secret = services.alarms.visits.secret
        v.seal = visit_seal_v1(secret, v.device_id, v.visit_id, v.wearer, v.missed_alarm_id)


def test_upgrade_seals_adopts_version_1_visits_whose_deadline_the_ledger_bears_out(services: Any) -> None:
    """Visits sealed before deadlines were covered hold a version 1 seal: ``upgrade-seals --yes``
    seals again those whose expected end and end are the ones their check-ins recorded, and refuses
    one whose expected end was moved in the database (its missed check-in is still raised on time,
    by the recorded one, and nobody's)."""
    kept_device = enrol(services, "LW-D8", staff_id="S-8", site="NORTH")
    moved_device = enrol(services, "LW-D9", staff_id="S-9", site="NORTH")
    now = datetime.now(UTC)
    _start(services, kept_device, "V-D8", now)
    _start(services, moved_device, "V-D9", now)
    for visit_id in ("V-D8", "V-D9"):
        _seal_as_version_1(services, visit_id)
    _sql(services, _visit("V-D9", expected_end=later(86400, now), due_at=later(86400, now)))
    listed = _cli(services, "upgrade-seals")
    assert "seal-visits" in listed.output and "visit V-D8 of device LW-D8" in listed.output, listed.output
    done = _cli(services, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # a step refused a row: the moved visit
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("visit ")}
    assert "matches its custody record" in lines["visit V-D8 of device LW-D8"], done.output
    assert "REFUSED" in lines["visit V-D9 of device LW-D9"], done.output
    assert "expected end" in lines["visit V-D9 of device LW-D9"], done.output
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [a.wearer for a in _alarms(services, "LW-D8", "missed_checkin")] == ["S-8"]
    assert [(a.wearer, a.note) for a in _alarms(services, "LW-D9", "missed_checkin")] == [
        (None, UNVOUCHED_NOTE)
    ]


def test_upgrade_seals_seals_no_visit_a_forged_end_checkin_bears_out(services: Any) -> None:
    """A visit's seal cleared and its row ended by SQL, with a ``visit_changed`` entry recording an
    end check-in written on the ledger's tip (signed with a key of the writer's own):
    ``upgrade-seals`` took the forged entry as its custody record and sealed the visit ended as it
    stood, and its missed check-in was never raised. Only entries that hold bear a row out: it is
    refused, left unsealed, and its missed check-in is raised."""
    device = enrol(services, "LW-DF", staff_id="S-F", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-DF", now)
    forged_on_tip(services, "visit_changed", {"visit": "V-DF", "device": "LW-DF", "checkin": "end"})
    _sql(services, _visit("V-DF", seal=None, ended_at=later(60, now), due_at=None))
    done = _cli(services, "upgrade-seals", "--yes")
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("visit ")}
    assert "REFUSED" in lines["visit V-DF of device LW-DF"], done.output
    with services.db.session() as session:
        q = select(LoneWorkerVisit.seal).where(LoneWorkerVisit.visit_id == "V-DF")
        assert session.scalars(q).one() is None
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [a.visit_id for a in _alarms(services, "LW-DF", "missed_checkin")] == ["V-DF"]


def test_an_alarms_custody_entries_record_the_deadline_it_is_then_due_by(services: Any) -> None:
    """The service's own record of when an alarm is due: an unacknowledged SOS's raise records its
    acknowledgement deadline, and its acknowledgement records none."""
    device = enrol(services, "LW-D10", staff_id="S-10", site="NORTH")
    now = datetime.now(UTC)
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id
    services.alarms.make_whole(sos.alarm_id)
    services.alarms.act(sos.alarm_id, rules.Acknowledge(by="user:op", at=later(5, now)))
    with services.db.session() as session:
        entries = session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.action.in_(("alarm_raised", "alarm_changed")))
            .order_by(CustodyEntry.seq)
        )
        said = [json.loads(e.details) for e in entries]
    said = [d for d in said if d.get("alarm_id") == sos.alarm_id]
    raised = datetime.fromisoformat(said[0]["accepted_at"])
    due = datetime.fromisoformat(said[0]["deadline"])
    assert due == raised + timedelta(seconds=services.alarms.policy.ack_timeout_s), said[0]
    assert said[-1]["deadline"] is None, said[-1]


def test_an_escalation_webhook_pointed_elsewhere_in_the_database_goes_to_the_configured_one(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Who is told: an escalation's webhook row re-pointed by SQL at another address would hand the
    escalation, signed by the service, to whoever listens there, and the control room's webhook
    would hear nothing."""
    from tests.test_alarms_kit import WebhookReceiver

    hook, elsewhere = WebhookReceiver(), WebhookReceiver()
    try:
        services.settings.escalation_webhook_url = hook.url
        device = enrol(services, "LW-D11", staff_id="S-11", site="NORTH")
        now = datetime.now(UTC)
        sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
        assert sos.outcome == "accepted" and sos.alarm_id
        services.alarms.fire_deadlines(later(3600, now))
        _sql(
            services, update(AlarmOutbox).where(AlarmOutbox.channel == "webhook").values(target=elsewhere.url)
        )
        with caplog.at_level(logging.WARNING), httpx.Client(timeout=5) as http:
            assert services.alarms.outbox.send_webhooks(http, later(3600, now)) == 1
        ((_, body),) = hook.wait(1)
        assert json.loads(body)["alarm_id"] == sos.alarm_id
        assert elsewhere.calls == []  # posted synchronously: nothing went there
        assert any(
            getattr(r, "alarm", None) == sos.alarm_id for r in caplog.records if r.levelno == logging.WARNING
        )
    finally:
        hook.close()
        elsewhere.close()


# -- one row breaking the clock for every other -----------------------------------------------------


def test_an_alarm_whose_status_is_garbled_in_the_database_silences_no_other_alarms_escalation(
    services: Any,
) -> None:
    """The clock acts on due rows in batches: one alarm row garbled by SQL (a status no rule knows),
    due first, made every pass fail, and no other lone worker's alarm escalated."""
    garbled = enrol(services, "LW-D12", staff_id="S-12", site="NORTH")
    other = enrol(services, "LW-D13", staff_id="S-13", site="NORTH")
    now = datetime.now(UTC)
    first = services.alarms.handle(*garbled.sos(sent_at=now), now=now)
    second = services.alarms.handle(*other.sos(sent_at=later(1, now)), now=later(1, now))
    assert first.alarm_id and second.alarm_id
    _sql(services, update(AlarmRecord).where(AlarmRecord.id == first.alarm_id).values(status="bogus"))
    try:
        services.alarms.fire_deadlines(later(3600, now))
    except Exception:  # noqa: BLE001 - the loop logs and carries on; what matters is the other alarm
        pass
    with services.db.session() as session:
        row = session.get(AlarmRecord, second.alarm_id)
        assert row is not None and row.escalated_at is not None, row.status


def test_a_missed_checkin_key_planted_on_another_alarm_silences_no_missed_checkin(services: Any) -> None:
    """A service-raised alarm's ``dedupe_key`` is unique and unsealed: another alarm given, by SQL,
    the key a visit's missed check-in will take made raising it fail, every pass, and with it the
    missed check-ins of the other visits due in the same batch."""
    planted = enrol(services, "LW-D14", staff_id="S-14", site="NORTH")
    other = enrol(services, "LW-D15", staff_id="S-15", site="NORTH")
    now = datetime.now(UTC)
    sos = services.alarms.handle(*planted.sos(sent_at=now), now=now)
    assert sos.alarm_id
    _start(services, planted, "V-D14", now)
    _start(services, other, "V-D15", later(1, now))
    key = "missed_checkin:LW-D14:V-D14"
    _sql(services, update(AlarmRecord).where(AlarmRecord.id == sos.alarm_id).values(dedupe_key=key))
    try:
        services.alarms.raise_missed_checkins(later(36 * 60, now))
    except Exception:  # noqa: BLE001 - the loop logs and carries on; what matters is the alarms
        pass
    assert [a.visit_id for a in _alarms(services, "LW-D15", "missed_checkin")] == ["V-D15"]
    assert [a.visit_id for a in _alarms(services, "LW-D14", "missed_checkin")] == ["V-D14"]
