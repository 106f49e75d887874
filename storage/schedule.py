"""Periodic jobs that one instance at a time does (forgetting old personal data, for example).

A job is a row (its name, when it is next due). An instance that finds it due takes the row's lease
(``storage.leases``: compare-and-set on the holder and its end), does the work, moves the due time
on and gives the lease back. Another instance finds the job held, or not due, and does nothing; one
that dies while working leaves a lease that runs out, and the next instance to look does the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import String, update
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base, Database, UTCDateTime, dialect_insert
from .leases import Lease

log = logging.getLogger(__name__)


class PeriodicJob(Base):
    __tablename__ = "periodic_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


LEASE = Lease(PeriodicJob.lease_until, PeriodicJob.lease_owner)


def run_when_due(
    db: Database,
    name: str,
    every: timedelta,
    holder: str,
    work: Callable[[datetime], object],
    now: datetime,
    lease: timedelta = timedelta(minutes=10),
) -> bool:
    """Do ``work(now)`` if the job is due and nobody else is doing it; True if it was done here.
    A failure leaves the job due (the exception goes to the caller), so the next look tries again."""
    here = PeriodicJob.name == name
    with db.session() as session:
        session.execute(
            dialect_insert(session, PeriodicJob).values(name=name, due_at=now).on_conflict_do_nothing()
        )
    with db.session() as session:
        if not LEASE.take(session, here & (PeriodicJob.due_at <= now), holder, lease, now):
            return False
    try:
        work(now)
    finally:
        with db.session() as session:
            LEASE.release(session, here, holder)
    with db.session() as session:
        session.execute(update(PeriodicJob).where(here).values(due_at=now + every, last_done_at=now))
    log.info("periodic job done", extra={"job": name})
    return True
