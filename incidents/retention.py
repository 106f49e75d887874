"""Retention classes of evidence, the object locks that enforce them, and the sweeper that deletes what expired.

Classes, strongest first:

- ``legal_hold``: an active hold on the item (or its original, or an incident it is linked to) keeps it
  indefinitely; the object carries an S3 legal hold.
- ``open_incident``: linked to an incident that is not closed; kept while it stays open. The object
  lock is kept at least half of ``after_closure`` ahead and renewed to ``now + after_closure``.
- ``closed_incident``: linked only to closed incidents; kept ``after_closure`` after the last closure,
  and the object lock is extended to that date.
- ``unlinked``: kept ``unlinked`` after capture (and never before its object lock ends). The capture time
  is the device's word, bounded by arrival as the lock was (``chain_of_custody.retention_basis``): a
  capture time after arrival, or older than ``unlinked``, counts from arrival.

An item derived from another (a redacted copy) shares its original's links and holds.

Storage enforces the same classes: COMPLIANCE retention refuses deletion until the lock date, and
a legal hold refuses it until released. The database decides what *should* go; storage makes sure
nothing goes early even if the database were wrong. Locks only ever move later (COMPLIANCE
retention cannot be shortened), so an item unlinked after being linked waits for its longer lock.

Lock order, everywhere in this package: the ledger head first, then evidence rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from chain_of_custody import package_layout
from chain_of_custody.entries import CustodyAction
from chain_of_custody.ledger import Ledger, hold_head, to_signed
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.retention_basis import bounded_base
from chain_of_custody.row_replay import item_hold_replay
from storage.db import Database
from storage.errors import Refused
from storage.objects import ObjectLocked, ObjectStore, StorageError
from storage.settings import RetentionSettings

from .custody_links import kept_by_links, linked_items
from .models import Incident, IncidentLink, LegalHold

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SWEEPER = "service:retention"
LINEAGE_DEPTH = 5


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetentionRules:
    """How long each class keeps evidence (from settings: ``retention_days``, ``incident_evidence_retention_days``)."""

    unlinked: timedelta
    after_closure: timedelta

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> RetentionRules:
        return cls(
            unlinked=timedelta(days=settings.retention_days),
            after_closure=timedelta(days=settings.incident_evidence_retention_days),
        )


# -- pure decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionFacts:
    """What the database says about one item, gathered by :func:`gather_facts`."""

    captured: datetime | None  # capture start (the original's, for a derived item), as the device said
    received: datetime  # arrival (the original's, for a derived item)
    locked_until: datetime | None  # the object lock as recorded on the item
    holds: tuple[int, ...] = ()
    open_incidents: tuple[str, ...] = ()  # references
    closed_incidents: tuple[tuple[str, datetime], ...] = ()  # (reference, closed_at)


@dataclass(frozen=True)
class RetentionDecision:
    klass: str  # legal_hold | open_incident | closed_incident | unlinked
    keep_until: datetime | None  # None: indefinitely (held, or while an incident is open)
    extend_lock_to: datetime | None  # the object lock extension due now, if any
    hold: bool
    expired: bool


def decide(facts: RetentionFacts, rules: RetentionRules, now: datetime) -> RetentionDecision:
    """The class of an item, whether its lock must be extended now, and whether it has expired."""
    extend: datetime | None = None
    locked = facts.locked_until
    if facts.open_incidents:
        klass, keep = "open_incident", None
        if locked is None or locked < now + rules.after_closure / 2:
            extend = now + rules.after_closure
    elif facts.closed_incidents:
        klass = "closed_incident"
        keep = max(at for _, at in facts.closed_incidents) + rules.after_closure
        if locked is None or locked < keep:
            extend = keep
    else:
        base = bounded_base(facts.captured, facts.received, rules.unlinked)
        klass, keep = "unlinked", base + rules.unlinked
    if facts.holds:
        klass, keep = "legal_hold", None
    expired = keep is not None and now >= max(keep, locked or keep)
    return RetentionDecision(klass, keep, extend, bool(facts.holds), expired)


# -- facts from the database -------------------------------------------------------------------


def lock_ledger(session: Session) -> None:
    """Take the ledger head's row lock now, so that this transaction is serialised with every other writer.

    Every custody append takes this lock anyway; taking it first keeps one lock order (ledger, then
    evidence rows) and makes check-then-link decisions see each other's committed work on PostgreSQL.
    """
    hold_head(session)


def lineage(session: Session, item: EvidenceItem) -> list[str]:
    """The item's id and its originals' ids (a redacted copy inherits its original's links and holds)."""
    ids = [item.id]
    parent = item.derived_from_id
    while parent is not None and parent not in ids and len(ids) <= LINEAGE_DEPTH:
        ids.append(parent)
        parent = session.scalar(select(EvidenceItem.derived_from_id).where(EvidenceItem.id == parent))
    return ids


def descendants(session: Session, item_id: str) -> list[str]:
    """The item and every item derived from it, breadth first."""
    found = [item_id]
    frontier = [item_id]
    for _ in range(LINEAGE_DEPTH):
        frontier = list(
            session.scalars(select(EvidenceItem.id).where(EvidenceItem.derived_from_id.in_(frontier)))
        )
        frontier = [i for i in frontier if i not in found]
        if not frontier:
            break
        found.extend(frontier)
    return found


def active_link_incidents(session: Session, item_ids: Iterable[str]) -> list[Incident]:
    """The incidents the items are linked to, by an active link row or by the ledger's latest link
    step (``custody_links.kept_by_links``): a link deleted in the database still keeps its evidence."""
    kept = kept_by_links(session, item_ids)
    return list(session.scalars(select(Incident).where(Incident.id.in_(sorted(kept))))) if kept else []


def active_holds(session: Session, item_ids: Iterable[str], incident_ids: Iterable[str]) -> list[LegalHold]:
    item_ids, incident_ids = list(item_ids), list(incident_ids)
    return list(
        session.scalars(
            select(LegalHold)
            .where(
                LegalHold.released_at.is_(None),
                or_(
                    (LegalHold.target_kind == "evidence") & LegalHold.target_id.in_(item_ids),
                    (LegalHold.target_kind == "incident") & LegalHold.target_id.in_(incident_ids),
                ),
            )
            .order_by(LegalHold.id)
        )
    )


def gather_facts(session: Session, item: EvidenceItem) -> RetentionFacts:
    ids = lineage(session, item)
    incidents = active_link_incidents(session, ids)
    holds = active_holds(session, ids, [i.id for i in incidents])
    root = item if len(ids) == 1 else session.get(EvidenceItem, ids[-1])  # a copy counts from its original
    origin = root if root is not None else item
    return RetentionFacts(
        captured=origin.captured_start,
        received=origin.created_at,
        locked_until=item.retain_until,
        holds=tuple(h.id for h in holds),
        open_incidents=tuple(sorted(i.reference for i in incidents if i.status != "closed")),
        closed_incidents=tuple(
            sorted((i.reference, i.closed_at or i.updated_at) for i in incidents if i.status == "closed")
        ),
    )


def describe(session: Session, item: EvidenceItem, rules: RetentionRules, now: datetime) -> dict[str, Any]:
    """The item's retention as the API shows it."""
    facts = gather_facts(session, item)
    d = decide(facts, rules, now)
    return {
        "item_id": item.id,
        "status": item.status,
        "class": d.klass,
        "keep_until": d.keep_until,
        "object_locked_until": item.retain_until,
        "legal_hold": item.legal_hold,
        "holds": list(facts.holds),
        "open_incidents": list(facts.open_incidents),
        "closed_incidents": [ref for ref, _ in facts.closed_incidents],
        "expired": d.expired and item.status != "deleted",
    }


# -- applying the class to storage -------------------------------------------------------------


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat() if ts else None


def apply_retention(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    item: EvidenceItem,
    rules: RetentionRules,
    now: datetime,
    actor: str,
    cause: str,
    *,
    record_hold: bool = True,
    check_storage_hold: bool = False,
) -> list[str]:
    """Bring the item's object lock and legal hold in line with its class; custody entries for each change.

    Returns the changes made (``retention_changed``, ``legal_hold``). Storage calls happen inside the
    caller's transaction: if it later rolls back, storage is left stricter than the database, never looser,
    and the sweeper reconciles.
    """
    if item.status == "deleted":
        return []
    facts = gather_facts(session, item)
    d = decide(facts, rules, now)
    changes: list[str] = []
    if d.extend_lock_to is not None:
        target = d.extend_lock_to.replace(microsecond=0) + timedelta(seconds=1)
        try:
            store.set_retention(item.object_key, item.version_id, target)
        except ObjectLocked:
            # Storage already holds a later date than the database knew (a rolled-back extension): adopt it.
            info = store.info(item.object_key, item.version_id)
            if info.retain_until is None or info.retain_until < d.extend_lock_to:
                raise
            target = info.retain_until
        ledger.append(
            session,
            CustodyAction.RETENTION_CHANGED,
            actor,
            item_id=item.id,
            details={
                "class": d.klass,
                "from": _iso(item.retain_until),
                "to": _iso(target),
                "cause": cause,
                "incidents": list(facts.open_incidents) + [r for r, _ in facts.closed_incidents],
            },
        )
        item.retain_until = target
        changes.append("retention_changed")
    storage_hold = item.legal_hold
    if check_storage_hold:
        storage_hold = store.info(item.object_key, item.version_id).legal_hold
    if d.hold != item.legal_hold or d.hold != storage_hold:
        store.set_legal_hold(item.object_key, item.version_id, d.hold)
        if d.hold != item.legal_hold and record_hold:
            ledger.append(
                session,
                CustodyAction.LEGAL_HOLD,
                actor,
                item_id=item.id,
                details={"on": d.hold, "holds": list(facts.holds), "cause": cause},
            )
            changes.append("legal_hold")
        item.legal_hold = d.hold
    return changes


def apply_to_family(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    item_id: str,
    rules: RetentionRules,
    now: datetime,
    actor: str,
    cause: str,
) -> dict[str, list[str]]:
    """Apply retention to an item and every item derived from it (their classes follow the original)."""
    out: dict[str, list[str]] = {}
    for member in descendants(session, item_id):
        row = session.get(EvidenceItem, member, with_for_update=True)
        if row is not None:
            out[member] = apply_retention(session, ledger, store, row, rules, now, actor, cause)
    return out


# -- legal holds -------------------------------------------------------------------------------


class RetentionRefused(Refused):
    """A retention action that may not happen (yet): linked, held, locked by storage, or already deleted."""

    status = 409
    structured = True


def _hold_items(session: Session, target_kind: str, target_id: str) -> list[str]:
    if target_kind == "evidence":
        return descendants(session, target_id)
    out: list[str] = []
    for item_id in linked_items(session, target_id):  # a row deleted by SQL still held
        out.extend(i for i in descendants(session, item_id) if i not in out)
    return out


def set_legal_hold(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    rules: RetentionRules,
    target_kind: str,
    target_id: str,
    on: bool,
    reason: str,
    actor: str,
    now: datetime,
) -> list[LegalHold]:
    """Place a hold on an evidence item or an incident, or release every active hold on it.

    Each affected item gets a ``legal_hold`` custody entry naming the hold and whether its object is
    now held (another hold may still keep it). A hold placed again by the same person for the same
    reason while it is active is that hold (the request sent again: a retry, a second click):
    nothing is recorded twice. Checked under the ledger's lock, which every placing takes first.
    """
    if target_kind not in ("evidence", "incident"):
        raise ValueError("legal holds apply to evidence or incidents")
    lock_ledger(session)
    if on:
        same = session.scalars(
            select(LegalHold)
            .where(
                LegalHold.target_kind == target_kind,
                LegalHold.target_id == target_id,
                LegalHold.released_at.is_(None),
                LegalHold.placed_by == actor,
                LegalHold.reason == reason,
            )
            .order_by(LegalHold.id)
            .limit(1)
        ).first()
        if same is not None:
            return [same]
        holds = [
            LegalHold(
                target_kind=target_kind, target_id=target_id, reason=reason, placed_by=actor, placed_at=now
            )
        ]
        session.add(holds[0])
    else:
        holds = list(
            session.scalars(
                select(LegalHold).where(
                    LegalHold.target_kind == target_kind,
                    LegalHold.target_id == target_id,
                    LegalHold.released_at.is_(None),
                )
            )
        )
        if not holds:
            raise RetentionRefused("not_held", "there is no active legal hold to release")
        for h in holds:
            h.released_at, h.released_by, h.release_reason = now, actor, reason
    session.flush()
    recorded = False
    for item_id in _hold_items(session, target_kind, target_id):
        item = session.get(EvidenceItem, item_id, with_for_update=True)
        if item is None or item.status == "deleted":
            continue
        apply_retention(
            session,
            ledger,
            store,
            item,
            rules,
            now,
            actor,
            f"legal hold {'placed' if on else 'released'}",
            record_hold=False,
        )
        ledger.append(
            session,
            CustodyAction.LEGAL_HOLD,
            actor,
            item_id=item.id,
            details={
                "on": on,
                "holds": [h.id for h in holds],
                "target": {"kind": target_kind, "id": target_id},
                "reason": reason,
                "object_held": item.legal_hold,
            },
        )
        recorded = True
    if not recorded:  # nothing linked yet (or all deleted): the hold itself is still on the ledger
        ledger.append(
            session,
            CustodyAction.LEGAL_HOLD,
            actor,
            details={
                "on": on,
                "holds": [h.id for h in holds],
                "target": {"kind": target_kind, "id": target_id},
                "reason": reason,
            },
        )
    return holds


# -- deletion ----------------------------------------------------------------------------------


def refuse_if_held_on_ledger(session: Session, item: EvidenceItem) -> None:
    """Refuse to release or delete an item whose latest ``legal_hold`` custody entry says its object
    is held, when no hold row keeps it any more: hold and link rows are database rows anyone with
    write access can delete, and the sweeper would release (then delete) what they no longer hold.
    Every release the service makes records the item's entry in the same transaction, so the ledger
    says held only when rows were changed behind its back (``evidence verify`` names which).
    One look-up in the item's own chain (indexed)."""
    row = session.scalars(
        select(CustodyEntry)
        .where(CustodyEntry.item_id == item.id, CustodyEntry.action == CustodyAction.LEGAL_HOLD)
        .order_by(CustodyEntry.item_seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return
    seq, held = item_hold_replay([to_signed(row)]).get(item.id, (None, False))
    if held:
        log.warning(
            "retention refused: held on the ledger, not in the database",
            extra={"reason": "held_on_ledger", "item": item.id, "entry": seq},
        )
        raise RetentionRefused(
            "held_on_ledger",
            f"custody entry #{seq} holds evidence item {item.id} but no active legal hold row does "
            "(a hold or a link changed in the database): not released",
        )


def _tombstone(item: EvidenceItem, reason: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "reason": reason,
        "sha256": item.sha256,
        "size": item.size,
        "bucket": item.bucket,
        "key": item.object_key,
        "version_id": item.version_id,
        **extra,
    }


def held_packages(session: Session, item_id: str) -> list[str]:
    """Export packages still held whose zip is assembled from this item's stored object.

    A package's layout names its media objects instead of copying them, so while the package is held
    those objects must be too. Its ``exported`` custody entries (signed, append-only) say which
    packages took the item's bytes; packages stored whole (before layouts) need nothing and are skipped.
    """
    ids = set()
    for details in session.scalars(
        select(CustodyEntry.details).where(
            CustodyEntry.item_id == item_id, CustodyEntry.action == CustodyAction.EXPORTED
        )
    ):
        d = json.loads(details)
        if d.get("media_included") and isinstance(d.get("export_id"), str):
            ids.add(d["export_id"])
    if not ids:
        return []
    return sorted(
        session.scalars(
            select(EvidenceItem.id).where(
                EvidenceItem.id.in_(ids),
                EvidenceItem.status != "deleted",
                EvidenceItem.content_type == package_layout.CONTENT_TYPE,
            )
        )
    )


def _refuse_if_packaged(session: Session, item: EvidenceItem) -> None:
    packages = held_packages(session, item.id)
    if packages:
        raise RetentionRefused(
            "in_export_package",
            f"the held export package {', '.join(packages)} is assembled from this item's bytes",
        )


def _delete_object(store: ObjectStore, item: EvidenceItem) -> None:
    try:
        store.delete_version(item.object_key, item.version_id)
    except ObjectLocked as exc:
        until = f" until {_iso(item.retain_until)}" if item.retain_until else ""
        raise RetentionRefused(
            "storage_locked", f"storage refuses deletion: object locked{until} ({exc})"
        ) from exc


def _delete(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    item: EvidenceItem,
    actor: str,
    reason: str,
    facts: dict[str, Any],
) -> None:
    """The last steps of every deletion, by hand or by the sweeper: refused while the ledger holds
    the item or a held package is assembled from it; else its object removed, its row marked and
    its ``deleted`` entry (the tombstone, with ``reason`` and ``facts``) appended."""
    refuse_if_held_on_ledger(session, item)
    _refuse_if_packaged(session, item)
    _delete_object(store, item)
    item.status = "deleted"
    ledger.append(
        session, CustodyAction.DELETED, actor, item_id=item.id, details=_tombstone(item, reason, facts)
    )


def delete_by_hand(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    item_id: str,
    actor: str,
    reason: str,
    now: datetime,
) -> EvidenceItem:
    """Delete one item before the sweeper would (for example footage recorded by mistake), with a tombstone.

    Refused while it is linked to any incident or held, and by storage while its object lock lasts.
    """
    lock_ledger(session)
    item = session.get(EvidenceItem, item_id, with_for_update=True)
    if item is None:
        raise RetentionRefused("not_found", "no such evidence item")
    if item.status == "deleted":
        raise RetentionRefused("already_deleted", "evidence item already deleted", 410)
    ids = lineage(session, item)
    incidents = active_link_incidents(session, ids)
    if incidents:
        refs = ", ".join(sorted(i.reference for i in incidents))
        raise RetentionRefused("linked", f"evidence is linked to {refs}; unlink it first")
    if active_holds(session, ids, []) or item.legal_hold:
        raise RetentionRefused("legal_hold", "evidence is under legal hold")
    _delete(session, ledger, store, item, actor, reason, {"by_hand": True, "at": _iso(now)})
    return item


@dataclass
class SweepReport:
    checked: int = 0
    deleted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # item -> why storage or the rules refused
    renewed: dict[str, list[str]] = field(default_factory=dict)  # item -> changes made
    errors: dict[str, str] = field(default_factory=dict)


def _expiry_candidates(
    session: Session, rules: RetentionRules, now: datetime, batch: int, after: str
) -> list[str]:
    # A superset of what decide() will find expired: the bounded base is the capture time or the arrival.
    base = func.coalesce(EvidenceItem.captured_start, EvidenceItem.created_at)
    return list(
        session.scalars(
            select(EvidenceItem.id)
            .where(
                EvidenceItem.status != "deleted",
                EvidenceItem.legal_hold.is_(False),
                EvidenceItem.id > after,
                func.coalesce(EvidenceItem.retain_until, EvidenceItem.created_at) <= now,
                or_(base <= now - rules.unlinked, EvidenceItem.created_at <= now - rules.unlinked),
            )
            .order_by(EvidenceItem.id)
            .limit(batch)
        )
    )


def _reconcile_candidates(session: Session, batch: int, after: str) -> list[str]:
    linked = select(IncidentLink.target_id).where(
        IncidentLink.target_kind == "evidence", IncidentLink.unlinked_at.is_(None)
    )
    held = select(LegalHold.target_id).where(
        LegalHold.target_kind == "evidence", LegalHold.released_at.is_(None)
    )
    return list(
        session.scalars(
            select(EvidenceItem.id)
            .where(
                EvidenceItem.status != "deleted",
                EvidenceItem.id > after,
                or_(
                    EvidenceItem.id.in_(linked),
                    EvidenceItem.derived_from_id.in_(linked),
                    EvidenceItem.id.in_(held),
                    EvidenceItem.legal_hold.is_(True),
                ),
            )
            .order_by(EvidenceItem.id)
            .limit(batch)
        )
    )


def sweep(
    db: Database,
    ledger: Ledger,
    store: ObjectStore,
    rules: RetentionRules,
    clock: Clock = system_clock,
    *,
    batch: int = 200,
    actor: str = SWEEPER,
) -> SweepReport:
    """Renew locks and holds of linked and held evidence, then delete every item whose class has expired.

    One transaction per item, each re-checking under the ledger and row locks, so a link made while the
    sweeper runs always wins. Deleting is an object-version delete that storage refuses while locked; a
    refusal leaves the item untouched. A deleted item keeps its row (status ``deleted``) and gets a
    ``deleted`` custody entry carrying its hash.
    """
    now = clock()
    report = SweepReport()
    after = ""
    while True:
        with db.session() as session:
            ids = _reconcile_candidates(session, batch, after)
        for item_id in ids:
            try:
                with db.session() as session:
                    lock_ledger(session)
                    item = session.get(EvidenceItem, item_id, with_for_update=True)
                    if item is None:
                        continue
                    if item.legal_hold and not gather_facts(session, item).holds:
                        refuse_if_held_on_ledger(session, item)  # a release no entry records
                    changes = apply_retention(
                        session,
                        ledger,
                        store,
                        item,
                        rules,
                        now,
                        actor,
                        "renewal",
                        check_storage_hold=item.legal_hold,
                    )
                if changes:
                    report.renewed[item_id] = changes
            except RetentionRefused as exc:
                report.refused[item_id] = str(exc)
            except StorageError as exc:
                report.errors[item_id] = str(exc)
        if len(ids) < batch:
            break
        after = ids[-1]
    after = ""
    while True:
        with db.session() as session:
            ids = _expiry_candidates(session, rules, now, batch, after)
        for item_id in ids:
            report.checked += 1
            try:
                with db.session() as session:
                    lock_ledger(session)
                    item = session.get(EvidenceItem, item_id, with_for_update=True)
                    if item is None or item.status == "deleted":
                        continue
                    d = decide(gather_facts(session, item), rules, now)
                    if not d.expired:
                        continue
                    facts = {"class": d.klass, "keep_until": _iso(d.keep_until)}
                    _delete(session, ledger, store, item, actor, "retention expired", facts)
                report.deleted.append(item_id)
            except RetentionRefused as exc:
                report.refused[item_id] = str(exc)
            except StorageError as exc:
                report.errors[item_id] = str(exc)
        if len(ids) < batch:
            break
        after = ids[-1]
    if report.deleted or report.refused or report.errors:
        log.info(
            "retention sweep",
            extra={
                "deleted": len(report.deleted),
                "refused": len(report.refused),
                "errors": len(report.errors),
                "renewed": len(report.renewed),
            },
        )
    return report


async def retention_loop(
    db: Database,
    ledger: Ledger,
    store: ObjectStore,
    rules: RetentionRules,
    every_seconds: float,
    clock: Clock = system_clock,
) -> None:
    """Sweep forever; several processes may run it at once (each item is decided under its locks)."""
    while True:
        try:
            await asyncio.to_thread(sweep, db, ledger, store, rules, clock)
        except Exception:  # noqa: BLE001 - the loop must survive anything
            log.exception("retention sweep failed")
        await asyncio.sleep(every_seconds)


def as_json(report: SweepReport) -> str:
    return json.dumps(
        {
            "checked": report.checked,
            "deleted": report.deleted,
            "refused": report.refused,
            "renewed": report.renewed,
            "errors": report.errors,
        }
    )
