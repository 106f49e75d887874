"""The investigator's export pages: an incident's packages, their links and its disclosure log.

What a page lists comes from the same functions as the API (``incidents.access`` for what the
person may see, ``incidents.export.disclosure`` for the log); what it does, its script
(``exports.js``) asks of the API with the session and its CSRF token: build a package of the
chosen items, follow its progress, give a recipient a link, revoke one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.access import services
from chain_of_custody.keys import SIGNING_KEY_PATH
from chain_of_custody.models import EvidenceItem
from incidents.access import Viewer, incident_scope, visible_evidence_ids, visible_incident
from incidents.export.api import EXPORTERS, ORIGINALS_AUTHORISERS
from incidents.export.disclosure import DISCLOSURE_PAGE, disclosure_page
from incidents.export.plan import incident_export_scope
from incidents.models import Incident
from storage.bounds import MAX_OFFSET

from .api import render, signed_in

router = APIRouter(include_in_schema=False)

LOG_PAGE = DISCLOSURE_PAGE  # downloads in a page of the disclosure log, as the API's first page


def exportable_items(session: Session, viewer: Viewer, incident_id: str) -> list[dict[str, Any]]:
    """The incident's linked items the viewer may see: what they may choose to put in a package."""
    _, linked = incident_export_scope(session, viewer, incident_id)
    seen = visible_evidence_ids(session, viewer, linked)
    rows = session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_([i for i in linked if i in seen])))
    by_id = {i.id: i for i in rows}
    return [
        {
            "id": i.id,
            "kind": i.kind,
            "filename": i.filename,
            "wearer": i.wearer,
            "captured_start": i.captured_start,
            "size": i.size,
            "status": i.status,
        }
        for i in (by_id[x] for x in linked if x in by_id)
    ]


@router.get("/exports")
def exports_index(request: Request) -> Response:
    """The incidents the person may export from, newest first, each to its exports page."""
    who = signed_in(request, EXPORTERS)
    with services(request).db.session() as session:
        incidents = session.execute(
            select(Incident.id, Incident.reference, Incident.title, Incident.site, Incident.status)
            .where(incident_scope(who.principal))
            .order_by(Incident.created_at.desc())
            .limit(200)
        ).all()
    return render(request, "exports_index.html", who, incidents=incidents)


@router.get("/incidents/{incident_id}/exports")
def incident_exports_page(request: Request, incident_id: str, after: int = 0) -> Response:
    """The incident's packages, their links, and its disclosure log a page at a time (as the API
    pages it: ``after`` the custody entry its previous page ended with), with a link to the next."""
    who = signed_in(request, EXPORTERS)
    s = services(request)
    with s.db.session() as session:
        incident = visible_incident(session, who.principal, incident_id[:64])
        if incident is None:
            return render(request, "missing.html", who, 404, what="incident")
        items = exportable_items(session, who.principal, incident.id)
        page = disclosure_page(session, incident, max(0, min(after, MAX_OFFSET)), LOG_PAGE)
        summary = {
            "id": incident.id,
            "reference": incident.reference,
            "title": incident.title,
            "site": incident.site,
        }
    return render(
        request,
        "exports.html",
        who,
        incident=summary,
        items=items,
        log=page.log,
        log_after=after,
        log_next=page.next_after,
        can_originals=who.principal.role in ORIGINALS_AUTHORISERS,
        fingerprint=s.key.fingerprint,
        key_url=SIGNING_KEY_PATH,
        now=datetime.now(UTC).isoformat(),
    )
