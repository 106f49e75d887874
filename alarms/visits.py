"""Lone visits and their check-ins: a start check-in opens a visit with an expected end, an end
check-in closes it; a visit whose end is overdue by the grace period raises ``missed_checkin``
(when, is the pure rule's to say: ``rules.missed_checkin_due_at``), and its end clears that alarm."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from devices.lone_worker_wire import AckStatus, CheckinMessage
from devices.models import Device

from . import rules
from .device_state import Snapshot, set_state
from .lifecycle import Lifecycle
from .liveness import Liveness
from .models import AlarmOutbox, AlarmRecord, LoneWorkerEvent, LoneWorkerVisit
from .outbox import Outbox


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
        missed: AlarmRecord | None = None
        if body.action == "end" and visit is not None and visit.missed_alarm_id:
            missed = session.get(AlarmRecord, visit.missed_alarm_id, with_for_update=True)
        self.liveness.lock_rows(session, snap, message)
        session.add(event)
        if visit is None:  # a new visit, or the end of one whose start never reached us
            visit = LoneWorkerVisit(device_id=snap.device_id, visit_id=body.visit_id, wearer=snap.staff_id)
            session.add(visit)
        if body.action == "start":
            assert body.expected_end is not None
            if visit.ended_at is None:
                visit.started_at = visit.started_at or message.occurred_at
                visit.expected_end = body.expected_end
                visit.start_event_id = message.event_id
                visit.note = body.note
                visit.due_at = rules.missed_checkin_due_at(as_rule(visit), self.policy)
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
        self.outbox.queue_ack(
            session, outbox, snap.device_id, message.event_id, AckStatus.RECEIVED, None, now
        )

    def raise_missed_checkins(self, now: datetime, limit: int = 50) -> int:
        """Visits whose end check-in is overdue by the grace period raise ``missed_checkin``."""

        def check(session: Session, visit: LoneWorkerVisit, outbox: list[AlarmOutbox]) -> None:
            if not rules.is_checkin_missed(as_rule(visit), now, self.policy):
                visit.due_at = rules.missed_checkin_due_at(as_rule(visit), self.policy)
                return  # raised already, or the grace period has grown since it was due
            visit.due_at = None
            device = session.get(Device, visit.device_id)
            row = self.lifecycle.raise_alarm(
                session,
                outbox,
                now,
                device_id=visit.device_id,
                kind=rules.AlarmKind.MISSED_CHECKIN,
                wearer=visit.wearer or (device.assigned_staff_id if device else None),
                site=device.site if device else None,
                occurred_at=visit.expected_end,
                visit_id=visit.visit_id,
                dedupe_key=f"missed_checkin:{visit.device_id}:{visit.visit_id}",
            )
            visit.missed_alarm_id = row.id

        due = (
            select(LoneWorkerVisit)
            .where(LoneWorkerVisit.due_at <= now, LoneWorkerVisit.ended_at.is_(None))
            .order_by(LoneWorkerVisit.due_at)
        )
        return self.outbox.claimed_pass(due, limit, check)
