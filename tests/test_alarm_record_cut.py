"""An alarm's record holds at most so many of the device's messages and of its trail's points (a
device may check in all day, a fix every few seconds): when there were more, the record says so
(``messages_more``, ``trail_more``) and so does the alarm's page, rather than cutting them off
unseen."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alarms.models import AlarmRecord, LoneWorkerEvent, LoneWorkerPosition
from tests.test_alarms_kit import raise_test_alarm
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, user

MESSAGES = 200  # the caps the record has always had
POINTS = 2000


@pytest.fixture
def site(services: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    from ingest.app import create_app

    user(services, "admin", "admin")
    with TestClient(create_app(services.settings, services)) as client:
        yield client, services, bearer(services, "admin")


def _add(services: Any, alarm_id: str, messages: int, points: int, first: int = 0) -> None:
    """``messages`` more device messages about the alarm and ``points`` fixes since it was raised
    (a trail begins a minute before its alarm), the ``first``-th on, in order."""
    with services.db.session() as session:
        alarm = session.get(AlarmRecord, alarm_id)
        assert alarm is not None
        device, start = alarm.device_id, alarm.raised_at
        for n in range(messages):
            raw = f'{{"n": {n}}}'.encode()
            at = start + timedelta(seconds=first + n)
            session.add(
                LoneWorkerEvent(
                    event_id=str(uuid.uuid4()),
                    device_id=device,
                    type="checkin",
                    action="start",
                    alarm_id=alarm_id,
                    seq=10_000 + first + n,
                    occurred_at=at,
                    sent_at=at,
                    received_at=at,
                    topic=f"lw/v1/{device}/checkin",
                    raw=raw,
                    sha256=hashlib.sha256(raw).hexdigest(),
                )
            )
        for n in range(points):
            session.add(
                LoneWorkerPosition(
                    device_id=device,
                    at=start - timedelta(seconds=55) + timedelta(milliseconds=10 * (first + n)),
                    lat=52.0 + (first + n) / 1000,
                    lon=0.1 + (first + n) / 1000,
                    accuracy_m=5.0,
                )
            )


def test_an_alarm_record_says_when_it_holds_only_the_first_messages_and_points(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, admin = site

    # Within the caps: nothing more to say.
    alarm_id = raise_test_alarm(services)
    _add(services, alarm_id, MESSAGES - 1, POINTS)
    record = client.get(f"/api/v1/alarms/{alarm_id}/record", headers=admin).json()
    assert len(record["messages"]) == MESSAGES  # the raise and the others
    assert record["messages_more"] is False and record["trail_more"] is False
    page = client.get(f"/alarms/{alarm_id}", headers=cookie(services, "admin"))
    assert page.status_code == 200 and "messages-more" not in page.text and "trail-more" not in page.text

    # Beyond them: the first ones, and a flag each.
    _add(services, alarm_id, 2, 2, first=POINTS)
    r = client.get(f"/api/v1/alarms/{alarm_id}/record", headers=admin)
    assert r.status_code == 200, r.text
    record = r.json()
    assert len(record["messages"]) == MESSAGES and record["messages_more"] is True
    assert record["messages"][0]["type"] == "alarm"  # the raise is kept: the earliest come first
    assert record["trail_more"] is True
    assert record["trail"][-1]["lat"] == pytest.approx(52.0 + (POINTS - 1) / 1000)
    page = client.get(f"/alarms/{alarm_id}", headers=cookie(services, "admin"))
    assert page.status_code == 200
    assert 'id="messages-more"' in page.text and 'id="trail-more"' in page.text
    # The page counts the device's points it draws, up to the cap: the alarm's own fix, drawn first,
    # is not one of them.
    assert len(record["trail"]) == POINTS + 1 and record["trail"][0]["at"] == record["alarm"]["occurred_at"]
    note = page.text.split('id="trail-more">', 1)[1].split("</p>", 1)[0]
    assert f"first {POINTS} " in note and str(POINTS + 1) not in note, note
