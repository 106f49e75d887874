"""``POST /api/v1/custody/verify`` starts a job rather than verifying on the request, on both
databases with the real store: it answers 202 at once with the job, whoever asks while one runs is
given that one, a verifier holding the lease runs it, and the report is read with GET."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from chain_of_custody.verify_jobs import VERIFIER, CustodyVerification, Verifications, ask
from tests.conftest import start_server
from tests.test_incidents_kit import bearer, store_item, user


@pytest.fixture
def served(services: Any) -> Iterator[tuple[Any, str]]:
    server, thread, url = start_server(services)
    yield services, url
    server.should_exit = True
    thread.join(15)


def _wait_done(url: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/api/v1/custody/verify/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "running":
            return dict(r.json())
        time.sleep(0.2)
    raise AssertionError("the verification did not finish")


def test_verify_is_a_job_one_at_a_time_read_by_get(served: Any) -> None:
    s, url = served
    user(s, "audit", "auditor")
    user(s, "boss", "admin")
    auditor, admin = bearer(s, "audit"), bearer(s, "boss")
    store_item(s)
    # A job held by a verifier elsewhere: asking again is given that job, and nothing runs here.
    with s.db.session() as session:
        held, new = ask(session, "user:someone", None, False)
        assert new
        VERIFIER.grant(held, "elsewhere", timedelta(minutes=5), datetime.now(UTC))
        held_id = held.id
    for who in (auditor, admin):
        r = httpx.post(f"{url}/api/v1/custody/verify", headers=who, json={"check_objects": True})
        assert r.status_code == 202, r.text
        assert r.json()["id"] == held_id and r.json()["status"] == "running"
        assert r.headers["location"] == f"/api/v1/custody/verify/{held_id}"
    # That verifier stopped: once its lease runs out, one here claims it and records the report.
    later = Verifications(s, name="here")
    assert later.claim() is None
    job_id = later.claim(datetime.now(UTC) + timedelta(minutes=6))
    assert job_id == held_id
    later.run(job_id)
    done = _wait_done(url, auditor, held_id)
    assert done["status"] == "done" and done["ok"] is True and done["entries_checked"] > 0, done
    assert done["objects_checked"] is False
    with s.db.session() as session:
        row = session.get(CustodyVerification, held_id)
        assert row is not None and row.running is None and row.lease_owner is None
    # The next one is new, and the service's own verifier runs it.
    r = httpx.post(f"{url}/api/v1/custody/verify", headers=admin, json={"check_objects": True})
    assert r.status_code == 202 and r.json()["id"] != held_id
    done = _wait_done(url, admin, r.json()["id"])
    assert done["status"] == "done" and done["ok"] is True and done["objects_checked"] is True, done
    assert done["requested_by"] == "user:boss"
    # Other roles may neither start nor read one.
    user(s, "north", "security_manager", "NORTH")
    manager = bearer(s, "north")
    assert httpx.post(f"{url}/api/v1/custody/verify", headers=manager, json={}).status_code == 403
    assert httpx.get(f"{url}/api/v1/custody/verify/{held_id}", headers=manager).status_code == 403
    assert httpx.get(f"{url}/api/v1/custody/verify/nothing", headers=admin).status_code == 404
