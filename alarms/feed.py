"""The control room's change feed: every change of every alarm, in the order it must be seen.

Rows are written at the commit of the change (``alarms.staging``), in commit order, and hold the
alarm as it then stood (:func:`alarm_view`). The live stream (``alarms.api``) reads the table, not
memory, so a change made by any instance reaches operators connected to any other; one
:class:`FeedWatcher` per process polls the newest id and wakes the open streams, and an alarm change
committed by this process pokes it to look at once (``AlarmService.committed_listeners``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from chain_of_custody.raise_seals import vouched_view
from storage.db import Database

from .models import AlarmChange, AlarmRecord
from .staging import stage_feed

_TIMES = (
    "raised_at",
    "occurred_at",
    "amber_deadline",
    "red_at",
    "ack_due_at",
    "acknowledged_at",
    "escalated_at",
    "cancel_requested_at",
    "condition_cleared_at",
    "resolved_at",
    "next_deadline",
    "updated_at",
)


def alarm_view(row: AlarmRecord) -> dict[str, Any]:
    """An alarm as the API and the live stream show it (JSON-friendly)."""
    out: dict[str, Any] = {
        "id": row.id,
        "device_id": row.device_id,
        "wearer": row.wearer,
        "site": row.site,
        "kind": row.kind,
        "severity": row.severity,
        "status": row.status,
        "source_event_id": row.source_event_id,
        "reason": row.reason,
        "visit_id": row.visit_id,
        "escalation_reason": row.escalation_reason,
        "acknowledged_by": row.acknowledged_by,
        "escalated_by": row.escalated_by,
        "resolved_by": row.resolved_by,
        "outcome": row.outcome,
        "resolution_note": row.resolution_note,
        "note": row.note,
        "position": (
            {"lat": row.lat, "lon": row.lon, "accuracy_m": row.accuracy_m} if row.lat is not None else None
        ),
        "battery": row.battery,
        "late": row.late,
        "evidence_item_id": row.evidence_item_id,
        "voice_memo_item_id": row.voice_memo_item_id,
        "incident_id": row.incident_id,
    }
    for name in _TIMES:
        value = getattr(row, name)
        out[name] = value.isoformat() if value is not None else None
    return out


def shown_view(secret: bytes, row: AlarmRecord) -> dict[str, Any]:
    """An alarm as a reader is shown it: its view, but no note, position or payload a row altered in
    the database gives it (``chain_of_custody.raise_seals.vouched_view``)."""
    return vouched_view(secret, alarm_view(row), row.provisional, row.raise_seal)


def record_change(session: Session, row: AlarmRecord, change: str, at: datetime, **more: Any) -> None:
    """Announce a change of ``row`` on the feed, at the commit of the caller's transaction (``more``:
    what the change itself carries, such as the ``position`` of a ``moved`` alarm)."""
    body = {"change": change, "at": at.isoformat(), "alarm": alarm_view(row), **more}
    body["seal"] = row.seal  # the stream checks it, and sends the change without it (``alarms.reach``)
    body["raise"] = {"seal": row.raise_seal, "provisional": row.provisional}  # likewise
    stage_feed(session, AlarmChange(alarm_id=row.id, change=change, at=at, body=json.dumps(body)))


def forget_old_changes(session: Session, before: datetime) -> None:
    """Old feed rows go (the alarms and custody keep the history); the newest stays, so ids keep
    rising on SQLite."""
    newest = session.scalar(select(func.max(AlarmChange.id)))
    if newest is not None:
        session.execute(delete(AlarmChange).where(AlarmChange.at < before, AlarmChange.id < newest))


def changes_after(db: Database, cursor: int, limit: int) -> list[tuple[int, str]]:
    """Feed rows after ``cursor``, oldest first: (id, JSON body). Only reads: a live stream's poll
    waits for no writer."""
    with db.reading() as session:
        return [
            (row.id, row.body)
            for row in session.execute(
                select(AlarmChange.id, AlarmChange.body)
                .where(AlarmChange.id > cursor)
                .order_by(AlarmChange.id)
                .limit(limit)
            )
        ]


class FeedWatcher:
    """Polls the newest change id for this process and wakes every open stream when it moves; an
    alarm change committed by this process pokes it to look at once (others' are seen at the poll)."""

    def __init__(self, db: Database, poll: timedelta = timedelta(seconds=0.25)) -> None:
        self.db = db
        self.poll_s = poll.total_seconds()
        self.latest = 0
        self.streams = 0
        self._changed: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poked: asyncio.Event | None = None

    def poke(self) -> None:
        """Thread-safe: something committed an alarm change; look now."""
        loop, poked = self._loop, self._poked
        if loop is not None and poked is not None and self.streams > 0:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(poked.set)

    def latest_id(self) -> int:
        with self.db.reading() as session:
            return int(session.scalar(select(func.max(AlarmChange.id))) or 0)

    def join(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # The first stream, or the application started again in this process on a new event
            # loop: what belonged to the old loop (its task, condition and streams) is gone with it.
            self._loop, self._task, self._changed, self.streams = loop, None, None, 0
        self.streams += 1
        if self._task is None or self._task.done():
            self._poked = asyncio.Event()
            self._task = loop.create_task(self._run())

    def leave(self) -> None:
        self.streams -= 1

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made on the event loop that serves the streams
            self._changed = asyncio.Condition()
        return self._changed

    async def _run(self) -> None:
        while self.streams > 0:
            with contextlib.suppress(Exception):  # a database hiccup: try again next poll
                latest = await asyncio.to_thread(self.latest_id)
                if latest != self.latest:
                    self.latest = latest
                    changed = self._condition()
                    async with changed:
                        changed.notify_all()
            poked = self._poked
            if poked is None:
                await asyncio.sleep(self.poll_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poked.wait(), self.poll_s)
            poked.clear()

    async def wait_beyond(self, cursor: int, timeout: float) -> None:
        changed = self._condition()
        async with changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait_for(lambda: self.latest > cursor), timeout)
