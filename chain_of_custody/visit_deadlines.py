"""What the custody ledger records of a lone visit's deadline: the expected end its start check-in
gave, and whether an end check-in came.

A visit's missed check-in is due by its expected end (plus the grace period), and none is due once
it ended; both are on the visit's row, sealed (``visit_seals``), and on its ``visit_changed``
entries. When the row's seal does not hold, the row says nothing the service can go by, so the
clock takes the visit at what these entries record (:func:`recorded_visit`): the device's own
expected end, and an end only if the device checked out. ``evidence verify`` and ``evidence
upgrade-seals`` compare the row with the same record (:func:`deadline_replay`,
:func:`deadline_refused`).

The expected end of an entry is taken from a start check-in (the device sent it) or from an entry
of a visit whose row vouched for it: the end check-in of a visit whose seal did not hold records
the row as it stood, which says nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from .canonical import rfc3339
from .entries import CustodyAction, SignedEntry
from .lifecycle_seals import ENTRY_COLUMNS, entry_holds, warn_of_entry
from .models import CustodyEntry


@dataclass(frozen=True)
class RecordedDeadline:
    """A visit's deadline as its custody entries record it: the expected end (rfc3339) and the seq
    of the entry that recorded it, and the seq of its end check-in's entry, if one came."""

    expected_end: tuple[int, str] | None = None
    ended: int | None = None

    def expected_at(self) -> datetime | None:
        return None if self.expected_end is None else datetime.fromisoformat(self.expected_end[1])


def _fold(found: RecordedDeadline, seq: int, d: dict[str, Any]) -> RecordedDeadline:
    """``found`` with one more entry of the visit, ``d`` its details."""
    expected, ended = found.expected_end, found.ended
    said = d.get("expected_end")
    if isinstance(said, str) and (d.get("checkin") == "start" or not d.get("unsealed")):
        expected = (seq, said)
    if d.get("checkin") == "end" or d.get("ended"):
        ended = seq
    return RecordedDeadline(expected, ended)


def deadline_replay(entries: Iterable[SignedEntry]) -> dict[str, RecordedDeadline]:
    """What the ledger records of each visit's deadline, keyed ``device/visit``."""
    out: dict[str, RecordedDeadline] = {}
    for e in entries:
        if e.body.action != CustodyAction.VISIT_CHANGED.value:
            continue
        try:
            d = json.loads(e.body.details)
        except ValueError:
            continue
        if not isinstance(d, dict):
            continue
        device, visit = d.get("device"), d.get("visit")
        if isinstance(device, str) and isinstance(visit, str):
            key = f"{device}/{visit}"
            out[key] = _fold(out.get(key, RecordedDeadline()), e.body.seq, d)
    return out


def recorded_visit(session: Session, device: str, visit_id: str, public: bytes) -> RecordedDeadline:
    """What the ledger records of one visit's deadline, read for a visit whose seal does not hold
    (rare: a scan of the ``visit_changed`` entries that mention it, by their canonical text), in
    entries that hold (:func:`lifecycle_seals.entry_holds`, checked with the custody key ``public``):
    one written or edited in the database (an end check-in that never came) is named in a warning
    and passed over, so it neither ends the visit nor moves its expected end."""
    found = RecordedDeadline()
    for row in session.execute(visit_entries(visit_id)):
        try:
            d = json.loads(row.details)
        except ValueError:
            continue
        if not isinstance(d, dict) or d.get("device") != device or d.get("visit") != visit_id:
            continue
        if entry_holds(public, row):
            found = _fold(found, int(row.seq), d)
        else:
            warn_of_entry(row.seq)
    return found


def visit_entries(visit_id: str) -> Select[*tuple[Any, ...]]:
    """The ``visit_changed`` entries whose details mention the visit ``visit_id``, in order
    (:data:`ENTRY_COLUMNS`; a scan by their canonical text, for the rare visit its row says nothing
    of: the caller checks each names the device and visit, and that it holds)."""
    mention = json.dumps({"visit": visit_id}, separators=(",", ":"), ensure_ascii=False)[1:-1]
    escaped = mention.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return (
        select(*ENTRY_COLUMNS)
        .where(
            CustodyEntry.action == CustodyAction.VISIT_CHANGED.value,
            CustodyEntry.details.like(f"%{escaped}%", escape="\\"),
        )
        .order_by(CustodyEntry.seq)
    )


def deadline_refused(
    expected_end: datetime | None, ended_at: datetime | None, found: RecordedDeadline
) -> str | None:
    """Why a visit's expected end or end is not what its custody entries record, or None. A visit
    whose start never reached the service has no expected end recorded, and none on its row."""
    said = found.expected_end
    row = None if expected_end is None else rfc3339(expected_end)
    if said is not None and row != said[1]:
        return f"its expected end is {row!r} but custody entry #{said[0]} says {said[1]!r}"
    if said is None and row is not None:
        return f"its expected end is {row!r} but no custody entry records one"
    if ended_at is not None and found.ended is None:
        return "it has an end but no custody entry records its end check-in"
    return None
