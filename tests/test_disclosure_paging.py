"""A package link allows any number of downloads until it expires, and each is a custody entry, so
an incident's disclosure log grows without limit: it comes a page at a time (``limit`` downloads,
``after``, a ``Link: <...>; rel="next"``, as the custody trail), following the links reads every
event once and in order, each link says how many downloads it had in all, and the CSV is the whole
log, streamed a page at a time. On PostgreSQL, with real downloads through the link."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chain_of_custody.evidence import Provenance
from console import export_pages
from incidents.export import api as export_api
from tests.test_console_kit import chromium, new_page, screenshot_dir, sign_in
from tests.test_disclosure_api import _incident, _link, database_url, http, server, wait_ready
from tests.test_export_api import PASSWORD, Server
from tests.test_export_package import put_evidence

__all__ = ["database_url", "server"]  # the fixtures, used by name

DOWNLOADS = 5


def _follow(server: Server, url: str, limit: int) -> list[dict[str, Any]]:
    """Every page's body, as the Link headers lead, each with at most ``limit`` downloads."""
    pages: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        r = http.get(next_url, headers=server.as_("inv"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert sum(e["event"] == "downloaded" for e in body["events"]) <= limit
        pages.append(body)
        link = r.headers.get("link")
        if link:
            assert link.endswith('>; rel="next"') and f"after={r.headers['x-next-after']}" in link
            next_url = server.url + link[1 : link.index(">")]
        else:
            assert "x-next-after" not in r.headers
            next_url = None
    return pages


def _disclosed(server: Server) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An incident whose package went to an officer by a link, downloaded ``DOWNLOADS`` times and
    then revoked; the incident and its whole log's events."""
    s = server.services
    inv = server.as_("inv")
    item = put_evidence(
        s, b'{"alarm":"sos"}', Provenance(kind="alarm", actor="device:LW-1", content_type="application/json")
    )
    incident = _incident(server)
    _link(server, incident["id"], item.id)
    r = http.post(
        f"{server.url}/api/v1/incidents/{incident['id']}/exports", json={"item_ids": [item.id]}, headers=inv
    )
    assert r.status_code == 202, r.text
    job = wait_ready(server, r.json()["id"])
    links = f"{server.url}/api/v1/exports/{job['id']}/links"
    r = http.post(
        links, json={"recipient": "DC Jones, Met Police", "purpose": "charging decision"}, headers=inv
    )
    assert r.status_code == 201, r.text
    officer = r.json()
    for _ in range(DOWNLOADS):
        assert http.get(officer["url"]).status_code == 200
    assert http.delete(f"{links}/{officer['id']}", headers=inv).status_code == 204

    log = f"{server.url}/api/v1/incidents/{incident['id']}/disclosures"
    whole = http.get(log, headers=server.as_("inv"))
    assert whole.status_code == 200 and "link" not in whole.headers
    everything: list[dict[str, Any]] = whole.json()["events"]
    assert [e["event"] for e in everything] == ["package_built", "link_issued"] + [
        "downloaded"
    ] * DOWNLOADS + ["link_revoked"]
    return incident, everything


def test_disclosure_log_pages_downloads_and_streams_its_csv(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident, everything = _disclosed(server)
    inv = server.as_("inv")
    log = f"{server.url}/api/v1/incidents/{incident['id']}/disclosures"

    # Two downloads a page: three pages, the first with the package and the link's issue, the last
    # with its revocation; each link counts all its downloads, and lists only the page's.
    pages = _follow(server, f"{log}?limit=2", 2)
    assert len(pages) == 3
    assert [e for p in pages for e in p["events"]] == everything
    for p in pages:
        [link] = p["packages"][0]["links"]
        assert link["downloads_total"] == DOWNLOADS
        assert len(link["downloads"]) == sum(e["event"] == "downloaded" for e in p["events"])
    assert pages[0]["events"][0]["event"] == "package_built"
    assert pages[-1]["events"][-1]["event"] == "link_revoked"

    # The CSV is every event, read in pages of two downloads here (of thousands in service).
    monkeypatch.setattr(export_api, "DISCLOSURE_PAGE_MAX", 2)
    r = http.get(f"{log}?format=csv", headers=inv)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["event"] for row in rows] == [e["event"] for e in everything]
    assert [row["at"] for row in rows] == [e["at"] for e in everything]

    # A page past the end holds nothing more; a limit beyond the maximum is refused.
    assert http.get(f"{log}?limit=0", headers=inv).status_code == 422
    assert http.get(f"{log}?limit=100000", headers=inv).status_code == 422
    assert http.get(log, headers=server.as_("other_inv")).status_code == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.mark.e2e
def test_console_shows_the_log_a_page_at_a_time(
    server: Server, browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident, everything = _disclosed(server)
    monkeypatch.setattr(export_pages, "LOG_PAGE", 2)
    page = new_page(browser)
    page.set_default_timeout(60_000)
    sign_in(page, server.url, "inv", PASSWORD, next_path=f"/incidents/{incident['reference']}/exports")
    page.wait_for_selector("#disclosure-log")
    # The link's row counts all its downloads; the log shows two downloads a page, with a link on.
    assert page.locator("table.links tbody tr td").nth(3).inner_text().strip() == str(DOWNLOADS)
    shown: list[str] = []
    for n in range(1, 10):
        rows = page.locator("#disclosure-log tbody tr")
        shown += rows.evaluate_all("(rows) => rows.map((r) => r.dataset.event)")
        if n == 1:
            page.locator("#log-title").scroll_into_view_if_needed()
            page.screenshot(
                path=str(screenshot_dir(tmp_path) / "export-disclosure-log-paged.png"), full_page=True
            )
        if page.locator("#log-next a").count() == 0:
            break
        page.click("#log-next a")
        page.wait_for_selector("#log-earlier")
    assert n == 3 and shown == [e["event"] for e in everything]
    assert page.errors == []  # type: ignore[attr-defined]
