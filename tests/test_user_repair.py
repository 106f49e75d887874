"""A user row written in the database is put back by an administrator, as custody last recorded it.

A password hash swapped (or a role raised) by SQL breaks the row's seal (``accounts.seals``): the
account signs nobody in and the users API refuses to change it. ``evidence user repair`` shows the
row beside the custody ledger's last record of the person and, with ``--yes``, restores it with a new
password (custody holds no hash to put back), ends what was issued to it, seals it, and records on
custody which administrator repaired what. Through the real server, on both databases.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from argon2 import PasswordHasher
from sqlalchemy import select, update
from typer.testing import CliRunner

from accounts.models import User
from chain_of_custody.ledger import Ledger
from chain_of_custody.verify import VerifyOptions, verify_service
from tests.conftest import point_cli_at, recorded_user

PASSWORD = "a genuine long password"
PLANTED = "the planter's own password"
NEW = "a new password after the repair"


def _login(url: str, username: str, password: str) -> int:
    r = httpx.post(f"{url}/api/v1/auth/token", data={"username": username, "password": password}, timeout=15)
    return r.status_code


def _user_entries(s: Any, username: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    with s.db.session() as session:
        for e in Ledger.all_entries(session):
            details = json.loads(e.body.details)
            if e.body.action == "user_changed" and details.get("user") == username:
                out.append((e.body.actor, details))
    return out


def test_a_swapped_password_hash_is_repaired_as_custody_records_the_user(live, monkeypatch: Any) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    with s.db.session() as session:
        inv_id = recorded_user(session, s.ledger, "inv", PASSWORD, "investigator", full_name="Ivy Vance")
        recorded_user(session, s.ledger, "op", PASSWORD, "operator")
    token = httpx.post(
        f"{live.url}/api/v1/auth/token", data={"username": "inv", "password": PASSWORD}, timeout=15
    ).json()["access_token"]
    with s.db.session() as session:  # the hash swapped for one of the planter's password, the role raised
        session.execute(
            update(User.__table__)
            .where(User.__table__.c.username == "inv")
            .values(password_hash=PasswordHasher().hash(PLANTED), role="admin")
        )
    assert _login(live.url, "inv", PLANTED) == 401 and _login(live.url, "inv", PASSWORD) == 401
    refused = httpx.patch(
        f"{live.url}/api/v1/users/{inv_id}", json={"password": NEW}, headers=live.admin(), timeout=15
    )
    assert refused.status_code == 409 and "evidence user repair" in refused.text, refused.text

    from ingest.cli import app

    point_cli_at(monkeypatch, s.settings)
    runner = CliRunner()
    shown = runner.invoke(app, ["user", "repair", "inv", "--by", "admin"])
    assert shown.exit_code == 0, shown.output
    role = next(line for line in shown.output.splitlines() if line.strip().startswith("role"))
    assert "'admin'" in role and "'investigator'" in role and "differs" in role, shown.output
    assert "is NOT the one custody entry" in shown.output and "'Ivy Vance'" in shown.output
    assert PLANTED not in shown.output and _login(live.url, "inv", PLANTED) == 401  # shown, not done

    # Only an administrator who can sign in repairs, never their own row.
    by_operator = runner.invoke(
        app, ["user", "repair", "inv", "--by", "op", "--yes"], env={"EVIDENCE_NEW_USER_PASSWORD": NEW}
    )
    assert by_operator.exit_code == 2 and "not an administrator" in by_operator.output, by_operator.output

    done = runner.invoke(
        app, ["user", "repair", "inv", "--by", "admin", "--yes"], env={"EVIDENCE_NEW_USER_PASSWORD": NEW}
    )
    assert done.exit_code == 0 and "repaired" in done.output, done.output
    assert _login(live.url, "inv", NEW) == 200
    assert _login(live.url, "inv", PLANTED) == 401 and _login(live.url, "inv", PASSWORD) == 401
    me = httpx.get(f"{live.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert me.status_code == 401  # what was issued before the repair stays ended
    with s.db.session() as session:
        row = session.scalar(select(User).where(User.username == "inv"))
        assert row is not None and (row.role, row.full_name) == ("investigator", "Ivy Vance")
    actor, last = _user_entries(s, "inv")[-1]
    assert actor == "user:admin", actor
    changes = last["changes"]
    assert changes["repaired"] == ["role", "password"] and changes["role"] == "investigator"
    assert "password_digest" in changes and changes["tokens_revoked"] == 1
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key, VerifyOptions(check_objects=False))
    assert [p for p in report.problems if p.kind.startswith("user_")] == []

    # A row whose seal holds is changed through the users API, not repaired.
    again = runner.invoke(app, ["user", "repair", "inv", "--by", "admin"])
    assert again.exit_code == 1 and "its seal holds" in again.output, again.output
