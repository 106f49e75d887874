"""Device messages in: verify each one against the device's key and replay state, and dispatch it.

One device message is handled in two short steps of one transaction. The first reads the device's
key and replay state (``alarms.device_state``); the pure checks of ``devices.lone_worker_wire`` run
on what it read; the second writes the new replay state by compare-and-set (reloading and checking
again if another instance wrote in between) and, in the same transaction, everything the message
causes: the exact payload as an evidence item with its custody entries, the alarm and its
transition (``alarms.lifecycle``), the visit (``alarms.visits``), the change feed row the control
room streams, and the acks and webhooks in the outbox. So an effect is never sent for a change
that was not stored, and the broker's PUBACK (sent by the consumer after this returns) means the
alarm is safely stored.

Lock order, in every transaction here: the device's state row, then visit rows, then alarm rows,
then the custody ledger's head (the incidents package then takes its own rows). Object storage is
written before the ledger lock is taken, so the global lock is never held across network I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from prometheus_client import Counter, Histogram
from sqlalchemy import Table, and_, bindparam, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.heard_seals import heard_mark
from chain_of_custody.models import EvidenceItem
from chain_of_custody.receipt_upgrade import received
from chain_of_custody.waiting_cancels import cancel_holds, warn_of_cancel
from devices.lone_worker_wire import (
    Accepted,
    AckStatus,
    AlarmMessage,
    AnyDeviceMessage,
    CheckinMessage,
    DeviceKey,
    Duplicate,
    HeartbeatMessage,
    LocationMessage,
    ReasonCode,
    Rejected,
    ReplayState,
    StatusMessage,
    topic_for,
    verify_device_message,
)
from devices.models import LoneWorkerState
from devices.seals import DeviceSeals
from storage.db import Database
from storage.retries import RetryError, after_first_failure, replay_changed
from storage.settings import Settings

from . import rules
from .alarm_keys import free_key, raised_from
from .device_state import (
    CasConflict,
    Snapshot,
    compare_and_set,
    device_of,
    new_event,
    read_snapshot,
    read_snapshots,
    record_presence,
    write_deferred,
)
from .holders import holder_then
from .lifecycle import Lifecycle
from .liveness import Liveness
from .models import AlarmOutbox, AlarmRecord, DeadLetter, LoneWorkerEvent, new_id
from .outbox import Outbox, Outgoing, mqtt_effects
from .payloads import PayloadEvidence
from .rejection_log import RejectionLog
from .replay_state import ReplaySeals, vouched_replay
from .set_aside import set_aside
from .staging import stage
from .visits import Visits
from .watched import set_watched, vouch

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 50
# Read again and decide again while another instance keeps writing the device's replay state first.
REPLAY_CHANGED = replay_changed(CasConflict, IntegrityError, attempts=MAX_CAS_ATTEMPTS)

MESSAGES = Counter(
    "evidence_lone_worker_messages_total",
    "Lone-worker device messages, by type and outcome",
    ["type", "outcome"],
)
REJECTIONS = Counter(
    "evidence_lone_worker_rejections_total", "Lone-worker device messages refused, by reason", ["reason"]
)
HANDLE_SECONDS = Histogram(
    "evidence_lone_worker_handle_seconds",
    "Time to verify and store one device message",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

REJECTION_LOG = RejectionLog(log)  # a line per device now and then, however fast it sends garbage

_STATE = cast(Table, LoneWorkerState.__table__)
_EVENTS = cast(Table, LoneWorkerEvent.__table__)
# What a raise must know before it acts: whether the event is stored already (delivered again
# beyond the replay state's memory), and whether a cancel of it overtook it. One query for both.
_RAISE_LOOKUP = (
    select(_EVENTS.c.event_id)
    .where(
        or_(
            _EVENTS.c.event_id == bindparam("event_id"),
            and_(
                _EVENTS.c.ref_event_id == bindparam("event_id"),
                _EVENTS.c.device_id == bindparam("device_id"),
                _EVENTS.c.action == "cancel",
                _EVENTS.c.alarm_id.is_(None),
            ),
        )
    )
    .with_for_update()
)


@dataclass
class HandleResult:
    """What became of one device message."""

    outcome: str  # accepted | duplicate | rejected
    type: str | None = None
    reason: str | None = None
    detail: str | None = None
    device_id: str | None = None
    event_id: str | None = None
    alarm_id: str | None = None
    publish: list[Outgoing] = field(default_factory=list)
    provisional: bool = False  # a provisional alarm was raised: it is still to be made whole


class Intake:
    """Verifies device messages and hands each to what it concerns."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        policy: rules.AlarmPolicy,
        clock: Callable[[], datetime],
        outbox: Outbox,
        lifecycle: Lifecycle,
        payloads: PayloadEvidence,
        visits: Visits,
        liveness: Liveness,
        seals: DeviceSeals,
    ) -> None:
        self.db = db
        self.seals = seals  # device rows' seals (``devices.seals``), their verdicts kept per row
        self.settings = settings
        self.policy = policy
        self.clock = clock
        self.outbox = outbox
        self.lifecycle = lifecycle
        self.payloads = payloads
        self.visits = visits
        self.liveness = liveness
        self.offline_after = timedelta(seconds=policy.offline_after_s)
        self.replay_seals = ReplaySeals(lifecycle.seal_secret)  # devices' replay states' seals
        # A provisional alarm is made whole inline (right after the commit, in the caller's thread)
        # unless an MQTT consumer makes them whole on a worker of its own, so the next alarm is not kept waiting.
        self.make_whole_inline = True

    def handle(
        self, topic: str, raw: bytes, *, retained: bool = False, now: datetime | None = None
    ) -> HandleResult:
        """Verify one device message and act on it; returns once its effects are committed.

        Raises only for faults of ours or our dependencies (database unreachable): the caller keeps
        the message unacknowledged and tries again. Bad input is a :class:`HandleResult`, never an
        exception.
        """
        started = time.perf_counter()
        now = now or self.clock()
        try:
            try:
                result = self._handle_once(topic, raw, retained, now)
            except (CasConflict, IntegrityError) as conflict:  # another instance got there first
                result = after_first_failure(
                    REPLAY_CHANGED, lambda: self._handle_once(topic, raw, retained, now), conflict
                )
            self._committed([result])
            return result
        except RetryError:
            raise RuntimeError(f"replay state of {topic} kept changing under us") from None
        finally:
            HANDLE_SECONDS.observe(time.perf_counter() - started)

    def handle_many(
        self, messages: Sequence[tuple[str, bytes, bool]], *, now: datetime | None = None
    ) -> list[HandleResult]:
        """Several messages, of different devices, in one transaction: a burst of alarms or a
        second's heartbeats pay for one commit between them, one read of their devices and one
        (pipelined) write of their heartbeats' and locations' state rows. If any of them meets another
        instance's write to its device, the batch is rolled back and each is handled on its own.
        Returns once all are committed, with their results in order; raises like :meth:`handle`."""
        if len(messages) <= 1 or len({device_of(t) for t, _, _ in messages}) < len(messages):
            # (A device twice in one transaction would not see its own staged rows: one by one.)
            return [self.handle(topic, raw, retained=retained, now=now) for topic, raw, retained in messages]
        started = time.perf_counter()
        now = now or self.clock()
        outboxes: list[list[AlarmOutbox]] = [[] for _ in messages]
        try:
            with self.db.session() as session:
                # Every device's state row first, in one order: a message that appends custody
                # then holds the ledger's lock while later messages would lock their devices,
                # which must not wait on a transaction that wants the ledger (lock order).
                devices = sorted({device_of(t) for t, _, _ in messages})
                session.execute(
                    select(_STATE.c.device_id)
                    .where(_STATE.c.device_id.in_(devices))
                    .order_by(_STATE.c.device_id)
                    .with_for_update()
                )
                snapshots = read_snapshots(session, devices, self.seals)  # locked: nobody changes them now
                deferred: list[dict[str, Any]] = []
                results = [
                    self._handle_in(session, topic, raw, retained, now, outboxes[i], snapshots, deferred)
                    for i, (topic, raw, retained) in enumerate(messages)
                ]
                write_deferred(session, deferred)
                session.flush()
        except (CasConflict, IntegrityError):
            return [self.handle(topic, raw, retained=retained, now=now) for topic, raw, retained in messages]
        finally:
            each = (time.perf_counter() - started) / len(messages)
            for _ in messages:
                HANDLE_SECONDS.observe(each)
        for result, outbox in zip(results, outboxes, strict=True):
            result.publish += mqtt_effects(outbox)
        self._committed(results)
        return results

    def dead_letter(self, topic: str, raw: bytes, error: str) -> None:
        """Keep a message that could not be handled after retries (a fault of ours), for repair."""
        with self.db.session() as session:
            session.add(DeadLetter(topic=topic[:1000], payload=raw, error=error[:4000]))

    def _committed(self, results: list[HandleResult]) -> None:
        """After the commit: the effects out (one publish call), the counts, provisional alarms made whole inline."""
        self.outbox.publish([m for r in results for m in r.publish])
        for result in results:
            MESSAGES.labels(type=result.type or "unknown", outcome=result.outcome).inc()
        if self.make_whole_inline:
            for result in results:
                if result.provisional and result.alarm_id:
                    self.lifecycle.make_whole_if_provisional(result.alarm_id)

    def _handle_once(self, topic: str, raw: bytes, retained: bool, now: datetime) -> HandleResult:
        """One attempt in one transaction (see :meth:`_handle_in`)."""
        outbox: list[AlarmOutbox] = []
        with self.db.session() as session:
            result = self._handle_in(session, topic, raw, retained, now, outbox)
            session.flush()
        result.publish += mqtt_effects(outbox)
        return result

    def _handle_in(
        self,
        session: Session,
        topic: str,
        raw: bytes,
        retained: bool,
        now: datetime,
        outbox: list[AlarmOutbox],
        snapshot: dict[str, Snapshot | None] | None = None,
        deferred: list[dict[str, Any]] | None = None,
    ) -> HandleResult:
        """Read the device (no lock), verify, then compare-and-set and act, in the caller's transaction.
        Messages refused before the device matters write nothing. ``snapshot``: devices read
        already (a batch's); ``deferred``: where a batch collects its heartbeats' state writes."""
        snapshot = {} if snapshot is None else snapshot
        verdict = verify_device_message(
            raw,
            topic,
            partial(self._lookup, session, snapshot),
            now,
            self.settings.max_clock_skew_seconds,
            self.settings.max_payload_bytes,
            partial(self._replay, session, snapshot),
        )
        if isinstance(verdict, Rejected):
            message = verdict.message
            if self._known_event(session, verdict) and message is not None:
                # The broker delivered a stored event again (the replay state remembers only the
                # last few events, the event table all of them): acknowledge it again.
                result = HandleResult(
                    "duplicate", type=message.type, device_id=message.device_id, event_id=message.event_id
                )
                self._duplicate(session, message, result, outbox, now)
            else:
                result = self._rejected(verdict, raw, topic, now)
        else:
            snap = snapshot.get(verdict.message.device_id)
            assert snap is not None
            result = self._write(session, snap, verdict, topic, raw, retained, now, outbox, deferred)
        return result

    def _lookup(
        self, session: Session, snapshot: dict[str, Snapshot | None], device_id: str
    ) -> DeviceKey | None:
        if device_id not in snapshot:
            snapshot[device_id] = read_snapshot(session, device_id, self.seals)
        snap = snapshot[device_id]
        return snap.key(self.seals) if snap is not None else None

    def _replay(self, session: Session, snapshot: dict[str, Snapshot | None], device_id: str) -> ReplayState:
        """The device's replay state as its seal vouches for it (``alarms.replay_state``), checked
        once per snapshot."""
        snap = snapshot.get(device_id)
        if snap is None:
            return ReplayState()
        if snap.replay is None:
            with session.no_autoflush:  # see device_state.read_snapshot
                snap.replay, snap.replay_rebuilt = vouched_replay(
                    session,
                    self.replay_seals,
                    self.seals.secret,
                    self.lifecycle.custody_public,
                    snap,
                )
        return snap.replay

    def _known_event(self, session: Session, verdict: Rejected) -> bool:
        """Whether a message refused as a replay is one the service received (its row's receipt
        seal holds: :meth:`_received`), so it is acknowledged again; a row written with its event
        id by SQL makes it nothing of the kind (named in a warning; refused as any replay)."""
        message = verdict.message
        if verdict.reason != ReasonCode.REPLAY or message is None or message.type not in ("alarm", "checkin"):
            return False
        with session.no_autoflush:  # see device_state.read_snapshot
            found = session.get(LoneWorkerEvent, message.event_id)
        if found is None or found.device_id != message.device_id:
            return False
        if self._received(session, found):
            return True
        log.warning(
            "a replayed device message's stored row is not the service's receipt of it: not acknowledged",
            extra={"device": message.device_id, "event_id": message.event_id},
        )
        return False

    def _received(self, session: Session, row: LoneWorkerEvent) -> bool:
        """Whether a row holding a message's event id is the service's receipt of its device's
        message (``chain_of_custody.receipt_upgrade.received``), not a row written by SQL."""
        return received(session, self.seals.secret, self.lifecycle.custody_public, row)

    def _rejected(self, verdict: Rejected, raw: bytes, topic: str, now: datetime) -> HandleResult:
        REJECTIONS.labels(reason=verdict.reason.value).inc()
        message = verdict.message
        type_ = message.type if message is not None else verdict.claimed_type
        REJECTION_LOG.log(
            verdict.device_id,
            reason=verdict.reason.value,
            detail=verdict.detail,
            topic=topic[:160],
            bytes=len(raw),
        )
        result = HandleResult(
            "rejected",
            type=type_,
            reason=verdict.reason.value,
            detail=verdict.detail,
            device_id=verdict.device_id,
            event_id=message.event_id if message is not None else None,
        )
        if (
            verdict.reason == ReasonCode.CLOCK_SKEW
            and message is not None
            and message.type in ("alarm", "checkin")
            and message.event_id
        ):
            ack = self.outbox.ack(
                message.device_id, message.event_id, AckStatus.REJECTED, now, reason="clock_skew"
            )
            result.publish.append(Outgoing(topic_for(message.device_id, "ack"), ack, 1, None))
        return result

    def _write(
        self,
        session: Session,
        snap: Snapshot,
        verdict: Accepted | Duplicate,
        topic: str,
        raw: bytes,
        retained: bool,
        now: datetime,
        outbox: list[AlarmOutbox],
        deferred: list[dict[str, Any]] | None = None,
    ) -> HandleResult:
        message = verdict.message
        result = HandleResult(
            "accepted" if isinstance(verdict, Accepted) else "duplicate",
            type=message.type,
            device_id=message.device_id,
            event_id=message.event_id,
        )
        if isinstance(message, StatusMessage):
            heard = heard_mark(self.lifecycle.seal_secret, snap.device_id, now)
            record_presence(session, snap, message, retained, now, self.offline_after, heard)
            return result
        # A heartbeat's or a location's row write may wait for the rest of its batch: nothing later in
        # the transaction reads the columns it sets.
        telemetry = isinstance(message, HeartbeatMessage | LocationMessage)
        later = deferred if telemetry else None
        heard = heard_mark(self.lifecycle.seal_secret, snap.device_id, now)
        compare_and_set(
            session,
            snap,
            verdict.replay_state,
            message,
            now,
            self.offline_after,
            heard,
            later,
            seal_state=self.replay_seals.seal,
        )
        vouch(session, self.lifecycle.seal_secret, snap)  # its low battery and visit, as sealed
        aside: dict[str, Any] | None = None
        alarm_aside: dict[str, Any] | None = None
        if isinstance(verdict, Duplicate):
            self._duplicate(session, message, result, outbox, now)
        elif isinstance(message, AlarmMessage | CheckinMessage):
            early_cancel: str | None = None
            raising = isinstance(message, AlarmMessage) and message.alarm.action == "raise"
            ids: list[str] = []
            if raising:
                found = session.connection().execute(
                    _RAISE_LOOKUP, {"event_id": message.event_id, "device_id": snap.device_id}
                )
                ids = [r.event_id for r in found]
                known = message.event_id in ids
            else:
                known = True
            existing = None
            if known:
                with session.no_autoflush:  # see device_state.read_snapshot
                    existing = session.get(LoneWorkerEvent, message.event_id)
            if existing is not None and not self._received(session, existing):
                # Not the service's receipt of this message (written by SQL with its event id): kept
                # apart as evidence, and the message is acted on as the first it is.
                aside = set_aside(session, existing, now)
                existing = None
            restored: str | None = None
            if raising and existing is None:
                early_cancel = self._early_cancel(session, snap, message.event_id, ids)
                # One event raises one alarm: the alarm the service raised from it (its event row
                # deleted or altered since) is told again; a row holding its id that the service did
                # not raise from it is set aside (``alarms.alarm_keys``).
                restored, alarm_aside = free_key(
                    session, self.lifecycle.seal_secret, self.lifecycle.custody_public, message.event_id, now
                )
            if existing is not None:  # accepted long ago (beyond the replay state's memory)
                result.outcome = "duplicate"
                self._duplicate(session, message, result, outbox, now)
            elif restored is not None:
                # Its alarm was raised from it before the row holding it was altered: its row again,
                # as received now, and the device told again that we have it.
                assert isinstance(verdict, Accepted) and isinstance(message, AlarmMessage)
                event = new_event(snap, verdict, topic, raw, now, self.seals.secret)
                event.kind, event.alarm_id = message.alarm.kind, restored
                session.add(event)
                result.outcome = "duplicate"
                self._duplicate(session, message, result, outbox, now)
            elif isinstance(message, AlarmMessage):
                self._alarm_message(session, snap, verdict, topic, raw, result, outbox, now, early_cancel)
            else:
                assert isinstance(verdict, Accepted)
                self.visits.checkin(
                    session,
                    snap,
                    message,
                    new_event(snap, verdict, topic, raw, now, self.seals.secret),
                    outbox,
                    now,
                )
        self.liveness.apply(session, snap, message, outbox, now)
        if aside is not None:  # last: the ledger's head after every row this message locks
            self.lifecycle.ledger.append(
                session, CustodyAction.EVENT_SET_ASIDE, "service", details=aside, at=now
            )
        if alarm_aside is not None:
            self.lifecycle.ledger.append(
                session, CustodyAction.ALARM_SET_ASIDE, "service", details=alarm_aside, at=now
            )
        if snap.replay_rebuilt is not None:  # its state written sealed above: recorded once
            self.lifecycle.ledger.append(
                session, CustodyAction.REPLAY_STATE_REBUILT, "service", details=snap.replay_rebuilt, at=now
            )
            snap.replay_rebuilt = None
        return result

    def _duplicate(
        self,
        session: Session,
        message: AnyDeviceMessage,
        result: HandleResult,
        outbox: list[AlarmOutbox],
        now: datetime,
    ) -> None:
        """Absorb a re-sent event: act on nothing, tell the device again that we have it, with the
        alarm its message raised or cancels: found by what the device signed (its event id, or the
        raise it names), never by the event row's ``alarm_id``, which is no seal's, and only when
        the service vouches the alarm was raised from that raise (``alarms.alarm_keys``)."""
        REJECTIONS.labels(reason=ReasonCode.DUPLICATE.value).inc()
        if message.type not in ("alarm", "checkin") or message.event_id is None:
            return
        alarm_id = None
        if isinstance(message, AlarmMessage):
            body = message.alarm
            raise_id = message.event_id if body.action == "raise" else body.ref_event_id
            with session.no_autoflush:  # see device_state.read_snapshot
                row = session.scalars(
                    select(AlarmRecord).where(
                        AlarmRecord.source_event_id == raise_id, AlarmRecord.device_id == message.device_id
                    )
                ).first()
            # Only the alarm the service vouches was raised from it: a row holding the raise's event
            # id by SQL (the alarm's own key moved away) is not named to the device as its alarm.
            lifecycle = self.lifecycle
            if row is not None and raised_from(
                session, lifecycle.seal_secret, lifecycle.custody_public, row, str(raise_id)
            ):
                alarm_id = row.id
        result.alarm_id = alarm_id
        log.info(
            "duplicate lone-worker event absorbed",
            extra={"device": message.device_id, "event_id": message.event_id, "alarm": alarm_id},
        )
        self.outbox.queue_ack(
            session, outbox, message.device_id, message.event_id, AckStatus.DUPLICATE, alarm_id, now
        )

    def _alarm_message(
        self,
        session: Session,
        snap: Snapshot,
        verdict: Accepted | Duplicate,
        topic: str,
        raw: bytes,
        result: HandleResult,
        outbox: list[AlarmOutbox],
        now: datetime,
        early_cancel_id: str | None = None,
    ) -> None:
        """A raise or a cancel. ``early_cancel_id``: a stored cancel of this raise that overtook it."""
        assert isinstance(verdict, Accepted)
        message = verdict.message
        assert isinstance(message, AlarmMessage)
        body = message.alarm
        target: AlarmRecord | None = None
        early_cancel: LoneWorkerEvent | None = None
        if body.action == "cancel":
            target = session.scalars(
                select(AlarmRecord)
                .where(
                    AlarmRecord.source_event_id == body.ref_event_id, AlarmRecord.device_id == snap.device_id
                )
                .with_for_update()
            ).first()
            lifecycle = self.lifecycle
            if target is not None and not raised_from(
                session, lifecycle.seal_secret, lifecycle.custody_public, target, str(body.ref_event_id)
            ):
                target = None
        elif early_cancel_id is not None:  # several instances share the stream (locked by _RAISE_LOOKUP)
            with session.no_autoflush:  # see device_state.read_snapshot
                early_cancel = session.get(LoneWorkerEvent, early_cancel_id)
        self.liveness.lock_rows(session, snap, message)
        # The event row is added once everything about it is known: one INSERT, no UPDATEs.
        event = new_event(snap, verdict, topic, raw, now, self.seals.secret)
        event.kind = body.kind
        event.ref_event_id = body.ref_event_id
        # A raise is acknowledged as soon as the event and the alarm are committed (a provisional
        # alarm); the payload's evidence item, the custody entry and the incident follow when it is
        # made whole. A raise that a cancel overtook, a raise escalated on arrival, a low-battery
        # raise, and every cancel take the whole path at once.
        provisional = (
            body.action == "raise"
            and early_cancel is None
            and body.kind != rules.AlarmKind.LOW_BATTERY.value  # its own message may clear it (liveness)
            and not self.lifecycle.escalated_on_arrival(message, now)
        )
        lifecycle = self.lifecycle
        holder = holder_then(
            session, lifecycle.device_secret, lifecycle.custody_public, snap, message.occurred_at, now
        )
        item = None if provisional else self._store_payload(session, snap, event, message, holder)
        if body.action == "raise":
            event.alarm_id = new_id()
            if provisional:  # nothing in this transaction reads the event back
                stage(session, event)
            else:
                session.add(event)
            row = self.lifecycle.raise_alarm(
                session,
                outbox,
                now,
                alarm_id=event.alarm_id,
                device_id=snap.device_id,
                kind=rules.AlarmKind(body.kind),
                wearer=holder[0],
                site=holder[1],
                occurred_at=message.occurred_at,
                source_event_id=message.event_id,
                amber_timeout_s=body.amber_timeout_s,
                reason=body.reason,
                note=body.note,
                message=message,
                late=verdict.late,
                evidence_item_id=item.id if item is not None else None,
                actor=f"device:{snap.device_id}",
                provisional=provisional,
            )
            result.alarm_id = row.id
            result.provisional = provisional
            if body.kind == "low_battery":
                set_watched(session, self.lifecycle.seal_secret, snap, battery_low=True)
            if early_cancel is not None:
                early_cancel.alarm_id = row.id
                item_id = self.payloads.own_item(session, early_cancel)
                self._cancelled(session, row, early_cancel, snap.device_id, outbox, now, item_id)
        elif target is not None:
            event.alarm_id = target.id
            session.add(event)
            result.alarm_id = target.id
            self._cancelled(session, target, event, snap.device_id, outbox, now, event.evidence_item_id)
        else:
            # The alarm it cancels has not arrived yet: keep the cancel for it, tell the device we have it.
            session.add(event)
            self.outbox.queue_ack(
                session, outbox, snap.device_id, message.event_id, AckStatus.RECEIVED, None, now
            )

    def _early_cancel(self, session: Session, snap: Snapshot, raise_id: str, ids: list[str]) -> str | None:
        """Of the stored cancels found waiting for this raise (``ids``), the first that is its
        device's cancel of it as the device signed it (``chain_of_custody.waiting_cancels``); each
        other is named in a warning and not applied: its row is no device's word."""
        for cancel_id in sorted(i for i in ids if i != raise_id):
            with session.no_autoflush:  # see device_state.read_snapshot
                row = session.get(LoneWorkerEvent, cancel_id)
                if row is not None and cancel_holds(
                    session, self.seals.secret, self.lifecycle.custody_public, snap.device_id, row, raise_id
                ):
                    return cancel_id
            warn_of_cancel(snap.device_id, cancel_id, raise_id)
        return None

    def _cancelled(
        self,
        session: Session,
        alarm: AlarmRecord,
        cancel: LoneWorkerEvent,
        device_id: str,
        outbox: list[AlarmOutbox],
        now: datetime,
        item_id: str | None,
    ) -> None:
        """The device's cancel applied to its alarm, and its payload's item (``item_id``) linked to the
        alarm."""
        self.lifecycle.transition(
            session, alarm, rules.DeviceCancel(cancel.event_id, now), outbox, now, actor=f"device:{device_id}"
        )
        self.lifecycle.links.link(session, alarm, item_id, "alarm cancel", self.lifecycle.sealed(alarm))

    def _store_payload(
        self,
        session: Session,
        snap: Snapshot,
        event: LoneWorkerEvent,
        message: AlarmMessage,
        holder: tuple[str | None, str | None],
    ) -> EvidenceItem | None:
        """The exact bytes received become a locked evidence item, its device's holder's when it
        happened (``holder``: ``alarms.holders``). If object storage is down the alarm still goes
        through (the bytes wait in the event row) and the evidence is stored later."""
        stored = self.payloads.put(event)
        if stored is None:
            return None
        wearer, site = holder
        item = self.payloads.record(session, event, stored, wearer, message.sig, snap.public_key, site)
        event.evidence_item_id = item.id
        return item
