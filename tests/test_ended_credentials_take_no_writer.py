"""A credential the service ends (a console session signed out, or ended by an account change; a
bearer token revoked by one) is refused at once on its next request, and refused as a made-up one
is: in a transaction that only reads, never taking SQLite's one writer. The process remembers for a
minute the credentials that signed in a moment ago and lets them straight into an evidence read's
write transaction (``accounts.recent_sign_ins``): one ended is forgotten as it ends, so a burst of
requests with it a moment after cannot each take the writer (both databases, the real routes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from accounts.sessions import csrf_token_for
from tests.test_cross_site_reads import OUR_PAGE, cookie
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_made_up_credentials_take_no_writer import HANDLED_IN, BegunFor
from tests.test_range_sign_in import REASON


@pytest.fixture
def client(services: Any) -> Iterator[tuple[TestClient, Any]]:
    from ingest.app import create_app

    with TestClient(create_app(services.settings, services)) as c:
        yield c, services


def _sign_out(c: TestClient, s: Any, boss: int, credential: dict[str, str], admin: dict[str, str]) -> None:
    secret = credential["Cookie"].split("=", 1)[1]
    got = c.post(
        "/sign-out",
        data={"csrf": csrf_token_for(secret)},
        headers={**credential, "Origin": str(c.base_url), "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert got.status_code == 303, got.text


def _deactivate(c: TestClient, s: Any, boss: int, credential: dict[str, str], admin: dict[str, str]) -> None:
    got = c.patch(f"/api/v1/users/{boss}", json={"active": False}, headers=admin)
    assert got.status_code == 200, got.text


def _new_role(c: TestClient, s: Any, boss: int, credential: dict[str, str], admin: dict[str, str]) -> None:
    got = c.patch(f"/api/v1/users/{boss}", json={"role": "auditor"}, headers=admin)
    assert got.status_code == 200, got.text


ENDS: dict[str, tuple[str, Callable[..., None]]] = {
    "session_signed_out": ("session", _sign_out),
    "session_of_an_account_deactivated": ("session", _deactivate),
    "token_of_an_account_deactivated": ("token", _deactivate),
    "token_of_a_role_changed": ("token", _new_role),
}


@pytest.mark.parametrize("end", sorted(ENDS))
def test_an_ended_credential_is_refused_at_once_without_the_writer(client: Any, end: str) -> None:
    c, s = client
    kind, ends = ENDS[end]
    boss = user(s, "boss", "admin")
    user(s, "keeper", "admin")
    clip = store_item(s, data=b"\x00" * 4096)
    address = f"/api/v1/evidence/{clip.id}/content"
    credential = {**cookie(s, "boss"), **OUR_PAGE} if kind == "session" else bearer(s, "boss")
    begun = BegunFor(s.db.engine, HANDLED_IN["content"])
    try:

        def read() -> tuple[int, list[str]]:
            begun.take()
            got = c.get(address, params={"reason": REASON}, headers={**credential, "Range": "bytes=0-99"})
            return got.status_code, [kind for _, kind in begun.take()]

        status, kinds = read()
        assert status == 206 and kinds[0] == "read" and "write" in kinds, kinds
        status, kinds = read()  # signed in a moment ago: straight into the read's one transaction
        assert status == 206 and kinds == ["write"], kinds
        ends(c, s, boss, credential, bearer(s, "keeper"))
        # Refused at once, and as a made-up credential is: no write transaction begun, each time.
        assert read() == (401, ["read"]), end
        assert read() == (401, ["read"]), end
    finally:
        begun.remove()
