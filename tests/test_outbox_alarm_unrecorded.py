"""Custody entries that do not hold vouch for nothing, not even for a row being older than seals, on
both databases, by its effects (changes made by SQL behind the service's back, the clock driven by
an explicit "now"). An alarm outbox row whose seal was removed passes for one queued before seals
only if nothing outside it says otherwise, and its alarm's custody entries are one such thing: when
every entry of its alarm had been edited so that none holds, the alarm was taken as recorded
nowhere, the row passed for one queued before seals and the relay posted what someone else wrote,
signed by the service. It is withheld. The same class in what an alarm was raised with (a place
moved with its raise seal removed was taken as raised before seals) and in its lifecycle (an SOS
recorded only by entries that do not hold was due by its row's raise time, moved a day on)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from alarms.models import AlarmOutbox, AlarmRecord
from chain_of_custody.models import CustodyEntry
from tests.test_alarms_kit import WebhookReceiver, later
from tests.test_outbox_seals import _alter, _named, _rows, _sos, _warned
from tests.test_raise_seals import _ELSEWHERE, _PLACE
from tests.test_visit_seals import _sql


def _unhold_entries_of(services: Any, alarm_id: str) -> None:
    """Every custody entry naming the alarm edited (its time), so that none holds."""
    names = CustodyEntry.details.like(f'%"alarm_id":"{alarm_id}"%')
    _sql(services, update(CustodyEntry).where(names).values(at="2020-01-01T00:00:00Z"))


@pytest.mark.parametrize("entries", ["held", "edited"])
def test_an_escalation_whose_seal_was_removed_and_alarms_entries_edited_is_not_sent(
    services: Any, caplog: pytest.LogCaptureFixture, entries: str
) -> None:
    """An escalation's seals removed by SQL (every row's, so none below it holds), its payload
    rewritten and its queueing time put back a year: with its alarm's entries as the service wrote
    them it is withheld (the control); with every one of them edited as well, it was posted."""
    hook = WebhookReceiver()
    try:
        services.settings.escalation_webhook_url = hook.url
        now = datetime.now(UTC)
        _sos(services, "LW-OU0", now - timedelta(minutes=5))  # messages were sealed by then
        alarm_id = _sos(services, "LW-OU1", now)
        services.alarms.make_whole(alarm_id)
        services.alarms.fire_deadlines(later(3600, now))
        (webhook,) = [r.id for r in _rows(services, "webhook", alarm_id)]
        _sql(services, update(AlarmOutbox).values(seal=None, due_seal=None, sent_seal=None))
        forged = json.dumps({"v": 1, "type": "alarm_resolved", "alarm_id": alarm_id}).encode()
        _alter(services, webhook, payload=forged, created_at=now - timedelta(days=365))
        if entries == "edited":
            _unhold_entries_of(services, alarm_id)
        with caplog.at_level(logging.WARNING), httpx.Client(timeout=5) as http:
            assert services.alarms.outbox.send_webhooks(http, later(3601, now)) == 0
        assert hook.calls == []  # posted synchronously: nothing went
        assert _warned(caplog, webhook, logging.ERROR)
        assert "its seal was removed" in _named(services, webhook)
    finally:
        hook.close()


@pytest.mark.parametrize("entries", ["held", "edited"])
def test_an_escalation_of_an_alarm_moved_with_its_seal_removed_and_entries_edited_names_its_place(
    services: Any, entries: str
) -> None:
    """The same class in what an alarm was raised with (``raise_seals``): an SOS's raise seal removed
    by SQL and its place moved to Manchester, with every one of its custody entries edited so none
    holds, was taken as raised before seals (its entries recording nothing), and its escalation,
    signed by the service, sent responders to Manchester. Entries that do not hold vouch for no age:
    it is put back to its device's own signed message, and the escalation names where it was."""
    hook = WebhookReceiver()
    try:
        services.settings.escalation_webhook_url = hook.url
        now = datetime.now(UTC)
        alarm_id = _sos(services, f"LW-OP{entries}", now)
        services.alarms.make_whole(alarm_id)
        _sql(
            services,
            update(AlarmRecord).where(AlarmRecord.id == alarm_id).values(raise_seal=None, **_ELSEWHERE),
        )
        if entries == "edited":
            _unhold_entries_of(services, alarm_id)
        services.alarms.fire_deadlines(later(3600, now))
        (webhook,) = _rows(services, "webhook", alarm_id)
        place = json.loads(webhook.payload)["position"]
        assert place is None or (place["lat"], place["lon"]) == (_PLACE["lat"], _PLACE["lon"]), place
    finally:
        hook.close()


@pytest.mark.parametrize("entries", ["held", "edited"])
def test_an_sos_moved_on_with_its_entries_edited_still_escalates(services: Any, entries: str) -> None:
    """The same class in an alarm's lifecycle (``lifecycle_seals``): an unacknowledged SOS's raise
    time and deadline moved a day on by SQL (its seal broken), with every one of its custody
    entries edited so none holds, was due by its row's raise time, a day on: it never escalated."""
    now = datetime.now(UTC)
    alarm_id = _sos(services, f"LW-OL{entries}", now)
    services.alarms.make_whole(alarm_id)
    moved = later(86400, now)
    _sql(
        services,
        update(AlarmRecord).where(AlarmRecord.id == alarm_id).values(raised_at=moved, next_deadline=moved),
    )
    if entries == "edited":
        _unhold_entries_of(services, alarm_id)
    services.alarms.fire_deadlines(later(3600, now))
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        assert row is not None and row.escalated_at is not None, (row.status, row.next_deadline)
