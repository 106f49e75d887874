"""What a clip's page and its downloads say about it, as one viewer may see it.

The evidence API and the console's footage page both describe an item through these functions,
so a page shows exactly what the API gives the same user: the incidents it is linked to (only
those the viewer may see), its retention (likewise scoped), and the name a download is saved
under (an incident reference, the capture time and what the file is, never a bare id).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.models import EvidenceItem
from storage.errors import Refused

from .access import Viewer, incident_scope, link_on_custody, readable_retention
from .models import Incident, IncidentLink
from .retention import RetentionRules, describe

# Who may read an original (unredacted) clip: the roles that may read media at all. A page asks
# them for a reason first, and the reason goes on the read's custody entry.
ORIGINAL_KINDS = frozenset({"clip"})
log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_VERSION = re.compile(r"-v(\d+)\.[A-Za-z0-9]+$")
_EXTENSIONS = {"video/mp4": "mp4", "application/json": "json", "audio/mp4": "m4a", "audio/mpeg": "mp3"}


def is_original(item: EvidenceItem) -> bool:
    """An original (unredacted) clip: the master copy of footage as it arrived."""
    return item.kind in ORIGINAL_KINDS and item.derived_from_id is None


class ReasonRequired(Refused):
    """An original read with no stated reason (422 ``reason_required``): the reason goes on the
    read's custody entry, whichever client reads it (the console asks for one; the API insists)."""

    status = 422
    structured = True


def require_reason(item: EvidenceItem, reason: str | None, actor: str, route: str) -> None:
    """Refuse (:class:`ReasonRequired`, logged) a read of an original that states no reason; a
    redacted copy, a record or a memo needs none. Every route that hands out an item's bytes to a
    person calls this before the read's custody entry."""
    if not is_original(item) or (reason is not None and reason.strip()):
        return
    log.warning("original read refused: no reason", extra={"item": item.id, "by": actor, "route": route})
    raise ReasonRequired(
        "reason_required",
        f"evidence item {item.id} is an original: say why it is read (``reason``, 10 characters or "
        "more), recorded on the read's custody entry; its redacted copy needs none",
    )


def incident_refs(session: Session, viewer: Viewer | None, item: EvidenceItem) -> list[str]:
    """References of the open links of the item (or of the original it was made from) that the viewer
    may see, oldest link first; ``viewer`` None is the service itself."""
    ids = [item.id] + ([item.derived_from_id] if item.derived_from_id else [])
    q = (
        select(Incident.reference)
        .join(IncidentLink, IncidentLink.incident_id == Incident.id)
        .where(
            IncidentLink.target_kind == "evidence",
            IncidentLink.target_id.in_(ids),
            IncidentLink.unlinked_at.is_(None),
            link_on_custody(),  # as custody holds it: a row planted or moved by SQL shows no incident
        )
        .order_by(IncidentLink.linked_at, IncidentLink.id)
    )
    if viewer is not None:
        q = q.where(incident_scope(viewer))
    return list(dict.fromkeys(session.scalars(q)))


def scoped_retention(
    session: Session, viewer: Viewer, item: EvidenceItem, rules: RetentionRules, now: datetime
) -> dict[str, Any]:
    """The item's retention as this viewer may see it: only the incidents they may see are named."""
    return readable_retention(session, viewer, describe(session, item, rules, now))


def download_name(item: EvidenceItem, incident_ref: str | None) -> str:
    """``INC-2026-0001_20261122-100000Z_redacted-clip-v2.mp4``: whose case, when it was filmed, what it is.

    Only letters, digits, dots, dashes and underscores, so it is safe in any file system and header."""
    when = item.captured_start or item.created_at
    stamp = when.astimezone(UTC).strftime("%Y%m%d-%H%M%SZ") if when else "undated"
    what = item.kind.replace("_", "-")
    version = _VERSION.search(item.filename or "")
    if version and item.derived_from_id:
        what += f"-v{version.group(1)}"
    ext = _EXTENSIONS.get(item.content_type)
    if ext is None and item.filename and "." in item.filename:
        given = item.filename.rsplit(".", 1)[1]
        ext = given if re.fullmatch(r"[A-Za-z0-9]{1,5}", given) else None
    parts = [incident_ref or "no-incident", stamp, what]
    name = _UNSAFE.sub("-", "_".join(parts)).strip("-.") or "evidence"
    if ext:
        name += "." + ext
    return name[:180]


def content_disposition(name: str, inline: bool) -> str:
    """The header for a download saved as ``name`` (already safe ASCII), or shown in the page."""
    return f'{"inline" if inline else "attachment"}; filename="{name}"'
