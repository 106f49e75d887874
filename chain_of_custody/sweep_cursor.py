"""The alarms the custody record holds open, followed by a cursor over the ledger, and the sealed
checkpoint a process starts it from.

The clock's sweep looks at every alarm its custody record holds open (``alarms.clock``). The cursor
reads only the alarm entries appended since its last pass, and takes only those that hold (their
hash is their body's and their signature the service key's, :func:`lifecycle_seals.entry_holds`):
one inserted or edited by SQL (an ``alarm_changed`` saying resolved) is named in a warning and
ignored, so the alarm stays open at its last entry that holds and escalates by it (one no entry
that holds records is taken as raised and due at once); ``evidence verify`` names the entry too. A pass costs one signature check per new alarm entry, never the
history.

Where the cursor stands (its last seq, the entry's hash and the open alarms with what custody
records of each) is kept in ``alarm_sweep_checkpoint``, one row, sealed with an HMAC under a
secret derived from the service key, so a new process starts from it and reads only the entries
after it. It is taken only when its seal holds and the ledger still holds the entry it names, with
that hash, as the service signed it; otherwise a warning says so and the ledger is read whole. Any
checkpoint the service wrote is a safe start (an older one put back only costs reading more): what
SQL cannot do is write one that leaves an open alarm out. Tables are read as plain tables.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, String, Text, column, insert, select, table, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .canonical import canonical_json, rfc3339
from .entries import ChainReport, Problem
from .keys import ServiceKey
from .lifecycle_seals import (
    _LIFECYCLE_ACTIONS,
    ENTRY_COLUMNS,
    RecordedLifecycle,
    entry_holds,
    recorded_of,
    unvouched,
    warn_of_entry,
)
from .models import CustodyEntry

log = logging.getLogger(__name__)

CHECKPOINT_SECRET = "alarm sweep checkpoint"

CHECKPOINT = table(
    "alarm_sweep_checkpoint",
    column("id", BigInteger),
    column("seq", BigInteger),
    column("entry_hash", String),
    column("open_alarms", Text),
    column("seal", String),
    column("written_at", UTCDateTime),
)


def _recorded_json(said: RecordedLifecycle) -> list[Any]:
    deadline = None if said.deadline is None else rfc3339(said.deadline)
    return [said.seq, said.kind, said.status, said.severity, said.outcome, deadline, said.deadline_known]


def _recorded_from(value: list[Any]) -> RecordedLifecycle:
    seq, kind, status, severity, outcome, deadline, known = value
    at = None if deadline is None else datetime.fromisoformat(deadline)
    return RecordedLifecycle(int(seq), kind, str(status), severity, outcome, at, bool(known))


def checkpoint_seal(secret: bytes, seq: int, entry_hash: str, open_alarms: str) -> str:
    """The seal of a checkpoint: HMAC-SHA256 over its seq, the hash of the entry there and the open
    alarms as kept (canonical JSON text), hex."""
    message = canonical_json({"seq": seq, "entry_hash": entry_hash, "open": open_alarms})
    return hmac.new(secret, message, "sha256").hexdigest()


def _kept(session: Session) -> Any:
    c = CHECKPOINT.c
    return session.execute(select(c.seq, c.entry_hash, c.open_alarms, c.seal).where(c.id == 1)).first()


def check_sweep_checkpoint(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding when the sweep's checkpoint is not one the service wrote, or the ledger does not
    bear it out: written or edited in the database (the sweep refuses it and reads the ledger whole)."""
    kept = _kept(session)
    why = None if kept is None else OpenByCustody(key).refusal(session, kept)
    if why is not None:
        report.problems.append(
            Problem(
                "alarm_sweep_checkpoint_refused",
                f"alarm sweep checkpoint at custody entry #{kept.seq}",
                f"{why}: the sweep refuses it, reads the ledger's alarm entries whole and seals it anew",
            )
        )


class OpenByCustody:
    """The alarms the custody record holds open, with what it records of each, followed by a
    cursor over the ledger: each :meth:`advance` reads only the alarm entries appended since the
    last (the first only those after the sealed checkpoint, or all of them, once, without one), so
    what it costs is bounded by the alarms raised and changed meanwhile, never by the alarms
    resolved before. Only entries that hold are taken: an alarm marked resolved by SQL, in its row
    or by an entry written in the database, stays open here."""

    def __init__(self, key: ServiceKey) -> None:
        self.public = key.public_raw
        self.secret = key.derived_secret(CHECKPOINT_SECRET)
        self.seq = 0
        self.entry_hash = ""
        self.open: dict[str, RecordedLifecycle] = {}
        self.read = 0  # entries read, all told (what a pass costs, for the tests)
        self.started = False
        self.kept_seq = 0  # the seq of the checkpoint as this process last read or wrote it
        self.refused: set[int] = set()  # entries found not to hold, named once each
        self.replace = False  # the kept checkpoint was refused: the next one written replaces it

    def advance(self, session: Session) -> None:
        if not self.started:
            self.started = True
            self._resume(session)
        q = (
            select(*ENTRY_COLUMNS)
            .where(CustodyEntry.seq > self.seq, CustodyEntry.action.in_(_LIFECYCLE_ACTIONS))
            .order_by(CustodyEntry.seq)
            .execution_options(yield_per=1000)
        )
        for row in session.execute(q):
            seq = int(row.seq)
            self.read += 1
            if not entry_holds(self.public, row):
                self._refuse(seq, row.details)
                continue
            self.seq, self.entry_hash = seq, row.entry_hash
            got = recorded_of(seq, row.details)
            recorded = None if got is None else got[1]
            if got is None or recorded is None:
                continue
            if recorded.open:
                self.open[got[0]] = recorded
            else:
                self.open.pop(got[0], None)
        if self.seq > self.kept_seq:
            self._keep(session)

    def _refuse(self, seq: int, details: str) -> None:
        """An entry that does not hold: named, and not passed (one planted far ahead must not carry
        the cursor past the real ones). An alarm it names that no entry holds open is taken as
        raised and due (:func:`unvouched`): a planted or edited entry never closes one."""
        if seq in self.refused:
            return
        self.refused.add(seq)
        warn_of_entry(seq)
        got = recorded_of(seq, details)
        if got is not None and got[0] not in self.open:
            self.open[got[0]] = unvouched(seq)

    # -- the checkpoint -----------------------------------------------------------------------------

    def _open_text(self) -> str:
        return canonical_json({a: _recorded_json(said) for a, said in self.open.items()}).decode()

    def _resume(self, session: Session) -> None:
        """Start from the checkpoint when it is the service's and the ledger bears it out."""
        kept = _kept(session)
        if kept is None:
            return
        why = self.refusal(session, kept)
        if why is not None:
            log.warning(
                "the alarm sweep's checkpoint is refused: the ledger's alarm entries are read whole",
                extra={"checkpoint_seq": kept.seq, "why": why},
            )
            self.replace = True
            return
        self.open = {a: _recorded_from(v) for a, v in json.loads(kept.open_alarms).items()}
        self.seq, self.entry_hash = int(kept.seq), str(kept.entry_hash)
        self.kept_seq = self.seq

    def refusal(self, session: Session, kept: Any) -> str | None:
        """Why a kept checkpoint cannot be started from, or None."""
        seal = checkpoint_seal(self.secret, int(kept.seq), str(kept.entry_hash), str(kept.open_alarms))
        if not hmac.compare_digest(seal, str(kept.seal or "")):
            return "its seal does not hold (written or edited in the database)"
        entry = session.execute(select(*ENTRY_COLUMNS).where(CustodyEntry.seq == kept.seq)).first()
        if entry is None or entry.entry_hash != kept.entry_hash or not entry_holds(self.public, entry):
            return "the ledger does not hold the entry it names as the service signed it"
        try:
            for value in json.loads(kept.open_alarms).values():
                _recorded_from(value)
        except (ValueError, TypeError, AttributeError):
            return "its open alarms cannot be read"
        return None

    def _keep(self, session: Session) -> None:
        """Write where the cursor stands, unless another process kept a later one; a checkpoint
        that is not written only costs the next process more reading."""
        c = CHECKPOINT.c
        text = self._open_text()
        values = {
            "seq": self.seq,
            "entry_hash": self.entry_hash,
            "open_alarms": text,
            "seal": checkpoint_seal(self.secret, self.seq, self.entry_hash, text),
            "written_at": datetime.now(UTC),
        }
        later = c.id == 1 if self.replace else c.seq < self.seq
        done = session.execute(update(CHECKPOINT).where(c.id == 1, later).values(**values))
        if not getattr(done, "rowcount", 0) and session.scalar(select(c.id).where(c.id == 1)) is None:
            try:
                with session.begin_nested():
                    session.execute(insert(CHECKPOINT).values(id=1, **values))
            except IntegrityError:  # another process wrote the first one meanwhile
                pass
        self.kept_seq, self.replace = self.seq, False
