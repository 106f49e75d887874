"""The alarm outbox sealed (``chain_of_custody.outbox_seals``), on both databases, by its effects, the
relay and the clock driven by an explicit "now" (no sleeps): an acknowledgement or escalation marked
sent, put off or rewritten by SQL is still delivered as the service wrote it (or, rewritten,
withheld rather than sent under the service's name), a warning names the row, the ledger records
it, ``evidence verify`` names it, and ``evidence upgrade-seals`` seals rows queued before seals."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, update

from alarms.models import AlarmOutbox
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.canonical import canonical_json, rfc3339
from chain_of_custody.entries import EntryBody
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry
from tests.test_alarms_kit import WebhookReceiver, enrol, later
from tests.test_visit_seals import _cli, _sql


def _sos(services: Any, device_id: str, now: datetime) -> str:
    device = enrol(services, device_id, staff_id=f"S-{device_id}", site="NORTH")
    sos = services.alarms.handle(*device.sos(sent_at=now), now=now)
    assert sos.outcome == "accepted" and sos.alarm_id
    return str(sos.alarm_id)


def _rows(services: Any, channel: str, alarm_id: str) -> list[AlarmOutbox]:
    with services.db.session() as session:
        q = select(AlarmOutbox).where(AlarmOutbox.channel == channel, AlarmOutbox.alarm_id == alarm_id)
        rows = list(session.scalars(q.order_by(AlarmOutbox.id)))
        session.expunge_all()
        return rows


def _ack(services: Any, alarm_id: str) -> int:
    (ack,) = [r for r in _rows(services, "mqtt", alarm_id) if r.target.endswith("/ack")]
    return ack.id


def _alter(services: Any, outbox_id: int, **values: Any) -> None:
    _sql(services, update(AlarmOutbox).where(AlarmOutbox.id == outbox_id).values(**values))


def _warned(caplog: pytest.LogCaptureFixture, outbox_id: int, level: int = logging.WARNING) -> bool:
    return any(r.levelno >= level and getattr(r, "outbox", None) == outbox_id for r in caplog.records)


def _named(services: Any, outbox_id: int) -> str:
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0, found.output
    assert f"outbox row {outbox_id}" in found.output and "alarm_outbox_altered" in found.output, found.output
    return str(found.output)


def _recorded(services: Any, outbox_id: int) -> bool:
    with services.db.session() as session:
        details = session.scalars(select(CustodyEntry.details).where(CustodyEntry.action == "alarm_changed"))
        return any(json.loads(d).get("outbox_put_back", {}).get("outbox") == outbox_id for d in details)


def test_an_ack_marked_sent_in_the_database_is_still_sent(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone worker's SOS acknowledgement, claimed once by the relay (not yet delivered) and then
    marked sent by SQL, was never sent again: the device never heard its SOS was received."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, "LW-O1", now)
    ack = _ack(services, alarm_id)
    assert ack in [r.id for r in services.alarms.claim_outbox("mqtt", now)]
    _alter(services, ack, sent_at=later(1, now))
    with caplog.at_level(logging.WARNING):  # (the command line below sets logging up afresh)
        claimed = services.alarms.claim_outbox("mqtt", later(60, now))
    assert ack in [r.id for r in claimed]
    assert _warned(caplog, ack) and _recorded(services, ack)
    services.alarms.mark_sent([ack], later(61, now))
    assert "custody entry" in _named(services, ack)  # the record of what was found stays


def test_an_ack_marked_sent_long_ago_in_the_database_is_not_purged_but_sent(services: Any) -> None:
    """Marked sent a month ago by SQL, the row was deleted by the next purge, with nothing left to
    find."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, "LW-O2", now)
    ack = _ack(services, alarm_id)
    _alter(services, ack, sent_at=now - timedelta(days=30))
    _named(services, ack)
    services.alarms.purge(later(1, now))
    assert ack in [r.id for r in services.alarms.claim_outbox("mqtt", later(2, now))]


def test_an_escalation_put_off_in_the_database_is_due_by_its_seal(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The control room's escalation message, its due time pushed a year on by SQL, was held back
    for a year."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, "LW-O3", now)
    services.alarms.make_whole(alarm_id)
    services.alarms.fire_deadlines(later(3600, now))
    (escalation,) = [r.id for r in _rows(services, "mqtt", alarm_id) if "escalations" in r.target]
    _alter(services, escalation, next_attempt_at=later(365 * 86400, now))
    with caplog.at_level(logging.WARNING):
        claimed = services.alarms.claim_outbox("mqtt", later(3601, now))
    assert escalation in [r.id for r in claimed]
    assert _warned(caplog, escalation) and _recorded(services, escalation)
    _named(services, escalation)


def test_an_escalation_rewritten_in_the_database_is_not_sent_under_the_services_name(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An escalation webhook whose payload was rewritten by SQL was posted, signed by the service,
    saying what someone else wrote (here: another alarm, nobody's site)."""
    hook = WebhookReceiver()
    try:
        services.settings.escalation_webhook_url = hook.url
        now = datetime.now(UTC)
        alarm_id = _sos(services, "LW-O4", now)
        services.alarms.make_whole(alarm_id)
        services.alarms.fire_deadlines(later(3600, now))
        (webhook,) = [r.id for r in _rows(services, "webhook", alarm_id)]
        forged = json.dumps({"v": 1, "type": "alarm_escalated", "alarm_id": "someone-else"}).encode()
        _alter(services, webhook, payload=forged)
        with caplog.at_level(logging.WARNING), httpx.Client(timeout=5) as http:
            assert services.alarms.outbox.send_webhooks(http, later(3601, now)) == 0
        assert hook.calls == []  # posted synchronously: nothing went
        assert _warned(caplog, webhook, logging.ERROR) and _recorded(services, webhook)
        _named(services, webhook)
    finally:
        hook.close()


def _queued_before_seals(services: Any, device_id: str, at: datetime, sent: datetime | None = None) -> int:
    """An acknowledgement queued (and perhaps sent) before messages were sealed: no seal, no alarm
    (an acknowledgement of a check-in), queued before the ledger's first alarm entry."""
    values = {
        "channel": "mqtt",
        "target": f"lw/v1/{device_id}/ack",
        "payload": json.dumps({"v": 1, "status": "accepted"}).encode(),
        "qos": 1,
        "alarm_id": None,
        "created_at": at,
        "next_attempt_at": at,
        "attempts": 0,
        "sent_at": sent,
    }
    _sql(services, insert(AlarmOutbox).values(**values))
    with services.db.session() as session:
        return int(session.scalar(select(AlarmOutbox.id).where(AlarmOutbox.target == values["target"])) or 0)


def test_upgrade_seals_seals_outbox_rows_queued_before_seals(services: Any) -> None:
    """Rows queued before seals (none) are taken as they stand, a delivered one is not sent again,
    and ``upgrade-seals`` seals them; a seal removed from a row queued after seals began is found."""
    now = datetime.now(UTC)
    first = _queued_before_seals(services, "LW-O5", now - timedelta(hours=2), sent=now - timedelta(hours=2))
    second = _queued_before_seals(services, "LW-O6", now - timedelta(hours=1))
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["alarm_outbox"] == 2
    verified = _cli(services, "verify", "--json")
    assert verified.exit_code == 0 and "no seal yet" in verified.output, verified.output
    assert [r.id for r in services.alarms.claim_outbox("mqtt", later(1, now))] == [second]
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert upgraded.exit_code == 0 and f"outbox row {first}" in upgraded.output, upgraded.output
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["alarm_outbox"] == 0
    assert _cli(services, "verify", "--json").exit_code == 0
    third = _ack(services, _sos(services, "LW-O7", later(2, now)))
    _alter(services, third, seal=None, sent_at=later(3, now))
    _named(services, third)


@pytest.mark.parametrize("backdated", [False, True])
def test_upgrade_refuses_a_row_whose_seal_was_removed_after_seals_began(
    services: Any, backdated: bool
) -> None:
    """An escalation's seal set to NULL by SQL (its due and sent marks too, so nothing is left
    above it to tell), then its payload rewritten: ``upgrade-seals`` sealed it as a row queued
    before seals, and the relay then sent, under the service's name, what someone else wrote. Its
    alarm's custody entries were written once messages were sealed, and the ledger cannot be moved:
    it is refused, withheld, and named, even with its queueing time put back a year."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, "LW-O8", now)
    services.alarms.make_whole(alarm_id)
    services.alarms.fire_deadlines(later(3600, now))
    (escalation,) = [r.id for r in _rows(services, "mqtt", alarm_id) if "escalations" in r.target]
    with services.db.session() as session:  # every seal removed: no row left whose seal holds
        session.execute(update(AlarmOutbox).values(seal=None, due_seal=None, sent_seal=None))
    forged = json.dumps({"v": 1, "type": "alarm_escalated", "alarm_id": "someone-else"}).encode()
    _alter(services, escalation, payload=forged)
    if backdated:
        _alter(services, escalation, created_at=now - timedelta(days=365))
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert upgraded.exit_code == 1, upgraded.output
    assert f"outbox row {escalation} (mqtt, unsent): refused" in upgraded.output, upgraded.output
    (row,) = [r for r in _rows(services, "mqtt", alarm_id) if r.id == escalation]
    assert row.seal is None
    assert escalation not in [r.id for r in services.alarms.claim_outbox("mqtt", later(3601, now))]
    assert "its seal was removed" in _named(services, escalation)


def test_after_the_upgrade_no_row_without_a_seal_passes_for_one_queued_before(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Once ``upgrade-seals`` had sealed the rows queued before seals, a row written by SQL with no
    seal, no alarm, a time long past and an id below every sealed row still passed for one queued
    before seals: it was sent under the service's name ("stand down" to a device). The upgrade's
    ``outbox_sealed`` entry, signed on the ledger, now says no such row is left: it is withheld,
    warned of and named by ``evidence verify``."""
    now = datetime.now(UTC)
    older = _queued_before_seals(services, "LW-OA", now - timedelta(hours=1))
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert upgraded.exit_code == 0, upgraded.output
    assert [r.id for r in services.alarms.claim_outbox("mqtt", later(1, now))] == [older]
    services.alarms.outbox.mark_sent([older], later(1, now))
    _ack(services, _sos(services, "LW-OB", later(2, now)))  # a sealed row above it
    planted = {
        "channel": "mqtt",
        "target": "lw/v1/LW-OB/ack",
        "payload": json.dumps({"v": 1, "status": "stand_down"}).encode(),
        "qos": 1,
        "alarm_id": None,
        "created_at": now - timedelta(days=365),
        "next_attempt_at": now - timedelta(days=365),
        "attempts": 0,
        "sent_at": None,
    }
    _sql(services, delete(AlarmOutbox).where(AlarmOutbox.id == older))  # purged: its id is free
    _sql(services, insert(AlarmOutbox).values(id=older, **planted))
    with caplog.at_level(logging.WARNING):
        services.alarms.outbox.watch.sweep(later(3, now))
        claimed = [r.id for r in services.alarms.claim_outbox("mqtt", later(4, now))]
    assert older not in claimed, claimed
    assert "sealed by the upgrade" in _named(services, older)


def test_the_watch_sees_rows_queued_under_ids_given_again(services: Any) -> None:
    """On SQLite the purge emptied the outbox and the next row took the id of the last one the
    watch had passed: its cursor stood above it, so an acknowledgement then marked sent by SQL was
    never looked at, and never sent."""
    now = datetime.now(UTC)
    first = _ack(services, _sos(services, "LW-O9", now))
    services.alarms.mark_sent([first], now)
    services.alarms.claim_outbox("mqtt", later(200, now))  # a sweep: its cursor passes the row
    services.alarms.purge(later(200, now), keep=timedelta(0))
    ack = _ack(services, _sos(services, "LW-O10", later(300, now)))  # (on SQLite: the same id)
    _alter(services, ack, sent_at=later(301, now))
    assert ack in [r.id for r in services.alarms.claim_outbox("mqtt", later(600, now))]


def test_a_sent_mark_copied_onto_another_row_does_not_hold(services: Any) -> None:
    """A delivered row deleted and its kept sent mark copied onto an undelivered one under its id
    (as SQLite gives an id again once the purge has emptied the table): the mark was bound to the
    id alone, so the new acknowledgement counted as delivered and was never sent."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, "LW-O11", now)
    first = _ack(services, alarm_id)
    services.alarms.mark_sent([first], now)
    (kept,) = [r for r in _rows(services, "mqtt", alarm_id) if r.id == first]
    second = _ack(services, _sos(services, "LW-O12", later(1, now)))
    _sql(services, delete(AlarmOutbox).where(AlarmOutbox.id == first))
    _alter(services, second, id=first, sent_at=kept.sent_at, sent_seal=kept.sent_seal)
    assert "marked sent without the service's seal" in _named(services, first)
    assert first in [r.id for r in services.alarms.claim_outbox("mqtt", later(60, now))]


def forged_below(services: Any, at: datetime, action: str, details: dict[str, Any]) -> int:
    """A custody entry written by SQL below every entry the service wrote (seq 0, free), dated
    ``at``, hashed as the service would and signed with a key of the writer's own: read first by
    every scan of the ledger in order."""
    body = EntryBody(
        seq=0,
        id=str(uuid.uuid4()),
        at=rfc3339(at),
        action=action,
        actor="service",
        item_id=None,
        item_seq=None,
        details=canonical_json(details).decode(),
        prev_hash="0" * 64,
        item_prev_hash=None,
        key_id=services.key.key_id,
    )
    row = CustodyEntry(**{k: getattr(body, k) for k in body.__dataclass_fields__})
    row.entry_hash, row.signature = (
        body.digest(),
        ServiceKey(Ed25519PrivateKey.generate()).sign(body.canonical()),
    )
    with services.db.session() as session:
        session.add(row)
    return body.seq


def test_a_forged_entry_dating_seals_back_withholds_no_message_queued_before(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An alarm entry recording a note and position, written by SQL below the ledger's entries and
    dated before any message: when seals began was read from it, so the acknowledgements queued
    before seals were taken as rows whose seal was removed, withheld and refused by the upgrade.
    Only entries that hold say when seals began: it is named and passed over."""
    now = datetime.now(UTC)
    forged = forged_below(
        services,
        now - timedelta(days=1),
        "alarm_raised",
        {"alarm_id": "A-forged", "note": None, "position": None, "status": "raised"},
    )
    older = _queued_before_seals(services, "LW-OC", now - timedelta(hours=1))
    with caplog.at_level(logging.WARNING):
        assert [r.id for r in services.alarms.claim_outbox("mqtt", later(1, now))] == [older]
    assert any(getattr(r, "entry", None) == forged for r in caplog.records)
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert f"outbox row {older} (mqtt, unsent): sealed as it stands" in upgraded.output, upgraded.output


def test_a_forged_first_entry_of_an_alarm_passes_no_row_whose_seal_was_removed(services: Any) -> None:
    """An escalation's seals removed by SQL, its payload rewritten and its queueing time put back a
    year, and an entry naming its alarm without a note or position written below the ledger's
    entries: the alarm was taken as first recorded before seals, so the upgrade sealed the row as
    it stood and the relay sent what someone else wrote. The forged entry holds nothing: the
    alarm's first entry that holds was written once messages were sealed, and the row is refused."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, "LW-OD", now)
    services.alarms.make_whole(alarm_id)
    services.alarms.fire_deadlines(later(3600, now))
    (escalation,) = [r.id for r in _rows(services, "mqtt", alarm_id) if "escalations" in r.target]
    with services.db.session() as session:
        session.execute(update(AlarmOutbox).values(seal=None, due_seal=None, sent_seal=None))
    forged = json.dumps({"v": 1, "type": "alarm_escalated", "alarm_id": "someone-else"}).encode()
    _alter(services, escalation, payload=forged, created_at=now - timedelta(days=365))
    forged_below(
        services, now - timedelta(days=400), "alarm_raised", {"alarm_id": alarm_id, "status": "raised"}
    )
    upgraded = _cli(services, "upgrade-seals", "--yes")
    assert f"outbox row {escalation} (mqtt, unsent): refused" in upgraded.output, upgraded.output
    (row,) = [r for r in _rows(services, "mqtt", alarm_id) if r.id == escalation]
    assert row.seal is None
    assert escalation not in [r.id for r in services.alarms.claim_outbox("mqtt", later(3601, now))]
