"""Lone visits and their check-ins: a start check-in opens a visit with an expected end, an end
check-in closes it; a visit whose end is overdue by the grace period raises ``missed_checkin``
(when, is the pure rule's to say: ``rules.missed_checkin_due_at``), and its end clears that alarm.

Each check-in is recorded on the custody ledger with the visit's wearer, and the row is sealed as
the service opens it (``chain_of_custody.visit_seals``): its missed check-in takes its wearer, so
a visit whose seal does not hold lends none (the alarm is raised all the same, with no wearer and a
note) and clears no alarm."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import rfc3339
from chain_of_custody.entries import CustodyAction
from chain_of_custody.visit_seals import visit_entry, visit_holds, visit_seal
from devices.lone_worker_wire import AckStatus, CheckinMessage

from . import rules
from .device_state import Snapshot, set_state
from .lifecycle import Lifecycle
from .liveness import Liveness
from .models import AlarmOutbox, AlarmRecord, LoneWorkerEvent, LoneWorkerVisit
from .outbox import Outbox

UNVOUCHED_NOTE = "wearer unknown: the visit's record is not as the service sealed it"


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

    def seal(self, visit: LoneWorkerVisit) -> None:
        """Seal the visit's row as the service records it: its device, id, wearer and missed alarm."""
        visit.seal = visit_seal(
            self.secret, visit.device_id, visit.visit_id, visit.wearer, visit.missed_alarm_id
        )

    def sealed(self, visit: LoneWorkerVisit) -> bool:
        """Whether the visit's row is as the service sealed it (a warning names it when not)."""
        return visit_holds(
            self.secret, visit.device_id, visit.visit_id, visit.wearer, visit.missed_alarm_id, visit.seal
        )

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
        if visit is None:  # a new visit, or the end of one whose start never reached us
            visit = LoneWorkerVisit(device_id=snap.device_id, visit_id=body.visit_id, wearer=snap.staff_id)
            self.seal(visit)
            session.add(visit)
        if body.action == "start":
            assert body.expected_end is not None
            if visit.ended_at is None:
                visit.started_at = visit.started_at or message.occurred_at
                visit.expected_end = body.expected_end
                visit.start_event_id = message.event_id
                visit.note = body.note
                visit.due_at = rules.missed_checkin_due_at(_as_rule(session, visit, vouched), self.policy)
                set_state(session, snap.device_id, active_visit_id=body.visit_id)
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
                set_state(session, snap.device_id, active_visit_id=None)
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
        """Visits whose end check-in is overdue by the grace period raise ``missed_checkin``."""

        def check(session: Session, visit: LoneWorkerVisit, outbox: list[AlarmOutbox]) -> None:
            vouched = self.sealed(visit)
            rule = _as_rule(session, visit, vouched)
            if not rules.is_checkin_missed(rule, now, self.policy):
                visit.due_at = rules.missed_checkin_due_at(rule, self.policy)
                return  # raised already, or the grace period has grown since it was due
            visit.due_at = None
            # A visit whose row the service did not seal as it stands lends no wearer, and a device
            # whose row's seal does not hold neither site nor wearer: the alarm is raised all the
            # same (a safety alarm is never dropped), with why.
            device, unvouched = self.lifecycle.device_of(session, visit.device_id)
            wearer = (visit.wearer or (device.assigned_staff_id if device else None)) if vouched else None
            notes = [n for n in (None if vouched else UNVOUCHED_NOTE, unvouched) if n]
            row = self.lifecycle.raise_alarm(
                session,
                outbox,
                now,
                device_id=visit.device_id,
                kind=rules.AlarmKind.MISSED_CHECKIN,
                wearer=wearer,
                site=device.site if device else None,
                occurred_at=visit.expected_end,
                visit_id=visit.visit_id,
                dedupe_key=_missed_key(visit),
                note="; ".join(notes) or None,
            )
            visit.missed_alarm_id = row.id
            if vouched:  # a broken seal stays broken
                self.seal(visit)

        due = (
            select(LoneWorkerVisit)
            .where(LoneWorkerVisit.due_at <= now, LoneWorkerVisit.ended_at.is_(None))
            .order_by(LoneWorkerVisit.due_at)
        )
        return self.outbox.claimed_pass(due, limit, check)


def _as_rule(session: Session, visit: LoneWorkerVisit, vouched: bool) -> rules.Visit:
    """The visit as the rules see it when deciding whether its missed check-in is due: a visit whose
    seal does not hold names a missed check-in alarm only if the service raised one for it, so an
    alarm id written into the row in the database silences nothing."""
    rule = as_rule(visit)
    if not vouched and visit.missed_alarm_id is not None and not _raised_for(session, visit):
        rule = dataclasses.replace(rule, missed_alarm_id=None)
    return rule


def _missed_key(visit: LoneWorkerVisit) -> str:
    """The dedupe key of the visit's missed check-in alarm: one per visit."""
    return f"missed_checkin:{visit.device_id}:{visit.visit_id}"


def _raised_for(session: Session, visit: LoneWorkerVisit) -> bool:
    """Whether the service raised the visit's missed check-in alarm (by its dedupe key): what a visit
    whose seal does not hold is taken at, rather than the alarm its row names."""
    with session.no_autoflush:  # a check-in's batch flushes its rows together, later
        found = session.scalar(select(AlarmRecord.id).where(AlarmRecord.dedupe_key == _missed_key(visit)))
    return found is not None
