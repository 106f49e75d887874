"""Seals on an alarm's lifecycle: where it stands, and when the clock must look at it again.

An alarm escalates when nobody acknowledges it in time (an amber one turns red when its timer runs
out): the clock acts on ``alarms.next_deadline``, and its sweep put back a deadline from the
lifecycle columns (status, acknowledgement due, acknowledged, resolved ...). Those columns set by
SQL (acknowledged, due a day on, resolved) took the alarm off the clock, and the sweep, reading the
same columns, could not tell. So every write of them also writes ``lifecycle_seal``, in the same
statement: an HMAC-SHA256 under the reach secret over the alarm's id, every column the rules read
(:data:`LIFECYCLE_COLUMNS`) and its next deadline (one HMAC per write, no statement more).

Each change of an alarm's lifecycle appends its ``alarm_raised``/``alarm_changed`` custody entry
with the status, severity, outcome and the deadline it is then due by. An alarm whose seal does
not hold is taken at what its latest such entry records (:class:`RecordedLifecycle`), put back to
it, with a warning naming it and an entry of its own (``put_back``), and escalates on time;
``evidence verify`` names it (``alarm_lifecycle_altered``). What the sweep looks at is bounded by
the open alarms, not by history: the alarms the custody record holds open are followed by a cursor
over the ledger's new entries (:class:`OpenByCustody`), so one marked resolved by SQL is still
looked at, and a resolved alarm is never read again.

Alarms written before this have no seal: one whose status, severity, outcome and deadline are what
its custody record says is taken as it stands (its next change seals it), and ``evidence
upgrade-seals`` (its ``seal-lifecycle`` step) seals those. Tables are read as plain tables: this
sits below ``alarms``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import partial
from typing import Any, Protocol

from sqlalchemy import Select, TableClause, column, select, table, update
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .canonical import rfc3339
from .entries import ChainReport, CustodyAction, Problem, SignedEntry, report_unsealed
from .keys import ServiceKey, verify_signature
from .models import CustodyEntry
from .reach_seals import reach_secret
from .row_seals import _holds, row_seal
from .tree_heads import entry_body

log = logging.getLogger(__name__)

# Every column of an alarm the lifecycle rules read or write (``alarms.lifecycle._RULE_FIELDS``)
# and the deadline the clock acts on.
LIFECYCLE_COLUMNS = (
    "device_id",
    "kind",
    "severity",
    "status",
    "raised_at",
    "occurred_at",
    "source_event_id",
    "reason",
    "visit_id",
    "amber_deadline",
    "red_at",
    "ack_due_at",
    "acknowledged_at",
    "acknowledged_by",
    "escalated_at",
    "escalated_by",
    "escalation_reason",
    "cancel_requested_at",
    "condition_cleared_at",
    "resolved_at",
    "resolved_by",
    "outcome",
    "resolution_note",
    "incident_requested",
    "next_deadline",
)
_TIMES = frozenset(c for c in LIFECYCLE_COLUMNS if c.endswith("_at") or c.endswith("deadline"))

_ALARMS = table(
    "alarms",
    column("id"),
    column("provisional"),
    column("lifecycle_seal"),
    *(column(c, UTCDateTime) if c in _TIMES else column(c) for c in LIFECYCLE_COLUMNS),
)
ALARM_LIFECYCLES = _ALARMS  # the alarms table as a lifecycle seal reads it
_LIFECYCLE_ACTIONS = (CustodyAction.ALARM_RAISED.value, CustodyAction.ALARM_CHANGED.value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def lifecycle_seal(secret: bytes, alarm_id: str, values: Sequence[Any]) -> str:
    """The seal of an alarm's lifecycle: its id and the values of :data:`LIFECYCLE_COLUMNS`, in
    order (times to the microsecond), hex."""
    return row_seal(secret, ("lifecycle", alarm_id, *(_text(v) for v in values)))


def lifecycle_values(row: Any) -> tuple[Any, ...]:
    """The values a row (ORM or plain) holds of :data:`LIFECYCLE_COLUMNS`, in order."""
    return tuple(getattr(row, c) for c in LIFECYCLE_COLUMNS)


def lifecycle_holds(secret: bytes, row: Any) -> bool:
    """Whether an alarm row's lifecycle seal holds (no warning: the caller names what it does)."""
    return _holds(lifecycle_seal(secret, str(row.id), lifecycle_values(row)), row.lifecycle_seal)


# -- what custody records -------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedLifecycle:
    """An alarm's lifecycle as its latest custody entry that records one says (``seq``): its
    kind, status, severity, outcome and the deadline it was then due by (``deadline_known``
    False: an entry from before deadlines were recorded)."""

    seq: int
    kind: str | None
    status: str
    severity: str | None
    outcome: str | None
    deadline: datetime | None
    deadline_known: bool = True
    vouched: bool = True  # False: only entries that do not hold name the alarm (:func:`unvouched`)

    @property
    def open(self) -> bool:
        return self.status != "resolved"

    def differs(self, status: Any, severity: Any, outcome: Any, next_deadline: datetime | None) -> str | None:
        """Why a row with these values is not what this entry records, or None."""
        for name, row, said in (
            ("status", status, self.status),
            ("severity", severity, self.severity),
            ("outcome", outcome, self.outcome),
        ):
            if row != said:
                return f"its {name} is {row!r} but custody entry #{self.seq} says {said!r}"
        if self.deadline_known and next_deadline != self.deadline:
            row_at = None if next_deadline is None else rfc3339(next_deadline)
            said_at = None if self.deadline is None else rfc3339(self.deadline)
            return f"it is due by {row_at!r} but custody entry #{self.seq} says {said_at!r}"
        return None


@dataclass(frozen=True)
class RecordedKeys:
    """An alarm's keys as a custody entry records them: its device, the device's event it was raised
    from (None: raised by the service) and its visit (``visit_known`` False: the entry names none,
    recorded before entries did)."""

    device: str | None
    source_event_id: str | None
    visit_id: str | None
    visit_known: bool = True

    def differs(self, device: Any, source_event_id: Any, visit_id: Any) -> str | None:
        """Why a row with these keys is not what this record says, or None."""
        said: list[tuple[str, Any, Any]] = [("source event", source_event_id, self.source_event_id)]
        if self.device is not None:
            said.append(("device", device, self.device))
        if self.visit_known:
            said.append(("visit", visit_id, self.visit_id))
        for name, row, recorded in said:
            if row != recorded:
                return f"its {name} is {row!r} but its custody record says {recorded!r}"
        return None


def keys_of(d: dict[str, Any]) -> RecordedKeys | None:
    """The keys an alarm entry's details record, or None when they record none."""
    if "source_event_id" not in d:
        return None
    source, device, visit = d["source_event_id"], d.get("device"), d.get("visit_id")
    return RecordedKeys(
        device if isinstance(device, str) else None,
        source if isinstance(source, str) else None,
        visit if isinstance(visit, str) else None,
        visit_known="visit_id" in d or source is not None,  # a device's raise has no visit
    )


def recorded_of(seq: int, details: str) -> tuple[str, RecordedLifecycle | None, bool] | None:
    """(alarm id, its recorded lifecycle or None, whether the entry records a put-back) of one
    alarm entry's details; None when it is not an alarm's."""
    try:
        d = json.loads(details)
    except ValueError:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("alarm_id"), str):
        return None
    put_back = "put_back" in d
    if not isinstance(d.get("status"), str):
        return d["alarm_id"], None, put_back  # a voice memo's entry: no lifecycle
    said = d.get("deadline")
    try:
        deadline = datetime.fromisoformat(said) if isinstance(said, str) else None
    except ValueError:
        deadline = None
    kind, severity, outcome = d.get("kind"), d.get("severity"), d.get("outcome")
    recorded = RecordedLifecycle(
        seq,
        kind if isinstance(kind, str) else None,
        d["status"],
        severity if isinstance(severity, str) else None,
        outcome if isinstance(outcome, str) else None,
        deadline,
        "deadline" in d,
    )
    return d["alarm_id"], recorded, put_back


ENTRY_COLUMNS = (
    CustodyEntry.seq,
    CustodyEntry.id,
    CustodyEntry.at,
    CustodyEntry.action,
    CustodyEntry.actor,
    CustodyEntry.item_id,
    CustodyEntry.item_seq,
    CustodyEntry.details,
    CustodyEntry.prev_hash,
    CustodyEntry.item_prev_hash,
    CustodyEntry.key_id,
    CustodyEntry.entry_hash,
    CustodyEntry.signature,
)
"""What a decision reads of a custody entry: all it takes to check its hash and signature."""


def entry_hashes(row: Any) -> bool:
    """Whether a ledger row's stored hash is that of its body (no signature checked: the cheap half
    of :func:`entry_holds`, for entries read only to see that nothing in them was edited)."""
    try:
        canonical = entry_body(row).canonical()
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(hashlib.sha256(canonical).hexdigest(), row.entry_hash or "")


def entry_holds(public: bytes, row: Any) -> bool:
    """Whether a ledger row (:data:`ENTRY_COLUMNS`, or a :class:`SignedEntry` as ``evidence verify``
    reads them) is as the service signed it: its hash is that of its body and its signature the
    service key's over it. One written or edited by SQL is not (its signer has no service key), and
    nothing it says decides anything."""
    try:
        canonical = (row.body if isinstance(row, SignedEntry) else entry_body(row)).canonical()
    except (ValueError, TypeError):
        return False
    digest = hashlib.sha256(canonical).hexdigest()
    return hmac.compare_digest(digest, row.entry_hash or "") and verify_signature(
        public, row.signature or "", canonical
    )


def unvouched(seq: int) -> RecordedLifecycle:
    """What an alarm is taken at that entries name but none that holds records (the refused one is
    ``seq``): raised, due at once, so it escalates unless its row's seal holds."""
    return RecordedLifecycle(seq, None, "raised", None, None, None, deadline_known=False, vouched=False)


def warn_of_entry(seq: object) -> None:
    """A warning naming a custody entry a decision refused: it is not as the service signed it
    (``seq`` as its row has it, a whole number or not)."""
    log.warning(
        "a custody entry is not as the service signed it (written or edited in the database): "
        "ignored, the alarm is taken at its last entry that holds",
        extra={"entry": seq},
    )


def alarm_entries(alarm_id: str) -> Select[*tuple[Any, ...]]:
    """The ``alarm_raised``/``alarm_changed`` entries whose details mention ``alarm_id``
    (:data:`ENTRY_COLUMNS`; a scan, for the rare alarm whose seal does not hold: the caller checks
    each entry's details name it and that it holds)."""
    mention = json.dumps({"alarm_id": alarm_id}, separators=(",", ":"), ensure_ascii=False)[1:-1]
    escaped = mention.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return select(*ENTRY_COLUMNS).where(
        CustodyEntry.action.in_(_LIFECYCLE_ACTIONS), CustodyEntry.details.like(f"%{escaped}%", escape="\\")
    )


def recorded_lifecycle(session: Session, alarm_id: str, public: bytes) -> RecordedLifecycle | None:
    """What the ledger last recorded of one alarm's lifecycle in an entry that holds
    (:func:`entry_holds`; one that does not is named and passed over), read for an alarm whose seal
    does not hold that the cursor does not follow (rare: a scan of the alarm entries that mention
    it, newest first, until one holds). An alarm only refused entries record is :func:`unvouched`."""
    q = alarm_entries(alarm_id).order_by(CustodyEntry.seq.desc())
    refused = None
    for row in session.execute(q):
        got = recorded_of(int(row.seq), row.details)
        if got is None or got[0] != alarm_id or got[1] is None:
            continue
        if entry_holds(public, row):
            return got[1]
        warn_of_entry(row.seq)
        refused = refused or unvouched(int(row.seq))
    return refused


def recorded_raise_time(session: Session, alarm_id: str, public: bytes) -> datetime | None:
    """When the alarm's ``alarm_raised`` entry that holds (:func:`entry_holds`) says it was raised:
    the time its raise was accepted (recorded when a provisional alarm is made whole), else the
    entry's own (a whole alarm's raise is recorded as it is raised); None when no such entry holds.
    For an alarm whose lifecycle seal (over ``raised_at``) does not hold: a scan, as
    :func:`recorded_lifecycle`."""
    q = alarm_entries(alarm_id).where(CustodyEntry.action == CustodyAction.ALARM_RAISED.value)
    for row in session.execute(q.order_by(CustodyEntry.seq)):
        try:
            d = json.loads(row.details)
        except ValueError:
            continue
        if not isinstance(d, dict) or d.get("alarm_id") != alarm_id:
            continue
        if not entry_holds(public, row):
            warn_of_entry(row.seq)
            continue
        for said in [t for t in (d.get("accepted_at"), row.at) if isinstance(t, str)]:
            try:
                return datetime.fromisoformat(said)
            except ValueError:  # not a time
                continue
    return None


def lifecycle_replay(
    entries: Iterable[SignedEntry], public: bytes, keys: dict[str, RecordedKeys] | None = None
) -> tuple[dict[str, RecordedLifecycle], dict[str, int]]:
    """What the ledger last recorded of each alarm's lifecycle, and the alarms it records as put
    back after their lifecycle was found altered (with the entry's seq), in entries that hold
    (:func:`entry_holds`: ``evidence verify`` names the others), so an entry written in the
    database that says an alarm was resolved neither bears out a row resolved by SQL nor gets it
    sealed as it stands. ``keys``: filled with the keys each alarm's latest such entry that records
    them says (:func:`keys_of`)."""
    recorded: dict[str, RecordedLifecycle] = {}
    put_back: dict[str, int] = {}
    for e in entries:
        if e.body.action not in _LIFECYCLE_ACTIONS or not entry_holds(public, e):
            continue
        got = recorded_of(e.body.seq, e.body.details)
        if got is None:
            continue
        alarm_id, said, was_put_back = got
        if keys is not None:
            said_keys = keys_of(json.loads(e.body.details))
            if said_keys is not None:
                keys[alarm_id] = said_keys
        if said is not None:
            recorded[alarm_id] = said
        if was_put_back:
            put_back.setdefault(alarm_id, e.body.seq)
    return recorded, put_back


# -- evidence verify ------------------------------------------------------------------------------


def _rows(session: Session, *where: Any) -> list[Any]:
    a = _ALARMS.c
    return list(session.execute(select(_ALARMS).where(*where).order_by(a.id)))


def check_lifecycle_seals(
    session: Session, report: ChainReport, key: ServiceKey, entries: Sequence[SignedEntry]
) -> None:
    """A finding for each alarm whose lifecycle seal does not hold, whose status, severity,
    outcome or deadline is not what its latest custody entry records, or that the service found
    altered and put back, and for each alarm custody records whose row is gone; a note counting the
    alarms whose lifecycle is not sealed yet."""
    secret = reach_secret(key)
    recorded, put_back = lifecycle_replay(entries, key.public_raw)
    unsealed = 0
    rows = _rows(session)
    for row in rows:
        where, said = f"alarm {row.id}", recorded.get(str(row.id))
        why = None
        if row.lifecycle_seal is None:
            unsealed += 1
        elif not lifecycle_holds(secret, row):
            why = (
                "its lifecycle's seal does not hold: its status, deadline, acknowledgement, resolution "
                "or severity was written by someone other than the service (it is taken at its "
                "custody record, and escalates by it)"
            )
        if why is None and said is not None and not row.provisional:
            why = said.differs(row.status, row.severity, row.outcome, row.next_deadline)
        if why is None and str(row.id) in put_back:
            why = (
                f"its lifecycle was found altered in the database and put back to its custody record "
                f"(custody entry #{put_back[str(row.id)]})"
            )
        if why is not None:
            report.problems.append(Problem("alarm_lifecycle_altered", where, why))
    for alarm_id in sorted(set(recorded) - {str(row.id) for row in rows}):
        said = recorded[alarm_id]
        report.problems.append(
            Problem(
                "alarm_row_missing",
                f"alarm {alarm_id}",
                f"custody entry #{said.seq} records it {said.status} but its row is gone (deleted in the "
                "database: nothing escalates it)",
            )
        )
    report_unsealed(
        report,
        unsealed,
        "alarm(s) have no seal on their lifecycle yet (raised before it was sealed): "
        "`evidence upgrade-seals` seals those the custody record bears out",
    )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedLifecycle:
    """An alarm without a lifecycle seal, as ``evidence upgrade-seals`` lists it, with why it is
    not sealed (``refused``), if it is not."""

    alarm_id: str
    status: str
    values: tuple[Any, ...]
    refused: str | None

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"alarm {self.alarm_id}: {self.status}; {verdict}"


def unsealed_lifecycles(
    session: Session, entries: Iterable[SignedEntry], key: ServiceKey
) -> list[UnsealedLifecycle]:
    """Every alarm without a lifecycle seal, against what its latest custody entry that holds
    records of its status, severity, outcome and deadline, and of its keys (device, source event,
    visit: the seal covers them, and a key written by SQL sealed would be vouched for, as the
    service's, by every reader that takes an alarm's keys from its seal, ``alarms.alarm_keys``)."""
    rows = _rows(session, _ALARMS.c.lifecycle_seal.is_(None))
    if not rows:
        return []
    keys: dict[str, RecordedKeys] = {}
    recorded, _ = lifecycle_replay(entries, key.public_raw, keys)
    out = []
    for row in rows:
        said = recorded.get(str(row.id))
        said_keys = keys.get(str(row.id))
        if row.provisional:
            refused: str | None = "it is still provisional (made whole first: run this again)"
        elif said is None:
            refused = "no custody entry records its status (run `evidence backfill-custody` first)"
        else:
            refused = said.differs(row.status, row.severity, row.outcome, row.next_deadline)
            if refused is None and said_keys is not None:
                refused = said_keys.differs(row.device_id, row.source_event_id, row.visit_id)
        out.append(UnsealedLifecycle(str(row.id), str(row.status), lifecycle_values(row), refused))
    return out


class ListedAlarm(Protocol):
    """An alarm an upgrade step lists: its id, the values of the columns it seals, and why it
    is refused, if it is."""

    @property
    def alarm_id(self) -> str: ...

    @property
    def values(self) -> tuple[Any, ...]: ...

    @property
    def refused(self) -> str | None: ...


def seal_as_listed(
    session: Session,
    alarms: TableClause,
    seal_column: str,
    columns: Sequence[str],
    listed: Iterable[ListedAlarm],
    seal_of: Callable[[str, Sequence[Any]], str],
) -> None:
    """Seal each alarm listed and not refused, in ``seal_column``, as it stands: one guarded
    UPDATE each, so a row whose seal was set, or whose ``columns`` changed, since it was read
    keeps none."""
    a = alarms.c
    for found in listed:
        if found.refused:
            continue
        same = [
            a[c].is_(None) if v is None else a[c] == v for c, v in zip(columns, found.values, strict=True)
        ]
        session.execute(
            update(alarms)
            .where(a.id == found.alarm_id, a[seal_column].is_(None), *same)
            .values({seal_column: seal_of(found.alarm_id, found.values)})
        )


def seal_lifecycles(
    session: Session, key: ServiceKey, entries: Iterable[SignedEntry]
) -> list[UnsealedLifecycle]:
    """Seal the lifecycles :func:`unsealed_lifecycles` lists that the ledger bears out, as they
    stand (a row changed since it was read keeps none); all it listed."""
    secret = reach_secret(key)
    listed = unsealed_lifecycles(session, entries, key)
    seal_as_listed(
        session, _ALARMS, "lifecycle_seal", LIFECYCLE_COLUMNS, listed, partial(lifecycle_seal, secret)
    )
    return listed
