"""The continuity report's facts, read from the signed custody ledger and checked as they are read.

Who may have a report is ``access``'s to say (an item the caller may see, an incident the caller may
see and the items of it they may see); what of each chain they may read too (``readable_trail``: an
entry about an incident they may not see keeps its place and hash, not its content). An incident's
report also withholds what belongs to other incidents, as its export package does. Every report is a
read of each item it covers: a ``viewed`` custody entry is committed for each before the report is
made, so the report lists its own making.

Each item's record is checked from the ledger itself: every entry's hash and the service's signature,
the item's chain (contiguous, each linked to the one before), that the item's row says what its signed
``stored`` entry says, and each entry's inclusion in a signed tree head of the custody log. Findings are
the report's first words (``continuity.check_words``); nothing is smoothed over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accounts.models import User
from accounts.seals import name_of
from chain_of_custody.canonical import rfc3339
from chain_of_custody.entries import CustodyAction, SignedEntry, check_item_chain, details_name, withhold
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.merkle import leaf_hash, verify_inclusion
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.quarantines import row_problem, standing_of
from chain_of_custody.row_seals import USER_SEALS
from chain_of_custody.verify import unrecorded
from devices.models import StaffMember
from storage.db import Database
from storage.errors import Refused

from . import exhibits
from .access import Viewer, readable_trail, visible_evidence, visible_evidence_ids
from .continuity import Continuity, ItemStory, quarantine_words, retention_words, step_of
from .export.plan import foreign_markers, gather_items, incident_export_scope

OTHER_INCIDENT = "belongs to another incident"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportBounds:
    """How much one report may cover: it sets out every entry of every item, checked, in one answer,
    so an item read a few hundred thousand times (range reads) would build an answer of that size."""

    max_items: int
    max_entries: int


class ReportTooLarge(Refused):
    """A report over its bounds (413 ``report_too_large``), refused before anything is read or
    recorded; the answer names the bound, and how much there is."""

    status = 413
    structured = True


def check_bounds(session: Session, bounds: ReportBounds, item_ids: Sequence[str], subject: str) -> None:
    """Refuse (:class:`ReportTooLarge`, logged) a report over ``bounds``."""
    items = len(item_ids)
    if items > bounds.max_items:
        log.warning(
            "continuity report refused: too many items", extra={"items": items, "cap": bounds.max_items}
        )
        raise ReportTooLarge(
            "report_too_large",
            f"{subject} covers {items} evidence items; one report covers at most {bounds.max_items} "
            "(EVIDENCE_CONTINUITY_MAX_ITEMS)",
            detail={"cap": "items", "limit": bounds.max_items, "found": items},
        )
    entries = 0
    for start in range(0, items, 500):
        part = list(item_ids[start : start + 500])
        entries += int(
            session.scalar(
                select(func.count()).select_from(CustodyEntry).where(CustodyEntry.item_id.in_(part))
            )
            or 0
        )
    if entries > bounds.max_entries:
        log.warning(
            "continuity report refused: too many custody entries",
            extra={"entries": entries, "cap": bounds.max_entries},
        )
        raise ReportTooLarge(
            "report_too_large",
            f"{subject} has {entries} custody entries; one report sets out at most {bounds.max_entries} "
            "(EVIDENCE_CONTINUITY_MAX_ENTRIES): read the trail a page at a time from "
            "GET /api/v1/evidence/{id}/custody",
            detail={"cap": "entries", "limit": bounds.max_entries, "found": entries},
        )


def log_reads(
    session: Session, ledger: Ledger, viewer: Viewer, item_ids: Iterable[str], purpose: str
) -> None:
    """One ``viewed`` entry per item, in the transaction that found the viewer may see them (so what
    they may see is decided where the read is recorded, not a transaction before it), committed (and
    so covered by a tree head) before anything is read."""
    for item_id in item_ids:
        ledger.append(
            session, CustodyAction.VIEWED, viewer.actor, item_id=item_id, details={"purpose": purpose}
        )


ALTERED_ACCOUNT = "account record altered outside the service: name and role not shown"


def people_names(session: Session, key: ServiceKey, actors: Iterable[str]) -> dict[str, str]:
    """Actor -> "Name (role)" for a report's words, from the person's row only while its seal holds
    (``accounts.seals.name_of``): a name or role changed in the database is never printed as theirs,
    the username and :data:`ALTERED_ACCOUNT` are."""
    names = {a.removeprefix("user:") for a in actors if a.startswith("user:")}
    if not names:
        return {}
    secret = key.derived_secret(USER_SEALS)
    out = {}
    for user in session.scalars(select(User).where(User.username.in_(names))):
        name = name_of(secret, user)
        out[f"user:{user.username}"] = (
            f"{user.username} ({ALTERED_ACCOUNT})"
            if name is None
            else f"{name or user.username} ({user.role.replace('_', ' ')})"
        )
    return out


def _staff_name(session: Session, staff_id: str | None) -> str | None:
    if not staff_id:
        return None
    member = session.get(StaffMember, staff_id)
    return f"{member.name} (staff number {staff_id}, {member.staff_group})" if member else staff_id


def check_record(ledger: Ledger, item: EvidenceItem, entries: Sequence[SignedEntry]) -> list[str]:
    """Every finding about the item's record itself (nothing when it checks)."""
    problems = [str(p) for p in check_item_chain(item.id, list(entries), ledger.verifier)]
    stored = next((e for e in entries if e.body.action == CustodyAction.STORED), None)
    differs = unrecorded(item, stored, ledger.verifier)
    if differs is not None:
        problems.append(differs)
    if item.status == "quarantined":
        problems.append(f"the item is quarantined: {item.quarantine_reason}")
    standing = standing_of(entries, ledger.verifier)
    held = row_problem(item, standing)
    if held is not None:
        problems.append(held)
    problems += [
        f"custody entry #{seq} claims a release from quarantine that releases nothing: {why}"
        for seq, why in standing.unheld
    ]
    return problems


def check_logged(ledger: Ledger, db: Database, entries: Sequence[SignedEntry]) -> list[str]:
    """Each entry is the one the custody log holds at its place, under a tree head the service signed.
    Called with no session open: the log reads the ledger on a connection of its own (on SQLite a
    transaction open here would hold the lock it waits for)."""
    log = ledger.tree_heads
    if log is None or not entries:
        return []
    problems: list[str] = []
    head, paths = log.inclusion([e.body.seq for e in entries], db.engine)
    if not head.signed_by(ledger.key.public):
        problems.append(
            f"the custody log's tree head of size {head.tree_size} is not signed by the service key"
        )
    root = bytes.fromhex(head.root_hash)
    for e in entries:
        proof = [bytes.fromhex(p) for p in paths[e.body.seq]]
        if not verify_inclusion(e.body.seq - 1, head.tree_size, leaf_hash(e.body.canonical()), proof, root):
            problems.append(
                f"custody entry #{e.body.seq} is not the entry the custody log holds at that place "
                "(altered since it was logged)"
            )
    return problems


def _tree_head(ledger: Ledger, db: Database) -> str | None:
    if ledger.tree_heads is None:
        return None
    head = ledger.tree_heads.current(db.engine)
    return f"{head.tree_size} entries, root {head.root_hash}, signed {head.timestamp}"


def _story(
    wearer: str | None,
    item: EvidenceItem,
    chain: Sequence[Mapping[str, Any]],
    problems: Sequence[str],
    exhibit: str | None,
    made_from: str | None,
    people: Mapping[str, str],
) -> ItemStory:
    return ItemStory(
        item_id=item.id,
        exhibit=exhibit,
        kind=item.kind,
        copy_type=item.copy_type,
        status=item.status,
        sha256=item.sha256,
        size=item.size,
        recorded_from=item.captured_start.isoformat() if item.captured_start else None,
        recorded_to=item.captured_stop.isoformat() if item.captured_stop else None,
        wearer=wearer,
        device=item.source_device_id,
        made_from=made_from,
        retention_basis=retention_words(chain),
        retain_until=item.retain_until.isoformat() if item.retain_until else None,
        steps=tuple(step_of(e, people) for e in chain),
        problems=tuple(problems),
        quarantine=quarantine_words(chain, people),
    )


def _viewer_words(session: Session, ledger: Ledger, viewer: Viewer) -> str:
    return people_names(session, ledger.key, [viewer.actor]).get(viewer.actor, viewer.actor)


def item_continuity(
    db: Database, ledger: Ledger, viewer: Viewer, item_id: str, purpose: str, bounds: ReportBounds
) -> Continuity | None:
    """The report of one item, or None when the caller may not see it (missing and hidden alike)."""
    with db.session() as session:
        if visible_evidence(session, viewer, item_id) is None:
            return None
        check_bounds(session, bounds, [item_id], f"evidence item {item_id}")
        log_reads(session, ledger, viewer, [item_id], purpose)
    with db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None
        entries = Ledger.item_entries(session, item_id)
        problems = check_record(ledger, item, entries)
        chain = readable_trail(session, viewer, item_id, [e.to_json() for e in entries])
        people = people_names(session, ledger.key, [str(e.get("actor") or "") for e in chain])
        refs = exhibits.visible_exhibits(session, viewer, [item_id]).get(item_id, [])
        exhibit = "; ".join(f"{r['reference']} ({r['incident']})" for r in refs) or None
        origin = session.get(EvidenceItem, item.derived_from_id) if item.derived_from_id else None
        made_from = f"master copy {origin.id}, SHA-256 {origin.sha256}" if origin else None
        wearer = _staff_name(session, item.wearer)
        generated_for = _viewer_words(session, ledger, viewer)
    problems += check_logged(ledger, db, entries)
    return Continuity(
        title="Evidence continuity report",
        subject=f"evidence item {item.id} ({item.kind.replace('_', ' ')}, {item.copy_type})",
        generated_at=rfc3339(datetime.now(UTC), 0),
        generated_for=generated_for,
        key_fingerprint=ledger.key.fingerprint,
        tree_head=_tree_head(ledger, db),
        items=(_story(wearer, item, chain, problems, exhibit, made_from, people),),
    )


def _own(chain: Sequence[dict[str, Any]], markers: set[str]) -> list[dict[str, Any]]:
    return [
        withhold(e, OTHER_INCIDENT) if "withheld" not in e and details_name(e, markers) else e for e in chain
    ]


def incident_items(
    session: Session, viewer: Viewer, incident_id: str
) -> tuple[dict[str, Any], list[EvidenceItem]]:
    """The incident's summary and its items the caller may see (linked ones, their working copies and
    the master copies those were made from), oldest first. LookupError when the incident is hidden."""
    summary, linked = incident_export_scope(session, viewer, incident_id)
    items = gather_items(session, linked)
    allowed = visible_evidence_ids(session, viewer, [i.id for i in items])
    return summary, [i for i in items if i.id in allowed and i.kind != "export"]


def incident_continuity(
    db: Database, ledger: Ledger, viewer: Viewer, incident_key: str, purpose: str, bounds: ReportBounds
) -> Continuity | None:
    """The report of every item of the incident the caller may see, or None when the incident is hidden."""
    with db.session() as session:
        try:
            summary, items = incident_items(session, viewer, incident_key)
        except LookupError:
            return None
        check_bounds(session, bounds, [i.id for i in items], f"incident {summary['reference']}")
        exhibits.assign_all(session, ledger, summary["id"], [i.id for i in items], viewer.actor)
        ids = [i.id for i in items]
        log_reads(session, ledger, viewer, ids, f"{purpose} for {summary['reference']}")
    read: list[tuple[EvidenceItem, list[SignedEntry], list[dict[str, Any]], dict[str, str], str | None]] = []
    with db.session() as session:
        refs = exhibits.references(session, summary["id"], ids)
        markers = foreign_markers(session, ids, summary["id"])
        rows = {i.id: session.get(EvidenceItem, i.id) for i in items}
        for item_id in ids:
            item = rows[item_id]
            assert item is not None
            entries = Ledger.item_entries(session, item_id)
            chain = _own(readable_trail(session, viewer, item_id, [e.to_json() for e in entries]), markers)
            people = people_names(session, ledger.key, [str(e.get("actor") or "") for e in chain])
            read.append((item, entries, chain, people, _staff_name(session, item.wearer)))
        generated_for = _viewer_words(session, ledger, viewer)
    stories = []
    for item, entries, chain, people, wearer in read:
        problems = check_record(ledger, item, entries) + check_logged(ledger, db, entries)
        origin = rows.get(item.derived_from_id or "")
        made_from = (
            f"exhibit {refs.get(origin.id, '(none)')}, master copy {origin.id}, SHA-256 {origin.sha256}"
            if origin
            else None
        )
        stories.append(_story(wearer, item, chain, problems, refs.get(item.id), made_from, people))
    return Continuity(
        title=f"Evidence continuity report: {summary['reference']}",
        subject=f"incident {summary['reference']}: {summary.get('title') or summary['category']}",
        generated_at=rfc3339(datetime.now(UTC), 0),
        generated_for=generated_for,
        key_fingerprint=ledger.key.fingerprint,
        tree_head=_tree_head(ledger, db),
        items=tuple(stories),
        incident=summary,
    )
