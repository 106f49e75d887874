"""The service's verification (``verify.verify_service``) asked for over HTTP, run as a job.

Checking the whole ledger, its tree heads and every stored object costs the service time in
proportion to everything it holds, so a request never does it itself: it writes a
``custody_verifications`` row (status ``running``) and wakes this process's verifier, and answers
at once with the job; whoever asks while one is running (anywhere: the row's ``running`` column is
unique) is given that one. A verifier claims the job under a lease (``storage.leases``, as export
builds and redaction jobs are), renews it with what it is checking, and records the report. A
verifier that stops stops renewing; once the lease runs out another claims the job and starts it
afresh, and a job interrupted ``max_attempts`` times is marked failed. ``evidence verify`` (the
command line) runs the same check in its own process, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from storage.db import Base, UTCDateTime, utcnow
from storage.leases import Lease, claim, keep_renewed

from .core import CoreServices
from .verify import VerifyOptions, verify_service

log = logging.getLogger(__name__)

RUNNING = "running"


class CustodyVerification(Base):
    """One verification asked for over HTTP: who asked, what for, how it goes and what it found."""

    __tablename__ = "custody_verifications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[str | None] = mapped_column(String(36), default=None)
    check_objects: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default=RUNNING)  # running, done, failed
    # "running" while the job runs, NULL after: unique, so there is one running job at a time.
    running: Mapped[str | None] = mapped_column(String(16), default=RUNNING, unique=True)
    progress: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[str | None] = mapped_column(Text, default=None)  # JSON: the report
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True), default=None)

    def to_json(self) -> dict[str, Any]:
        report = json.loads(self.result) if self.result else None
        return {
            "id": self.id,
            "status": self.status,
            "requested_by": self.requested_by,
            "item_id": self.item_id,
            "objects_checked": self.check_objects,
            "progress": self.progress,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "ok": report["ok"] if report else None,
            "entries_checked": report["entries_checked"] if report else None,
            "problems": report["problems"] if report else [],
            "notes": report["notes"] if report else [],
        }


VERIFIER = Lease(until=CustodyVerification.lease_until, holder=CustodyVerification.lease_owner)


def ask(
    session: Session, actor: str, item_id: str | None, check_objects: bool
) -> tuple[CustodyVerification, bool]:
    """The job running now, or a new one asked for by ``actor``; True when it is new."""
    running = session.scalar(select(CustodyVerification).where(CustodyVerification.running == RUNNING))
    if running is not None:
        return running, False
    job = CustodyVerification(
        id=str(uuid.uuid4()), requested_by=actor, item_id=item_id, check_objects=check_objects
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # another request started one a moment ago
        running = session.scalar(select(CustodyVerification).where(CustodyVerification.running == RUNNING))
        assert running is not None
        return running, False
    return job, True


def verifier_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:verify"


class Verifications:
    """Claims verification jobs and runs them, one at a time, in this process."""

    def __init__(self, core: CoreServices, *, name: str | None = None) -> None:
        self.core = core
        self.name = name or verifier_name()
        self.lease = timedelta(seconds=core.settings.worker_lease_seconds)
        self.max_attempts = core.settings.worker_max_attempts
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def claim(self, now: datetime | None = None) -> str | None:
        """The running job nobody holds, leased to this verifier; None when there is none."""
        now = now or datetime.now(UTC)
        with self.core.db.session() as session:
            jobs = claim(
                session,
                select(CustodyVerification).where(CustodyVerification.running == RUNNING, VERIFIER.free(now)),
                1,
            )
            if not jobs:
                return None
            job = jobs[0]
            if job.attempts >= self.max_attempts:
                job.status, job.running, job.finished_at = "failed", None, now
                job.error = f"interrupted {job.attempts} times (the verifier {job.lease_owner} stopped)"
                job.lease_owner = job.lease_until = None
                return None
            VERIFIER.grant(job, self.name, self.lease, now)
            job.attempts += 1
            job.started_at = now
            job.progress = "starting"
            return str(job.id)

    def run(self, job_id: str) -> None:
        """Verify as the claimed job asks, keeping its lease and progress current; never raises."""
        s = self.core
        done = threading.Event()
        where = CustodyVerification.id == job_id

        def renew(**values: object) -> None:
            now = datetime.now(UTC)
            with s.db.session() as session:
                VERIFIER.renew(session, where, self.name, self.lease, now, **values)

        def progress(message: str) -> None:
            try:
                renew(progress=message[:2000])
            except Exception:  # noqa: BLE001 - progress is for people watching; the check goes on
                log.warning("verification progress not recorded", exc_info=True)

        keep_renewed(renew, self.lease / 4, done, what="verification", name=f"verify-beat-{job_id[:8]}")
        try:
            with s.db.session() as session:
                job = session.get(CustodyVerification, job_id)
                assert job is not None
                options = VerifyOptions(
                    check_objects=job.check_objects, item_ids=[job.item_id] if job.item_id else None
                )
            with s.db.reading() as session:  # holds no write lock while it runs (SQLite)
                report = verify_service(session, s.store, s.key, options, progress)
            result = {
                "ok": report.ok,
                "entries_checked": report.entries_checked,
                "problems": [{"kind": p.kind, "where": p.where, "detail": p.detail} for p in report.problems],
                "notes": list(report.notes),
            }
            self._finish(job_id, "done", result=json.dumps(result), progress="finished")
        except Exception as exc:  # noqa: BLE001 - recorded on the job for whoever asked
            log.exception("verification failed", extra={"verification": job_id})
            self._finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            done.set()

    def _finish(self, job_id: str, status: str, **values: Any) -> None:
        with self.core.db.session() as session:
            job = session.get(CustodyVerification, job_id, with_for_update=True)
            if job is None or job.running != RUNNING or job.lease_owner != self.name:
                log.warning(
                    "verification taken over: its result is not recorded", extra={"verification": job_id}
                )
                return
            job.status, job.running, job.finished_at = status, None, datetime.now(UTC)
            job.lease_owner = job.lease_until = None
            for k, v in values.items():
                setattr(job, k, v)

    def wake(self) -> None:
        """A verification was asked for: look now rather than at the next poll (from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def serve(self, poll_s: float = 5.0) -> None:
        """Claim and run jobs until cancelled, one at a time, each on a thread of its own."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                self._wake.clear()
                try:
                    job_id = await asyncio.to_thread(self.claim)
                except Exception:  # noqa: BLE001 - the database may be back next time
                    log.warning("verifications could not be claimed", exc_info=True)
                    job_id = None
                if job_id is not None:
                    await asyncio.to_thread(self.run, job_id)
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), poll_s)
                except TimeoutError:
                    pass
        finally:
            self._loop = None
