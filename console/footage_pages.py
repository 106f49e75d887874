"""The investigator's footage pages: a clip with its player and its record, and the redaction review.

Each page reads through the same rules as the API (``incidents.access`` for who sees which item and
who may see pictures at all, ``readable_trail`` for the custody trail, ``incidents.footage`` for
retention and download names), and plays media only through the API's content route, so every
byte a browser shows is a custody entry. The original is offered only to the roles the API gives
media to, and the player asks them why before it loads it: the reason goes on each read's entry.
Saving a correction is the page's script calling ``POST /api/v1/evidence/{id}/redactions``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.access import services
from chain_of_custody.ledger import TRAIL_PAGE, Ledger
from chain_of_custody.models import EvidenceItem
from incidents.access import (
    EVIDENCE_MEDIA,
    EVIDENCE_METADATA,
    INCIDENT_WRITERS,
    Viewer,
    readable_trail,
    reads_whole_trails,
    visible_evidence,
)
from incidents.exhibits import visible_exhibits
from incidents.export.plan import incident_export_scope
from incidents.footage import download_name, incident_refs, is_original, scoped_retention
from incidents.models import Incident
from incidents.retention import RetentionRules
from incidents.subject_access.models import OPEN
from incidents.subject_access.service import visible_request
from redaction.models import RedactionJob

from .api import render, signed_in

router = APIRouter(include_in_schema=False)


def _exhibit(session: Session, principal: Any, item: EvidenceItem) -> str | None:
    """The item's exhibit references in the incidents the viewer may see (as the API gives them)."""
    refs = visible_exhibits(session, principal, [item.id]).get(item.id, [])
    return ", ".join(f"{r['reference']} ({r['incident']})" for r in refs) or None


def _item_view(item: EvidenceItem, ref: str | None) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "status": item.status,
        "sha256": item.sha256,
        "blake3": item.blake3,
        "size": item.size,
        "content_type": item.content_type,
        "captured_start": item.captured_start.isoformat() if item.captured_start else None,
        "captured_stop": item.captured_stop.isoformat() if item.captured_stop else None,
        "copy_type": item.copy_type,
        "download_name": download_name(item, ref),
    }


def _versions(session: Session, clip: EvidenceItem, ref: str | None) -> list[dict[str, Any]]:
    """The clip's redaction versions, newest first, with their copy's and record's facts."""
    jobs = session.scalars(
        select(RedactionJob)
        .where(RedactionJob.source_item_id == clip.id)
        .order_by(RedactionJob.version.desc())
    )
    out = []
    for job in jobs:
        result = session.get(EvidenceItem, job.result_item_id) if job.result_item_id else None
        record = session.get(EvidenceItem, job.record_item_id) if job.record_item_id else None
        out.append(
            {
                "job_id": job.id,
                "version": job.version,
                "status": job.status,
                "progress": job.progress,
                "requested_by": job.requested_by,
                "based_on_job_id": job.based_on_job_id,
                "created_at": job.created_at.isoformat(),
                "spec": json.loads(job.spec),
                "result": _item_view(result, ref) if result else None,
                "record": _item_view(record, ref) if record else None,
            }
        )
    return out


def _clip_or_redirect(session: Session, viewer: Any, item: EvidenceItem, suffix: str) -> Response | None:
    """A redacted copy or record opens its original's page (the page is per clip, not per file)."""
    if item.derived_from_id and visible_evidence(session, viewer, item.derived_from_id):
        return RedirectResponse(f"/footage/{item.derived_from_id}{suffix}", 303)
    return None


def _page_data(request: Request, roles: tuple[str, ...], item_id: str, suffix: str) -> Any:
    who = signed_in(request, roles)
    s = services(request)
    with s.db.reading() as session:
        item = visible_evidence(session, who.principal, item_id[:64])
        if item is None:
            return who, render(request, "missing.html", who, 404, what="evidence item")
        redirect = _clip_or_redirect(session, who.principal, item, suffix)
        if redirect is not None:
            return who, redirect
        # Whoever reads every trail whole (admins, auditors) reads every incident it names, as the
        # exhibit line and the retention panel do.
        refs = incident_refs(session, None if reads_whole_trails(who.principal) else who.principal, item)
        ref = refs[0] if refs else None
        # The trail's first page; the custody page goes on from there (``oversight_pages.custody_page``).
        page = Ledger.item_entries_page(session, item.id, 0, TRAIL_PAGE + 1)
        trail = readable_trail(session, who.principal, item.id, [e.to_json() for e in page[:TRAIL_PAGE]])
        data = {
            "clip": {
                **_item_view(item, ref),
                "original": is_original(item),
                "exhibit": _exhibit(session, who.principal, item),
            },
            "incidents": refs,
            "versions": _versions(session, item, ref),
            "retention": scoped_retention(
                session, who.principal, item, RetentionRules.from_settings(s.settings), datetime.now(UTC)
            ),
            "custody": trail,
            "custody_more": page[TRAIL_PAGE - 1].body.item_seq if len(page) > TRAIL_PAGE else None,
            "can_play": who.principal.role in EVIDENCE_MEDIA,
        }
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return who, data


@router.get("/footage/{item_id}")
def footage_page(request: Request, item_id: str) -> Response:
    """One clip: the player (redacted copy first; the original after a reason) and its record."""
    who, data = _page_data(request, EVIDENCE_METADATA, item_id, "")
    if isinstance(data, Response):
        return data
    return render(request, "footage.html", who, page=data)


def subject_access(session: Session, viewer: Viewer, request_id: str, clip_id: str) -> dict[str, Any] | None:
    """The open subject access request the review is for, when the viewer may see it and change it
    (``visible_request``: its incident's scope) and the clip is footage of it (linked to its
    incident); None otherwise, and the page is then the plain review, naming no request."""
    if not request_id or viewer.role not in INCIDENT_WRITERS:
        return None
    sar = visible_request(session, viewer, request_id)
    if sar is None or sar.status != OPEN:
        return None
    try:
        _, linked = incident_export_scope(session, viewer, sar.incident_id)
    except LookupError:
        return None
    if clip_id not in linked:
        return None
    incident = session.get(Incident, sar.incident_id)
    reference = incident.reference if incident is not None else sar.incident_id
    return {
        "id": sar.id,
        "requester": sar.requester,
        "reference": reference,
        # Recorded with each track left visible (the copy's custody and record): the request, by
        # its incident's reference, never the requester's name (the ledger outlives the request).
        "reason": f"the person who asked for this footage (subject access request, {reference})",
        "note": f"Subject access request {reference}: every face but the requester's hidden",
    }


@router.get("/footage/{item_id}/review")
def review_page(
    request: Request,
    item_id: str,
    subject_access_request: Annotated[str, Query(alias="subject-access", max_length=64)] = "",
) -> Response:
    """Redaction review and correction: only for the roles that may see pictures and ask for versions.
    Opened for a subject access request (``?subject-access=<id>``, from the request's page) that
    the person may act on, each track offers "this is the requester": that person left visible,
    everyone else masked, the request named as the reason."""
    who, data = _page_data(request, EVIDENCE_MEDIA, item_id, "/review")
    if isinstance(data, Response):
        return data
    with services(request).db.reading() as session:
        data["subject_access"] = subject_access(
            session, who.principal, subject_access_request, data["clip"]["id"]
        )
        session.expunge_all()
    return render(request, "review.html", who, page=data)
