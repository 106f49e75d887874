"""The reads behind the investigator's and the auditor's pages, each through the API's own rule.

Incidents come from ``incidents.queries`` (the functions ``GET /api/v1/incidents`` calls) within
``incidents.access.incident_scope``; evidence within ``evidence_scope``; alarms within the control
room's ``accounts.access.site_scope`` and only for roles that may link them (``may_link_alarm``);
retention from ``incidents.retention.describe``. Nothing here decides who sees what.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import and_, or_, select, true
from sqlalchemy.orm import Session

from accounts.access import site_scope
from accounts.models import User
from accounts.seals import name_of
from alarms.models import AlarmRecord
from alarms.pages import first_kept, in_pages
from alarms.reach import alarm_sealed, by_site, readable
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import EvidenceItem
from chain_of_custody.row_seals import USER_SEALS
from devices.models import StaffMember
from incidents.access import (
    Viewer,
    evidence_scope,
    incident_scope,
    may_link_alarm,
    reach_checked,
    readable_retention,
    reads_whole_trails,
)
from incidents.grants import sealed_assignment_ids_on
from incidents.models import Incident, IncidentAssignment, IncidentLink, LegalHold
from incidents.retention import RetentionRules, describe

CANDIDATES = 300  # items and alarms offered for linking (newest first)


def investigators(
    session: Session, viewer: Viewer, key: ServiceKey, *, everyone: bool
) -> list[dict[str, Any]]:
    """Investigators by name: every active one (for those who assign), else the ones on incidents
    the viewer sees (to filter by), by assignments whose seal holds only (a planted row names nobody),
    and by a user row whose seal holds only (``accounts.seals.name_of``, as a continuity report
    prints a name: a name, role or active flag written by SQL names nobody)."""
    q = select(User).where(User.role == "investigator", User.active)
    if not everyone:
        seen = select(Incident.id).where(incident_scope(viewer))
        q = q.where(
            User.id.in_(
                select(IncidentAssignment.user_id).where(
                    IncidentAssignment.unassigned_at.is_(None),
                    IncidentAssignment.incident_id.in_(seen),
                    IncidentAssignment.id.in_(sorted(sealed_assignment_ids_on(session, key, seen))),
                )
            )
        )
    secret = key.derived_secret(USER_SEALS)
    named = ((u, name_of(secret, u)) for u in session.scalars(q.order_by(User.full_name, User.username)))
    return [
        {"id": u.id, "username": u.username, "name": name or u.username}
        for u, name in named
        if name is not None
    ]


def sites(session: Session, viewer: Viewer) -> list[str]:
    return list(
        session.scalars(
            select(Incident.site).where(incident_scope(viewer)).distinct().order_by(Incident.site)
        )
    )


def staff_names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = session.execute(select(StaffMember.id, StaffMember.name).where(StaffMember.id.in_(ids)))
    return {staff_id: name for staff_id, name in rows}


def linked_items(session: Session, viewer: Viewer, links: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The linked evidence items' facts, for those the viewer sees (all of them, through the link)."""
    ids = [link["target_id"] for link in links if link["kind"] == "evidence"]
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        rows = session.scalars(
            select(EvidenceItem).where(EvidenceItem.id.in_(ids[start : start + 500]), evidence_scope(viewer))
        )
        for item in reach_checked(session, viewer, list(rows)):
            out[item.id] = _item_facts(item)
    return out


def _item_facts(item: EvidenceItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "status": item.status,
        "wearer": item.wearer,
        "device": item.source_device_id,
        "captured_start": item.captured_start,
        "captured_stop": item.captured_stop,
        "filename": item.filename,
        "size": item.size,
        "sha256": item.sha256,
        "legal_hold": item.legal_hold,
    }


def evidence_candidates(session: Session, viewer: Viewer, incident_id: str) -> list[dict[str, Any]]:
    """Items the viewer may see (``GET /api/v1/evidence``'s rule) and may therefore link, not linked yet."""
    linked = select(IncidentLink.target_id).where(
        IncidentLink.incident_id == incident_id,
        IncidentLink.target_kind == "evidence",
        IncidentLink.unlinked_at.is_(None),
    )
    rows = session.scalars(
        select(EvidenceItem)
        .where(
            evidence_scope(viewer),
            EvidenceItem.status != "deleted",
            EvidenceItem.derived_from_id.is_(None),
            EvidenceItem.id.not_in(linked),
        )
        .order_by(EvidenceItem.created_at.desc())
        .limit(CANDIDATES)
    )
    return [_item_facts(i) for i in reach_checked(session, viewer, list(rows))]


def alarm_candidates(
    session: Session, viewer: Viewer, incident_id: str, secret: bytes
) -> list[dict[str, Any]]:
    """Alarms of the viewer's sites (``GET /api/v1/alarms``'s rule, seals checked), for a role that
    may link them, newest first: for a reader by site each row's seal is checked before it counts,
    so rows written in the database, newer (they say) than the site's own, do not fill the places
    and leave the site's alarms off the list."""
    if not may_link_alarm(viewer):
        return []
    linked = select(IncidentLink.target_id).where(
        IncidentLink.incident_id == incident_id,
        IncidentLink.target_kind == "alarm",
        IncidentLink.unlinked_at.is_(None),
    )
    q = select(AlarmRecord).where(site_scope(viewer, AlarmRecord.site), AlarmRecord.id.not_in(linked))
    if by_site(viewer):  # each row's seal checked before it counts (``alarms.pages``)
        newest = in_pages(session, q, AlarmRecord.raised_at, AlarmRecord.id, entities=True, newest_first=True)
        rows = first_kept(newest, partial(alarm_sealed, secret), CANDIDATES)
    else:
        rows = list(
            session.scalars(q.order_by(AlarmRecord.raised_at.desc(), AlarmRecord.id.desc()).limit(CANDIDATES))
        )
    return [
        {
            "id": a.id,
            "kind": a.kind,
            "status": a.status,
            "wearer": a.wearer,
            "site": a.site,
            "raised_at": a.raised_at,
        }
        for a in rows
    ]


def linked_alarms(
    session: Session, viewer: Viewer, links: list[dict[str, Any]], secret: bytes
) -> dict[str, dict[str, Any]]:
    """Facts of the linked alarms; the incident's readers see them through the link (``links`` as
    ``incident_view`` gives them: those the custody record holds), a reader by site only of a row
    whose seal holds (``alarms.reach.readable``: a wearer written by SQL is not shown as the alarm's)."""
    ids = [link["target_id"] for link in links if link["kind"] == "alarm"]
    if not ids:
        return {}
    rows = session.scalars(select(AlarmRecord).where(AlarmRecord.id.in_(ids)))
    return {
        a.id: {"kind": a.kind, "status": a.status, "wearer": a.wearer, "raised_at": a.raised_at}
        for a in readable(secret, viewer, rows)
    }


# --------------------------------------------------------------------------- retention and holds


def holds(session: Session, viewer: Viewer) -> list[dict[str, Any]]:
    """Legal holds in force on what the viewer sees: holds on evidence items within their evidence
    scope, and holds on incidents within their incident scope (every incident's for those who read
    custody trails whole, where each such hold is written with its reason), and why."""
    evidence_holds = session.execute(
        select(LegalHold, EvidenceItem)
        .join(EvidenceItem, and_(LegalHold.target_kind == "evidence", EvidenceItem.id == LegalHold.target_id))
        .where(LegalHold.released_at.is_(None), evidence_scope(viewer))
        .order_by(LegalHold.placed_at.desc())
    ).all()
    incident_holds = session.execute(
        select(LegalHold, Incident)
        .join(Incident, and_(LegalHold.target_kind == "incident", Incident.id == LegalHold.target_id))
        .where(
            LegalHold.released_at.is_(None), true() if reads_whole_trails(viewer) else incident_scope(viewer)
        )
        .order_by(LegalHold.placed_at.desc())
    ).all()
    out: list[dict[str, Any]] = []
    reached = {i.id for i in reach_checked(session, viewer, [item for _, item in evidence_holds])}
    for hold, item in evidence_holds:
        if item.id in reached:
            out.append(_hold(hold, "evidence item", item.id, None))
    for hold, incident in incident_holds:
        out.append(_hold(hold, "incident", incident.reference, incident.id))
    out.sort(key=lambda h: h["placed_at"], reverse=True)
    return out


def _hold(hold: LegalHold, what: str, name: str, incident_id: str | None) -> dict[str, Any]:
    return {
        "id": hold.id,
        "what": what,
        "name": name,
        "incident_id": incident_id,
        "reason": hold.reason,
        "placed_by": hold.placed_by,
        "placed_at": hold.placed_at,
    }


def expiring(
    session: Session, viewer: Viewer, rules: RetentionRules, limit: int = 100, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The evidence the viewer sees with its retention (``GET /api/v1/evidence/{id}/retention``),
    soonest to expire first; held and open-incident items (kept indefinitely) last."""
    now = now or datetime.now(UTC)
    items = list(
        session.scalars(
            select(EvidenceItem)
            .where(evidence_scope(viewer), EvidenceItem.status != "deleted")
            .order_by(
                or_(EvidenceItem.legal_hold, EvidenceItem.retain_until.is_(None)), EvidenceItem.retain_until
            )
            .limit(limit)
        )
    )
    out = []
    for item in reach_checked(session, viewer, items):
        d = readable_retention(session, viewer, describe(session, item, rules, now))
        d["kind"] = item.kind
        d["wearer"] = item.wearer
        d["captured_start"] = item.captured_start
        out.append(d)
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda d: d["keep_until"] or far)
    return out
