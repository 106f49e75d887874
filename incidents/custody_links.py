"""Which incidents the ledger says an evidence item is linked to, whatever the link rows say.

Retention and legal holds keep evidence. A link row deleted (or marked unlinked) in the database
must not let an item linked on custody expire, nor leave it out of its incident's hold; a row
planted there keeps an item longer, which loses nothing. So what keeps evidence reads the link rows
*and* the ledger (either one is enough), while what grants access reads the ledger's word alone
(``access.link_on_custody``). ``evidence verify`` names every row that differs from its entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.ledger import to_signed
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_replay import LinkKey, LinkStep, link_replay

from .models import IncidentLink

LINK_STEPS = ("linked", "unlinked")


def _item_steps(session: Session, item_ids: list[str]) -> dict[LinkKey, LinkStep]:
    """The latest link step of each incident and item among ``item_ids``, from the items' own link
    steps (``ix_custody_entries_link_steps``), in ledger order."""
    rows = session.scalars(
        select(CustodyEntry)
        .where(CustodyEntry.item_id.in_(item_ids), CustodyEntry.action.in_(LINK_STEPS))
        .order_by(CustodyEntry.seq)
    )
    return link_replay(map(to_signed, rows))


def custody_linked(session: Session, item_ids: Iterable[str]) -> set[str]:
    """The incidents whose latest ``linked``/``unlinked`` entry for one of the items is ``linked``."""
    ids = list(item_ids)
    return (
        {incident for (incident, _, _), step in _item_steps(session, ids).items() if step.linked}
        if ids
        else set()
    )


def ever_linked_on_custody(session: Session, item_ids: Iterable[str]) -> set[str]:
    """The incidents any of the items was ever linked to on custody (linked now or since unlinked):
    whose ids and references mark a custody entry as another incident's, with or without a row."""
    ids = list(item_ids)
    return {incident for incident, _, _ in _item_steps(session, ids)} if ids else set()


def ever_linked_to(session: Session, incident_id: str, item_ids: Iterable[str]) -> set[str]:
    """Which of the items custody ever linked to the incident (linked now or since unlinked): an
    item whose link row to it was planted or moved there by SQL is not among them."""
    ids = list(item_ids)
    steps = _item_steps(session, ids) if ids else {}
    return {item for incident, _, item in steps if incident == incident_id}


def kept_by_links(session: Session, item_ids: Iterable[str]) -> set[str]:
    """The incidents that keep the items: an active link row, or the ledger's latest step linked."""
    ids = list(item_ids)
    if not ids:
        return set()
    rows = session.scalars(
        select(IncidentLink.incident_id).where(
            IncidentLink.target_kind == "evidence",
            IncidentLink.target_id.in_(ids),
            IncidentLink.unlinked_at.is_(None),
        )
    )
    return set(rows) | custody_linked(session, ids)


def items_on_custody(session: Session, incident_id: str) -> list[str]:
    """The evidence items the ledger says are linked to the incident now (its latest step for each
    item is ``linked``), in ledger order. Reads the link steps naming the incident."""
    named = f'"incident_id":"{incident_id}"'
    rows = session.scalars(
        select(CustodyEntry)
        .where(
            CustodyEntry.item_id.is_not(None),
            CustodyEntry.action.in_(LINK_STEPS),
            CustodyEntry.details.contains(named),
        )
        .order_by(CustodyEntry.seq)
    )
    steps = link_replay(map(to_signed, rows))
    return [item for (incident, _, item), step in steps.items() if step.linked and incident == incident_id]


def linked_items(session: Session, incident_id: str) -> list[str]:
    """The evidence items that the incident keeps: an active link row, or linked on custody now
    (:func:`items_on_custody`, a row deleted by SQL). What its hold, closing or reopening applies to."""
    linked = list(
        session.scalars(
            select(IncidentLink.target_id).where(
                IncidentLink.incident_id == incident_id,
                IncidentLink.target_kind == "evidence",
                IncidentLink.unlinked_at.is_(None),
            )
        )
    )
    return linked + [i for i in items_on_custody(session, incident_id) if i not in linked]
