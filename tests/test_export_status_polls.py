"""An export's status answers while its build holds SQLite's write lock: asking how a build is
going reads, and a read waits for no writer (both databases, through the real routes)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from incidents.export.jobs import ExportBuilds
from tests.test_incidents_kit import assigned_incident, bearer, staff, user

T0 = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
# A status read takes tens of milliseconds; one queued behind the held build waits until it is let go.
ANSWER_WITHIN_S = 5.0


def test_a_status_poll_answers_while_the_build_holds_the_writer(live: Any, monkeypatch: Any) -> None:
    s = live.services
    api = f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv_poll", "investigator")
    incident_id, _ = assigned_incident(s, T0, inv)
    headers = bearer(s, "inv_poll")
    held, let_go = threading.Event(), threading.Event()
    ready = ExportBuilds._ready

    def held_ready(session: Any, job_id: str, result: Any) -> None:
        # In the transaction that records the package: on SQLite the build holds the write lock here.
        held.set()
        let_go.wait(60)
        ready(session, job_id, result)

    monkeypatch.setattr(ExportBuilds, "_ready", staticmethod(held_ready))
    try:
        r = httpx.post(f"{api}/incidents/{incident_id}/exports", json={}, headers=headers)
        assert r.status_code == 202, r.text
        export_id = r.json()["id"]
        assert held.wait(60), "the build never reached its recording transaction"
        started = time.monotonic()
        try:
            got = httpx.get(f"{api}/exports/{export_id}", headers=headers, timeout=ANSWER_WITHIN_S)
        except httpx.TimeoutException:
            raise AssertionError(f"no status within {ANSWER_WITHIN_S} s while the build was held") from None
        took = time.monotonic() - started
        assert got.status_code == 200, got.text
        assert got.json()["status"] == "building", "read while the package was not yet recorded"
        assert took < ANSWER_WITHIN_S
    finally:
        let_go.set()

    def finished() -> bool:
        return bool(httpx.get(f"{api}/exports/{export_id}", headers=headers).json()["status"] == "ready")

    from tests.conftest import wait_for

    wait_for(finished, 60, 0.1, "the export to be ready once let go")
