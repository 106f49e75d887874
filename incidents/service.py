"""Incident records: reference numbers, changes, investigators, the timeline, and the automatic links
between alarms and clips of the same wearer (the links themselves are :mod:`incidents.links`).

Functions that decide "is there already an incident/clip for this?" take the ledger lock
first, so that an alarm and a clip arriving at the same moment on different processes still meet:
whichever commits second sees the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from accounts.models import User
from accounts.seals import user_seal_holds
from chain_of_custody.entries import CustodyAction
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.row_seals import USER_SEALS
from devices.models import StaffMember

from .access import (
    Viewer,
    may_follow_wearer,
    sealed_staff_site,
    visible_evidence_ids,
    window_items,
)
from .custody_links import linked_items
from .grants import assignment_seal_holds, record_assignment_end, seal_assignment, sealed_assignment_ids_on
from .identity import BROKEN_SEAL, incident_sealed, next_reference, record_site, restates_site_and_window
from .links import (  # the links' own names, kept importable from here
    IncidentRefused,
    Retention,
    _apply_retention,
    _event,
    _now,
    link_target,
)
from .links import link_alarm as link_alarm
from .links import link_evidence as link_evidence
from .links import unlink_evidence as unlink_evidence
from .links import unlink_target as unlink_target
from .models import (
    CATEGORIES,
    INVOLVEMENTS,
    STATUSES,
    Incident,
    IncidentAssignment,
    IncidentLink,
    IncidentStaff,
)
from .retention import lock_ledger

log = logging.getLogger(__name__)

AUTO_LINKER = "service:auto-link"


# -- creating and changing incidents -------------------------------------------------------------


@dataclass(frozen=True)
class IncidentDraft:
    category: str
    occurred_at: datetime
    site: str
    title: str = ""
    description: str = ""
    ward: str | None = None
    address: str | None = None
    staff: tuple[tuple[str, str], ...] = ()  # (staff number, involvement)
    wearer: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None


def _check_window(start: datetime | None, end: datetime | None) -> None:
    if (start is None) != (end is None):
        raise IncidentRefused("bad_window", "window_start and window_end go together")
    if start is not None and end is not None and end < start:
        raise IncidentRefused("bad_window", "window_end is before window_start")


def _check_wearer(session: Session, viewer: Viewer | None, wearer: str | None) -> None:
    """A caller names an incident's wearer only if all of that wearer's footage is theirs to see: the
    wearer's clips are linked to the incident by the footage window now and as they arrive, and an
    alarm of that wearer joins the incident (``open_or_join_incident_for_wearer``). ``viewer`` None is
    the service itself (an alarm opening its incident)."""
    if viewer is None or wearer is None or may_follow_wearer(session, viewer, wearer):
        return
    raise IncidentRefused(
        "wearer_out_of_scope",
        "an incident follows a wearer's footage only for a caller who may see all of it "
        "(an administrator, or a security manager of the wearer's site)",
        403,
    )


def _set_staff(session: Session, incident: Incident, staff: Sequence[tuple[str, str]]) -> None:
    seen: set[str] = set()
    rows: list[IncidentStaff] = []
    for staff_id, involvement in staff:
        if involvement not in INVOLVEMENTS:
            raise IncidentRefused("bad_involvement", f"involvement is one of {', '.join(INVOLVEMENTS)}")
        if session.get(StaffMember, staff_id) is None:
            raise IncidentRefused("unknown_staff", f"no member of staff {staff_id}")
        if staff_id not in seen:
            seen.add(staff_id)
            rows.append(IncidentStaff(incident_id=incident.id, staff_id=staff_id, involvement=involvement))
    for old in session.scalars(select(IncidentStaff).where(IncidentStaff.incident_id == incident.id)):
        session.delete(old)
    session.flush()
    session.add_all(rows)


def create_incident(
    session: Session,
    draft: IncidentDraft,
    actor: str,
    *,
    now: datetime | None = None,
    assign_user_id: int | None = None,
    ledger: Ledger,
    viewer: Viewer | None = None,
) -> Incident:
    """Open an incident; ``viewer`` is the caller whose rights bound what it may follow (None: the
    service). ``ledger`` records its site and window and seals the row over them (an incident
    without a seal is read by no site's managers); ``assign_user_id`` assigns an investigator."""
    now = _now(now)
    if draft.category not in CATEGORIES:
        raise IncidentRefused("bad_category", f"category is one of {', '.join(CATEGORIES)}")
    if not draft.site:
        raise IncidentRefused("no_site", "an incident needs a site")
    _check_window(draft.window_start, draft.window_end)
    _check_wearer(session, viewer, draft.wearer)
    number, reference = next_reference(session, now.year)
    incident = Incident(
        reference=reference,
        year=now.year,
        number=number,
        category=draft.category,
        status="open",
        title=draft.title,
        description=draft.description,
        occurred_at=draft.occurred_at,
        site=draft.site,
        ward=draft.ward,
        address=draft.address,
        wearer=draft.wearer,
        window_start=draft.window_start,
        window_end=draft.window_end,
        opened_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(incident)
    session.flush()
    _set_staff(session, incident, draft.staff)
    _event(session, incident, actor, "created", now, reference=reference, category=draft.category)
    record_site(session, ledger, incident, actor, created=True)
    if assign_user_id is not None:
        assign_investigator(session, ledger, incident, assign_user_id, actor, now=now)
    session.flush()
    return incident


EDITABLE = (
    "category",
    "title",
    "description",
    "occurred_at",
    "site",
    "ward",
    "address",
    "status",
    "outcome",
    "wearer",
    "window_start",
    "window_end",
)


def update_incident(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    changes: dict[str, Any],
    actor: str,
    *,
    staff: Sequence[tuple[str, str]] | None = None,
    retention: Retention | None = None,
    now: datetime | None = None,
    viewer: Viewer | None = None,
) -> Incident:
    """Apply field changes; closing needs an outcome; closing or reopening re-applies evidence retention.

    A change of the footage window (wearer, start or end) is the caller's to make only if they may
    see all of the wearer's footage, and links only what they may see (``viewer`` None: the service).
    A row whose seal does not hold is refused (409) unless an administrator restates its site and
    window (``identity.restates_site_and_window``): any other change would seal what SQL wrote."""
    now = _now(now)
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise IncidentRefused("not_editable", f"cannot change {', '.join(sorted(unknown))}")
    if "category" in changes and changes["category"] not in CATEGORIES:
        raise IncidentRefused("bad_category", f"category is one of {', '.join(CATEGORIES)}")
    if "status" in changes and changes["status"] not in STATUSES:
        raise IncidentRefused("bad_status", f"status is one of {', '.join(STATUSES)}")
    if "site" in changes and not changes["site"]:
        raise IncidentRefused("no_site", "an incident needs a site")
    lock_ledger(session)
    session.flush()
    session.refresh(incident)  # re-read under the lock: another writer may have changed it meanwhile
    resealed = not incident_sealed(session, incident, ledger.key)
    if resealed and not restates_site_and_window(viewer.role if viewer else None, changes):
        raise IncidentRefused("incident_seal_broken", BROKEN_SEAL, 409)
    new_status = changes.get("status", incident.status)
    outcome = changes.get("outcome", incident.outcome)
    if new_status == "closed" and not (outcome or "").strip():
        raise IncidentRefused("outcome_required", "closing an incident needs its outcome")
    _check_window(
        changes.get("window_start", incident.window_start), changes.get("window_end", incident.window_end)
    )
    if {"wearer", "window_start", "window_end"} & changes.keys():
        _check_wearer(session, viewer, changes.get("wearer", incident.wearer))
    changed: dict[str, Any] = {}
    for name, value in changes.items():
        old = getattr(incident, name)
        if old != value:
            setattr(incident, name, value)
            changed[name] = value if name not in ("description",) else "(changed)"
    if staff is not None:
        _set_staff(session, incident, staff)
        changed["staff"] = [s for s, _ in staff]
    status_changed = "status" in changed
    if status_changed:
        incident.closed_at = now if new_status == "closed" else None
    changed.update({"resealed": True} if resealed else {})
    if not changed:
        return incident
    incident.updated_at = now
    _event(session, incident, actor, "status_changed" if status_changed else "updated", now, changes=changed)
    if {"site", "wearer", "window_start", "window_end", "resealed"} & changed.keys():
        record_site(session, ledger, incident, actor, resealed=resealed)
    session.flush()
    if status_changed and retention is not None:
        cause = f"{incident.reference} {'closed' if new_status == 'closed' else 'reopened as ' + new_status}"
        for item_id in linked_items(session, incident.id):  # a link row deleted by SQL as well
            _apply_retention(session, ledger, retention, item_id, now, actor, cause)
    if {"wearer", "window_start", "window_end", "resealed"} & changed.keys():
        link_overlapping_clips(session, ledger, incident, actor, retention=retention, now=now, viewer=viewer)
    return incident


def assign_investigator(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    user_id: int,
    actor: str,
    *,
    now: datetime | None = None,
) -> IncidentAssignment:
    """Assign an investigator (idempotent). An assignment lets them see the incident and everything
    linked to it, so it is a custody entry too (``user_changed``, naming the incident and the row):
    ``evidence verify`` names an assignment row the ledger does not hold."""
    now = _now(now)
    user = session.get(User, user_id)
    if user is None or not user.active or not user_seal_holds(ledger.key.derived_secret(USER_SEALS), user):
        raise IncidentRefused("unknown_user", f"no active user {user_id}", 404)
    if user.role != "investigator":
        raise IncidentRefused("not_investigator", f"{user.username} is not an investigator")
    existing = session.scalar(
        select(IncidentAssignment).where(
            IncidentAssignment.incident_id == incident.id,
            IncidentAssignment.user_id == user_id,
            IncidentAssignment.unassigned_at.is_(None),
        )
    )
    if existing is not None and existing.id in sealed_assignment_ids_on(session, ledger.key, [incident.id]):
        return existing
    if existing is not None:  # written or put back outside the service: it granted nothing; ends for this one
        existing.unassigned_at, existing.unassigned_by = now, actor
        session.flush()
    row = IncidentAssignment(incident_id=incident.id, user_id=user_id, assigned_by=actor, assigned_at=now)
    session.add(row)
    _event(session, incident, actor, "assigned", now, investigator=user.username)
    session.flush()
    seal_assignment(row, ledger.key)
    _record_assignment(session, ledger, incident, user.username, row, actor, True)
    return row


def _record_assignment(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    username: str,
    row: IncidentAssignment,
    actor: str,
    assigned: bool,
) -> None:
    ledger.append(
        session,
        CustodyAction.USER_CHANGED,
        actor,
        details={
            "user": username,
            "incident": incident.reference,
            "incident_id": incident.id,
            "assignment": row.id,
            "assigned": assigned,
        },
    )


def unassign_investigator(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    user_id: int,
    actor: str,
    *,
    now: datetime | None = None,
) -> None:
    """Take an investigator off an incident (an ``unassigned`` event and custody entry). A row whose
    seal does not hold was written in the database and assigned nobody: refused (409), not recorded."""
    now = _now(now)
    row = session.scalar(
        select(IncidentAssignment).where(
            IncidentAssignment.incident_id == incident.id,
            IncidentAssignment.user_id == user_id,
            IncidentAssignment.unassigned_at.is_(None),
        )
    )
    if row is None:
        raise IncidentRefused("not_assigned", "that investigator is not assigned", 404)
    if not assignment_seal_holds(ledger.key, row):
        why = "the assignment row was written in the database (its seal does not hold) and grants nothing"
        raise IncidentRefused(
            "assignment_seal_broken", f"that investigator was never assigned by the service: {why}", 409
        )
    row.unassigned_at, row.unassigned_by = now, actor
    seal_assignment(row, ledger.key)
    record_assignment_end(session, ledger, row, actor)
    user = session.get(User, user_id)
    _event(session, incident, actor, "unassigned", now, investigator=user.username if user else user_id)
    session.flush()
    _record_assignment(session, ledger, incident, user.username if user else str(user_id), row, actor, False)


# -- automatic links between alarms and clips of the same wearer ---------------------------------


def link_overlapping_clips(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    actor: str,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
    viewer: Viewer | None = None,
) -> list[IncidentLink]:
    """Link every stored clip of the incident's wearer recorded during its window (the alarm side calls this).

    With ``viewer`` (a person's create or change) only the clips that person may already see are
    linked: a footage window never reaches beyond its caller's scope. Whoever set it, a window
    never reaches footage of another site than the incident's (``access.window_reach``), nor a broken seal's."""
    if incident.wearer is None or incident.window_start is None or incident.window_end is None:
        return []
    lock_ledger(session)
    if not incident_sealed(session, incident, ledger.key):
        return []
    clips = session.scalars(
        select(EvidenceItem.id)
        .where(
            EvidenceItem.kind == "clip",
            EvidenceItem.wearer == incident.wearer,
            EvidenceItem.status != "deleted",
            EvidenceItem.captured_start.is_not(None),
            EvidenceItem.captured_start <= incident.window_end,
            or_(
                EvidenceItem.captured_stop >= incident.window_start,
                EvidenceItem.captured_stop.is_(None) & (EvidenceItem.captured_start >= incident.window_start),
            ),
        )
        .order_by(EvidenceItem.captured_start)
    )
    reason = f"recorded by {incident.wearer} during the alarm window of {incident.reference}"
    found = window_items(session, ledger.key, incident.site, clips)
    if viewer is not None:
        allowed = visible_evidence_ids(session, viewer, found)
        found = [i for i in found if i in allowed]
    out: list[IncidentLink] = []
    for item_id in found:
        link, new = link_target(
            session,
            ledger,
            incident.id,
            "evidence",
            item_id,
            actor,
            reason,
            retention=retention,
            now=now,
            viewer=viewer,
        )
        if new:
            out.append(link)
    return out


def auto_link_clip(
    session: Session,
    ledger: Ledger,
    item: EvidenceItem,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
) -> list[IncidentLink]:
    """Link a newly stored clip to every incident of its wearer whose window overlaps its recording
    and reaches it (``access.window_reach``: not once the wearer works at another site), if its seal holds."""
    if item.kind != "clip" or item.wearer is None or item.captured_start is None:
        return []
    lock_ledger(session)
    stop = item.captured_stop or item.captured_start
    windows = select(Incident).where(
        Incident.wearer == item.wearer,
        Incident.window_start <= stop,
        Incident.window_end >= item.captured_start,
    )
    incidents = [i for i in session.scalars(windows) if incident_sealed(session, i, ledger.key)]
    out: list[IncidentLink] = []
    for incident in incidents:
        if not window_items(session, ledger.key, incident.site, [item.id]):
            continue  # the wearer is at another site now: their footage there is not this incident's
        reason = f"recorded by {item.wearer} during the alarm window of {incident.reference}"
        link, new = link_target(
            session,
            ledger,
            incident.id,
            "evidence",
            item.id,
            AUTO_LINKER,
            reason,
            retention=retention,
            now=now,
        )
        if new:
            out.append(link)
    return out


def make_clip_hook(ledger: Ledger, retention: Retention | None) -> Callable[[Session, EvidenceItem], None]:
    """The clip hook the application installs (``ingest.services.clip_hooks``): runs inside the transaction that records the clip."""

    def hook(session: Session, item: EvidenceItem) -> None:
        auto_link_clip(session, ledger, item, retention=retention)

    return hook


def open_or_join_incident_for_wearer(
    session: Session,
    ledger: Ledger,
    wearer: str,
    at: datetime,
    category: str,
    site: str | None,
    actor: str,
    join_window: timedelta,
    *,
    before: timedelta | None = None,
    after: timedelta | None = None,
    retention: Retention | None = None,
    now: datetime | None = None,
    join: bool = True,
) -> tuple[Incident, bool]:
    """Join the wearer's open incident of the same site that occurred within ``join_window`` of
    ``at``, or open a new one.

    The site is ``site``, else the wearer's while their row's seal holds, else none ("unknown"): the
    incident opened is of that site, and only an incident of that site whose seal holds is joined,
    so an alarm never joins another site's incident (its readers would see the alarm and its
    evidence, and the alarm's readers the incident). ``join`` False joins none (an alarm of no site
    of its own: ``alarms.incident_links``). The incident's footage window becomes ``[at - before,
    at + after]`` (both default to ``join_window``), widened on each join; clips of the wearer
    already stored in the window are linked at once, and clips arriving later are linked by the clip
    hook. Returns the incident and whether it was opened now.
    """
    now = _now(now)
    before = join_window if before is None else before
    after = join_window if after is None else after
    lock_ledger(session)
    member = session.get(StaffMember, wearer)
    home = site or sealed_staff_site(ledger.key, member) or "unknown"
    candidates = (
        session.scalars(
            select(Incident)
            .where(
                Incident.wearer == wearer,
                Incident.site == home,
                Incident.status != "closed",
                Incident.occurred_at >= at - join_window,
                Incident.occurred_at <= at + join_window,
            )
            .order_by(Incident.occurred_at.desc())
        )
        if join
        else ()
    )
    incident = next((i for i in candidates if incident_sealed(session, i, ledger.key)), None)
    opened = incident is None
    if incident is None:
        incident = create_incident(
            session,
            IncidentDraft(
                category=category,
                occurred_at=at,
                site=home,
                title=f"{category.replace('_', ' ').capitalize()}: {wearer}",
                staff=((wearer, "wearer"),) if member else (),
                wearer=wearer,
                window_start=at - before,
                window_end=at + after,
            ),
            actor,
            now=now,
            ledger=ledger,
        )
    else:
        window = (incident.window_start, incident.window_end)
        incident.window_start = min(incident.window_start or at - before, at - before)
        incident.window_end = max(incident.window_end or at + after, at + after)
        incident.updated_at = now
        _event(session, incident, actor, "joined", now, at=at.isoformat(), category=category)
        if (incident.window_start, incident.window_end) != window:
            record_site(session, ledger, incident, actor)
        session.flush()
    link_overlapping_clips(session, ledger, incident, actor, retention=retention, now=now)
    return incident, opened
