"""A user row put back by SQL as it was before a change signs nobody in.

A user row's seal covers who the person is, their role, site, password hash and whether they may
sign in at all, so a row altered in the database is refused; but a copy of the whole row taken
before a deactivation, a lower role, a site move or a new password carries the seal that fitted
then. The seal is therefore also bound to the latest custody entry about the user, read in the
statement that loads the row: an older copy's seal is over an older entry, and the row refuses
every sign-in (password, bearer token, console session). Through the real server, on both
databases; ``evidence verify`` names each.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select, update

from accounts.models import User
from chain_of_custody.verify import VerifyOptions, verify_service
from tests.conftest import recorded_user

PASSWORD = "a long password of theirs"
NEW_PASSWORD = "the new long password"


def _token(live: Any, username: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{live.url}/api/v1/auth/token", data={"username": username, "password": password}, timeout=15
    )


def _me(live: Any, token: str) -> httpx.Response:
    return httpx.get(f"{live.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=15)


def _copy(live: Any, user_id: int) -> dict[str, Any]:
    """The user's row as it stands (a copy an attacker with database access keeps)."""
    table = User.__table__
    with live.services.db.session() as session:
        return dict(session.execute(select(table).where(table.c.id == user_id)).one()._mapping)


def _put_back(live: Any, copy: dict[str, Any]) -> None:
    table = User.__table__
    with live.services.db.session() as session:
        session.execute(update(table).where(table.c.id == copy["id"]).values(**copy))


def _change(live: Any, user_id: int, **changes: object) -> None:
    r = httpx.patch(f"{live.url}/api/v1/users/{user_id}", json=changes, headers=live.admin(), timeout=15)
    assert r.status_code == 200, r.text


def _user(live: Any, username: str, role: str, site: str | None = None) -> int:
    with live.services.db.session() as session:
        return recorded_user(session, live.services.ledger, username, PASSWORD, role, site=site)


def _notes(services: Any, phrase: str) -> list[str]:
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    return [n for n in report.notes if phrase in n]


def _broken(live: Any) -> list[str]:
    with live.services.db.session() as session:
        report = verify_service(
            session, live.services.store, live.services.key, VerifyOptions(check_objects=False)
        )
    return sorted(p.where for p in report.problems if p.kind == "user_seal_broken")


def test_a_deactivated_user_put_back_active_from_a_copy_of_their_row_cannot_sign_in(live: Any) -> None:
    user_id = _user(live, "leaver", "investigator")
    assert _token(live, "leaver", PASSWORD).status_code == 200
    copy = _copy(live, user_id)
    _change(live, user_id, active=False)
    assert _token(live, "leaver", PASSWORD).status_code == 401
    _put_back(live, copy)  # active again, with the seal that fitted then
    assert _copy(live, user_id)["active"]
    assert _token(live, "leaver", PASSWORD).status_code == 401
    assert _broken(live) == [f"user id {user_id} (leaver)"]
    assert _me(live, live.admin_token).status_code == 200  # nobody else is touched


def test_a_role_lowered_then_put_back_from_a_copy_opens_nothing(live: Any) -> None:
    user_id = _user(live, "manager", "security_manager", site="north")
    copy = _copy(live, user_id)
    _change(live, user_id, role="operator", site="south")
    after = _token(live, "manager", PASSWORD)
    assert after.status_code == 200, after.text
    token = after.json()["access_token"]
    assert _me(live, token).json()["role"] == "operator"
    _put_back(live, copy)  # security manager of north again, with the seal that fitted then
    assert _me(live, token).status_code == 401  # the token issued since names a row that no longer fits
    assert _token(live, "manager", PASSWORD).status_code == 401
    assert _broken(live) == [f"user id {user_id} (manager)"]


def test_an_old_password_hash_put_back_does_not_sign_in(live: Any) -> None:
    user_id = _user(live, "nurse", "operator")
    old_hash = _copy(live, user_id)["password_hash"]
    _change(live, user_id, password=NEW_PASSWORD)
    assert _token(live, "nurse", PASSWORD).status_code == 401
    assert _token(live, "nurse", NEW_PASSWORD).status_code == 200
    with live.services.db.session() as session:
        session.execute(
            update(User.__table__).where(User.__table__.c.id == user_id).values(password_hash=old_hash)
        )
    assert _token(live, "nurse", PASSWORD).status_code == 401
    assert _broken(live) == [f"user id {user_id} (nurse)"]


def test_the_whole_row_from_before_a_password_change_does_not_sign_in(live: Any) -> None:
    user_id = _user(live, "porter", "operator")
    copy = _copy(live, user_id)  # old hash and the seal over it
    _change(live, user_id, password=NEW_PASSWORD)
    _put_back(live, copy)
    assert _token(live, "porter", PASSWORD).status_code == 401
    assert _token(live, "porter", NEW_PASSWORD).status_code == 401
    assert _broken(live) == [f"user id {user_id} (porter)"]


def test_a_row_changed_through_the_service_keeps_signing_in(live: Any) -> None:
    """Each change binds the seal to its own entry: the row as the service last wrote it fits."""
    user_id = _user(live, "clerk", "operator")
    _change(live, user_id, full_name="A. Clerk")
    _change(live, user_id, role="investigator")
    r = _token(live, "clerk", PASSWORD)
    assert r.status_code == 200, r.text
    assert _me(live, r.json()["access_token"]).json()["role"] == "investigator"
    assert _broken(live) == []


def test_rows_sealed_before_seals_were_bound_wait_for_upgrade_seals(cli_services: Any) -> None:
    """A row under the version 2 seal (not bound to custody) signs nobody in until `evidence
    upgrade-seals` adopts it, and only where the custody record bears it out: an older copy put
    back before the upgrade (active again where custody says deactivated) is refused."""
    from typer.testing import CliRunner

    from accounts.seals import sealed_values, unsealed_users
    from accounts.service import principal_of
    from chain_of_custody.row_seals import USER_SEALS_V2, user_seal_v2
    from ingest.cli import app

    s = cli_services
    with s.db.session() as session:
        for name in ("stays", "leaver"):
            recorded_user(session, s.ledger, name, PASSWORD, "investigator")
        # deactivated as the service recorded it before seals were bound: an entry with no subject
        s.ledger.append(
            session, "user_changed", "test", details={"user": "leaver", "changes": {"active": False}}
        )
        for row in session.scalars(select(User)):  # the leaver's row as a copy from before: active
            row.active = True
            row.seal = user_seal_v2(s.key.derived_secret(USER_SEALS_V2), sealed_values(row))
    with s.db.session() as session:
        assert principal_of(session, "user:stays", s.key) is None
    assert _notes(s, "without their latest custody entry") == [
        "2 user(s) are sealed without their latest custody entry (sealed before seals were bound to "
        "it), so they sign nobody in: `evidence upgrade-seals` lists them and seals again those the "
        "custody record bears out"
    ]
    with s.db.session() as session:
        verdicts = {u.username: u for u in unsealed_users(session, s.ledger)}
    assert verdicts["stays"].unbound and verdicts["stays"].refused is None
    assert "which holds and matches its custody record" in verdicts["stays"].line()
    assert verdicts["leaver"].refused is not None and "active" in verdicts["leaver"].refused
    upgraded = CliRunner().invoke(app, ["upgrade-seals", "--yes"])
    assert "1 users sealed" in upgraded.output, upgraded.output
    with s.db.session() as session:
        adopted = principal_of(session, "user:stays", s.key)
        assert adopted is not None and adopted.role == "investigator"
        assert principal_of(session, "user:leaver", s.key) is None
