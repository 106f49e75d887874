"""Bearer tokens and console sessions planted or altered in the database sign nobody in.

Each row of ``api_tokens`` and ``user_sessions`` carries a seal (``accounts.seals``): an HMAC, under
a secret derived from the service key (which the database does not hold), over the row's digest,
user and expiry. Through the real server, on both databases: a row inserted by SQL for an
administrator, with a secret the inserter knows, is refused like an unknown one; a genuine token
moved to another user, and a genuine session whose expiry is pushed back, stop working; genuine
sign-ins and tokens work as before.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select, update

from accounts.models import ApiToken, User, UserSession
from accounts.seals import SignInSeals, seal_tokens, unsealed_tokens
from accounts.service import resolve_token, token_digest
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from chain_of_custody.verify import VerifyOptions, verify_service
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, recorded_user

OPERATOR_PASSWORD = "operator password 1"


def _me(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/me", timeout=15, **kwargs)  # type: ignore[arg-type]


def _user_id(live, username: str) -> int:  # type: ignore[no-untyped-def]
    with live.services.db.session() as session:
        found = session.scalar(select(User.id).where(User.username == username))
    assert found is not None
    return int(found)


def _token(url: str, username: str, password: str) -> str:
    """A bearer token from the token route, as a script signs in."""
    r = httpx.post(
        f"{url}/api/v1/auth/token",
        data={"username": username, "password": password},
        timeout=SIGN_IN_TIMEOUT,
    )
    return str(r.json()["access_token"])


def _console_client(url: str, username: str, password: str) -> httpx.Client:
    """A client signed in to the console through its sign-in form."""
    client = httpx.Client(base_url=url, timeout=15, follow_redirects=False)
    form = client.get("/sign-in")
    token = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = client.post("/sign-in", data={"csrf": token, "username": username, "password": password})
    assert r.status_code == 303, r.text
    return client


def _console_cookie(url: str, username: str, password: str) -> str:
    return str(_console_client(url, username, password).cookies["evidence_session"])


def test_a_session_row_planted_by_sql_signs_nobody_in(live, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    admin_id = _user_id(live, "admin")
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with live.services.db.session() as session:
        session.execute(
            insert(UserSession.__table__).values(
                token_hash=hashlib.sha256(secret.encode()).hexdigest(),
                user_id=admin_id,
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
    with caplog.at_level(logging.WARNING, logger="accounts"):
        r = _me(live.url, cookies={"evidence_session": secret})
    assert r.status_code == 401
    refused = [rec for rec in caplog.records if "seal" in rec.getMessage()]
    assert refused, [rec.getMessage() for rec in caplog.records]
    for rec in refused:  # the warning names no secret, nor the digest the row is found by
        text = rec.getMessage() + repr(rec.__dict__)
        assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() not in text


def test_an_api_token_row_planted_by_sql_does_not_authenticate(live) -> None:  # type: ignore[no-untyped-def]
    admin_id = _user_id(live, "admin")
    token = "evt_" + secrets.token_urlsafe(32)
    with live.services.db.session() as session:
        session.execute(
            insert(ApiToken.__table__).values(
                token_hash=token_digest(token),
                user_id=admin_id,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
                revoked=False,
                created_at=datetime.now(UTC),
            )
        )
    assert _me(live.url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # Nor does a seal copied from a genuine row of another token.
    with live.services.db.session() as session:
        genuine = session.scalar(select(ApiToken).where(ApiToken.token_hash != token_digest(token)))
        assert genuine is not None and genuine.seal
        session.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.token_hash == token_digest(token))
            .values(seal=genuine.seal, expires_at=genuine.expires_at)
        )
    assert _me(live.url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert _me(live.url, headers=live.admin()).status_code == 200  # the genuine one still works


def test_a_genuine_token_moved_to_another_user_stops_working(live) -> None:  # type: ignore[no-untyped-def]
    with live.services.db.session() as session:
        recorded_user(session, live.services.ledger, "operator", OPERATOR_PASSWORD, "operator")
    token = _token(live.url, "operator", OPERATOR_PASSWORD)
    bearer = {"Authorization": f"Bearer {token}"}
    me = _me(live.url, headers=bearer)
    assert me.status_code == 200 and me.json()["role"] == "operator"
    with live.services.db.session() as session:
        session.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.token_hash == token_digest(token))
            .values(user_id=_user_id(live, "admin"))
        )
    assert _me(live.url, headers=bearer).status_code == 401
    assert _me(live.url, headers=live.admin()).json()["role"] == "admin"


def test_a_genuine_session_whose_expiry_is_pushed_back_stops_working(live) -> None:  # type: ignore[no-untyped-def]
    cookie = _console_cookie(live.url, "admin", ADMIN_PASSWORD)
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 200
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    with live.services.db.session() as session:
        row = session.get(UserSession, digest)
        assert row is not None and row.seal
        later = row.expires_at + timedelta(days=30)
        session.execute(
            update(UserSession.__table__)
            .where(UserSession.__table__.c.token_hash == digest)
            .values(expires_at=later)
        )
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 401
    # A new sign-in works as before.
    fresh = _console_cookie(live.url, "admin", ADMIN_PASSWORD)
    assert _me(live.url, cookies={"evidence_session": fresh}).json()["username"] == "admin"


def test_tokens_issued_before_seals_are_listed_then_sealed_once(live) -> None:  # type: ignore[no-untyped-def]
    token = live.admin_token
    bearer = {"Authorization": f"Bearer {token}"}
    with live.services.db.session() as session:  # as a row made before the column was added
        session.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.token_hash == token_digest(token))
            .values(seal=None)
        )
    assert _me(live.url, headers=bearer).status_code == 401
    key = live.services.key.derived_secret(CREDENTIAL_SEALS)
    with live.services.db.session() as session:
        listed = unsealed_tokens(session)
        assert [(t.username, t.token_hash) for t in listed] == [("admin", token_digest(token))]
    with live.services.db.session() as session:
        assert seal_tokens(session, key) == 1
    assert _me(live.url, headers=bearer).status_code == 200
    with live.services.db.session() as session:
        assert unsealed_tokens(session) == []


def test_the_seal_tokens_command_lists_before_it_seals(tmp_path: Any, seaweed: Any, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from ingest.cli import app
    from ingest.services import build_services
    from ingest.settings import get_settings
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'evidence.db'}", seaweed)
    s = build_services(settings)
    token = "evt_" + secrets.token_urlsafe(32)
    try:
        with s.db.session() as session:
            user_id = recorded_user(session, s.ledger, "old-admin", ADMIN_PASSWORD, "admin")
            session.execute(  # a token issued before seals: its row has none
                insert(ApiToken.__table__).values(
                    token_hash=token_digest(token),
                    user_id=user_id,
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                    revoked=False,
                    created_at=datetime.now(UTC),
                )
            )
        key = SignInSeals.of(s.key)
        with s.db.session() as session:
            assert resolve_token(session, token, key) is None
        for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
            monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
        monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
        get_settings.cache_clear()
        runner = CliRunner()
        listed = runner.invoke(app, ["seal-tokens"])
        assert listed.exit_code == 0 and "token of old-admin" in listed.output, listed.output
        assert token not in listed.output and "1 tokens would be sealed" in listed.output
        with s.db.session() as session:
            assert resolve_token(session, token, key) is None  # listing sealed nothing
        done = runner.invoke(app, ["seal-tokens", "--yes"])
        assert done.exit_code == 0 and "1 tokens sealed" in done.output, done.output
        with s.db.session() as session:
            found = resolve_token(session, token, key)
            assert found is not None and found.username == "old-admin"
        again = runner.invoke(app, ["seal-tokens"])
        assert again.exit_code == 0 and "0 tokens would be sealed" in again.output, again.output
    finally:
        get_settings.cache_clear()
        s.db.dispose()


def test_sessions_open_at_the_upgrade_end_and_tokens_wait_for_their_seal(database_url: str) -> None:
    from alembic import command

    from ingest.migrations_runner import alembic_config, upgrade_database
    from storage.db import Database

    command.downgrade(alembic_config(database_url), "0028_idempotency_keys")  # just before the seals
    now = datetime.now(UTC)
    db = Database(database_url)
    try:
        with db.session() as session:  # rows as the service wrote them then: no seal column
            session.execute(
                insert(User.__table__).values(
                    id=7,
                    username="before",
                    password_hash="-",
                    role="admin",
                    full_name="",
                    active=True,
                    failed_logins=0,
                    created_at=now,
                )
            )
            columns = ("token_hash", "user_id", "created_at", "last_seen_at", "expires_at", "ended_at")
            sessions = sa.table("user_sessions", *(sa.column(c) for c in columns))
            session.execute(
                sessions.insert().values(
                    token_hash="a" * 64,
                    user_id=7,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + timedelta(hours=1),
                    ended_at=None,
                )
            )
            tokens = sa.table(
                "api_tokens",
                *(sa.column(c) for c in ("token_hash", "user_id", "expires_at", "revoked", "created_at")),
            )
            session.execute(
                tokens.insert().values(
                    token_hash="b" * 64,
                    user_id=7,
                    expires_at=now + timedelta(hours=1),
                    revoked=False,
                    created_at=now,
                )
            )
        upgrade_database(database_url)
        with db.session() as session:
            ended = session.get(UserSession, "a" * 64)
            assert ended is not None and ended.ended_at is not None and ended.seal is None
            assert abs(ended.ended_at - datetime.now(UTC)) < timedelta(minutes=5)
            assert [t.token_hash for t in unsealed_tokens(session)] == ["b" * 64]
    finally:
        db.dispose()


def test_verify_names_live_credentials_whose_seal_is_missing_or_wrong(live) -> None:  # type: ignore[no-untyped-def]
    admin_id = _user_id(live, "admin")
    planted = "evt_" + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with live.services.db.session() as session:
        values = {"user_id": admin_id, "created_at": now}
        session.execute(  # planted for the administrator, no seal
            insert(ApiToken.__table__).values(
                token_hash=token_digest(planted), expires_at=now + timedelta(hours=1), revoked=False, **values
            )
        )
        session.execute(  # revoked or expired rows grant nothing: not named
            insert(ApiToken.__table__).values(
                token_hash=token_digest(planted + "r"),
                expires_at=now + timedelta(hours=1),
                revoked=True,
                **values,
            )
        )
        session.execute(
            insert(ApiToken.__table__).values(
                token_hash=token_digest(planted + "e"),
                expires_at=now - timedelta(hours=1),
                revoked=False,
                **values,
            )
        )
        session.execute(  # a session row planted with a made-up seal
            insert(UserSession.__table__).values(
                token_hash=hashlib.sha256(planted.encode()).hexdigest(),
                last_seen_at=now,
                expires_at=now + timedelta(hours=1),
                seal="0" * 64,
                **values,
            )
        )
    with live.services.db.session() as session:
        report = verify_service(
            session, live.services.store, live.services.key, VerifyOptions(check_objects=False)
        )
    broken = sorted(
        (p.where, p.detail.split(":")[0]) for p in report.problems if p.kind == "credential_seal_broken"
    )
    assert broken == [
        (f"bearer token of user id {admin_id}", "its row's seal is missing"),
        (f"console session of user id {admin_id}", "its row's seal is wrong"),
    ]
    text = repr(report.problems) + repr(report.notes)  # never a token or its digest
    assert planted not in text and token_digest(planted) not in text
    assert hashlib.sha256(planted.encode()).hexdigest() not in text
