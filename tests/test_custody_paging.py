"""An item read hundreds of thousands of times cannot make one request build an answer of that size:
its custody trail comes a page at a time (API and console), and a continuity report over its bounds
is refused, naming the bound, before anything is read or recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chain_of_custody.ledger import TRAIL_PAGE
from incidents.service import IncidentDraft, create_incident, link_evidence
from tests.test_cross_site_reads import OUR_PAGE, cookie, entries
from tests.test_incidents_kit import actions, bearer, store_item, user


def read_many(services: Any, item_id: str, times: int) -> None:
    """``times`` reads of the item on its custody record (as range reads leave them)."""
    with services.db.session() as session:
        for n in range(times):
            services.ledger.append(
                session, "viewed", "user:admin", item_id=item_id, details={"purpose": "view", "range": [n, n]}
            )


@pytest.fixture
def site(sqlite_services: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    from ingest.app import create_app

    user(sqlite_services, "admin", "admin")
    with TestClient(create_app(sqlite_services.settings, sqlite_services)) as client:
        yield client, sqlite_services, bearer(sqlite_services, "admin")


def test_the_trail_comes_a_page_at_a_time_and_says_when_more_follow(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, admin = site
    item = store_item(services)
    read_many(services, item.id, TRAIL_PAGE + 20)
    total = len(actions(services, item.id))
    assert total > TRAIL_PAGE + 20
    trail = f"/api/v1/evidence/{item.id}/custody"
    r = client.get(trail, headers=admin)
    assert r.status_code == 200 and len(r.json()) == TRAIL_PAGE
    assert [e["item_seq"] for e in r.json()] == list(range(1, TRAIL_PAGE + 1))
    assert r.headers["x-custody-next-after"] == str(TRAIL_PAGE)
    assert r.headers["link"] == f'<{trail}?after={TRAIL_PAGE}&limit={TRAIL_PAGE}>; rel="next"'
    # Following the links reads the whole trail once, in order, and the last page links nothing.
    seen: list[int] = []
    url: str | None = f"{trail}?limit=300"
    while url:
        r = client.get(url, headers=admin)
        assert r.status_code == 200 and len(r.json()) <= 300
        seen += [e["item_seq"] for e in r.json()]
        link = r.headers.get("link")
        url = link[1 : link.index(">")] if link else None
    assert seen == list(range(1, total + 1))
    assert "x-custody-next-after" not in r.headers
    # A page beyond the maximum is refused.
    r = client.get(trail, headers=admin, params={"limit": 5001})
    assert r.status_code == 422 and r.json()["reason"] == "invalid_request"
    # The console's custody page pages the same way, and the footage page shows the first page.
    browser = {**cookie(services, "admin"), **OUR_PAGE}
    page = client.get(f"/custody?item={item.id}", headers=browser)
    assert page.status_code == 200
    assert page.text.count('<tr data-action="') == TRAIL_PAGE
    assert f"after={TRAIL_PAGE}" in page.text
    last = client.get(f"/custody?item={item.id}&after={TRAIL_PAGE}", headers=browser)
    assert last.text.count('<tr data-action="') == total - TRAIL_PAGE and 'rel="next"' not in last.text


def test_a_continuity_report_over_its_bounds_is_refused_and_records_nothing(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, admin = site
    busy = store_item(services)
    read_many(services, busy.id, 30)
    quiet = [store_item(services) for _ in range(3)]
    with services.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", datetime.now(UTC) - timedelta(hours=1), "NORTH"),
            "user:admin",
            ledger=services.ledger,
        )
        for item in quiet:
            link_evidence(session, services.ledger, incident.id, item.id, "user:admin", "in the corridor")
        incident_id = incident.id
    settings = services.settings
    saved = (settings.continuity_max_items, settings.continuity_max_entries)
    settings.continuity_max_entries, settings.continuity_max_items = 20, 2
    try:
        for path, cap, limit in [
            (f"/api/v1/evidence/{busy.id}/continuity?format=pdf", "entries", 20),
            (f"/api/v1/evidence/{busy.id}/continuity-statement", "entries", 20),
            (f"/api/v1/incidents/{incident_id}/continuity", "items", 2),
            (f"/api/v1/incidents/{incident_id}/continuity-statement", "items", 2),
        ]:
            before = entries(services)
            r = client.get(path, headers=admin)
            assert r.status_code == 413, (path, r.text)
            body = r.json()
            assert body["reason"] == "report_too_large" and body["detail"]["cap"] == cap, body
            assert body["detail"]["limit"] == limit and str(limit) in body["error"]
            assert entries(services) == before, f"{path}: recorded a read it did not make"
        # Within its bounds a report is made (and is a read of each item).
        before = entries(services)
        assert client.get(f"/api/v1/evidence/{quiet[0].id}/continuity", headers=admin).status_code == 200
        assert entries(services) == before + 1
    finally:
        settings.continuity_max_items, settings.continuity_max_entries = saved
