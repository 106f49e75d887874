"""The lists that grow while people read them (alarms, evidence items, incidents; the console's
incident list and its exports index) come a page at a time by cursor: each page starts right after
the previous page's last row, in a total order (time, then a unique key, newest first), so rows
arriving between two pages neither repeat one nor skip one, and a deep page costs no more than the
first.
Access is the query's own: walking every page shows each row the caller may see exactly once and no
other, whoever made the cursor. A cursor that is not one the list gave is a 400. On SQLite and on
PostgreSQL (the reads compare times and texts in SQL)."""

from __future__ import annotations

import html
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

import console.export_pages
import console.incident_pages
from alarms.models import AlarmRecord
from chain_of_custody.alarm_seals import alarm_seal
from chain_of_custody.models import EvidenceItem
from chain_of_custody.reach_seals import item_seal, reach_secret, staff_seal
from devices.models import Device, StaffMember
from incidents.models import Incident
from tests.conftest import make_settings, migrated_sqlite
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, sealed_incident, user

T0 = datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=UTC)
ROWS = 13  # of each list; three at a time share a time, so the key alone orders them


@dataclass(frozen=True)
class Row:
    key: str  # what the list shows as its tie-breaker: an alarm's or item's id, an incident's reference
    at: datetime
    site: str


@dataclass
class Lists:
    client: TestClient
    services: Any
    admin: dict[str, str]
    manager: dict[str, str]  # a security manager of NORTH: the NORTH rows only
    rows: dict[str, list[Row]]


# How each list reads: its address, the field it orders by and its key field.
LISTS = {
    "alarms": ("/api/v1/alarms", "raised_at", "id"),
    "evidence": ("/api/v1/evidence", "created_at", "id"),
    "incidents": ("/api/v1/incidents", "occurred_at", "reference"),
}
_numbers = iter(range(500_000, 900_000))


def add_row(services: Any, which: str, at: datetime, site: str) -> Row:
    """One row of the list ``which`` at ``at`` belonging to ``site`` (NORTH or SOUTH)."""
    with services.db.session() as session:
        if which == "alarms":
            key = str(uuid.uuid4())
            session.add(
                AlarmRecord(
                    id=key,
                    device_id=f"LW-{site}",
                    site=site,
                    kind="sos",
                    severity="red",
                    status="raised",
                    raised_at=at,
                    occurred_at=at,
                    # as the service seals what decides who reads it (``chain_of_custody.alarm_seals``)
                    seal=alarm_seal(reach_secret(services.key), key, site, None, f"LW-{site}", None),
                )
            )
        elif which == "evidence":
            key = str(uuid.uuid4())
            session.add(
                EvidenceItem(
                    id=key,
                    kind="clip",
                    bucket="evidence",
                    object_key=f"test/{key}",
                    sha256="0" * 64,
                    size=1,
                    wearer=f"S-{site}",
                    created_at=at,
                    # as the service seals what decides its reach (``chain_of_custody.reach_seals``)
                    reach_seal=item_seal(reach_secret(services.key), key, f"S-{site}", None, None),
                )
            )
        else:
            number = next(_numbers)
            key = f"INC-2026-{number:06d}"
            incident = Incident(
                reference=key,
                year=2026,
                number=number,
                category="physical_assault",
                title=f"incident {number}",
                site=site,
                occurred_at=at,
                opened_by="user:test",
            )
            # as the service seals what decides who reads it (``chain_of_custody.incident_seals``)
            session.add(sealed_incident(services, incident))
    return Row(key, at, site)


def populate(services: Any, which: str, count: int = ROWS) -> list[Row]:
    """``count`` rows, newest at T0, three to a time; one in three at SOUTH."""
    return [
        add_row(services, which, T0 - timedelta(seconds=n // 3), "SOUTH" if n % 3 == 1 else "NORTH")
        for n in range(count)
    ]


def newest_first(rows: list[Row]) -> list[str]:
    return [r.key for r in sorted(rows, key=lambda r: (r.at, r.key), reverse=True)]


@contextmanager
def open_lists(services: Any) -> Iterator[Lists]:
    """The three lists filled, two readers and a client of the app over ``services``."""
    from ingest.app import create_app

    user(services, "admin", "admin")
    user(services, "manager", "security_manager", "NORTH")
    with services.db.session() as session:
        for site in ("NORTH", "SOUTH"):
            session.add(Device(id=f"LW-{site}", kind="lone_worker", site=site))
            seal = staff_seal(reach_secret(services.key), f"S-{site}", site)
            session.add(StaffMember(id=f"S-{site}", name=f"Porter {site}", site=site, seal=seal))
    rows = {which: populate(services, which) for which in LISTS}
    with TestClient(create_app(services.settings, services)) as client:
        yield Lists(client, services, bearer(services, "admin"), bearer(services, "manager"), rows)


@pytest.fixture
def lists(services: Any) -> Iterator[Lists]:
    """Lists of the test's own, for the tests that add rows."""
    with open_lists(services) as filled:
        yield filled


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def read_lists(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, seaweed: Any
) -> Iterator[Lists]:
    """Lists shared by the tests that only read them, on each database: reading changes no row
    (their own set-up took most of this file's time)."""
    from ingest.services import build_services

    tmp = tmp_path_factory.mktemp(f"lists-{request.param}")
    if request.param == "sqlite":
        url, give_back = (
            migrated_sqlite(request.getfixturevalue("sqlite_template"), tmp / "evidence.db"),
            None,
        )
    else:
        copies = request.getfixturevalue("pg_copies")
        url, name = copies.take()
        give_back = lambda: copies.give_back(name)  # noqa: E731
    services = build_services(make_settings(tmp, url, seaweed))
    try:
        with open_lists(services) as filled:
            yield filled
    finally:
        services.db.dispose()
        if give_back:
            give_back()


def walk(client: TestClient, url: str, headers: dict[str, str], key: str, limit: int) -> list[str]:
    """Every row's key, page after page as the Link headers lead (each page within ``limit``)."""
    seen: list[str] = []
    next_url: str | None = url
    while next_url:
        r = client.get(next_url, headers=headers)
        assert r.status_code == 200, r.text
        assert len(r.json()) <= limit
        seen += [x[key] for x in r.json()]
        link = r.headers.get("link")
        if link:
            assert link.endswith('>; rel="next"') and f"after={r.headers['x-next-after']}" in link
        next_url = link[1 : link.index(">")] if link else None
    return seen


@pytest.mark.parametrize("which", LISTS)
def test_walking_every_page_shows_each_visible_row_once_and_no_other(read_lists: Lists, which: str) -> None:
    path, _, key = LISTS[which]
    rows = read_lists.rows[which]
    for headers, visible in (
        (read_lists.admin, rows),
        (read_lists.manager, [r for r in rows if r.site == "NORTH"]),
    ):
        # One row a page meets every boundary, a tie's at each place and a last page exactly full;
        # two rows a page take the cursor from a page's last row, not its first.
        for limit in (1, 2):
            assert walk(read_lists.client, f"{path}?limit={limit}", headers, key, limit) == newest_first(
                visible
            )
        # The first page without parameters is the whole list (it fits), in the same order.
        whole = read_lists.client.get(path, headers=headers)
        assert [x[key] for x in whole.json()] == newest_first(visible) and "link" not in whole.headers


@pytest.mark.parametrize("which", LISTS)
def test_rows_arriving_between_two_pages_neither_repeat_nor_skip_one(lists: Lists, which: str) -> None:
    """Offset paging showed the first page's last row again on the second page when a newer row had
    arrived meanwhile, and skipped one when a row went; a cursor starts after the row itself."""
    path, _, key = LISTS[which]
    first = lists.client.get(f"{path}?limit=4", headers=lists.admin)
    assert first.status_code == 200, first.text
    shown = [x[key] for x in first.json()]
    # Meanwhile: two newer rows (before where the walk is), one at the time of a row still to come
    # (a tie the key must order) and one older than everything.
    ahead = [add_row(lists.services, which, T0 + timedelta(seconds=s), "NORTH") for s in (1, 2)]
    tied = add_row(lists.services, which, T0 - timedelta(seconds=2), "NORTH")
    oldest = add_row(lists.services, which, T0 - timedelta(hours=1), "NORTH")
    link = first.headers["link"]
    rest = walk(lists.client, link[1 : link.index(">")], lists.admin, key, 4)
    together = shown + rest
    assert len(together) == len(set(together)), "a row on two pages"
    assert set(together) >= {r.key for r in lists.rows[which]}, "a row on no page"
    assert oldest.key in rest and not {r.key for r in ahead} & set(together)
    expected = newest_first([*lists.rows[which], tied, oldest])
    assert together == [k for k in expected if k in set(together)]  # one order across the pages
    assert (tied.key in rest) == (expected.index(tied.key) >= 4)


@pytest.mark.parametrize("which", LISTS)
def test_a_cursor_made_for_one_person_shows_another_only_their_own_rows(
    read_lists: Lists, which: str
) -> None:
    path, _, key = LISTS[which]
    rows = read_lists.rows[which]
    order = newest_first(rows)
    for limit in range(1, 6):  # each place in the list, SOUTH rows included
        page = read_lists.client.get(f"{path}?limit={limit}", headers=read_lists.admin)
        cursor = page.headers["x-next-after"]
        theirs = read_lists.client.get(f"{path}?after={cursor}", headers=read_lists.manager)
        assert theirs.status_code == 200, theirs.text
        north = {r.key for r in rows if r.site == "NORTH"}
        assert [x[key] for x in theirs.json()] == [k for k in order[limit:] if k in north]


@pytest.mark.parametrize("which", LISTS)
def test_a_cursor_the_list_did_not_give_is_a_clear_400(
    read_lists: Lists, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, _, _ = LISTS[which]
    cursor = read_lists.client.get(f"{path}?limit=2", headers=read_lists.admin).headers["x-next-after"]
    middle = len(cursor) // 2
    tampered = cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]
    other_path = LISTS["alarms" if which != "alarms" else "evidence"][0]
    another_list = read_lists.client.get(f"{other_path}?limit=2", headers=read_lists.admin).headers[
        "x-next-after"
    ]
    cut = [cursor[:-n] for n in (1, 2, 3)]  # one of them a length base64 cannot have
    for after in ("%%%", "not a cursor", "AAAA", "AAAAA", "A", tampered, *cut, "A" * 600, another_list):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            r = read_lists.client.get(f"{path}?limit=2", params={"after": after}, headers=read_lists.admin)
        assert r.status_code == 400, (after, r.status_code, r.text)
        body = r.json()
        assert body["reason"] == "bad_cursor" and set(body) == {"error", "reason", "detail"}, body
        assert any(rec.getMessage() == "cursor refused" for rec in caplog.records), after
    both = read_lists.client.get(f"{path}?after={cursor}&offset=2", headers=read_lists.admin)
    assert both.status_code == 400 and both.json()["reason"] == "bad_cursor"
    # offset alone still works for older clients, and its next page goes on by cursor.
    old = read_lists.client.get(f"{path}?limit=2&offset=2", headers=read_lists.admin)
    assert old.status_code == 200 and "offset" not in old.headers["link"]


@pytest.mark.parametrize("which", LISTS)
def test_the_next_link_keeps_the_filters(read_lists: Lists, which: str) -> None:
    path, _, key = LISTS[which]
    query = {"alarms": "device_id=LW-NORTH", "evidence": "wearer=S-NORTH", "incidents": "site=NORTH"}[which]
    r = read_lists.client.get(f"{path}?{query}&limit=2", headers=read_lists.admin)
    assert query in r.headers["link"]
    north = [r for r in read_lists.rows[which] if r.site == "NORTH"]
    assert walk(read_lists.client, f"{path}?{query}&limit=2", read_lists.admin, key, 2) == newest_first(north)


# --------------------------------------------------------------------------- the console


def follow_pages(
    client: TestClient, url: str, headers: dict[str, str], pager: str, rows: str, size: int | None = None
) -> list[str]:
    """Every row a console list shows, page after page by its pager's rel="next" link (each page
    within ``size`` when given)."""
    seen: list[str] = []
    next_url: str | None = url
    while next_url:
        page = client.get(next_url, headers=headers)
        assert page.status_code == 200, page.text
        found = re.findall(rows, page.text)
        assert found and (size is None or len(found) <= size), found
        seen += found
        links = re.search(rf'<p class="buttons pager" id="{pager}">(.*?)</p>', page.text, re.S)
        nxt = re.search(r'<a href="([^"]+)" rel="next">', links.group(1)) if links else None
        next_url = html.unescape(nxt.group(1)) if nxt else None
    return seen


def test_the_console_incident_list_pages_by_cursor(lists: Lists, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console.incident_pages, "PAGE", 3)
    client, services = lists.client, lists.services
    rows = lists.rows["incidents"]
    admin, manager = cookie(services, "admin"), cookie(services, "manager")
    pattern = r'<tr data-reference="([^"]+)">'
    assert follow_pages(client, "/incidents", admin, "incident-pager", pattern, 3) == newest_first(rows)
    north = [r for r in rows if r.site == "NORTH"]
    assert follow_pages(client, "/incidents", manager, "incident-pager", pattern, 3) == newest_first(north)
    # The filters stay on the next page's link; a row arriving meanwhile moves nothing.
    first = client.get("/incidents?site=NORTH", headers=admin)
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert nxt is not None and "site=NORTH" in html.unescape(nxt.group(1))
    add_row(services, "incidents", T0 + timedelta(seconds=5), "NORTH")
    second = client.get(html.unescape(nxt.group(1)), headers=admin)
    assert re.findall(pattern, first.text + second.text) == newest_first(north)[:6]
    bad = client.get("/incidents?after=not-a-cursor", headers=admin)
    assert bad.status_code == 400 and "first page" in bad.text


def test_the_exports_index_reaches_every_incident_the_person_may_see(lists: Lists) -> None:
    """It listed the 200 newest and no more."""
    client, services = lists.client, lists.services
    rows = lists.rows["incidents"] + populate(services, "incidents", 220)
    pattern = r'<a href="/incidents/([^/"]+)/exports">'
    admin, manager = cookie(services, "admin"), cookie(services, "manager")
    everything = follow_pages(client, "/exports", admin, "export-incidents-pager", pattern)
    assert len(everything) == len(rows) and everything == newest_first(rows)
    north = [r for r in rows if r.site == "NORTH"]
    own = follow_pages(client, "/exports", manager, "export-incidents-pager", pattern)
    assert own == newest_first(north)
    page = client.get("/exports", headers=admin)
    assert len(re.findall(pattern, page.text)) == console.export_pages.INDEX_PAGE
    assert client.get("/exports?after=AAAA", headers=admin).status_code == 400
