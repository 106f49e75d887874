"""Seals on the alarm outbox: what a message says, whether it was sent, and when it is due.

An acknowledgement a lone worker's device waits for, and an escalation a control room must hear,
are rows of ``alarm_outbox`` until they are delivered. Set ``sent_at`` by SQL and the message is
never sent; change ``payload`` (or where it goes) and the service sends, under its own name, words
it did not write; push ``next_attempt_at`` on and it is put off indefinitely. So each row carries
three seals under the reach secret, written in the statements that already write the row (no
statement more):

- ``seal``: an HMAC over what the message is: its channel, topic, QoS, alarm, creation time and
  the SHA-256 of its payload (:func:`outbox_seal`), written when it is queued (a webhook row's
  target is not covered: it goes to the webhook configured when it is sent);
- ``due_seal``: when it is next due, a timed mark bound to ``seal`` (:func:`due_mark`), rewritten
  by every claim and retry;
- ``sent_seal``: when it was delivered, a timed mark bound to the row's id and ``seal``
  (:func:`sent_mark`), written by the statement that marks rows sent: a mark copied onto another
  row (one whose id was given again after the purge emptied the table) does not hold there.

Nothing outside the row records an outbox message (custody records the alarm's changes, not each
acknowledgement), so the seals are all there is to go by, and what is safest is chosen: a row
marked sent without the service's mark is sent again (a device ignores a repeated
acknowledgement; a webhook delivery carries its row's id); one due later than its sealed time is
due at that time; one whose ``seal`` does not hold is withheld, since nothing records what it
said (the alarm's own row, custody and the control room's live stream still carry the change).
Each is named by a warning, recorded on the ledger (an ``alarm_changed`` entry with
``outbox_put_back``) and named by ``evidence verify`` (``alarm_outbox_altered``). A row deleted by
SQL leaves nothing to find: that stays out of reach.

Rows queued before this have no seal: they are taken as they stand until ``evidence
upgrade-seals`` (its ``seal-outbox`` step) seals them as they stand (nothing can bear them out),
their due time no later than the upgrade. A row without a seal that was queued after seals began
had its seal removed: it is taken as altered, withheld, named by ``evidence verify`` and refused by
the upgrade (:class:`SealsBegan`). When seals began is read where SQL cannot move it: the signed
custody ledger. Every alarm entry written since (from the raise seals on, which came with these)
records the alarm's note and position (:data:`SEALED_ERA`), so a row queued after the first such
entry, or for an alarm whose first entry is one, was queued sealed; so was a row above one whose
seal holds. Once the upgrade has sealed the rows queued before, its ``outbox_sealed`` entry says
so, and from then on no row without a seal passes for one queued before. Until then, a row whose
seal was removed and whose alarm, time and id were all rewritten to look older still passes for
one: nothing outside the row records each message.
Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import column, select, table, update
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .canonical import rfc3339
from .entries import ChainReport, CustodyAction, Problem, SignedEntry, report_unsealed
from .keys import ServiceKey
from .lifecycle_seals import ENTRY_COLUMNS, alarm_entries, entry_holds, warn_of_entry
from .models import CustodyEntry
from .raise_seals import _ALARM_ACTIONS
from .reach_seals import reach_secret
from .row_seals import _holds, row_seal, timed_mark, timed_of

if TYPE_CHECKING:
    from .ledger import Ledger

PUT_BACK = "outbox_put_back"  # the key of an ``alarm_changed`` entry's details that records one

_OUTBOX = table(
    "alarm_outbox",
    column("id"),
    column("channel"),
    column("target"),
    column("payload"),
    column("qos"),
    column("alarm_id"),
    column("created_at", UTCDateTime),
    column("next_attempt_at", UTCDateTime),
    column("sent_at", UTCDateTime),
    column("seal"),
    column("due_seal"),
    column("sent_seal"),
)


def outbox_seal(
    secret: bytes,
    channel: str,
    target: str,
    qos: int,
    alarm_id: str | None,
    created_at: datetime,
    payload: bytes,
) -> str:
    """The seal of what an outbox message is: where it goes, how, for which alarm, when it was
    queued and the SHA-256 of what it says, hex. A webhook row's target is left out: it is posted
    to the webhook configured when it is sent, whatever its row names."""
    digest = hashlib.sha256(payload).hexdigest()
    to = target if channel == "mqtt" else None
    return row_seal(secret, ("outbox", channel, to, str(qos), alarm_id, rfc3339(created_at), digest))


def due_mark(secret: bytes, seal: str | None, at: datetime) -> str:
    """When a message is next due, as the service wrote it, bound to its ``seal``."""
    return timed_mark(secret, "outbox due", seal or "", at)


def due_of(secret: bytes, seal: str | None, mark: str | None) -> datetime | None:
    """The due time a :func:`due_mark` holds, or None when it is missing or not the service's."""
    return timed_of(secret, "outbox due", seal or "", mark)


def _sent_subject(outbox_id: int, seal: str | None) -> str:
    return f"{outbox_id} {seal or ''}"


def sent_mark(secret: bytes, outbox_id: int, seal: str | None, at: datetime) -> str:
    """When a message was delivered, as the service wrote it, bound to its row's id and ``seal``."""
    return timed_mark(secret, "outbox sent", _sent_subject(outbox_id, seal), at)


def sent_of(secret: bytes, outbox_id: int, seal: str | None, mark: str | None) -> datetime | None:
    """The time a :func:`sent_mark` holds for this row, or None when it is missing, not the
    service's, or another row's."""
    return timed_of(secret, "outbox sent", _sent_subject(outbox_id, seal), mark)


def content_holds(secret: bytes, row: Any) -> bool:
    """Whether a row's (ORM or plain) ``seal`` holds for what its message is."""
    expected = outbox_seal(
        secret, row.channel, row.target, int(row.qos), row.alarm_id, row.created_at, bytes(row.payload)
    )
    return _holds(expected, row.seal)


@dataclass(frozen=True)
class Delivery:
    """What an outbox row's seals bear out of its delivery: ``altered`` says why it is not as the
    service left it (None when it is), ``due`` when it must be sent by (None: sent, as sealed)."""

    altered: str | None
    due: datetime | None


def delivery_of(secret: bytes, row: Any, now: datetime) -> Delivery:
    """Whether a row (whose ``seal`` is taken to hold) was sent, or when it is due, by its seals: a
    ``sent_at`` without the service's mark is not sent (due now); a due time later than the sealed
    one is due at the sealed one (now, if that mark is missing or wrong)."""
    if row.sent_at is not None:
        if sent_of(secret, int(row.id), row.seal, row.sent_seal) is not None:
            return Delivery(None, None)
        return Delivery("it was marked sent without the service's seal", now)
    sealed = due_of(secret, row.seal, row.due_seal)
    if sealed is None:
        return Delivery("its due time's seal is missing or wrong", min(now, row.next_attempt_at))
    if row.next_attempt_at > sealed:
        return Delivery(f"it was put off from {rfc3339(sealed)} to {rfc3339(row.next_attempt_at)}", sealed)
    return Delivery(None, row.next_attempt_at)


def put_back_details(row: Any, why: str) -> dict[str, Any]:
    """The details of the ``alarm_changed`` entry that records an outbox row found altered."""
    details: dict[str, Any] = {} if row.alarm_id is None else {"alarm_id": row.alarm_id}
    details[PUT_BACK] = {"outbox": int(row.id), "channel": row.channel, "found": why}
    return details


def put_backs(entries: Iterable[SignedEntry]) -> dict[int, int]:
    """The outbox rows the ledger records as found altered, with the first entry's seq."""
    out: dict[int, int] = {}
    for e in entries:
        if e.body.action != CustodyAction.ALARM_CHANGED.value or PUT_BACK not in e.body.details:
            continue
        try:
            said = json.loads(e.body.details).get(PUT_BACK)
        except (ValueError, AttributeError):
            continue
        if isinstance(said, dict) and isinstance(said.get("outbox"), int):
            out.setdefault(said["outbox"], e.body.seq)
    return out


# -- evidence verify ------------------------------------------------------------------------------


def _rows(session: Session, *where: Any) -> list[Any]:
    return list(session.execute(select(_OUTBOX).where(*where).order_by(_OUTBOX.c.id)))


def first_sealed(secret: bytes, rows: Iterable[Any]) -> int | None:
    """The lowest id of a row whose seal holds: a row above it without one had it removed."""
    return next((int(r.id) for r in rows if r.seal is not None and content_holds(secret, r)), None)


# An alarm entry's details record the alarm's note and position since the raise seals, which came
# after these seals (``alarms.lifecycle.raise_details``): the first such entry was written sealed.
_ERA_KEY = "position"
SEALED_ERA = f'"{_ERA_KEY}":'


class SealsBegan:
    """When outbox seals began, as far as SQL cannot move it: a row without a seal queued after is
    one whose seal was removed (see the module). The ledger is read only for such a row (rare), and
    what it says of when seals began, once found, is kept. Once ``upgrade-seals`` has sealed the
    rows queued before (an ``outbox_sealed`` entry that holds, checked with ``public``), no row
    without a seal is one: whatever its id, time or alarm say, it was written in the database."""

    def __init__(self, first: int | None, public: bytes | None = None) -> None:
        self.first = first  # the lowest id of a row whose seal holds (None: none found)
        self.public = public  # the custody key (None: no upgrade entry is looked for)
        self.upgraded: int | None = None  # the ``outbox_sealed`` entry that holds, once found
        self.era: tuple[int, datetime] | None = None  # the first entry written since, and its time
        self.alarms: dict[str, int] = {}  # alarms first recorded since: that entry's seq
        self.refused: set[int] = set()  # of those, the first entries of alarms no entry holds for

    def removed(self, session: Session, row: Any) -> str | None:
        """Why a row without a seal was queued after seals began, or None (queued before, as far as
        anything outside the row can tell)."""
        if row.seal is not None:
            return None
        if self.first is not None and int(row.id) > self.first:
            return f"it was queued after outbox row {self.first}, whose seal holds"
        upgraded = self._upgraded(session)
        if upgraded is not None:
            return f"every row queued before seals was sealed by the upgrade (custody entry #{upgraded})"
        era = self._era(session)
        if era is not None and row.created_at > era[1]:
            return f"it was queued after custody entry #{era[0]}, written once messages were sealed"
        seq = None if row.alarm_id is None else self._alarm(session, str(row.alarm_id))
        if seq is not None and seq in self.refused:
            return (
                f"its alarm's custody entries (from #{seq}) do not hold, so nothing vouches for its being "
                "queued before seals"
            )
        if seq is not None:
            return f"its alarm was first recorded by custody entry #{seq}, written once messages were sealed"
        return None

    def _upgraded(self, session: Session) -> int | None:
        if self.upgraded is None and self.public is not None:
            q = select(*ENTRY_COLUMNS).where(CustodyEntry.action == CustodyAction.OUTBOX_SEALED.value)
            for entry in session.execute(q.order_by(CustodyEntry.seq)):
                if entry_holds(self.public, entry):
                    self.upgraded = int(entry.seq)
                    break
                warn_of_entry(entry.seq)
        return self.upgraded

    def _holds(self, entry: Any) -> bool:
        """Whether an entry may decide when seals began: it holds (:func:`entry_holds`), checked
        with the custody key; one written or edited in the database is named and passed over, so a
        forged entry can neither date seals back (withholding the messages queued before) nor say
        an alarm was first recorded before them (passing a row whose seal was removed). Without the
        key nothing is checked (none is given only where no decision is made)."""
        if self.public is None or entry_holds(self.public, entry):
            return True
        warn_of_entry(entry.seq)
        return False

    def _era(self, session: Session) -> tuple[int, datetime] | None:
        if self.era is None:
            e = CustodyEntry
            q = select(*ENTRY_COLUMNS).where(e.action.in_(_ALARM_ACTIONS), e.details.like(f"%{SEALED_ERA}%"))
            for entry in session.execute(q.order_by(e.seq)):
                if self._holds(entry):
                    self.era = (int(entry.seq), datetime.fromisoformat(entry.at))
                    break
        return self.era

    def _alarm(self, session: Session, alarm_id: str) -> int | None:
        """The seq of the alarm's first entry that holds when it was written once messages were
        sealed; None when it was written before (or no entry names the alarm). An alarm whose
        entries name it but none holds (each edited in the database) is no older for that: its first
        is taken, and kept among :attr:`refused` (nothing vouches for a row of it being older)."""
        if alarm_id not in self.alarms:
            refused = None
            for entry in session.execute(alarm_entries(alarm_id).order_by(CustodyEntry.seq)):
                try:
                    said = json.loads(entry.details)
                except ValueError:
                    continue
                if not isinstance(said, dict) or said.get("alarm_id") != alarm_id:
                    continue
                if self._holds(entry):
                    if _ERA_KEY not in said:
                        return None  # first recorded before: its messages may be older
                    self.alarms[alarm_id] = int(entry.seq)
                    break
                refused = int(entry.seq) if refused is None else refused
            else:
                if refused is not None:
                    self.alarms[alarm_id] = refused
                    self.refused.add(refused)
        return self.alarms.get(alarm_id)


def check_outbox_seals(
    session: Session, report: ChainReport, key: ServiceKey, entries: Sequence[SignedEntry]
) -> None:
    """A finding for each outbox row whose message, delivery or due time is not as the service
    sealed it, or that the service found so and put back; a note counting the rows queued before
    seals."""
    secret = reach_secret(key)
    rows = _rows(session)
    began = SealsBegan(first_sealed(secret, rows), key.public_raw)
    recorded = put_backs(entries)
    older = 0
    now = datetime.now(UTC)
    for row in rows:
        why = None
        removed = began.removed(session, row)
        if row.seal is None and removed is None:
            older += 1
        elif removed is not None:
            why = f"its seal was removed: {removed} (it is withheld)"
        elif not content_holds(secret, row):
            why = (
                "its message's seal does not hold: its payload, target, channel or alarm was written by "
                "someone other than the service (it is withheld)"
            )
        else:
            found = delivery_of(secret, row, now).altered
            why = None if found is None else f"{found} (it is sent all the same)"
        if why is None and int(row.id) in recorded:
            why = f"it was found altered in the database (custody entry #{recorded[int(row.id)]})"
        if why is not None:
            report.problems.append(Problem("alarm_outbox_altered", f"outbox row {row.id}", why))
    report_unsealed(
        report,
        older,
        "alarm outbox row(s) have no seal yet (queued before messages were sealed): "
        "`evidence upgrade-seals` seals them",
    )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedOutbox:
    """An outbox row without a seal, as ``evidence upgrade-seals`` lists it: sealed as it stands
    (nothing outside the row records a message), unless it was queued after seals began
    (``refused`` says why: its seal was removed)."""

    outbox_id: int
    channel: str
    sent: bool
    refused: str | None = None

    def line(self) -> str:
        state = "sent" if self.sent else "unsent"
        if self.refused:
            return f"outbox row {self.outbox_id} ({self.channel}, {state}): refused: its seal was removed ({self.refused})"
        return f"outbox row {self.outbox_id} ({self.channel}, {state}): sealed as it stands"


def older_outbox(session: Session) -> list[Any]:
    """The outbox rows without a seal (what the upgrade lists)."""
    return _rows(session, _OUTBOX.c.seal.is_(None))


def _judged(session: Session, key: ServiceKey) -> list[tuple[Any, str | None]]:
    """Each row :func:`older_outbox` lists, with why it is refused (None: sealed as it stands)."""
    first = first_sealed(reach_secret(key), _rows(session, _OUTBOX.c.seal.is_not(None)))
    began = SealsBegan(first, key.public_raw)
    return [(row, began.removed(session, row)) for row in older_outbox(session)]


def _listed(judged: Sequence[tuple[Any, str | None]]) -> list[UnsealedOutbox]:
    return [UnsealedOutbox(int(r.id), str(r.channel), r.sent_at is not None, why) for r, why in judged]


def unsealed_outbox(session: Session, key: ServiceKey) -> list[UnsealedOutbox]:
    """Every row :func:`older_outbox` lists, those queued after seals began refused."""
    return _listed(_judged(session, key))


def seal_outbox(
    session: Session, key: ServiceKey, ledger: Ledger, now: datetime | None = None
) -> list[UnsealedOutbox]:
    """Seal the rows :func:`unsealed_outbox` does not refuse as they stand, due no later than
    ``now`` (a row changed since it was read keeps none); all it listed. An ``outbox_sealed`` entry
    records that it ran: from then on no row without a seal is taken as queued before seals."""
    now = now or datetime.now(UTC)
    secret, o = reach_secret(key), _OUTBOX.c
    judged = _judged(session, key)
    for row, refused in judged:
        if refused is not None:
            continue
        seal = outbox_seal(
            secret, row.channel, row.target, int(row.qos), row.alarm_id, row.created_at, bytes(row.payload)
        )
        due = min(now, row.next_attempt_at)
        sent = None if row.sent_at is None else sent_mark(secret, int(row.id), seal, row.sent_at)
        same = o.sent_at.is_(None) if row.sent_at is None else o.sent_at == row.sent_at
        session.execute(
            update(_OUTBOX)
            .where(o.id == row.id, o.seal.is_(None), same, o.next_attempt_at == row.next_attempt_at)
            .values(seal=seal, due_seal=due_mark(secret, seal, due), next_attempt_at=due, sent_seal=sent)
        )
    listed = _listed(judged)
    sealed = sum(1 for found in listed if found.refused is None)
    details = {"sealed": sealed, "refused": len(listed) - sealed}
    ledger.append(session, CustodyAction.OUTBOX_SEALED, "service", details=details, at=now)
    return listed
