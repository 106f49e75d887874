"""Block lists for items stored before lists were kept: taken from a whole check of the object that
matched its record, kept once, and committed to by a signed ``blocks_listed`` custody entry.

An item stored with its list (``block_lists``) has it from the pass that stored it. An item stored
before had none, so every process's first range of it read and hashed the whole object
(``read_checks.verify_whole``: 2.9-3.5 s for a 2 GB clip) and kept the block digests that check
took in that process's memory only, for a while: each replica, each restart and each quarter of an
hour paid the whole check again before a seek's first byte. Now the first whole check that matches
the item's record keeps its block list in the database (:func:`keep_checked_list`), or the
administrator's ``evidence keep-block-lists --yes`` does it ahead of any viewing
(:func:`keep_lists`), and every later range of it, in any process, reads and checks only its blocks.

The list is as trustworthy as the whole check it came from: its digests are of bytes whose whole
digest matched the row's, the row checked against its signed ``stored`` entry in the transaction
that keeps the list, and the ``blocks_listed`` entry names the recorded SHA-256 and size beside the
list's commitment (``block_lists.commitment``). A list edited afterwards no longer says what that
entry commits to, and is refused as a list committed to at storing is (``evidence.listed_blocks``);
``evidence verify`` names it. An item whose list is committed to already is never given a second
one: a list row removed from the database stays missing (and ``verify`` names it), its ranges
checked whole as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database, on_own_account
from storage.digests import BLOCK
from storage.objects import ObjectStore, StorageError

from .block_lists import LISTED, commitment_entry, keep_block_list
from .evidence import RecordUntrusted, quarantine, trusted_record
from .ledger import Ledger
from .models import EvidenceBlockList, EvidenceItem
from .read_checks import object_key

log = logging.getLogger(__name__)

KEEPER = "cli:keep-block-lists"


def no_list(session: Session, item_id: str) -> bool:
    """The item has no list row and nothing on custody commits to one."""
    if session.get(EvidenceBlockList, item_id) is not None:
        return False
    return commitment_entry(session, item_id) is None


def keep_checked_list(
    db: Database, ledger: Ledger, item: EvidenceItem, digests: Sequence[bytes], by: str
) -> bool:
    """Keep the block list that a whole check of ``item``'s object took (``digests``: it matched the
    row's digests), with its ``blocks_listed`` entry, in one transaction; False (nothing kept) when
    the item has a list or a commitment to one already, is no longer ``stored``, its row changed
    since it was checked, or its record no longer checks (its reads refuse it). ``by``: what checked
    it (a read, the upgrade command)."""
    if len(digests) != -(-item.size // BLOCK):
        return False
    try:
        with db.session() as session:
            row = session.get(EvidenceItem, item.id)
            if row is None or row.status != "stored" or object_key(row) != object_key(item):
                return False
            trusted_record(session, ledger, row)
            if not no_list(session, item.id):
                return False
            # A second keeper of the same list (another replica) meets this row's key: rolled back.
            blocks = keep_block_list(session, item.id, tuple(digests))
            ledger.append(
                session,
                LISTED,
                "service",
                item_id=item.id,
                details={"blocks": blocks, "sha256": row.sha256, "size": row.size, "checked_by": by},
            )
            session.flush()
    except (IntegrityError, RecordUntrusted):
        return False
    return True


@dataclass(frozen=True)
class ListLine:
    """One item the upgrade command lists, and what it found or would do."""

    item_id: str
    size: int
    outcome: str
    refused: bool = False

    def line(self) -> str:
        return f"{self.item_id} ({self.size} bytes): {self.outcome}"


def items_without_lists(session: Session) -> list[EvidenceItem]:
    """Items in good order (``stored``) with no block list and none committed to on custody."""
    listed = select(EvidenceBlockList.item_id)
    rows = session.scalars(
        select(EvidenceItem)
        .where(EvidenceItem.status == "stored", EvidenceItem.id.not_in(listed))
        .order_by(EvidenceItem.id)
    )
    return [row for row in rows if commitment_entry(session, row.id) is None]


def keep_lists(db: Database, ledger: Ledger, store: ObjectStore, yes: bool) -> list[ListLine]:
    """``evidence keep-block-lists``: each item without a block list, and with ``yes`` its object
    read whole once, checked against its record and its list kept (``keep_checked_list``); an
    object that no longer matches is quarantined, as a read finding it would."""
    with db.reading() as session:
        items = items_without_lists(session)
        for it in items:
            session.expunge(it)
    if not yes:
        return [
            ListLine(it.id, it.size, "would be read whole, checked and its block list kept") for it in items
        ]
    out = []
    for it in items:
        try:
            found = store.digests_of(it.object_key, it.version_id, block_list=True)
        except StorageError as exc:
            out.append(ListLine(it.id, it.size, f"not read: {exc}", refused=True))
            continue
        sha256, blake3 = found.hexdigests()
        if found.size != it.size or sha256 != it.sha256 or (it.blake3 is not None and blake3 != it.blake3):
            reason = (
                f"stored object hashes to SHA-256 {sha256} ({found.size} bytes), its record says "
                f"{it.sha256} ({it.size} bytes); found while keeping its block list"
            )
            with on_own_account(), db.session() as session:  # the service's own (``act_for``)
                quarantine(session, ledger, it.id, reason, {"digest": "sha256"})
            log.error("stored object altered: quarantined", extra={"item": it.id})
            out.append(ListLine(it.id, it.size, f"quarantined: {reason}", refused=True))
            continue
        digests = found.block_digests() or ()
        if keep_checked_list(db, ledger, it, digests, KEEPER):
            out.append(ListLine(it.id, it.size, f"block list kept ({len(digests)} blocks)"))
        else:
            out.append(ListLine(it.id, it.size, "not kept: listed meanwhile, changed or its record refused"))
    return out
