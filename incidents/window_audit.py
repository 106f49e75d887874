"""An audit of incidents' footage windows against today's access rule.

A footage window (``wearer`` with ``window_start``/``window_end``) links the wearer's clips as they
arrive, with nobody asking again. Windows set before the rule existed (``access.may_follow_wearer``:
only an administrator, or a security manager of the wearer's site, may set one) still do that for
whoever set them, and windows whose wearer has since moved to another site point at another site's
footage (``access.window_reach``, applied as clips arrive). This finds the first kind, and the
links such a window made to items its setter does not see by any other way; with ``apply`` it
withdraws each such window and those links, each step on the custody ledger and the incident's own
history, so that nothing is taken back silently.

Who set a window is read from the incident's history: the last person or service whose change
named the wearer or the window, else whoever opened the incident.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.service import Principal, principal_of
from chain_of_custody.entries import CustodyAction
from chain_of_custody.incident_seals import incident_subject
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.reach_seals import reach_secret

from .access import incident_scope, link_on_custody, may_follow_wearer, of_reach
from .identity import incident_sealed, record_site, record_window_withdrawn
from .links import Retention, _event, unlink_target
from .models import Incident, IncidentEvent, IncidentLink

AUDITOR_ACTOR = "service:window-audit"
WINDOW_FIELDS = ("wearer", "window_start", "window_end")


@dataclass
class WindowFinding:
    """One window that the rule would not let stand, and the links it made beyond its reach."""

    incident_id: str
    reference: str
    site: str
    wearer: str
    set_by: str
    why: list[str]
    beyond: list[str] = field(default_factory=list)  # evidence ids linked by the window, out of reach

    def as_dict(self) -> dict[str, Any]:
        return {
            "incident": self.reference,
            "site": self.site,
            "wearer": self.wearer,
            "set_by": self.set_by,
            "why": self.why,
            "links_beyond_reach": self.beyond,
        }


def window_setter(session: Session, incident: Incident, key: ServiceKey) -> str:
    """Who named the incident's wearer and window as they stand: the actor of the first of the
    latest run of its ``incident_changed`` entries (on its subject's chain) that record this window.
    Custody, not its history's rows: an event planted by SQL naming an administrator would otherwise
    pass the window as theirs and hide it from this audit. An incident the ledger has no entry of
    (made before it recorded them) falls back to its history."""
    subject = incident_subject(reach_secret(key), incident.id)
    entries = session.execute(
        select(CustodyEntry.actor, CustodyEntry.details)
        .where(CustodyEntry.item_id == subject, CustodyEntry.action == CustodyAction.INCIDENT_CHANGED)
        .order_by(CustodyEntry.item_seq.desc())
    )
    setter: str | None = None
    standing: Any = None
    for actor, details in entries:
        window = json.loads(details or "{}").get("window")
        if setter is not None and window != standing:
            break
        setter, standing = actor, window
    return setter if setter is not None else _history_setter(session, incident)


def _history_setter(session: Session, incident: Incident) -> str:
    """Who last named the incident's wearer or window by its history (the actor of its last such change)."""
    events = session.scalars(
        select(IncidentEvent)
        .where(
            IncidentEvent.incident_id == incident.id, IncidentEvent.kind.in_(("updated", "status_changed"))
        )
        .order_by(IncidentEvent.at.desc(), IncidentEvent.id.desc())
    )
    for event in events:
        changes = json.loads(event.details or "{}").get("changes", {})
        if set(WINDOW_FIELDS) & set(changes):
            return event.actor
    return incident.opened_by


def _window_links(session: Session, incident: Incident) -> list[str]:
    """The incident's live links that its window made (their reason says so)."""
    prefix = f"recorded by {incident.wearer} during the alarm window of {incident.reference}"
    return list(
        session.scalars(
            select(IncidentLink.target_id).where(
                IncidentLink.incident_id == incident.id,
                IncidentLink.target_kind == "evidence",
                IncidentLink.unlinked_at.is_(None),
                IncidentLink.reason == prefix,
            )
        )
    )


def _seen_elsewhere(
    session: Session, person: Principal | None, incident: Incident, items: list[str]
) -> set[str]:
    """Which of ``items`` the person sees without this incident: linked to another incident of
    theirs, or of their site by the wearer-and-camera rule (what withdrawing these links leaves)."""
    if person is None or not items:
        return set()
    if person.role in ("admin", "auditor"):
        return set(items)
    other = select(IncidentLink.target_id).where(
        IncidentLink.target_kind == "evidence",
        IncidentLink.unlinked_at.is_(None),
        IncidentLink.incident_id != incident.id,
        IncidentLink.incident_id.in_(select(Incident.id).where(incident_scope(person))),
        link_on_custody(),  # a link planted by SQL is no other way in: the window's links stay named
    )
    q = select(EvidenceItem.id).where(EvidenceItem.id.in_(items), EvidenceItem.id.in_(other))
    seen = set(session.scalars(q))
    if person.role == "security_manager" and person.site:
        of_site = of_reach(EvidenceItem, person.reach)
        rows = list(session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(items), of_site)))
        seen |= {i.id for i in rows if person.reach.holds(i)}
    return seen


def audit_windows(session: Session, key: ServiceKey) -> list[WindowFinding]:
    """Every standing window whose setter today's rule would refuse (``access.may_follow_wearer``:
    someone who may not see all of the wearer's footage, or who no longer signs in), with the links
    it made to items that setter does not see by any other way."""
    findings: list[WindowFinding] = []
    incidents = session.scalars(
        select(Incident)
        .where(Incident.wearer.is_not(None), Incident.window_start.is_not(None))
        .order_by(Incident.created_at, Incident.id)
    )
    for incident in incidents:
        wearer = incident.wearer or ""
        setter = window_setter(session, incident, key)
        if not setter.startswith("user:"):
            continue  # the service's own windows (an alarm's): bounded by ``access.window_reach``
        person = principal_of(session, setter, key)  # None: a service, someone gone, a row altered
        if person is None:
            why = f"set by {setter}, who no longer signs in"
        elif not may_follow_wearer(session, person, wearer):
            why = f"set by {setter} ({person.role}), who may not see all of {wearer}'s footage"
        else:
            continue
        linked = _window_links(session, incident)
        seen = _seen_elsewhere(session, person, incident, linked)
        beyond = [i for i in linked if i not in seen]
        findings.append(
            WindowFinding(incident.id, incident.reference, incident.site, wearer, setter, [why], beyond)
        )
    return findings


def withdraw(
    session: Session,
    ledger: Ledger,
    finding: WindowFinding,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
) -> None:
    """Withdraw one window and the links it made beyond its reach: the window's end recorded on the
    custody ledger (an ``incident_changed`` entry that says the window is gone, so a replay of
    custody agrees with the row, and the row sealed again if its seal held; an ``unlinked`` entry
    for the incident) and in its history, each link's end on its item's custody, as any unlink is."""
    now = now or datetime.now(UTC)
    incident = session.get(Incident, finding.incident_id, with_for_update=True)
    if incident is None:
        return
    reason = f"window audit: {'; '.join(finding.why)}"
    for item_id in finding.beyond:
        unlink_target(
            session,
            ledger,
            incident.id,
            "evidence",
            item_id,
            AUDITOR_ACTOR,
            reason,
            retention=retention,
            now=now,
        )
    window = {
        "wearer": incident.wearer,
        "window_start": incident.window_start.isoformat() if incident.window_start else None,
        "window_end": incident.window_end.isoformat() if incident.window_end else None,
    }
    sealed = incident_sealed(session, incident, ledger.key)
    incident.wearer = incident.window_start = incident.window_end = None
    incident.updated_at = now
    if sealed:  # the withdrawn window is the service's write, on custody and under the seal
        record_site(session, ledger, incident, AUDITOR_ACTOR)
    else:  # on custody too, but a broken seal is not mended by it (nor the row's site recorded)
        record_window_withdrawn(session, ledger, incident, AUDITOR_ACTOR)
    _event(
        session, incident, AUDITOR_ACTOR, "updated", now, changes=dict.fromkeys(WINDOW_FIELDS), reason=reason
    )
    ledger.append(
        session,
        CustodyAction.UNLINKED,
        AUDITOR_ACTOR,
        details={
            "incident": incident.reference,
            "incident_id": incident.id,
            "window_withdrawn": window,
            "set_by": finding.set_by,
            "reason": reason,
            "links_withdrawn": finding.beyond,
        },
    )
    session.flush()
