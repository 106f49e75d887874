"""The alarms the custody record holds open, followed by a cursor over the ledger, and the sealed
checkpoint a process starts it from.

The clock's sweep looks at every alarm its custody record holds open (``alarms.clock``). The cursor
reads only the alarm entries appended since its last pass, and takes only those that hold (their
hash is their body's and their signature the service key's, :func:`lifecycle_seals.entry_holds`):
one inserted or edited by SQL (an ``alarm_changed`` saying resolved) is named in a warning and
ignored, so the alarm stays open at its last entry that holds and escalates by it (one no entry
that holds records is taken as raised and due at once); ``evidence verify`` names the entry too. A
pass costs one signature check per new alarm entry, never the history. Between passes it follows
the ledger's chain: each entry since the cursor must be the next seq and name the hash of the one
before, compared in the database, which sends back only a break. A gap or a broken link there
(entries deleted or replaced) is named, and the alarm entries are read whole, checked, with the
alarms it held open kept open unless an entry that holds closes them. An alarm custody holds open
whose row is gone is named once by the sweep and set aside (:meth:`OpenByCustody.leave`), not
looked at again until a row of it is back.

Where the cursor stands (its last seq, the entry's hash and the open alarms with what custody
records of each, and those set aside) is kept in ``alarm_sweep_checkpoint``, one row, sealed with
an HMAC under a secret derived from the service key, so a new process starts from it and reads only
the entries after it. It is taken only when its seal holds and the ledger still holds the entry it names, with
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

from sqlalchemy import BigInteger, String, Text, and_, column, func, insert, or_, select, table, update
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
    entry_hashes,
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
_ALARM_IDS = table("alarms", column("id", String))


def _recorded_json(said: RecordedLifecycle) -> list[Any]:
    deadline = None if said.deadline is None else rfc3339(said.deadline)
    return [said.seq, said.kind, said.status, said.severity, said.outcome, deadline, said.deadline_known]


def _recorded_from(value: list[Any]) -> RecordedLifecycle:
    seq, kind, status, severity, outcome, deadline, known = value
    at = None if deadline is None else datetime.fromisoformat(deadline)
    return RecordedLifecycle(int(seq), kind, str(status), severity, outcome, at, bool(known))


def _open_from(text: str) -> tuple[dict[str, RecordedLifecycle], dict[str, RecordedLifecycle]]:
    """The open and the set-aside alarms of a kept checkpoint's text (:meth:`OpenByCustody._open_text`)."""
    held, gone = {}, {}
    for alarm_id, value in json.loads(text).items():
        if isinstance(value, dict):
            gone[alarm_id] = _recorded_from(value["gone"])
        else:
            held[alarm_id] = _recorded_from(value)
    return held, gone


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
    cursor over the ledger: each :meth:`advance` reads only the entries appended since the last
    (the first only those after the sealed checkpoint, or every alarm entry, once, without one), so
    what it costs is bounded by the entries written meanwhile, never by the alarms resolved before.
    Only alarm entries that hold are taken: an alarm marked resolved by SQL, in its row or by an
    entry written in the database, stays open here.

    Between passes the cursor follows the ledger's chain itself: each entry read must be the next
    seq and name the hash of the one before (the cursor's own, first). A gap or a broken link since
    the cursor (entries deleted or replaced there) is named in a warning and the alarm entries are
    read whole, checked, once; an alarm the cursor held open that no entry still there closes stays
    open, and :attr:`broke` tells the sweep to look at every alarm's row this pass.

    An alarm custody holds open whose row is gone (deleted in the database, or an id no alarm ever
    had, named by an entry written there) is named once by the sweep and set aside (:meth:`leave`):
    out of the open set and the checkpoint's, kept in :attr:`gone`, and back in the open set as soon
    as a row of that id is there again, so deleting a row and writing it back never takes an alarm
    off the sweep."""

    def __init__(self, key: ServiceKey) -> None:
        self.public = key.public_raw
        self.secret = key.derived_secret(CHECKPOINT_SECRET)
        self.seq = 0  # the entry the cursor stands on: one that holds, the chain checked up to it
        self.entry_hash = ""
        self.open: dict[str, RecordedLifecycle] = {}
        self.gone: dict[str, RecordedLifecycle] = {}  # held open by custody, with no row (set aside)
        self.read = 0  # alarm entries read, all told (what a pass costs, for the tests)
        self.started = False
        self.kept_seq = 0  # the seq of the checkpoint as this process last read or wrote it
        self.refused: set[int] = set()  # entries found not to hold, named once each
        self.replace = False  # the kept checkpoint was refused: the next one written replaces it
        self.changed = False  # the open or set-aside alarms changed since the checkpoint was kept
        self.broke = False  # the last advance found the chain broken since the cursor
        self.breaks: set[int] = set()  # entries found after a gap or a broken link, named once each

    def advance(self, session: Session, keep: bool = True) -> None:
        """Follow the ledger to its last entry; ``keep`` False: a reader's, which writes no
        checkpoint (only the sweep keeps one)."""
        if not self.started:
            self.started = True
            self._resume(session)
        self.broke = False
        if self.seq:
            self._read_since(session)
        else:
            self._read_whole(session)
        if self.gone:
            self._back(session)
        if keep and (self.seq > self.kept_seq or self.changed):
            self._keep(session)

    def _read_since(self, session: Session) -> None:
        """Every entry after the cursor up to the ledger's last, each the next in the chain (checked
        in the database: only a break comes back); the alarm entries among them taken, and the cursor
        moved onto the last entry when it holds. Every other entry's hash is checked against its
        body (no signature: cheap), so an alarm entry whose action was renamed in the database, its
        hash kept, is refused and the alarm it names taken as raised and due, not passed over."""
        tip = session.execute(select(*ENTRY_COLUMNS).order_by(CustodyEntry.seq.desc()).limit(1)).first()
        if tip is None or tip.seq <= self.seq:
            return
        broken = session.execute(self._first_break(int(tip.seq))).first()
        if broken is not None:
            self.breaks.add(int(broken.seq))
            self._broken(session, int(broken.seq_before or self.seq), broken, dict(self.open))
            return
        q = (
            select(*ENTRY_COLUMNS)
            .where(CustodyEntry.seq > self.seq, CustodyEntry.seq <= tip.seq)
            .order_by(CustodyEntry.seq)
            .execution_options(yield_per=1000)
        )
        for row in session.execute(q):
            if row.action in _LIFECYCLE_ACTIONS:
                self.read += 1
                self._take(row)
            elif not entry_hashes(row):  # edited: an alarm it names is taken as raised and due
                self._refuse(int(row.seq), row.details)
        if tip.seq > self.seq and tip.action not in _LIFECYCLE_ACTIONS and entry_holds(self.public, tip):
            self.seq, self.entry_hash = int(tip.seq), tip.entry_hash

    def _first_break(self, tip: int) -> Any:
        """The first entry after the cursor, up to ``tip``, that is not the next seq or does not name
        the hash of the entry before it (the cursor's own, first), and was not named already."""
        e = CustodyEntry
        linked = (
            select(
                e.seq,
                e.prev_hash,
                func.lag(e.seq, 1, self.seq).over(order_by=e.seq).label("seq_before"),
                func.lag(e.entry_hash, 1, self.entry_hash).over(order_by=e.seq).label("hash_before"),
            )
            .where(e.seq > self.seq, e.seq <= tip)
            .subquery()
        )
        c = linked.c
        where = or_(c.seq != c.seq_before + 1, c.prev_hash != c.hash_before)
        if self.breaks:
            where = and_(where, c.seq.not_in(sorted(self.breaks)))
        return select(c.seq, c.seq_before).where(where).order_by(c.seq).limit(1)

    def _read_whole(self, session: Session, latest: dict[str, int] | None = None) -> None:
        """Every alarm entry up to the ledger's last, each checked; the cursor then stands on the
        last entry when it holds (on the last alarm entry that holds otherwise). ``latest``: the seq
        of the last entry that holds of each alarm it names, filled in."""
        tip = session.execute(select(*ENTRY_COLUMNS).order_by(CustodyEntry.seq.desc()).limit(1)).first()
        if tip is None:
            return
        q = (
            select(*ENTRY_COLUMNS)
            .where(CustodyEntry.seq <= tip.seq, CustodyEntry.action.in_(_LIFECYCLE_ACTIONS))
            .order_by(CustodyEntry.seq)
            .execution_options(yield_per=1000)
        )
        for row in session.execute(q):
            self.read += 1
            self._take(row, latest)
        if tip.seq > self.seq and tip.action not in _LIFECYCLE_ACTIONS and entry_holds(self.public, tip):
            self.seq, self.entry_hash = int(tip.seq), tip.entry_hash

    def _broken(self, session: Session, seq: int, row: Any, before: dict[str, RecordedLifecycle]) -> None:
        """A gap or a broken link after the cursor's entry ``seq``: named, and the alarm entries read
        whole; an alarm held open before that no entry that holds, at or after the one it was taken
        at, closes now (its entries deleted or replaced) stays open as it was."""
        gap = row.seq != seq + 1
        log.warning(
            "the custody ledger's chain is broken since the alarm sweep's cursor (entries deleted or "
            "replaced in the database): the alarm entries are read whole and every alarm is looked at",
            extra={"cursor": seq, "entry": int(row.seq), "why": "seq gap" if gap else "previous-hash link"},
        )
        gone = self.gone
        self.broke, self.changed = True, True
        self.seq, self.entry_hash, self.open, self.gone = 0, "", {}, {}
        latest = dict.fromkeys((*before, *gone), -1)
        self._read_whole(session, latest)
        for alarm_id, said in (*before.items(), *gone.items()):
            if alarm_id not in self.open and latest[alarm_id] < said.seq:
                self.open[alarm_id] = said
        for alarm_id in set(gone) & set(self.open):
            self.gone[alarm_id] = self.open.pop(alarm_id)

    def _take(self, row: Any, latest: dict[str, int] | None = None) -> None:
        """One alarm entry: taken when it holds (and the cursor moves onto it), refused otherwise.
        ``latest``: the alarms whose last entry that holds is noted, by seq."""
        seq = int(row.seq)
        if not entry_holds(self.public, row):
            self._refuse(seq, row.details)
            return
        self.seq, self.entry_hash = seq, row.entry_hash
        got = recorded_of(seq, row.details)
        recorded = None if got is None else got[1]
        if got is None or recorded is None:
            return
        alarm_id = got[0]
        if latest is not None and alarm_id in latest:
            latest[alarm_id] = seq
        held = self.gone if alarm_id in self.gone else self.open
        if recorded.open:
            held[alarm_id] = recorded
        else:
            held.pop(alarm_id, None)

    def _refuse(self, seq: int, details: str) -> None:
        """An entry that does not hold: named, and not passed (one planted far ahead must not carry
        the cursor past the real ones). An alarm it names that no entry holds open is taken as
        raised and due (:func:`unvouched`): a planted or edited entry never closes one."""
        if seq not in self.refused:
            self.refused.add(seq)
            warn_of_entry(seq)
        got = recorded_of(seq, details)
        if got is not None and got[0] not in self.open and got[0] not in self.gone:
            self.open[got[0]] = unvouched(seq)

    # -- alarms with no row ---------------------------------------------------------------------------

    def leave(self, session: Session, alarm_ids: set[str]) -> None:
        """Set aside alarms custody holds open whose row is gone (the sweep names each, once): out
        of the open set and the checkpoint's, looked for again at each pass (:meth:`_back`)."""
        for alarm_id in sorted(alarm_ids & set(self.open)):
            self.gone[alarm_id] = self.open.pop(alarm_id)
            self.changed = True
        if self.changed and self.seq:
            self._keep(session)

    def _back(self, session: Session) -> None:
        """Alarms set aside whose row is there again: back in the open set, each named."""
        ids = sorted(self.gone)
        for start in range(0, len(ids), 500):
            there = session.scalars(
                select(_ALARM_IDS.c.id).where(_ALARM_IDS.c.id.in_(ids[start : start + 500]))
            )
            for alarm_id in sorted(there):
                log.warning(
                    "an alarm its custody record holds open has a row again: it is looked at as before",
                    extra={"alarm": alarm_id},
                )
                self.open[alarm_id] = self.gone.pop(alarm_id)
                self.changed = True

    # -- the checkpoint -----------------------------------------------------------------------------

    def _open_text(self) -> str:
        """The open alarms as kept: each by its id, what custody records of it; one set aside
        (:attr:`gone`) as ``{"gone": what custody records}``."""
        kept: dict[str, Any] = {a: _recorded_json(said) for a, said in self.open.items()}
        kept.update({a: {"gone": _recorded_json(said)} for a, said in self.gone.items()})
        return canonical_json(kept).decode()

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
        self.open, self.gone = _open_from(kept.open_alarms)
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
            _open_from(kept.open_alarms)
        except (ValueError, TypeError, AttributeError, KeyError):
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
        later = c.id == 1 if self.replace else c.seq <= self.seq if self.changed else c.seq < self.seq
        done = session.execute(update(CHECKPOINT).where(c.id == 1, later).values(**values))
        if not getattr(done, "rowcount", 0) and session.scalar(select(c.id).where(c.id == 1)) is None:
            try:
                with session.begin_nested():
                    session.execute(insert(CHECKPOINT).values(id=1, **values))
            except IntegrityError:  # another process wrote the first one meanwhile
                pass
        self.kept_seq, self.replace, self.changed = self.seq, False, False
