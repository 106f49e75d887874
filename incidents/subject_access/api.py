"""Subject access request routes: record a request, list the open ones by days left, find footage.

Who sees a request is who sees its incident (``incidents.access``). The footage is linked, redacted
and exported through the routes that already do those things (``/incidents/{id}/links``,
``/evidence/{id}/redactions`` with the requester's track excluded, ``/incidents/{id}/exports``),
each checking the caller's right to every item it touches.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from accounts.access import WRITES_CUSTODY, require_roles, services
from chain_of_custody.core import CoreServices
from storage.api_schema import CalendarDate, Timestamp, error_responses
from storage.errors import Invalid, NotFound, NotPermitted
from storage.idempotency import KeyHeader, Once, json_body
from storage.paging import after_key, link_next, next_headers, page_limit

from ..access import INCIDENT_READERS, INCIDENT_WRITERS, Viewer
from ..models import Incident
from .models import SAR_STATUSES, SubjectAccessRequest
from .service import (
    RequestDraft,
    Search,
    candidates,
    change_request,
    days_left,
    receive_request,
    requests_for,
    visible_request,
)

router = APIRouter(prefix="/api/v1", tags=["subject access requests"])
readers = Depends(require_roles(*INCIDENT_READERS))
writers = Depends(require_roles(*INCIDENT_WRITERS))

SarStatus = Literal["open", "answered", "refused", "withdrawn"]


class RequestIn(BaseModel):
    requester: str = Field(min_length=2, max_length=200)
    contact: str = Field(min_length=3, max_length=500, description="address, email or telephone")
    received_on: CalendarDate
    site: str = Field(min_length=1, max_length=64, description="the site whose footage is asked for")
    description: str = Field("", max_length=20000, description="how to recognise them, where and when")
    notes: str = Field("", max_length=20000)


class RequestChange(BaseModel):
    status: SarStatus | None = None
    notes: str | None = Field(None, max_length=20000)
    export_id: str | None = Field(None, max_length=36, description="the package the request is answered with")


class RequestOut(BaseModel):
    id: str
    incident_id: str
    incident_reference: str
    site: str
    requester: str
    contact: str
    description: str
    received_on: date
    due_on: date
    days_left: int
    status: str
    notes: str
    export_id: str | None
    created_by: str
    created_at: datetime
    closed_by: str | None
    closed_at: datetime | None


class CandidateOut(BaseModel):
    id: str
    filename: str | None
    wearer: str | None
    source_device_id: str | None
    captured_start: datetime | None
    captured_stop: datetime | None
    size: int


def request_view(session: Session, sar: SubjectAccessRequest, today: date | None = None) -> dict[str, Any]:
    incident = session.get(Incident, sar.incident_id)
    assert incident is not None
    out = {c: getattr(sar, c) for c in RequestOut.model_fields if hasattr(sar, c)}
    out.update(
        incident_reference=incident.reference,
        site=incident.site,
        days_left=days_left(sar.due_on, today or datetime.now(UTC).date()),
    )
    return out


def _visible(session: Session, user: Viewer, request_id: str) -> SubjectAccessRequest:
    sar = visible_request(session, user, request_id)
    if sar is None:
        raise NotFound("no such subject access request")
    return sar


@router.post(
    "/subject-access-requests",
    response_model=RequestOut,
    status_code=201,
    responses=error_responses(400, 409, 422),
)
def receive(
    body: RequestIn,
    request: Request,
    idempotency_key: KeyHeader = None,
    user: Viewer = writers,
    s: CoreServices = Depends(services),
) -> Response:
    """Record a request; its due date is one calendar month after it was received. Sent again with the
    same ``Idempotency-Key``, it answers the first answer and records nothing new."""
    if user.role == "security_manager" and body.site != user.site:
        raise NotPermitted("a security manager records requests for their own site")
    draft = RequestDraft(
        body.requester, body.contact, body.received_on, body.site, body.description, body.notes
    )
    retry = Once.of(request, idempotency_key, user.user_id, body, s.settings.idempotency_key_hours)
    with s.db.session() as session:
        if (first := retry.claim(session)) is not None:
            return first
        sar = receive_request(session, s.ledger, user, draft)
        return retry.answer(session, 201, json_body(RequestOut, request_view(session, sar)))


REQUESTS_PAGE = 200  # requests in a page, unless the caller asks for fewer
REQUESTS_PAGE_MAX = 1000


@router.get("/subject-access-requests", response_model=list[RequestOut], responses=next_headers())
def list_requests(
    response: Response,
    status: list[SarStatus] = Query(default_factory=lambda: ["open"]),
    after: str = after_key("id", "request"),
    limit: int = page_limit(REQUESTS_PAGE, REQUESTS_PAGE_MAX, "requests"),
    user: Viewer = readers,
    s: CoreServices = Depends(services),
) -> list[dict[str, Any]]:
    """The requests the caller may see (open ones by default), the fewest days left first, a page at
    a time (``limit``, then ``after``): while more follow, the answer links the next page
    (``Link: <...>; rel="next"`` and ``X-Next-After``)."""
    with s.db.reading() as session:  # only reads: waits for no writer
        last = None
        if after:
            last = visible_request(session, user, after)
            if last is None:
                raise Invalid("after names no request you may see")
        rows = requests_for(session, user, status or SAR_STATUSES, after=last, limit=limit + 1)
        page = [request_view(session, r) for r in rows[:limit]]
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    next_after = rows[limit - 1].id if len(rows) > limit else None
    link_next(response, "/api/v1/subject-access-requests", next_after, limit)
    return page


@router.get("/subject-access-requests/{request_id}", response_model=RequestOut)
def get_request(
    request_id: str, user: Viewer = readers, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    with s.db.reading() as session:
        return request_view(session, _visible(session, user, request_id))


@router.patch(
    "/subject-access-requests/{request_id}", response_model=RequestOut, responses=error_responses(404)
)
def change(
    request_id: str, body: RequestChange, user: Viewer = writers, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    with s.db.session() as session:
        sar = _visible(session, user, request_id)
        change_request(
            session, s.ledger, sar, user.actor, status=body.status, notes=body.notes, export_id=body.export_id
        )
        return request_view(session, sar)


@router.get(
    "/subject-access-requests/{request_id}/candidates",
    response_model=list[CandidateOut],
    dependencies=[WRITES_CUSTODY],
)
def find_footage(
    request_id: str,
    start: Timestamp,
    end: Timestamp,
    wearer: str | None = Query(None, max_length=64),
    site: str | None = Query(None, max_length=64),
    user: Viewer = writers,
    s: CoreServices = Depends(services),
) -> list[dict[str, Any]]:
    """Clips recorded in the window (camera time), by the wearer and at the site if given, that the
    caller may see; link the requester's to the request's incident to package them."""
    with s.db.session() as session:
        sar = _visible(session, user, request_id)
        found = candidates(session, s.ledger, user, sar, Search(start, end, wearer or None, site or None))
        return [
            {
                "id": i.id,
                "filename": i.filename,
                "wearer": i.wearer,
                "source_device_id": i.source_device_id,
                "captured_start": i.captured_start,
                "captured_stop": i.captured_stop,
                "size": i.size,
            }
            for i in found
        ]
