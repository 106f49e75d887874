"""An incident's whole history as one reader may see it: its own events and its evidence's custody.

The incident's own timeline (``queries.timeline``: created, changed, assigned, links and unlinks with
their reasons) is joined with the custody entries of every evidence item linked to it now or before,
and of the copies derived from them (redaction versions, redaction records): views and downloads,
redactions, exports, legal holds, retention changes. Only items the reader may see now are followed
(``access.visible_evidence_ids``: an unlinked item an investigator no longer sees keeps its unlink
line but shows nothing after it), and an entry that names an incident the reader may not see is
withheld exactly as ``GET /evidence/{id}/custody`` withholds it (``access.readable_trail``).

The API (``GET /api/v1/incidents/{id}/history``) and the console's timeline page both call
:func:`incident_history`; there is no other reading of it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.models import CustodyEntry, EvidenceItem

from .access import Viewer, readable_trails, visible_evidence_ids
from .models import Incident, IncidentLink
from .queries import timeline

# The steps of an item's arrival other than "stored": its "stored" line (digest, size) tells the arrival.
ARRIVAL_STEPS = frozenset({"captured", "received", "verified"})
OWN_EVENTS = frozenset({"linked", "unlinked"})  # of this incident: told by its own timeline
MAX_ITEMS = 5000  # items followed for one incident (links and the copies derived from them)


def _family(session: Session, roots: list[str]) -> dict[str, str]:
    """Every item derived from ``roots`` (breadth first, a few generations): item -> its root."""
    root_of = {r: r for r in roots}
    frontier = list(roots)
    for _ in range(3):
        if not frontier or len(root_of) >= MAX_ITEMS:
            break
        children = session.execute(
            select(EvidenceItem.id, EvidenceItem.derived_from_id).where(
                EvidenceItem.derived_from_id.in_(frontier)
            )
        ).all()
        frontier = []
        for child, parent in children:
            if child not in root_of and parent is not None:
                root_of[child] = root_of[parent]
                frontier.append(child)
    return root_of


def _entries(session: Session, item_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for start in range(0, len(item_ids), 500):
        chunk = item_ids[start : start + 500]
        for row in session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.item_id.in_(chunk))
            .order_by(CustodyEntry.item_id, CustodyEntry.item_seq)
        ):
            out[row.item_id or ""].append(
                {
                    "seq": row.seq,
                    "id": row.id,
                    "at": row.at,
                    "action": row.action,
                    "actor": row.actor,
                    "item_id": row.item_id,
                    "item_seq": row.item_seq,
                    "details": json.loads(row.details),
                    "prev_hash": row.prev_hash,
                    "item_prev_hash": row.item_prev_hash,
                    "key_id": row.key_id,
                    "entry_hash": row.entry_hash,
                    "signature": row.signature,
                }
            )
    return out


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def incident_history(session: Session, viewer: Viewer | None, incident: Incident) -> list[dict[str, Any]]:
    """The incident's own timeline and its evidence's custody, oldest first, as ``viewer`` may read it.

    Each line: ``at``, ``kind`` (the incident event, or ``custody:<action>``), ``actor``, ``details``,
    and for custody lines ``item_id``, ``root_id`` (the linked item it belongs to) and ``withheld``.
    ``viewer`` None is the service itself (everything)."""
    rows = timeline(session, incident)
    ever_linked = list(
        dict.fromkeys(
            session.scalars(
                select(IncidentLink.target_id)
                .where(IncidentLink.incident_id == incident.id, IncidentLink.target_kind == "evidence")
                .order_by(IncidentLink.id)
                .limit(MAX_ITEMS)
            )
        )
    )
    root_of = _family(session, ever_linked)
    ids = list(root_of)
    if viewer is not None:
        allowed = visible_evidence_ids(session, viewer, ids)
        ids = [i for i in ids if i in allowed]
    kinds: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        for item_id, kind in session.execute(
            select(EvidenceItem.id, EvidenceItem.kind).where(EvidenceItem.id.in_(ids[start : start + 500]))
        ):
            kinds[item_id] = kind
    entries = _entries(session, ids)
    trails = readable_trails(session, viewer, {i: entries.get(i, []) for i in ids})
    for item_id in ids:
        for entry in trails[item_id]:
            action = entry.get("action") or ""
            if action in ARRIVAL_STEPS:
                continue
            if action in OWN_EVENTS and (entry.get("details") or {}).get("incident_id") == incident.id:
                continue  # the incident's own "linked"/"unlinked" line says it already, with the reason
            rows.append(
                {
                    "at": _at(entry["at"]),
                    "kind": f"custody:{action}" if action else "custody:withheld",
                    "actor": entry.get("actor"),
                    "details": entry.get("details") or {},
                    "item_id": item_id,
                    "item_kind": kinds.get(item_id),
                    "root_id": root_of[item_id],
                    "withheld": entry.get("withheld"),
                    "entry_hash": entry["entry_hash"],
                }
            )
    rows.sort(key=lambda r: (r["at"], r.get("item_id") or ""))
    return rows
