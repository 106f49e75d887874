"""What a player's range pays before its first byte, besides its checks: no connection check on a
pooled connection used a moment ago (a ping a checkout was two or three round trips a range), and
no hop to a worker thread to hand over the first block, already read and checked. A connection
that lay idle is still checked, and one the server dropped meanwhile is replaced unseen."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import starlette.concurrency
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from starlette.types import Message, Receive, Scope, Send

import storage.db
from storage.db import make_engine
from tests.test_incidents_kit import bearer, store_item, user

REASON = "checking the footage of the incident"


@pytest.fixture
def database_url(pg_url: str) -> str:
    """These tests are about PostgreSQL's connection pool (SQLite's pool has no checks)."""
    return pg_url


class FirstByte:
    """The application, noting in ``events`` when a body's first byte is sent."""

    def __init__(self, app: Any, events: list[str]) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.events.append("byte")
            await send(message)

        await self.app(scope, receive, sending)


@pytest.fixture
def client(services: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Any, list[str]]]:
    from ingest.app import create_app

    events: list[str] = []
    original = starlette.concurrency._next

    def hop(iterator: Any) -> Any:
        events.append("hop")
        return original(iterator)

    monkeypatch.setattr(starlette.concurrency, "_next", hop)
    with TestClient(FirstByte(create_app(services.settings, services), events)) as c:
        yield c, services, events


def test_a_range_checks_no_connection_used_a_moment_ago(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    c, s, _ = client
    user(s, "boss", "admin")
    clip = store_item(s, data=bytes(range(256)) * 2000)
    address = f"/api/v1/evidence/{clip.id}/content"
    headers = bearer(s, "boss")
    warm = c.get(address, params={"reason": REASON}, headers={**headers, "Range": "bytes=0-99"})
    assert warm.status_code == 206  # the object's block digests are kept from here on
    pings: list[object] = []
    dialect = s.db.engine.dialect
    original = dialect.do_ping

    def counted(conn: Any) -> bool:
        pings.append(conn)
        return bool(original(conn))

    monkeypatch.setattr(dialect, "do_ping", counted)
    for start in (1000, 200_000, 400_000, 100):
        r = c.get(address, params={"reason": REASON}, headers={**headers, "Range": f"bytes={start}-"})
        assert r.status_code == 206 and r.content == (bytes(range(256)) * 2000)[start:]
        assert r.headers["X-Custody-Viewing-State"] in ("opened", "joined")
    assert pings == []


def test_the_first_block_is_sent_before_any_worker_thread_hop(client: Any) -> None:
    c, s, events = client
    user(s, "boss", "admin")
    data = b"z" * 700_000
    clip = store_item(s, data=data)
    address = f"/api/v1/evidence/{clip.id}/content"
    headers = {**bearer(s, "boss"), "Range": "bytes=5000-"}
    assert c.get(address, params={"reason": REASON}, headers={**bearer(s, "boss")}).status_code == 200
    for _ in range(2):  # the range that opens the viewing, then one that joins it
        events.clear()
        r = c.get(address, params={"reason": REASON}, headers=headers)
        assert r.status_code == 206 and r.content == data[5000:]
        assert events[0] == "byte", events
        assert "hop" in events  # the later blocks are still read on a worker thread


def test_a_joined_range_takes_one_transaction_for_its_look_up_and_record(client: Any) -> None:
    c, s, _ = client
    user(s, "boss", "admin")
    data = bytes(range(256)) * 3000
    clip = store_item(s, data=data)
    address = f"/api/v1/evidence/{clip.id}/content"
    headers = bearer(s, "boss")
    opened = c.get(address, params={"reason": REASON}, headers={**headers, "Range": "bytes=0-99"})
    assert opened.headers["X-Custody-Viewing-State"] == "opened"
    begun: list[str] = []

    def begin(conn: Any) -> None:
        begun.append(threading.current_thread().name)

    event.listen(s.db.engine, "begin", begin)
    try:
        for start in (300, 300_000, 500_000, 7):
            begun.clear()
            r = c.get(address, params={"reason": REASON}, headers={**headers, "Range": f"bytes={start}-"})
            assert r.status_code == 206 and r.content == data[start:]
            assert r.headers["X-Custody-Viewing-State"] == "joined"
            assert r.headers["X-Custody-Viewing"] == opened.headers["X-Custody-Viewing"]
            # one for the sign-in, the item's look-up, its visibility and the range's record
            assert len(begun) == 1, begun
    finally:
        event.remove(s.db.engine, "begin", begin)


def test_an_idle_connection_dropped_by_the_server_is_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.db, "PING_AFTER_IDLE_SECONDS", 0.0, raising=False)
    engine = make_engine(pg_url)
    other = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with other.connect() as killer:
            assert killer.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar_one()
            killer.commit()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()
        other.dispose()
