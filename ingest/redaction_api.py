"""Redaction routes: see the jobs of a clip and their progress, and ask for a corrected version.

They sit in the application rather than in ``redaction/`` because who may see a clip's redactions
is decided by the incidents it is linked to (``incidents.access``), and ``redaction`` may not import
``incidents`` (they are independent domains of one layer); the application sees both."""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import func, select

from accounts.access import require_roles, services
from accounts.service import Principal, hold_person
from chain_of_custody.core import CoreServices
from incidents.access import EVIDENCE_MEDIA, EVIDENCE_METADATA, visible_evidence
from redaction.jobs import enqueue
from redaction.models import RedactionJob
from redaction.spec import RedactionSpec, check_request
from storage.api_schema import error_responses
from storage.bounds import DB_INT_MAX
from storage.errors import InConflict, NotFound, Refused
from storage.idempotency import KeyHeader, Once
from storage.paging import link_next, next_headers

router = APIRouter(prefix="/api/v1", tags=["redaction"])


class RedactionJobOut(BaseModel):
    id: str
    source_item_id: str
    version: int
    based_on_job_id: str | None
    requested_by: str
    spec: dict[str, object]
    status: str
    attempts: int
    max_attempts: int
    progress: float
    frames_done: int
    frames_total: int | None
    error: str | None
    result_item_id: str | None
    record_item_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _out(job: RedactionJob) -> RedactionJobOut:
    data = {c: getattr(job, c) for c in RedactionJobOut.model_fields if c != "spec"}
    return RedactionJobOut(spec=json.loads(job.spec), **data)


def _visible_clip(s: CoreServices, user: Principal, item_id: str) -> None:
    with s.db.reading() as session:
        if visible_evidence(session, user, item_id) is None:
            raise NotFound("no such evidence item")


REDACTIONS_PAGE = 100  # versions in a page, unless the caller asks for fewer (as an incident's exports)
REDACTIONS_PAGE_MAX = 1000


@router.get("/evidence/{item_id}/redactions", response_model=list[RedactionJobOut], responses=next_headers())
def list_redactions(
    item_id: str,
    response: Response,
    after: int | None = Query(
        None,
        ge=1,
        le=DB_INT_MAX,
        description="the version of the previous page's last job (its X-Next-After): the page starts "
        "after it (with the versions before it); none for the first page",
    ),
    limit: int = Query(
        REDACTIONS_PAGE, ge=1, le=REDACTIONS_PAGE_MAX, description="most versions in the page"
    ),
    user: Principal = Depends(require_roles(*EVIDENCE_METADATA)),
    s: CoreServices = Depends(services),
) -> list[RedactionJobOut]:
    """The redaction versions of a clip, newest first, with state and progress, a page at a time
    (``limit``, then ``after``): while more follow, the answer links the next page
    (``Link: <...>; rel="next"`` and ``X-Next-After``)."""
    _visible_clip(s, user, item_id)
    with s.db.reading() as session:  # only reads: waits for no writer
        q = select(RedactionJob).where(RedactionJob.source_item_id == item_id)
        if after is not None:
            q = q.where(RedactionJob.version < after)
        jobs = list(session.scalars(q.order_by(RedactionJob.version.desc()).limit(limit + 1)))
        page = [_out(j) for j in jobs[:limit]]
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    next_after = jobs[limit - 1].version if len(jobs) > limit else None
    link_next(response, f"/api/v1/evidence/{quote(item_id)}/redactions", next_after, limit)
    return page


@router.post(
    "/evidence/{item_id}/redactions",
    response_model=RedactionJobOut,
    status_code=202,
    responses=error_responses(400, 403, 409, 422, 429),
)
def request_redaction(
    item_id: str,
    spec: RedactionSpec,
    request: Request,
    based_on: str | None = Query(None),
    idempotency_key: KeyHeader = None,
    user: Principal = Depends(require_roles(*EVIDENCE_MEDIA)),
    s: CoreServices = Depends(services),
) -> Response:
    """Queue a new version with the investigator's manual regions, exclusions and audio edits.

    A version never hides less than the service's own settings (``redaction.spec.check_request``);
    leaving a person visible (an exclusion) needs a stated reason, recorded with who asked in the new
    copy's custody; a package that holds such a copy needs the authority to export originals. Sent
    again with the same ``Idempotency-Key``, it answers the first version and queues no other."""
    _visible_clip(s, user, item_id)
    from redaction.pipeline import RedactionSettings  # here: it brings cv2 and numpy (35 MB) to the service

    check_request(
        spec,
        RedactionSettings.from_settings(s.settings),
        role=user.role,
        actor=user.actor,
        may_leave_visible=EVIDENCE_MEDIA,
    )
    retry = Once.of(request, idempotency_key, user.user_id, spec, s.settings.idempotency_key_hours)
    with s.db.session() as session:
        if (first := retry.claim(session)) is not None:
            return first  # before the queue is counted: the first version is in it already
        # Seen again in the transaction that queues the version (``_visible_clip`` above answers
        # early only): an investigator taken off the clip's incident meanwhile queues nothing.
        source = visible_evidence(session, user, item_id)
        if source is None:
            raise NotFound("no such evidence item")
        if source.status != "stored":
            # A redacted copy is new evidence derived from its original: never from one that no
            # longer checks (quarantined) or is gone.
            raise InConflict(f"evidence item {item_id} is {source.status}; it cannot be redacted")
        hold_person(session, user.user_id)  # counted and queued as one step: no race past the cap
        waiting = session.scalar(
            select(func.count()).where(
                RedactionJob.requested_by == user.actor, RedactionJob.status.in_(("queued", "running"))
            )
        )
        if (waiting or 0) >= s.settings.max_redactions_queued_per_user:
            raise Refused(
                "too_many_redactions",
                f"you have {waiting} redactions queued or running, as many as one person may: wait for one",
                429,
                retry_after=s.settings.retry_after_seconds,
            )
        if based_on is not None:
            base = session.get(RedactionJob, based_on)
            if base is None or base.source_item_id != item_id:
                raise NotFound("no such redaction version of this clip")
        job = enqueue(
            session,
            item_id,
            user.actor,
            spec.model_dump(),
            based_on_job_id=based_on,
            max_attempts=s.settings.worker_max_attempts,
        )
        return retry.answer(session, 202, _out(job).model_dump_json())


@router.get("/redaction-jobs/{job_id}", response_model=RedactionJobOut)
def get_job(
    job_id: str,
    user: Principal = Depends(require_roles(*EVIDENCE_METADATA)),
    s: CoreServices = Depends(services),
) -> RedactionJobOut:
    with s.db.reading() as session:
        job = session.get(RedactionJob, job_id)
        if job is None or visible_evidence(session, user, job.source_item_id) is None:
            raise NotFound("no such redaction job")
        return _out(job)


@router.get("/redaction-jobs", response_model=list[RedactionJobOut])
def queue(
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    user: Principal = Depends(require_roles("admin", "security_manager")),
    s: CoreServices = Depends(services),
) -> list[RedactionJobOut]:
    """The job queue, for whoever runs the workers."""
    q = select(RedactionJob).order_by(RedactionJob.created_at.desc()).limit(limit)
    if status:
        q = q.where(RedactionJob.status == status)
    with s.db.reading() as session:
        jobs = [
            j for j in session.scalars(q) if visible_evidence(session, user, j.source_item_id) is not None
        ]
        return [_out(j) for j in jobs]
