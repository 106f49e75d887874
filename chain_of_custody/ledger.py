"""The custody ledger in the database: append under a lock, read back as signed entries.

Appends take a row lock on the single ``ledger_head`` row (PostgreSQL) or the database write lock
(SQLite, ``BEGIN IMMEDIATE``), so concurrent writers in any number of processes produce one chain.
An append belongs to the caller's transaction: the business change and its custody entry commit
together or not at all.

A row lock lasts to the end of its transaction, so a transaction asks for the head row once
(:func:`hold_head`): its later appends, and every writer that takes the lock first to order its own
locks, use the row it holds, and each item's last entry appended in it is remembered. A rollback
(to a savepoint, too, which gives back the locks taken after it) forgets both.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from .canonical import canonical_json, rfc3339
from .entries import GENESIS, CustodyAction, EntryBody, SignedEntry
from .keys import ServiceKey, verify_signature
from .merkle import leaf_hash
from .models import CustodyEntry, LedgerHead
from .tree_heads import TreeHeadLog, entry_body


def to_signed(row: CustodyEntry) -> SignedEntry:
    return SignedEntry(entry_body(row), row.entry_hash, row.signature)


TRAIL_PAGE = 1000
"""Entries of one item's trail read at once by default (the API's page, the console's page)."""

_HELD = "custody_ledger_head_held"
_HELD_WATCHED = "custody_ledger_head_watched"


@dataclass
class _Held:
    """The head row a transaction holds locked, and the last entry of each item it appended to."""

    transaction: SessionTransaction
    head: LedgerHead
    items: dict[str, tuple[int, str]] = field(default_factory=dict)


def _forget(session: Session, *_: Any) -> None:
    session.info.pop(_HELD, None)


def _forget_at_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        _forget(session)


def _held(session: Session) -> _Held | None:
    held: _Held | None = session.info.get(_HELD)
    if held is None or held.transaction is not session.get_transaction() or held.head not in session:
        return None
    return held


def hold_head(session: Session) -> LedgerHead | None:
    """The ledger head's row, locked for this transaction (``None`` before the first entry ever).

    The database is asked once a transaction: the lock is held until it ends, so asking again would
    change nothing but cost a round trip. Taken before other row locks, it also orders a writer's
    locks after every other writer's."""
    held = _held(session)
    if held is not None:
        return held.head
    head = session.execute(
        select(LedgerHead)
        .where(LedgerHead.id == 1)
        .with_for_update()
        .execution_options(populate_existing=True)  # as it is now, under the lock
    ).scalar_one_or_none()
    if head is not None:
        _remember(session, head)
    return head


def head_held(session: Session) -> bool:
    """Whether this transaction holds the ledger head's row lock already (:func:`hold_head`)."""
    return _held(session) is not None


def _remember(session: Session, head: LedgerHead) -> _Held:
    if not session.info.get(_HELD_WATCHED):
        session.info[_HELD_WATCHED] = True
        event.listen(session, "after_soft_rollback", _forget)  # a savepoint's too
        event.listen(session, "after_transaction_end", _forget_at_end)
    held = _Held(session.get_transaction() or session.begin(), head)
    session.info[_HELD] = held
    return held


class Ledger:
    """Appends signed entries and reads them back; verification lives in ``verify``."""

    def __init__(self, key: ServiceKey, tree_heads: TreeHeadLog | None = None) -> None:
        """``tree_heads``: the service's Merkle log; every commit that appends is then covered by a
        signed tree head in write-once storage before it returns (see ``tree_heads``)."""
        self.key = key
        self.tree_heads = tree_heads

    def verifier(self, signature_b64: str, message: bytes) -> bool:
        return verify_signature(self.key.public, signature_b64, message)

    def append(
        self,
        session: Session,
        action: CustodyAction,
        actor: str,
        *,
        item_id: str | None = None,
        details: dict[str, Any] | None = None,
        at: datetime | None = None,
        new_item: bool = False,
    ) -> CustodyEntry:
        """Append one signed entry, chained to the ledger's last and to ``item_id``'s last.

        ``new_item``: the item's row was made in this transaction under a new id, so it has no entry
        yet and none is looked for (the unique ``(item_id, item_seq)`` index is the backstop)."""
        try:
            name = CustodyAction(action).value  # the type says so; a caller without types may not
        except ValueError:
            raise ValueError(f"unknown custody action {action!r}") from None
        if self.tree_heads is not None:  # before waiting for the head row: a head being stored waits for it
            self.tree_heads.opening(session)
        head = hold_head(session)
        if head is None:
            head = LedgerHead(id=1, last_seq=0, last_hash=GENESIS, checkpoint_seq=0)
            session.add(head)
            session.flush()
        held = _held(session) or _remember(session, head)
        item_seq: int | None = None
        item_prev: str | None = None
        if item_id is not None:
            last = held.items.get(item_id)
            if last is None and not new_item:
                found = session.execute(
                    select(CustodyEntry.item_seq, CustodyEntry.entry_hash)
                    .where(CustodyEntry.item_id == item_id)
                    .order_by(CustodyEntry.item_seq.desc())
                    .limit(1)
                ).first()
                last = (found[0] or 0, found[1]) if found else None
            item_seq = last[0] + 1 if last else 1
            item_prev = last[1] if last else None
        body = EntryBody(
            seq=head.last_seq + 1,
            id=str(uuid.uuid4()),
            at=rfc3339(at or datetime.now(UTC)),
            action=name,
            actor=actor,
            item_id=item_id,
            item_seq=item_seq,
            details=canonical_json(details or {}).decode(),
            prev_hash=head.last_hash,
            item_prev_hash=item_prev,
            key_id=self.key.key_id,
        )
        canonical = body.canonical()
        entry_hash = body.digest()
        row = CustodyEntry(
            seq=body.seq,
            id=body.id,
            at=body.at,
            action=name,
            actor=actor,
            item_id=item_id,
            item_seq=item_seq,
            details=body.details,
            prev_hash=body.prev_hash,
            item_prev_hash=item_prev,
            key_id=body.key_id,
            entry_hash=entry_hash,
            signature=self.key.sign(canonical),
        )
        session.add(row)
        head.last_seq = body.seq
        head.last_hash = entry_hash
        session.flush()
        if item_id is not None and item_seq is not None:
            held.items[item_id] = (item_seq, entry_hash)
        if self.tree_heads is not None:
            self.tree_heads.watch(session, body.seq, leaf_hash(canonical))
        return row

    @staticmethod
    def item_entries(session: Session, item_id: str) -> list[SignedEntry]:
        rows = session.scalars(
            select(CustodyEntry).where(CustodyEntry.item_id == item_id).order_by(CustodyEntry.item_seq)
        )
        return [to_signed(r) for r in rows]

    @staticmethod
    def item_entries_page(session: Session, item_id: str, after: int, limit: int) -> list[SignedEntry]:
        """At most ``limit`` of the item's entries, those after its entry number ``after``, in order:
        a trail read a page at a time (an item read many times has hundreds of thousands)."""
        rows = session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.item_id == item_id, CustodyEntry.item_seq > after)
            .order_by(CustodyEntry.item_seq)
            .limit(limit)
        )
        return [to_signed(r) for r in rows]

    @staticmethod
    def stored_entry(session: Session, item_id: str) -> SignedEntry | None:
        """The item's ``stored`` entry: what its object is, as recorded when it arrived."""
        row = session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.item_id == item_id, CustodyEntry.action == CustodyAction.STORED)
            .order_by(CustodyEntry.item_seq)
            .limit(1)
        ).first()
        return None if row is None else to_signed(row)

    @staticmethod
    def all_entries(session: Session, batch: int = 2000) -> Iterator[SignedEntry]:
        """Every entry in seq order, read in batches so a large ledger streams."""
        last = 0
        while True:
            rows = list(
                session.scalars(
                    select(CustodyEntry)
                    .where(CustodyEntry.seq > last)
                    .order_by(CustodyEntry.seq)
                    .limit(batch)
                )
            )
            if not rows:
                return
            for r in rows:
                yield to_signed(r)
            last = rows[-1].seq
