"""A player's range waits for no worker thread it does not need before its first byte: none of the
content route's dependencies runs on one (the services, the same-origin check, the stated reasons,
whether a credential is there at all read the request alone and run on the event loop; the sign-in
itself and the role's check run on the look-up's own worker thread, in its transaction). The
checks themselves are unchanged: a cross-site read, a wrong role, two reasons and no sign-in are
refused as before, and a signed-out session stops the next range."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fastapi.dependencies.utils as fastapi_dependencies
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from accounts.models import UserSession
from tests.test_cross_site_reads import CROSS_SITE, OUR_PAGE, cookie
from tests.test_incidents_kit import bearer, store_item, user

REASON = "checking the footage of the incident"


@pytest.fixture
def client(sqlite_services: Any) -> Iterator[tuple[TestClient, Any]]:
    from ingest.app import create_app

    with TestClient(create_app(sqlite_services.settings, sqlite_services)) as c:
        yield c, sqlite_services


@pytest.fixture
def on_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the dependencies FastAPI runs on a worker thread from now on."""
    ran: list[str] = []
    original = fastapi_dependencies.run_in_threadpool

    async def counted(call: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(getattr(call, "__name__", repr(call)))
        return await original(call, *args, **kwargs)

    monkeypatch.setattr(fastapi_dependencies, "run_in_threadpool", counted)
    return ran


def test_a_range_runs_only_its_sign_in_on_a_worker_thread(client: Any, on_threads: list[str]) -> None:
    c, s = client
    user(s, "boss", "admin")
    clip = store_item(s, data=b"x" * 300_000)
    address = f"/api/v1/evidence/{clip.id}/content"
    for headers in (bearer(s, "boss"), {**cookie(s, "boss"), **OUR_PAGE}):
        on_threads.clear()
        r = c.get(address, params={"reason": REASON}, headers={**headers, "Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == b"x" * 299_000
        assert (
            on_threads == []
        )  # the sign-in shares the look-up's worker thread (tests/test_range_sign_in.py)


def test_the_checks_run_on_the_event_loop_still_refuse(client: Any) -> None:
    c, s = client
    user(s, "boss", "admin")
    user(s, "counter", "auditor")
    clip = store_item(s, data=b"y" * 10_000)
    address = f"/api/v1/evidence/{clip.id}/content"
    ranged = {"Range": "bytes=0-99"}
    browser = cookie(s, "boss")
    assert (
        c.get(address, params={"reason": REASON}, headers={**browser, **CROSS_SITE, **ranged}).status_code
        == 403
    )
    assert (
        c.get(address, params={"reason": REASON}, headers={**bearer(s, "counter"), **ranged}).status_code
        == 403
    )
    two = c.get(
        address,
        params={"reason": REASON},
        headers={**bearer(s, "boss"), **ranged, "X-Evidence-Reason": "another reason for it"},
    )
    assert two.status_code == 422 and two.json()["reason"] == "reason_conflict"
    assert c.get(address, params={"reason": REASON}, headers=ranged).status_code == 401
    first = c.get(address, params={"reason": REASON}, headers={**browser, **OUR_PAGE, **ranged})
    assert first.status_code == 206
    with s.db.session() as session:  # signed out (or ended by an administrator): the next range stops
        for row in session.scalars(select(UserSession)):
            row.ended_at = row.created_at
    after = c.get(
        address, params={"reason": REASON}, headers={**browser, **OUR_PAGE, "Range": "bytes=100-199"}
    )
    assert after.status_code == 401
