"""Whose authority a package is built and handed out on, and whether it still holds.

A package is fixed for one person's access when they ask for it (the items they may see, the
originals their role may release): what it holds is theirs to hand out, and nobody else's. The
build runs later, on a builder that may be on another host, and a link hands it out later still,
so both ask again, by the same rules (``incidents.access``, ``accounts.held_reach``), whether the
person still stands and may still see everything the package holds:

- :func:`holding_refusal`: whether a person may hand out everything a package holds (every item
  it holds, not only its incident; its originals; a redacted copy that leaves someone visible);
- :func:`standing_refusal`: the same for the person an actor string names, as they are now (an
  active user whose row's seal holds, of a role that exports), and who still sees the incident;
- :func:`requester_refusal`: the job's requester, with the role they asked with, in the write
  transaction that acts for them: their row, and on PostgreSQL the assignments that still grant
  them, held for share until it commits (``accounts.service.acting_for``), so a
  deactivation or an unassignment made meanwhile waits for it, and one made before is seen.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.service import acting_for
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry

from ..access import EVIDENCE_MEDIA, ORIGINALS_RELEASERS, Viewer, visible_evidence_ids, visible_incident
from .models import ExportJob
from .plan import ExportError, gather_items

EXPORTERS = EVIDENCE_MEDIA
ORIGINALS_AUTHORISERS = ORIGINALS_RELEASERS


class RequesterRefused(ExportError):
    """The person a build acts for may no longer have it: nothing of it is stored or recorded."""


def left_visible(session: Session, copy_ids: list[str]) -> list[str]:
    """The redacted copies among ``copy_ids`` that leave someone visible (a track turned off), as the
    ``redacted`` custody entry that made each one records."""
    if not copy_ids:
        return []
    rows = session.execute(
        select(CustodyEntry.item_id, CustodyEntry.details).where(
            CustodyEntry.item_id.in_(copy_ids), CustodyEntry.action == CustodyAction.REDACTED
        )
    ).all()
    out: set[str] = set()
    for item_id, details in rows:
        try:
            edits = (json.loads(details) or {}).get("edits") or {}
        except (ValueError, AttributeError):
            continue
        if isinstance(edits, dict) and edits.get("exclusions"):
            out.add(str(item_id))
    return sorted(out)


def holding_refusal(session: Session, user: Viewer, job: ExportJob) -> str | None:
    """Why ``user`` may not hand out everything the package holds, or None: original footage their
    role may not release, an item it holds (beyond those listed by hash only) they do not see, or a
    redacted copy leaving someone visible, which hands out that face as an original would."""
    if job.include_originals and user.role not in ORIGINALS_AUTHORISERS:
        return f"role {user.role} may not export original footage"
    scope: dict[str, Any] = json.loads(job.scope)
    try:
        gathered = {i.id for i in gather_items(session, scope.get("item_ids", []))}
    except ExportError as exc:
        return str(exc)
    held = gathered - set(scope.get("outside", []))
    hidden = sorted(held - visible_evidence_ids(session, user, held))
    if hidden:
        return f"{user.actor} may not see evidence item {', '.join(hidden[:5])} it holds"
    if user.role in ORIGINALS_AUTHORISERS:
        return None
    pinned = [
        p["item"] for p in (scope.get("pinned") or {}).values() if isinstance(p, dict) and p.get("item")
    ]
    shown = left_visible(session, pinned)
    return f"the redacted copy {shown[0]} leaves a person visible" if shown else None


def standing_refusal(
    session: Session,
    job: ExportJob,
    actor: str,
    key: ServiceKey,
    *,
    role: str | None = None,
    hold: bool = False,
    acting: bool = False,
) -> str | None:
    """Why the person ``actor`` names may not hand out the package now, or None: no active user
    whose row's seal holds, or of another role than ``role`` (of none that exports, when None), as
    ``accounts.service.acting_for`` reads them (``hold`` and ``acting`` are its), an incident they
    no longer see, or :func:`holding_refusal`."""
    person = acting_for(session, actor, key, EXPORTERS, role=role, hold=hold, acting=acting)
    if isinstance(person, str):
        return person
    if visible_incident(session, person, job.incident_id) is None:
        return f"{actor} may no longer see the incident"
    return holding_refusal(session, person, job)


def requester_refusal(session: Session, job: ExportJob, key: ServiceKey) -> str | None:
    """Why the package must not be built for its requester now, or None: run first in each write
    transaction the build makes on their authority (``jobs.ExportBuilds``). The queries of
    :func:`standing_refusal` acting for them: the requester's row, their sealed assignments or
    reach, those read again and held, the incident, the scope's items and their visibility."""
    why = standing_refusal(
        session, job, job.requested_by, key, role=job.requester_role, hold=True, acting=True
    )
    return None if why is None else f"refused: {why}; nothing was built for {job.requested_by}"
