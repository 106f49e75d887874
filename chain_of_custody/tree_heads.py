"""Signed tree heads of the custody ledger's Merkle tree (RFC 9162), written write-once before any
commit that appended entries is acknowledged.

The ledger's entries are the tree's leaves in sequence order (leaf ``seq - 1`` is the entry's
canonical body, the bytes its hash and signature cover). When a transaction that appended entries
commits, the session's ``after_commit`` hook has the tree head covering them signed and stored in
object storage under retention before ``commit()`` returns, so before the route answers or the
device is acked: whoever later cuts the ledger's tail, in the database alone, is contradicted by a
tree head that storage will not give up. If the tree head cannot be written, ``commit()`` raises and
nothing is acknowledged (the entries stand, and the next tree head covers them).

Concurrent commits share one tree head (group commit): a commit waits for the one being written
and returns at once if it covers its entries; otherwise it writes one covering everything committed
so far. Before it writes, a commit waits a few milliseconds at most (``GATHER_SECONDS``) while other
transactions of this process are appending (custody appends are serialised on the ledger's head row,
so theirs commit one after another just behind it), so that the head it stores covers theirs too;
only entries already committed are ever covered, and alone it does not wait at all. Every
process keeps the tree in memory. A commit hands the leaves it appended to the tree as
it commits, so the tree grows without reading the database back; the database is read only for
entries this process has not seen committed (another process's, at start, or one whose commit has
not yet handed its leaves over), and any leaf handed over is checked against the row read for it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from storage.db import COMMIT_DUTY_FAILED
from storage.objects import ObjectStore

from .entries import EntryBody
from .keys import ServiceKey
from .merkle import MerkleTree, leaf_hash
from .models import CustodyEntry
from .signed_tree_head import TreeHead, sign_tree_head

log = logging.getLogger(__name__)

PREFIX = "tree-heads/"
_PENDING = "custody_tree_head_pending"
_WATCHED = "custody_tree_head_watched"
_LEAVES = "custody_tree_head_leaves"  # seq -> leaf hash appended in the session's transaction
_UNSURE = "custody_tree_head_unsure"  # a savepoint was rolled back: its leaves may not have committed
_OPEN = "custody_tree_head_open"  # the transaction is appending (counted in ``TreeHeadLog.appending``)

GATHER_SECONDS = 0.003
"""How long at most a commit about to store a tree head waits for commits of other transactions of
this process that are appending, so that one head covers them all (a put costs both the service and
the store several milliseconds of CPU whatever it carries). A commit that is alone does not wait."""


def entry_body(row: CustodyEntry) -> EntryBody:
    """A ledger row's signed body, as its hash and signature were made over it."""
    return EntryBody(
        seq=row.seq,
        id=row.id,
        at=row.at,
        action=row.action,
        actor=row.actor,
        item_id=row.item_id,
        item_seq=row.item_seq,
        details=row.details,
        prev_hash=row.prev_hash,
        item_prev_hash=row.item_prev_hash,
        key_id=row.key_id,
    )


def entry_leaf(row: CustodyEntry) -> bytes:
    """The leaf hash of a ledger row: SHA-256(0x00 || the entry's canonical body)."""
    return leaf_hash(entry_body(row).canonical())


def object_name(head: TreeHead) -> str:
    return f"{PREFIX}{head.tree_size:015d}-{head.root_hash[:16]}.json"


Stored = tuple[str, str | None]  # a tree head's name and the version that holds it (``list_stored``)


def _read_one(store: ObjectStore, key: ServiceKey, stored: Stored) -> TreeHead | None:
    """The tree head stored as ``stored`` if it is one signed by ``key`` (None otherwise)."""
    try:
        head = TreeHead.from_json(json.loads(store.get_bytes(*stored)))
    except (ValueError, KeyError, TypeError):
        return None
    return head if head.signed_by(key.public) else None


def read_tree_heads(store: ObjectStore, key: ServiceKey) -> tuple[list[TreeHead], list[str]]:
    """Every tree head in storage, smallest first, and the names of any that are not the key's."""
    return sample_tree_heads(store, key, None)[:2]


NEWEST_TRIES = 64  # unsigned objects passed over, newest first, before giving up on a newest head


def sample_tree_heads(
    store: ObjectStore, key: ServiceKey, sample: int | None, rng: random.Random | None = None
) -> tuple[list[TreeHead], list[str], int, list[str]]:
    """The tree heads a check reads, smallest first, the names among them that are not the key's,
    how many tree heads storage holds, and the names a delete marker hides (their heads are read
    all the same: every version is listed, ``ObjectStore.list_stored``).

    ``sample`` None reads every one. Otherwise it reads a bounded number whatever the log's age:
    the newest signed one (what a cut tail is checked against; unsigned objects above it are named,
    up to ``NEWEST_TRIES``), the oldest, and ``sample`` more drawn at random (from the system's
    randomness unless ``rng`` is given: nobody can know beforehand which heads will be read, so a
    rewritten history, which contradicts every tree head stored after the rewritten entry, is
    caught unless all of them are left out). Only the names are listed in full; a name carries its
    head's size (``object_name``), so the sample is drawn without reading the others."""
    names, hidden = store.list_stored(PREFIX)
    read: dict[Stored, TreeHead | None] = {}  # each object fetched once
    if sample is None:
        picked = names
    else:
        pool = random.SystemRandom() if rng is None else rng
        chosen: set[Stored] = set()
        for name in reversed(names[-NEWEST_TRIES:]):
            chosen.add(name)
            read[name] = _read_one(store, key, name)
            if read[name] is not None:
                break
        rest = [n for n in names if n not in chosen]
        if rest:
            chosen.add(rest[0])
            rest = rest[1:]
        chosen.update(pool.sample(rest, min(sample, len(rest))))
        picked = sorted(chosen)
    good: list[TreeHead] = []
    bad: list[str] = []
    for name in picked:
        head = read[name] if name in read else _read_one(store, key, name)
        if head is None:
            bad.append(name[0])
        else:
            good.append(head)
    good.sort(key=lambda h: (h.tree_size, h.timestamp))
    return good, bad, len(names), hidden


class LedgerContradicted(RuntimeError):
    """The ledger in the database is not the one the signed tree heads in storage describe: entries
    were cut from its tail or rewritten while the service was stopped. Nothing more is signed over
    it (every commit that appends entries fails, so nothing is acknowledged) until someone who may
    looks into it; ``evidence verify`` names what differs."""


def stored_heads_contradicting(
    store: ObjectStore, key: ServiceKey, tree: MerkleTree, read_on: Callable[[], None] = lambda: None
) -> str | None:
    """What, if anything, in storage contradicts a ledger whose tree is ``tree``, found without
    listing every head: any signed head of more entries than the ledger holds (a cut tail), and the
    newest head at or below the ledger's size must have the ledger's root at that size (a rewrite).
    Heads are named by their size, zero-padded, so both are a listing from one name on; only when
    no head has the ledger's exact size (a crash between a commit and its head) is every name read.

    Other instances may be appending meanwhile, and each head is stored after the commit of what it
    covers: a head of more entries than ``tree`` held when it was read may cover entries committed
    since. ``read_on`` then grows ``tree`` with the entries committed now; only a head listed before
    that read that still covers more than the ledger holds marks a cut."""
    beyond = [
        head
        for head in (
            _read_one(store, key, name)
            for name in store.list_stored(PREFIX, start_after=f"{PREFIX}{tree.size:015d}.")[0]
        )
        if head is not None and head.tree_size > tree.size
    ]
    if beyond:
        read_on()
        largest = max(beyond, key=lambda h: h.tree_size)
        if largest.tree_size > tree.size:
            return (
                f"a signed tree head in storage covers {largest.tree_size} custody entries; "
                f"the ledger holds {tree.size}"
            )
    size = tree.size
    names = store.list_stored(f"{PREFIX}{size:015d}-")[0] if size else []
    heads = [h for h in (_read_one(store, key, n) for n in names) if h is not None]
    if not heads:
        heads = [h for h in sample_tree_heads(store, key, 0)[0] if h.tree_size <= size]
    if not heads:
        return None
    newest = max(heads, key=lambda h: h.tree_size)
    if tree.root(newest.tree_size).hex() != newest.root_hash:
        return (
            f"the ledger's first {newest.tree_size} custody entries are not those the signed tree "
            f"head of {newest.timestamp} covers"
        )
    return None


class TreeHeadLog:
    """This process's view of the Merkle tree and the tree heads it has written."""

    def __init__(
        self, store: ObjectStore, key: ServiceKey, retain_days: int, gather_seconds: float = GATHER_SECONDS
    ) -> None:
        self.store = store
        self.key = key
        self.retain_days = retain_days
        self.gather_seconds = gather_seconds
        self.tree = MerkleTree()
        self.published = 0
        self.latest: TreeHead | None = None
        self.written = 0  # tree heads this process wrote (group commit shares them)
        self.ledger_reads = 0  # times the tree caught up with entries read back from the database
        self._lock = threading.Lock()
        self._loaded = False  # the tree has been read from the database once (at start)
        self._handed: dict[int, bytes] = {}  # leaves committed in this process, not yet in the tree
        self._handed_lock = threading.Lock()
        self._arrived = threading.Condition(self._handed_lock)  # leaves handed over, an append ended
        self.appending = 0  # transactions of this process between the start of an append and their end
        self.contradicted: LedgerContradicted | None = None  # found at start: nothing is signed

    # -- the commit hook ---------------------------------------------------------------------------

    def opening(self, session: Session) -> None:
        """``session``'s transaction is about to append (it may first wait for the ledger's head row):
        a tree head stored meanwhile waits a little for its commit (``GATHER_SECONDS``)."""
        self._listen(session)
        if not session.info.get(_OPEN):
            session.info[_OPEN] = True
            with self._arrived:
                self.appending += 1

    def _ended(self, session: Session) -> None:
        """``session``'s transaction no longer appends (it committed, rolled back or was closed)."""
        if session.info.pop(_OPEN, False):
            with self._arrived:
                self.appending -= 1
                self._arrived.notify_all()

    def _listen(self, session: Session) -> None:
        if not session.info.get(_WATCHED):
            session.info[_WATCHED] = True
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", self._after_rollback)
            event.listen(session, "after_transaction_end", self._after_transaction_end)

    def watch(self, session: Session, seq: int, leaf: bytes | None = None) -> None:
        """``seq`` (leaf hash ``leaf``) was appended in ``session``'s transaction: cover it before its
        commit returns."""
        session.info[_PENDING] = max(seq, session.info.get(_PENDING, 0))
        if leaf is not None:
            session.info.setdefault(_LEAVES, {})[seq] = leaf
        self._listen(session)

    def _after_commit(self, session: Session) -> None:
        seq = session.info.pop(_PENDING, 0)
        leaves: dict[int, bytes] = session.info.pop(_LEAVES, {})
        unsure = session.info.pop(_UNSURE, False)
        if not seq:
            self._ended(session)
            return
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        try:
            if unsure:  # which of its entries committed is known to the database alone
                self._ended(session)
                self.cover_all(engine)
            else:
                self.committed(leaves)  # handed over before this commit stops counting as appending
                self._ended(session)
                self.cover(seq, engine)
        except Exception as exc:  # noqa: BLE001 - raised by Database.session once the commit is done
            log.error("custody tree head not written", extra={"seq": seq, "error": str(exc)})
            session.info[COMMIT_DUTY_FAILED] = exc

    def _after_rollback(self, session: Session) -> None:
        if session.in_nested_transaction():  # a savepoint: what was appended before it still stands
            session.info[_UNSURE] = True
            return
        session.info.pop(_PENDING, None)
        session.info.pop(_LEAVES, None)
        session.info.pop(_UNSURE, None)
        self._ended(session)

    def _after_transaction_end(self, session: Session, transaction: Any) -> None:
        if transaction.parent is None:  # the whole transaction, however it ended (a close, too)
            self._ended(session)

    def committed(self, leaves: dict[int, bytes]) -> None:
        """Leaves of entries whose transaction has committed, for the tree to take in order."""
        with self._arrived:
            self._handed.update(leaves)
            self._arrived.notify_all()
        if min(leaves, default=self.tree.size + 1) <= self.tree.size:  # read back from the database meanwhile
            self._settle_handed()

    # -- writing -----------------------------------------------------------------------------------

    def catch_up(self, engine: Engine) -> None:
        """Add the entries committed since this process last looked (from any process) to the tree.
        The first time, at start, the tree read is checked against the tree heads in storage
        (``stored_heads_contradicting``): a ledger cut or rewritten while the service was stopped
        is never signed over."""
        if self.contradicted is not None:
            raise self.contradicted
        self.ledger_reads += 1
        self._read_committed(engine)
        if not self._loaded:
            problem = stored_heads_contradicting(
                self.store, self.key, self.tree, lambda: self._read_committed(engine)
            )
            if problem is not None:
                self.contradicted = LedgerContradicted(problem)
                log.critical("custody ledger contradicts the stored tree heads", extra={"problem": problem})
                raise self.contradicted
        self._loaded = True
        self._settle_handed()

    def _read_committed(self, engine: Engine) -> None:
        """Add the entries committed now that the tree does not hold yet, in order."""
        with Session(engine) as session:
            while True:
                rows = list(
                    session.scalars(
                        select(CustodyEntry)
                        .where(CustodyEntry.seq > self.tree.size)
                        .order_by(CustodyEntry.seq)
                        .limit(5000)
                    )
                )
                if not rows:
                    break
                for row in rows:
                    if row.seq != self.tree.size + 1:
                        raise RuntimeError(f"custody entry #{self.tree.size + 1} is missing from the ledger")
                    self.tree.append(entry_leaf(row))

    def _settle_handed(self) -> None:
        """Drop handed-over leaves the tree already holds (read from the database), each checked
        against the leaf read: a commit's own record of what it wrote must be what the ledger holds."""
        with self._handed_lock:
            stale = [s for s in self._handed if s <= self.tree.size]
            leaves = self.tree.levels[0]
            for s in stale:
                if self._handed.pop(s) != leaves[s - 1]:
                    raise RuntimeError(f"custody entry #{s} in the ledger is not the entry committed")

    def _extend(self) -> None:
        """Add the handed-over leaves that continue the tree (lock held)."""
        with self._handed_lock:
            while (leaf := self._handed.pop(self.tree.size + 1, None)) is not None:
                self.tree.append(leaf)

    def _cover_to(self, seq: int, engine: Engine) -> None:
        """Grow the tree to at least ``seq`` entries, from handed-over leaves where it can (lock held)."""
        if self._loaded:
            self._extend()
        if self.tree.size < seq:  # at start, or entries this process did not commit: read them
            self.catch_up(engine)
            self._extend()

    def cover(self, seq: int, engine: Engine) -> TreeHead | None:
        """Make sure a stored tree head covers entry ``seq``; one written for a later commit will do.
        When one already does, this returns at once, without waiting behind a write in progress for
        other entries (``published`` only grows, once its head is stored)."""
        if self.published >= seq:
            return None
        with self._lock:
            if self.published >= seq:
                return None
            self._gather()
            return self._write(seq, engine)

    def _gather(self) -> None:
        """Wait, ``gather_seconds`` at most, while other transactions of this process are appending:
        theirs commit just behind this one, and the head about to be stored then covers them as well
        (lock held, so their own commits wait for it rather than each storing one). Nothing that has
        not committed is covered: the tree takes only leaves handed over by a commit."""
        if self.gather_seconds <= 0:
            return
        deadline = time.monotonic() + self.gather_seconds
        with self._arrived:
            while self.appending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)

    def cover_all(self, engine: Engine) -> TreeHead:
        """Make sure a stored tree head covers every entry committed now."""
        with self._lock:
            return self._current(engine)

    def inclusion(self, seqs: list[int], engine: Engine) -> tuple[TreeHead, dict[int, list[str]]]:
        """A stored tree head covering entries ``seqs`` and, for each, its inclusion proof (hex path)
        against that head: what an export carries so an outsider can check the entries were logged."""
        with self._lock:
            head = self.latest
            if head is None or head.tree_size < max(seqs, default=1):
                head = self._write(max(seqs, default=1), engine)
            return head, {
                s: [h.hex() for h in self.tree.inclusion_proof(s - 1, head.tree_size)] for s in seqs
            }

    def current(self, engine: Engine) -> TreeHead:
        """A stored tree head over everything committed now (written if the newest does not cover it)."""
        with self._lock:
            return self._current(engine)

    def _current(self, engine: Engine) -> TreeHead:
        if self._loaded:
            self._extend()
        self.catch_up(engine)
        self._extend()
        if self.latest is not None and self.latest.tree_size == self.tree.size:
            return self.latest
        return self._write(max(self.tree.size, 1), engine)

    def consistency(self, first: int, second: int, engine: Engine) -> list[str]:
        """PROOF(first, D[second]) as hex: that the tree of ``first`` entries is a prefix of ``second``'s."""
        with self._lock:
            if second > self.tree.size:
                self._cover_to(second, engine)
            if not 0 < first <= second <= self.tree.size:
                raise ValueError(
                    f"no consistency proof from {first} to {second} (the log holds {self.tree.size})"
                )
            return [h.hex() for h in self.tree.consistency_proof(first, second)]

    def _write(self, seq: int, engine: Engine) -> TreeHead:
        """Sign and store a tree head over everything committed, which includes ``seq`` (lock held)."""
        self._cover_to(seq, engine)
        if self.tree.size < seq:
            raise RuntimeError(f"custody entry #{seq} was committed but cannot be read back")
        head = sign_tree_head(self.key, self.tree.size, self.tree.root())
        self.store.put_bytes(
            object_name(head),
            json.dumps(head.to_json()).encode(),
            retain_until=datetime.now(UTC) + timedelta(days=self.retain_days),
            content_type="application/json",
        )
        self.published = head.tree_size
        self.latest = head
        self.written += 1
        return head
