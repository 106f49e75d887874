"""The security manager's and the auditor's pages: statistics as charts, retention and legal holds,
and any item's custody trail with the service's verification.

- Statistics: the page's script draws ``GET /api/v1/statistics`` (the anonymised, rounded table:
  month × category, site, staff group) as SVG charts of our own, and links its ``format=csv``.
- Retention: what the person sees of the evidence, soonest to expire first, with each item's class
  (``GET /api/v1/evidence/{id}/retention``) and the legal holds in force with their reasons.
- Custody: one item's metadata, retention and custody trail as ``GET /api/v1/evidence/{id}`` and
  ``.../custody`` give them (entries about incidents the person may not see are withheld); a button
  starts ``POST /api/v1/custody/verify`` (administrators and auditors), a job the page follows at
  ``GET /api/v1/custody/verify/{id}``, showing its progress and then what it found.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from accounts.access import services
from chain_of_custody.ledger import TRAIL_PAGE, Ledger
from incidents.access import (
    EVIDENCE_MEDIA,
    EVIDENCE_METADATA,
    STATISTICS_READERS,
    VERIFIERS,
    readable_retention,
    readable_trail,
    visible_evidence,
)
from incidents.retention import RetentionRules, describe
from storage.bounds import MAX_OFFSET

from . import workspace_sources as ws
from .api import render, signed_in
from .quarantine_review import HeldItem, held_for

router = APIRouter(include_in_schema=False)


@router.get("/statistics")
def statistics_page(request: Request) -> Response:
    who = signed_in(request, STATISTICS_READERS)
    return render(
        request,
        "statistics.html",
        who,
        own_site=who.principal.site if who.principal.role == "security_manager" else None,
    )


@router.get("/retention")
def retention_page(request: Request) -> Response:
    who = signed_in(request, EVIDENCE_METADATA)
    s = services(request)
    rules = RetentionRules.from_settings(s.settings)
    with s.db.reading() as session:
        holds = ws.holds(session, who.principal)
        items = ws.expiring(session, who.principal, rules)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request, "retention.html", who, holds=holds, items=items, rules=rules, now=datetime.now(UTC)
    )


@router.get("/custody")
def custody_page(
    request: Request,
    item: Annotated[str, Query(max_length=36)] = "",
    after: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    """An item's custody trail a page at a time (``after`` the last entry number shown), as
    ``GET /api/v1/evidence/{id}/custody`` pages it: an item read a few hundred thousand times is
    never set out in one page."""
    who = signed_in(request, EVIDENCE_METADATA)
    s = services(request)
    found = None
    trail: list[dict[str, object]] = []
    next_after = None
    retention = None
    held: HeldItem | None = None
    if item:
        with s.db.reading() as session:
            found = visible_evidence(session, who.principal, item.strip())
            if found is not None:
                page = Ledger.item_entries_page(session, found.id, after, TRAIL_PAGE + 1)
                if len(page) > TRAIL_PAGE:
                    next_after = page[TRAIL_PAGE - 1].body.item_seq
                trail = readable_trail(
                    session, who.principal, found.id, [e.to_json() for e in page[:TRAIL_PAGE]]
                )
                retention = readable_retention(
                    session,
                    who.principal,
                    describe(session, found, RetentionRules.from_settings(s.settings), datetime.now(UTC)),
                )
                held = held_for(session, s, who.principal, found)
            session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request,
        "custody.html",
        who,
        asked=item,
        item=found,
        trail=trail,
        after=after,
        next_after=next_after,
        retention=retention,
        held=held,
        can_verify=who.principal.role in VERIFIERS,
        can_play=who.principal.role in EVIDENCE_MEDIA,
    )
