"""The new-incident form's "happened at" is typed in the reader's own clock (Debian's chromium through
Playwright against the running service, the browser in Berlin): the field names its zone as that
date has it (CET in winter, CEST in summer), the zone in full in its tooltip, says the UTC instant it
will send, sends exactly that (with its ``Z``), refuses a time the clocks skip, and says which of a
time the clocks pass twice it sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from incidents.models import Incident
from tests import test_console_retry_browser
from tests.test_console_kit import chromium, new_page, sign_in

console = test_console_retry_browser.console  # a running service with a security manager of NORTH


def _sent(page: Any) -> str:
    return page.inner_text("#n-occurred-sent")  # type: ignore[no-any-return]


def test_the_time_an_incident_happened_names_its_zone_and_is_sent_as_utc(
    console: tuple[str, Any], tmp_path: Path
) -> None:
    url, s = console
    with chromium() as browser:
        page = new_page(browser, 1400, 900, timezone="Europe/Berlin")
        sign_in(page, url, "manager", next_path="/incidents")
        zone = page.locator("#n-occurred-zone")
        zone.wait_for()
        # Before anything is typed: the zone's name today.
        assert "Europe/Berlin" in (zone.get_attribute("title") or "")
        assert "Europe/Berlin" in (page.get_attribute("#n-occurred", "title") or "")
        assert zone.inner_text() in ("(CET)", "(CEST)"), zone.inner_text()

        # A winter time: CET, sent as an hour earlier in UTC.
        page.fill("#n-occurred", "2026-11-30T10:00")
        assert zone.inner_text() == "(CET)"
        assert _sent(page) == "2026-11-30 10:00 CET is sent as 30 Nov 2026 09:00:00 UTC.", _sent(page)

        # A summer time: CEST, two hours.
        page.fill("#n-occurred", "2026-07-01T10:00")
        assert zone.inner_text() == "(CEST)"
        assert _sent(page) == "2026-07-01 10:00 CEST is sent as 01 Jul 2026 08:00:00 UTC.", _sent(page)
        page.screenshot(path=str(tmp_path / "incident-form-zone.png"), full_page=True)  # looked at

        # The night the clocks go back, 02:30 comes twice: the page says which is sent.
        page.fill("#n-occurred", "2026-10-25T02:30")
        assert "twice" in _sent(page) and _sent(page).endswith("is sent as 25 Oct 2026 00:30:00 UTC."), _sent(
            page
        )

        # The night they go forward, 02:30 never comes: refused, nothing sent.
        posts: list[str] = []
        page.on(
            "request",
            lambda r: posts.append(r.url) if r.method == "POST" and "/api/v1/incidents" in r.url else None,
        )
        page.fill("#n-title", "Assault in A&E")
        page.fill("#n-occurred", "2026-03-29T02:30")
        assert _sent(page).startswith("Not a time: 2026-03-29 02:30 does not exist in Europe/Berlin"), _sent(
            page
        )
        page.click("#new-incident button[type=submit]")
        assert page.evaluate("document.getElementById('n-occurred').validity.valid") is False
        assert posts == []

        # Sent: the instant the page said, in UTC with its "Z".
        page.fill("#n-occurred", "2026-07-01T10:00")
        with page.expect_request(
            lambda r: r.method == "POST" and r.url.endswith("/api/v1/incidents")
        ) as asked:
            page.click("#new-incident button[type=submit]")
        body = json.loads(asked.value.post_data or "{}")
        assert body["occurred_at"] == "2026-07-01T08:00:00.000Z", body
        page.wait_for_url("**/incidents/*-*")
        assert page.errors == []  # type: ignore[attr-defined]
    with s.db.reading() as session:
        made = session.scalars(select(Incident)).one()
        assert made.occurred_at.astimezone(UTC) == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
