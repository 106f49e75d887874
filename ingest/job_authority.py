"""Whose authority a redaction job acts on, asked where the worker acts.

``redaction`` may not import ``accounts`` or ``incidents`` (independent domains of one layer), so
its worker is given the rule from here (``RedactionWorker(authority=...)``). A version queued by
the service itself (``requested_by == "service"``: a new clip's automatic redaction) acts for
nobody; one asked for by a person acts on theirs: the worker's transaction reads them as they are
now and holds it until it commits (``accounts.service.principal_of``, ``accounts.held_reach``),
and asks the one access rule whether they may still see the clip (``incidents.access``), as the
route that queued the version asked (``ingest.redaction_api.request_redaction``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from accounts.service import acting_for
from chain_of_custody.keys import ServiceKey
from incidents.access import EVIDENCE_MEDIA, visible_evidence

if TYPE_CHECKING:  # the worker brings cv2 and numpy; the service loads them only to redact
    from redaction.worker import Authority

SERVICE = "service"  # who queues a new clip's automatic redaction (``ingest.services.clip_hooks``)


def redaction_authority(key: ServiceKey) -> Authority:
    """The rule a redaction worker asks, in each write transaction of a job, before it acts."""

    def refusal(session: Session, requested_by: str, item_id: str) -> str | None:
        if requested_by == SERVICE:
            return None
        person = acting_for(session, requested_by, key, EVIDENCE_MEDIA, hold=True, acting=True)
        if isinstance(person, str):
            return person
        if visible_evidence(session, person, item_id) is None:
            return f"{requested_by} may no longer see evidence item {item_id}"
        return None

    return refusal
