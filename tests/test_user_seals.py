"""User rows planted or altered in the database grant nobody anything.

Each row of ``users`` carries a seal (``accounts.seals``): an HMAC, under a secret derived from the
service key (which the database does not hold), over its id, username, role, site, password hash and
active state. Through the real server, on both databases: an administrator's row inserted by SQL
with a hash of the planter's password signs nobody in (API or console); a role raised, a site moved
or a password hash swapped by SQL is refused at once, for new sign-ins and for tokens and sessions
already issued; a genuine seal copied onto another row does not hold; changes made through the API
work as before; ``evidence verify`` names a row whose seal does not hold, and ``evidence seal-users``
seals the rows made before seals only where the custody ledger bears them out.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from accounts.models import User
from chain_of_custody.verify import VerifyOptions, verify_service
from tests.conftest import ADMIN_PASSWORD, recorded_user
from tests.test_incidents_kit import plant_user

PASSWORD = "a genuine long password"
ATTACKER_PASSWORD = "the planter's own password"


@cache
def _attacker_hash() -> str:
    return PasswordHasher().hash(ATTACKER_PASSWORD)


def _login(url: str, username: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/auth/token", data={"username": username, "password": password}, timeout=15
    )


def _me(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/me", timeout=15, **kwargs)  # type: ignore[arg-type]


def _bearer(url: str, username: str, password: str = PASSWORD) -> dict[str, str]:
    r = _login(url, username, password)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _console(url: str, username: str, password: str) -> httpx.Client | None:
    """A browser signed in to the console, or None when the sign-in is refused."""
    client = httpx.Client(base_url=url, timeout=15, follow_redirects=False)
    form = client.get("/sign-in")
    token = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = client.post("/sign-in", data={"csrf": token, "username": username, "password": password})
    if r.status_code == 303:
        return client
    assert r.status_code == 401, r.text
    return None


def _set(services: Any, username: str, **values: Any) -> None:
    with services.db.session() as session:
        session.execute(update(User.__table__).where(User.__table__.c.username == username).values(**values))


def _user(live: Any, username: str, role: str, site: str | None = None, full_name: str = "") -> int:
    with live.services.db.session() as session:
        return recorded_user(
            session, live.services.ledger, username, PASSWORD, role, site=site, full_name=full_name
        )


def _seal_problems(services: Any) -> list[str]:
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    return sorted(p.where for p in report.problems if p.kind == "user_seal_broken")


def test_an_administrator_row_planted_by_sql_signs_nobody_in(live, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    planted_id = plant_user(live.services, "mallory", _attacker_hash())
    with caplog.at_level(logging.WARNING, logger="accounts"):
        assert _login(live.url, "mallory", ATTACKER_PASSWORD).status_code == 401
    refused = [r for r in caplog.records if "seal" in r.getMessage() and "user" in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]
    for rec in refused:  # the warning names the row's id and "missing", never a hash or a password
        text = rec.getMessage() + repr(rec.__dict__)
        assert "missing" in rec.getMessage() and getattr(rec, "user_id", None) == planted_id
        assert _attacker_hash() not in text and ATTACKER_PASSWORD not in text
    assert _console(live.url, "mallory", ATTACKER_PASSWORD) is None
    assert _me(live.url, headers=live.admin()).status_code == 200  # the genuine administrator is untouched


def test_a_role_raised_by_sql_is_refused_at_once(live) -> None:  # type: ignore[no-untyped-def]
    _user(live, "op", "operator")
    bearer = _bearer(live.url, "op")
    browser = _console(live.url, "op", PASSWORD)
    assert browser is not None and _me(live.url, headers=bearer).json()["role"] == "operator"
    assert browser.get("/api/v1/me").status_code == 200
    assert _seal_problems(live.services) == []
    _set(live.services, "op", role="admin")
    assert _me(live.url, headers=bearer).status_code == 401  # the token already issued
    assert browser.get("/api/v1/me").status_code == 401  # the console session already open
    assert _login(live.url, "op", PASSWORD).status_code == 401  # a new sign-in
    assert _console(live.url, "op", PASSWORD) is None
    assert _me(live.url, headers=live.admin()).status_code == 200
    with live.services.db.session() as session:
        op_id = session.scalar(select(User.id).where(User.username == "op"))
    assert _seal_problems(live.services) == [f"user id {op_id} (op)"]
    # An administrator's change through the API does not seal what was written outside it.
    r = httpx.patch(
        f"{live.url}/api/v1/users/{op_id}", json={"full_name": "Op"}, headers=live.admin(), timeout=15
    )
    assert r.status_code == 409, r.text
    assert _login(live.url, "op", PASSWORD).status_code == 401


def test_a_genuine_seal_copied_onto_another_row_does_not_hold(live) -> None:  # type: ignore[no-untyped-def]
    _user(live, "aud", "auditor")
    with live.services.db.session() as session:
        admin = session.scalar(select(User).where(User.username == "admin"))
        assert admin is not None and admin.seal
        seal = admin.seal
    # A planted administrator with the genuine one's seal, and the auditor raised with it too.
    plant_user(live.services, "mallory", _attacker_hash(), seal=seal)
    _set(live.services, "aud", role="admin", seal=seal)
    assert _login(live.url, "mallory", ATTACKER_PASSWORD).status_code == 401
    assert _login(live.url, "aud", PASSWORD).status_code == 401
    assert _me(live.url, headers=live.admin()).status_code == 200
    assert len(_seal_problems(live.services)) == 2


def test_a_site_moved_by_sql_is_refused(live) -> None:  # type: ignore[no-untyped-def]
    _user(live, "boss", "security_manager", site="NORTH")
    bearer = _bearer(live.url, "boss")
    assert _me(live.url, headers=bearer).json()["site"] == "NORTH"
    _set(live.services, "boss", site="SOUTH")
    assert _me(live.url, headers=bearer).status_code == 401
    assert _login(live.url, "boss", PASSWORD).status_code == 401
    _set(live.services, "boss", site="NORTH")  # put back as the service sealed it: it holds again
    assert _me(live.url, headers=bearer).json()["site"] == "NORTH"


def test_a_password_hash_swapped_by_sql_signs_nobody_in(live) -> None:  # type: ignore[no-untyped-def]
    _user(live, "inv", "investigator")
    bearer = _bearer(live.url, "inv")
    _set(live.services, "inv", password_hash=_attacker_hash())
    assert _login(live.url, "inv", ATTACKER_PASSWORD).status_code == 401
    assert _console(live.url, "inv", ATTACKER_PASSWORD) is None
    assert _me(live.url, headers=bearer).status_code == 401
    # A disabled account enabled again by SQL stays refused too.
    _user(live, "gone", "investigator")
    with live.services.db.session() as session:
        gone_id = session.scalar(select(User.id).where(User.username == "gone"))
    r = httpx.patch(
        f"{live.url}/api/v1/users/{gone_id}", json={"active": False}, headers=live.admin(), timeout=15
    )
    assert r.status_code == 200, r.text
    _set(live.services, "gone", active=True)
    assert _login(live.url, "gone", PASSWORD).status_code == 401


def test_changes_made_through_the_api_work_as_before(live) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(
        f"{live.url}/api/v1/users",
        json={"username": "newbie", "password": PASSWORD, "role": "operator"},
        headers=live.admin(),
        timeout=15,
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    assert _me(live.url, headers=_bearer(live.url, "newbie")).json()["role"] == "operator"
    changes: list[dict[str, Any]] = [
        {"role": "security_manager", "site": "NORTH"},
        {"site": "SOUTH", "full_name": "New Bie"},
        {"password": "another long password"},
        {"active": False},
        {"active": True},
        {"unlock": True},
    ]
    password = PASSWORD
    for change in changes:
        r = httpx.patch(f"{live.url}/api/v1/users/{user_id}", json=change, headers=live.admin(), timeout=15)
        assert r.status_code == 200, (change, r.text)
        password = change.get("password", password)
        signed_in = _login(live.url, "newbie", password)
        assert signed_in.status_code == (401 if change.get("active") is False else 200), (
            change,
            signed_in.text,
        )
    me = _me(live.url, headers=_bearer(live.url, "newbie", password)).json()
    assert (me["role"], me["site"]) == ("security_manager", "SOUTH")
    browser = _console(live.url, "newbie", password)
    assert browser is not None and browser.get("/api/v1/me").json()["username"] == "newbie"
    assert _seal_problems(live.services) == []


def test_seal_users_adopts_rows_the_ledger_bears_out_and_refuses_the_rest(  # type: ignore[no-untyped-def]
    cli_services: Any,
) -> None:
    from typer.testing import CliRunner

    from accounts.seals import unsealed_users
    from accounts.service import principal_of
    from ingest.cli import app

    s = cli_services
    with s.db.session() as session:
        for name, role, site in (("old-admin", "admin", None), ("raised", "operator", None)):
            recorded_user(session, s.ledger, name, ADMIN_PASSWORD, role, site=site)
        recorded_user(session, s.ledger, "moved", ADMIN_PASSWORD, "security_manager", site="NORTH")
    plant_user(s, "mallory", _attacker_hash())  # planted: no entry creates it
    with s.db.session() as session:
        session.execute(update(User.__table__).values(seal=None))  # as rows made before seals
    _set(s, "raised", role="admin")
    _set(s, "moved", site="SOUTH")
    with s.db.session() as session:
        assert {u.username for u in unsealed_users(session, s.ledger)} == {
            "old-admin",
            "raised",
            "moved",
            "mallory",
        }
        assert principal_of(session, "user:old-admin", s.key) is None
    runner = CliRunner()
    listed = runner.invoke(app, ["seal-users"])
    assert listed.exit_code == 0, listed.output
    lines = {line.split(" ")[1]: line for line in listed.output.splitlines() if line.startswith("user ")}
    assert "matches its custody record" in lines["old-admin"]
    assert "REFUSED" in lines["raised"] and "'admin'" in lines["raised"] and "'operator'" in lines["raised"]
    assert "REFUSED" in lines["moved"] and "'SOUTH'" in lines["moved"]
    assert "REFUSED" in lines["mallory"] and "no custody entry" in lines["mallory"]
    assert "1 users would be sealed" in listed.output and "3 users refused" in listed.output
    assert _attacker_hash() not in listed.output
    with s.db.session() as session:  # listing sealed nothing
        assert principal_of(session, "user:old-admin", s.key) is None
    done = runner.invoke(app, ["seal-users", "--yes"])
    assert done.exit_code == 1 and "1 users sealed" in done.output, done.output
    with s.db.session() as session:
        adopted = principal_of(session, "user:old-admin", s.key)
        assert adopted is not None and adopted.role == "admin"
        for refused in ("raised", "moved", "mallory"):
            assert principal_of(session, f"user:{refused}", s.key) is None
        assert {u.username for u in unsealed_users(session, s.ledger)} == {"raised", "moved", "mallory"}
    # Put back as the ledger records it, the moved manager is adopted on the next run.
    _set(s, "moved", site="NORTH")
    again = runner.invoke(app, ["seal-users", "--yes"])
    assert "1 users sealed" in again.output and "2 users refused" in again.output, again.output
    with s.db.session() as session:
        assert principal_of(session, "user:moved", s.key) is not None


def test_what_a_person_did_on_their_own_authority_stops_when_their_row_is_altered(live) -> None:  # type: ignore[no-untyped-def]
    """A download link serves on its issuer's authority, and only an investigator can be assigned to
    an incident: neither may be widened by a row altered in the database (on main, the taken-off
    investigator raised to administrator by SQL made their link serve again, and an auditor made an
    investigator by SQL could be assigned)."""
    from datetime import UTC, datetime

    from incidents.models import Incident
    from incidents.service import IncidentRefused, assign_investigator, unassign_investigator
    from tests.conftest import wait_for
    from tests.test_incidents_kit import assigned_incident, bearer, staff, user

    s, api = live.services, f"{live.url}/api/v1"
    t0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
    staff(s, "S-N", "nurse", "NORTH")
    inv, aud = user(s, "inv1", "investigator"), user(s, "aud1", "auditor")
    incident_id, _ = assigned_incident(s, t0, inv)
    headers = bearer(s, "inv1")
    r = httpx.post(f"{api}/incidents/{incident_id}/exports", json={}, headers=headers)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]
    wait_for(
        lambda: httpx.get(f"{api}/exports/{export_id}", headers=headers).json()["status"] == "ready",
        60,
        0.1,
        "the export to be ready",
    )
    r = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=headers)
    assert r.status_code == 201, r.text
    path = r.json()["path"]
    assert httpx.get(f"{live.url}{path}").status_code == 200
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        unassign_investigator(session, s.ledger, row, inv, "user:seed")
    assert httpx.get(f"{live.url}{path}").status_code == 410
    _set(s, "inv1", role="admin")  # an administrator sees every incident: the link would serve again
    assert httpx.get(f"{live.url}{path}").status_code == 410
    _set(s, "aud1", role="investigator")
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        with pytest.raises(IncidentRefused):
            assign_investigator(session, s.ledger, row, aud, "user:seed")


def test_a_name_changed_by_sql_is_never_printed_as_the_persons(live) -> None:  # type: ignore[no-untyped-def]
    """Continuity reports and statement drafts say who did what by the person's full name, so the
    seal covers it: a name changed by SQL is not printed (on main the next report named a person
    who never touched the clip, the account still signed in, and `evidence verify` found nothing),
    while a name changed through the API is sealed again and printed."""
    from datetime import UTC, datetime, timedelta

    from tests.test_incidents_kit import staff, store_item

    s = live.services
    t0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
    staff(s, "S-N", "nurse", "NORTH")
    boss_id = _user(live, "boss", "security_manager", site="NORTH", full_name="Margaret Hale")
    clip = store_item(s, wearer="S-N", start=t0, stop=t0 + timedelta(minutes=1))
    boss = _bearer(live.url, "boss")

    def said(path: str, headers: dict[str, str]) -> str:
        r = httpx.get(f"{live.url}/api/v1/evidence/{clip.id}/{path}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.text

    assert "Margaret Hale (security manager)" in said("continuity", boss)  # her reading is on the record
    _set(s, "boss", full_name="Dr John Innocent")
    report, statement = said("continuity", live.admin()), said("continuity-statement", live.admin())
    assert "Dr John Innocent" not in report and "Dr John Innocent" not in statement
    assert "boss (account record altered outside the service" in report
    assert _me(live.url, headers=boss).status_code == 401
    assert _seal_problems(s) == [f"user id {boss_id} (boss)"]
    _set(s, "boss", full_name="Margaret Hale")  # put back as sealed: it holds again
    r = httpx.patch(
        f"{live.url}/api/v1/users/{boss_id}",
        json={"full_name": "Margaret Hale-Smith"},
        headers=live.admin(),
        timeout=15,
    )
    assert r.status_code == 200, r.text
    assert _me(live.url, headers=_bearer(live.url, "boss")).json()["username"] == "boss"
    assert "Margaret Hale-Smith (security manager)" in said("continuity", live.admin())
    with s.db.session() as session:
        report_ = verify_service(session, s.store, s.key, VerifyOptions(check_objects=False))
    assert [p for p in report_.problems if p.kind.startswith("user_")] == []


def test_rows_sealed_before_seals_covered_the_name_wait_for_upgrade_seals(  # type: ignore[no-untyped-def]
    cli_services: Any,
) -> None:
    """A row under the version 1 seal (everything but the name) signs nobody in until `evidence
    upgrade-seals` adopts it; one whose name differs from the one custody records is refused."""
    from typer.testing import CliRunner

    from accounts.seals import sealed_values
    from accounts.service import principal_of
    from chain_of_custody.row_seals import USER_SEALS_V1, user_seal_v1
    from ingest.cli import app

    s = cli_services
    with s.db.session() as session:
        for name, full in (("olive", "Olive Old"), ("rita", "Rita Real")):
            recorded_user(session, s.ledger, name, ADMIN_PASSWORD, "investigator", full_name=full)
        for row in session.scalars(select(User)):  # as the service sealed them before
            row.seal = user_seal_v1(s.key.derived_secret(USER_SEALS_V1), sealed_values(row))
    _set(s, "rita", full_name="Someone Else")  # under the old seal, which does not cover it
    with s.db.session() as session:
        assert principal_of(session, "user:olive", s.key) is None
        report = verify_service(session, s.store, s.key, VerifyOptions(check_objects=False))
    assert [n for n in report.notes if "without their full name" in n] == [
        "2 user(s) are sealed without their full name (sealed before seals covered it), so they "
        "sign nobody in: `evidence upgrade-seals` lists them with their name and seals them again"
    ]
    runner = CliRunner()
    listed = runner.invoke(app, ["upgrade-seals"])
    lines = {line.split(" ")[1]: line for line in listed.output.splitlines() if line.startswith("user ")}
    assert "'Olive Old'" in lines["olive"] and "which holds: check the name" in lines["olive"]
    assert "REFUSED" in lines["rita"] and "'Someone Else'" in lines["rita"] and "'Rita Real'" in lines["rita"]
    done = runner.invoke(app, ["upgrade-seals", "--yes"])
    assert done.exit_code == 1 and "1 users sealed" in done.output, done.output
    with s.db.session() as session:
        adopted = principal_of(session, "user:olive", s.key)
        assert adopted is not None and adopted.role == "investigator"
        assert principal_of(session, "user:rita", s.key) is None
