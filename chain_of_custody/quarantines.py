"""Which quarantines may be released after review, and whether a release on custody holds.

An item is quarantined by a ``quarantined`` custody entry, and there are two kinds:

- **for review** (``kind: "review"``): the bytes are what the device signed and hashed, but its
  standing is in doubt: a clip signed by a retired key of its camera within that key's period,
  recorded while custody had its camera disabled, or delivered by a camera (or a memo by a
  lone-worker device) disabled now (``chain_of_custody.device_holders``, ``ingest.clip_facts``,
  ``alarms.voice_memos``). A person may look at it and release it (:func:`release`).
- **for integrity** (``kind: "integrity"``): the stored bytes, their hash or the item's record do not
  check (a damaged upload whose bytes are not what the camera hashed, a signature that does not
  verify, an object found altered by a read, an export or fixity check). Nothing ever releases it.

The kind is decided from the custody record, never from the item's row: a new ``quarantined`` entry
names its kind in its signed details; an entry written before kinds were recorded is for review only
when it holds nothing but its reason and every part of that reason (``"; "`` between them) is one of
the review reasons above, word for word; anything else is for integrity. An entry that fails its own
check (hash, signature) quarantines for integrity.

A release is a ``quarantine_released`` entry appended by the service for a person (``user:<name>``),
with their reason and the seq of the ``quarantined`` entry it releases (``releases``). It holds only
when its own check passes, it names the quarantine standing at its place in the item's chain (the
latest, with every earlier unreleased one for review too), and every quarantine it would end is for
review. Anything else releases nothing (``evidence verify`` names it), and a quarantine after a
release stands again: the latest word wins, and an integrity quarantine can never be undone. Who may
release is the route's to decide (``ingest.release_api``); the item's row goes back to ``stored`` in
the transaction that appends the release.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import Refused

from .entries import ChainReport, CustodyAction, Problem, SignedEntry, Verifier, check_entry, details_object
from .ledger import Ledger, hold_head, to_signed
from .models import CustodyEntry, EvidenceItem

REVIEW, INTEGRITY = "review", "integrity"
RELEASES = "releases"  # the release entry's detail naming the seq of the quarantine it ends
REASON_MIN, REASON_MAX = 10, 2000

_MOMENT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(?:Z|[+-][0-9]{2}:[0-9]{2})"
_NAME = r"[^\s;]+"
REVIEW_REASONS = tuple(
    re.compile(p)
    for p in (
        rf"signed by a retired key of the device \(its key from {_MOMENT} until {_MOMENT}\), not its current one",
        rf"recorded while the device was disabled \(since {_MOMENT}\)",
        rf"camera {_NAME} was disabled \(reported lost, say\) when the clip was received",
        rf"device {_NAME} was disabled when it sent the memo",
    )
)
"""The reasons an item is held for review, as their producers word them: how an entry written before
kinds were recorded is told to be for review (each part of its reason matched whole)."""


def review_only(reasons: Sequence[str], review: Sequence[str]) -> bool:
    """Whether a new item quarantined for ``reasons`` is held for review alone: every reason is one
    of ``review`` (its standing), none of its bytes, hash or signature."""
    return bool(reasons) and all(r in review for r in reasons)


def quarantine_details(reason: str, *, for_review: bool = False) -> dict[str, str]:
    """A new ``quarantined`` entry's details: its reason and its kind."""
    return {"reason": reason, "kind": REVIEW if for_review else INTEGRITY}


def kind_of(details: dict[str, Any]) -> str:
    """The kind of a ``quarantined`` entry by its details (see the module's rule)."""
    if "kind" in details:
        return REVIEW if details["kind"] == REVIEW else INTEGRITY
    reason = details.get("reason")
    if set(details) != {"reason"} or not isinstance(reason, str) or not reason:
        return INTEGRITY
    parts = reason.split("; ")
    return REVIEW if all(any(p.fullmatch(part) for p in REVIEW_REASONS) for part in parts) else INTEGRITY


@dataclass(frozen=True)
class Quarantine:
    """A ``quarantined`` entry as its kind and reason."""

    seq: int
    at: str
    reason: str
    kind: str


@dataclass(frozen=True)
class Release:
    """A ``quarantine_released`` entry that holds: who released which quarantine, when and why."""

    seq: int
    at: str
    actor: str
    reason: str
    releases: int


@dataclass(frozen=True)
class Standing:
    """An item's quarantines as custody has them: those standing (``open``), those a release that
    holds ended (with it), and the release entries that release nothing, with why."""

    open: tuple[Quarantine, ...] = ()
    released: tuple[tuple[Quarantine, Release], ...] = ()
    unheld: tuple[tuple[int, str], ...] = field(default=())

    @property
    def quarantined(self) -> bool:
        return bool(self.open)

    @property
    def first_seq(self) -> int | None:
        return self.open[0].seq if self.open else None


def reason_problem(reason: Any) -> str | None:
    """Why ``reason`` cannot be a release's reason, or None: text of ``REASON_MIN`` to
    ``REASON_MAX`` characters, with no control characters (a line break included)."""
    if not isinstance(reason, str):
        return "a reason is text"
    if not REASON_MIN <= len(reason.strip()) <= REASON_MAX or len(reason) > REASON_MAX:
        return f"a reason is {REASON_MIN} to {REASON_MAX} characters"
    if any(unicodedata.category(c).startswith("C") for c in reason):
        return "a reason holds no control or invisible formatting characters"
    return None


def _unheld(entry: SignedEntry, details: dict[str, Any] | None, open_: Sequence[Quarantine]) -> str | None:
    """Why a ``quarantine_released`` entry releases nothing, or None when it holds."""
    if details is None:
        return "its details are not a JSON object"
    if not entry.body.actor.startswith("user:"):
        return f"its actor {entry.body.actor!r} is not a person"
    if reason_problem(details.get("reason")) is not None:
        return "it states no valid reason"
    if not open_:
        return "the item was not quarantined at that point of its record"
    if details.get(RELEASES) != open_[-1].seq:
        return f"it names entry {details.get(RELEASES)!r}, not the quarantine standing (#{open_[-1].seq})"
    integrity = next((q for q in open_ if q.kind != REVIEW), None)
    if integrity is not None:
        return f"the quarantine of entry #{integrity.seq} is for integrity, which nothing releases"
    return None


def standing_of(entries: Iterable[SignedEntry], verify_sig: Verifier | None) -> Standing:
    """The standing of one item's quarantines from its ``quarantined`` and ``quarantine_released``
    entries, in order (others are passed over)."""
    open_: list[Quarantine] = []
    released: list[tuple[Quarantine, Release]] = []
    unheld: list[tuple[int, str]] = []
    for e in entries:
        b = e.body
        details = details_object(b.details)
        broken = check_entry(e, verify_sig)
        if b.action == CustodyAction.QUARANTINED:
            kind = INTEGRITY if broken or details is None else kind_of(details)
            reason = str((details or {}).get("reason") or "")
            open_.append(Quarantine(b.seq, b.at, reason, kind))
        elif b.action == CustodyAction.QUARANTINE_RELEASED:
            why = f"it fails its own check ({broken[0].detail})" if broken else _unheld(e, details, open_)
            if why is not None:
                unheld.append((b.seq, why))
                continue
            assert details is not None
            done = Release(b.seq, b.at, b.actor, str(details["reason"]), int(details[RELEASES]))
            released.extend((q, done) for q in open_)
            open_ = []
    return Standing(tuple(open_), tuple(released), tuple(unheld))


STEPS = (CustodyAction.QUARANTINED, CustodyAction.QUARANTINE_RELEASED)


def quarantine_standing(session: Session, verify_sig: Verifier | None, item_id: str) -> Standing:
    """The item's quarantines as its custody record has them (one query; nothing for most items)."""
    rows = session.scalars(
        select(CustodyEntry)
        .where(CustodyEntry.item_id == item_id, CustodyEntry.action.in_(STEPS))
        .order_by(CustodyEntry.seq)
    )
    return standing_of((to_signed(r) for r in rows), verify_sig)


def standings(
    session: Session, verify_sig: Verifier | None, item_ids: Sequence[str] | None = None
) -> dict[str, Standing]:
    """Every item's standing that custody quarantined (of ``item_ids``, when given), read at once."""
    q = select(CustodyEntry).where(CustodyEntry.action.in_(STEPS), CustodyEntry.item_id.is_not(None))
    if item_ids is not None:
        if not item_ids:
            return {}
        q = q.where(CustodyEntry.item_id.in_(sorted(set(item_ids))))
    by_item: dict[str, list[SignedEntry]] = {}
    for row in session.scalars(q.order_by(CustodyEntry.seq)):
        by_item.setdefault(str(row.item_id), []).append(to_signed(row))
    return {i: standing_of(entries, verify_sig) for i, entries in by_item.items()}


class ReleaseRefused(Refused):
    """A release the record does not allow: 409 with a code (``not_quarantined``,
    ``integrity_quarantine``), 410 ``deleted``, 404 ``not_found``."""

    status = 409
    structured = True


def release(session: Session, ledger: Ledger, item_id: str, actor: str, reason: str) -> Release:
    """Release the item's quarantine for review on ``actor``'s word (their authority checked by the
    caller): the ``quarantine_released`` entry, and the row back to ``stored``, in the caller's
    transaction. The ledger is locked first, then the row (one lock order): two releases at once
    see each other, and the second is refused as not quarantined."""
    problem = reason_problem(reason)
    if problem is not None:
        raise ReleaseRefused("invalid_reason", problem, 422)
    hold_head(session)
    row = session.get(EvidenceItem, item_id, with_for_update=True, populate_existing=True)
    if row is None:
        raise ReleaseRefused("not_found", "no such evidence item", 404)
    if row.status == "deleted":
        raise ReleaseRefused("deleted", f"evidence item {item_id} is deleted", 410)
    standing = quarantine_standing(session, ledger.verifier, item_id)
    if not standing.open:
        raise ReleaseRefused(
            "not_quarantined",
            f"evidence item {item_id} is not quarantined on its custody record (or released already)",
        )
    integrity = next((q for q in standing.open if q.kind != REVIEW), None)
    if integrity is not None:
        raise ReleaseRefused(
            "integrity_quarantine",
            f"evidence item {item_id} is quarantined because its bytes or record did not check (custody entry "
            f"#{integrity.seq}): nothing releases that",
        )
    latest, said = standing.open[-1], reason.strip()
    entry = ledger.append(
        session,
        CustodyAction.QUARANTINE_RELEASED,
        actor,
        item_id=item_id,
        details={RELEASES: latest.seq, "reason": said, "quarantine_reason": latest.reason},
    )
    row.status = "stored"
    return Release(entry.seq, entry.at, actor, said, latest.seq)


def row_problem(item: EvidenceItem, standing: Standing | None) -> str | None:
    """Why the item's row disagrees with its quarantines on custody, or None: a row that says it
    is not quarantined (nor deleted) while a quarantine stands, no release holding for it."""
    if standing is None or not standing.open or item.status in ("quarantined", "deleted"):
        return None
    return (
        f"quarantined in the custody record (entry #{standing.open[0].seq}) but its row says "
        f"{item.status!r}, and no release on custody holds for it"
    )


def check_releases(standing: Mapping[str, Standing], report: ChainReport) -> None:
    """``evidence verify``: every ``quarantine_released`` entry that releases nothing is named."""
    for item_id in sorted(standing):
        for seq, why in standing[item_id].unheld:
            report.problems.append(
                Problem(
                    "release_unheld",
                    f"custody entry #{seq}",
                    f"a release of evidence item {item_id}'s quarantine that releases nothing: {why}",
                )
            )
