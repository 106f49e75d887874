"""A route's caller is signed in (token, role) in a read of its own, before the route's write
transaction begins. Whatever ends or narrows their authority between the two (the account
deactivated, its role changed, its password changed and so its tokens revoked) refuses what the
route would do: the write transaction checks, first and in itself, that the caller still stands
as signed in (``accounts.service.stands``), and nothing is written (both databases; the change is
made deterministically by a hook on the service's ``Database.session``, after the sign-in and
before the route's transaction). On PostgreSQL that check holds the caller's row for share, so a
deactivation made while an action already checked is still to commit waits for it."""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accounts.models import User
from accounts.service import issue_token
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from incidents.export import api as export_api
from incidents.export.models import ExportLink
from incidents.models import Incident
from tests.conftest import ADMIN_PASSWORD, backends_waiting_on_a_lock, recorded_user, start_server, wait_for
from tests.test_console_kit import session_client
from tests.test_export_api import link_issuer
from tests.test_incidents_kit import sealed_export_job

INV_PASSWORD = "inv's password for this test"
CHANGES: dict[str, dict[str, Any]] = {
    "deactivated": {"active": False},
    "role_changed": {"role": "auditor"},
    "password_changed": {"password": "a new password for inv 123"},  # tokens revoked, still active
}


def _token_of(s: Any, username: str) -> str:
    with s.db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        assert user is not None
        token, _ = issue_token(session, user, timedelta(hours=1), s.key.derived_secret(CREDENTIAL_SEALS))
    return token


def _setting(s: Any) -> dict[str, Any]:
    """An administrator ``inv`` with an incident and a ready package of it, ``boss`` (another
    administrator) who changes inv's account, and a token each."""
    with s.db.session() as session:
        recorded_user(session, s.ledger, "inv", INV_PASSWORD, "admin")
        recorded_user(session, s.ledger, "boss", ADMIN_PASSWORD, "admin")
    incident_id = link_issuer(s, "inv")
    export_id = str(uuid.uuid4())
    with s.db.session() as session:
        sealed_export_job(s, session, export_id, incident_id, "user:inv", "admin")
    with s.db.reading() as session:
        inv_id = session.scalar(select(User.id).where(User.username == "inv"))
    return {
        "incident": incident_id,
        "export": export_id,
        "inv_id": inv_id,
        "inv": {"Authorization": f"Bearer {_token_of(s, 'inv')}"},
        "boss": {"Authorization": f"Bearer {_token_of(s, 'boss')}"},
    }


def _by_inv(s: Any) -> int:
    with s.db.reading() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(CustodyEntry).where(CustodyEntry.actor == "user:inv")
            )
            or 0
        )


def _links(s: Any, export_id: str) -> int:
    with s.db.reading() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(ExportLink).where(ExportLink.export_id == export_id)
            )
            or 0
        )


def _title(s: Any, incident_id: str) -> str | None:
    with s.db.reading() as session:
        return session.scalar(select(Incident.title).where(Incident.id == incident_id))


# Each route: its request, and the name of its function (the hook fires in its transaction only, not in
# a background poll's of the same service).
ROUTES: dict[str, Callable[[dict[str, Any]], tuple[str, str, dict[str, Any], str]]] = {
    "export_link": lambda c: (
        "POST",
        f"/api/v1/exports/{c['export']}/links",
        {"recipient": "DC Jones"},
        "create_link",
    ),
    "incident_edit": lambda c: (
        "PATCH",
        f"/api/v1/incidents/{c['incident']}",
        {"title": "changed by inv"},
        "change_incident",
    ),
}


def waiting_on_users(s: Any) -> bool:
    """Whether a statement naming ``users`` waits on a lock (PostgreSQL)."""
    return bool(backends_waiting_on_a_lock(s.db.engine, "users"))


def _armed_session(
    s: Any, monkeypatch: pytest.MonkeyPatch, route: str, meanwhile: Callable[[], None]
) -> list[str]:
    """Hook the service's ``Database.session``: once armed, the next block the function ``route``
    begins runs ``meanwhile`` first (on a thread of its own, as another request would), then begins
    as always."""
    original = s.db.session
    hooked: list[str] = []

    @contextmanager
    def session() -> Iterator[Session]:
        if hooked == ["armed"] and any(f.name == route for f in traceback.extract_stack()):
            hooked.append("done")
            other = threading.Thread(target=meanwhile)
            other.start()
            other.join(60)
        with original() as opened:
            yield opened

    monkeypatch.setattr(s.db, "session", session)
    return hooked


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("credential", ["token", "console"])
def test_an_authority_ended_after_the_sign_in_and_before_the_write_does_nothing(
    services: Any, monkeypatch: pytest.MonkeyPatch, credential: str, route: str, change: str
) -> None:
    """Each route, by a bearer token and by the console's session (its cookie and CSRF token)."""
    s = services
    c = _setting(s)
    server, thread, url = start_server(s)
    changed: list[int] = []
    client = httpx.Client(base_url=url, headers=c["inv"], timeout=60)
    if credential == "console":
        client, csrf = session_client(url, "inv", INV_PASSWORD)
        client.headers["X-CSRF-Token"] = csrf
        client.timeout = httpx.Timeout(60)

    def meanwhile() -> None:
        """An administrator changes inv's account, as the users route does, after inv's sign-in."""
        got = httpx.patch(
            f"{url}/api/v1/users/{c['inv_id']}", json=CHANGES[change], headers=c["boss"], timeout=60
        )
        changed.append(got.status_code)

    try:
        method, path, body, function = ROUTES[route](c)
        hooked = _armed_session(s, monkeypatch, function, meanwhile)
        before = (_by_inv(s), _links(s, c["export"]), _title(s, c["incident"]))
        hooked.append("armed")
        got = client.request(method, path, json=body)
        assert hooked == ["armed", "done"] and changed == [200], (hooked, changed)
        assert got.status_code in (401, 403), (route, change, got.status_code, got.text[:300])
        after = (_by_inv(s), _links(s, c["export"]), _title(s, c["incident"]))
        assert after == before, f"a refused {route} wrote something: {before} -> {after}"
        # ...and the next request of that sign-in is refused at its sign-in, as always.
        again = client.request(method, path, json=body)
        assert again.status_code in (401, 403), again.status_code
        assert (_by_inv(s), _links(s, c["export"]), _title(s, c["incident"])) == before
    finally:
        client.close()
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_deactivation_waits_for_an_action_checked_before_it(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL runs write transactions side by side: inv's link is checked (inv stands) and held
    inside its transaction; boss deactivates inv meanwhile. The deactivation waits for the link's
    commit (inv's row is held for share) rather than committing between the check and it, so the
    link is issued before inv is deactivated, in that order on the custody record."""
    s = services
    c = _setting(s)
    checked, go = threading.Event(), threading.Event()
    may_hand_out = export_api.may_hand_out

    def held(*args: Any) -> bool:
        checked.set()
        assert go.wait(60)
        return bool(may_hand_out(*args))

    monkeypatch.setattr(export_api, "may_hand_out", held)
    server, thread, url = start_server(s)
    answers: dict[str, int] = {}

    def ask(name: str, method: str, path: str, body: dict[str, Any], who: str) -> None:
        answers[name] = httpx.request(method, url + path, json=body, headers=c[who], timeout=60).status_code

    link = threading.Thread(
        target=ask,
        args=("link", "POST", f"/api/v1/exports/{c['export']}/links", {"recipient": "DC Jones"}, "inv"),
    )
    deactivate = threading.Thread(
        target=ask, args=("deactivate", "PATCH", f"/api/v1/users/{c['inv_id']}", {"active": False}, "boss")
    )

    try:
        link.start()
        assert checked.wait(60)
        deactivate.start()
        wait_for(
            lambda: waiting_on_users(s) or "deactivate" in answers, 30, what="the deactivation to wait or end"
        )
        assert "deactivate" not in answers, "inv was deactivated between the link's check and its commit"
        go.set()
        link.join(60)
        deactivate.join(60)
        assert answers == {"link": 201, "deactivate": 200}, answers
        with s.db.reading() as session:
            issued = session.scalar(select(CustodyEntry.seq).where(CustodyEntry.action == "link_issued"))
            ended = session.scalar(
                select(func.max(CustodyEntry.seq)).where(CustodyEntry.action == "user_changed")
            )
        assert issued is not None and ended is not None and issued < ended, (issued, ended)
    finally:
        go.set()
        server.should_exit = True
        thread.join(15)
