"""Where a lone visit's alarms are raised when its row records no site: as its custody record has it.

A visit's missed check-in, and its device's offline alarm while on it, are raised at the site the
visit was begun under and name its wearer: the record of such an alarm shows the visit's check-ins
(the worker's start message and note), so the site must be the worker's, not that of whoever holds
the device when the alarm falls due (re-enrolled at another site since). A visit's row records its
site, sealed (``visit_seals``). A visit begun before sites were recorded has none on its row, and
one whose seal does not hold lends none: each is taken at what the ledger recorded when it began
(:func:`recorded_start`), in entries that hold: the site the entry that opened it records, or, for
an entry written before sites were recorded, the site and member of staff the device's latest
enrolment or change before that entry gave it (``registry_replay.device_replay``'s reading).
Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .entries import CustodyAction
from .lifecycle_seals import ENTRY_COLUMNS, entry_holds, warn_of_entry
from .models import CustodyEntry
from .row_seals import device_subject
from .visit_deadlines import visit_entries

_DEVICE_ROWS = (CustodyAction.DEVICE_ENROLLED.value, CustodyAction.DEVICE_CHANGED.value)


@dataclass(frozen=True)
class RecordedStart:
    """What the ledger held of a visit when it began: its site and wearer (the member of staff its
    device was assigned to, for an entry that records none), and the seq of the entry that says so."""

    site: str | None
    wearer: str | None
    seq: int


def _details(row: Any) -> dict[str, Any] | None:
    try:
        d = json.loads(row.details)
    except (TypeError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def recorded_start(
    session: Session, device: str, visit_id: str, public: bytes, device_secret: bytes
) -> RecordedStart | None:
    """The site and wearer the ledger records for the visit ``visit_id`` of ``device`` when it began
    (see the module), or None when it records none: no entry that holds opens the visit, or none
    gave its device a site before it. Entries that do not hold (checked with the custody key
    ``public``) are named in a warning and passed over; ``device_secret`` keys the device's subject."""
    opened = None
    for row in session.execute(visit_entries(visit_id)):
        d = _details(row)
        if d is None or d.get("device") != device or d.get("visit") != visit_id:
            continue
        if not entry_holds(public, row):
            warn_of_entry(row.seq)
            continue
        opened = (int(row.seq), d)
        break
    if opened is None:
        return None
    seq, d = opened
    if "site" in d:
        wearer = d.get("wearer")
        return RecordedStart(d["site"], wearer if isinstance(wearer, str) else None, seq)
    q = (
        select(*ENTRY_COLUMNS)
        .where(
            CustodyEntry.item_id == device_subject(device_secret, device),
            CustodyEntry.action.in_(_DEVICE_ROWS),
            CustodyEntry.seq < seq,
        )
        .order_by(CustodyEntry.seq)
    )
    site: tuple[int, Any] | None = None
    staff: Any = None
    for row in session.execute(q):
        e = _details(row)
        if e is None or e.get("device") != device:
            continue
        if not entry_holds(public, row):
            warn_of_entry(row.seq)
            continue
        if row.action == CustodyAction.DEVICE_ENROLLED.value:
            site = (int(row.seq), e["site"]) if "site" in e else None
            staff = e.get("staff")
        else:
            if "site" in e:
                site = (int(row.seq), e["site"])
            if "assigned_to" in e:
                staff = e["assigned_to"]
    if site is None:
        return None
    wearer = d.get("wearer") if "wearer" in d else staff
    return RecordedStart(site[1], wearer if isinstance(wearer, str) else None, site[0])
