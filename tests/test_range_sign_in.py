"""A player's range signs its caller in within the transaction, and on the worker thread, of its own
look-up and record: not in a read transaction on a thread of its own first (both databases, the real
route). The console session's touch that falls due is still a short write transaction of its own,
after that one and on the same thread; a touch that cannot be written is logged, the range served.
What the sign-in refuses is refused as before and records nothing: an ended, idle or revoked
credential (401), another role (403); and every range served is still recorded on custody."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

import accounts.browser
import accounts.sessions
from accounts.models import UserSession
from accounts.service import end_sessions_of, revoke_tokens
from chain_of_custody.models import CustodyEntry, ViewingRange, ViewingSession
from storage.db import READ_ONLY
from tests.test_cross_site_reads import OUR_PAGE, cookie
from tests.test_incidents_kit import bearer, store_item, user

REASON = "checking the footage of the incident"
NEVER_DUE = timedelta(hours=1)
DATA = bytes(range(256)) * 3000


@pytest.fixture
def client(services: Any) -> Iterator[tuple[TestClient, Any]]:
    from ingest.app import create_app

    with TestClient(create_app(services.settings, services)) as c:
        yield c, services


class Begun:
    """The transactions begun from now on: (thread, "read" or "write"), in order."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seen: list[tuple[str, str]] = []
        event.listen(engine, "begin", self._begin)

    def _begin(self, conn: Any) -> None:
        kind = "read" if conn.get_execution_options().get(READ_ONLY) else "write"
        self.seen.append((threading.current_thread().name, kind))

    def take(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen

    def remove(self) -> None:
        event.remove(self.engine, "begin", self._begin)


def recorded(s: Any, item_id: str) -> tuple[int, int]:
    """The item's custody entries and its viewings' ranges: what its reads have recorded."""
    with s.db.reading() as session:
        entries = session.scalar(select(func.count()).where(CustodyEntry.item_id == item_id))
        ranges = session.scalar(
            select(func.count(ViewingRange.n))
            .join(ViewingSession, ViewingSession.id == ViewingRange.viewing_id)
            .where(ViewingSession.item_id == item_id)
        )
    return int(entries or 0), int(ranges or 0)


def last_seen(s: Any) -> Any:
    with s.db.reading() as session:
        return session.scalar(select(func.max(UserSession.last_seen_at)))


def signed_in_clip(s: Any) -> tuple[Any, str, dict[str, str]]:
    """A clip, its content address and an administrator's console session on our own page."""
    user(s, "boss", "admin")
    clip = store_item(s, data=DATA)
    return clip, f"/api/v1/evidence/{clip.id}/content", {**cookie(s, "boss"), **OUR_PAGE}


def test_a_range_by_session_signs_in_within_its_look_up_and_touches_apart(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, s = client
    clip, address, browser = signed_in_clip(s)
    monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", NEVER_DUE)
    opened = c.get(address, params={"reason": REASON}, headers={**browser, "Range": "bytes=0-99"})
    assert opened.status_code == 206 and opened.headers["X-Custody-Viewing-State"] == "opened"
    begun = Begun(s.db.engine)
    try:
        for start in (300, 300_000, 7):
            entries, ranges = recorded(s, clip.id)
            begun.take()
            r = c.get(address, params={"reason": REASON}, headers={**browser, "Range": f"bytes={start}-"})
            assert r.status_code == 206 and r.content == DATA[start:]
            assert r.headers["X-Custody-Viewing-State"] == "joined"
            # One transaction: the session's read, the item's look-up and the range's record.
            assert [kind for _, kind in begun.take()] == ["write"]
            assert recorded(s, clip.id) == (entries, ranges + 1)  # the range is on custody
        # A touch that falls due: a short write transaction of its own, after the look-up's, on its thread.
        monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", timedelta(0))
        before = last_seen(s)
        begun.take()
        r = c.get(address, params={"reason": REASON}, headers={**browser, "Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == DATA[1000:]
        taken = begun.take()
        assert [kind for _, kind in taken] == ["write", "write"], taken
        assert len({thread for thread, _ in taken}) == 1, taken
        assert last_seen(s) > before
    finally:
        begun.remove()


def test_a_touch_that_cannot_be_written_leaves_the_range_served_and_recorded(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    c, s = client
    clip, address, browser = signed_in_clip(s)
    monkeypatch.setattr(accounts.sessions, "TOUCH_EVERY", timedelta(0))  # every range touches

    def busy(*_: Any) -> None:
        raise OperationalError("UPDATE user_sessions", {}, Exception("database is locked"))

    monkeypatch.setattr(accounts.browser, "touch_or_end", busy)
    for start, state in ((100, "opened"), (500, "joined")):
        entries, ranges = recorded(s, clip.id)
        r = c.get(address, params={"reason": REASON}, headers={**browser, "Range": f"bytes={start}-"})
        assert r.status_code == 206 and r.content == DATA[start:]
        assert r.headers["X-Custody-Viewing-State"] == state
        assert recorded(s, clip.id) == (entries + (state == "opened"), ranges + 1)
    assert "session activity not written" in caplog.text


def test_a_range_is_refused_to_an_ended_idle_or_revoked_sign_in_and_records_nothing(client: Any) -> None:
    c, s = client
    boss = user(s, "boss", "admin")
    user(s, "counter", "auditor")
    clip = store_item(s, data=DATA)
    address = f"/api/v1/evidence/{clip.id}/content"
    ranged = {"Range": "bytes=0-99"}

    def read(headers: dict[str, str]) -> Any:
        return c.get(address, params={"reason": REASON}, headers={**headers, **ranged})

    browser, token = {**cookie(s, "boss"), **OUR_PAGE}, bearer(s, "boss")
    assert read(browser).status_code == 206 and read(token).status_code == 206
    nothing_more = recorded(s, clip.id)
    # Signed out (or ended by an administrator), and every token revoked.
    with s.db.session() as session:
        end_sessions_of(session, boss)
        revoke_tokens(session, boss)
    assert read(browser).status_code == 401
    assert read(token).status_code == 401
    # Idle past the timeout: refused, and the session's end is written (after the look-up's transaction).
    idle = {**cookie(s, "boss"), **OUR_PAGE}
    with s.db.session() as session:
        row = session.scalars(select(UserSession).where(UserSession.ended_at.is_(None))).one()
        row.last_seen_at -= timedelta(minutes=s.settings.console_idle_minutes + 1)
        idle_hash = row.token_hash
    assert read(idle).status_code == 401
    with s.db.reading() as session:
        assert session.get(UserSession, idle_hash).ended_at is not None
    # Another role; a cookie of no session (a grant beside a reason is looked at once signed in).
    assert read({**cookie(s, "counter"), **OUR_PAGE}).status_code == 403
    unknown = {"Cookie": "evidence_session=no-session-of-ours", **OUR_PAGE, **ranged}
    both = {"reason": REASON, "grant": "g" * 20}
    assert c.get(address, params=both, headers=unknown).status_code == 401
    assert c.get(address, params=both, headers={**token, **ranged}).status_code == 401
    assert recorded(s, clip.id) == nothing_more
