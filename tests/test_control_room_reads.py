"""The control room's reads (the lone-worker list, the alarm list, one alarm) answer while another
transaction holds SQLite's write lock: they read in ``Database.reading`` blocks and wait for no
writer (both databases, the real routes; on PostgreSQL no write blocks a read anyway).

CI saw ``GET /api/v1/lone-workers`` take 7.0 s: its list once began a write transaction, so it
queued for the write lock behind whatever long write held it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import update

from devices.models import Device
from tests.test_incidents_kit import bearer, user

ANSWER_WITHIN_S = 5.0  # each read takes tens of milliseconds; one queued behind the held writer waits for it


@contextmanager
def writer_held(s: Any) -> Iterator[None]:
    """Another transaction holds the writer meanwhile (on SQLite: ``BEGIN IMMEDIATE``, the one write lock)."""
    held, let_go = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        with s.db.session() as session:  # on SQLite: BEGIN IMMEDIATE, the one write lock
            session.execute(update(Device).where(Device.id == "no-such-device").values(name="x"))
            held.set()
            let_go.wait(120)

    writer = threading.Thread(target=hold_the_writer, name="held-writer")
    writer.start()
    try:
        assert held.wait(30), "the writer never began"
        yield
    finally:
        let_go.set()
        writer.join(30)


def answers_while_a_writer_holds(live: Any, ask: list[tuple[httpx.Client, str, int]]) -> None:
    """Each ``(client, path, status)`` asked, in turn, while another transaction holds the writer:
    each answers within ``ANSWER_WITHIN_S`` with its status."""
    with writer_held(live.services):
        for client, path, status in ask:
            try:
                got = client.get(path, timeout=ANSWER_WITHIN_S)
            except httpx.TimeoutException:
                raise AssertionError(
                    f"GET {path}: no answer within {ANSWER_WITHIN_S} s while a writer held"
                ) from None
            assert got.status_code == status, (path, got.status_code, got.text[:300])


def test_the_control_rooms_reads_answer_while_a_writer_holds_the_lock(live: Any) -> None:
    s = live.services
    user(s, "mgr_reads", "security_manager", "NORTH")  # a reader by site: seals checked, scope read
    api = httpx.Client(base_url=f"{live.url}/api/v1", headers=bearer(s, "mgr_reads"))
    answers_while_a_writer_holds(
        live,
        [
            (api, path, status)
            for path, status in (("lone-workers", 200), ("alarms", 200), ("alarms/no-such-alarm", 404))
        ],
    )
