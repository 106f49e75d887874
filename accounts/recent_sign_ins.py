"""The credentials that signed in in this process a moment ago (:class:`RecentSignIns`): only a hint
of which transaction a sign-in may be made in (``accounts.access.SignInWithin``), every one still
checked in full. A credential the service ends (a sign-out, a token revoked or a session ended by an
account change) is forgotten here as it ends (:func:`forget_ended`), so its next attempts are
refused in a transaction that only reads, as a made-up one is, rather than each taking SQLite's one
writer until the memory of its sign-in runs out."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session

from storage.digests import secret_digest

VOUCHED_FOR_SECONDS = 60.0  # how long a credential that signed in is let straight into a write
VOUCHED_AT_MOST = 4096  # credentials remembered so, the longest unseen forgotten first


def credential_key(kind: str, stored_digest: str) -> str:
    """How a credential is remembered: its kind (``row_seals.TOKEN`` or ``SESSION``) and the digest
    its row keeps (``storage.digests.secret_digest``), so that whatever ends the row can name it."""
    return f"{kind}\x00{stored_digest}"


def presented_key(kind: str, secret: str) -> str:
    """:func:`credential_key` of a credential as presented (the bearer token, the cookie's secret)."""
    return credential_key(kind, secret_digest(secret))


class RecentSignIns:
    """The credentials (by :func:`credential_key`) that signed in in this process within
    ``VOUCHED_FOR_SECONDS``. Each is still checked in full, and one refused or ended is forgotten at
    once. Nothing but a credential that signed in gets in, so no stream of made-up ones can push the
    genuine ones out."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def vouches(self, key: str) -> bool:
        with self._lock:
            at = self._seen.get(key)
            if at is not None and time.monotonic() - at > VOUCHED_FOR_SECONDS:
                del self._seen[key]
                at = None
        return at is not None

    def signed_in(self, key: str) -> None:
        with self._lock:
            self._seen[key] = time.monotonic()
            self._seen.move_to_end(key)
            while len(self._seen) > VOUCHED_AT_MOST:
                self._seen.popitem(last=False)

    def refused(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)

    def forget(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._seen.pop(key, None)


RECENT_SIGN_INS = RecentSignIns()


def forget_ended(session: Session, kind: str, stored_digests: Iterable[str]) -> None:
    """The credentials ending in ``session``'s transaction are forgotten now and again once it
    commits (a sign-in read meanwhile, before the end was committed, may have remembered one)."""
    keys = [credential_key(kind, d) for d in stored_digests]
    if not keys:
        return
    RECENT_SIGN_INS.forget(keys)
    event.listen(session, "after_commit", lambda _: RECENT_SIGN_INS.forget(keys), once=True)
