"""An incident whose clip was read hundreds of thousands of times cannot make one request build an
answer of that size: its history and its timeline come a page at a time (API and console), in the
custody trail's way (``limit``, ``after``, a ``Link: <...>; rel="next"``), and following the links
reads every line once, in order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alarms.models import AlarmRecord
from chain_of_custody.alarm_seals import alarm_seal
from chain_of_custody.ledger import TRAIL_PAGE
from chain_of_custody.reach_seals import reach_secret
from incidents.history import HISTORY_PAGE
from incidents.models import Incident
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_alarms_kit import raise_test_alarm
from tests.test_cross_site_reads import cookie
from tests.test_custody_paging import read_many
from tests.test_incidents_kit import bearer, store_item, user


@pytest.fixture
def site(services: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    """The application on SQLite and on PostgreSQL (the keyset reads compare times and texts in SQL)."""
    from ingest.app import create_app

    user(services, "admin", "admin")
    with TestClient(create_app(services.settings, services)) as client:
        yield client, services, bearer(services, "admin")


def follow(client: TestClient, url: str, headers: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """Every line, page after page as the Link headers lead, each page within ``limit``."""
    seen: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        r = client.get(next_url, headers=headers)
        assert r.status_code == 200, r.text
        assert 0 < len(r.json()) <= limit
        seen += r.json()
        link = r.headers.get("link")
        if link:
            assert link.endswith('>; rel="next"') and f"after={r.headers['x-next-after']}" in link
        next_url = link[1 : link.index(">")] if link else None
    assert "x-next-after" not in r.headers
    return seen


def busy_incident(services: Any, reads: int) -> tuple[str, str, str]:
    """An incident with two linked clips, one of them read ``reads`` times; (id, reference, busy clip)."""
    busy, quiet = store_item(services), store_item(services)
    with services.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", datetime.now(UTC) - timedelta(hours=1), "NORTH"),
            "user:admin",
            ledger=services.ledger,
        )
        for item in (busy, quiet):
            link_evidence(session, services.ledger, incident.id, item.id, "user:admin", "in the corridor")
        incident_id, reference = incident.id, incident.reference
    read_many(services, busy.id, reads)
    return incident_id, reference, busy.id


def alarm_with_memo(services: Any, plays: int) -> str:
    """An SOS alarm whose voice memo was played ``plays`` times; its id."""
    alarm_id = raise_test_alarm(services)
    memo = store_item(services, kind="voice_memo")
    with services.db.session() as session:
        alarm = session.get(AlarmRecord, alarm_id)
        assert alarm is not None
        alarm.voice_memo_item_id = memo.id
        # re-sealed as the service seals an alarm when its memo is attached (``chain_of_custody.alarm_seals``),
        # over the incident the SOS opened too
        alarm.seal = alarm_seal(
            reach_secret(services.key),
            alarm.id,
            alarm.site,
            alarm.wearer,
            alarm.device_id,
            memo.id,
            alarm.incident_id,
        )
    read_many(services, memo.id, plays)
    return alarm_id


def test_the_history_comes_a_page_at_a_time_and_following_it_reads_every_line_once(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, admin = site
    incident_id, reference, busy = busy_incident(services, HISTORY_PAGE + 20)
    history = f"/api/v1/incidents/{incident_id}/history"
    r = client.get(history, headers=admin)
    assert r.status_code == 200 and len(r.json()) == HISTORY_PAGE
    after = r.headers["x-next-after"]
    assert r.headers["link"] == f'<{history}?after={after}&limit={HISTORY_PAGE}>; rel="next"'
    # The whole history in one page (within the maximum), and read page by page: the same lines.
    whole = client.get(history, headers=admin, params={"limit": 5000})
    assert whole.status_code == 200 and "link" not in whole.headers
    lines = whole.json()
    assert (
        sum(1 for x in lines if x["kind"] == "custody:viewed" and x["item_id"] == busy) == HISTORY_PAGE + 20
    )
    assert [x["at"] for x in lines] == sorted(x["at"] for x in lines)
    for limit in (300, 7):
        paged = follow(client, f"{history}?limit={limit}", admin, limit)
        assert paged == lines, limit
    assert r.json() == lines[:HISTORY_PAGE]
    # A page beyond the maximum, or an after= that names no place, is refused.
    for params in ({"limit": 5001}, {"after": "yesterday"}, {"after": "1-9-1"}):
        r = client.get(history, headers=admin, params=params)
        assert r.status_code == 422 and r.json()["reason"] == "invalid_request", params
    # The console's timeline page pages the same way, and its last page links nothing further.
    browser = cookie(services, "admin")
    page = client.get(f"/incidents/{reference}/timeline", headers=browser)
    assert page.status_code == 200
    assert page.text.count("<tr data-kind=") == HISTORY_PAGE
    assert f'after={after}" rel="next"' in page.text
    last = client.get(f"/incidents/{reference}/timeline?after={after}", headers=browser)
    assert last.status_code == 200
    assert last.text.count("<tr data-kind=") == len(lines) - HISTORY_PAGE and 'rel="next"' not in last.text
    assert "From the beginning" in last.text


def test_the_timeline_comes_a_page_at_a_time(site: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, services, admin = site
    incident_id, _, _ = busy_incident(services, 3)
    people = [user(services, name, "investigator", "NORTH") for name in ("ivy", "joe", "kim")]
    with services.db.session() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
        for person in people:
            assign_investigator(session, services.ledger, incident, person, "user:admin")
    timeline = f"/api/v1/incidents/{incident_id}/timeline"
    whole = client.get(timeline, headers=admin).json()
    assert len(whole) >= 6  # happened, opened, two clips, three investigators
    r = client.get(timeline, headers=admin, params={"limit": 2})
    assert len(r.json()) == 2 and r.headers["link"].startswith(f"<{timeline}?after=")
    assert follow(client, f"{timeline}?limit=2", admin, 2) == whole
    assert follow(client, f"{timeline}?limit=1", admin, 1) == whole


@pytest.mark.e2e
def test_the_console_pages_through_a_long_history_in_the_browser(sqlite_services: Any, tmp_path: Any) -> None:
    """The timeline page shows a page of lines and a link on; following it shows the rest and links
    back to the beginning. The custody page pages the same way, with the same links."""
    from tests.conftest import start_server
    from tests.test_console_kit import add_users, chromium, new_page, screenshot_dir, sign_in

    services = sqlite_services
    add_users(services)
    incident_id, reference, busy = busy_incident(services, HISTORY_PAGE + 20)
    alarm_id = alarm_with_memo(services, TRAIL_PAGE + 5)
    shots = screenshot_dir(tmp_path)
    server, thread, url = start_server(services)
    try:
        with chromium() as browser:
            page = new_page(browser)
            sign_in(page, url, "admin", next_path=f"/incidents/{reference}/timeline")
            page.wait_for_selector("#timeline")
            assert page.locator("#timeline tbody tr").count() == HISTORY_PAGE
            assert page.locator("#timeline-pages a").count() == 1  # the first page: only "next"
            page.locator("#timeline-pages").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "incident-timeline-first-page.png"))
            page.click("#timeline-pages a[rel=next]")
            page.wait_for_url(lambda u: "after=" in u)
            rest = page.locator("#timeline tbody tr").count()
            assert 20 <= rest < HISTORY_PAGE
            assert page.locator("#timeline-pages a[rel=next]").count() == 0
            assert page.inner_text("#timeline-pages") == "From the beginning"
            page.screenshot(path=str(shots / "incident-timeline-last-page.png"), full_page=True)
            page.click("#timeline-pages a")
            page.wait_for_url(lambda u: "after=" not in u)
            assert page.locator("#timeline tbody tr").count() == HISTORY_PAGE

            page.goto(f"{url}/custody?item={busy}")
            page.wait_for_selector("#custody-trail")
            page.click("#trail-pages a[rel=next]")
            page.wait_for_url(lambda u: "after=" in u)
            assert 0 < page.locator("#custody-trail tbody tr").count() < HISTORY_PAGE
            assert page.inner_text("#trail-pages") == "From the first entry"
            page.screenshot(path=str(shots / "custody-last-page.png"), full_page=True)

            # An alarm's page: its voice memo's custody, the first page, and a link on.
            page.goto(f"{url}/alarms/{alarm_id}")
            page.wait_for_selector("#memo-pages")
            page.locator("#memo-pages").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "alarm-memo-custody.png"))
            page.click("#memo-pages a[rel=next]")
            page.wait_for_url(lambda u: "/custody?" in u and "after=" in u)
            assert page.locator("#custody-trail tbody tr").count() > 0
            assert page.errors == []  # type: ignore[attr-defined]
    finally:
        server.should_exit = True
        thread.join(15)
    assert incident_id


def test_an_alarm_record_gives_the_first_page_of_its_items_custody(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    """An alarm's record holds its payload's and voice memo's custody: a memo played many times has
    that many entries, so the record holds the trail's first page and says where the next starts."""
    client, services, admin = site
    alarm_id = alarm_with_memo(services, TRAIL_PAGE + 5)
    r = client.get(f"/api/v1/alarms/{alarm_id}/record", headers=admin)
    assert r.status_code == 200, r.text
    record = r.json()["voice_memo"]
    assert len(record["custody"]) == TRAIL_PAGE and record["custody_next_after"] == TRAIL_PAGE
    page = client.get(f"/alarms/{alarm_id}", headers=cookie(services, "admin"))
    assert page.status_code == 200
    assert f'after={TRAIL_PAGE}" rel="next"' in page.text
