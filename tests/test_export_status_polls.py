"""An export's status answers while its build holds SQLite's write lock: asking how a build is
going reads, and a read waits for no writer, whether the caller signs in by bearer token or, as the
console's exports page does, by its session cookie (both databases, through the real routes)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import accounts.sessions
from incidents.export.jobs import ExportBuilds
from tests.test_console_kit import session_client
from tests.test_incidents_kit import PASSWORD, assigned_incident, bearer, staff, user

T0 = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
# A status read takes tens of milliseconds; one queued behind the held build waits until it is let go.
ANSWER_WITHIN_S = 5.0


def signed_in_client(live: Any, username: str, by: str, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    """A client of the API signed in as ``username`` by a bearer token or by the console's cookie
    (sending the session's CSRF token, as the console's scripts do). With the cookie no touch of
    the session falls due meanwhile (at most one every ``TOUCH_EVERY`` is written, apart)."""
    if by == "bearer":
        return httpx.Client(base_url=f"{live.url}/api/v1", headers=bearer(live.services, username))
    monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", timedelta(hours=1))
    client, csrf = session_client(live.url, username, PASSWORD)
    client.base_url = httpx.URL(f"{live.url}/api/v1/")
    client.headers["X-CSRF-Token"] = csrf
    return client


@pytest.mark.parametrize("by", ["bearer", "cookie"])
def test_a_status_poll_answers_while_the_build_holds_the_writer(
    live: Any, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    s = live.services
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv_poll", "investigator")
    incident_id, _ = assigned_incident(s, T0, inv)
    api = signed_in_client(live, "inv_poll", by, monkeypatch)
    held, let_go = threading.Event(), threading.Event()
    ready = ExportBuilds._ready

    def held_ready(session: Any, job_id: str, result: Any) -> None:
        # In the transaction that records the package: on SQLite the build holds the write lock here.
        held.set()
        let_go.wait(60)
        ready(session, job_id, result)

    monkeypatch.setattr(ExportBuilds, "_ready", staticmethod(held_ready))
    try:
        r = api.post(f"incidents/{incident_id}/exports", json={})
        assert r.status_code == 202, r.text
        export_id = r.json()["id"]
        assert held.wait(60), "the build never reached its recording transaction"
        started = time.monotonic()
        try:
            got = api.get(f"exports/{export_id}", timeout=ANSWER_WITHIN_S)
        except httpx.TimeoutException:
            raise AssertionError(f"no status within {ANSWER_WITHIN_S} s while the build was held") from None
        took = time.monotonic() - started
        assert got.status_code == 200, got.text
        assert got.json()["status"] == "building", "read while the package was not yet recorded"
        assert took < ANSWER_WITHIN_S
    finally:
        let_go.set()

    def finished() -> bool:
        return bool(api.get(f"exports/{export_id}").json()["status"] == "ready")

    from tests.conftest import wait_for

    wait_for(finished, 60, 0.1, "the export to be ready once let go")
