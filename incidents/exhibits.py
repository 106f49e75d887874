"""Exhibit references: the name a court knows an evidence item by, as in UK practice ``JS/1``.

Each item linked to an incident (and each item that goes into the incident's package: a working copy,
its redaction record) gets one reference in that incident, made from the configured pattern with its
producer's initials and the producer's next number in the incident. The producer is the member of
staff who recorded it (the wearer of the item or of the master copy it was made from); for an item no
one wore, the person who linked or exported it. A reference is given once: its row is never deleted,
so an unlinked item keeps it (and gets it back when relinked) and no other item ever gets its number.
Each is said on the item's custody in the same transaction: in the ``linked`` entry that gave it, or
an ``exhibit_referenced`` entry of its own (an item given one when it is packaged or reported on).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accounts.models import User
from accounts.seals import name_of
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger, head_held
from chain_of_custody.models import EvidenceItem
from chain_of_custody.row_seals import USER_SEALS
from devices.models import StaffMember

from .access import Viewer, incident_scope
from .models import ExhibitReference, Incident
from .retention import lock_ledger

DEFAULT_PATTERN = "{initials}/{n}"
FIELDS = frozenset({"initials", "n", "incident", "year"})
_WORD = re.compile(r"[A-Za-z0-9]+")
_pattern = DEFAULT_PATTERN


def check_pattern(pattern: str) -> str:
    """The pattern if it is usable: only known fields, and ``{n}`` so that every reference differs."""
    names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    unknown = names - FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FIELDS))}")
    if "n" not in names:
        raise ValueError("the pattern needs {n}, the producer's number in the incident")
    if len(render(pattern, "WWWW", 99999, "INC-9999-999999", 9999)) > 64:
        raise ValueError("the pattern makes references longer than 64 characters")
    return pattern


def configure(pattern: str) -> None:
    """Set the pattern this process gives references with (from the settings, at start)."""
    global _pattern
    _pattern = check_pattern(pattern)


def initials(name: str) -> str:
    """``Jane Smith`` -> ``JS``; ``Mary-Anne O'Neil`` -> ``MAO``; at most four letters, ``X`` for none."""
    words = _WORD.findall(name.replace("'", ""))
    return ("".join(w[0] for w in words).upper() or "X")[:4]


def render(pattern: str, initial: str, n: int, incident: str, year: int) -> str:
    return pattern.format(initials=initial, n=n, incident=incident, year=year)


@dataclass(frozen=True)
class Producer:
    kind: str  # staff, user, service
    id: str
    name: str


def producer_of(session: Session, item: EvidenceItem, actor: str, key: ServiceKey) -> Producer:
    """Who produces the item as an exhibit: the wearer who recorded it (or recorded the master copy
    it was made from), else the person whose action brought it into the incident (by their full
    name only while their row's seal holds, ``accounts.seals.name_of``; else their username)."""
    seen: set[str] = set()
    current: EvidenceItem | None = item
    while current is not None and current.id not in seen:
        seen.add(current.id)
        if current.wearer:
            member = session.get(StaffMember, current.wearer)
            return Producer("staff", current.wearer, member.name if member else current.wearer)
        current = session.get(EvidenceItem, current.derived_from_id) if current.derived_from_id else None
    if actor.startswith("user:"):
        username = actor.removeprefix("user:")
        user = session.scalar(select(User).where(User.username == username))
        return Producer("user", username, name_of(key.derived_secret(USER_SEALS), user) or username)
    return Producer("service", actor, "Evidence Service")


def _reference_of(session: Session, incident: Incident, item: EvidenceItem) -> ExhibitReference | None:
    return session.scalar(
        select(ExhibitReference).where(
            ExhibitReference.incident_id == incident.id, ExhibitReference.item_id == item.id
        )
    )


def assign(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    item: EvidenceItem,
    actor: str,
    *,
    record: bool = True,
) -> ExhibitReference:
    """The item's reference in the incident, given now if it has none (under the ledger lock, which
    serialises numbering; the unique indexes are the backstop). A new reference is an
    ``exhibit_referenced`` custody entry, unless ``record`` is False: a link names it in its own
    ``linked`` entry instead (``details``)."""
    # Numbering is read-then-insert: take the ledger lock first (a link holds it already; an export or
    # a continuity report may not), so two at once number one after the other instead of colliding;
    # then look again, as the one we waited for may have given this very item its reference. A look
    # made under the lock is final: it is made once.
    locked = head_held(session)
    found = _reference_of(session, incident, item)
    if found is not None:
        return found
    if not locked:
        lock_ledger(session)
        found = _reference_of(session, incident, item)
        if found is not None:
            return found
    producer = producer_of(session, item, actor, ledger.key)
    series = initials(producer.name) if "{initials}" in _pattern else ""
    last = session.scalar(
        select(func.max(ExhibitReference.number)).where(
            ExhibitReference.incident_id == incident.id, ExhibitReference.series == series
        )
    )
    number = (last or 0) + 1
    now = datetime.now(UTC)
    row = ExhibitReference(
        incident_id=incident.id,
        item_id=item.id,
        reference=render(_pattern, initials(producer.name), number, incident.reference, incident.year),
        series=series,
        number=number,
        producer_kind=producer.kind,
        producer_id=producer.id,
        producer_name=producer.name,
        assigned_by=actor,
        assigned_at=now,
    )
    session.add(row)
    session.flush()
    if not record:
        return row
    ledger.append(
        session,
        CustodyAction.EXHIBIT_REFERENCED,
        actor,
        item_id=item.id,
        details={
            "incident": incident.reference,
            "incident_id": incident.id,
            "exhibit": row.reference,
            "producer": producer.name,
            "producer_kind": producer.kind,
            "producer_id": producer.id,
            "copy_type": item.copy_type,
        },
        at=now,
    )
    return row


def details(row: ExhibitReference) -> dict[str, str]:
    """What a custody entry says of a reference."""
    return {"exhibit": row.reference, "producer": row.producer_name}


def assign_all(
    session: Session, ledger: Ledger, incident_id: str, item_ids: Iterable[str], actor: str
) -> dict[str, str]:
    """References for every item given (the items of a package), in the order given."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        return {}
    out: dict[str, str] = {}
    for item_id in item_ids:
        item = session.get(EvidenceItem, item_id)
        if item is not None:
            out[item_id] = assign(session, ledger, incident, item, actor).reference
    return out


def references(session: Session, incident_id: str, item_ids: Iterable[str]) -> dict[str, str]:
    """Item -> its reference in the incident (items without one are left out)."""
    ids = list(item_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(ExhibitReference.item_id, ExhibitReference.reference).where(
            ExhibitReference.incident_id == incident_id, ExhibitReference.item_id.in_(ids)
        )
    ).all()
    return {i: r for i, r in rows}


def visible_exhibits(
    session: Session, viewer: Viewer, item_ids: Iterable[str]
) -> dict[str, list[dict[str, object]]]:
    """Item -> its references in the incidents the viewer may see (``incident_scope``), for the API."""
    ids = list(dict.fromkeys(item_ids))
    if not ids:
        return {}
    q = (
        select(ExhibitReference, Incident.reference)
        .join(Incident, Incident.id == ExhibitReference.incident_id)
        .where(ExhibitReference.item_id.in_(ids))
        .order_by(ExhibitReference.assigned_at, ExhibitReference.id)
    )
    if viewer.role != "auditor":  # auditors see every item's custody, which names every reference
        q = q.where(incident_scope(viewer))
    out: dict[str, list[dict[str, object]]] = {}
    for row, ref in session.execute(q).all():
        out.setdefault(row.item_id, []).append(
            {
                "incident": ref,
                "reference": row.reference,
                "producer": row.producer_name,
                "assigned_at": row.assigned_at,
            }
        )
    return out
