"""The console writes every moment one way (``console.times``): no template formats a time by hand,
the filters say the same words with UTC stated and the exact time in a ``<time datetime>``, and a
rendered page shows them so. Also where a page without a menu entry of its own sits in the menu."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from console.api import current_section
from console.times import day, when, when_text
from incidents.service import IncidentDraft, create_incident, link_evidence
from tests.conftest import start_server
from tests.test_console_kit import add_users, session_client
from tests.test_incidents_kit import store_item

TEMPLATES = Path(__file__).resolve().parents[1] / "console" / "templates"
# A time formatted in a template rather than by the filters: strftime or isoformat called, ISO text
# cut to the minute, a template's own ``when`` macro, or a <time> element written out by hand.
BY_HAND = re.compile(
    r"strftime\s*\(|isoformat\s*\(|\[:1[0-9]\]\s*\|\s*replace\('T'|macro\s+when\b|<time datetime=\"\{\{"
)
MOMENT = re.compile(
    r'<time datetime="(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[^"]*)">(\d{2} \w{3} \d{4}[^<]*)</time>'
)
AT = datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)


def test_no_template_formats_a_time_by_hand() -> None:
    found = [
        f"{path.name}:{n}: {line.strip()[:120]}"
        for path in sorted(TEMPLATES.glob("*.html"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if BY_HAND.search(line)
    ]
    assert not found, "format times with the when, day or when_text filters:\n" + "\n".join(found)


def test_the_filters_say_a_moment_one_way() -> None:
    shown = '<time datetime="2026-11-22T10:00:05+00:00">22 Nov 2026 10:00:05 UTC</time>'
    assert when(AT) == shown
    assert when("2026-11-22T10:00:05Z") == shown  # as the API writes it
    assert when(AT.replace(tzinfo=None)) == shown  # the service stores UTC
    assert when(None) == "—" and when("") == "—"
    assert when("<b>not a time</b>") == "&lt;b&gt;not a time&lt;/b&gt;"
    assert day(AT) == '<time datetime="2026-11-22T10:00:05+00:00">22 Nov 2026</time>'
    assert day(date(2027, 1, 5)) == '<time datetime="2027-01-05">05 Jan 2027</time>'  # a calendar date
    assert day("2027-01-05") == day(date(2027, 1, 5))
    assert when_text(AT) == "22 Nov 2026 10:00:05 UTC" and when_text(None) == "—"


def test_an_incident_and_its_timeline_write_every_time_with_the_filters(sqlite_services: Any) -> None:
    s = sqlite_services
    add_users(s)
    clip = store_item(s, start=AT, stop=AT + timedelta(seconds=30))
    store_item(s, start=AT - timedelta(minutes=5))  # not linked: one of the page's choices to link
    with s.db.session() as session:
        incident = create_incident(
            session, IncidentDraft("physical_assault", AT, "NORTH"), "user:admin", ledger=s.ledger
        )
        link_evidence(session, s.ledger, incident.id, clip.id, "user:admin", "in the corridor")
        reference = incident.reference
    server, thread, url = start_server(s)
    try:
        client, _csrf = session_client(url, "admin")
        for path in ("/incidents", f"/incidents/{reference}", f"/incidents/{reference}/timeline"):
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code)
            main = r.text[r.text.index('<main id="main"') :]
            moments = MOMENT.findall(main)
            assert moments, path
            for iso, shown in moments:
                assert shown.endswith(" UTC") and re.fullmatch(
                    r"\d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} UTC", shown
                )
                assert datetime.fromisoformat(iso).strftime("%d %b %Y %H:%M:%S UTC") == shown, (path, iso)
            text = re.sub(r"<[^>]+>", "", main)
            # No time written as the API writes it, or cut short to the minute, outside an attribute.
            assert not re.search(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text), (path, text)
        page = client.get(f"/incidents/{reference}").text
        assert '<time datetime="2026-11-22T10:00:05+00:00">22 Nov 2026 10:00:05 UTC</time>' in page
        # An option's label carries the same words, as text (no markup may go in an option).
        option = re.search(r'<option value="[^"]+" data-kind="evidence">([^<]*)</option>', page)
        assert option and "22 Nov 2026 09:55:05 UTC" in option.group(1), option
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_clips_pages_sit_under_incidents_or_for_an_auditor_under_custody() -> None:
    investigator = ["/incidents", "/exports", "/subject-access", "/retention", "/custody", "/docs"]
    auditor = ["/board", "/map", "/performance", "/admin/devices", "/statistics", "/retention", "/custody"]
    assert current_section("/footage/abc", investigator) == "/incidents"
    assert current_section("/footage/abc/review", investigator) == "/incidents"
    assert current_section("/footage/abc", auditor) == "/custody"
    assert current_section("/footage/abc", ["/docs"]) is None
    # The rule that puts an incident's exports under Exports holds as before.
    assert current_section("/incidents/INC-1/exports", investigator) == "/exports"
    assert current_section("/incidents/INC-1", investigator) == "/incidents"
