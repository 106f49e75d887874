"""Reading incidents: search within the caller's scope, one incident as the API shows it, its timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from accounts.models import User
from accounts.seals import name_of
from chain_of_custody.keys import ServiceKey
from chain_of_custody.row_seals import USER_SEALS
from devices.models import StaffMember
from storage.paging import Position, after_position

from .access import Viewer, incident_scope, link_holds, link_on_custody
from .grants import sealed_assignment_ids, sealed_assignment_ids_on
from .models import (
    ExhibitReference,
    Incident,
    IncidentAssignment,
    IncidentLink,
    IncidentStaff,
    LegalHold,
)

INCIDENT_LIST = "incidents"  # the list a cursor of search_incidents belongs to (API and console alike)


@dataclass
class IncidentFilter:
    status: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    site: str | None = None
    text: str | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None
    assigned_to: int | None = None
    wearer: str | None = None
    staff_id: str | None = None
    evidence_id: str | None = None
    limit: int = 100
    offset: int = 0
    after: Position | None = None  # where the previous page ended (occurred_at, reference)


def search_incidents(session: Session, viewer: Viewer, f: IncidentFilter, key: ServiceKey) -> list[Incident]:
    """Incidents the viewer may see that match every given filter, newest first (when it happened,
    then reference: a total order), those after ``f.after`` or past the first ``f.offset``. By
    assignee, only assignments whose seal holds count (``incidents.grants``)."""
    q = select(Incident).where(
        incident_scope(viewer), after_position(Incident.occurred_at, Incident.reference, f.after)
    )
    if f.status:
        q = q.where(Incident.status.in_(f.status))
    if f.category:
        q = q.where(Incident.category.in_(f.category))
    if f.site:
        q = q.where(Incident.site == f.site)
    if f.text:
        like = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        q = q.where(
            or_(
                Incident.reference.ilike(like, escape="\\"),
                Incident.title.ilike(like, escape="\\"),
                Incident.description.ilike(like, escape="\\"),
                Incident.ward.ilike(like, escape="\\"),
            )
        )
    if f.occurred_from:
        q = q.where(Incident.occurred_at >= f.occurred_from)
    if f.occurred_to:
        q = q.where(Incident.occurred_at < f.occurred_to)
    if f.assigned_to is not None:
        q = q.where(
            Incident.id.in_(
                select(IncidentAssignment.incident_id).where(
                    IncidentAssignment.user_id == f.assigned_to,
                    IncidentAssignment.unassigned_at.is_(None),
                    IncidentAssignment.id.in_(sorted(sealed_assignment_ids(session, key, f.assigned_to))),
                )
            )
        )
    if f.wearer:
        q = q.where(Incident.wearer == f.wearer)
    if f.staff_id:
        q = q.where(
            Incident.id.in_(select(IncidentStaff.incident_id).where(IncidentStaff.staff_id == f.staff_id))
        )
    if f.evidence_id:
        q = q.where(
            Incident.id.in_(
                select(IncidentLink.incident_id).where(
                    IncidentLink.target_kind == "evidence",
                    IncidentLink.target_id == f.evidence_id,
                    IncidentLink.unlinked_at.is_(None),
                    link_on_custody(),  # a row planted, revived or moved by SQL names no incident
                )
            )
        )
    q = q.order_by(Incident.occurred_at.desc(), Incident.reference.desc()).limit(f.limit).offset(f.offset)
    return list(session.scalars(q))


def incident_position(incident: Incident) -> Position:
    """Where a page of :func:`search_incidents` that ends with ``incident`` ended."""
    return Position(incident.occurred_at, incident.reference)


def incident_view(session: Session, incident: Incident, key: ServiceKey) -> dict[str, Any]:
    """The incident with its staff, investigators, active links and holds, as the API returns it.
    Its links are those the custody record holds (``access.link_holds``): a link row of evidence or
    of an alarm moved to this incident by SQL, or planted, is not listed. Its investigators are those of assignments whose seal holds: a planted row names nobody; and
    each one's full name is given only while their user row's seal holds (``accounts.seals.name_of``,
    as a continuity report prints it): a name written by SQL is not printed as theirs."""
    names = key.derived_secret(USER_SEALS)
    staff = session.execute(
        select(IncidentStaff.staff_id, IncidentStaff.involvement, StaffMember.staff_group)
        .join(StaffMember, StaffMember.id == IncidentStaff.staff_id)
        .where(IncidentStaff.incident_id == incident.id)
        .order_by(IncidentStaff.staff_id)
    )
    investigators = session.scalars(
        select(User)
        .join(IncidentAssignment, IncidentAssignment.user_id == User.id)
        .where(
            IncidentAssignment.incident_id == incident.id,
            IncidentAssignment.unassigned_at.is_(None),
            IncidentAssignment.id.in_(sorted(sealed_assignment_ids_on(session, key, [incident.id]))),
        )
        .order_by(User.username)
    )
    links = list(
        session.scalars(
            select(IncidentLink)
            .where(IncidentLink.incident_id == incident.id, IncidentLink.unlinked_at.is_(None), link_holds())
            .order_by(IncidentLink.linked_at, IncidentLink.id)
        )
    )
    exhibits = dict(
        session.execute(
            select(ExhibitReference.item_id, ExhibitReference.reference).where(
                ExhibitReference.incident_id == incident.id
            )
        ).all()
    )
    holds = session.scalars(
        select(LegalHold).where(
            LegalHold.target_kind == "incident",
            LegalHold.target_id == incident.id,
            LegalHold.released_at.is_(None),
        )
    )
    return {
        "id": incident.id,
        "reference": incident.reference,
        "category": incident.category,
        "status": incident.status,
        "outcome": incident.outcome,
        "title": incident.title,
        "description": incident.description,
        "occurred_at": incident.occurred_at,
        "site": incident.site,
        "ward": incident.ward,
        "address": incident.address,
        "wearer": incident.wearer,
        "window_start": incident.window_start,
        "window_end": incident.window_end,
        "opened_by": incident.opened_by,
        "created_at": incident.created_at,
        "updated_at": incident.updated_at,
        "closed_at": incident.closed_at,
        "staff": [{"staff_id": s, "involvement": i, "staff_group": g} for s, i, g in staff],
        "investigators": [
            {"user_id": u.id, "username": u.username, "full_name": name_of(names, u) or ""}
            for u in investigators
        ],
        "links": [
            {
                "id": link.id,
                "kind": link.target_kind,
                "target_id": link.target_id,
                "linked_by": link.linked_by,
                "reason": link.reason,
                "linked_at": link.linked_at,
                "exhibit_reference": exhibits.get(link.target_id) if link.target_kind == "evidence" else None,
            }
            for link in links
        ],
        "legal_holds": [
            {"id": h.id, "reason": h.reason, "placed_by": h.placed_by, "placed_at": h.placed_at}
            for h in holds
        ],
    }
