"""A credential or read grant, once ended, stays ended whatever is written in the database.

Ending a bearer token (revoked) or a console session (ended) narrows what its row grants, so its
seal does not cover it; whoever can write the database could put the row back as it was (the old
seal still fits). Each end is therefore a ``credential_ended`` custody entry, found by a keyed
digest of the credential, and a row the ledger says was ended signs nobody in, however it reads.
Read grants are sealed over everything they stand for, so one planted or widened by SQL is
refused. Through the real server, on both databases; ``evidence verify`` names each.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, insert, select, update

from accounts.models import ApiToken, User, UserSession
from accounts.service import sign_in_mark, token_digest
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from chain_of_custody.verify import VerifyOptions, verify_service
from tests.conftest import ADMIN_PASSWORD, recorded_user
from tests.test_credential_seals import OPERATOR_PASSWORD, _console_client, _me, _token
from tests.test_incidents_kit import store_item

REASON = "Complaint about the night shift, ward 7"


def _signed_in(url: str, username: str, password: str) -> tuple[httpx.Client, str]:
    client = _console_client(url, username, password)
    page = client.get("/welcome")
    csrf = page.text.split('data-csrf="', 1)[1].split('"', 1)[0]
    assert csrf, page.text
    return client, csrf


def _problems(live: Any, kind: str) -> list[str]:
    with live.services.db.session() as session:
        report = verify_service(
            session, live.services.store, live.services.key, VerifyOptions(check_objects=False)
        )
    return sorted(p.where for p in report.problems if p.kind == kind)


def _operator(live: Any) -> int:
    with live.services.db.session() as session:
        return recorded_user(session, live.services.ledger, "operator", OPERATOR_PASSWORD, "operator")


def test_a_token_and_session_ended_by_a_password_change_stay_ended_when_put_back_by_sql(live: Any) -> None:
    operator_id = _operator(live)
    token = _token(live.url, "operator", OPERATOR_PASSWORD)
    bearer = {"Authorization": f"Bearer {token}"}
    browser, _ = _signed_in(live.url, "operator", OPERATOR_PASSWORD)
    cookie = str(browser.cookies["evidence_session"])
    assert _me(live.url, headers=bearer).status_code == 200
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 200
    changed = httpx.patch(
        f"{live.url}/api/v1/users/{operator_id}",
        json={"password": "another long password"},
        headers=live.admin(),
    )
    assert changed.status_code == 200, changed.text
    assert _me(live.url, headers=bearer).status_code == 401
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 401
    with live.services.db.session() as session:  # put back by hand: the old seals still fit the rows
        session.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.token_hash == token_digest(token))
            .values(revoked=False)
        )
        session.execute(
            update(UserSession.__table__)
            .where(UserSession.__table__.c.token_hash == hashlib.sha256(cookie.encode()).hexdigest())
            .values(ended_at=None)
        )
    assert _me(live.url, headers=bearer).status_code == 401
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 401
    assert _problems(live, "credential_end_undone") == [
        f"bearer token of user id {operator_id}",
        f"console session of user id {operator_id}",
    ]
    # The operator signs in again with the new password, and the administrator's token still works.
    fresh, _ = _signed_in(live.url, "operator", "another long password")
    assert fresh.get("/api/v1/me").json()["username"] == "operator"
    assert _me(live.url, headers=live.admin()).status_code == 200


def test_a_signed_out_session_restored_from_a_copy_of_its_row_stays_ended(live: Any) -> None:
    browser, csrf = _signed_in(live.url, "admin", ADMIN_PASSWORD)
    cookie = str(browser.cookies["evidence_session"])
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    with live.services.db.session() as session:  # a copy taken while it was live
        copy = dict(
            session.execute(select(UserSession.__table__).where(UserSession.token_hash == digest))
            .one()
            ._mapping
        )
    assert copy["seal"] and copy["ended_at"] is None
    assert browser.post("/sign-out", data={"csrf": csrf}).status_code == 303
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 401
    with live.services.db.session() as session:
        session.execute(delete(UserSession.__table__).where(UserSession.__table__.c.token_hash == digest))
        session.execute(insert(UserSession.__table__).values(**copy))
    assert _me(live.url, cookies={"evidence_session": cookie}).status_code == 401
    with live.services.db.session() as session:
        admin_id = session.scalar(select(User.id).where(User.username == "admin"))
    assert _problems(live, "credential_end_undone") == [f"console session of user id {admin_id}"]
    again, _ = _signed_in(live.url, "admin", ADMIN_PASSWORD)
    assert again.get("/api/v1/me").status_code == 200


def test_ends_from_before_the_ledger_recorded_them_are_recorded_once(live: Any) -> None:
    """A token revoked before ends were recorded: listed, then recorded, and it stays revoked."""
    from accounts.ends import record_unrecorded_ends, unrecorded_ends

    token = _token(live.url, "admin", ADMIN_PASSWORD)
    with live.services.db.session() as session:  # revoked as the service did before
        session.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.token_hash == token_digest(token))
            .values(revoked=True)
        )
    key = live.services.key.derived_secret(CREDENTIAL_SEALS)
    with live.services.db.session() as session:
        listed = unrecorded_ends(session, key)
    assert [(e.kind, e.username) for e in listed] == [("token", "admin")]
    assert token not in repr(listed) and token_digest(token) not in " ".join(e.line() for e in listed)
    with live.services.db.session() as session:
        assert record_unrecorded_ends(session, live.services.ledger, key, "user:admin") == 1
    with live.services.db.session() as session:
        assert unrecorded_ends(session, key) == []
        session.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.token_hash == token_digest(token))
            .values(revoked=False)
        )
    assert _me(live.url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert _me(live.url, headers=live.admin()).status_code == 200


def test_a_read_grant_planted_or_widened_by_sql_is_refused(live: Any) -> None:
    from ingest.models import ReadGrant

    s = live.services
    clip, other = store_item(s), store_item(s)
    admin = live.admin()

    def grant(item: str, use: str = "download") -> str:
        r = httpx.post(
            f"{live.url}/api/v1/evidence/{item}/read-grants",
            headers=admin,
            json={"reason": REASON, "use": use},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["url"]).split("grant=", 1)[1]

    def read(item: str, token: str) -> int:
        return httpx.get(
            f"{live.url}/api/v1/evidence/{item}/content", params={"grant": token}, headers=admin, timeout=15
        ).status_code

    def edit(token: str, **values: object) -> None:
        with s.db.session() as session:
            session.execute(
                update(ReadGrant.__table__)
                .where(ReadGrant.__table__.c.token_hash == hashlib.sha256(token.encode()).hexdigest())
                .values(**values)
            )

    # Planted: a grant the planter holds the token of, for the administrator's own sign-in.
    planted = secrets.token_urlsafe(32)
    with s.db.session() as session:
        admin_id = session.scalar(select(User.id).where(User.username == "admin"))
        session.execute(
            insert(ReadGrant.__table__).values(
                token_hash=hashlib.sha256(planted.encode()).hexdigest(),
                item_id=clip.id,
                user_id=admin_id,
                sign_in=sign_in_mark("token", token_digest(live.admin_token)),
                use="play",
                reason="a reason nobody stated",
                created_at=datetime.now(UTC),
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
    assert read(clip.id, planted) == 403
    # Widened: moved to another item, made a player's, given a later expiry, its reason changed.
    moved, replayed, longer, reworded = grant(clip.id), grant(clip.id), grant(clip.id, "play"), grant(clip.id)
    edit(moved, item_id=other.id)
    edit(replayed, use="play")
    edit(longer, expires_at=datetime.now(UTC) + timedelta(days=30))
    edit(reworded, reason="a reason nobody stated")
    assert read(other.id, moved) == 403
    assert read(clip.id, replayed) == 403
    assert read(clip.id, longer) == 403
    assert read(clip.id, reworded) == 403
    # A genuine grant is served as before.
    assert read(clip.id, grant(clip.id)) == 200
    assert _problems(live, "read_grant_seal_broken") == [f"read grant of user id {admin_id}"] * 5


def test_the_record_credential_ends_command_lists_before_it_records(
    tmp_path: Any, seaweed: Any, monkeypatch: Any
) -> None:
    from typer.testing import CliRunner

    from accounts.seals import SignInSeals
    from accounts.service import issue_token, resolve_token
    from ingest.cli import app
    from ingest.services import build_services
    from ingest.settings import get_settings
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'evidence.db'}", seaweed)
    s = build_services(settings)
    key = s.key.derived_secret(CREDENTIAL_SEALS)
    try:
        with s.db.session() as session:
            user_id = recorded_user(session, s.ledger, "old-admin", ADMIN_PASSWORD, "admin")
            row = session.get(User, user_id)
            assert row is not None
            token, _ = issue_token(session, row, timedelta(hours=1), key)
        with s.db.session() as session:  # revoked before ends were recorded
            session.execute(update(ApiToken.__table__).values(revoked=True))
        for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
            monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
        monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
        get_settings.cache_clear()
        runner = CliRunner()
        listed = runner.invoke(app, ["record-credential-ends"])
        assert listed.exit_code == 0 and "bearer token of old-admin" in listed.output, listed.output
        assert token not in listed.output and token_digest(token) not in listed.output
        assert "1 ends would be recorded" in listed.output
        done = runner.invoke(app, ["record-credential-ends", "--yes"])
        assert done.exit_code == 0 and "1 ends recorded" in done.output, done.output
        again = runner.invoke(app, ["record-credential-ends"])
        assert "0 ends would be recorded" in again.output, again.output
        with s.db.session() as session:
            session.execute(update(ApiToken.__table__).values(revoked=False))
        with s.db.session() as session:
            assert resolve_token(session, token, SignInSeals.of(s.key)) is None
    finally:
        get_settings.cache_clear()
        s.db.dispose()


def test_a_session_ended_by_its_idle_timeout_is_not_revived_by_moving_its_last_activity(live: Any) -> None:
    """The idle timeout counts from the last activity the service sealed: a ``last_seen_at`` moved
    forward by SQL (with ``ended_at`` cleared) revives nothing, and verify names the row. Moving it
    back only brings the timeout nearer."""
    from accounts.sessions import SessionPolicy
    from chain_of_custody.row_seals import activity_mark

    browser, _ = _signed_in(live.url, "admin", ADMIN_PASSWORD)
    cookie = {"evidence_session": str(browser.cookies["evidence_session"])}
    digest = hashlib.sha256(cookie["evidence_session"].encode()).hexdigest()
    assert _me(live.url, cookies=cookie).status_code == 200
    idle = SessionPolicy.from_settings(live.services.settings).idle
    left = datetime.now(UTC) - idle - timedelta(minutes=1)  # as if the service last saw them then
    mark = activity_mark(live.services.key.derived_secret(CREDENTIAL_SEALS), digest, left)
    table = UserSession.__table__
    with live.services.db.session() as session:
        session.execute(
            update(table).where(table.c.token_hash == digest).values(last_seen_at=left, activity_seal=mark)
        )
    assert _me(live.url, cookies=cookie).status_code == 401  # idle: ended
    with live.services.db.session() as session:
        assert session.get(UserSession, digest).ended_at is not None  # type: ignore[union-attr]
        session.execute(
            update(table)
            .where(table.c.token_hash == digest)
            .values(ended_at=None, last_seen_at=datetime.now(UTC))
        )
    with live.services.db.session() as session:
        admin_id = session.scalar(select(User.id).where(User.username == "admin"))
    assert _problems(live, "session_activity_altered") == [f"console session of user id {admin_id}"]
    assert _me(live.url, cookies=cookie).status_code == 401
    # A live session is touched and its activity sealed again: it keeps working.
    again, _ = _signed_in(live.url, "admin", ADMIN_PASSWORD)
    assert again.get("/api/v1/me").status_code == 200
