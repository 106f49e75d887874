"""A console page's requests sign in by cookie without a write transaction: the session is looked up
in a read, and only the person's activity (at most every ``TOUCH_EVERY``) or an idle session's end
is written, in a short transaction of its own after the read (both databases, the real routes).

On SQLite a write transaction waits for the one write lock: the console's poll of an export's
progress waited for the build's recording transaction to end before it could sign in
(tests/test_export_status_polls.py shows the poll answering now).
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

import accounts.sessions
from storage.db import READ_ONLY
from tests.test_console_kit import session_client
from tests.test_incidents_kit import PASSWORD, user

NEVER_DUE = timedelta(hours=1)  # no touch falls due during the test: every request only reads


class SignInTransactions:
    """The transactions the cookie's sign-in begins, in order: "read" (``Database.reading``) or
    "write". Other threads' transactions (the clock, the export builder) are not counted."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seen: list[str] = []
        event.listen(engine, "begin", self._begin)

    def _begin(self, conn: Any) -> None:
        if any(f.filename.endswith("accounts/browser.py") for f in traceback.extract_stack()):
            self.seen.append("read" if conn.get_execution_options().get(READ_ONLY) else "write")

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen

    def remove(self) -> None:
        event.remove(self.engine, "begin", self._begin)


def test_a_cookie_sign_in_reads_and_writes_only_a_due_touch_apart(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed in by cookie, a read (an API route and a page) takes only a read transaction; a touch
    that falls due is one short write transaction after the read; a page's background refresh,
    which does not count as the person being there, writes nothing even when one would be due."""
    user(live.services, "aud_cookie", "auditor")
    monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", NEVER_DUE)
    client, _ = session_client(live.url, "aud_cookie", PASSWORD)
    sign_ins = SignInTransactions(live.services.db.engine)
    try:
        assert client.get("/api/v1/me").status_code == 200
        assert sign_ins.take() == ["read"]
        assert client.get("/performance").status_code == 200
        assert sign_ins.take() == ["read"]
        monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", timedelta(0))  # every request touches
        assert client.get("/api/v1/me").status_code == 200
        assert sign_ins.take() == ["read", "write"]
        background = {"X-Console-Background": "1"}
        assert client.get("/api/v1/me", headers=background).status_code == 200
        assert sign_ins.take() == ["read"]
    finally:
        sign_ins.remove()


def test_a_touch_that_cannot_be_written_does_not_refuse_the_request(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due touch whose write fails (the write lock held past its wait, the database busy) is
    logged and the request answered: the person is signed in already, and an unwritten touch only
    brings the idle end sooner."""
    from sqlalchemy.exc import OperationalError

    import accounts.browser

    user(live.services, "aud_touch", "auditor")
    client, _ = session_client(live.url, "aud_touch", PASSWORD)
    monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", timedelta(0))  # every request touches

    def busy(*_: Any) -> None:
        raise OperationalError("UPDATE user_sessions", {}, Exception("database is locked"))

    monkeypatch.setattr(accounts.browser, "touch_or_end", busy)
    r = client.get("/api/v1/me")
    assert r.status_code == 200 and r.json()["username"] == "aud_touch", r.text
