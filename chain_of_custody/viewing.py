"""A viewing, pure: what makes two ranged reads the same viewing, when one ends, and the seal of its
ranges. No I/O here (``viewings`` keeps them in the database and on custody).

A player seeking through a clip asks for many ranges; each used to be a custody entry of its own,
and each such commit waited for a signed tree head in write-once storage. A viewing records the
first read as the ``viewed`` entry (covered by a tree head before any byte leaves), the later
ranges as plain rows, and seals them with one ``viewing_closed`` entry whose ``ranges_sha256`` is
over the ordered list (:func:`ranges_digest`), so a row altered or removed after the seal is found.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.settings import ViewingSettings

from .canonical import rfc3339

MAX_RANGES = 10_000  # ranges in one viewing before the next read seals it and opens another


@dataclass(frozen=True)
class ViewingKey:
    """What two reads must share to be one viewing: the item, the person, the sign-in they came by
    (so nobody rides on another's viewing, nor on their own from another browser or token), the
    purpose and the stated reason (another reason is another step on the record)."""

    item_id: str
    actor: str
    sign_in: str
    purpose: str
    reason: str | None

    def digest(self) -> str:
        parts = (self.item_id, self.actor, self.sign_in, self.purpose, self.reason or "")
        h = hashlib.sha256(b"viewing")
        for part in parts:  # length-prefixed: no two different keys make the same bytes
            raw = part.encode()
            h.update(len(raw).to_bytes(4, "big") + raw)
        h.update(b"\x01" if self.reason is not None else b"\x00")
        return h.hexdigest()


@dataclass(frozen=True)
class ViewingPolicy:
    """How long a viewing stays open, and how many one person may hold (settings ``viewing_*``)."""

    idle: timedelta
    longest: timedelta
    per_person: int
    max_ranges: int = MAX_RANGES

    @classmethod
    def from_settings(cls, settings: ViewingSettings) -> ViewingPolicy:
        return cls(
            timedelta(minutes=settings.viewing_idle_minutes),
            timedelta(minutes=settings.viewing_longest_minutes),
            settings.max_open_viewings_per_user,
        )

    def ended(self, opened_at: datetime, last_at: datetime, ranges: int, now: datetime) -> str | None:
        """Why a viewing may take no more ranges at ``now`` (None: it may): ``idle``, ``longest`` or
        ``ranges`` (its list is full)."""
        if now - last_at >= self.idle:
            return "idle"
        if now - opened_at >= self.longest:
            return "longest"
        if ranges >= self.max_ranges:
            return "ranges"
        return None


def range_line(n: int, first: int, last: int, at: datetime) -> bytes:
    """One range as the seal's digest takes it: ``<n> <first byte> <last byte> <RFC 3339 time>\\n``."""
    return f"{n} {first} {last} {rfc3339(at)}\n".encode()


def ranges_digest(ranges: Iterable[tuple[int, int, int, datetime]]) -> str:
    """SHA-256 over the viewing's ranges in order, one :func:`range_line` each: anyone holding the
    list (``n, first, last, at``) can recompute it with ``sha256sum``."""
    h = hashlib.sha256()
    for n, first, last, at in ranges:
        h.update(range_line(n, first, last, at))
    return h.hexdigest()


RANGE_CHAIN = "viewing ranges v1"  # the label of the service key's secret the range chain is keyed with


def range_mac(
    secret: bytes, viewing_id: str, previous: str, n: int, first: int, last: int, at: datetime
) -> str:
    """A range's link in its viewing's chain: HMAC-SHA256 under ``secret`` (``ServiceKey.derived_secret
    (RANGE_CHAIN)``) over the viewing id, the previous link (the opening entry's hash for the first
    range) and the range's :func:`range_line`. Only the service can make one, so a range row edited,
    removed, reordered or slipped in while the viewing is open is found at its seal and by verify."""
    message = f"{viewing_id}\x00{previous}\x00".encode() + range_line(n, first, last, at)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def chain_problem(
    secret: bytes,
    viewing_id: str,
    anchor: str,
    ranges: Sequence[tuple[int, int, int, datetime, str | None]],
    count: int | None = None,
) -> str | None:
    """What is wrong with a viewing's kept ranges (``n, first, last, at, mac``, in order) as a chain
    from ``anchor`` (its opening entry's hash), or None; ``count``: how many its row says it holds."""
    previous = anchor
    for i, (n, first, last, at, mac) in enumerate(ranges, start=1):
        if n != i:
            return f"range {i} is missing (the next kept is range {n})"
        if mac is None or not hmac.compare_digest(
            mac, range_mac(secret, viewing_id, previous, n, first, last, at)
        ):
            return f"range {n} is not as the service recorded it (edited, replaced or slipped in)"
        previous = mac
    if count is not None and count != len(ranges):
        return f"its row counts {count} ranges, {len(ranges)} are kept"
    return None


def seal_details(
    viewing_id: str,
    viewer: str,
    purpose: str,
    ranges: list[tuple[int, int, int, datetime]],
    why: str,
    altered: str | None = None,
) -> dict[str, Any]:
    """The ``viewing_closed`` entry's details: how many ranges, how many bytes they span, the first
    and last time, and the digest of the ordered list. The reason stays on the opening entry only.
    ``altered``: the ranges did not chain from the opening entry when sealed (``chain_problem``), said
    on the seal (``ranges_altered``), which still covers the list as it was found."""
    out: dict[str, Any] = {
        "viewing": viewing_id,
        "viewer": viewer,
        "purpose": purpose,
        "ranges": len(ranges),
        "bytes": sum(last - first + 1 for _, first, last, _ in ranges),
        "first_at": rfc3339(ranges[0][3]) if ranges else None,
        "last_at": rfc3339(ranges[-1][3]) if ranges else None,
        "ranges_sha256": ranges_digest(ranges),
        "closed": why,
    }
    if altered is not None:
        out["ranges_altered"] = altered
    return out


def seal_mismatch(details: dict[str, Any], ranges: list[tuple[int, int, int, datetime]]) -> str | None:
    """What a viewing's kept ranges no longer agree with in its seal (None when they agree)."""
    if details.get("ranges") != len(ranges):
        return f"the seal counts {details.get('ranges')} ranges, {len(ranges)} are kept"
    if details.get("ranges_sha256") != ranges_digest(ranges):
        return "the kept ranges do not hash to the sealed digest (a range altered or reordered)"
    return None
