"""Links between an incident and its evidence or alarms, and what every change of an incident shares
with them: the refusal it raises, the event on its timeline, an item's retention brought up to date.

Every link or unlink of an evidence item is a custody entry (``linked``/``unlinked``) on that item, in
the same transaction, and brings the item's retention class and object lock up to date when a store
is given (``Retention``); the ledger lock is taken first, as every change of an incident takes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from storage.errors import Refused
from storage.objects import ObjectStore, StorageError

from . import exhibits
from .access import (
    Viewer,
    may_link_alarm,
    sees_alarm,
    visible_evidence_ids,
)
from .models import (
    LINK_KINDS,
    Incident,
    IncidentEvent,
    IncidentLink,
)
from .retention import RetentionRules, apply_to_family, lock_ledger

log = logging.getLogger(__name__)


class IncidentRefused(Refused):
    """A refusal with a machine reason and the HTTP status it maps to."""

    structured = True


@dataclass(frozen=True)
class Retention:
    """What linking needs to bring object locks up to date at once (else the sweeper does it later)."""

    store: ObjectStore
    rules: RetentionRules


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _apply_retention(
    session: Session,
    ledger: Ledger,
    retention: Retention | None,
    item_id: str,
    now: datetime,
    actor: str,
    cause: str,
) -> None:
    """Bring the item's object lock up to date now; if storage is unreachable the sweeper does it later.

    A link must never fail (or make a clip's intake fail) because storage hiccuped: the link itself
    already protects the item from the sweeper, and the storage lock is only ever extended.
    """
    if retention is None:
        return
    try:
        apply_to_family(session, ledger, retention.store, item_id, retention.rules, now, actor, cause)
    except StorageError as exc:
        log.warning("object lock update deferred to the sweeper", extra={"item": item_id, "error": str(exc)})


def _event(
    session: Session, incident: Incident, actor: str, what: str, when: datetime, /, **details: Any
) -> None:
    session.add(
        IncidentEvent(
            incident_id=incident.id, at=when, actor=actor, kind=what, details=json.dumps(details, default=str)
        )
    )


def _active_link(session: Session, incident_id: str, kind: str, target_id: str) -> IncidentLink | None:
    return session.scalar(
        select(IncidentLink).where(
            IncidentLink.incident_id == incident_id,
            IncidentLink.target_kind == kind,
            IncidentLink.target_id == target_id,
            IncidentLink.unlinked_at.is_(None),
        )
    )


def link_target(
    session: Session,
    ledger: Ledger,
    incident_id: str,
    kind: str,
    target_id: str,
    actor: str,
    reason: str,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
    viewer: Viewer | None = None,
) -> tuple[IncidentLink, bool]:
    """Link an evidence item or an alarm; returns the link and whether it is new (linking twice is harmless).

    A link makes the item visible to the incident's readers and extends its retention, so ``viewer``
    (the caller; None for the service's own links) must already see the item: an item outside their
    scope answers 404 like a missing one, and an alarm needs a role that reads alarms and the alarm's
    site among the caller's (another site's alarm, or an id that is no alarm, answers 404)."""
    now = _now(now)
    if kind not in LINK_KINDS:
        raise IncidentRefused("bad_kind", f"link kind is one of {', '.join(LINK_KINDS)}")
    if not reason.strip():
        raise IncidentRefused("reason_required", "a link needs a reason")
    if viewer is not None and kind == "alarm" and not may_link_alarm(viewer):
        raise IncidentRefused("alarm_out_of_scope", f"role {viewer.role} may not link alarms", 403)
    lock_ledger(session)
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise IncidentRefused("unknown_incident", "no such incident", 404)
    if viewer is not None and kind == "alarm" and not sees_alarm(session, viewer, target_id):
        raise IncidentRefused("unknown_alarm", "no such alarm", 404)
    item: EvidenceItem | None = None
    if kind == "evidence":
        item = session.get(EvidenceItem, target_id, with_for_update=True)
        if item is None or (viewer is not None and not visible_evidence_ids(session, viewer, [target_id])):
            raise IncidentRefused("unknown_evidence", "no such evidence item", 404)
        if item.status == "deleted":
            raise IncidentRefused("deleted", "evidence item was deleted under its retention class", 409)
    existing = _active_link(session, incident_id, kind, target_id)
    if existing is not None:
        return existing, False
    link = IncidentLink(
        incident_id=incident_id,
        target_kind=kind,
        target_id=target_id,
        linked_by=actor,
        reason=reason,
        linked_at=now,
    )
    session.add(link)
    session.flush()
    _event(session, incident, actor, "linked", now, kind=kind, target=target_id, reason=reason)
    if item is not None:
        exhibit = exhibits.assign(session, ledger, incident, item, actor, record=False)
        ledger.append(
            session,
            CustodyAction.LINKED,
            actor,
            item_id=item.id,
            details={
                "incident": incident.reference,
                "incident_id": incident.id,
                "link": link.id,
                "reason": reason,
                **exhibits.details(exhibit),
            },
        )
        _apply_retention(session, ledger, retention, item.id, now, actor, f"linked to {incident.reference}")
    else:  # an alarm is no evidence item: its link is an entry of the ledger's own, naming it
        ledger.append(
            session,
            CustodyAction.LINKED,
            actor,
            details={
                "incident": incident.reference,
                "incident_id": incident.id,
                "alarm": target_id,
                "link": link.id,
                "reason": reason,
            },
        )
    return link, True


def unlink_target(
    session: Session,
    ledger: Ledger,
    incident_id: str,
    kind: str,
    target_id: str,
    actor: str,
    reason: str,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
) -> IncidentLink:
    now = _now(now)
    if not reason.strip():
        raise IncidentRefused("reason_required", "an unlink needs a reason")
    lock_ledger(session)
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise IncidentRefused("unknown_incident", "no such incident", 404)
    link = _active_link(session, incident_id, kind, target_id)
    if link is None:
        raise IncidentRefused("not_linked", "that is not linked to this incident", 404)
    link.unlinked_at, link.unlinked_by, link.unlink_reason = now, actor, reason
    _event(session, incident, actor, "unlinked", now, kind=kind, target=target_id, reason=reason)
    session.flush()
    if kind == "evidence":
        item = session.get(EvidenceItem, target_id, with_for_update=True)
        if item is not None:
            ledger.append(
                session,
                CustodyAction.UNLINKED,
                actor,
                item_id=item.id,
                details={
                    "incident": incident.reference,
                    "incident_id": incident.id,
                    "link": link.id,
                    "reason": reason,
                },
            )
            if item.status != "deleted":
                _apply_retention(
                    session, ledger, retention, item.id, now, actor, f"unlinked from {incident.reference}"
                )
    else:
        ledger.append(
            session,
            CustodyAction.UNLINKED,
            actor,
            details={
                "incident": incident.reference,
                "incident_id": incident.id,
                "alarm": target_id,
                "link": link.id,
                "reason": reason,
            },
        )
    return link


def link_evidence(
    session: Session,
    ledger: Ledger,
    incident_id: str,
    item_id: str,
    actor: str,
    reason: str,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
) -> IncidentLink:
    """Link an evidence item to an incident (idempotent), with a ``linked`` custody entry on the item."""
    return link_target(
        session, ledger, incident_id, "evidence", item_id, actor, reason, retention=retention, now=now
    )[0]


def unlink_evidence(
    session: Session,
    ledger: Ledger,
    incident_id: str,
    item_id: str,
    actor: str,
    reason: str,
    *,
    retention: Retention | None = None,
    now: datetime | None = None,
) -> IncidentLink:
    return unlink_target(
        session, ledger, incident_id, "evidence", item_id, actor, reason, retention=retention, now=now
    )


def link_alarm(
    session: Session,
    ledger: Ledger,
    incident_id: str,
    alarm_id: str,
    actor: str,
    reason: str,
    *,
    now: datetime | None = None,
) -> IncidentLink:
    """Link an alarm (by its id) to an incident (idempotent); alarms keep their own custody."""
    return link_target(session, ledger, incident_id, "alarm", alarm_id, actor, reason, now=now)[0]
