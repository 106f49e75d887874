"""Incident routes: create, change, search, link and unlink, investigators, legal holds, timeline, statistics.

Scope follows ``incidents.access``: an incident outside the caller's scope answers 404, exactly like
one that does not exist.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, StrictBool

from accounts.access import require_roles, services, sites_seen
from chain_of_custody.core import CoreServices, list_cursors
from storage.api_schema import Timestamp, error_responses
from storage.bounds import DB_INT_MAX, MAX_OFFSET, Patch
from storage.errors import NotFound, NotPermitted
from storage.idempotency import KeyHeader, Once, json_body
from storage.paging import BadCursor, cursor_param, link_next, link_next_keeping, next_headers, page_limit

from .access import (
    INCIDENT_MANAGERS,
    INCIDENT_READERS,
    INCIDENT_WRITERS,
    STATISTICS_READERS,
    Viewer,
    incident_scope,
    link_recorded,
    visible_incident,
)
from .history import AFTER_PATTERN, HISTORY_PAGE, HISTORY_PAGE_MAX, HistoryPage, history_page
from .models import CATEGORIES, INVOLVEMENTS, STATUSES, Incident
from .queries import INCIDENT_LIST, IncidentFilter, incident_position, incident_view, search_incidents
from .retention import RetentionRules, set_legal_hold
from .service import (
    IncidentDraft,
    IncidentRefused,
    Retention,
    assign_investigator,
    create_incident,
    link_overlapping_clips,
    link_target,
    unassign_investigator,
    unlink_target,
    update_incident,
)
from .statistics import (
    DIMENSIONS,
    Disclosure,
    PeriodRefused,
    bounded_period,
    check_period,
    count,
    load_fact_counts,
    margins_of,
    publish,
    to_csv,
)

log = logging.getLogger(__name__)

Category = Literal[CATEGORIES]  # type: ignore[valid-type]
Status = Literal[STATUSES]  # type: ignore[valid-type]
Involvement = Literal[INVOLVEMENTS]  # type: ignore[valid-type]


class StaffInvolved(BaseModel):
    staff_id: str = Field(max_length=64)
    involvement: Involvement = "victim"


class IncidentIn(BaseModel):
    category: Category
    occurred_at: Timestamp
    site: str = Field(min_length=1, max_length=64)
    title: str = Field("", max_length=200)
    description: str = Field("", max_length=20000)
    ward: str | None = Field(None, max_length=128)
    address: str | None = Field(None, max_length=1000)
    staff: list[StaffInvolved] = Field(default_factory=list, max_length=100)
    wearer: str | None = Field(None, max_length=64)
    window_start: Timestamp | None = None
    window_end: Timestamp | None = None


class IncidentChange(Patch):
    not_null = frozenset({"category", "status", "title", "description", "occurred_at", "site"})

    category: Category | None = None
    status: Status | None = None
    outcome: str | None = Field(None, max_length=5000)
    title: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=20000)
    occurred_at: Timestamp | None = None
    site: str | None = Field(None, min_length=1, max_length=64)
    ward: str | None = Field(None, max_length=128)
    address: str | None = Field(None, max_length=1000)
    staff: list[StaffInvolved] | None = Field(None, max_length=100)
    wearer: str | None = Field(None, max_length=64)
    window_start: Timestamp | None = None
    window_end: Timestamp | None = None


class StaffOut(BaseModel):
    staff_id: str
    involvement: str
    staff_group: str


class InvestigatorOut(BaseModel):
    user_id: int
    username: str
    full_name: str


class LinkOut(BaseModel):
    id: int
    kind: str
    target_id: str
    linked_by: str
    reason: str
    linked_at: datetime
    exhibit_reference: str | None = Field(
        None, description="a linked evidence item's exhibit reference, e.g. JS/1"
    )


class HoldOut(BaseModel):
    id: int
    reason: str
    placed_by: str
    placed_at: datetime


class IncidentOut(BaseModel):
    id: str
    reference: str
    category: str
    status: str
    outcome: str | None
    title: str
    description: str
    occurred_at: datetime
    site: str
    ward: str | None
    address: str | None
    wearer: str | None
    window_start: datetime | None
    window_end: datetime | None
    opened_by: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    staff: list[StaffOut]
    investigators: list[InvestigatorOut]
    links: list[LinkOut]
    legal_holds: list[HoldOut]


class IncidentSummary(BaseModel):
    id: str
    reference: str
    category: str
    status: str
    title: str
    occurred_at: datetime
    site: str
    ward: str | None
    wearer: str | None
    updated_at: datetime

    model_config = {"from_attributes": True}


class HistoryEntry(BaseModel):
    """A line of an incident's history (``/history`` and ``/timeline`` alike)."""

    at: datetime
    kind: str
    actor: str | None
    details: dict[str, Any]
    item_id: str | None = Field(
        None,
        description="the evidence item a custody line is about; for an export package's lines (its "
        "request, its build, its links and downloads) the package's id, which is the export's",
    )
    item_kind: str | None = None
    root_id: str | None = Field(None, description="the linked item it belongs to (itself, or its original)")
    withheld: str | None = Field(None, description="why a custody line's content is left out")
    entry_hash: str | None = None
    recipient: str | None = Field(
        None, description="a package's download: the recipient named by the link it came through"
    )


class LinkIn(BaseModel):
    kind: Literal["evidence", "alarm"] = "evidence"
    target_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=2000)


class HoldIn(BaseModel):
    hold: StrictBool
    reason: str = Field(min_length=3, max_length=2000)


def _hidden() -> NotFound:
    return NotFound("no such incident")


UserId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="a user's id")]
router = APIRouter(prefix="/api/v1", tags=["incidents"])
readers = Depends(require_roles(*INCIDENT_READERS))
writers = Depends(require_roles(*INCIDENT_WRITERS))
managers = Depends(require_roles(*INCIDENT_MANAGERS))


def retention(s: CoreServices) -> Retention:
    return Retention(s.store, RetentionRules.from_settings(s.settings))


@router.post(
    "/incidents", response_model=IncidentOut, status_code=201, responses=error_responses(400, 409, 422)
)
def open_incident(
    body: IncidentIn,
    request: Request,
    idempotency_key: KeyHeader = None,
    user: Viewer = writers,
    s: CoreServices = Depends(services),
) -> Response:
    """Open an incident; a security manager opens them at their own site, an investigator is assigned to
    theirs. Sent again with the same ``Idempotency-Key``, it answers the first answer and opens nothing."""
    if user.role == "security_manager" and body.site != user.site:
        raise NotPermitted("a security manager opens incidents at their own site")
    draft = IncidentDraft(
        category=body.category,
        occurred_at=body.occurred_at,
        site=body.site,
        title=body.title,
        description=body.description,
        ward=body.ward,
        address=body.address,
        staff=tuple((x.staff_id, x.involvement) for x in body.staff),
        wearer=body.wearer,
        window_start=body.window_start,
        window_end=body.window_end,
    )
    retry = Once.of(request, idempotency_key, user.user_id, body, s.settings.idempotency_key_hours)
    with s.db.session() as session:
        if (first := retry.claim(session)) is not None:
            return first
        incident = create_incident(
            session,
            draft,
            user.actor,
            assign_user_id=user.user_id if user.role == "investigator" else None,
            ledger=s.ledger,
            viewer=user,
        )
        if incident.wearer:
            link_overlapping_clips(
                session, s.ledger, incident, user.actor, retention=retention(s), viewer=user
            )
        return retry.answer(session, 201, json_body(IncidentOut, incident_view(session, incident, s.key)))


INCIDENTS_PAGE = 100  # incidents in a page, unless the caller asks for fewer
INCIDENTS_PAGE_MAX = 1000


@router.get(
    "/incidents",
    response_model=list[IncidentSummary],
    responses={**next_headers(), **error_responses(400)},
)
def find_incidents(
    request: Request,
    response: Response,
    status: list[Status] = Query(default_factory=list),
    category: list[Category] = Query(default_factory=list),
    site: str | None = None,
    q: str | None = Query(None, max_length=200, description="text in reference, title, description or ward"),
    occurred_from: Timestamp | None = None,
    occurred_to: Timestamp | None = None,
    assigned_to: int | None = Query(None, ge=1, le=DB_INT_MAX),
    wearer: str | None = None,
    staff_id: str | None = None,
    evidence_id: str | None = None,
    after: str = cursor_param("incidents"),
    limit: int = page_limit(INCIDENTS_PAGE, INCIDENTS_PAGE_MAX, "incidents"),
    offset: int = Query(
        0, ge=0, le=MAX_OFFSET, description="kept for older clients: skip this many (use after)"
    ),
    user: Viewer = readers,
    s: CoreServices = Depends(services),
) -> list[Incident]:
    """Incidents the caller may see, newest first (when it happened, then reference), a page at a
    time: ``limit``, then ``after`` as the answer's ``X-Next-After`` (and its ``Link: <...>;
    rel="next"``, which keeps the filters) give it. A page starts right after the previous one's last
    incident, so incidents opened meanwhile never push one onto two pages or past both. ``offset``
    still skips rows for older clients; it cannot be combined with ``after``."""
    cursors = list_cursors(s)
    position = cursors.read(INCIDENT_LIST, after) if after else None
    if position is not None and offset:
        raise BadCursor("give after or offset, not both")
    f = IncidentFilter(
        status=list(status),
        category=list(category),
        site=site,
        text=q,
        occurred_from=occurred_from,
        occurred_to=occurred_to,
        assigned_to=assigned_to,
        wearer=wearer,
        staff_id=staff_id,
        evidence_id=evidence_id,
        limit=limit + 1,
        offset=offset,
        after=position,
    )
    with s.db.reading() as session:  # only reads: waits for no writer
        rows = search_incidents(session, user, f, s.key)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    if len(rows) > limit:
        last = incident_position(rows[limit - 1])
        link_next_keeping(response, request, cursors.make(INCIDENT_LIST, last.at, last.key), limit)
    return rows[:limit]


@router.get("/incidents/{incident_id}", response_model=IncidentOut)
def get_incident(
    incident_id: str, user: Viewer = readers, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    """By id or by reference (``INC-2026-000123``)."""
    with s.db.reading() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        return incident_view(session, incident, s.key)


@router.patch("/incidents/{incident_id}", response_model=IncidentOut)
def change_incident(
    incident_id: str, body: IncidentChange, user: Viewer = writers, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    """Change fields or status; closing needs an outcome. Only an admin moves an incident to another site."""
    given = body.model_fields_set - {"staff"}
    changes = {k: getattr(body, k) for k in given}
    if "site" in changes and user.role != "admin":
        raise NotPermitted("only an administrator moves an incident to another site")
    with s.db.session() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        staff = None
        if body.staff is not None:
            staff = [(x.staff_id, x.involvement) for x in body.staff]
        update_incident(
            session,
            s.ledger,
            incident,
            changes,
            user.actor,
            staff=staff,
            retention=retention(s),
            viewer=user,
        )
        return incident_view(session, incident, s.key)


def _paged(response: Response, what: str, incident: Incident, page: HistoryPage, limit: int) -> None:
    link_next(response, f"/api/v1/incidents/{quote(incident.id)}/{what}", page.next_after, limit)


AFTER = Query(
    "",
    max_length=64,
    pattern=AFTER_PATTERN,
    description="where the previous page ended (its X-Next-After, as its Link names it): the page "
    "starts after that line; empty for the first page",
)
LIMIT = Query(HISTORY_PAGE, ge=1, le=HISTORY_PAGE_MAX, description="most lines in the page")


def _lines(
    what: str, incident_id: str, response: Response, after: str, limit: int, user: Viewer, s: CoreServices
) -> list[dict[str, Any]]:
    """The incident's history as ``user`` may read it, a page at a time: what both routes answer."""
    with s.db.reading() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        page = history_page(session, user, incident, after, limit, key=s.key)
        session.expunge_all()
    _paged(response, what, incident, page, limit)
    return page.rows


@router.get("/incidents/{incident_id}/timeline", response_model=list[HistoryEntry], responses=next_headers())
def incident_timeline(
    incident_id: str,
    response: Response,
    after: str = AFTER,
    limit: int = LIMIT,
    user: Viewer = readers,
    s: CoreServices = Depends(services),
) -> list[dict[str, Any]]:
    """Everything that happened to the incident and its evidence, as ``/history`` tells it (the same
    lines, read the same way, for the same reader): the console's timeline page reads it too."""
    return _lines("timeline", incident_id, response, after, limit, user, s)


@router.get("/incidents/{incident_id}/history", response_model=list[HistoryEntry], responses=next_headers())
def history(
    incident_id: str,
    response: Response,
    after: str = AFTER,
    limit: int = LIMIT,
    user: Viewer = readers,
    s: CoreServices = Depends(services),
) -> list[dict[str, Any]]:
    """The incident's own lines (when it happened, changes, investigators, links and unlinks with their
    reasons, the evidence and alarms linked) with the custody of every item linked to the incident
    now or before, and of its redacted copies: views and downloads, redactions, exports, legal holds,
    retention changes; and of its export packages: requested, built, download links issued, downloads
    through them, links revoked. Only items the caller may see now are followed, and only packages
    they read as the incident's (as its disclosure log); an entry about an incident they may not see
    is withheld. In time order, a page at a time (``limit``, then ``after``; an item read a few
    hundred thousand times has that many entries): while more follow, the answer links the next page
    (``Link: <...>; rel="next"`` and ``X-Next-After``). ``/timeline`` answers the same."""
    return _lines("history", incident_id, response, after, limit, user, s)


@router.post(
    "/incidents/{incident_id}/links",
    response_model=LinkOut,
    status_code=201,
    responses=error_responses(400, 409, 422),
)
def link(
    incident_id: str,
    body: LinkIn,
    request: Request,
    idempotency_key: KeyHeader = None,
    user: Viewer = writers,
    s: CoreServices = Depends(services),
) -> Response:
    """Link an evidence item (which the caller must be able to see) or an alarm, with a reason. An item
    already linked answers its link (200) and records nothing; sent again with the same
    ``Idempotency-Key``, the request answers its first answer."""
    retry = Once.of(request, idempotency_key, user.user_id, body, s.settings.idempotency_key_hours)
    with s.db.session() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        if (first := retry.claim(session)) is not None:
            return first
        row, new = link_target(
            session,
            s.ledger,
            incident.id,
            body.kind,
            body.target_id,
            user.actor,
            body.reason,
            retention=retention(s),
            viewer=user,
        )
        if not new and not link_recorded(session, row.id):  # a row planted or revived by SQL: not linked
            raise IncidentRefused(
                "link_unrecorded", f"link row #{row.id} is on no custody entry: verify", 409
            )
        out = {
            "id": row.id,
            "kind": row.target_kind,
            "target_id": row.target_id,
            "linked_by": row.linked_by,
            "reason": row.reason,
            "linked_at": row.linked_at,
        }
        return retry.answer(session, 201 if new else 200, json_body(LinkOut, out))


@router.post("/incidents/{incident_id}/unlink", status_code=204)
def unlink(
    incident_id: str, body: LinkIn, user: Viewer = writers, s: CoreServices = Depends(services)
) -> Response:
    """Unlink an evidence item or alarm, with a reason (the link stays in the history)."""
    with s.db.session() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        unlink_target(
            session,
            s.ledger,
            incident.id,
            body.kind,
            body.target_id,
            user.actor,
            body.reason,
            retention=retention(s),
        )
    return Response(status_code=204)


@router.put(
    "/incidents/{incident_id}/investigators/{user_id}",
    response_model=IncidentOut,
    responses=error_responses(400),
)
def assign(
    incident_id: str, user_id: UserId, user: Viewer = managers, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    with s.db.session() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        assign_investigator(session, s.ledger, incident, user_id, user.actor)
        return incident_view(session, incident, s.key)


@router.delete("/incidents/{incident_id}/investigators/{user_id}", status_code=204)
def unassign(
    incident_id: str, user_id: UserId, user: Viewer = managers, s: CoreServices = Depends(services)
) -> Response:
    with s.db.session() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        unassign_investigator(session, s.ledger, incident, user_id, user.actor)
    return Response(status_code=204)


@router.put("/incidents/{incident_id}/legal-hold", response_model=IncidentOut, responses=error_responses(409))
def incident_hold(
    incident_id: str, body: HoldIn, user: Viewer = managers, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    """Place (``hold: true``) or release every legal hold on an incident; it covers all evidence linked to it."""
    with s.db.session() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise _hidden()
        set_legal_hold(
            session,
            s.ledger,
            s.store,
            RetentionRules.from_settings(s.settings),
            "incident",
            incident.id,
            body.hold,
            body.reason,
            user.actor,
            datetime.now(UTC),
        )
        return incident_view(session, incident, s.key)


@router.get("/statistics", response_model=None, responses={200: {"content": {"text/csv": {}}}})
def statistics(
    by: list[Literal[DIMENSIONS]] = Query(  # type: ignore[valid-type]
        default_factory=lambda: ["month", "category"], description="dimensions to count by"
    ),
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    site: str | None = None,
    format: Literal["json", "csv"] = "json",
    user: Viewer = Depends(require_roles(*STATISTICS_READERS)),
    s: CoreServices = Depends(services),
) -> Any:
    """Anonymised incident counts over whole months: small counts are not listed, nor any that the
    totals would let be worked out, and the rest are rounded (see docs/api.md). A security manager asks
    about their own site only, and counts only its incidents whose seal holds (``incident_scope``:
    one moved to their site by SQL is not theirs). A table covers at most five years (``period_too_long``, 422, beyond):
    ``until`` is by default the end of this month and ``since`` five years before ``until``; the
    answer's ``period`` says which months it covers."""
    dims = list(dict.fromkeys(by))
    seen = sites_seen(user)  # the one site rule: a security manager, their own site
    if seen is not None:
        if len(seen) != 1 or (site is not None and site not in seen):
            raise NotPermitted("a security manager asks for statistics of their own site")
        site = next(iter(seen))
    check_period(since, until, s.settings.report_timezone)
    try:
        since, until = bounded_period(since, until, s.settings.report_timezone, datetime.now(UTC))
    except PeriodRefused:
        log.warning("statistics period refused", extra={"since": str(since), "until": str(until)})
        raise
    with s.db.reading() as session:
        facts = load_fact_counts(
            session,
            since=since,
            until=until,
            site=site,
            tz=s.settings.report_timezone,
            within=None if seen is None else incident_scope(user),  # the site's sealed incidents
        )
    cells, total = count(facts, dims)
    disclosure = Disclosure(s.settings.statistics_min_count, s.settings.statistics_rounding)
    table = publish(cells, total, dims, disclosure, margins_of(facts, dims))
    table["period"] = {"since": since.isoformat(), "until": until.isoformat()}
    if format == "csv":
        return Response(
            to_csv(table),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="incident-statistics.csv"'},
        )
    return table
