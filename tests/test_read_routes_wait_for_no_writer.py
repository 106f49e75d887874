"""The routes that only read answer while another transaction holds SQLite's write lock: they read
in ``Database.reading`` blocks and queue behind no writer (both databases, the real routes, by
bearer token and by the console's cookie; on PostgreSQL no write blocks a read anyway). They are
the lists and records of devices, staff, users, evidence, incidents, packages, subject access
requests and redactions, a verification's progress, the control room's figures, an alarm's record
and the live stream's backlog, and the console's board, map, alarm, figures, fleet, people,
footage, incident, timeline, exports, subject access, retention and custody pages. Reading
evidence itself writes a custody entry first, so those routes are not among them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.test_alarms_kit import enrol
from tests.test_control_room_reads import answers_while_a_writer_holds
from tests.test_export_status_polls import signed_in_client
from tests.test_incidents_kit import assigned_incident, staff, user

T0 = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)


def _signed_in(
    live: Any, monkeypatch: pytest.MonkeyPatch, name: str, by: str, device: str
) -> tuple[httpx.Client, int, str, str]:
    """An administrator signed in by ``by`` (bearer, or the console's cookie), a NORTH device, and an
    incident with a clip's redacted copy linked: (client, their user id, incident, copy)."""
    s = live.services
    staff(s, "S-N", "nurse", "NORTH")
    admin = user(s, name, "admin")
    enrol(s, device, staff_id="S-N", site="NORTH")
    incident_id, copy = assigned_incident(s, T0, user(s, f"{name}_inv", "investigator"))
    return signed_in_client(live, name, by, monkeypatch), admin, incident_id, copy.id


def test_the_api_reads_answer_while_a_writer_holds_the_lock(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, admin, incident_id, copy = _signed_in(live, monkeypatch, "adm_reads", "bearer", "LW-R1")
    answers_while_a_writer_holds(
        live,
        [
            (api, path, status)
            for path, status in (
                ("staff", 200),
                ("devices", 200),
                ("users", 200),
                (f"users/{admin}", 200),
                ("evidence", 200),
                (f"evidence/{copy}", 200),
                (f"evidence/{copy}/custody", 200),
                (f"evidence/{copy}/retention", 200),
                (f"evidence/{copy}/redactions", 200),
                ("redaction-jobs", 200),
                ("redaction-jobs/no-such-job", 404),
                ("incidents", 200),
                (f"incidents/{incident_id}", 200),
                (f"incidents/{incident_id}/timeline", 200),
                (f"incidents/{incident_id}/history", 200),
                (f"incidents/{incident_id}/exports", 200),
                (f"incidents/{incident_id}/disclosures", 200),
                (f"incidents/{incident_id}/disclosures?format=csv", 200),
                ("statistics", 200),
                ("subject-access-requests", 200),
                ("subject-access-requests/no-such-request", 404),
                ("custody/verify/no-such-job", 404),
                ("alarms/performance", 200),
                ("alarms/no-such-alarm/record", 404),
                ("alarms/stream?follow=false&after=0", 200),
                ("alarms/stream?follow=false", 200),
            )
        ],
    )


def test_the_console_pages_that_read_answer_while_a_writer_holds_the_lock(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    console, _, incident_id, copy = _signed_in(live, monkeypatch, "adm_pages", "cookie", "LW-R2")
    console.base_url = httpx.URL(live.url)
    answers_while_a_writer_holds(
        live,
        [
            (console, path, status)
            for path, status in (
                ("/board", 200),
                ("/board/directory.json?device=LW-R2", 200),
                ("/map", 200),
                ("/map/data.json", 200),
                ("/alarms/no-such-alarm", 404),
                ("/performance", 200),
                ("/admin/devices", 200),
                ("/admin/people", 200),
                (f"/footage/{copy}", 303),  # a redacted copy's page is its original's
                ("/incidents", 200),
                (f"/incidents/{incident_id}", 200),
                (f"/incidents/{incident_id}/timeline", 200),
                ("/exports", 200),
                (f"/incidents/{incident_id}/exports", 200),
                ("/subject-access", 200),
                ("/subject-access/no-such-request", 404),
                ("/retention", 200),
                (f"/custody?item={copy}", 200),
            )
        ],
    )
