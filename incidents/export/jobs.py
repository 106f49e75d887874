"""Export builds as jobs: any worker on any host claims them, and they survive a restart.

A request writes an ``export_jobs`` row (status ``building``) and wakes this process's builder. A
builder claims the oldest unclaimed build under a lease (``storage.leases``), renews it while it
builds (with the job's progress), and records the result. A builder that stops (a restart, a
crash) stops renewing; once the lease runs out another builder (or the same process, restarted)
claims the build again and starts it afresh: nothing of a half-built package was recorded. A build
interrupted ``max_attempts`` times is marked failed.

A build acts on its requester's authority as it holds when the builder acts, not as it held when
they asked: each write transaction of the build (the exhibit references, the recording) and a check
before anything is stored ask again whether they still stand and may still see everything the
package holds (``authority.requester_refusal``). When not, the job fails with the reason (its
``error``, which whoever sees the incident's exports reads) and a warning is logged; nothing is
stored or recorded for it, and it is never claimed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.core import CoreServices
from chain_of_custody.entries import CustodyAction, check_entry
from chain_of_custody.ledger import Ledger, to_signed
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.row_replay import ExportJobRow, export_request_details, export_request_disagreements
from storage.leases import Lease, claim, keep_renewed

from .authority import RequesterRefused, requester_refusal
from .build import BuildTakenOver, ExportResult, build_package
from .models import ExportJob
from .plan import ExportError, ExportRequest, OriginalsPermission, Pin, gather_items, pin_redactions

log = logging.getLogger(__name__)


class UnrequestedExport(Exception):
    """A job row the custody ledger does not ask for, as it stands: never built."""


BUILDER = Lease(until=ExportJob.lease_until, holder=ExportJob.lease_owner)


def _retain_until(items: list[EvidenceItem], retention_days: int, now: datetime) -> datetime:
    """At least the default retention, and no shorter than any item the package holds."""
    floor = now + timedelta(days=max(1, retention_days))
    return max([floor] + [i.retain_until for i in items if i.retain_until is not None])


def job_row(job: ExportJob) -> ExportJobRow:
    """The job as the custody comparison sees it (``chain_of_custody.row_replay``)."""
    return ExportJobRow(
        job.id,
        job.incident_id,
        job.requested_by,
        job.status,
        job.package_sha256,
        job.package_size,
        job.requester_role,
        bool(job.include_originals),
        job.reason,
        hashlib.sha256(job.scope.encode()).hexdigest(),
    )


def record_request(session: Session, ledger: Ledger, job: ExportJob) -> None:
    """The ``export_requested`` custody entry of a new job, in the transaction that adds it: a
    builder builds only a job whose request the ledger holds, as it stands (``request_refusal``)."""
    ledger.append(
        session,
        CustodyAction.EXPORT_REQUESTED,
        job.requested_by,
        details=export_request_details(job_row(job)),
    )


def request_refusal(session: Session, ledger: Ledger, job: ExportJob) -> str | None:
    """Why a job must not be built, or None: its ``export_requested`` entry is missing, fails its
    signature, or differs from the row (another incident, more items, originals added). Anyone
    with write access to the database can insert a job row; only the service key signs a request.
    One look-up by action (indexed) and the job's id in the details."""
    rows = session.scalars(
        select(CustodyEntry)
        .where(
            CustodyEntry.action == CustodyAction.EXPORT_REQUESTED,
            CustodyEntry.details.contains(f'"export":{json.dumps(job.id)}'),
        )
        .order_by(CustodyEntry.seq)
    ).all()
    if len(rows) != 1:
        return f"{len(rows)} custody entries ask for export {job.id}, not one: not built"
    entry = to_signed(rows[0])
    broken = check_entry(entry, ledger.verifier)
    if broken:
        return f"the request of export {job.id} fails its check ({broken[0]}): not built"
    differ = export_request_disagreements(entry, job_row(job))
    return f"export {job.id} is not what was asked for: {differ[0]}; not built" if differ else None


def builder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:exports"


class ExportBuilds:
    """Claims export builds and runs them, a few at a time, in this process."""

    def __init__(self, core: CoreServices, *, name: str | None = None, parallel: int = 2) -> None:
        self.core = core
        self.name = name or builder_name()
        self.lease = timedelta(seconds=core.settings.worker_lease_seconds)
        self.max_attempts = core.settings.worker_max_attempts
        self.parallel = parallel
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def claim(self, now: datetime | None = None) -> str | None:
        """The oldest build nobody holds, leased to this builder; None when there is none."""
        now = now or datetime.now(UTC)
        with self.core.db.session() as session:
            for job in claim(
                session,
                select(ExportJob).where(
                    ExportJob.status == "building",
                    BUILDER.expired(now),
                    ExportJob.attempts >= self.max_attempts,
                ),
                100,
            ):
                job.status = "failed"
                job.error = (
                    f"interrupted {job.attempts} times (the builder {job.lease_owner} stopped); "
                    "ask for a new export"
                )
                job.finished_at = now
            jobs = claim(
                session,
                select(ExportJob)
                .where(
                    ExportJob.status == "building", BUILDER.free(now), ExportJob.attempts < self.max_attempts
                )
                .order_by(ExportJob.created_at),
                1,
            )
            if not jobs:
                return None
            job = jobs[0]
            BUILDER.grant(job, self.name, self.lease, now)
            job.attempts += 1
            job.heartbeat_at = now
            return job.id

    def run(self, job_id: str) -> None:
        """Build the package of one claimed job, keeping its lease and progress current; never raises."""
        s = self.core
        done = threading.Event()
        ours = threading.Event()
        ours.set()

        def renew(**values: object) -> None:
            now = datetime.now(UTC)
            with s.db.session() as session:
                if not BUILDER.renew(
                    session, ExportJob.id == job_id, self.name, self.lease, now, heartbeat_at=now, **values
                ):
                    ours.clear()

        def progress(n: int) -> None:
            try:
                renew(media_bytes_done=n)
            except Exception:  # noqa: BLE001 - progress is for people watching; the build goes on
                log.warning("export progress not recorded", exc_info=True)

        keep_renewed(renew, self.lease / 4, done, what="export", name=f"export-beat-{job_id[:8]}")
        try:
            with s.db.session() as session:
                job = session.get(ExportJob, job_id)
                assert job is not None
                refused = request_refusal(session, s.ledger, job)
                if refused is not None:
                    raise UnrequestedExport(refused)
                scope = json.loads(job.scope)
                items = gather_items(session, scope["item_ids"])
                originals = (
                    OriginalsPermission(job.requested_by, job.requester_role, job.reason or "")
                    if job.include_originals
                    else None
                )
                # The redaction of each clip fixed when the export was asked for; a job asked for
                # before versions were recorded takes the latest made by then, never a later one.
                pinned = scope.get("pinned")
                pins = (
                    {orig: Pin.from_json(raw) for orig, raw in pinned.items()}
                    if isinstance(pinned, dict)
                    else pin_redactions(items, (), job.created_at)
                )
                request = ExportRequest(
                    export_id=job.id,
                    incident=scope["incident"],
                    actor=job.requested_by,
                    retain_until=_retain_until(items, s.settings.retention_days, datetime.now(UTC)),
                    originals=originals,
                    outside=frozenset(scope.get("outside", ())),
                    pins=pins,
                )
            # The whole zip's SHA-256 too: it is published (job, link page, signed custody entry) so that
            # a recipient can check the file exactly as received. The job is marked ready in the
            # transaction that records the package: marked after it, a builder that took the build
            # over in between found it still building, recorded a second package (refused: the
            # package's id is the job's) and marked the job failed over the package recorded.
            result = build_package(
                s.db,
                s.store,
                s.ledger,
                s.key,
                items,
                request,
                package_hash=True,
                progress=progress,
                fence=lambda session: self._still_ours(session.get(ExportJob, job_id, with_for_update=True)),
                finish=lambda session, result: self._ready(session, job_id, result),
                authority=lambda session: self._requester_stands(session, job_id),
            )
            log.info("export ready", extra={"export": job_id, "bytes": result.package_size})
        except BuildTakenOver:
            return  # the newer builder's package is the export's; _still_ours said so in the log
        except Exception as exc:  # noqa: BLE001 - recorded on the job for the requester to see
            if isinstance(exc, UnrequestedExport):
                log.warning("export refused: " + str(exc), extra={"export": job_id, "reason": "unrequested"})
            elif isinstance(exc, RequesterRefused):
                log.warning("export refused: " + str(exc), extra={"export": job_id, "reason": "requester"})
            else:
                log.exception("export failed", extra={"export": job_id})
            message = (
                str(exc)
                if isinstance(exc, ExportError | UnrequestedExport)
                else f"{type(exc).__name__}: {exc}"
            )
            with s.db.session() as session:
                job = session.get(ExportJob, job_id, with_for_update=True)
                if job is not None and self._still_ours(job):
                    job.status = "failed"
                    job.error = message
                    job.finished_at = datetime.now(UTC)
                    job.lease_owner = job.lease_until = None
        finally:
            done.set()

    def _requester_stands(self, session: Session, job_id: str) -> None:
        """Refuse (:class:`RequesterRefused`) what this write transaction of the build would do unless
        the requester still stands, with the role they asked with, and may still see the incident and
        everything the package holds (``authority.requester_refusal``): the build acts on their
        authority as it holds where it acts, not as it held when they asked."""
        job = session.get(ExportJob, job_id)
        why = "the export is gone" if job is None else requester_refusal(session, job, self.core.key)
        if why is not None:
            raise RequesterRefused(why)

    @staticmethod
    def _ready(session: Session, job_id: str, result: ExportResult) -> None:
        """The job done with its package, in the transaction that records the package (its lease
        checked by the fence, and the row locked, at that transaction's start)."""
        job = session.get(ExportJob, job_id)
        assert job is not None
        job.status = "ready"
        job.media_bytes_done = job.media_bytes_total = result.media_bytes
        job.package_sha256 = result.package_sha256
        job.package_size = result.package_size
        job.filename = result.filename
        job.result = json.dumps(
            {
                "included": result.included,
                "withheld": result.withheld,
                "manifest_sha256": result.manifest_sha256,
                "key_fingerprint": result.key_fingerprint,
                "layout_sha256": result.stored.sha256,
            }
        )
        job.finished_at = datetime.now(UTC)
        job.lease_owner = job.lease_until = None

    def _still_ours(self, job: ExportJob | None) -> bool:
        """The job is still building under this builder's lease: what it finished may be recorded. A
        builder whose lease ran out and was taken over records nothing (the newer build is the job's)."""
        if job is not None and job.status == "building" and job.lease_owner == self.name:
            return True
        log.warning(
            "export build taken over: its result is not recorded",
            extra={
                "export": job.id if job else None,
                "builder": self.name,
                "holder": job and job.lease_owner,
            },
        )
        return False

    def wake(self) -> None:
        """A build was asked for: look now rather than at the next poll (from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def serve(self, poll_s: float = 2.0) -> None:
        """Claim and run builds until cancelled, ``parallel`` at a time, each on a thread of its own
        (a daemon: a build in hand when the process stops is claimed again by the next builder)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        running: set[str] = set()

        def build(job_id: str) -> None:
            try:
                self.run(job_id)
            finally:
                running.discard(job_id)
                self.wake()

        try:
            while True:
                self._wake.clear()
                while len(running) < self.parallel:
                    try:
                        job_id = await asyncio.to_thread(self.claim)
                    except Exception:  # noqa: BLE001 - the database may be back next time
                        log.warning("export builds could not be claimed", exc_info=True)
                        break
                    if job_id is None:
                        break
                    running.add(job_id)
                    threading.Thread(
                        target=build, args=(job_id,), name=f"export-{job_id[:8]}", daemon=True
                    ).start()
                try:
                    await asyncio.wait_for(self._wake.wait(), poll_s)
                except TimeoutError:
                    pass
        finally:
            self._loop = None
