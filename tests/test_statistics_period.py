"""A statistics table covers at most five years of whole months: with no dates it covers the five
years up to the end of this month (and says so in ``period``), a longer period is refused (422,
``period_too_long``), and a period within the bound is answered as before. The incidents are counted
a chunk at a time into their combinations, never held one per incident. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from incidents.service import IncidentDraft, create_incident
from incidents.statistics import MAX_MONTHS, count, load_fact_counts
from tests.test_incidents_kit import bearer, user


@pytest.fixture
def site(services: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    from ingest.app import create_app

    user(services, "admin", "admin")
    with TestClient(create_app(services.settings, services)) as client:
        yield client, services, bearer(services, "admin")


def _month(at: datetime, later: int, zone: ZoneInfo) -> datetime:
    index = at.year * 12 + at.month - 1 + later
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=zone)


def test_a_table_covers_at_most_five_years(site: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, services, admin = site
    zone = ZoneInfo(services.settings.report_timezone)
    now = datetime.now(UTC).astimezone(zone)
    recent = _month(now, -1, zone) + timedelta(days=3, hours=12)
    old = _month(now, -MAX_MONTHS - 12, zone) + timedelta(days=3, hours=12)
    with services.db.session() as session:
        for at in [recent] * 5 + [old] * 5:
            create_incident(
                session, IncidentDraft("verbal_abuse", at, "NORTH"), "user:admin", ledger=services.ledger
            )

    def table(**params: str) -> Any:
        r = client.get("/api/v1/statistics", params={"by": ["month"], **params}, headers=admin)
        return r

    # No dates: the five years up to the end of this month, which the answer names.
    r = table()
    assert r.status_code == 200, r.text
    body = r.json()
    end = _month(now, 1, zone)
    assert body["period"] == {"since": _month(end, -MAX_MONTHS, zone).isoformat(), "until": end.isoformat()}
    assert [row["month"] for row in body["rows"]] == [recent.strftime("%Y-%m")] and body["total"] == 5

    # Longer periods are refused, whether both ends are given or one is left to its default.
    since_old = _month(old, 0, zone).isoformat()
    for params in ({"since": since_old}, {"since": since_old, "until": end.isoformat()}):
        r = table(**params)
        assert r.status_code == 422 and "period_too_long" in r.text, r.text
    # Five years exactly, and a period long ago: answered, the same as always.
    r = table(since=_month(end, -MAX_MONTHS, zone).isoformat(), until=end.isoformat())
    assert r.status_code == 200 and r.json()["rows"] == body["rows"]
    r = table(since=since_old, until=_month(old, 1, zone).isoformat())
    assert r.status_code == 200, r.text
    assert [(row["month"], row["count"]) for row in r.json()["rows"]] == [(old.strftime("%Y-%m"), 5)]
    r = table(until=_month(old, 1, zone).isoformat())
    assert r.status_code == 200 and r.json()["total"] == 5

    # Read in chunks smaller than the table, the combinations count every incident once.
    with services.db.session() as session:
        small, whole = load_fact_counts(session, chunk=3), load_fact_counts(session)
    assert small == whole and sum(small.values()) == 10
    for by in (["month"], ["site", "category"], ["staff_group", "month"]):
        assert count(small, by) == count(list(whole.elements()), by)
