"""Lone visits and their check-ins: a start check-in opens a visit with an expected end, an end
check-in closes it; a visit whose end is overdue by the grace period raises ``missed_checkin``
(when, is the pure rule's to say: ``rules.missed_checkin_due_at``), and its end clears that alarm.

Each check-in is recorded on the custody ledger with the visit's wearer and expected end, and the
row is sealed as the service writes it (``chain_of_custody.visit_seals``, over its wearer, site,
missed check-in alarm, expected end and end): its missed check-in takes its wearer, so a visit whose
seal does not hold lends none (the alarm is raised all the same, with no wearer and a note) and
clears no alarm, and is due by what its custody entries record (``chain_of_custody.visit_deadlines``),
never by its row. Its alarms are raised at the site it was begun under (:meth:`Visits.raised_under`),
not its device's now: a device re-enrolled at another site during a visit takes neither the alarm
nor the visit's record there. ``due_at`` is not sealed: it only says when to look, and a sweep of the visits
still open (:meth:`Visits.restore_deadlines`, at most every :data:`SWEEP_EVERY` of the clock) puts
back one cleared or moved in the database, with a warning naming the visit, so a missed check-in is
raised at most that late, never silenced."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import rfc3339
from chain_of_custody.entries import CustodyAction
from chain_of_custody.lifecycle_seals import lifecycle_holds, recorded_lifecycle
from chain_of_custody.raise_seals import checked_message
from chain_of_custody.visit_deadlines import recorded_visit
from chain_of_custody.visit_seals import visit_entry, visit_holds, visit_seal
from chain_of_custody.visit_sites import recorded_start
from devices.lone_worker_wire import AckStatus, CheckinMessage

from . import rules
from .alarm_keys import vouched_keys
from .device_state import Snapshot
from .holders import holder_then
from .lifecycle import Lifecycle
from .liveness import Liveness
from .models import AlarmOutbox, AlarmRecord, LoneWorkerEvent, LoneWorkerVisit
from .outbox import Outbox
from .watched import set_watched

log = logging.getLogger(__name__)

UNVOUCHED_NOTE = "wearer unknown: the visit's record is not as the service sealed it"
# How often the clock looks at every visit still open (or ended lately) for a deadline changed in
# the database (:meth:`Visits.restore_deadlines`), and how far back an end is looked at.
SWEEP_EVERY = timedelta(seconds=30)
SWEEP_ENDED_WITHIN = timedelta(days=1)


def as_rule(visit: LoneWorkerVisit) -> rules.Visit:
    return rules.Visit(
        visit.visit_id,
        visit.device_id,
        started_at=visit.started_at,
        expected_end=visit.expected_end,
        ended_at=visit.ended_at,
        missed_alarm_id=visit.missed_alarm_id,
    )


class Visits:
    def __init__(
        self,
        policy: rules.AlarmPolicy,
        lifecycle: Lifecycle,
        liveness: Liveness,
        outbox: Outbox,
    ) -> None:
        self.policy = policy
        self.lifecycle = lifecycle
        self.liveness = liveness
        self.outbox = outbox
        self.secret = lifecycle.seal_secret  # visit rows' seals (``chain_of_custody.visit_seals``)
        self.swept_at: datetime | None = None
        grace = timedelta(seconds=policy.missed_checkin_grace_s)
        self.keys = RecordKeys(
            lifecycle.custody_public, lifecycle.device_secret, grace, lifecycle.seal_secret
        )

    def seal(self, visit: LoneWorkerVisit) -> None:
        """Seal the visit's row as the service records it: its device, id, wearer, missed alarm,
        expected end, end and site."""
        visit.seal = visit_seal(self.secret, visit)

    def sealed(self, visit: LoneWorkerVisit) -> bool:
        """Whether the visit's row is as the service sealed it (a warning names it when not)."""
        return visit_holds(self.secret, visit, visit.seal)

    def checkin(
        self,
        session: Session,
        snap: Snapshot,
        message: CheckinMessage,
        event: LoneWorkerEvent,
        outbox: list[AlarmOutbox],
        now: datetime,
    ) -> None:
        """A start or end check-in (already verified; ``event`` is its row, not yet added)."""
        body = message.checkin
        visit = session.scalars(
            select(LoneWorkerVisit)
            .where(LoneWorkerVisit.device_id == snap.device_id, LoneWorkerVisit.visit_id == body.visit_id)
            .with_for_update()
        ).first()
        vouched = visit is None or self.sealed(visit)  # an altered row names no alarm to clear
        missed: AlarmRecord | None = None
        if body.action == "end" and visit is not None and visit.missed_alarm_id and vouched:
            missed = session.get(AlarmRecord, visit.missed_alarm_id, with_for_update=True)
            if missed is not None and missed.device_id != snap.device_id:
                missed = None
        self.liveness.lock_rows(session, snap, message)
        session.add(event)
        opened = visit is None
        if visit is None:  # a new visit, or the end of one whose start never reached us
            # Its wearer and site are those of its device as it begins (the message was taken only
            # from a device row whose seal holds; one delivered late is its holder's then:
            # ``alarms.holders``): its alarms are raised there, wherever the device is enrolled by
            # the time they fall due.
            keys = self.keys
            wearer, site = holder_then(
                session, keys.device_secret, keys.custody_public, snap, message.occurred_at, now
            )
            visit = LoneWorkerVisit(
                device_id=snap.device_id, visit_id=body.visit_id, wearer=wearer, site=site
            )
            self.seal(visit)
            session.add(visit)
        if body.action == "start":
            assert body.expected_end is not None
            if visit.ended_at is None:
                visit.started_at = visit.started_at or message.occurred_at
                visit.expected_end = body.expected_end
                visit.start_event_id = message.event_id
                visit.note = body.note
                visit.due_at = rules.missed_checkin_due_at(
                    _as_rule(session, visit, vouched, self.keys, now), self.policy
                )
                set_watched(session, self.lifecycle.seal_secret, snap, active_visit_id=body.visit_id)
        else:
            if visit.ended_at is None:
                visit.ended_at = now
                visit.end_event_id = message.event_id
                visit.due_at = rules.missed_checkin_due_at(as_rule(visit), self.policy)
                if missed is not None:
                    self.lifecycle.transition(
                        session,
                        missed,
                        rules.ConditionCleared(now, f"visit {body.visit_id} ended"),
                        outbox,
                        now,
                        actor=f"device:{snap.device_id}",
                    )
            if snap.active_visit_id == body.visit_id:
                set_watched(session, self.lifecycle.seal_secret, snap, active_visit_id=None)
        if vouched:  # a broken seal stays broken
            self.seal(visit)
        expected = rfc3339(visit.expected_end) if visit.expected_end else None
        self.lifecycle.ledger.append(
            session,
            CustodyAction.VISIT_CHANGED,
            f"device:{snap.device_id}",
            details=visit_entry(
                snap.device_id,
                body.visit_id,
                visit.wearer,
                vouched,
                opened_at=(visit.site,) if opened else None,
                checkin=body.action,
                event_id=message.event_id,
                expected_end=expected,
            ),
            at=now,
        )
        self.outbox.queue_ack(
            session, outbox, snap.device_id, message.event_id, AckStatus.RECEIVED, None, now
        )

    def raise_missed_checkins(self, now: datetime, limit: int = 50) -> int:
        """Visits whose end check-in is overdue by the grace period raise ``missed_checkin`` (after
        a sweep for deadlines changed in the database, when one is due)."""
        if sweep_due(self.swept_at, now):
            swept(self.restore_deadlines, now)
            self.swept_at = now

        def check(session: Session, visit: LoneWorkerVisit, outbox: list[AlarmOutbox]) -> None:
            vouched = self.sealed(visit)
            rule = _as_rule(session, visit, vouched, self.keys, now)
            if not rules.is_checkin_missed(rule, now, self.policy):
                visit.due_at = rules.missed_checkin_due_at(rule, self.policy)
                return  # raised already, or the grace period has grown since it was due
            visit.due_at = None
            site, wearer, notes = self.raised_under(session, visit, vouched)
            row = self.lifecycle.raise_alarm(
                session,
                outbox,
                now,
                device_id=visit.device_id,
                kind=rules.AlarmKind.MISSED_CHECKIN,
                wearer=wearer,
                site=site,
                occurred_at=visit.expected_end,
                visit_id=visit.visit_id,
                dedupe_key=_missed_key(visit),
                note="; ".join(notes) or None,
            )
            visit.missed_alarm_id = row.id
            if vouched:  # a broken seal stays broken
                self.seal(visit)

        # Not only open visits: one whose seal does not hold is due by what custody records, which
        # may be open though its row says it ended (see :meth:`restore_deadlines`).
        due = select(LoneWorkerVisit).where(LoneWorkerVisit.due_at <= now).order_by(LoneWorkerVisit.due_at)
        return self.outbox.claimed_pass(due, limit, check)

    def raised_under(
        self, session: Session, visit: LoneWorkerVisit, vouched: bool
    ) -> tuple[str | None, str | None, list[str]]:
        """The site and wearer an alarm the service raises for the visit (its missed check-in, its
        device silent on it) is raised under, and notes saying why one is unknown: those the visit
        was begun under, never those of its device's row now (re-enrolled at another site since,
        the visit's record and its worker's note would go to that site's managers, and the alarm
        to none of the worker's own). From its row when its seal holds (``vouched``) and it records
        a site; else as its custody record has it (``chain_of_custody.visit_sites``), its wearer
        only from a row the service sealed; when that records neither, as its device's row has
        them, with a warning naming the visit. A device whose row's seal does not hold lends
        neither, and raises at no site, as before: the alarm is raised all the same (a safety
        alarm is never dropped), with why."""
        device, unvouched = self.lifecycle.device_of(session, visit.device_id)
        notes = [n for n in (None if vouched else UNVOUCHED_NOTE, unvouched) if n]
        site: str | None
        if vouched and visit.site is not None:
            site, wearer = visit.site, visit.wearer
        else:
            with session.no_autoflush:
                said = recorded_start(
                    session,
                    visit.device_id,
                    visit.visit_id,
                    self.keys.custody_public,
                    self.keys.device_secret,
                )
            if said is not None:
                site, wearer = said.site, visit.wearer or said.wearer
            else:
                log.warning(
                    "a visit's site is recorded nowhere the service can go by: its alarm is raised at "
                    "its device's site now",
                    extra={"device": visit.device_id, "visit": visit.visit_id},
                )
                site = device.site if device else None
                wearer = visit.wearer or (device.assigned_staff_id if device else None)
        if device is None:
            site = None
        return site, wearer if vouched else None, notes

    def restore_deadlines(self, now: datetime) -> int:
        """Put back the deadline of every visit still open, or ended within
        :data:`SWEEP_ENDED_WITHIN`, whose ``due_at`` is not the one its sealed row (or, when its
        seal does not hold, its custody record) gives: cleared or moved in the database, it would
        silence the missed check-in. Read without locks; only the rows to put back are claimed
        (and looked at again). A warning names each; how many."""
        restored = 0

        def due(session: Session, visit: LoneWorkerVisit) -> datetime | None:
            return rules.missed_checkin_due_at(
                _as_rule(session, visit, self.sealed(visit), self.keys, now), self.policy
            )

        def check(session: Session, visit: LoneWorkerVisit, outbox: list[AlarmOutbox]) -> None:
            nonlocal restored
            if (put_back := due(session, visit)) != visit.due_at:
                log.warning(
                    "a visit's missed check-in deadline is not the one its record gives: put back",
                    extra={"device": visit.device_id, "visit": visit.visit_id},
                )
                visit.due_at = put_back
                restored += 1

        v = LoneWorkerVisit
        looked_at = select(v).where(or_(v.ended_at.is_(None), v.ended_at >= now - SWEEP_ENDED_WITHIN))
        with self.lifecycle.db.session() as session:
            off = [visit.id for visit in session.scalars(looked_at) if due(session, visit) != visit.due_at]
        if off:
            self.outbox.claimed_pass(select(v).where(v.id.in_(off)), len(off), check, isolate=False)
        return restored


def sweep_due(swept_at: datetime | None, now: datetime) -> bool:
    """Whether a sweep for deadlines changed in the database is due (none yet, :data:`SWEEP_EVERY`
    since the last, or the clock went back)."""
    return swept_at is None or not swept_at <= now < swept_at + SWEEP_EVERY


def swept(sweep: Callable[[datetime], int], now: datetime) -> None:
    """Run a sweep for deadlines changed in the database; one that fails is logged and the pass it
    comes before runs all the same (the sweep only puts deadlines back)."""
    try:
        sweep(now)
    except Exception:  # noqa: BLE001 - the due rows must still be acted on
        log.exception("a sweep for deadlines changed in the database failed")


def _as_rule(
    session: Session, visit: LoneWorkerVisit, vouched: bool, keys: RecordKeys, now: datetime
) -> rules.Visit:
    """The visit as the rules see it when deciding whether its missed check-in is due. A visit whose
    seal does not hold names a missed check-in alarm only if the service raised one for it, so an
    alarm id written into the row in the database silences nothing; it has ended only if custody
    records its end check-in, and it is due by the earlier of its row's expected end and the one
    custody records (when in doubt, raise). When custody records none (its start's entry deleted,
    or edited so it does not hold), its row's says nothing either: it is due at once, with a
    warning naming it, unless it has no seal and its device's own signed start check-in gives one
    (a visit opened before seals, which no entry ever recorded: :func:`_signed_expected_end`)."""
    rule = as_rule(visit)
    if vouched:
        return rule
    if visit.missed_alarm_id is not None and not _raised_for(session, visit, keys):
        rule = dataclasses.replace(rule, missed_alarm_id=None)
    with session.no_autoflush:
        found = recorded_visit(session, visit.device_id, visit.visit_id, keys.custody_public)
        said = found.expected_at()
        if said is None and visit.seal is None:
            said = _signed_expected_end(session, visit, keys)
    ended = rule.ended_at if found.ended is not None else None
    if said is None and ended is None and rule.missed_alarm_id is None:
        log.warning(
            "a visit's expected end is recorded nowhere the service can go by: its missed check-in is due now",
            extra={"device": visit.device_id, "visit": visit.visit_id},
        )
        said = now - keys.grace
    expected = min((t for t in (rule.expected_end, said) if t is not None), default=None)
    return dataclasses.replace(rule, expected_end=expected, ended_at=ended)


@dataclasses.dataclass(frozen=True)
class RecordKeys:
    """What a visit whose seal does not hold is checked against: the custody key (its entries), the
    device rows' seal secret (its device's signed messages) and the grace period (due now)."""

    custody_public: bytes
    device_secret: bytes
    grace: timedelta
    seal_secret: bytes  # alarm rows' seals (``Lifecycle.seal_secret``)


def _signed_expected_end(session: Session, visit: LoneWorkerVisit, keys: RecordKeys) -> datetime | None:
    """The expected end of the visit's start check-in its device sent last, of those whose stored
    bytes are as the device signed them (``raise_seals.checked_message``; bytes edited in the
    database are named in a warning and say nothing), or None. A later start moves the end (the
    service takes each as it comes), and which one the device sent last is what it signed: its
    sequence number, strictly increasing across its messages (docs/PROTOCOLS.md), not the time the
    service received it, a column SQL can change (and messages of one device may be taken out of
    order by several instances)."""
    e = LoneWorkerEvent
    q = (
        select(e.event_id, e.raw)
        .where(e.device_id == visit.device_id, e.visit_id == visit.visit_id, e.action == "start")
        .order_by(e.event_id)
    )
    latest: tuple[int, datetime] | None = None
    for event_id, raw in session.execute(q):
        held = checked_message(
            session, keys.device_secret, keys.custody_public, visit.device_id, event_id, raw
        )
        if held is None:
            continue
        try:
            message = json.loads(held)
            body, seq = message["checkin"], message["seq"]
            if body["visit_id"] != visit.visit_id or body["action"] != "start":
                continue
            said = datetime.fromisoformat(body["expected_end"])
        except (ValueError, TypeError, KeyError):
            continue
        if not isinstance(seq, int) or isinstance(seq, bool) or said.tzinfo is None:
            continue
        if latest is None or seq > latest[0]:
            latest = (seq, said)
    return None if latest is None else latest[1]


def _missed_key(visit: LoneWorkerVisit) -> str:
    """The dedupe key of the visit's missed check-in alarm: one per visit."""
    return f"missed_checkin:{visit.device_id}:{visit.visit_id}"


def _raised_for(session: Session, visit: LoneWorkerVisit, keys: RecordKeys) -> bool:
    """Whether the service raised the visit's missed check-in alarm: what a visit whose seal does not
    hold is taken at, rather than the alarm its row names. A row under its dedupe key (or the key of
    its own a timer's alarm takes when another row holds that one, ``lifecycle._free_key``), or the
    row the visit names, counts only when the service vouches it is its device's missed check-in on
    that visit (its lifecycle seal, else its custody record): by the key alone, a row planted under
    it, beside an alarm id written into the visit, silenced the missed check-in for good."""
    key = _missed_key(visit)
    q = select(AlarmRecord).where(
        or_(
            AlarmRecord.dedupe_key == key,
            AlarmRecord.dedupe_key.startswith(f"{key}:", autoescape=True),
            AlarmRecord.id == visit.missed_alarm_id,
        )
    )
    with session.no_autoflush:  # a check-in's batch flushes its rows together, later
        for row in session.scalars(q):
            said = vouched_keys(session, keys.seal_secret, keys.custody_public, row)
            if said is None or said.device not in (None, visit.device_id):
                continue
            if said.visit_known and said.visit_id != visit.visit_id:
                continue
            kind: str | None = row.kind
            if row.lifecycle_seal is None or not lifecycle_holds(keys.seal_secret, row):
                recorded = recorded_lifecycle(session, row.id, keys.custody_public)
                kind = recorded.kind if recorded is not None else None
            if kind == rules.AlarmKind.MISSED_CHECKIN.value:
                return True
    return False
