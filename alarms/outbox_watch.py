"""The outbox's watch for rows changed in the database (``chain_of_custody.outbox_seals``).

The relay only reads rows that are unsent and due, so a row marked sent, or put off, by SQL is
never read again: the watch looks for them, at most every :data:`SWEEP_EVERY`, before a claim. A
row marked sent without the service's mark is put back unsent and due now; one due later than its
sealed time is put back to it; each with a warning naming the row and an ``alarm_changed`` entry
(``outbox_put_back``). What a pass reads is bounded by the rows still unsent and those queued
since the last pass, never by the rows delivered before: a cursor follows the ids (lagging
:data:`SETTLED` behind the newest, so a transaction that commits late is not passed over), and the
rows last seen unsent are followed by id, so one marked sent by SQL is still looked at. The row
the cursor stands on is read with them: gone, or another row under its id (SQLite gives an id
again once the purge has emptied the top of the table), the ids were given again, and the watch
starts over from the first row rather than pass the new rows over.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.ledger import Ledger
from chain_of_custody.outbox_seals import (
    Delivery,
    SealsBegan,
    content_holds,
    delivery_of,
    due_mark,
    put_back_details,
)
from chain_of_custody.registry_replay import ALARM_SERVICE
from storage.db import Database

from .models import AlarmOutbox

log = logging.getLogger(__name__)

SWEEP_EVERY = timedelta(seconds=30)
SETTLED = timedelta(minutes=2)  # how long after its queueing a row's id is taken to be committed

_LOOKED_AT = (
    AlarmOutbox.id,
    AlarmOutbox.channel,
    AlarmOutbox.alarm_id,
    AlarmOutbox.created_at,
    AlarmOutbox.seal,
    AlarmOutbox.next_attempt_at,
    AlarmOutbox.due_seal,
    AlarmOutbox.sent_at,
    AlarmOutbox.sent_seal,
)


class OutboxWatch:
    """Finds outbox rows marked sent or put off by SQL and puts them back (see the module)."""

    def __init__(self, db: Database, secret: bytes, ledger: Ledger | None) -> None:
        self.db, self.secret, self.ledger = db, secret, ledger
        self.after = 0  # every row up to this id was looked at, and is sent as sealed or followed
        self.after_queued: datetime | None = None  # when the row the cursor stands on was queued
        self.unsent: set[int] = set()
        self.began: SealsBegan | None = None
        self.restarts = 0  # passes that found the cursor's row gone and started over (for the tests)
        self.swept_at: datetime | None = None
        self.looked_at = 0  # rows read, all told (what a pass costs, for the tests)
        self._lock = threading.Lock()

    def older(self, session: Session, row: Any) -> bool:
        """Whether a row without a seal was queued before seals began (``SealsBegan``)."""
        if row.seal is not None:
            return False
        if self.began is None:
            self.began = SealsBegan(self._first_sealed(session), self._custody_public())
        return self.began.removed(session, row) is None

    def sweep_if_due(self, now: datetime) -> None:
        """A pass, if none ran within :data:`SWEEP_EVERY` (or the clock went back) and no other
        thread of this process is in one; one that fails is logged and the claim goes on."""
        due = self.swept_at is None or not self.swept_at <= now < self.swept_at + SWEEP_EVERY
        if not due or not self._lock.acquire(blocking=False):
            return
        try:
            self.sweep(now)
            self.swept_at = now
        except Exception:  # noqa: BLE001 - the due rows must still be sent
            log.exception("a sweep of the outbox for rows changed in the database failed")
        finally:
            self._lock.release()

    def sweep(self, now: datetime) -> int:
        """Put back every row not yet delivered as the service sealed it; how many."""
        with self.db.session() as session:
            if self.began is None:
                self.began = SealsBegan(self._first_sealed(session), self._custody_public())
            rows = self._rows(session, self.after, self.unsent)
            if self.after and not self._cursor_stands(rows):
                log.warning(
                    "the alarm outbox's ids were given again: its watch starts over from the first row",
                    extra={"outbox": self.after},
                )
                self.after, self.after_queued, self.unsent = 0, None, set()
                self.restarts += 1
                rows = self._rows(session, 0, set())
            rows = [row for row in rows if row.id > self.after or row.id in self.unsent]
            older = {row.id for row in rows if self.older(session, row)}
        self.looked_at += len(rows)
        put_back = 0
        for row in rows:
            if row.id in older:
                continue  # taken as it stands until the upgrade seals it
            delivery = delivery_of(self.secret, row, now)
            if delivery.due is None:
                self.unsent.discard(row.id)
                continue
            self.unsent.add(row.id)
            if delivery.altered is not None and self._put_back(row, delivery, now):
                put_back += 1
        young = [row.id for row in rows if row.created_at > now - SETTLED]
        settled = [row for row in rows if not young or row.id < min(young)]
        cursor = max(settled, key=lambda row: row.id, default=None)
        if cursor is not None and cursor.id > self.after:
            self.after, self.after_queued = cursor.id, cursor.created_at
        return put_back

    def _rows(self, session: Session, after: int, unsent: set[int]) -> list[Any]:
        """The rows a pass reads: those above ``after``, those ``unsent`` and the cursor's own."""
        o = AlarmOutbox
        looked = or_(o.id > after, o.id.in_(sorted(unsent | {after})))
        return list(session.execute(select(*_LOOKED_AT).where(looked).order_by(o.id)))

    def _cursor_stands(self, rows: list[Any]) -> bool:
        """Whether the row the cursor stands on is still the one it was (not gone, nor another)."""
        return any(row.id == self.after and row.created_at == self.after_queued for row in rows)

    def _custody_public(self) -> bytes | None:
        return self.ledger.key.public_raw if self.ledger is not None else None

    def _first_sealed(self, session: Session) -> int | None:
        q = select(AlarmOutbox).where(AlarmOutbox.seal.is_not(None)).order_by(AlarmOutbox.id).limit(20)
        return next((row.id for row in session.scalars(q) if content_holds(self.secret, row)), None)

    def _put_back(self, row: Any, delivery: Delivery, now: datetime) -> bool:
        """Put one row back unsent and due by what its seals bear out, if nobody wrote it since."""
        o, due = AlarmOutbox, delivery.due or now
        same = o.sent_at.is_(None) if row.sent_at is None else o.sent_at == row.sent_at
        with self.db.session() as session:
            done = session.execute(
                update(o)
                .where(o.id == row.id, same, o.next_attempt_at == row.next_attempt_at)
                .values(
                    sent_at=None,
                    sent_seal=None,
                    next_attempt_at=due,
                    due_seal=due_mark(self.secret, row.seal, due),
                )
            )
            if not getattr(done, "rowcount", 0):
                return False
            log.warning(
                "an alarm outbox row is not as the service sealed it: put back to be sent",
                extra={"outbox": row.id, "alarm": row.alarm_id, "found": delivery.altered},
            )
            self.record(session, row, str(delivery.altered), now)
        return True

    def record(self, session: Session, row: Any, why: str, now: datetime) -> None:
        """The ledger's record of an outbox row found altered."""
        if self.ledger is not None:
            details = put_back_details(row, why)
            self.ledger.append(session, CustodyAction.ALARM_CHANGED, ALARM_SERVICE, details=details, at=now)
