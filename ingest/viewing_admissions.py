"""A player's ranges of one item admitted once for a moment, not looked up afresh for every range.

A seek costs a player two to four ranges one after another, and each range's look-up (the item
found among the caller's incidents, a play grant checked, the download's name made) took 4–6 ms of
the wait for its first byte. What one range's look-up decided is kept here for ``seconds``
(``EVIDENCE_VIEWING_ADMISSION_SECONDS``, 2 by default; 0 keeps nothing) and the next ranges of the
same read use it.

Done again for every range, whatever is kept here:

- the sign-in (bearer token or console session, idle timeout, CSRF and same-origin checks), with the
  person's role, site and sealed incident assignments. These are part of the key: a revoked token, an
  ended session, a changed role or site and a withdrawn assignment refuse or miss on the very next
  range, never later;
- the custody record of the range (its viewing row, the opening entry covered by a tree head);
- the item's row, read afresh: one whose status changed (quarantined, deleted) is looked up in full
  and refused as it says; and the row against its signed ``stored`` entry and custody's
  ``quarantined`` entries;
- every byte served, against the recorded block digests.

What may lag by up to ``seconds``, and only for a player already playing the item: the item
unlinked from the incident that made it visible to them, or that incident's site or footage window
changed. A play grant's expiry does not lag (a kept admission never outlives its ``expires_at``).
The window is short because a seek's ranges come within a few hundred milliseconds of each other,
and it widens little what a revocation already leaves open: a range being served when access is
withdrawn streams to its end (a player's open-ended range can be the rest of the clip).

Only a player's reads are kept (a ``Range``, in good order, no review of a quarantined item, no
download grant, which is used up by the read it admits). The admission lives in this process's
memory only: nothing is handed to the client to bring back, so there is nothing to forge or seal,
and each replica keeps its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fastapi import Request
from sqlalchemy.orm import Session

from accounts.service import Principal
from chain_of_custody.models import EvidenceItem
from chain_of_custody.reads import ReadOf
from storage.digests import secret_digest
from storage.settings import Settings

KEPT_AT_MOST = 4096  # admissions held at once (oldest dropped first): a few per person playing


@dataclass(frozen=True)
class AdmissionKey:
    """Whose read of which item, for what stated reason, by which sign-in: everything a look-up
    depends on that the request itself says. The grant is kept as its digest, never the token."""

    user_id: int
    role: str
    site: str | None
    assignments: frozenset[int]
    sign_in: str
    item_id: str
    reason: str | None
    grant: str | None

    @classmethod
    def of(cls, user: Principal, item_id: str, reason: str | None, grant: str | None) -> AdmissionKey:
        digest = secret_digest(grant) if grant is not None else None
        return cls(
            user.user_id, user.role, user.site, user.assignments, user.sign_in, item_id, reason, digest
        )


class ViewingAdmissions:
    """Look-ups of a player's reads, each kept for ``seconds`` (monotonic clock) and no longer than
    ``until`` (a grant's expiry) says."""

    def __init__(self, seconds: float, most: int = KEPT_AT_MOST) -> None:
        self.seconds = seconds
        self.most = most
        self._kept: OrderedDict[AdmissionKey, tuple[float, ReadOf]] = OrderedDict()
        self._lock = threading.Lock()

    def admitted(self, key: AdmissionKey) -> ReadOf | None:
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return None
            if kept[0] <= now:
                del self._kept[key]
                return None
            return kept[1]

    def keep(self, key: AdmissionKey, read: ReadOf, expires_at: datetime | None = None) -> None:
        if self.seconds <= 0 or read.admit is not None or read.review_reason is not None:
            return
        until = time.monotonic() + self.seconds
        if expires_at is not None:
            until = min(until, time.monotonic() + (expires_at - datetime.now(UTC)).total_seconds())
        with self._lock:
            self._kept[key] = (until, read)
            self._kept.move_to_end(key)
            while len(self._kept) > self.most:
                self._kept.popitem(last=False)

    def look_up(
        self,
        key: AdmissionKey,
        look_up: Callable[[Session], tuple[ReadOf, datetime | None]],
    ) -> Callable[[Session], ReadOf]:
        """``look_up`` (which returns the read and when its grant expires, if it has one) as a
        look-up that uses an admission kept for ``key``, and keeps the one it makes."""

        def admitted_or_looked_up(session: Session) -> ReadOf:
            kept = self.admitted(key)
            if kept is not None:
                # The item's row is read afresh (one look-up by its key): a status changed since
                # (quarantined, deleted) is looked up in full and refused as it says.
                row = session.get(EvidenceItem, kept.item.id)
                if row is not None and row.status == kept.item.status:
                    return replace(kept, item=row)
            read, expires_at = look_up(session)
            self.keep(key, read, expires_at)
            return read

        return admitted_or_looked_up


_made = threading.Lock()


def viewing_admissions(request: Request, settings: Settings) -> ViewingAdmissions:
    """This application's one :class:`ViewingAdmissions` (``viewing_admission_seconds``)."""
    state = request.app.state
    with _made:
        found: ViewingAdmissions | None = getattr(state, "viewing_admissions", None)
        if found is None:
            found = ViewingAdmissions(settings.viewing_admission_seconds)
            state.viewing_admissions = found
    return found
