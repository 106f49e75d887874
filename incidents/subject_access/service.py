"""Subject access requests: their dates (pure), the search for footage, and every change in custody.

The statutory period is one calendar month from receipt: the same day of the next month, or that
month's last day when it has no such day (received 31 January, due 28 or 29 February). Every
step (received, searched, changed, answered) is a ``subject_access`` custody entry naming the
request and its incident, never the requester (the ledger outlives the request's personal data).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.reach_seals import site_reach

from ..access import Viewer, evidence_scope, incident_scope, of_reach, reach_checked
from ..export.models import ExportJob
from ..models import Incident
from ..service import IncidentDraft, IncidentRefused, create_incident
from .models import OPEN, SAR_STATUSES, SubjectAccessRequest

CANDIDATE_KINDS = ("clip",)
MAX_CANDIDATES = 200


# -- dates (pure) ---------------------------------------------------------------------------------


def due_date(received: date) -> date:
    """One calendar month after ``received``; the month's last day when it has no such day."""
    year, month = (received.year + 1, 1) if received.month == 12 else (received.year, received.month + 1)
    return date(year, month, min(received.day, calendar.monthrange(year, month)[1]))


def days_left(due: date, today: date) -> int:
    """Days until the answer is due (0 on the day, negative when late)."""
    return (due - today).days


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestDraft:
    requester: str
    contact: str
    received_on: date
    site: str
    description: str = ""
    notes: str = ""


def _custody(
    session: Session, ledger: Ledger, sar: SubjectAccessRequest, actor: str, event: str, **extra: Any
) -> None:
    incident = session.get(Incident, sar.incident_id)
    details = {
        "event": event,
        "request": sar.id,
        "incident": incident.reference if incident else sar.incident_id,
        "incident_id": sar.incident_id,
        **extra,
    }
    ledger.append(session, CustodyAction.SUBJECT_ACCESS, actor, details=details)


def receive_request(
    session: Session, ledger: Ledger, viewer: Viewer, draft: RequestDraft, *, now: datetime | None = None
) -> SubjectAccessRequest:
    """Record a request and open its incident (an investigator who records it is assigned to it)."""
    now = now or datetime.now(UTC)
    requester = draft.requester.strip()
    if len(requester) < 2:
        raise IncidentRefused("requester_required", "name the person who asks", 422)
    if not draft.contact.strip():
        raise IncidentRefused("contact_required", "say how to reach the person who asks", 422)
    if draft.received_on > now.date():
        raise IncidentRefused("received_in_future", "the request cannot be received after today", 422)
    incident = create_incident(
        session,
        IncidentDraft(
            category="other",
            occurred_at=datetime.combine(draft.received_on, time(), UTC),
            site=draft.site,
            # No name in the title: an export writes the title into the signed ledger, which outlives
            # the request's personal data (the name stays in the request's own row).
            title=f"Subject access request received {draft.received_on.isoformat()}",
            description=draft.description,
        ),
        viewer.actor,
        now=now,
        assign_user_id=viewer.user_id if viewer.role == "investigator" else None,
        ledger=ledger,
        viewer=viewer,
    )
    sar = SubjectAccessRequest(
        incident_id=incident.id,
        requester=requester,
        contact=draft.contact.strip(),
        description=draft.description,
        received_on=draft.received_on,
        due_on=due_date(draft.received_on),
        status=OPEN,
        notes=draft.notes,
        created_by=viewer.actor,
        created_at=now,
    )
    session.add(sar)
    session.flush()
    _custody(
        session,
        ledger,
        sar,
        viewer.actor,
        "received",
        received_on=sar.received_on.isoformat(),
        due_on=sar.due_on.isoformat(),
    )
    return sar


def visible_request(session: Session, viewer: Viewer, request_id: str) -> SubjectAccessRequest | None:
    """The request if the viewer may see its incident; None both when missing and when hidden."""
    return session.scalar(
        select(SubjectAccessRequest)
        .join(Incident, Incident.id == SubjectAccessRequest.incident_id)
        .where(SubjectAccessRequest.id == request_id, incident_scope(viewer))
    )


def requests_for(
    session: Session,
    viewer: Viewer,
    statuses: Sequence[str] = (OPEN,),
    *,
    after: SubjectAccessRequest | None = None,
    limit: int | None = None,
) -> list[SubjectAccessRequest]:
    """The requests the viewer may see with these statuses, the least time left first (then the
    oldest, then by id), those after ``after`` in that order, at most ``limit``."""
    q = (
        select(SubjectAccessRequest)
        .join(Incident, Incident.id == SubjectAccessRequest.incident_id)
        .where(SubjectAccessRequest.status.in_(list(statuses)), incident_scope(viewer))
    )
    if after is not None:
        due, created, key = (
            SubjectAccessRequest.due_on,
            SubjectAccessRequest.created_at,
            SubjectAccessRequest.id,
        )
        q = q.where(
            (due > after.due_on)
            | ((due == after.due_on) & (created > after.created_at))
            | ((due == after.due_on) & (created == after.created_at) & (key > after.id))
        )
    order = (SubjectAccessRequest.due_on, SubjectAccessRequest.created_at, SubjectAccessRequest.id)
    return list(session.scalars(q.order_by(*order).limit(limit)))


def change_request(
    session: Session,
    ledger: Ledger,
    sar: SubjectAccessRequest,
    actor: str,
    *,
    status: str | None = None,
    notes: str | None = None,
    export_id: str | None = None,
    now: datetime | None = None,
) -> SubjectAccessRequest:
    """Change the status, the notes or the package answered with; a custody entry says what changed."""
    now = now or datetime.now(UTC)
    changed: dict[str, Any] = {}
    if status is not None and status != sar.status:
        if status not in SAR_STATUSES:
            raise IncidentRefused("bad_status", f"status is one of {', '.join(SAR_STATUSES)}")
        changed["status"] = {"from": sar.status, "to": status}
        sar.status = status
        sar.closed_at, sar.closed_by = (None, None) if status == OPEN else (now, actor)
    if notes is not None and notes != sar.notes:
        changed["notes"] = "changed"
        sar.notes = notes
    if export_id is not None and export_id != sar.export_id:
        job = session.get(ExportJob, export_id)
        if job is None or job.incident_id != sar.incident_id:
            raise IncidentRefused("unknown_export", "no such package of this request", 404)
        changed["export_id"] = export_id
        sar.export_id = export_id
    if changed:
        _custody(session, ledger, sar, actor, "changed", changes=changed)
    return sar


# -- finding footage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    start: datetime
    end: datetime
    wearer: str | None = None
    site: str | None = None


def candidates(
    session: Session, ledger: Ledger, viewer: Viewer, sar: SubjectAccessRequest, search: Search
) -> list[EvidenceItem]:
    """Clips recorded during the window (by the camera's clock), by the wearer and at the site if
    given, among those the viewer may see; the search itself is a custody entry."""
    if search.end < search.start:
        raise IncidentRefused("bad_window", "the window ends before it starts", 422)
    stop = func.coalesce(EvidenceItem.captured_stop, EvidenceItem.captured_start)
    q = select(EvidenceItem).where(
        EvidenceItem.kind.in_(CANDIDATE_KINDS),
        EvidenceItem.status != "deleted",
        EvidenceItem.captured_start.is_not(None),
        EvidenceItem.captured_start <= search.end,
        stop >= search.start,
        evidence_scope(viewer),
    )
    if search.wearer:
        q = q.where(EvidenceItem.wearer == search.wearer)
    at_site = site_reach(session, ledger.key, search.site) if search.site else None
    if at_site is not None:
        # The site's staff and devices whose seal holds (``reach_seals``): a device or a member of
        # staff moved to the site by SQL brings none of its footage into this search.
        q = q.where(of_reach(EvidenceItem, at_site))
    found = reach_checked(
        session, viewer, list(session.scalars(q.order_by(EvidenceItem.captured_start).limit(MAX_CANDIDATES)))
    )
    if at_site is not None:
        found = [item for item in found if at_site.holds(item)]
    _custody(
        session,
        ledger,
        sar,
        viewer.actor,
        "searched",
        window=[search.start.isoformat(), search.end.isoformat()],
        wearer=search.wearer,
        site=search.site,
        found=len(found),
    )
    return found
