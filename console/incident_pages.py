"""The investigator's incident pages: the list with its filters, one incident, and its timeline.

Each page reads through the same functions as the API routes it mirrors (``incidents.queries``,
``incidents.history``, within ``incidents.access``): the list is ``GET /api/v1/incidents``, the
incident ``GET /api/v1/incidents/{id}``, the timeline ``GET /api/v1/incidents/{id}/history``, for the
same person. An incident outside the person's scope is "not found", as the API answers 404. Every
change (open, edit, close, assign, link, unlink, hold) is made by the page's script calling the API
with the session's CSRF token.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from accounts.access import services
from chain_of_custody.core import list_cursors
from chain_of_custody.reach_seals import reach_secret
from incidents.access import (
    INCIDENT_MANAGERS,
    INCIDENT_READERS,
    INCIDENT_WRITERS,
    may_link_alarm,
    visible_incident,
)
from incidents.exhibits import references as exhibit_references
from incidents.history import AFTER_PATTERN, HISTORY_PAGE, history_page
from incidents.models import CATEGORIES, INVOLVEMENTS, STATUSES, Incident
from incidents.queries import (
    INCIDENT_LIST,
    IncidentFilter,
    incident_position,
    incident_view,
    search_incidents,
)
from storage.paging import CURSOR_MAX, BadCursor, Cursors, Position

from . import workspace_sources as ws
from .api import PageRefused, render, signed_in
from .times import as_moment, when_text

router = APIRouter(include_in_schema=False)
PAGE = 100


def _day(text: str | None) -> datetime | None:
    """A date typed in the filter (``YYYY-MM-DD``) as the start of that day, UTC; None if blank or bad."""
    if not text:
        return None
    try:
        return datetime.combine(date.fromisoformat(text[:10]), time(), tzinfo=UTC)
    except ValueError:
        return None


def page_position(cursors: Cursors, after: str) -> Position | None:
    """Where a page of incidents starts (``after``: the API's cursor of the last one the previous page
    showed); a cursor altered or of another list is a 400 page."""
    if not after:
        return None
    try:
        return cursors.read(INCIDENT_LIST, after)
    except BadCursor as refusal:
        raise PageRefused(
            400, "This page's link is not one the console gave: start again from the first page."
        ) from refusal


def next_cursor(cursors: Cursors, rows: list[Incident], size: int) -> str | None:
    """The cursor of the page after the first ``size`` incidents of ``rows`` (read one beyond), if any."""
    if len(rows) <= size:
        return None
    last = incident_position(rows[size - 1])
    return cursors.make(INCIDENT_LIST, last.at, last.key)


@router.get("/incidents")
def incidents_page(
    request: Request,
    q: Annotated[str, Query(max_length=200)] = "",
    status: Annotated[str, Query(max_length=32)] = "",
    category: Annotated[str, Query(max_length=32)] = "",
    site: Annotated[str, Query(max_length=64)] = "",
    occurred_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    occurred_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    investigator: Annotated[str, Query(max_length=12)] = "",
    wearer: Annotated[str, Query(max_length=64)] = "",
    after: Annotated[str, Query(max_length=CURSOR_MAX)] = "",
) -> Response:
    """The incidents a page at a time, as ``GET /api/v1/incidents`` pages them (``after``: its cursor
    of the last one shown), so incidents opened meanwhile never move one onto two pages."""
    who = signed_in(request, INCIDENT_READERS)
    viewer = who.principal
    cursors = list_cursors(services(request))
    position = page_position(cursors, after)
    until = _day(occurred_to)
    f = IncidentFilter(
        status=[status] if status in STATUSES else [],
        category=[category] if category in CATEGORIES else [],
        site=site or None,
        text=q or None,
        occurred_from=_day(occurred_from),
        occurred_to=until + timedelta(days=1) if until else None,
        assigned_to=int(investigator) if investigator.isdigit() and 0 < int(investigator) < 2**31 else None,
        wearer=wearer or None,
        limit=PAGE + 1,
        after=position,
    )
    with services(request).db.reading() as session:
        found = search_incidents(session, viewer, f, services(request).key)
        names = ws.staff_names(session, {i.wearer for i in found if i.wearer})
        people = ws.investigators(
            session, viewer, services(request).key, everyone=viewer.role in INCIDENT_MANAGERS
        )
        sites = ws.sites(session, viewer)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    filters = {
        "q": q,
        "status": status,
        "category": category,
        "site": site,
        "from": occurred_from,
        "to": occurred_to,
        "investigator": investigator,
        "wearer": wearer,
    }
    query = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "incidents.html",
        who,
        incidents=found[:PAGE],
        more=len(found) > PAGE,
        after=after,
        next_after=next_cursor(cursors, found, PAGE),
        first_page="/incidents" + (f"?{urlencode(query)}" if query else ""),
        filters=filters,
        query=query,
        names=names,
        investigators=people,
        sites=sites,
        categories=CATEGORIES,
        statuses=STATUSES,
        involvements=INVOLVEMENTS,
        can_write=viewer.role in INCIDENT_WRITERS,
        own_site=viewer.site if viewer.role == "security_manager" else None,
    )


@router.get("/incidents/{key}")
def incident_page(request: Request, key: str) -> Response:
    who = signed_in(request, INCIDENT_READERS)
    viewer = who.principal
    with services(request).db.reading() as session:
        incident = visible_incident(session, viewer, key[:64])
        if incident is None:
            return render(request, "missing.html", who, 404, what="incident")
        view = incident_view(session, incident, services(request).key)
        items = ws.linked_items(session, viewer, view["links"])
        exhibit_refs = exhibit_references(session, incident.id, items)  # of the items the viewer sees
        secret = reach_secret(services(request).key)  # alarm rows' seals (``alarms.reach``)
        alarms = ws.linked_alarms(session, viewer, view["links"], secret)
        can_write = viewer.role in INCIDENT_WRITERS
        candidates = ws.evidence_candidates(session, viewer, incident.id) if can_write else []
        alarm_choices = ws.alarm_candidates(session, viewer, incident.id, secret) if can_write else []
        manager = viewer.role in INCIDENT_MANAGERS
        people = ws.investigators(session, viewer, services(request).key, everyone=True) if manager else []
        wearers = {i["wearer"] for i in [*items.values(), *candidates] if i["wearer"]}
        if incident.wearer:
            wearers.add(incident.wearer)
        names = ws.staff_names(session, wearers | {s["staff_id"] for s in view["staff"]})
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    assigned = {p["user_id"] for p in view["investigators"]}
    return render(
        request,
        "incident.html",
        who,
        incident=view,
        items=items,
        exhibits=exhibit_refs,
        alarms=alarms,
        candidates=candidates,
        alarm_choices=alarm_choices,
        may_link_alarms=can_write and may_link_alarm(viewer),
        can_write=can_write,
        can_manage=manager,
        assignable=[p for p in people if p["id"] not in assigned],
        names=names,
        categories=CATEGORIES,
        statuses=STATUSES,
    )


@router.get("/incidents/{key}/timeline")
def incident_timeline_page(
    request: Request,
    key: str,
    after: Annotated[str, Query(max_length=64, pattern=AFTER_PATTERN)] = "",
) -> Response:
    """The incident's history a page at a time (``after`` the last line shown), as
    ``GET /api/v1/incidents/{id}/history`` pages it: an incident whose clip was read a few hundred
    thousand times is never set out in one page."""
    who = signed_in(request, INCIDENT_READERS)
    with services(request).db.reading() as session:
        incident = visible_incident(session, who.principal, key[:64])
        if incident is None:
            return render(request, "missing.html", who, 404, what="incident")
        view = {"id": incident.id, "reference": incident.reference, "title": incident.title}
        page = history_page(session, who.principal, incident, after, HISTORY_PAGE, key=services(request).key)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request,
        "incident_timeline.html",
        who,
        incident=view,
        rows=page.rows,
        after=after,
        next_after=page.next_after,
        describe=describe,
    )


ACTIONS = {
    "created": "incident opened",
    "updated": "incident changed",
    "status_changed": "status changed",
    "assigned": "investigator assigned",
    "unassigned": "investigator removed",
    "linked": "linked",
    "unlinked": "unlinked",
    "joined": "an alarm joined the incident",
    "occurred": "the incident happened",
    "alarm": "alarm linked",
    "custody:viewed": "viewed or downloaded",
    "custody:viewing_closed": "viewing closed (ranges sealed)",
    "custody:redacted": "redaction version made",
    "custody:export_requested": "export requested",
    "custody:exported": "put in an export package",
    "custody:link_issued": "download link issued",
    "custody:link_revoked": "download link revoked",
    "custody:legal_hold": "legal hold",
    "custody:retention_changed": "retention changed",
    "custody:linked": "linked (custody)",
    "custody:unlinked": "unlinked (custody)",
    "custody:stored": "evidence stored",
    "custody:blocks_listed": "checked whole, block digests kept",
    "custody:quarantined": "quarantined",
    "custody:quarantine_released": "released from quarantine after review",
    "custody:deleted": "deleted",
}


def _short(value: object) -> str:
    return str(value or "")[:8]


def _said(key: str, value: object) -> str:
    """``key: value`` for a line's detail, a moment in the ledger's ISO text written as every page
    writes one (``console.times``), so a retention date or a link's expiry reads as the rest."""
    if isinstance(value, str) and "T" in value and as_moment(value) is not None:
        value = when_text(value)
    return f"{key}: {value}"


def _package_line(kind: str, d: dict[str, Any], row: dict[str, Any]) -> tuple[str, str] | None:
    """An export package's own custody line in words (requested, built, link issued, downloaded,
    revoked)."""
    if kind == "custody:export_requested":
        if d.get("include_originals"):
            asked = f"original footage included: {d.get('reason') or ''}"
        elif d.get("reason"):
            asked = f"reason given: {d['reason']}"
        else:
            asked = "no original footage"
        return "export requested", f"package {_short(row.get('item_id'))}; {asked}"
    if kind == "custody:exported":
        originals = d.get("originals") or {}
        bits = [
            f"{len(d.get('included') or [])} item(s) you may see",
            str(d.get("filename") or ""),
            f"originals included: {originals.get('reason', '')}" if originals else "",
            f"key {d.get('key_fingerprint', '')}" if d.get("key_fingerprint") else "",
        ]
        return "export package built", "; ".join(b for b in bits if b)
    if kind == "custody:link_issued":
        bits = [
            f"to {d.get('recipient', '')}",
            f"for {d['purpose']}" if d.get("purpose") else "",
            f"expires {when_text(d['expires_at'])}" if d.get("expires_at") else "",
        ]
        return "download link issued", "; ".join(b for b in bits if b)
    if kind == "custody:link_revoked":
        return "download link revoked", f"the link to {d.get('recipient', '')}"
    if kind == "custody:viewed" and str(row.get("actor") or "").startswith("link:"):
        part = f"bytes {d['range'][0]}-{d['range'][1]}" if d.get("range") else "the whole package"
        return "export package downloaded", f"{part} from {d.get('client') or 'an unknown address'}"
    return None


def who(row: dict[str, Any]) -> str:
    """Who did it: the actor, or for a package's download the recipient of the link it came through."""
    actor = str(row.get("actor") or "")
    if actor.startswith("link:") and row.get("recipient"):
        return f"{row['recipient']} (link {_short(actor.removeprefix('link:'))})"
    return actor


def describe(row: dict[str, Any]) -> dict[str, str]:
    """A timeline line in words: what happened, who did it, and the detail a reader wants (a reason,
    a change)."""
    kind: str = row["kind"]
    d = row.get("details") or {}
    what = ACTIONS.get(kind) or kind.replace("custody:", "").replace("evidence:", "evidence: ").replace(
        "_", " "
    )
    detail = ""
    package = row.get("item_kind") == "export" and row.get("item_id") == row.get("root_id")
    told = _package_line(kind, d, row) if package and not row.get("withheld") else None
    if row.get("withheld"):
        detail = f"withheld: {row['withheld']}"
    elif told is not None:
        what, detail = told
    elif kind in ("linked", "unlinked"):
        detail = f"{d.get('kind', '')} {d.get('target', '')} — reason: {d.get('reason', '')}"
    elif kind in ("assigned", "unassigned"):
        detail = str(d.get("investigator", ""))
    elif kind in ("updated", "status_changed"):
        detail = ", ".join(f"{k}: {v}" for k, v in (d.get("changes") or {}).items())
    elif kind.startswith("evidence:"):
        detail = f"{d.get('wearer') or ''} — linked by {d.get('linked_by', '')}: {d.get('reason', '')}"
        what = f"{kind.split(':', 1)[1]} recorded"
    elif kind == "alarm":
        detail = f"{d.get('alarm_id', '')} — {d.get('reason', '')}"
    elif kind == "custody:legal_hold" and isinstance(d.get("on"), bool):
        what = "legal hold placed" if d["on"] else "legal hold lifted"
        detail = "; ".join(f"{k}: {d[k]}" for k in ("reason", "cause") if d.get(k))
    elif kind == "custody:exported" and d.get("export_id"):
        held = (
            "media included"
            if d.get("media_included")
            else f"media withheld: {d.get('withheld_reason') or ''}"
        )
        detail = f"package {_short(d['export_id'])}; {held}"
        if d.get("original_footage"):
            detail += f"; original footage, reason: {d.get('reason') or ''}"
    elif kind == "custody:redacted" and d.get("redacted_item"):
        version = f"version {d['version']}: " if d.get("version") else ""
        detail = f"{version}redacted copy {_short(d['redacted_item'])}"
    elif kind == "custody:retention_changed":
        bits = [_said(k, d[k]) for k in ("class", "to", "cause") if d.get(k)]
        detail = "; ".join(bits)
    elif kind.startswith("custody:"):
        bits = [
            _said(k, d[k])
            for k in (
                "incident",
                "reason",
                "purpose",
                "hold",
                "class",
                "keep_until",
                "version",
                "recipient",
                "range",
                "viewing",
                "ranges",
                "bytes",
                "closed",
                "sha256",
                "size",
            )
            if d.get(k) not in (None, "", [])
        ]
        detail = "; ".join(bits)
    return {"what": what, "detail": detail, "who": who(row)}
