"""Queueing and claiming redaction jobs so that any number of workers on any number of machines share them.

A claim is a lease (``storage.leases``): the worker renews it while it works; a worker that dies
stops renewing, the lease runs out and another worker takes the job (its attempt count grows). A
job that has used all its attempts is marked failed with the last error. Concurrent workers never
take the same job (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from chain_of_custody.models import EvidenceItem
from storage.errors import Refused
from storage.leases import Lease
from storage.leases import claim as claim_rows

from .models import RedactionJob

WORKER = Lease(until=RedactionJob.lease_until, holder=RedactionJob.lease_owner)


class JobRefused(Refused):
    """A job request that cannot be queued (unknown item, not a clip, bad spec)."""

    status = 409

    def __init__(self, message: str, reason: str = "job_refused") -> None:
        super().__init__(reason, message)


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    source_item_id: str
    version: int
    spec: dict[str, Any]
    attempts: int
    lease_owner: str
    requested_by: str | None = None


def enqueue(
    session: Session,
    source_item_id: str,
    requested_by: str,
    spec: dict[str, Any] | None = None,
    *,
    max_attempts: int = 3,
    based_on_job_id: str | None = None,
) -> RedactionJob:
    """Queue the next version of a clip's redaction (version 1 is the automatic one).

    The next number is counted under the clip's row lock, so two people asking at once get two
    numbers rather than one of them a conflict."""
    item = session.get(EvidenceItem, source_item_id, with_for_update=True)
    if item is None:
        raise JobRefused("no such evidence item")
    if item.kind != "clip":
        raise JobRefused(f"only original clips are redacted, not {item.kind}")
    if item.status == "deleted":
        raise JobRefused("the clip has been deleted under its retention class")
    latest = session.scalar(
        select(func.max(RedactionJob.version)).where(RedactionJob.source_item_id == item.id)
    )
    job = RedactionJob(
        id=str(uuid.uuid4()),
        source_item_id=item.id,
        version=(latest or 0) + 1,
        based_on_job_id=based_on_job_id,
        requested_by=requested_by,
        spec=json.dumps(spec or {}, sort_keys=True),
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def claim(session: Session, owner: str, lease: timedelta, now: datetime | None = None) -> ClaimedJob | None:
    """Take the oldest queued job, or one whose worker's lease ran out; None when there is nothing to do."""
    now = now or datetime.now(UTC)
    claimable = or_(
        RedactionJob.status == "queued",
        and_(RedactionJob.status == "running", WORKER.expired(now)),
    )
    # Jobs whose lease expired on their last attempt have failed for good.
    for job in claim_rows(
        session,
        select(RedactionJob).where(
            RedactionJob.status == "running",
            WORKER.expired(now),
            RedactionJob.attempts >= RedactionJob.max_attempts,
        ),
        1000,
    ):
        job.status = "failed"
        job.error = (
            job.error or ""
        ) + f"; worker {job.lease_owner} stopped renewing its lease (attempt {job.attempts})"
        job.finished_at = now
    jobs = claim_rows(
        session,
        select(RedactionJob)
        .where(claimable, RedactionJob.attempts < RedactionJob.max_attempts)
        .order_by(RedactionJob.created_at),
        1,
    )
    if not jobs:
        return None
    job = jobs[0]
    job.status = "running"
    WORKER.grant(job, owner, lease, now)
    job.attempts += 1
    job.started_at = now
    session.flush()
    return ClaimedJob(
        job.id, job.source_item_id, job.version, json.loads(job.spec), job.attempts, owner, job.requested_by
    )


def renew(
    session: Session, job_id: str, owner: str, lease: timedelta, frames_done: int, frames_total: int | None
) -> bool:
    """Extend the lease and record progress; False when the job is no longer ours (taken over)."""
    progress = min(1.0, frames_done / frames_total) if frames_total else 0.0
    return WORKER.renew(
        session,
        and_(RedactionJob.id == job_id, RedactionJob.status == "running"),
        owner,
        lease,
        datetime.now(UTC),
        frames_done=frames_done,
        frames_total=frames_total,
        progress=progress,
    )


def finish(session: Session, job_id: str, owner: str, result_item_id: str, record_item_id: str) -> bool:
    job = session.get(RedactionJob, job_id, with_for_update=True)
    if job is None or job.lease_owner != owner or job.status != "running":
        return False
    job.status = "done"
    job.progress = 1.0
    job.result_item_id = result_item_id
    job.record_item_id = record_item_id
    job.finished_at = datetime.now(UTC)
    job.lease_until = None
    job.error = None
    return True


def fail(session: Session, job_id: str, owner: str, error: str, *, final: bool = False) -> str:
    """Record a failed attempt: back to the queue while attempts remain, else failed for good;
    ``final``: failed for good now (a refusal, which another attempt would meet again)."""
    job = session.get(RedactionJob, job_id, with_for_update=True)
    if job is None or job.lease_owner != owner:
        return "lost"
    job.error = error[:4000]
    job.lease_owner = None
    job.lease_until = None
    if final or job.attempts >= job.max_attempts:
        job.status = "failed"
        job.finished_at = datetime.now(UTC)
    else:
        job.status = "queued"
    return job.status
