"""Subject access request pages: the open requests by days left, and one request from footage to package.

The lists come from ``incidents.subject_access`` with the caller's access (the request's incident);
the footage of a request is what is linked to its incident and visible to the person. The page's
script (``subject_access.js``) acts through the API: it searches, links a clip, asks for a
redaction version with the requester's track excluded (and audio muted), and builds the package.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.routing import NoMatchFound

from accounts.access import services
from incidents.access import INCIDENT_READERS, INCIDENT_WRITERS, Viewer, visible_incident
from incidents.export.disclosure import package_view
from incidents.export.models import ExportJob
from incidents.subject_access.api import REQUESTS_PAGE, request_view
from incidents.subject_access.models import SAR_STATUSES
from incidents.subject_access.service import requests_for, visible_request
from redaction.models import RedactionJob

from .api import render, signed_in
from .export_pages import exportable_items

router = APIRouter(include_in_schema=False)


def review_url(request: Request, item_id: str) -> str | None:
    """The review screen of a clip, if this application serves one. Asked of the application by the
    route's name: its list of routes holds an included router as one entry with no path of its own
    (FastAPI 0.165), so looking for the path there never found it and the link was never shown."""
    try:
        return str(request.app.url_path_for("review_page", item_id=item_id))
    except NoMatchFound:
        return None


def versions(session: Session, item_id: str) -> list[dict[str, Any]]:
    """A clip's redaction versions, newest first, with what each excluded and muted."""
    jobs = session.scalars(
        select(RedactionJob)
        .where(RedactionJob.source_item_id == item_id)
        .order_by(RedactionJob.version.desc())
    )
    out = []
    for job in jobs:
        spec = json.loads(job.spec or "{}")
        out.append(
            {
                "id": job.id,
                "version": job.version,
                "status": job.status,
                "requested_by": job.requested_by,
                "excluded": [e.get("track") for e in spec.get("exclusions", [])],
                "muted": [[a.get("start"), a.get("end")] for a in spec.get("audio_edits", [])],
                "result_item_id": job.result_item_id,
            }
        )
    return out


@router.get("/subject-access")
def requests_page(
    request: Request,
    everything: bool = Query(False, alias="all"),
    after: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """The requests the person may see, the fewest days left first, a page at a time (``after`` the
    last one shown), as ``GET /api/v1/subject-access-requests`` pages them."""
    who = signed_in(request, INCIDENT_READERS)
    statuses = SAR_STATUSES if everything else ("open",)
    with services(request).db.reading() as session:
        last = visible_request(session, who.principal, after) if after else None
        if after and last is None:
            return render(request, "missing.html", who, 404, what="subject access request")
        found = requests_for(session, who.principal, statuses, after=last, limit=REQUESTS_PAGE + 1)
        rows = [request_view(session, r) for r in found[:REQUESTS_PAGE]]
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    next_after = found[REQUESTS_PAGE - 1].id if len(found) > REQUESTS_PAGE else None
    return render(
        request,
        "subject_access.html",
        who,
        requests=rows,
        after=after,
        next_after=next_after,
        showing_all=everything,
        can_write=who.principal.role in INCIDENT_WRITERS,
        today=datetime.now(UTC).date().isoformat(),
        own_site=who.principal.site if who.principal.role == "security_manager" else None,
    )


def _footage(request: Request, session: Session, viewer: Viewer, incident_id: str) -> list[dict[str, Any]]:
    items = [i for i in exportable_items(session, viewer, incident_id) if i["kind"] == "clip"]
    for item in items:
        item["versions"] = versions(session, item["id"])
        item["review_url"] = review_url(request, item["id"])
    return items


@router.get("/subject-access/{request_id}")
def request_page(request: Request, request_id: str) -> Response:
    who = signed_in(request, INCIDENT_READERS)
    with services(request).db.reading() as session:
        sar = visible_request(session, who.principal, request_id[:64])
        if sar is None:
            return render(request, "missing.html", who, 404, what="subject access request")
        view = request_view(session, sar)
        incident = visible_incident(session, who.principal, sar.incident_id)
        assert incident is not None
        footage = _footage(request, session, who.principal, incident.id)
        job = session.get(ExportJob, sar.export_id) if sar.export_id else None
        packages = [package_view(job, [], {})] if job is not None and job.incident_id == incident.id else []
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request,
        "subject_access_request.html",
        who,
        sar=view,
        footage=footage,
        package=packages[0] if packages else None,
        can_write=who.principal.role in INCIDENT_WRITERS,
    )
