"""An item's block list: the BLAKE3 of every ``BLOCK`` of its object, kept in the pass that stored it.

A ranged read of an item with a list reads and checks only the blocks its range lies in
(``read_checks.checked_blocks``), however large the object and however soon after it was stored: no
read of the whole object comes first. The list is as trustworthy as the record it is held to: the
item's signed ``stored`` custody entry commits to it (``commitment``: the block size, the count and
the BLAKE3 of the digests one after another), and a list that no longer says what its entry
commits to is not used (the read is refused; ``evidence verify`` reports ``block_list_altered``).
Items stored before lists were kept, or stored without one, are checked whole as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blake3 import blake3
from sqlalchemy.orm import Session

from storage.digests import BLOCK

from .models import EvidenceBlockList

DIGEST_BYTES = 32


def commitment(digests: tuple[bytes, ...]) -> dict[str, Any]:
    """What the ``stored`` entry records of a block list (its ``blocks`` detail)."""
    return {"size": BLOCK, "count": len(digests), "blake3": blake3(b"".join(digests)).hexdigest()}


def keep_block_list(session: Session, item_id: str, digests: tuple[bytes, ...]) -> dict[str, Any]:
    """Add the item's block list (in the caller's transaction); what its ``stored`` entry commits to."""
    session.add(
        EvidenceBlockList(item_id=item_id, block_size=BLOCK, count=len(digests), digests=b"".join(digests))
    )
    return commitment(digests)


def list_problem(row: EvidenceBlockList | None, committed: Mapping[str, Any] | None, size: int) -> str | None:
    """Why the item's block list row cannot be trusted against what its ``stored`` entry commits to
    (``committed``: the entry's ``blocks`` detail) for an object of ``size`` bytes, or None (a list
    that matches, or neither a list nor a commitment)."""
    if row is None:
        return None if committed is None else "its block list, recorded on custody, is missing"
    if committed is None:
        return "it has a block list but its 'stored' custody entry commits to none"
    found = blake3(bytes(row.digests)).hexdigest()
    expected_count = -(-size // BLOCK)
    if row.block_size != committed.get("size") or row.count != committed.get("count"):
        return (
            f"its block list has {row.count} blocks of {row.block_size} bytes, its 'stored' custody "
            f"entry commits to {committed.get('count')} of {committed.get('size')}"
        )
    if found != committed.get("blake3"):
        return f"its block list hashes to BLAKE3 {found}, its 'stored' custody entry says {committed.get('blake3')}"
    if row.block_size != BLOCK or row.count != expected_count or len(row.digests) != row.count * DIGEST_BYTES:
        return f"its block list does not cover its {size} bytes in blocks of {BLOCK}"
    return None


def digests_of(row: EvidenceBlockList) -> tuple[bytes, ...]:
    data = bytes(row.digests)
    return tuple(data[i : i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES))
