"""Continuity reports (HTML, PDF) and continuity statement drafts, for an evidence item or an incident.

Who may have one is ``access``'s rule and nothing else: an item the caller may see (404 otherwise,
as for a missing one), an incident the caller may see and, in it, only the items they may see. Each
report is a read of every item it covers, recorded on its custody before the report is made. The
answer says in a header whether the record checked (``X-Custody-Checked``), as its first page does.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from accounts.access import WRITES_CUSTODY, require_roles, services
from chain_of_custody.core import CoreServices
from storage.api_schema import error_responses
from storage.errors import NotFound

from .access import EVIDENCE_METADATA, INCIDENT_READERS, Viewer
from .continuity import Continuity, render_html
from .continuity_record import ReportBounds, incident_continuity, item_continuity
from .continuity_statement import render_statement_html, render_text

router = APIRouter(prefix="/api/v1", tags=["continuity"])

REPORT: dict[int | str, dict[str, Any]] = {
    200: {"description": "the report", "content": {"text/html": {}, "application/pdf": {}}},
    **error_responses(413),
}
STATEMENT: dict[int | str, dict[str, Any]] = {
    200: {"description": "the draft", "content": {"text/plain": {}, "text/html": {}}},
    **error_responses(413),
}
ReportFormat = Literal["html", "pdf"]
StatementFormat = Literal["txt", "html"]


def _answer(report: Continuity, fmt: str, name: str) -> Response:
    headers = {"X-Custody-Checked": "yes" if report.checks else "no", "Cache-Control": "no-store"}
    if fmt == "pdf":
        # ReportLab and Pillow (about 15 MB) are loaded when a PDF is asked for, not at service start.
        from .continuity_pdf import render_pdf

        body, media, ext = render_pdf(report), "application/pdf", "pdf"
    elif fmt == "html":
        body, media, ext = render_html(report), "text/html; charset=utf-8", "html"
    elif fmt == "statement-html":
        body, media, ext = render_statement_html(report), "text/html; charset=utf-8", "html"
    else:
        body, media, ext = render_text(report).encode(), "text/plain; charset=utf-8", "txt"
    headers["Content-Disposition"] = f'attachment; filename="{name}.{ext}"'
    return Response(body, media_type=media, headers=headers)


def _bounds(s: CoreServices) -> ReportBounds:
    return ReportBounds(s.settings.continuity_max_items, s.settings.continuity_max_entries)


def _item(s: CoreServices, user: Viewer, item_id: str, purpose: str) -> Continuity:
    report = item_continuity(s.db, s.ledger, user, item_id, purpose, _bounds(s))
    if report is None:
        raise NotFound("no such evidence item")
    return report


def _incident(s: CoreServices, user: Viewer, incident_id: str, purpose: str) -> Continuity:
    report = incident_continuity(s.db, s.ledger, user, incident_id, purpose, _bounds(s))
    if report is None:
        raise NotFound("no such incident")
    return report


@router.get(
    "/evidence/{item_id}/continuity", response_class=Response, responses=REPORT, dependencies=[WRITES_CUSTODY]
)
def item_report(
    item_id: str,
    format: ReportFormat = Query("html", description="html or pdf"),
    user: Viewer = Depends(require_roles(*EVIDENCE_METADATA)),
    s: CoreServices = Depends(services),
) -> Response:
    """Every custody event of the item from capture to now, in plain words, checked against the signed ledger."""
    return _answer(_item(s, user, item_id, "continuity report"), format, f"continuity-{item_id}")


@router.get(
    "/evidence/{item_id}/continuity-statement",
    response_class=Response,
    responses=STATEMENT,
    dependencies=[WRITES_CUSTODY],
)
def item_statement(
    item_id: str,
    format: StatementFormat = Query("txt", description="txt or html"),
    user: Viewer = Depends(require_roles(*EVIDENCE_METADATA)),
    s: CoreServices = Depends(services),
) -> Response:
    """A continuity statement draft for the item's producer to check, complete and sign."""
    report = _item(s, user, item_id, "continuity statement draft")
    return _answer(report, "statement-html" if format == "html" else "txt", f"statement-draft-{item_id}")


@router.get(
    "/incidents/{incident_id}/continuity",
    response_class=Response,
    responses=REPORT,
    dependencies=[WRITES_CUSTODY],
)
def incident_report(
    incident_id: str,
    format: ReportFormat = Query("html", description="html or pdf"),
    user: Viewer = Depends(require_roles(*INCIDENT_READERS)),
    s: CoreServices = Depends(services),
) -> Response:
    """The continuity of every item of the incident the caller may see, with its exhibit reference."""
    report = _incident(s, user, incident_id, "continuity report")
    return _answer(report, format, f"continuity-{report.incident.get('reference', incident_id)}")


@router.get(
    "/incidents/{incident_id}/continuity-statement",
    response_class=Response,
    responses=STATEMENT,
    dependencies=[WRITES_CUSTODY],
)
def incident_statement(
    incident_id: str,
    format: StatementFormat = Query("txt", description="txt or html"),
    user: Viewer = Depends(require_roles(*INCIDENT_READERS)),
    s: CoreServices = Depends(services),
) -> Response:
    """Continuity statement drafts, one per producer, for the incident's exhibits."""
    report = _incident(s, user, incident_id, "continuity statement draft")
    name = f"statement-draft-{report.incident.get('reference', incident_id)}"
    return _answer(report, "statement-html" if format == "html" else "txt", name)
