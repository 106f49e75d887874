"""Whole-service verification: the ledger chain, its checkpoints, every item row and every stored object.

Each finding names exactly what is wrong (an edited row, a deleted entry, a swapped object, a bad
signature) so that an auditor can act on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from storage.db import ReadingSession
from storage.objects import ObjectStore, StorageError

from . import package_layout
from .alarm_seals import check_alarm_seals
from .block_lists import LISTED, details_blocks, list_problem, listed_commitments
from .checkpoints import Checkpoint, read_checkpoints
from .entries import (
    GENESIS,
    ChainReport,
    CustodyAction,
    Problem,
    SignedEntry,
    Verifier,
    check_entry,
    check_global_chain,
    details_object,
    viewing_named,
)
from .heard_seals import check_heard_seals
from .incident_seals import check_incident_seals
from .keys import ServiceKey
from .ledger import Ledger, to_signed
from .lifecycle_seals import check_lifecycle_seals
from .merkle import MerkleTree, leaf_hash, verify_consistency
from .models import CustodyEntry, EvidenceBlockList, EvidenceItem, LedgerHead, ViewingRange, ViewingSession
from .outbox_seals import check_outbox_seals
from .quarantines import check_releases, row_problem, standings
from .raise_seals import check_raise_seals
from .reach_seals import check_reach_seals
from .replay_seals import check_replay_seals
from .row_checks import check_row_families
from .row_replay import ITEM_SCOPE, PASSWORD_DIGESTS, item_scope_mac
from .row_seals import check_row_seals
from .signed_tree_head import TreeHead
from .sweep_cursor import check_sweep_checkpoint
from .tree_heads import sample_tree_heads
from .viewing import RANGE_CHAIN, chain_problem, seal_mismatch
from .visit_seals import check_visit_seals
from .waiting_cancels import check_set_aside_events, check_waiting_cancels
from .watched_seals import check_watched_seals

TREE_HEAD_SAMPLE = 32

# The row's fields its ``stored`` entry records, and under which name: the object and its digests,
# and what the item is (an original or a copy derived from one: whether a read needs a reason and
# an export needs authority for originals is decided by these).
RECORD_FIELDS = ("bucket", "object_key", "version_id", "sha256", "blake3", "size", "kind", "derived_from_id")
RECORDED_AS = {"object_key": "key", "derived_from_id": "derived_from"}


HIDDEN = (
    "deleted by name in storage: a delete marker hides it from a plain listing, and its locked "
    "version, still kept, was read all the same"
)


def row_disagreements(item: EvidenceItem, stored: Mapping[str, Any]) -> list[str]:
    """Where the item's row differs from its ``stored`` custody details, one sentence a field: the
    row is what objects are found and re-checked by, the custody entry is hashed and signed."""
    out = []
    for f in RECORD_FIELDS:
        recorded = stored.get(RECORDED_AS.get(f, f))
        if recorded != getattr(item, f):
            out.append(f"{f} is {getattr(item, f)!r} in the database but {recorded!r} in the custody record")
    return out


def unrecorded(it: EvidenceItem, stored: SignedEntry | None, verify_sig: Verifier) -> str | None:
    """Why the item's row cannot be trusted for its object and digests, or None. Objects are found
    and re-checked by the row (media against its BLAKE3, while manifests carry its SHA-256), so
    the row must say what the item's ``stored`` custody entry says, and that entry must be intact
    and signed by the service."""
    if stored is None:
        return f"evidence item {it.id} has no 'stored' custody entry"
    broken = check_entry(stored, verify_sig)
    if broken:
        return f"evidence item {it.id}: its 'stored' custody entry fails its check ({broken[0]})"
    differ = row_disagreements(it, json.loads(stored.body.details))
    return f"evidence item {it.id}: {differ[0]}" if differ else None


@dataclass
class VerifyOptions:
    check_objects: bool = True
    item_ids: list[str] | None = None
    # Signed tree heads read besides the newest and the oldest (None: every one, however many).
    tree_head_sample: int | None = TREE_HEAD_SAMPLE


Checkpoints = tuple[list[Checkpoint], list[str], list[str]]  # read_checkpoints: good, bad, hidden
SampledHeads = tuple[list[TreeHead], list[str], int, list[str]]  # sample_tree_heads


@dataclass(frozen=True)
class StoredEnds:
    """What write-once storage holds of the ledger's end, read before the ledger is (each item, or
    the storage error that kept it from being read)."""

    checkpoints: Checkpoints | StorageError
    tree_heads: SampledHeads | StorageError


def read_stored_ends(store: ObjectStore, key: ServiceKey, sample: int | None) -> StoredEnds:
    """The checkpoints and the signed tree heads (``sample``: see ``VerifyOptions``) in storage now.
    Each is written after the commit of what it covers, so read before the ledger's snapshot it
    covers nothing the snapshot lacks: one that does marks a cut."""
    checkpoints: Checkpoints | StorageError
    heads: SampledHeads | StorageError
    try:
        checkpoints = read_checkpoints(store, key)
    except StorageError as exc:
        checkpoints = exc
    try:
        heads = sample_tree_heads(store, key, sample)
    except StorageError as exc:
        heads = exc
    return StoredEnds(checkpoints, heads)


def end_reading(session: Session) -> None:
    """End a ``Database.reading`` session's transaction (its snapshot), keeping what it read: the
    objects read stay usable, and a later read begins a new one. Any other session is left as it
    is (its caller owns its transaction)."""
    if isinstance(session, ReadingSession):
        session.expunge_all()
        session.rollback()


def _stored_records(session: Session) -> dict[str, dict[str, object] | int]:
    """The 'stored' custody details of every item: what the ledger says each object is; for an item
    whose entry's details are not a JSON object (edited by SQL), that entry's number instead."""
    out: dict[str, dict[str, object] | int] = {}
    for seq, item_id, details in session.execute(
        select(CustodyEntry.seq, CustodyEntry.item_id, CustodyEntry.details).where(
            CustodyEntry.action == CustodyAction.STORED
        )
    ):
        if item_id:
            d = details_object(details)
            out[item_id] = seq if d is None else d
    return out


def _deleted_items(session: Session) -> set[str]:
    return {
        i
        for (i,) in session.execute(
            select(CustodyEntry.item_id).where(CustodyEntry.action == CustodyAction.DELETED)
        )
        if i is not None
    }


def whole(value: object, *allowed: object) -> bool:
    """Whether ``value`` is a whole number (or one of ``allowed``, such as None)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or any(value is a for a in allowed)


def check_entry_numbers(
    session: Session, verify_sig: Verifier, report: ChainReport
) -> dict[int, SignedEntry]:
    """Name every ledger row whose ``seq`` or ``item_seq`` is not a whole number (text, a fraction,
    bytes: SQLite keeps whatever SQL writes into a column; PostgreSQL's refuses it), as
    ``entry_number_not_integer``. No entry of the service is numbered so, and code that does
    arithmetic on the number would otherwise fail on it. Each is placed where its hash links put it
    (after the entry its ``prev_hash`` names, in a gap of the chain) and said whether its content and
    signature hold with that number, i.e. whether only its number was changed; the entries so
    placed, by that number, for the chain's walk."""
    if session.get_bind().dialect.name != "sqlite":
        return {}
    rows = list(
        session.scalars(
            select(CustodyEntry)
            .where(
                or_(
                    func.typeof(CustodyEntry.seq) != "integer",
                    and_(CustodyEntry.item_seq.is_not(None), func.typeof(CustodyEntry.item_seq) != "integer"),
                )
            )
            .order_by(CustodyEntry.id)
        )
    )
    entries = [to_signed(row) for row in rows]
    renumbered = [e for e in entries if not whole(e.body.seq)]
    # Placed where their links put them, after an entry whose number is whole or one already placed
    # (two renumbered in a row), in a gap: as many passes as it takes.
    placed: dict[int, SignedEntry] = {}
    place_of: dict[str, int] = {}
    left = list(renumbered)
    while left:
        for entry in left:
            b = entry.body
            before = place_of.get(b.prev_hash) if b.prev_hash != GENESIS else 0
            if before is None:
                before = session.scalar(
                    select(CustodyEntry.seq).where(
                        CustodyEntry.entry_hash == b.prev_hash, func.typeof(CustodyEntry.seq) == "integer"
                    )
                )
            if before is None:
                continue
            place = int(before) + 1
            if place in placed or session.get(CustodyEntry, place) is not None:
                continue  # its place is taken: not a gap it fills
            placed[place] = SignedEntry(replace(b, seq=place), entry.entry_hash, entry.signature)
            place_of[entry.entry_hash] = place
        still = [e for e in left if e.entry_hash not in place_of]
        if len(still) == len(left):
            break
        left = still
    for entry in entries:
        b = entry.body
        odd = [(c, v) for c, v in (("seq", b.seq), ("item_seq", b.item_seq)) if not whole(v, None)]
        named = "; ".join(f"its {c} is {v!r} ({type(v).__name__})" for c, v in odd)
        named += ", not a whole number: no entry of the service is numbered so"
        if not whole(b.seq):
            at = place_of.get(entry.entry_hash)
            if at is None:
                named += "; its hash links give it no free place in the chain"
            else:
                named += f"; its hash links put it at #{at}, " + (
                    "where its hash and signature hold: only its number was changed"
                    if _holds(placed[at], verify_sig)
                    else "where its content does not match its recorded hash or signature (edited too)"
                )
        report.problems.append(Problem("entry_number_not_integer", f"custody entry {b.id}", named))
    return placed


def _holds(entry: SignedEntry, verify_sig: Verifier) -> bool:
    """Whether the entry's hash and signature hold over its body as it stands."""
    try:
        canonical = entry.body.canonical()
    except (TypeError, ValueError):
        return False
    digest = hashlib.sha256(canonical).hexdigest()
    return digest == entry.entry_hash and verify_sig(entry.signature, canonical)


def verify_service(
    session: Session,
    store: ObjectStore,
    key: ServiceKey,
    options: VerifyOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChainReport:
    """The whole service's evidence checked, each finding named (see the module's docstring).

    It runs beside a working service. What storage holds of the ledger's end (the write-once
    checkpoints and signed tree heads, each written after the commit it covers) is read before the
    first statement in ``session``, and ``session`` is meant to read one moment of the database
    (``Database.reading``: its snapshot starts at its first statement), so what is committed while
    it runs (an alarm escalated, an item stored, a head written) is neither half seen nor taken for a
    cut or an alteration: it is for the next run. Call it with a session that has read nothing yet."""
    options = options or VerifyOptions()
    report = ChainReport()
    ledger = Ledger(key)
    say = progress or (lambda _msg: None)

    say("reading the checkpoints and signed tree heads in storage")
    ends = read_stored_ends(store, key, options.tree_head_sample)

    # 1. The global chain: every entry intact, signed, linked, none missing. A row whose number is
    # not a whole number (SQLite keeps what SQL writes) is named, and walked where its links put it.
    say("checking the custody ledger")
    renumbered = check_entry_numbers(session, ledger.verifier, report)
    entries: list[SignedEntry] = []

    def collect() -> object:
        for e in ledger.all_entries(session):
            if not whole(e.body.seq):
                continue  # named above
            entries.append(e)
            yield e

    tip = check_global_chain(collect(), ledger.verifier, report, renumbered)  # type: ignore[arg-type]
    if renumbered:  # each in the place its links give it, as the rest of the checks read the ledger
        entries = sorted([*entries, *renumbered.values()], key=lambda e: e.body.seq)
    # The chain starts at #1, so a walk of it never sees a row planted at #0 or below; code that takes
    # "the earliest entry" would. Each is named, however it is signed.
    for (seq,) in session.execute(
        select(CustodyEntry.seq).where(CustodyEntry.seq < 1).order_by(CustodyEntry.seq)
    ):
        if not whole(seq):
            continue  # named above
        report.problems.append(
            Problem(
                "entry_outside_chain",
                f"custody entry #{seq}",
                "a row numbered before the ledger's first entry: no entry of the service is numbered so",
            )
        )
    by_seq = {e.body.seq: e for e in entries}

    # 2. Per-item chains (an item with an entry whose number in it is not a whole number is named
    # above, by that entry: its chain cannot be put in order).
    per_item: dict[str, list[SignedEntry]] = {}
    misnumbered_items = {e.body.item_id for e in entries if not whole(e.body.item_seq, None)}
    for e in entries:
        if e.body.item_id and e.body.item_id not in misnumbered_items:
            per_item.setdefault(e.body.item_id, []).append(e)
    for item_id, chain in per_item.items():
        prev = None
        for i, e in enumerate(sorted(chain, key=lambda x: x.body.item_seq or 0), start=1):
            if e.body.item_seq != i or e.body.item_prev_hash != prev:
                report.problems.append(
                    Problem(
                        "item_chain_broken",
                        f"custody entry #{e.body.seq} (item {item_id})",
                        f"item entry {i} does not link to the one before it (an entry of this item was removed)",
                    )
                )
                break
            prev = e.entry_hash

    # 3. The head row and the write-once checkpoints: nothing cut off the end.
    head = session.get(LedgerHead, 1)
    last_seq = entries[-1].body.seq if entries else 0
    if head is not None and (head.last_seq != last_seq or head.last_hash != tip):
        report.problems.append(
            Problem(
                "ledger_truncated",
                "ledger head",
                f"head records #{head.last_seq} but the ledger ends at #{last_seq} (entries removed from the end)",
            )
        )
    say("checking checkpoints")
    if isinstance(ends.checkpoints, StorageError):
        report.problems.append(Problem("storage_unreachable", "checkpoints", str(ends.checkpoints)))
    else:
        checkpoints, bad, hidden = ends.checkpoints
        for name in bad:
            report.problems.append(Problem("bad_checkpoint", name, "checkpoint signature does not verify"))
        for name in hidden:
            report.problems.append(Problem("hidden_checkpoint", name, HIDDEN))
        for cp in checkpoints:
            at = by_seq.get(cp.seq)
            if at is None:
                report.problems.append(
                    Problem(
                        "ledger_truncated", f"checkpoint #{cp.seq}", "the entry this checkpoint names is gone"
                    )
                )
            elif at.entry_hash != cp.entry_hash:
                report.problems.append(
                    Problem(
                        "entry_altered", f"custody entry #{cp.seq}", "hash differs from the signed checkpoint"
                    )
                )

    say("checking signed tree heads")
    chain_known_broken = bool(report.problems)
    check_tree_heads(ends.tree_heads, entries, report, chain_known_broken)
    say("checking viewings")
    check_viewings(session, entries, report, key.derived_secret(RANGE_CHAIN))
    if not options.item_ids:  # one item's check reads its own rows only
        say("checking links, legal holds, users, assignments, download links, staff and devices")
        check_row_families(session, entries, report, key.derived_secret(PASSWORD_DIGESTS))
        say("checking the seals of devices, users, bearer tokens, console sessions and read grants")
        check_row_seals(session, report, key)
        say(
            "checking the seals of members of staff, evidence items, alarms, incidents and visits (who reaches them)"
        )
        check_reach_seals(session, report, key)
        check_alarm_seals(session, report, key)
        check_incident_seals(session, report, key)
        check_visit_seals(session, report, key, entries)
        check_heard_seals(session, report, key)
        check_lifecycle_seals(session, report, key, entries)
        check_outbox_seals(session, report, key, entries)
        check_watched_seals(session, report, key)
        check_replay_seals(session, report, key)
        check_raise_seals(session, report, key, entries)
        check_waiting_cancels(session, report, key)
        check_set_aside_events(session, report)
        check_sweep_checkpoint(session, report, key)

    # 4. Item rows against the ledger, and stored objects against their recorded hash.
    say("checking evidence items")
    records = _stored_records(session)
    listed_later = listed_commitments(session)  # lists kept after a whole check (``later_lists``)
    deleted = _deleted_items(session)
    quarantines = standings(session, ledger.verifier, options.item_ids)
    check_releases(quarantines, report)
    q = select(EvidenceItem)
    if options.item_ids:
        q = q.where(EvidenceItem.id.in_(options.item_ids))
    seen: set[str] = set()
    scope_secret, unscoped = key.derived_secret(ITEM_SCOPE), 0
    packages: list[EvidenceItem] = []
    unsound: dict[str, Problem] = {}  # item id -> the one finding about its object
    to_hash: list[tuple[EvidenceItem, dict[str, object]]] = []  # checked against storage once read
    for item in session.scalars(q):
        seen.add(item.id)
        where = f"evidence item {item.id}"
        rec = records.get(item.id)
        if rec is None:
            report.problems.append(
                Problem("item_unrecorded", where, "no 'stored' custody entry for this item")
            )
            continue
        if not isinstance(rec, dict):
            why = f"its 'stored' custody entry #{rec} cannot be read (its details are not a JSON object)"
            report.problems.append(
                Problem("item_unrecorded", where, why + ": its row and object are not checked against it")
            )
            continue
        for detail in row_disagreements(item, rec):
            report.problems.append(Problem("item_row_altered", where, detail))
        committed = rec.get("blocks")
        if committed is None and item.id in listed_later:
            committed = details_blocks(LISTED, listed_later[item.id], str(rec["sha256"]), item.size)
        listed = list_problem(
            session.get(EvidenceBlockList, item.id),
            committed if isinstance(committed, dict) else None,
            item.size,
        )
        if listed is not None:
            report.problems.append(Problem("block_list_altered", where, f"{listed}: its ranges are refused"))
        if "scope_mac" not in rec:
            unscoped += 1
        elif rec["scope_mac"] != item_scope_mac(scope_secret, item.wearer, item.source_device_id):
            report.problems.append(
                Problem(
                    "item_scope_altered",
                    where,
                    f"its wearer {item.wearer!r} or recording device {item.source_device_id!r} is not "
                    "what its 'stored' custody entry records (changed in the database: which site's "
                    "managers see an item follows them)",
                )
            )
        held = row_problem(item, quarantines.get(item.id))
        if held is not None:
            report.problems.append(Problem("item_row_altered", where, held))
        if item.status == "deleted" or item.id in deleted:
            if item.id not in deleted or item.status != "deleted":
                report.problems.append(
                    Problem("item_row_altered", where, "deletion status disagrees with ledger")
                )
            continue
        if options.check_objects:
            to_hash.append((item, rec))
    # Every row is read: hashing the objects may take hours, and a snapshot held that long would keep
    # PostgreSQL from clearing the rows the service rewrites all the time (devices' state, outbox).
    end_reading(session)
    for item, rec in to_hash:
        where = f"evidence item {item.id}"
        try:
            # Both digests: exports re-check objects with the BLAKE3, so it must be right as well.
            found = store.digests_of(str(rec["key"]), rec.get("version_id"))  # type: ignore[arg-type]
        except StorageError as exc:
            gone = any(code in str(exc) for code in ("NoSuchKey", "NoSuchVersion", "NoSuchBucket"))
            kind = "object_missing" if gone else "object_unreadable"
            unsound[item.id] = Problem(
                kind, where, f"stored object cannot be read (storage integrity check failed?): {exc}"
            )
            report.problems.append(unsound[item.id])
            continue
        digest, blake3 = found.hexdigests()
        size = found.size
        if digest != rec["sha256"] or size != rec["size"]:
            unsound[item.id] = Problem(
                "object_altered",
                where,
                f"stored object hashes to {digest} ({size} bytes), custody record says "
                f"{rec['sha256']} ({rec['size']} bytes): object swapped or altered",
            )
            report.problems.append(unsound[item.id])
        elif rec.get("blake3") is not None and blake3 != rec["blake3"]:
            unsound[item.id] = Problem(
                "digest_mismatch",
                where,
                f"stored object's SHA-256 matches its custody record but its BLAKE3 is {blake3}, "
                f"the record says {rec['blake3']}: exports of it will be refused",
            )
            report.problems.append(unsound[item.id])
        elif item.content_type == package_layout.CONTENT_TYPE:
            packages.append(item)
    say("checking export packages")
    used_by: dict[str, list[str]] = {}
    for package in packages:
        for item_id in _check_package_references(session, store, package, report):
            used_by.setdefault(item_id, []).append(package.id)
    for item_id, problem in unsound.items():
        if item_id in used_by:
            names = ", ".join(sorted(used_by[item_id]))
            problem.detail += f"; export packages assembled from it, which cannot be served whole: {names}"
    if unscoped:
        report.notes.append(
            f"the wearer and recording device of {unscoped} item(s) stored before they were recorded "
            "are not in their custody record, so not checked"
        )
    if not options.item_ids:
        for item_id in records.keys() - seen:
            report.problems.append(
                Problem(
                    "item_row_deleted", f"evidence item {item_id}", "custody records it but its row is gone"
                )
            )
    return report


def kept_chain(session: Session, viewing_id: str) -> list[tuple[int, int, int, datetime, str | None]]:
    """A viewing's ranges in order with their chain links (``viewing.chain_problem``)."""
    rows = session.execute(
        select(
            ViewingRange.n, ViewingRange.first_byte, ViewingRange.last_byte, ViewingRange.at, ViewingRange.mac
        )
        .where(ViewingRange.viewing_id == viewing_id)
        .order_by(ViewingRange.n)
    )
    return [(n, first, last, at, mac) for n, first, last, at, mac in rows]


def check_viewings(
    session: Session, entries: list[SignedEntry], report: ChainReport, secret: bytes | None = None
) -> None:
    """Viewings both ways, the ledger against ``viewing_sessions`` and ``viewing_ranges``: every
    ``viewed`` entry naming a viewing has its row (same item, person, purpose, opening entry) and
    every row its ``viewed`` entry; every ``viewing_closed`` entry has its row, sealed by it, once;
    a row closed without a seal, sealed twice or sealed before it opened is named; each sealed
    viewing's kept ranges are recomputed against its seal (a range removed, added or altered after
    it), a seal that says its ranges were altered before it is named, and (with the service key's
    ``secret``) an open viewing's ranges must chain from its opening entry (``viewing.chain_problem``;
    the seal checked the chain of a sealed one)."""
    opens: dict[str, list[SignedEntry]] = {}
    seals: dict[str, list[SignedEntry]] = {}
    for e in entries:
        viewing = viewing_named(e)
        if viewing is None:
            continue  # not a viewing's step (a whole read is an entry of its own)
        (opens if e.body.action == CustodyAction.VIEWED else seals).setdefault(viewing, []).append(e)
    rows = {
        r.id: r
        for r in session.scalars(select(ViewingSession).order_by(ViewingSession.opened_at, ViewingSession.id))
    }
    if not opens and not seals and not rows:
        return

    def found(kind: str, viewing_id: str, detail: str) -> None:
        report.problems.append(Problem(kind, f"viewing {viewing_id}", detail))

    for viewing_id in sorted(opens.keys() - rows.keys()):
        seqs = ", ".join(f"#{e.body.seq}" for e in opens[viewing_id])
        found("viewing_row_missing", viewing_id, f"custody entry {seqs} opened it but its row is gone")
    for viewing_id in sorted(seals.keys() - rows.keys()):
        seqs = ", ".join(f"#{e.body.seq}" for e in seals[viewing_id])
        found("viewing_row_missing", viewing_id, f"custody entry {seqs} sealed it but its row is gone")
    for viewing_id, opened in opens.items():
        if len(opened) > 1:
            seqs = ", ".join(f"#{e.body.seq}" for e in opened)
            found("viewing_opened_twice", viewing_id, f"custody entries {seqs} each open it")
    for viewing_id, row in rows.items():
        opening = next(iter(opens.get(viewing_id, [])), None)
        sealed = seals.get(viewing_id, [])
        if opening is None:
            found(
                "viewing_unopened",
                viewing_id,
                f"its row (item {row.item_id}, {row.actor}) has no 'viewed' entry naming it (row "
                f"inserted in the database, or its opening entry removed); it names #{row.opened_seq}",
            )
        else:
            d = json.loads(opening.body.details)
            expected = {
                "opening entry": (opening.body.seq, row.opened_seq),
                "item": (opening.body.item_id, row.item_id),
                "person": (opening.body.actor, row.actor),
                "purpose": (d.get("purpose"), row.purpose),
            }
            for what, (recorded, kept) in expected.items():
                if recorded != kept:
                    found(
                        "viewing_row_altered",
                        viewing_id,
                        f"its {what} is {kept!r} in the database but {recorded!r} in custody entry "
                        f"#{opening.body.seq}",
                    )
        if len(sealed) > 1:
            seqs = ", ".join(f"#{e.body.seq}" for e in sealed)
            found("viewing_sealed_twice", viewing_id, f"custody entries {seqs} each seal it")
        if not sealed:
            if row.closed_seq is not None or row.open_key is None:
                found(
                    "viewing_closed_unsealed",
                    viewing_id,
                    "its row is closed but no 'viewing_closed' entry seals it (set aside as not "
                    "opened through the ledger, or its seal removed)"
                    if row.closed_seq is None
                    else f"its row names custody entry #{row.closed_seq} as its seal, which is not",
                )
            elif (
                secret is not None
                and opening is not None
                and "viewing_key" in json.loads(opening.body.details)
            ):
                # open (and opened since its ranges are chained): its ranges so far must chain
                problem = chain_problem(
                    secret, viewing_id, opening.entry_hash, kept_chain(session, viewing_id), row.ranges
                )
                if problem is not None:
                    found("viewing_ranges_altered", viewing_id, f"open since #{opening.body.seq}: {problem}")
            continue
        seal = sealed[0]
        details = json.loads(seal.body.details)
        where = f"custody entry #{seal.body.seq}"
        if row.closed_seq != seal.body.seq or row.open_key is not None:
            found(
                "viewing_row_altered",
                viewing_id,
                f"sealed by {where} but its row says "
                + ("it is still open" if row.open_key is not None else f"#{row.closed_seq}"),
            )
        for what, (recorded, kept) in {
            "item": (seal.body.item_id, row.item_id),
            "person": (details.get("viewer"), row.actor),
            "purpose": (details.get("purpose"), row.purpose),
        }.items():
            if recorded != kept:
                found(
                    "viewing_row_altered",
                    viewing_id,
                    f"its {what} is {kept!r} in the database but {recorded!r} in its seal ({where})",
                )
        if opening is not None and seal.body.seq < opening.body.seq:
            found("viewing_sealed_before_opened", viewing_id, f"{where} precedes #{opening.body.seq}")
        if details.get("ranges_altered"):
            found(
                "viewing_ranges_altered_before_seal",
                viewing_id,
                f"{where} says its ranges were altered while it was open: {details['ranges_altered']}",
            )
        kept = kept_chain(session, viewing_id)
        problem = seal_mismatch(details, [(n, first, last, at) for n, first, last, at, _ in kept])
        if problem is not None:
            found("viewing_ranges_altered", f"{viewing_id} ({where})", problem)


def check_tree_heads(
    stored: SampledHeads | StorageError,
    entries: list[SignedEntry],
    report: ChainReport,
    chain_known_broken: bool = False,
) -> int:
    """The ledger against every signed tree head in write-once storage: the newest must be covered
    (nothing cut off the end), each must be the root of the ledger's first entries as they are now
    (nothing altered or reordered before it), and each must be consistent with the one before it
    (RFC 9162 section 2.1.4), checked with the proof the ledger gives. ``chain_known_broken``: an
    entry was already named as altered or missing, so a root that disagrees is not named again.

    ``stored``: the heads read (``tree_heads.sample_tree_heads``: the newest, the oldest and a
    sample at random, or all), before the ledger was (:func:`read_stored_ends`). Returns how many
    tree heads were read."""
    if isinstance(stored, StorageError):
        report.problems.append(Problem("storage_unreachable", "tree heads", str(stored)))
        return 0
    heads, bad, stored_count, hidden = stored
    for name in bad:
        report.problems.append(Problem("bad_tree_head", name, "not a tree head signed by the service key"))
    for name in hidden:
        report.problems.append(Problem("hidden_tree_head", name, HIDDEN))
    read = len(heads) + len(bad)
    if read < stored_count:
        report.notes.append(
            f"read {read} of {stored_count} signed tree heads (the newest, the oldest and {read - 2} at "
            "random); --all-tree-heads reads every one"
        )
    if not heads:
        return read
    tree = MerkleTree()
    for e in entries:
        try:
            leaf = leaf_hash(e.body.canonical())
        except (TypeError, ValueError):  # a row that is no entry's content, named by the chain's walk
            leaf = leaf_hash(b"unreadable entry " + e.entry_hash.encode())
        tree.append(leaf)
    newest = heads[-1]
    if newest.tree_size > tree.size:
        detail = (
            f"the newest signed tree head covers {newest.tree_size} entries but the ledger holds "
            f"{tree.size}: entries #{tree.size + 1}..#{newest.tree_size} were removed"
        )
        known = next((p for p in report.problems if p.kind == "ledger_truncated"), None)
        if known is not None:  # the same cut, already named by the head row or a checkpoint
            known.detail += f"; {detail}"
        else:
            report.problems.append(
                Problem(
                    "ledger_truncated",
                    f"tree head of {newest.tree_size} entries ({newest.timestamp})",
                    detail,
                )
            )
    previous: TreeHead | None = None
    for head in heads:
        where = f"tree head of {head.tree_size} entries ({head.timestamp})"
        if head.tree_size <= tree.size and tree.root(head.tree_size).hex() != head.root_hash:
            if chain_known_broken:
                return read
            report.problems.append(
                Problem(
                    "tree_head_mismatch",
                    where,
                    "the ledger's first entries no longer hash to this signed root: an entry up to "
                    f"#{head.tree_size} was altered, removed or reordered",
                )
            )
            return read  # every later head disagrees for the same reason
        if previous is not None and previous.tree_size < head.tree_size <= tree.size:
            proof = tree.consistency_proof(previous.tree_size, head.tree_size)
            if not verify_consistency(
                previous.tree_size,
                head.tree_size,
                proof,
                bytes.fromhex(previous.root_hash),
                bytes.fromhex(head.root_hash),
            ):
                report.problems.append(
                    Problem(
                        "tree_heads_inconsistent",
                        where,
                        f"does not extend the tree head of {previous.tree_size}",
                    )
                )
        previous = head
    return read


def _check_package_references(
    session: Session, store: ObjectStore, package: EvidenceItem, report: ChainReport
) -> set[str]:
    """An export package is assembled from other items' objects: each must still be held as recorded.
    Returns the items it is assembled from, so a finding about one of them can name the package."""
    where = f"export package {package.id}"
    try:
        layout = package_layout.decode(store.get_bytes(package.object_key, package.version_id))
    except (StorageError, package_layout.LayoutError) as exc:
        report.problems.append(Problem("package_unreadable", where, f"its layout cannot be read: {exc}"))
        return set()
    for seg in layout.media:
        item = session.get(EvidenceItem, seg.item_id)
        recorded = (
            (item.object_key, item.version_id, item.sha256, item.blake3, item.size)
            if item is not None
            else None
        )
        if item is None or item.status == "deleted":
            state = "has no row" if item is None else "was deleted"
            report.problems.append(
                Problem(
                    "package_reference_broken",
                    where,
                    f"{seg.path} is evidence item {seg.item_id}, which {state}: the package can no longer be assembled",
                )
            )
        elif recorded != (seg.key, seg.version_id, seg.sha256, seg.blake3, seg.length):
            report.problems.append(
                Problem(
                    "package_reference_broken",
                    where,
                    f"{seg.path} names object {seg.key} version {seg.version_id} ({seg.sha256}, {seg.length} bytes) "
                    f"but evidence item {seg.item_id} records {recorded}",
                )
            )
    return {seg.item_id for seg in layout.media}
