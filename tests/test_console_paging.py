"""The console's admin lists come a page at a time, as the API pages them (``GET /devices``,
``/users``, ``/staff``, ``/subject-access-requests``): the fleet, the users and the staff, and the
subject access requests, each with a link on from its last line and back to the first; following
the links shows every entry once, in the API's order, and only what the person may see."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

import console.sources
import console.subject_access_pages
from chain_of_custody.reach_seals import reach_secret, staff_seal
from devices.models import Device, StaffMember
from tests.test_alarms_kit import seal_as_enrolled
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, user

COUNT, PAGE = 7, 3


@pytest.fixture
def site(sqlite_services: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Any]]:
    from ingest.app import create_app

    for module, name in (
        (console.sources, "LIST_PAGE"),
        (console.sources, "USERS_PAGE"),
        (console.subject_access_pages, "REQUESTS_PAGE"),
    ):
        monkeypatch.setattr(module, name, PAGE)
    user(sqlite_services, "admin", "admin")
    user(sqlite_services, "manager", "security_manager", "NORTH")
    with TestClient(create_app(sqlite_services.settings, sqlite_services)) as client:
        yield client, sqlite_services


def _follow(client: TestClient, url: str, headers: dict[str, str], pager: str, rows: str) -> list[str]:
    """Every row a list shows (``rows``: a pattern of its key), page after page by its pager's
    rel="next" link, each page within PAGE and every later one linking back to the first."""
    seen: list[str] = []
    next_url: str | None = url
    first = True
    while next_url:
        page = client.get(next_url, headers=headers)
        assert page.status_code == 200, page.text
        found = [html.unescape(k) for k in re.findall(rows, page.text)]
        assert 0 < len(found) <= PAGE, found
        seen += found
        links = re.search(rf'<p class="buttons pager" id="{pager}">(.*?)</p>', page.text, re.S)
        if not first:
            assert links is not None and f'<a href="{url}">' in html.unescape(links.group(1))
        nxt = re.search(r'<a href="([^"]+)" rel="next">', links.group(1)) if links else None
        next_url = html.unescape(nxt.group(1)) if nxt else None
        first = False
    return seen


def test_the_fleet_users_and_staff_pages_come_a_page_at_a_time(site: tuple[TestClient, Any]) -> None:
    client, services = site
    for n in range(COUNT):
        user(services, f"user-{n:02d}", "operator", "NORTH")
    reach = reach_secret(services.key)
    with services.db.session() as session:
        for n in range(COUNT):
            site_name = "NORTH" if n % 2 else "SOUTH"
            seal = staff_seal(reach, f"S-{n:03d}", site_name)
            session.add(StaffMember(id=f"S-{n:03d}", name=f"Porter {n}", site=site_name, seal=seal))
            session.add(Device(id=f"LW-{n:03d}", kind="lone_worker", site=site_name))
            session.add(Device(id=f"CAM-{n:03d}", kind="camera", site="NORTH"))
        seal_as_enrolled(session, services.ledger)
    admin, manager = cookie(services, "admin"), cookie(services, "manager")
    fleet = _follow(client, "/admin/devices", admin, "fleet-pages", r'<tr data-device="([^"]+)">')
    assert fleet == sorted(fleet) and len(fleet) == 2 * COUNT  # by id, as GET /api/v1/devices
    assert fleet == [d["id"] for d in client.get("/api/v1/devices", headers=bearer(services, "admin")).json()]
    own = _follow(client, "/admin/devices", manager, "fleet-pages", r'<tr data-device="([^"]+)">')
    assert own == sorted([f"CAM-{n:03d}" for n in range(COUNT)] + [f"LW-{n:03d}" for n in range(1, COUNT, 2)])
    users = _follow(client, "/admin/people", admin, "users-pages", r'<tr data-user="([^"]+)">')
    assert users == sorted(["admin", "manager", *(f"user-{n:02d}" for n in range(COUNT))])
    staff_row = r'<tr><th scope="row">([^<]+)</th><td>Porter'
    staff = _follow(client, "/admin/people", admin, "staff-pages", staff_row)
    assert staff == [f"S-{n:03d}" for n in range(COUNT)]
    assert _follow(client, "/admin/people", manager, "staff-pages", staff_row) == ["S-001", "S-003", "S-005"]
    # The manager sees no users, so no pager for them, whatever the address says.
    page = client.get("/admin/people?users_after=admin", headers=manager)
    assert page.status_code == 200 and 'data-user="' not in page.text and "users-pages" not in page.text
    # Each list keeps its own place: the staff's next page starts the users' list again.
    page = client.get("/admin/people?staff_after=S-002", headers=admin)
    assert re.findall(r'<tr data-user="([^"]+)">', page.text) == users[:PAGE]
    assert client.get("/admin/devices?after=" + "x" * 65, headers=admin).status_code == 422


def test_the_fleet_page_lists_the_staff_once_not_once_a_row(site: tuple[TestClient, Any]) -> None:
    """Each row's assignment field suggests from one list: 500 staff and a page of devices must not
    make a page of 500 options a row."""
    client, services = site
    with services.db.session() as session:
        for n in range(COUNT):
            session.add(StaffMember(id=f"S-{n:03d}", name=f"Porter {n}", site="NORTH"))
            session.add(Device(id=f"LW-{n:03d}", kind="lone_worker", site="NORTH"))
    page = client.get("/admin/devices", headers=cookie(services, "admin"))
    assert page.status_code == 200
    rows = re.search(r'<table class="list" id="fleet">(.*?)</table>', page.text, re.S)
    assert rows is not None and len(re.findall(r"<tr data-device=", rows.group(1))) == PAGE
    assert "<option" not in rows.group(1)
    assert len(re.findall(r'list="staff-choices"', rows.group(1))) == PAGE
    choices = re.search(r'<datalist id="staff-choices">(.*?)</datalist>', page.text, re.S)
    assert choices is not None
    assert re.findall(r'<option value="([^"]+)">', choices.group(1)) == [f"S-{n:03d}" for n in range(COUNT)]


def test_the_subject_access_requests_page_comes_a_page_at_a_time(site: tuple[TestClient, Any]) -> None:
    client, services = site
    api = bearer(services, "admin")
    today = datetime.now(UTC).date()
    for n in range(COUNT):
        r = client.post(
            "/api/v1/subject-access-requests",
            json={
                "requester": f"Requester {n}",
                "contact": "someone@example.org",
                "received_on": (today - timedelta(days=n // 2)).isoformat(),
                "site": "NORTH" if n % 2 else "SOUTH",
                "description": "grey coat, A&E waiting room",
            },
            headers=api,
        )
        assert r.status_code == 201, r.text
    expected = [r["id"] for r in client.get("/api/v1/subject-access-requests", headers=api).json()]
    row = r'<tr data-request="([^"]+)">'
    admin, manager = cookie(services, "admin"), cookie(services, "manager")
    assert _follow(client, "/subject-access", admin, "requests-pages", row) == expected
    assert _follow(client, "/subject-access?all=true", admin, "requests-pages", row) == expected
    north = [
        r["id"]
        for r in client.get("/api/v1/subject-access-requests", headers=bearer(services, "manager")).json()
    ]
    assert len(north) == 3 and _follow(client, "/subject-access", manager, "requests-pages", row) == north
    # A page after a request the person may not see is no page at all (and says nothing of it).
    south = next(x for x in expected if x not in north)
    page = client.get(f"/subject-access?after={south}", headers=manager)
    assert page.status_code == 404 and south not in page.text
