"""An item's block list: the BLAKE3 of every ``BLOCK`` of its object, kept in the pass that stored it.

A ranged read of an item with a list reads and checks only the blocks its range lies in
(``read_checks.checked_blocks``), however large the object and however soon after it was stored: no
read of the whole object comes first. The list is as trustworthy as the record it is held to: the
item's signed ``stored`` custody entry commits to it (``commitment``: the block size, the count and
the BLAKE3 of the digests one after another), and a list that no longer says what its entry
commits to is not used (the read is refused; ``evidence verify`` reports ``block_list_altered``).
Items stored before lists were kept, or stored without one, are checked whole until a whole check
that matched their record keeps theirs, committed to by a signed ``blocks_listed`` entry instead
(``later_lists``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blake3 import blake3
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.digests import BLOCK

from .entries import CustodyAction, SignedEntry, details_object
from .ledger import Ledger, to_signed
from .models import CustodyEntry, EvidenceBlockList

DIGEST_BYTES = 32
LISTED = CustodyAction.BLOCKS_LISTED  # a list kept after a whole check (``later_lists``)


def commitment(digests: tuple[bytes, ...]) -> dict[str, Any]:
    """What the ``stored`` entry records of a block list (its ``blocks`` detail)."""
    return {"size": BLOCK, "count": len(digests), "blake3": blake3(b"".join(digests)).hexdigest()}


def keep_block_list(session: Session, item_id: str, digests: tuple[bytes, ...]) -> dict[str, Any]:
    """Add the item's block list (in the caller's transaction); what its ``stored`` entry commits to."""
    session.add(
        EvidenceBlockList(item_id=item_id, block_size=BLOCK, count=len(digests), digests=b"".join(digests))
    )
    return commitment(digests)


def commitment_entry(session: Session, item_id: str) -> SignedEntry | None:
    """The signed entry that commits to the item's block list: its ``stored`` entry when that has
    ``blocks``, else its first ``blocks_listed`` entry (``later_lists``); None when neither does.
    Its signature is the caller's to check."""
    stored = Ledger.stored_entry(session, item_id)
    if stored is not None and "blocks" in (details_object(stored.body.details) or {}):
        return stored
    row = session.scalars(
        select(CustodyEntry)
        .where(CustodyEntry.item_id == item_id, CustodyEntry.action == LISTED)
        .order_by(CustodyEntry.item_seq)
        .limit(1)
    ).first()
    return None if row is None else to_signed(row)


def entry_blocks(entry: SignedEntry | None, sha256: str, size: int) -> dict[str, Any] | None:
    """What ``entry`` commits to of the block list of an object recorded with ``sha256`` and
    ``size``: a ``blocks_listed`` entry speaks only for the object whose digest and size it names."""
    if entry is None:
        return None
    details = details_object(entry.body.details)  # (not an object: edited, and named by verify)
    return None if details is None else details_blocks(entry.body.action, details, sha256, size)


def details_blocks(action: str, details: Mapping[str, Any], sha256: str, size: int) -> dict[str, Any] | None:
    """``entry_blocks`` of an entry's action and details."""
    if action == LISTED and (details.get("sha256"), details.get("size")) != (sha256, size):
        return None
    blocks = details.get("blocks")
    return blocks if isinstance(blocks, dict) else None


def listed_commitments(session: Session) -> dict[str, dict[str, Any]]:
    """Every item's first ``blocks_listed`` entry's details, by item (``evidence verify``'s read)."""
    out: dict[str, dict[str, Any]] = {}
    rows = session.execute(
        select(CustodyEntry.item_id, CustodyEntry.details)
        .where(CustodyEntry.action == LISTED)
        .order_by(CustodyEntry.seq)
    )
    for item_id, details in rows:
        if item_id is not None and item_id not in out:
            # Details that are not an object (edited, named by the chain's walk) commit to nothing.
            out[item_id] = details_object(details) or {}
    return out


def list_problem(row: EvidenceBlockList | None, committed: Mapping[str, Any] | None, size: int) -> str | None:
    """Why the item's block list row cannot be trusted against what custody commits to (``committed``:
    the ``blocks`` detail of its ``stored`` or ``blocks_listed`` entry) for an object of ``size``
    bytes, or None (a list that matches, or neither a list nor a commitment)."""
    if row is None:
        return None if committed is None else "its block list, recorded on custody, is missing"
    if committed is None:
        return "it has a block list but no custody entry of it commits to one"
    found = blake3(bytes(row.digests)).hexdigest()
    expected_count = -(-size // BLOCK)
    if row.block_size != committed.get("size") or row.count != committed.get("count"):
        return (
            f"its block list has {row.count} blocks of {row.block_size} bytes, its custody record "
            f"commits to {committed.get('count')} of {committed.get('size')}"
        )
    if found != committed.get("blake3"):
        return f"its block list hashes to BLAKE3 {found}, its custody record says {committed.get('blake3')}"
    if row.block_size != BLOCK or row.count != expected_count or len(row.digests) != row.count * DIGEST_BYTES:
        return f"its block list does not cover its {size} bytes in blocks of {BLOCK}"
    return None


def digests_of(row: EvidenceBlockList) -> tuple[bytes, ...]:
    data = bytes(row.digests)
    return tuple(data[i : i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES))
