"""Whom and where a device was with when it recorded something: its holder then, as custody has it.

A device's member of staff and site are set by its ``device_enrolled`` and ``device_changed``
entries (``registry_replay.device_replay``'s reading: an enrolment sets both, a change of
assignment the member of staff, a change that records a site the site). Its row says only who
holds it now. Something it recorded earlier and delivers late (a camera's clip, docked after the
camera was handed to another wearer or re-enrolled at another site) is the holder's of its
recording time: :func:`device_holdings` reads the device's entries in order, and :func:`held_at`
says whose that time is.

A device speaks only for itself, and its word on when it recorded is taken only within what its
custody record vouches for (:func:`held_at`):

- the device's own signature must vouch for the time (else it is nobody's word, and the thing is
  its holder's as it is received);
- the time must not be before the key that signs was enrolled: a camera re-enrolled with a new
  key (replaced, or its old key lost) cannot date a clip into its predecessor's wearers and sites,
  and no device into the time before it was enrolled at all;
- the time must not be after it was received: a time to come is no recording time (and would be
  the holder's now anyway).

A time outside those bounds is not gone by, and the thing is its holder's as it is received, as
before; except that a signature by a key the device had before (a camera re-keyed since, its old
key retired) vouches for a time within that key's own period, from its enrolment until the next
key's (:func:`held_by_retired_key`). Such a thing is its holder's then, but held for review: a
retired key may have been lost with the device, and whoever holds it can sign for any time in
its period, never after it. So is one the device recorded while custody had it disabled, or
delivers while it is disabled (reported lost): :attr:`Held.review` says why.

Only entries that hold (hash and service signature) are read, in an unbroken chain of the device's
subject (``row_seals.device_subject``): an entry that does not hold, or a gap (an
entry deleted), hides what happened before it, so nothing before it is gone by; nor is anything
when the latest holding is not what the device's sealed row says now. Tables are read as plain
tables: this sits below ``devices``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .canonical import rfc3339
from .entries import CustodyAction, entry_number
from .lifecycle_seals import ENTRY_COLUMNS, entry_holds, warn_of_entry
from .models import CustodyEntry
from .row_seals import device_subject


@dataclass(frozen=True)
class Holding:
    """A device's member of staff, site and key from the time the entry ``seq`` records (``since``)
    until the next holding's; ``site_known`` False for an enrolment that recorded no site;
    ``disabled`` while custody has the device disabled (a ``device_disabled`` entry)."""

    since: datetime
    seq: int
    staff: str | None
    site: str | None
    site_known: bool
    key: str | None
    disabled: bool = False


@dataclass(frozen=True)
class Held:
    """Whose and where a thing a device recorded is: the member of staff and site, the time they
    were read at, the custody entry that says so (None: as the device's row stands), and why the
    device's recording time was not gone by (None: it was); ``review``: why the thing is to be held
    for review rather than taken as good evidence (a retired key's signature, a disabled device),
    and ``retired_key`` the retired key whose signature vouched for the time."""

    staff: str | None
    site: str | None
    at: datetime
    seq: int | None
    passed_over: str | None = None
    review: tuple[str, ...] = ()
    retired_key: str | None = None  # the retired key whose signature vouched for the time


def _details(row: Any) -> dict[str, Any]:
    try:
        d = json.loads(row.details)
    except (TypeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def device_holdings(session: Session, devices_secret: bytes, public: bytes, device_id: str) -> list[Holding]:
    """The device's holdings, oldest first, from the unbroken run of its entries that hold (see the
    module): each enrolment begins one, and so does each change of its member of staff or site."""
    q = (
        select(*ENTRY_COLUMNS)
        .where(CustodyEntry.item_id == device_subject(devices_secret, device_id))
        .order_by(CustodyEntry.item_seq)
    )
    holdings: list[Holding] = []
    current: Holding | None = None
    expected = 1
    for row in session.execute(q):
        at_seq = entry_number(row.item_seq)
        broken = at_seq is None or at_seq != expected
        expected = -1 if at_seq is None else at_seq + 1
        if broken or not entry_holds(public, row):
            if not broken:
                warn_of_entry(row.seq)
            holdings.clear()
            current = None
            continue
        d = _details(row)
        if d.get("device") != device_id:
            continue
        at, seq = datetime.fromisoformat(row.at), int(row.seq)
        if row.action == CustodyAction.DEVICE_ENROLLED.value:
            current = Holding(
                at, seq, _text(d.get("staff")), _text(d.get("site")), "site" in d, _text(d.get("public_key"))
            )
        elif row.action == CustodyAction.DEVICE_CHANGED.value and current is not None:
            if "assigned_to" not in d and "site" not in d:
                continue  # a new broker password, a seal: the same holder
            staff = _text(d["assigned_to"]) if "assigned_to" in d else current.staff
            site, known = (_text(d["site"]), True) if "site" in d else (current.site, current.site_known)
            current = Holding(at, seq, staff, site, known, current.key, current.disabled)
        elif (
            row.action in (CustodyAction.DEVICE_DISABLED.value, CustodyAction.DEVICE_ENABLED.value)
            and current
        ):
            disabled = row.action == CustodyAction.DEVICE_DISABLED.value
            current = replace(current, since=at, seq=seq, disabled=disabled)
        else:
            continue
        holdings.append(current)
    return holdings


def held_at(
    holdings: Sequence[Holding],
    now: tuple[str | None, str | None, str | None],
    recorded: datetime | None,
    received: datetime,
) -> Held:
    """Whose and where a thing the device recorded at ``recorded`` (None: its signature does not
    vouch for the time) and that was received at ``received`` is, by its ``holdings``; ``now`` is
    its sealed row's member of staff, site and key. Within the module's bounds, the holding of its
    recording time; else its holding when received, or its row as it stands."""
    staff, site, _ = now
    if not _bears_out(holdings, now):
        return Held(staff, site, received, None, "its custody record does not bear out its holder now")
    first, _ = _key_runs(holdings)[-1]
    since = holdings[first].since
    why: str | None = None
    if recorded is None:
        why = "its recording time is not vouched for by its signature"
    elif recorded < since:
        why = f"its recording time {rfc3339(recorded)} is before its key was enrolled ({rfc3339(since)})"
    elif recorded > received:
        why = f"its recording time {rfc3339(recorded)} is later than its receipt"
    at = received if why else recorded
    assert at is not None
    found = next((h for h in reversed(holdings[first:]) if h.since <= at), holdings[-1])
    return Held(found.staff, found.site, at, found.seq, why, () if why else _disabled_then(found))


def held_by_retired_key(
    holdings: Sequence[Holding],
    now: tuple[str | None, str | None, str | None],
    recorded: datetime,
    received: datetime,
    vouches: Callable[[str], bool],
) -> Held | None:
    """Whose and where a thing is whose signature is not the device's current key's but a key it
    had before (``vouches``: whether that key's signature holds), dated within that key's own
    period (from its enrolment until the next key's, and not after the thing was received): its
    holder then, held for review (``Held.review``). None when no retired key vouches for the time:
    a key the device never had, or a retired key signing for a time after it was retired."""
    if not _bears_out(holdings, now) or recorded > received:
        return None
    runs = _key_runs(holdings)
    for (first, end), _ in zip(runs, runs[1:], strict=False):  # every run but the current key's
        key, since, until = holdings[first].key, holdings[first].since, holdings[end].since
        if key is None or not since <= recorded < until or not vouches(key):
            continue
        found = next(h for h in reversed(holdings[first:end]) if h.since <= recorded)
        retired = (
            f"signed by a retired key of the device (its key from {rfc3339(since)} until "
            f"{rfc3339(until)}), not its current one"
        )
        review = (retired, *_disabled_then(found))
        return Held(found.staff, found.site, recorded, found.seq, None, review, key)
    return None


def _bears_out(holdings: Sequence[Holding], now: tuple[str | None, str | None, str | None]) -> bool:
    """Whether the latest holding is what the device's sealed row says now (with a known site): a
    record that does not bear out the row vouches for no earlier holder."""
    latest = holdings[-1] if holdings else None
    return latest is not None and (latest.staff, latest.site, latest.key) == now and latest.site_known


def _key_runs(holdings: Sequence[Holding]) -> list[tuple[int, int]]:
    """The runs of holdings, oldest first, over which one key (and a known site) held, as (first,
    end) indices: each key's period, from its enrolment until the next key's (or a holding whose
    site is unknown, which starts a run of its own)."""
    runs: list[tuple[int, int]] = []
    for i, h in enumerate(holdings):
        if runs and h.site_known and holdings[i - 1].site_known and holdings[i - 1].key == h.key:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _disabled_then(found: Holding) -> tuple[str, ...]:
    """Why a thing recorded while custody had its device disabled (reported lost, say) is held for review."""
    if not found.disabled:
        return ()
    return (f"recorded while the device was disabled (since {rfc3339(found.since)})",)
