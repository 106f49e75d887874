"""The one lease primitive every queue uses: redaction jobs, export builds, the alarm outbox and the
single writer of a dock upload.

Work that any instance on any host may do is a row. A worker takes a row for a while (a lease: who
holds it and until when, two columns of the row); while it works it renews the lease, and when it
stops renewing (it died, it lost the network) the lease runs out and another worker takes the row.
A lease held until ``T`` is free from ``T`` on. Two ways to take rows:

- :func:`claim` picks due rows nobody else is holding (``SELECT ... FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; SQLite serialises writers, which gives the same guarantee) for the caller to
  :meth:`Lease.grant` in the same transaction: a queue.
- :meth:`Lease.take` takes one known row if its lease is free, by compare-and-set: a single writer.

A queue whose rows have no holder column (the outbox) uses the due time as the lease's end: a row
claimed is pushed into the future, and comes back by itself if its sender never marks it done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, update
from sqlalchemy.orm import InstrumentedAttribute, Session

log = logging.getLogger(__name__)


def claim(session: Session, query: Select[Any], limit: int) -> list[Any]:
    """Up to ``limit`` rows of ``query`` that no other transaction holds, locked to this one."""
    return list(session.scalars(query.limit(limit).with_for_update(skip_locked=True)))


@dataclass(frozen=True)
class Lease:
    """A lease kept in a row: ``holder`` (None for a queue without one) and ``until``."""

    until: InstrumentedAttribute[Any]
    holder: InstrumentedAttribute[Any] | None = None

    def expired(self, now: datetime) -> ColumnElement[bool]:
        """Held once, and ran out."""
        return self.until <= now

    def free(self, now: datetime) -> ColumnElement[bool]:
        """Never held, released, or ran out."""
        return or_(self.until.is_(None), self.until <= now)

    def grant(self, row: Any, holder: str | None, duration: timedelta, now: datetime) -> None:
        """Give a claimed row's lease to ``holder`` until ``now + duration``."""
        setattr(row, self.until.key, now + duration)
        if self.holder is not None:
            setattr(row, self.holder.key, holder)

    def take(
        self,
        session: Session,
        where: ColumnElement[bool],
        holder: str,
        duration: timedelta,
        now: datetime,
    ) -> bool:
        """Take the lease of the row ``where`` names if it is free; False when someone holds it."""
        assert self.holder is not None
        result: Any = session.execute(
            update(self.until.class_)
            .where(where, self.free(now))
            .values({self.holder.key: holder, self.until.key: now + duration})
        )
        return bool(result.rowcount == 1)

    def renew(
        self,
        session: Session,
        where: ColumnElement[bool],
        holder: str,
        duration: timedelta,
        now: datetime,
        **values: Any,
    ) -> bool:
        """Extend the lease (and write ``values``) while ``holder`` still has it; False once taken over."""
        assert self.holder is not None
        result: Any = session.execute(
            update(self.until.class_)
            .where(where, self.holder == holder)
            .values({self.until.key: now + duration, **values})
        )
        return bool(result.rowcount == 1)

    def release(self, session: Session, where: ColumnElement[bool], holder: str) -> None:
        """Give the lease up (only if ``holder`` still has it)."""
        assert self.holder is not None
        session.execute(
            update(self.until.class_)
            .where(where, self.holder == holder)
            .values({self.holder.key: None, self.until.key: None})
        )


def keep_renewed(
    renew: Callable[[], object], every: timedelta, done: threading.Event, *, what: str, name: str
) -> None:
    """Renew a held lease (``renew``) every ``every`` on a thread of its own until ``done`` is set, so
    long work keeps its row; a renewal that fails is logged and tried again at the next beat."""

    def beat() -> None:
        while not done.wait(every.total_seconds()):
            try:
                renew()
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("%s lease not renewed", what, exc_info=True)

    threading.Thread(target=beat, name=name, daemon=True).start()
