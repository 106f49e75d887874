"""What the clock decides about alarms, run safely by any number of instances.

Every deadline lives in the database (``alarms.next_deadline`` from ``rules.next_deadline``,
``lone_worker_visits.due_at``, ``lone_worker_states.offline_due_at``, the outbox's
``next_attempt_at``), so nothing is lost when an instance stops, and each pass claims its rows
(``storage.leases.claim``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers
anyway), so two instances never act on the same alarm. Rules fire each deadline at its own time, so
how often the loop runs changes only how soon it is noticed, never the outcome.

A deadline only says when to look, and a row is looked at only when it is due: one cleared or moved
in the database would silence the alarm. So the clock sweeps the open alarms (and the visits, in
``alarms.visits``) at most every ``SWEEP_EVERY`` of its time and puts back a ``next_deadline`` that
is not the one the alarm's lifecycle columns give (``rules.next_deadline``), with a warning naming
the alarm, and the devices silent on a visit or with an alarm open whose ``offline_due_at`` is not
due (put back to now): an escalation or offline alarm is then at most that late, never silenced.
The lifecycle columns themselves are sealed with the deadline (``chain_of_custody.lifecycle_seals``):
the sweep looks at every alarm open by its row or by its custody record (followed by a cursor over
the ledger's new entries, taking only those the service signed, and started in a new process from
its sealed checkpoint, ``chain_of_custody.sweep_cursor``, so a pass costs what the open alarms and
the entries since the last pass cost, never what the resolved ones do), and one whose seal does not
hold is put back to its latest signed custody entry (``Lifecycle.rule_of``), so an alarm
acknowledged, resolved or put off by SQL, with or without an entry written there to say so, still
escalates.

Effects of an escalation (``alarms.lifecycle``): a change on the control room's live stream, a
message on the MQTT control topic ``lw/v1/_control/escalations``, and, when
``EVIDENCE_ESCALATION_WEBHOOK_URL`` is set, a signed POST to it (``alarms.outbox``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import rfc3339
from chain_of_custody.heard_seals import Heard, last_heard
from chain_of_custody.sweep_cursor import OpenByCustody
from devices.models import LoneWorkerState
from storage.db import Database

from . import rules
from .alarm_keys import raised_from
from .feed import forget_old_changes
from .incident_links import SERVICE_ACTOR
from .lifecycle import Lifecycle
from .liveness import own_offline_alarm
from .models import AlarmOutbox, AlarmRecord, LoneWorkerEvent, LoneWorkerVisit
from .outbox import Outbox
from .payloads import PayloadEvidence, raise_named
from .standing import Standing
from .visits import Visits, sweep_due, swept
from .watched import vouch

log = logging.getLogger(__name__)

# Kinds whose being open makes a silent device worth an alarm (a low battery alone does not).
WATCHED_KINDS = ("sos", "amber", "man_down", "missed_checkin")


class Clock:
    def __init__(
        self,
        db: Database,
        policy: rules.AlarmPolicy,
        clock: Callable[[], datetime],
        outbox: Outbox,
        lifecycle: Lifecycle,
        visits: Visits,
        payloads: PayloadEvidence,
    ) -> None:
        self.db = db
        self.policy = policy
        self.now = clock
        self.outbox = outbox
        self.lifecycle = lifecycle
        self.visits = visits
        self.payloads = payloads
        self.swept_at: datetime | None = None
        self.offline_swept_at: datetime | None = None
        self.open_by_custody = OpenByCustody(lifecycle.core.key)
        self.looked_at = 0  # alarm rows the sweeps looked at, all told (what a pass costs, for the tests)

    def fire_deadlines(self, now: datetime | None = None, limit: int = 50) -> int:
        """Amber timers that ran out and acknowledgements that are overdue (after a sweep for
        deadlines changed in the database, when one is due)."""
        at = now or self.now()
        if sweep_due(self.swept_at, at):
            swept(self.restore_deadlines, at)
            self.swept_at = at

        def fire(session: Session, row: AlarmRecord, outbox: list[AlarmOutbox]) -> None:
            if (
                self.lifecycle.transition(session, row, rules.Tick(at), outbox, at, actor=SERVICE_ACTOR)
                is None
            ):
                return  # no alarm of the service's: set aside
            if row.next_deadline is not None and row.next_deadline <= at:  # never spin on one row
                row.next_deadline = None
                self.lifecycle.seal_lifecycle(row)

        due = select(AlarmRecord).where(AlarmRecord.next_deadline <= at).order_by(AlarmRecord.next_deadline)
        return self.outbox.claimed_pass(due, limit, fire)

    def restore_deadlines(self, now: datetime) -> int:
        """Put back the lifecycle (``Lifecycle.rule_of``) and ``next_deadline`` of every alarm open
        by its row or by its custody record whose stored ones are not as the service sealed them or
        not the ones its lifecycle gives; a warning names each; how many."""
        restored = 0
        cursor = self.open_by_custody
        with self.db.session() as session:
            cursor.advance(session)
        by_custody = cursor.open
        seen: set[str] = set()

        def check(session: Session, row: AlarmRecord, outbox: list[AlarmOutbox]) -> None:
            nonlocal restored
            self.looked_at += 1
            seen.add(row.id)
            seal = row.lifecycle_seal
            try:
                alarm = self.lifecycle.rule_of(session, row, now, by_custody.get(row.id))
                if alarm is None:  # a row the service never raised: set aside
                    return
                due = rules.next_deadline(alarm)
            except ValueError:  # a lifecycle column no rule knows: nothing to go by here
                log.warning("an alarm's lifecycle columns are not the rules': left", extra={"alarm": row.id})
                return
            if row.lifecycle_seal != seal:  # put back to its custody record, sealed
                restored += 1
                return
            if due != row.next_deadline:
                log.warning(
                    "an alarm's deadline is not the one its lifecycle gives: put back",
                    extra={"alarm": row.id},
                )
                row.next_deadline = due
                self.lifecycle.seal_lifecycle(row)
                restored += 1

        open_alarms = select(AlarmRecord)
        if not cursor.broke:  # after a break in the ledger's chain, every alarm is looked at once
            open_alarms = open_alarms.where(
                or_(AlarmRecord.status != "resolved", AlarmRecord.id.in_(sorted(by_custody)))
            )
        self.outbox.claimed_pass(open_alarms, 100_000, check, isolate=False)
        self._set_aside_missing(set(by_custody) - seen)
        return restored

    def _set_aside_missing(self, unseen: set[str]) -> None:
        """A warning naming each alarm its custody record holds open that has no row (deleted by
        SQL, or never an alarm's, named by an entry written there: nothing can escalate it), once:
        the cursor sets it aside until a row of it is back (``OpenByCustody.leave``); those not
        seen because another instance held them are not."""
        if not unseen:
            return
        with self.db.session() as session:
            there = set(session.scalars(select(AlarmRecord.id).where(AlarmRecord.id.in_(sorted(unseen)))))
            for alarm_id in sorted(unseen - there):
                log.warning(
                    "an alarm its custody record holds open has no row: it was deleted in the database, "
                    "or an entry written there names it; set aside until a row of it is back",
                    extra={"alarm": alarm_id},
                )
            self.open_by_custody.leave(session, unseen - there)

    def raise_missed_checkins(self, now: datetime | None = None, limit: int = 50) -> int:
        return self.visits.raise_missed_checkins(now or self.now(), limit)

    def raise_offline(self, now: datetime | None = None, limit: int = 50) -> int:
        """A device silent for ``device_offline_after_seconds`` while on a visit or with an alarm open
        (after a sweep for deadlines changed in the database, when one is due)."""
        at = now or self.now()
        if sweep_due(self.offline_swept_at, at):
            swept(self.restore_offline_deadlines, at)
            self.offline_swept_at = at

        def check(session: Session, state: LoneWorkerState, outbox: list[AlarmOutbox]) -> None:
            state.offline_due_at = None
            heard = self.last_heard(state)
            if heard.at is None:
                return
            if state.offline_alarm_id is not None:
                # Raised already, if the state names the device's own offline alarm: an id written
                # into the (unsealed) state row in the database silences nothing.
                if own_offline_alarm(session, state.device_id, state.offline_alarm_id) is not None:
                    return
            # A row whose seal does not vouch for its time (none yet, or a wrong one) is not heard
            # from since it is seen so: it is due, and no message of the device has sealed it since.
            since = heard.at if heard.sealed else min(heard.at, at)
            if not rules.is_device_offline(
                since if heard.sealed else at - timedelta(seconds=self.policy.offline_after_s),
                at,
                self.policy,
                visit_active=_on_a_visit(session, state.device_id),
                alarm_open=bool(self.watched_alarms(session, at, state.device_id)),
            ):
                return
            if not heard.sealed:
                log.warning(
                    "a device's last-heard time is not as the service sealed it: taken as silent",
                    extra={"device": state.device_id},
                )
            vouch(session, self.lifecycle.seal_secret, state)  # the visit it names, as sealed
            site, wearer, note = self.offline_under(session, state, at)
            row = self.lifecycle.raise_alarm(
                session,
                outbox,
                at,
                device_id=state.device_id,
                kind=rules.AlarmKind.DEVICE_OFFLINE,
                wearer=wearer,
                site=site,
                occurred_at=since,
                visit_id=state.active_visit_id,
                dedupe_key=f"device_offline:{state.device_id}:{rfc3339(since)}",
                note=note,
            )
            state.offline_alarm_id = row.id

        due = (
            select(LoneWorkerState)
            .where(LoneWorkerState.offline_due_at <= at)
            .order_by(LoneWorkerState.offline_due_at)
        )
        return self.outbox.claimed_pass(due, limit, check)

    def offline_under(
        self, session: Session, state: LoneWorkerState, now: datetime
    ) -> tuple[str | None, str | None, str | None]:
        """The site and wearer a silent device's offline alarm is raised under, and a note: those of
        what it is watched for when it falls silent, not its row's now (re-enrolled at another site
        meanwhile, the old site's worker would lose the alarm, and the new site would read the
        visit's record it carries). On a visit, the visit's (``Visits.raised_under``: the alarm names
        it, and its record shows the visit's check-ins); else, with an alarm open as the service
        vouches (:meth:`watched_alarms`), the latest such alarm's, from a row the service sealed;
        else its device's (``Lifecycle.device_of``: a row whose seal does not hold lends neither,
        and the alarm is of no site, as any)."""
        device, note = self.lifecycle.device_of(session, state.device_id)
        if device is None:
            return None, None, note
        if state.active_visit_id is not None:
            visit = session.scalars(
                select(LoneWorkerVisit).where(
                    LoneWorkerVisit.device_id == state.device_id,
                    LoneWorkerVisit.visit_id == state.active_visit_id,
                )
            ).first()
            if visit is not None:
                site, wearer, notes = self.visits.raised_under(session, visit, self.visits.sealed(visit))
                return site, wearer, "; ".join(notes) or None
        watched = self.watched_alarms(session, now, state.device_id)
        for alarm in sorted(watched, key=lambda a: (-a.raised_at.timestamp(), a.id)):
            if self.lifecycle.sealed(alarm):
                return alarm.site, alarm.wearer, None
        return device.site, device.assigned_staff_id, None

    def standing(self, session: Session, now: datetime) -> Standing:
        """The open alarms as the service vouches for them (``alarms.standing``), by the custody
        record as the sweep's cursor last left it (every pass sweeps first, and an alarm raised
        since is vouched for by its own seal): no ledger read of its own."""
        return Standing(session, self.lifecycle.core.key, now, self.open_by_custody)

    def watched_alarms(
        self, session: Session, now: datetime, device_id: str | None = None
    ) -> list[AlarmRecord]:
        """The alarms open as the service vouches (:meth:`standing`) whose being open makes a silent
        device worth an alarm, of ``device_id`` (None: every device's). By their status column, an
        SOS resolved by SQL took its silent device off the watch, and its offline alarm was never
        raised (for good, with the column set again after each sweep)."""
        where: list[ColumnElement[bool]] = [AlarmRecord.kind.in_(WATCHED_KINDS)]
        if device_id is not None:
            where.append(AlarmRecord.device_id == device_id)
        return self.standing(session, now).rows(*where)

    def last_heard(self, state: LoneWorkerState) -> Heard:
        """When a device was last heard from, as far as its row's seal vouches."""
        return last_heard(self.lifecycle.seal_secret, state.device_id, state.last_seen_at, state.heard_seal)

    def restore_offline_deadlines(self, now: datetime) -> int:
        """Put back the ``offline_due_at`` of every device silent for longer than
        ``device_offline_after_seconds`` (counted from when its row's seal vouches it was last
        heard from, ``chain_of_custody.heard_seals``; a row whose seal is wrong counts as silent,
        one with none yet by its row's time, or as silent when that is later than now) while on a
        visit or with an alarm open that names no offline alarm of its own and is not due by then
        (cleared or moved in the database, it would silence the offline alarm). Read without locks;
        only the rows to put back are claimed (and looked at again). A warning names each device;
        how many."""
        restored = 0
        silent_since = now - timedelta(seconds=self.policy.offline_after_s)

        def silent(state: LoneWorkerState) -> bool:
            heard = self.last_heard(state)
            if heard.at is None:
                return False
            if heard.sealed:
                return heard.at <= silent_since
            return state.heard_seal is not None or not silent_since < heard.at <= now

        def check(session: Session, state: LoneWorkerState, outbox: list[AlarmOutbox]) -> None:
            nonlocal restored
            if not silent(state) or (state.offline_due_at is not None and state.offline_due_at <= now):
                return  # heard from, or put back, since it was read
            if state.offline_alarm_id and own_offline_alarm(session, state.device_id, state.offline_alarm_id):
                return  # raised already
            log.warning(
                "a device's offline deadline is not the one its last message gives: put back",
                extra={"device": state.device_id},
            )
            state.offline_due_at = now
            restored += 1

        s, v, a = LoneWorkerState, LoneWorkerVisit, AlarmRecord
        late = or_(s.offline_due_at.is_(None), s.offline_due_at > now)
        with self.db.session() as session:
            # The silent devices are found first, and only their alarms judged (a seal check a row):
            # judging every open alarm each sweep held the interpreter's lock from the intake.
            standing = self.standing(session, now)
            on_a_visit = exists().where(v.device_id == s.device_id, v.ended_at.is_(None))
            alarmed = select(a.device_id).where(standing.where(), a.kind.in_(WATCHED_KINDS))
            looked_at = select(s, on_a_visit).where(
                s.last_seen_at.is_not(None), late, or_(on_a_visit, s.device_id.in_(alarmed))
            )
            quiet = {state.device_id: visit for state, visit in session.execute(looked_at) if silent(state)}
            held = [d for d, visit in quiet.items() if not visit]
            vouched = standing.rows(a.kind.in_(WATCHED_KINDS), a.device_id.in_(held)) if held else []
            with_alarm = {row.device_id for row in vouched}
            off = [d for d, visit in quiet.items() if visit or d in with_alarm]
        if off:
            self.outbox.claimed_pass(select(s).where(s.device_id.in_(off)), len(off), check, isolate=False)
        return restored

    def store_deferred_evidence(self, now: datetime | None = None, limit: int = 20) -> int:
        """Alarm payloads that arrived while object storage was down become evidence now."""
        now = now or self.now()
        done = 0
        for event_id in self.payloads.deferred(now, limit):
            waiting = self.payloads.fetch_for_storing(event_id)
            if waiting is None:
                continue
            key, raw, retain_until, key_b64 = waiting
            stored = self.payloads.core.store.put_bytes(
                key, raw, retain_until=retain_until, content_type="application/json"
            )
            with self.db.session() as session:
                event = session.get(LoneWorkerEvent, event_id, with_for_update=True)
                if event is None or event.evidence_item_id is not None:
                    continue
                # The alarm its (checked) bytes raise or cancel, of its device: not the row's
                # ``alarm_id`` (no seal's), which SQL could point at another wearer's alarm, lending
                # the payload that wearer and that alarm's incident.
                source = raise_named(raw, event_id)
                alarm = (
                    session.scalars(
                        select(AlarmRecord)
                        .where(
                            AlarmRecord.source_event_id == source, AlarmRecord.device_id == event.device_id
                        )
                        .with_for_update()
                    ).first()
                    if source is not None
                    else None
                )
                lifecycle = self.lifecycle  # and the row's key only as the service vouches for it
                if alarm is not None and not raised_from(
                    session, lifecycle.seal_secret, lifecycle.custody_public, alarm, str(source)
                ):
                    alarm = None
                # The payload's item takes the alarm's wearer, and joins the alarm's incident, only
                # from a row the service sealed.
                sealed = alarm is not None and self.lifecycle.sealed(alarm)
                wearer = alarm.wearer if alarm is not None and sealed else None
                site = alarm.site if alarm is not None and sealed else None
                item = self.payloads.record_later(session, event, stored, wearer, key_b64, site)
                event.evidence_item_id = item.id
                if alarm is not None:
                    if alarm.source_event_id == event.event_id:
                        self.lifecycle.attach_payload(session, alarm, item.id, now)
                    self.lifecycle.links.link(session, alarm, item.id, "alarm evidence", sealed)
                done += 1
        return done

    def purge(self, now: datetime | None = None, keep: timedelta = timedelta(days=7)) -> None:
        """Forget sent outbox rows and old change-feed rows (the alarms and custody keep the history)."""
        now = now or self.now()
        with self.db.session() as session:
            self.outbox.forget_sent(session, now - keep)
            forget_old_changes(session, now - keep)


def _on_a_visit(session: Session, device_id: str) -> bool:
    return bool(
        session.scalar(
            select(func.count())
            .select_from(LoneWorkerVisit)
            .where(LoneWorkerVisit.device_id == device_id, LoneWorkerVisit.ended_at.is_(None))
        )
    )
