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

Nothing locks an account: an attacker can slow themselves, never the administrator. A success
clears the failures of that account and address. The answer to a throttled try is the answer to a
wrong password (``accounts.service.sign_in``), so throttling tells nobody whether the account exists.

The state is this process's own (a bounded table, oldest forgotten first): with several API
replicas each throttles what it sees.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from storage.settings import HttpSettings

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 100_000  # per table: bounded memory whatever names and addresses are tried


@dataclass
class _Bucket:
    tokens: float
    at: float

    def refill(self, now: float, capacity: float, per_second: float) -> None:
        self.tokens = min(capacity, self.tokens + (now - self.at) * per_second)
        self.at = now


@dataclass
class _Pair:
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


@dataclass
class SignInThrottle:
    policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()
        self._accounts: OrderedDict[str, _Bucket] = OrderedDict()

    # -- reading -------------------------------------------------------------------------------

    def allowed(self, username: str, client: str) -> bool:
        """May this address try a password for this username now?

        A try made while told to wait counts as one more failure: hammering makes the wait longer.
        """
        now = self.clock()
        p = self.policy
        with self._lock:
            pair = self._pairs.get((username, client))
            if pair is not None and pair.not_before > now:
                pair.failures += 1
                pair.not_before = now + self._delay(pair.failures)
                return False
            bucket = self._clients.get(client)
            if bucket is not None:
                bucket.refill(now, p.client_failures_per_hour, p.client_failures_per_hour / 3600)
                if bucket.tokens < 1:
                    return False
            account = self._accounts.get(username)
            if account is not None and pair is not None and pair.failures > 0:
                account.refill(now, p.account_failures_per_hour, p.account_failures_per_hour / 3600)
                if account.tokens < 1:
                    return False
            return True

    # -- recording ------------------------------------------------------------------------------

    def failed(self, username: str, client: str) -> None:
        now = self.clock()
        p = self.policy
        with self._lock:
            pair = self._entry(self._pairs, (username, client), _Pair)
            pair.failures += 1
            if pair.failures >= p.free:
                pair.not_before = now + self._delay(pair.failures)
            for table, key, capacity in (
                (self._clients, client, p.client_failures_per_hour),
                (self._accounts, username, p.account_failures_per_hour),
            ):
                bucket = self._entry(table, key, partial(_Bucket, float(capacity), now))
                bucket.refill(now, capacity, capacity / 3600)
                bucket.tokens = max(0.0, bucket.tokens - 1)

    def _delay(self, failures: int) -> float:
        p = self.policy
        return float(min(p.max_delay, p.base_delay * 2 ** min(max(failures - p.free, 0), 30)))

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._pairs.pop((username, client), None)

    def forgive(self, username: str) -> None:
        """An administrator's unlock: forget every failure recorded against the account."""
        with self._lock:
            for key in [k for k in self._pairs if k[0] == username]:
                del self._pairs[key]
            self._accounts.pop(username, None)

    @staticmethod
    def _entry(table: OrderedDict[K, V], key: K, make: Callable[[], V]) -> V:
        found = table.get(key)
        if found is None:
            found = table[key] = make()
            while len(table) > MAX_ENTRIES:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return found
