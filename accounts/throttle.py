"""Sign-in throttling that slows a password guesser without locking the real person out.

Three limits, all counting failures only (a right password never waits behind them unless its
own address has been guessing):

- **account and address**: after ``free`` failures for one username from one client address, each
  further try from there must wait, the wait doubling with each failure up to ``max_delay`` (a
  try made while told to wait is one more failure);
- **address**: a token bucket of failures per client address, whatever the usernames (a spray
  across many accounts runs dry);
- **account**: a token bucket of failures per username from anywhere; when it is spent, addresses
  that have already failed for the account wait, while an address with no failure for it (the
  real person at their own desk) still gets its try.

Nothing locks an account: an attacker can slow themselves, never the administrator. A try let
through is counted as a failure at once and given back when its password proves right, so tries
fired in parallel each see the ones before them. A success clears the failures of that account and
address. The answer to a throttled try is the answer to a
wrong password (``accounts.service.sign_in``), so throttling tells nobody whether the account exists.

The state is in the database (``sign_in_failures``, ``sign_in_buckets``), read and updated in one
transaction of its own per try (rows locked on PostgreSQL; SQLite's writers take turns), so every
replica of the service counts the same failures.

Whoever can write the database could delete a waiting pair's row, or put back an older copy, and
guess on at once. Each process therefore also keeps, in memory, the pairs it last left waiting
(:class:`WaitsSeen`): a pair whose row is gone or older than what the process wrote, while the
process knows it must still wait, waits as the process knows (and a warning says the row was
reset). No legitimate change does that: a success follows a try let through by the same process
(which forgets the pair), never one while waiting, and an administrator's unlock rewrites the rows
(newer) rather than removing them. A row rewritten newer is taken as it reads, so one forged so
(``updated`` moved on, the failures cleared) is not caught here; the buckets are not kept so (a spray is still held per pair), nor what a restarted process never saw;
a reader of the database holds the password hashes anyway, a stronger way to guess than any try
here. Usernames and addresses are kept as keyed digests
only. Rows are forgotten when they no longer matter: a bucket an hour after its last failure (it is
full again), failures of one username and address a day after the last (``FORGET_AFTER_S``).
The rules themselves (:func:`judge`, :func:`count_failure`) are pure, on values.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.orm import Session

from storage.db import Database, dialect_insert, on_own_account
from storage.settings import HttpSettings

from .models import SignInBucket, SignInFailures

log = logging.getLogger(__name__)

HOUR_S = 3600.0
FORGET_AFTER_S = 24 * HOUR_S  # failures of one username and address, untouched this long, are forgotten
PRUNE_EVERY_S = 60.0  # how often one process forgets what no longer matters


@dataclass
class Bucket:
    tokens: float
    at: float

    def refill(self, now: float, capacity: float, per_second: float) -> None:
        self.tokens = min(capacity, self.tokens + (now - self.at) * per_second)
        self.at = now


@dataclass
class Pair:
    failures: int = 0
    not_before: float = 0.0


@dataclass
class ThrottlePolicy:
    free: int = 3
    base_delay: float = 1.0
    max_delay: float = 900.0
    client_failures_per_hour: int = 30
    account_failures_per_hour: int = 100

    @classmethod
    def from_settings(cls, settings: HttpSettings) -> ThrottlePolicy:
        return cls(
            free=settings.login_free_failures,
            max_delay=float(settings.login_max_delay_seconds),
            client_failures_per_hour=settings.login_client_failures_per_hour,
            account_failures_per_hour=settings.login_account_failures_per_hour,
        )

    def delay(self, failures: int) -> float:
        return float(min(self.max_delay, self.base_delay * 2 ** min(max(failures - self.free, 0), 30)))


# -- the rules, on values ------------------------------------------------------------------------


def judge(
    p: ThrottlePolicy, now: float, pair: Pair | None, client: Bucket | None, account: Bucket | None
) -> bool:
    """May this address try a password for this username now? A try made while told to wait counts
    as one more failure (``pair`` is updated): hammering makes the wait longer."""
    if pair is not None and pair.not_before > now:
        pair.failures += 1
        pair.not_before = now + p.delay(pair.failures)
        return False
    if client is not None:
        client.refill(now, p.client_failures_per_hour, p.client_failures_per_hour / HOUR_S)
        if client.tokens < 1:
            return False
    if account is not None and pair is not None and pair.failures > 0:
        account.refill(now, p.account_failures_per_hour, p.account_failures_per_hour / HOUR_S)
        if account.tokens < 1:
            return False
    return True


def count_failure(p: ThrottlePolicy, now: float, pair: Pair, client: Bucket, account: Bucket) -> None:
    """One more failure: the pair's wait (past its free tries) and a token from each bucket."""
    pair.failures += 1
    if pair.failures >= p.free:
        pair.not_before = now + p.delay(pair.failures)
    for bucket, capacity in ((client, p.client_failures_per_hour), (account, p.account_failures_per_hour)):
        bucket.refill(now, capacity, capacity / HOUR_S)
        bucket.tokens = max(0.0, bucket.tokens - 1)


def digest(kind: str, text: str) -> str:
    """What the tables keep instead of a username or an address."""
    return hashlib.sha256(f"evidence sign-in {kind}\n{text}".encode()).hexdigest()


# -- the shared state --------------------------------------------------------------------------


class WaitsSeen:
    """The pairs this process last left waiting: failures, the wait's end and when it wrote them,
    by (username key, client key); at most ``limit``, the longest untouched forgotten first."""

    def __init__(self, limit: int = 20000) -> None:
        self._seen: OrderedDict[tuple[str, str], tuple[int, float, float]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def wrote(self, key: tuple[str, str], pair: Pair, now: float) -> None:
        with self._lock:
            if pair.not_before <= now:
                self._seen.pop(key, None)
                return
            self._seen[key] = (pair.failures, pair.not_before, now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)

    def forget(self, username_key: str, client_key: str | None = None) -> None:
        """Forget the pair (a success), or every pair of the username (an unlock)."""
        with self._lock:
            for key in [k for k in self._seen if k[0] == username_key and client_key in (None, k[1])]:
                del self._seen[key]

    def stands(self, key: tuple[str, str], pair: Pair, written: float | None, now: float) -> Pair:
        """The pair as the database has it (``written``: when its row was last written, None when
        it was missing), or as this process left it when the row was removed or put back older
        while the process knows it must still wait."""
        with self._lock:
            seen = self._seen.get(key)
        if seen is None:
            return pair
        failures, not_before, at = seen
        if not_before <= now or pair.not_before >= not_before or (written is not None and written >= at):
            return pair
        log.warning(
            "sign-in throttle: a waiting row was removed or put back in the database; its wait stands"
        )
        return Pair(max(failures, pair.failures), not_before)


@dataclass
class SignInThrottle:
    """The throttle over the database every replica shares."""

    db: Database
    policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    clock: Callable[[], float] = time.time  # wall-clock seconds: the same in every process
    _pruned: float = field(default=0.0, init=False)
    _waits: WaitsSeen = field(default_factory=WaitsSeen, init=False)

    def allowed(self, username: str, client: str) -> bool:
        """May this address try a password for this username now (see :func:`judge`)?

        A try let through is counted as a failure at once, in the same transaction, and given back
        by :meth:`succeeded` when the password was right: tries made at the same moment (a guesser
        firing many in parallel while each password check takes its time) each see the ones before
        them, instead of all passing before any failure is counted."""
        now = self.clock()
        p = self.policy
        u, c = digest("username", username), digest("client", client)
        with self.db.session() as session:
            row, client_row, account_row, fresh = self._rows(session, u, c, now)
            pair = self._waits.stands(
                (u, c), Pair(row.failures, row.not_before), None if fresh else row.updated, now
            )
            client_bucket = Bucket(client_row.tokens, client_row.at)
            account_bucket = Bucket(account_row.tokens, account_row.at)
            ok = judge(p, now, pair, client_bucket, account_bucket)
            if ok:
                count_failure(p, now, pair, client_bucket, account_bucket)
            row.failures, row.not_before, row.updated = pair.failures, pair.not_before, now
            for held, value in ((client_row, client_bucket), (account_row, account_bucket)):
                held.tokens, held.at = value.tokens, value.at
        self._waits.wrote((u, c), pair, now)
        return ok

    def failed(self, username: str, client: str) -> None:
        """The password was wrong: already counted when the try was let through (:meth:`allowed`);
        now and then, forget what no longer matters."""
        now = self.clock()
        if now - self._pruned > PRUNE_EVERY_S:
            self._pruned = now
            with self.db.session() as session:
                self.forget_old(session, now)

    def _rows(self, session: Session, u: str, c: str, now: float) -> tuple[Any, Any, Any, bool]:
        """The pair's row and the two buckets' rows, made if missing and locked (pair first, then
        client, then account: every writer takes them in this order); and whether the pair's row
        was missing."""
        p = self.policy
        row, fresh = self._row(
            session,
            SignInFailures,
            {"username_key": u, "client_key": c, "failures": 0, "not_before": 0.0, "updated": now},
            (u, c),
        )
        client_row, account_row = (
            self._row(
                session,
                SignInBucket,
                {"scope": scope, "key": key, "tokens": float(cap), "at": now},
                (scope, key),
            )[0]
            for scope, key, cap in (
                ("client", c, p.client_failures_per_hour),
                ("account", u, p.account_failures_per_hour),
            )
        )
        return row, client_row, account_row, fresh

    @staticmethod
    def _row(
        session: Session,
        table: type[SignInFailures] | type[SignInBucket],
        values: dict[str, object],
        key: tuple[str, str],
    ) -> tuple[Any, bool]:
        """The row, made if missing (by whichever replica gets there first) and locked for this
        transaction; and whether this made it."""
        first = cast(Table, table.__table__).primary_key.columns.values()[0]
        insert = dialect_insert(session, table).values(**values).on_conflict_do_nothing().returning(first)
        made = session.execute(insert).first() is not None  # (rowcount is not told on every driver)
        found = session.get(table, key, with_for_update=True, populate_existing=True)
        assert found is not None
        return found, made

    def succeeded(self, username: str, client: str) -> None:
        """The password was right: the failures of this account and address are cleared, and the try
        counted when it was let through is given back to both buckets."""
        p = self.policy
        u, c = digest("username", username), digest("client", client)
        self._waits.forget(u, c)  # the try let through may have left the pair waiting, as counted
        with self.db.session() as session:
            session.execute(
                delete(SignInFailures).where(SignInFailures.username_key == u, SignInFailures.client_key == c)
            )
            for scope, key, cap in (
                ("client", c, p.client_failures_per_hour),
                ("account", u, p.account_failures_per_hour),
            ):
                bucket = session.get(SignInBucket, (scope, key), with_for_update=True, populate_existing=True)
                if bucket is not None:
                    bucket.tokens = min(float(cap), bucket.tokens + 1)

    def forgive(self, username: str) -> None:
        """An administrator's unlock: forget every failure recorded against the account. Its pairs'
        rows are rewritten as without failures, not removed: a row removed while a process knows it
        waits is one reset in the database (:class:`WaitsSeen`), a newer row is not."""
        u = digest("username", username)
        self._waits.forget(u)
        # Bookkeeping after the change is committed (the route's caller's check ran in that one): an
        # administrator who unlocked themselves beside a new password has no token by now.
        with on_own_account(), self.db.session() as session:
            session.execute(
                update(SignInFailures)
                .where(SignInFailures.username_key == u)
                .values(failures=0, not_before=0.0, updated=self.clock())
            )
            session.execute(
                delete(SignInBucket).where(SignInBucket.scope == "account", SignInBucket.key == u)
            )

    @staticmethod
    def forget_old(session: Session, now: float, batch: int = 1000) -> None:
        """Forget rows that no longer change an answer: a bucket an hour after it was last drawn on is
        full again, and failures untouched for ``FORGET_AFTER_S`` start over. Rows another sign-in
        holds are skipped (never waited for), so forgetting cannot deadlock with a sign-in."""
        buckets = session.execute(
            select(SignInBucket.scope, SignInBucket.key)
            .where(SignInBucket.at < now - HOUR_S)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        for scope in ("client", "account"):
            keys = [k for sc, k in buckets if sc == scope]
            if keys:
                session.execute(
                    delete(SignInBucket).where(SignInBucket.scope == scope, SignInBucket.key.in_(keys))
                )
        pairs = session.execute(
            select(SignInFailures.username_key, SignInFailures.client_key)
            .where(SignInFailures.updated < now - FORGET_AFTER_S)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        for u, c in pairs:
            session.execute(
                delete(SignInFailures).where(SignInFailures.username_key == u, SignInFailures.client_key == c)
            )

    def count(self) -> tuple[int, int]:
        """How many failure rows and bucket rows are kept (for tests and metrics)."""
        with self.db.session() as session:
            pairs = session.scalar(select(func.count()).select_from(SignInFailures)) or 0
            buckets = session.scalar(select(func.count()).select_from(SignInBucket)) or 0
        return pairs, buckets
