"""Turning stored bytes into evidence items, and reading them back with a custody entry for every read."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from storage.db import Database, on_own_account
from storage.digests import BlockDigests
from storage.memo import BoundedMemo
from storage.objects import ObjectStore, StoredObject
from storage.streams import BlocksOnThread

from . import read_checks
from .block_lists import commitment_entry, digests_of, entry_blocks, keep_block_list, list_problem
from .entries import CustodyAction, check_entry
from .fixity import FixityCheck, checked_range
from .ledger import Ledger, hold_head
from .models import CustodyEntry, EvidenceBlockList, EvidenceItem, new_id
from .quarantines import quarantine_details, quarantine_standing
from .reach_seals import item_seal, reach_secret
from .read_checks import checked_blocks
from .retention_basis import RetentionBasis
from .row_replay import ITEM_SCOPE, item_scope_mac
from .verify import unrecorded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    """Where an item came from, as the custody record keeps it."""

    kind: str
    actor: str
    source_device_id: str | None = None
    wearer: str | None = None
    captured_start: datetime | None = None
    captured_stop: datetime | None = None
    filename: str | None = None
    content_type: str = "application/octet-stream"
    derived_from_id: str | None = None
    retain_until: datetime | None = None
    retention_basis: RetentionBasis | None = None  # what the lock runs from (capture or receipt), and why
    # The site it was captured under (its device's then, as the service sealed it), whose managers see
    # it by site whatever becomes of the device; None when nothing vouches for one.
    site: str | None = None


def record_evidence(
    session: Session,
    ledger: Ledger,
    stored: StoredObject,
    provenance: Provenance,
    *,
    captured: dict[str, Any] | None = None,
    received: dict[str, Any] | None = None,
    quarantine_reason: str | None = None,
    for_review: bool = False,
    verified: dict[str, Any] | None = None,
    item_id: str | None = None,
    block_list: bool = True,
) -> EvidenceItem:
    """Create the item row and its first custody entries (captured, received, stored, verified or
    quarantined), and its block list when the store kept one (``block_lists``; ``block_list=False``
    records none, as for an item stored before lists were kept). ``for_review``: the quarantine is
    for review alone (its standing, not its bytes), which a person may release (``quarantines``)."""
    # The id is known before the row is written, so its reach seal goes in with it (one INSERT, no
    # UPDATE after), and a new id has no custody entry yet: its first is not looked for.
    new_item = not item_id
    item_id = item_id or new_id()
    item = EvidenceItem(
        id=item_id,
        kind=provenance.kind,
        status="quarantined" if quarantine_reason else "stored",
        quarantine_reason=quarantine_reason,
        bucket=stored.bucket,
        object_key=stored.key,
        version_id=stored.version_id,
        sha256=stored.sha256,
        blake3=stored.blake3,
        size=stored.size,
        content_type=provenance.content_type,
        filename=provenance.filename,
        source_device_id=provenance.source_device_id,
        wearer=provenance.wearer,
        captured_start=provenance.captured_start,
        captured_stop=provenance.captured_stop,
        derived_from_id=provenance.derived_from_id,
        retain_until=provenance.retain_until,
        site=provenance.site,
        reach_seal=item_seal(
            reach_secret(ledger.key),
            item_id,
            provenance.wearer,
            provenance.source_device_id,
            provenance.derived_from_id,
            provenance.site,
        ),
    )
    session.add(item)
    session.flush()
    for action, said in ((CustodyAction.CAPTURED, captured), (CustodyAction.RECEIVED, received)):
        if said is not None:
            ledger.append(session, action, provenance.actor, item_id=item.id, details=said, new_item=new_item)
    details: dict[str, Any] = {
        "bucket": stored.bucket,
        "key": stored.key,
        "version_id": stored.version_id,
        "sha256": stored.sha256,
        "size": stored.size,
        "kind": provenance.kind,
        "derived_from": provenance.derived_from_id,
        "retain_until": provenance.retain_until.isoformat() if provenance.retain_until else None,
    }
    if provenance.retention_basis is not None:
        details["retention_basis"] = provenance.retention_basis.as_details()
    if stored.blake3 is not None:
        details["blake3"] = stored.blake3
    if block_list and stored.block_digests is not None:
        details["blocks"] = keep_block_list(session, item.id, stored.block_digests)
    details["scope_mac"] = item_scope_mac(
        ledger.key.derived_secret(ITEM_SCOPE), provenance.wearer, provenance.source_device_id
    )
    ledger.append(
        session, CustodyAction.STORED, "service", item_id=item.id, details=details, new_item=new_item
    )
    if quarantine_reason:
        ledger.append(
            session,
            CustodyAction.QUARANTINED,
            "service",
            item_id=item.id,
            details=quarantine_details(quarantine_reason, for_review=for_review),
        )
    elif verified is not None:
        ledger.append(session, CustodyAction.VERIFIED, "service", item_id=item.id, details=verified)
    return item


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """A single ``bytes=`` range (RFC 9110); None for the whole object; ValueError when unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError("only a single bytes range is supported")
    first, _, last = spec.strip().partition("-")
    if first == "":
        n = int(last)
        if n <= 0:
            raise ValueError("empty suffix range")
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise ValueError("range not satisfiable")
    return ByteRange(start, min(end, size - 1))


class RecordUntrusted(Exception):
    """The item's row no longer says what its signed ``stored`` entry says: nothing is read by it."""


def quarantine(session: Session, ledger: Ledger, item_id: str, reason: str, details: dict[str, Any]) -> None:
    """Record that an item's stored bytes no longer match its record: a ``quarantined`` custody entry
    (for integrity: nothing releases it, ``quarantines``) and the row's status, so that nothing
    serves or exports it as evidence again. The ledger's head is taken first, as every writer takes
    it (a release takes it, then the row: the other way round, the two deadlocked on PostgreSQL and
    the quarantine was lost)."""
    hold_head(session)
    row = session.get(EvidenceItem, item_id, with_for_update=True)
    ledger.append(
        session,
        CustodyAction.QUARANTINED,
        "service",
        item_id=item_id,
        details={**details, **quarantine_details(reason)},
    )
    if row is not None and row.status != "deleted":
        row.status = "quarantined"
        row.quarantine_reason = reason


def quarantine_hook(
    db: Database, ledger: Ledger, item_id: str, where: str, **details: Any
) -> Callable[[FixityCheck], None]:
    """What a read does when the bytes it streamed do not match: log it and quarantine the item."""

    def altered(check: FixityCheck) -> None:
        log.error(
            "evidence read stopped: stored object altered",
            extra={
                "item": item_id,
                "digest": check.algorithm,
                "found": check.found,
                "expected": check.expected,
            },
        )
        reason = f"stored object {check.mismatch()}; found while {where}"
        # The service's own write, whoever's read found it: refused to nobody (``act_for``).
        with on_own_account(), db.session() as session:
            quarantine(session, ledger, item_id, reason, {"digest": check.algorithm, **details})

    return altered


CHECKED_RECORDS: BoundedMemo[str, bool] = BoundedMemo()
"""Item rows, by every column's value (``_row_key``), that this process has found to say what their
signed ``stored`` entry says: a range of a viewing read by the same row needs no second read and
signature check of that entry (an entry found intact and signed stays what it was; ``evidence
verify`` finds a later edit). A row edited in any column is checked afresh."""


def _row_key(item: EvidenceItem) -> str:
    return repr([(c.key, getattr(item, c.key)) for c in sa_inspect(EvidenceItem).column_attrs])


def trusted_record(session: Session, ledger: Ledger, item: EvidenceItem, *, seen_row: bool = False) -> None:
    """Raise RecordUntrusted unless the item's row still says what its signed ``stored`` entry says,
    and says quarantined when custody holds a ``quarantined`` entry for it that no release holding
    on custody ended (``quarantines``: a row put back to ``stored`` in the database, or beside a
    forged release, serves nothing). ``seen_row``: a row this process has already found to match its
    entry, column for column, is not checked against it again (``CHECKED_RECORDS``); whether a
    quarantine stands on custody is asked every time."""
    key = _row_key(item) if seen_row else None
    if key is None or not CHECKED_RECORDS.get(key):
        problem = unrecorded(item, Ledger.stored_entry(session, item.id), ledger.verifier)
        if problem is not None:
            raise RecordUntrusted(problem)
        if key is not None:
            CHECKED_RECORDS.put(key, True)
    if item.status not in ("quarantined", "deleted"):
        seq = quarantine_standing(session, ledger.verifier, item.id).first_seq
        if seq is not None:
            raise RecordUntrusted(
                f"evidence item {item.id} is quarantined on custody (entry #{seq}) but its row says {item.status!r}"
            )


class BlockListAltered(RecordUntrusted):
    """The item's block list no longer says what its signed custody record commits to."""


def listed_blocks(session: Session, ledger: Ledger, item: EvidenceItem) -> tuple[bytes, ...] | None:
    """The item's block list (``block_lists``) once it is found to say what the item's signed
    ``stored`` entry commits to, or its signed ``blocks_listed`` entry for a list kept after a whole
    check (``later_lists``) (BlockListAltered otherwise); None for an item with none, or whose
    ``stored`` entry fails its own check: its ranges are checked whole, and the read's check of its
    record (``trusted_record``, before anything is served) refuses it."""
    row = session.get(EvidenceBlockList, item.id)
    if row is None:
        return None
    entry = commitment_entry(session, item.id)
    stored = (
        entry
        if entry is not None and entry.body.action == CustodyAction.STORED
        else Ledger.stored_entry(session, item.id)
    )
    if stored is None or check_entry(stored, ledger.verifier):
        return None
    if entry is not None and entry is not stored and check_entry(entry, ledger.verifier):
        raise BlockListAltered(
            f"evidence item {item.id}: the custody entry #{entry.body.seq} committing to its block list fails its check"
        )
    problem = list_problem(row, entry_blocks(entry, item.sha256, item.size), item.size)
    if problem is not None:
        raise BlockListAltered(f"evidence item {item.id}: {problem}")
    return digests_of(row)


def record_read(
    session: Session,
    ledger: Ledger,
    item: EvidenceItem,
    actor: str,
    byte_range: ByteRange | None,
    purpose: str = "view",
    details: dict[str, Any] | None = None,
) -> CustodyEntry:
    """A read outside any viewing as its own ``viewed`` entry (in the caller's transaction)."""
    return ledger.append(
        session,
        CustodyAction.VIEWED,
        actor,
        item_id=item.id,
        details={
            "purpose": purpose,
            "range": [byte_range.start, byte_range.end] if byte_range else None,
            "sha256": item.sha256,
            **(details or {}),
        },
    )


def read_item(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    item: EvidenceItem,
    actor: str,
    byte_range: ByteRange | None,
    purpose: str = "view",
    *,
    on_altered: Callable[[FixityCheck], None] | None = None,
    verify: bool = True,
    details: dict[str, Any] | None = None,
    block_digests: tuple[bytes, ...] | None = None,
    recorded: bool = False,
    keep_blocks: Callable[[list[bytes]], None] | None = None,
) -> Iterator[bytes]:
    """Record the read in the custody ledger (in the caller's transaction), then stream the bytes,
        checked against the recorded digest as they stream (``fixity.checked_range``).

        The row's digests are trusted only as far as its signed ``stored`` entry vouches for them
        (RecordUntrusted otherwise). A range is served by reading the whole object and sending only the
        range, its last block held back until the whole object has checked: the object's digests are
        of the whole, and nothing finer was recorded. With ``block_digests`` (kept by a whole check of the
    object lately, ``read_checks``) a range reads only the blocks it lies in, each checked against its
    digest before it is sent. ``verify=False`` is for reading an item already
        quarantined (for review), whose bytes are known not to be the evidence. ``recorded``: the caller
    has already checked the record and put the read on custody (a range of a viewing, ``viewings``).
    ``keep_blocks`` (a whole read of an item with no block list): the object's block digests, taken
    as it streams, are handed to it once the whole has matched its record (``later_lists``)."""
    if not recorded:
        if verify:
            trusted_record(session, ledger, item)
        record_read(session, ledger, item, actor, byte_range, purpose, details)
    if not verify:  # a window at a time too, as every read of evidence (``read_checks.STORE_WINDOW``)
        window = read_checks.STORE_WINDOW
        if byte_range is None:
            return store.read(item.object_key, item.version_id, window=window)
        return store.read(
            item.object_key, item.version_id, offset=byte_range.start, length=byte_range.length, window=window
        )
    if block_digests is not None and byte_range is not None:
        return checked_blocks(store, item, block_digests, byte_range.start, byte_range.length, on_altered)
    check = FixityCheck(item.sha256, item.blake3, item.size)
    listing = BlockDigests() if keep_blocks is not None else None

    def tap(chunk: bytes) -> None:
        check.update(chunk)
        if listing is not None:
            listing.update(chunk)

    blocks = iter(
        BlocksOnThread(  # a window at a time (``read_checks.STORE_WINDOW``): the whole is read all the same
            store.read(item.object_key, item.version_id, window=read_checks.STORE_WINDOW),
            4,
            tap,
            "evidence-read",
        )
    )
    lo, n = (0, item.size) if byte_range is None else (byte_range.start, byte_range.length)
    served = checked_range(blocks, check, lo, n, on_altered)
    if keep_blocks is None or listing is None:
        return served
    return _then(served, lambda: keep_blocks(list(listing.digests())))


def _then(blocks: Iterator[bytes], done: Callable[[], None]) -> Iterator[bytes]:
    """``blocks``, then ``done`` once every one was taken (not when the reader stopped early, nor
    when the check found the object altered: ``checked_range`` raises before its last block)."""
    yield from blocks
    done()
