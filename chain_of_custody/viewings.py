"""Viewings in the database and on custody: a player's ranged reads of one item as one opened and one
sealed custody step (the rules are in ``viewing``).

- The first ranged read for a key (``viewing.ViewingKey``) appends the ``viewed`` entry naming the new
  viewing; its commit returns once a signed tree head covers it, before any byte is served.
- Each later range of the open viewing is a ``viewing_ranges`` row, committed before its bytes are
  served; a read that joins a viewing another request has just opened waits until that opening entry
  is covered too (``TreeHeadLog.cover``), so no byte ever leaves ahead of the signed record.
- A viewing idle for ``viewing_idle_minutes``, open for ``viewing_longest_minutes`` or holding
  ``MAX_RANGES`` ranges takes no more: the next read seals it (a ``viewing_closed`` entry with the
  ranges' count, bytes, times and digest) and opens another; the housekeeping sweep seals idle ones
  nobody comes back to, and a process seals the viewings it served when it shuts down. Opening one
  more than ``max_open_viewings_per_user`` seals that person's least recently used.

Nothing here takes a viewing row at its word: a row joined or sealed must have been opened through
the ledger (``opening_problem``: its ``viewed`` entry exists, is intact and signed, and names this
viewing, its key, person, item and purpose). A row that was not (inserted or edited in the database)
is set aside (its key cleared, logged, counted; ``evidence verify`` names it) and the read opens a
viewing of its own. Each range row carries a link of a chain keyed by a secret of the service key
and anchored on the opening entry's hash (``viewing.range_mac``), so a range edited, removed or
slipped in while the viewing is open is found at its seal (said on it: ``ranges_altered``) and by
verification.

Lock order, for every writer here: the ledger head first (any append takes it), then viewing rows. A
read that joins takes only its viewing's row and never the ledger head; when it finds the viewing
over it gives the row back and starts again on the opening path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from storage.db import Database
from storage.memo import BoundedMemo

from .canonical import rfc3339
from .entries import CustodyAction, check_entry
from .evidence import ByteRange
from .ledger import Ledger, hold_head, to_signed
from .models import CustodyEntry, EvidenceItem, ViewingRange, ViewingSession
from .verify import kept_chain
from .viewing import (
    RANGE_CHAIN,
    ViewingKey,
    ViewingPolicy,
    chain_problem,
    range_mac,
    seal_details,
)

log = logging.getLogger(__name__)

SET_ASIDE = Counter(
    "evidence_viewings_set_aside_total",
    "Viewing rows not opened through the custody ledger, refused and set aside (see the log for which)",
)
ALTERED_AT_SEAL = Counter(
    "evidence_viewings_altered_at_seal_total",
    "Viewings whose kept ranges no longer chained from their opening entry when sealed",
)


@dataclass(frozen=True)
class Viewed:
    """The viewing a range was recorded in, and whether this read opened it."""

    viewing_id: str
    opened: bool
    opened_seq: int


class Served:
    """The viewings this process has recorded ranges in, sealed when it shuts down."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, viewing_id: str) -> None:
        with self._lock:
            self._ids.add(viewing_id)

    def discard(self, viewing_id: str) -> None:
        with self._lock:
            self._ids.discard(viewing_id)

    def take(self) -> list[str]:
        with self._lock:
            ids, self._ids = sorted(self._ids), set()
        return ids


SERVED = Served()


def _hold_ledger(session: Session) -> None:
    """The ledger head's row lock (``Ledger.append`` takes it too): taken first, it orders this
    transaction's viewing-row locks after every other writer's."""
    hold_head(session)


def _secret(ledger: Ledger) -> bytes:
    return ledger.key.derived_secret(RANGE_CHAIN)


def _add_range(
    session: Session, ledger: Ledger, row: ViewingSession, byte_range: ByteRange, now: datetime
) -> None:
    """One more range, linked to the one before it (the caller holds the row)."""
    row.ranges += 1
    row.bytes += byte_range.length
    row.last_at = now
    mac = range_mac(
        _secret(ledger), row.id, row.last_mac or "", row.ranges, byte_range.start, byte_range.end, now
    )
    row.last_mac = mac
    session.add(
        ViewingRange(
            viewing_id=row.id,
            n=row.ranges,
            first_byte=byte_range.start,
            last_byte=byte_range.end,
            at=now,
            mac=mac,
        )
    )


@dataclass(frozen=True)
class Opening:
    """A viewing row's opening entry as the ledger holds it, checked (``opening_problem``)."""

    entry_hash: str
    at: datetime
    chained: bool  # opened with its key named and its ranges chained (every viewing opened since 0024)


def opening_problem(session: Session, ledger: Ledger, row: ViewingSession) -> str | Opening:
    """The row's opening entry (its hash and time) when the row was opened through the ledger: the
    entry at ``opened_seq`` is intact, signed by the service, a ``viewed`` entry of the row's item
    and person naming this viewing, its key and its purpose, and the row is not sealed. Otherwise
    why not (a row inserted or edited in the database: it stands for no custody entry)."""
    if row.closed_seq is not None or row.closed_at is not None:
        return f"viewing {row.id} is marked sealed (custody entry #{row.closed_seq}) but still takes ranges"
    entry = session.get(CustodyEntry, row.opened_seq)
    if entry is None:
        return f"viewing {row.id} names custody entry #{row.opened_seq} as its opening, which does not exist"
    signed = to_signed(entry)
    broken = check_entry(signed, ledger.verifier)
    if broken:
        return f"viewing {row.id}: its opening entry #{entry.seq} fails its check ({broken[0].detail})"
    try:
        details = json.loads(entry.details)
    except ValueError:
        details = None
    if not isinstance(details, dict):
        details = {}
    expected: dict[str, tuple[object, object]] = {
        "action": ("viewed", entry.action),
        "item": (row.item_id, entry.item_id),
        "actor": (row.actor, entry.actor),
        "viewing": (row.id, details.get("viewing")),
        "purpose": (row.purpose, details.get("purpose")),
    }
    chained = "viewing_key" in details
    if chained:  # a viewing opened before its key was named takes no ranges now (``_live``)
        expected["viewing key"] = (row.open_key, details.get("viewing_key"))
    for what, (want, found) in expected.items():
        if want != found:
            return (
                f"viewing {row.id}: custody entry #{entry.seq} is not its opening ({what} is {found!r}, "
                f"the row says {want!r})"
            )
    return Opening(entry.entry_hash, datetime.fromisoformat(signed.body.at.replace("Z", "+00:00")), chained)


CHECKED_OPENINGS: BoundedMemo[tuple[object, ...], Opening] = BoundedMemo()
"""The opening entries this process has found a viewing row to stand for (``opening_problem``), by
everything of the row that check reads (``_opening_key``): a row joined again with the same values
needs no second read and signature check of its opening entry (a custody entry, once found intact
and signed, stays what it was; ``evidence verify`` finds a later edit). A row edited in any of those
values is checked afresh; whether it is sealed is looked at on every join."""


def _opening_key(row: ViewingSession) -> tuple[object, ...]:
    return (row.id, row.opened_seq, row.item_id, row.actor, row.purpose, row.open_key)


def _opening_of_joined(session: Session, ledger: Ledger, row: ViewingSession) -> str | Opening:
    """``opening_problem`` for a row a range would join: a sealed row never joins, and an opening
    this process has already found the row to stand for is not read and checked again."""
    if row.closed_seq is None and row.closed_at is None:
        found = CHECKED_OPENINGS.get(_opening_key(row))
        if found is not None:
            return found
    opening = opening_problem(session, ledger, row)
    if not isinstance(opening, str):
        CHECKED_OPENINGS.put(_opening_key(row), opening)
    return opening


def _matches(row: ViewingSession, key: ViewingKey) -> bool:
    return (row.item_id, row.actor, row.purpose, row.reason) == (
        key.item_id,
        key.actor,
        key.purpose,
        key.reason,
    )


def _set_aside(row: ViewingSession, problem: str) -> None:
    """A viewing row that stands for no opening entry: it takes no more ranges and is never sealed
    (a seal would vouch for it); it stays, unsealed, for ``evidence verify`` to name."""
    log.error("viewing row set aside: not opened through the custody ledger", extra={"problem": problem})
    SET_ASIDE.inc()
    row.open_key = None
    SERVED.discard(row.id)


def kept_ranges(session: Session, viewing_id: str) -> list[tuple[int, int, int, datetime]]:
    """A viewing's ranges in order, as its seal's digest takes them."""
    rows = session.execute(
        select(ViewingRange.n, ViewingRange.first_byte, ViewingRange.last_byte, ViewingRange.at)
        .where(ViewingRange.viewing_id == viewing_id)
        .order_by(ViewingRange.n)
    )
    return [(n, first, last, at) for n, first, last, at in rows]


def seal(session: Session, ledger: Ledger, row: ViewingSession, why: str, now: datetime) -> bool:
    """Append the viewing's ``viewing_closed`` entry and close it (the caller holds the ledger head,
    then the row); False when the row stands for no opening entry (set aside, nothing appended). A
    list of ranges that no longer chains from the opening entry is sealed as found, saying so."""
    opening = opening_problem(session, ledger, row)
    if isinstance(opening, str):
        _set_aside(row, opening)
        return False
    kept = kept_chain(session, row.id)
    altered = None
    if opening.chained:
        altered = chain_problem(_secret(ledger), row.id, opening.entry_hash, kept, row.ranges)
    if altered is not None:
        log.error("viewing sealed with altered ranges", extra={"viewing": row.id, "problem": altered})
        ALTERED_AT_SEAL.inc()
    ranges = [(n, first, last, at) for n, first, last, at, _ in kept]
    details = seal_details(row.id, row.actor, row.purpose, ranges, why, altered)
    entry = ledger.append(
        session, CustodyAction.VIEWING_CLOSED, "service", item_id=row.item_id, details=details
    )
    row.open_key = None
    row.closed_at = now
    row.closed_seq = entry.seq
    SERVED.discard(row.id)
    return True


def _commit_without_flush(db: Database, session: Session) -> None:
    """Let this transaction (one more range of an open viewing, nothing appended to the ledger)
    commit without waiting for its write-ahead log to reach the disk: PostgreSQL's
    ``synchronous_commit = off``, for this transaction only. It saves the disk's flush on every range
    the player asks for (several a seek). The viewing itself is already on custody, durably: its
    opening ``viewed`` entry committed with a full flush, covered by a signed tree head before any
    byte of it was served. The log is written in order, so a crash of the database server can lose
    only the newest ranges of open viewings (within three ``wal_writer_delay``, 0.6 s by default),
    whole and in order: never one between two that are kept, so what is kept still chains from the
    opening entry and the seal counts it. SQLite keeps its own setting (``synchronous=NORMAL``)."""
    if db.is_postgres:
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _cover(db: Database, ledger: Ledger, seq: int) -> None:
    """Wait until a stored tree head covers entry ``seq`` (at once when this process wrote one)."""
    if ledger.tree_heads is not None:
        ledger.tree_heads.cover(seq, db.engine)


FORGED = "forged"  # ``_live``: the row stands for no opening entry of this key (``opening_problem``)


def _live(
    session: Session, ledger: Ledger, key: ViewingKey, policy: ViewingPolicy, now: datetime
) -> tuple[ViewingSession | None, str | None, str | None]:
    """The open viewing of ``key`` (row-locked), why it may take no more ranges (None: it may), and
    why it stands for no opening entry of this key (None: it does; then ended is ``FORGED``). The
    opening entry's time, not the row's, bounds how long it stays open."""
    row = session.scalars(
        select(ViewingSession).where(ViewingSession.open_key == key.digest()).with_for_update()
    ).first()
    if row is None:
        return None, None, None
    opening = _opening_of_joined(session, ledger, row)
    if isinstance(opening, str):
        return row, FORGED, opening
    if not _matches(row, key):
        return (
            row,
            FORGED,
            f"viewing {row.id} holds the key of a read of another item, person, purpose or reason",
        )
    if not opening.chained:
        return row, "unchained", None  # opened before its ranges were chained: sealed, not joined
    opened_at = min(row.opened_at, opening.at)
    return row, policy.ended(opened_at, row.last_at, row.ranges, now), None


def record_range(
    db: Database,
    ledger: Ledger,
    key: ViewingKey,
    item: EvidenceItem,
    byte_range: ByteRange,
    policy: ViewingPolicy,
    *,
    check: Callable[[Session], None] | None = None,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
    within: Session | None = None,
) -> Viewed:
    """Record one range of a viewing; returns once it may be served (its opening entry covered by a
    stored tree head). ``check`` runs first in the same transaction (the item's record still checks;
    it raises to refuse). ``details`` go on the opening entry (a stated reason). ``within``: the
    caller's transaction (the range's look-up), which the range joins its viewing in and which is
    committed here; a range that opens a viewing opens it in a transaction of its own after that."""
    now = now or datetime.now(UTC)
    digest = key.digest()
    with nullcontext(within) if within is not None else db.session() as session:
        if check is not None:
            check(session)
        row, ended, _ = _live(session, ledger, key, policy, now)
        joined = None
        if row is not None and ended is None:
            _add_range(session, ledger, row, byte_range, now)
            joined = Viewed(row.id, False, row.opened_seq)
            _commit_without_flush(db, session)
        if within is not None:
            within.commit()  # the viewing's row lock is released before another transaction takes it
    if joined is not None:
        SERVED.add(joined.viewing_id)
        _cover(db, ledger, joined.opened_seq)
        return joined
    with db.session() as session:
        _hold_ledger(session)
        row, ended, forged = _live(session, ledger, key, policy, now)
        if row is not None and ended is None:  # opened by another request meanwhile
            _add_range(session, ledger, row, byte_range, now)
            joined = Viewed(row.id, False, row.opened_seq)
        else:
            if row is not None and forged is not None:
                _set_aside(row, forged)
                session.flush()  # its key is free for the viewing opened below
            elif row is not None and ended is not None:
                seal(session, ledger, row, ended, now)
                session.flush()
            _make_room(session, ledger, key.actor, policy, now)
            row = ViewingSession(
                open_key=digest,
                item_id=item.id,
                actor=key.actor,
                purpose=key.purpose,
                reason=key.reason,
                opened_seq=0,
                opened_at=now,
                last_at=now,
            )
            session.add(row)
            session.flush()
            entry = ledger.append(
                session,
                CustodyAction.VIEWED,
                key.actor,
                item_id=item.id,
                details={
                    "purpose": key.purpose,
                    "range": [byte_range.start, byte_range.end],
                    "sha256": item.sha256,
                    "viewing": row.id,
                    "viewing_key": digest,
                    **(details or {}),
                },
            )
            row.opened_seq = entry.seq
            row.last_mac = entry.entry_hash
            _add_range(session, ledger, row, byte_range, now)
            opened = Viewed(row.id, True, entry.seq)
    # The commit above returned only once a tree head covers the opening entry (``tree_heads``).
    if joined is not None:
        SERVED.add(joined.viewing_id)
        _cover(db, ledger, joined.opened_seq)
        return joined
    SERVED.add(opened.viewing_id)
    return opened


def _make_room(session: Session, ledger: Ledger, actor: str, policy: ViewingPolicy, now: datetime) -> None:
    """Seal the person's least recently used viewings so that one more keeps them within their cap
    (rows being served this instant are passed over: they are not the least recently used)."""
    count = session.scalar(
        select(func.count())
        .select_from(ViewingSession)
        .where(ViewingSession.actor == actor, ViewingSession.open_key.is_not(None))
    )
    excess = int(count or 0) - policy.per_person + 1
    if excess <= 0:
        return
    rows = session.scalars(
        select(ViewingSession)
        .where(ViewingSession.actor == actor, ViewingSession.open_key.is_not(None))
        .order_by(ViewingSession.last_at)
        .limit(excess)
        .with_for_update(skip_locked=True)
    )
    for row in list(rows):
        seal(session, ledger, row, "per_person", now)


def seal_over(
    db: Database, ledger: Ledger, policy: ViewingPolicy, now: datetime | None = None, batch: int = 200
) -> int:
    """The sweep: seal every open viewing that may take no more ranges (idle, too long open), in
    batches that share a tree head; rows another request holds are left for the next sweep. Returns
    how many were sealed."""
    now = now or datetime.now(UTC)
    sealed = 0
    while True:
        with db.session() as session:
            _hold_ledger(session)
            # How long it has been open is told by its opening entry's time as well as by the
            # row's (an edited row does not keep a viewing open): RFC 3339 text compares in order.
            found = session.execute(
                select(ViewingSession, CustodyEntry.at)
                .outerjoin(CustodyEntry, CustodyEntry.seq == ViewingSession.opened_seq)
                .where(
                    ViewingSession.open_key.is_not(None),
                    or_(
                        ViewingSession.last_at <= now - policy.idle,
                        ViewingSession.opened_at <= now - policy.longest,
                        CustodyEntry.at <= rfc3339(now - policy.longest),
                        CustodyEntry.seq.is_(None),
                        ViewingSession.ranges >= policy.max_ranges,
                    ),
                )
                .order_by(ViewingSession.last_at)
                .limit(batch)
                .with_for_update(of=ViewingSession, skip_locked=True)
            ).all()
            closed = 0
            for row, opening_at in found:
                opened_at = row.opened_at
                if opening_at is not None:
                    opened_at = min(opened_at, datetime.fromisoformat(opening_at.replace("Z", "+00:00")))
                why = policy.ended(opened_at, row.last_at, row.ranges, now)
                if opening_at is None or why is not None:
                    closed += 1  # sealed, or set aside when it stands for no opening entry
                    sealed += seal(session, ledger, row, why or "longest", now)
        if len(found) < batch or closed == 0:
            return sealed


def seal_served(db: Database, ledger: Ledger, why: str = "shutdown") -> int:
    """Seal the viewings this process served that are still open (at shutdown)."""
    ids = SERVED.take()
    if not ids:
        return 0
    now = datetime.now(UTC)
    with db.session() as session:
        _hold_ledger(session)
        rows = list(
            session.scalars(
                select(ViewingSession)
                .where(ViewingSession.id.in_(ids), ViewingSession.open_key.is_not(None))
                .with_for_update(skip_locked=True)
            )
        )
        return sum(seal(session, ledger, row, why, now) for row in rows)


def open_viewings(session: Session) -> int:
    """How many viewings are open now (a gauge the housekeeping pass keeps)."""
    return int(
        session.scalar(
            select(func.count()).select_from(ViewingSession).where(ViewingSession.open_key.is_not(None))
        )
        or 0
    )
