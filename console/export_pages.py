"""The investigator's export pages: an incident's packages, their links and its disclosure log.

What a page lists comes from the same functions as the API (``incidents.access`` for what the
person may see, ``incidents.export.disclosure`` for the log); what it does, its script
(``exports.js``) asks of the API with the session and its CSRF token: build a package of the
chosen items, follow its progress, give a recipient a link, revoke one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.access import services
from chain_of_custody.core import list_cursors
from chain_of_custody.keys import SIGNING_KEY_PATH
from chain_of_custody.models import EvidenceItem
from incidents.access import Viewer, visible_evidence_ids, visible_incident
from incidents.export.api import (
    EXPORTERS,
    ORIGINALS_AUTHORISERS,
    job_reader,
    left_visible,
    redaction_choices,
)
from incidents.export.disclosure import DISCLOSURE_PAGE, disclosure_page
from incidents.export.models import ExportJob
from incidents.export.plan import ORIGINAL_VIDEO_KINDS, REDACTED_VIDEO_KIND, incident_export_scope
from incidents.queries import IncidentFilter, search_incidents
from redaction.models import RedactionJob
from storage.bounds import MAX_OFFSET
from storage.paging import CURSOR_MAX

from .api import render, signed_in
from .incident_pages import next_cursor, page_position

router = APIRouter(include_in_schema=False)

INDEX_PAGE = 100  # incidents in a page of the index
LOG_PAGE = DISCLOSURE_PAGE  # downloads in a page of the disclosure log, as the API's first page


def exportable_items(session: Session, viewer: Viewer, incident_id: str) -> list[dict[str, Any]]:
    """The incident's linked items the viewer may see: what they may choose to put in a package."""
    _, linked = incident_export_scope(session, viewer, incident_id)
    seen = visible_evidence_ids(session, viewer, linked)
    rows = session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_([i for i in linked if i in seen])))
    by_id = {i.id: i for i in rows}
    versions = redaction_versions(
        session, viewer, [i.id for i in by_id.values() if i.kind in ORIGINAL_VIDEO_KINDS]
    )
    return [
        {
            "id": i.id,
            "kind": i.kind,
            "filename": i.filename,
            "wearer": i.wearer,
            "captured_start": i.captured_start,
            "size": i.size,
            "status": i.status,
            "versions": versions.get(i.id, []),
        }
        for i in (by_id[x] for x in linked if x in by_id)
    ]


def redaction_versions(
    session: Session, viewer: Viewer, clip_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Clip -> its finished redactions the viewer may see, oldest first (``version``, the redacted copy
    ``id``, ``left_visible``: a track turned off, so only a role that may release originals may hand
    it out, with a reason): what the exporter chooses from, as the API takes a copy's id in place of
    its clip's."""
    if not clip_ids:
        return {}
    rows = session.execute(
        select(RedactionJob.source_item_id, RedactionJob.version, EvidenceItem.id)
        .join(EvidenceItem, EvidenceItem.id == RedactionJob.result_item_id)
        .where(
            RedactionJob.source_item_id.in_(clip_ids),
            RedactionJob.status == "done",
            EvidenceItem.kind == REDACTED_VIDEO_KIND,
            EvidenceItem.derived_from_id == RedactionJob.source_item_id,
            EvidenceItem.status != "deleted",
        )
        .order_by(RedactionJob.version)
    ).all()
    seen = visible_evidence_ids(session, viewer, [r[2] for r in rows])
    showing = set(left_visible(session, [r[2] for r in rows if r[2] in seen]))
    out: dict[str, list[dict[str, Any]]] = {}
    for clip, version, copy in rows:
        if copy in seen:
            out.setdefault(clip, []).append({"version": version, "id": copy, "left_visible": copy in showing})
    return out


def package_redactions(
    session: Session, viewer: Viewer, packages: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Package -> the redacted copies it holds that the viewer may see, each with its clip's name,
    the redaction version and the tracks it leaves visible, as the copy's ``redacted`` custody entry
    records them (what the package's manifest says of each)."""
    ids = [p["export_id"] for p in packages if p["status"] == "ready"]
    if not ids:
        return {}
    held: dict[str, list[str]] = {}
    for job_id, result in session.execute(
        select(ExportJob.id, ExportJob.result).where(ExportJob.id.in_(ids))
    ):
        try:
            held[job_id] = [str(i) for i in (json.loads(result or "{}").get("included") or [])]
        except (ValueError, AttributeError):
            continue
    wanted = {i for items in held.values() for i in items}
    seen = visible_evidence_ids(session, viewer, wanted)
    copies = {
        i.id: i
        for i in session.scalars(
            select(EvidenceItem).where(
                EvidenceItem.id.in_([i for i in wanted if i in seen]),
                EvidenceItem.kind == REDACTED_VIDEO_KIND,
            )
        )
    }
    made = redaction_choices(session, list(copies))
    clips = {
        i.id: i.filename or i.id
        for i in session.scalars(
            select(EvidenceItem).where(EvidenceItem.id.in_({c.derived_from_id for c in copies.values()}))
        )
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for job_id, items in held.items():
        for item_id in items:
            if item_id in copies and item_id in made:
                clip = copies[item_id].derived_from_id
                out.setdefault(job_id, []).append(
                    {"item_id": item_id, "clip": clips.get(clip or "", clip), **made[item_id]}
                )
    return out


@router.get("/exports")
def exports_index(request: Request, after: Annotated[str, Query(max_length=CURSOR_MAX)] = "") -> Response:
    """The incidents the person may export from, a page at a time in the incident list's order (newest
    first, ``after`` its cursor of the last one shown), each to its exports page: every incident
    they may see is reached, however many."""
    who = signed_in(request, EXPORTERS)
    cursors = list_cursors(services(request))
    f = IncidentFilter(limit=INDEX_PAGE + 1, after=page_position(cursors, after))
    with services(request).db.reading() as session:
        found = search_incidents(session, who.principal, f, services(request).key)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request,
        "exports_index.html",
        who,
        incidents=found[:INDEX_PAGE],
        after=after,
        next_after=next_cursor(cursors, found, INDEX_PAGE),
    )


@router.get("/incidents/{incident_id}/exports")
def incident_exports_page(request: Request, incident_id: str, after: int = 0) -> Response:
    """The incident's packages, their links, and its disclosure log a page at a time (as the API
    pages it: ``after`` the custody entry its previous page ended with), with a link to the next."""
    who = signed_in(request, EXPORTERS)
    s = services(request)
    with s.db.reading() as session:
        incident = visible_incident(session, who.principal, incident_id[:64])
        if incident is None:
            return render(request, "missing.html", who, 404, what="incident")
        items = exportable_items(session, who.principal, incident.id)
        readable = job_reader(s.key, who.principal)
        page = disclosure_page(session, incident, max(0, min(after, MAX_OFFSET)), LOG_PAGE, readable=readable)
        redactions = package_redactions(session, who.principal, page.log["packages"])
        summary = {
            "id": incident.id,
            "reference": incident.reference,
            "title": incident.title,
            "site": incident.site,
        }
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request,
        "exports.html",
        who,
        incident=summary,
        items=items,
        log=page.log,
        redactions=redactions,
        log_after=after,
        log_next=page.next_after,
        can_originals=who.principal.role in ORIGINALS_AUTHORISERS,
        fingerprint=s.key.fingerprint,
        key_url=SIGNING_KEY_PATH,
        now=datetime.now(UTC).isoformat(),
    )
