"""Lone-worker alarms in the service: verified device messages in, alarms, evidence, incidents and acks out.

One device message is handled in two short transactions. The first reads the device's key and
replay state; the pure checks of ``devices.lone_worker_wire`` run outside any transaction; the
second writes the new replay state by compare-and-set (reloading and checking again if another
instance wrote in between) and, in the same transaction, everything the message causes: the
exact payload as an evidence item with its custody entries, the alarm and its transition by
``ingest.alarm_rules``, the incident, the change feed row the control room streams, and the acks
and webhooks in the outbox. So an effect is never sent for a change that was not stored, and the
broker's PUBACK (sent by the consumer after this returns) means the alarm is safely stored.

Lock order, in every transaction here: the device's state row, then visit rows, then alarm rows,
then the custody ledger's head (the incidents package then takes its own rows). Object storage is
written before the ledger lock is taken, so the global lock is never held across network I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import Boolean, Float, Integer, Text, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.ledger import rfc3339
from chain_of_custody.models import EvidenceItem
from devices.broker_access import CONTROL_TOPIC_ROOT, BrokerAccount, generate_password, hash_password
from devices.lone_worker_wire import (
    Accepted,
    AckStatus,
    AlarmMessage,
    CheckinMessage,
    DeviceKey,
    Duplicate,
    ReasonCode,
    Rejected,
    ReplayState,
    StatusMessage,
    build_ack,
    canonical_json,
    parse_time,
    parse_topic,
    topic_for,
    verify_device_message,
)
from devices.models import Device
from devices.service import enrol_keyed_device
from incidents.service import (
    IncidentDraft,
    create_incident,
    link_alarm,
    link_evidence,
    open_or_join_incident_for_wearer,
)
from storage.db import UTCDateTime
from storage.objects import StorageError

from . import alarm_rules as rules
from .alarm_models import (
    AlarmChange,
    AlarmOutbox,
    AlarmRecord,
    DeadLetter,
    LoneWorkerEvent,
    LoneWorkerPosition,
    LoneWorkerState,
    LoneWorkerVisit,
    new_id,
)
from .alarm_staging import is_postgres, stage, stage_feed
from .services import Services

log = logging.getLogger(__name__)

SERVICE_ACTOR = "service:alarms"
INCIDENT_CATEGORY = "lone_worker_alarm"
ESCALATION_TOPIC = f"{CONTROL_TOPIC_ROOT}/escalations"
# Kinds whose being open makes a silent device worth an alarm (a low battery alone does not).
WATCHED_KINDS = ("sos", "amber", "man_down", "missed_checkin")
MAX_CAS_ATTEMPTS = 50

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
ALARMS_RAISED = Counter("evidence_alarms_raised_total", "Alarms raised, by kind", ["kind"])
ALARM_ESCALATIONS = Counter("evidence_alarm_escalations_total", "Alarms escalated, by reason", ["reason"])
EVIDENCE_DEFERRED = Counter(
    "evidence_alarm_evidence_deferred_total", "Alarm payloads whose evidence object was stored later"
)


class CasConflict(Exception):
    """Another instance wrote the device's replay state between our read and our write."""


class AlarmNotFound(Exception):
    pass


class VoiceMemoRefused(Exception):
    """A voice memo upload refused; ``reason`` is a stable machine code, ``status`` the HTTP answer."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Outgoing:
    """An MQTT publish to make now; ``outbox_id`` is marked sent once the broker has it (None: no row)."""

    topic: str
    payload: bytes
    qos: int = 1
    outbox_id: int | None = None


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
    followup: bool = False  # an alarm accepted on the fast path, still to be made whole


@dataclass
class _Snapshot:
    """The device as the first (read) transaction saw it."""

    device_id: str
    kind: str
    status: str
    public_key: bytes | None
    staff_id: str | None
    site: str | None
    version: int | None  # None: no state row yet
    replay: ReplayState
    session: str | None
    presence_at: datetime | None
    battery_low: bool
    offline_alarm_id: str | None
    active_visit_id: str | None

    def key(self) -> DeviceKey | None:
        if self.kind != "lone_worker" or self.public_key is None:
            return None
        return DeviceKey(self.public_key, enabled=self.status == "active")


def mqtt_effects(outbox: list[AlarmOutbox]) -> list[Outgoing]:
    """The MQTT publishes among outbox rows, to send at once after the commit (the relay retries them)."""
    return [Outgoing(o.target, o.payload, o.qos, o.id) for o in outbox if o.channel == "mqtt"]


@lru_cache(maxsize=65_536)
def _raw_key(b64: str) -> bytes | None:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def alarm_view(row: AlarmRecord) -> dict[str, Any]:
    """An alarm as the API and the live stream show it (JSON-friendly)."""
    out: dict[str, Any] = {
        "id": row.id,
        "device_id": row.device_id,
        "wearer": row.wearer,
        "site": row.site,
        "kind": row.kind,
        "severity": row.severity,
        "status": row.status,
        "source_event_id": row.source_event_id,
        "reason": row.reason,
        "visit_id": row.visit_id,
        "escalation_reason": row.escalation_reason,
        "acknowledged_by": row.acknowledged_by,
        "escalated_by": row.escalated_by,
        "resolved_by": row.resolved_by,
        "outcome": row.outcome,
        "resolution_note": row.resolution_note,
        "note": row.note,
        "position": (
            {"lat": row.lat, "lon": row.lon, "accuracy_m": row.accuracy_m} if row.lat is not None else None
        ),
        "battery": row.battery,
        "late": row.late,
        "evidence_item_id": row.evidence_item_id,
        "voice_memo_item_id": row.voice_memo_item_id,
        "incident_id": row.incident_id,
    }
    for name in (
        "raised_at",
        "occurred_at",
        "amber_deadline",
        "red_at",
        "ack_due_at",
        "acknowledged_at",
        "escalated_at",
        "cancel_requested_at",
        "condition_cleared_at",
        "resolved_at",
        "next_deadline",
        "updated_at",
    ):
        out[name] = _iso(getattr(row, name))
    return out


_RULE_FIELDS = (
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
)


def to_rule(row: AlarmRecord) -> rules.Alarm:
    """The stored alarm as the pure rules see it."""
    data = {name: getattr(row, name) for name in _RULE_FIELDS}
    data["alarm_id"] = row.id
    return rules.Alarm.from_dict(data)


def store_rule(row: AlarmRecord, alarm: rules.Alarm) -> None:
    """Copy the rules' alarm onto the row, with the next deadline the escalation loop watches."""
    for name in _RULE_FIELDS:
        value = getattr(alarm, name)
        setattr(row, name, value.value if hasattr(value, "value") else value)
    row.next_deadline = rules.next_deadline(alarm)


_STATE = LoneWorkerState.__table__
_DEVICES = Device.__table__
_EVENTS = LoneWorkerEvent.__table__
# Built once, in plain Core run on the session's connection: the statements every device message
# runs (building SQLAlchemy statements per message, or passing them through the ORM, costs more
# than executing them).
_SNAPSHOT = (
    select(
        _DEVICES.c.kind,
        _DEVICES.c.status,
        _DEVICES.c.public_key,
        _DEVICES.c.assigned_staff_id,
        _DEVICES.c.site,
        _STATE.c.version,
        _STATE.c.replay_state,
        _STATE.c.session,
        _STATE.c.presence_at,
        _STATE.c.battery_low,
        _STATE.c.offline_alarm_id,
        _STATE.c.active_visit_id,
    )
    .outerjoin(_STATE, _STATE.c.device_id == _DEVICES.c.id)
    .where(_DEVICES.c.id == bindparam("device_id"))
)
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
_CAS = (
    update(_STATE)
    .where(_STATE.c.device_id == bindparam("b_device"), _STATE.c.version == bindparam("b_version"))
    .values(
        version=_STATE.c.version + 1,
        replay_state=bindparam("b_state", type_=Text()),
        last_seen_at=bindparam("b_now", type_=UTCDateTime()),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
        offline_due_at=bindparam("b_due", type_=UTCDateTime()),
        battery=func.coalesce(bindparam("b_battery", type_=Integer()), _STATE.c.battery),
        lat=func.coalesce(bindparam("b_lat", type_=Float()), _STATE.c.lat),
        lon=func.coalesce(bindparam("b_lon", type_=Float()), _STATE.c.lon),
        accuracy_m=case(
            (bindparam("b_has_position", type_=Boolean()), bindparam("b_accuracy", type_=Float())),
            else_=_STATE.c.accuracy_m,
        ),
        position_at=func.coalesce(bindparam("b_position_at", type_=UTCDateTime()), _STATE.c.position_at),
    )
)


def device_of(topic: str) -> str:
    """The device id of a device topic; a malformed topic stands for itself (it is refused later)."""
    parsed = parse_topic(topic)
    return parsed[0] if parsed is not None else topic


def _insert(session: Session) -> Any:
    return pg_insert if is_postgres(session) else sqlite_insert


class AlarmService:
    """The alarm side of the service, shared by the MQTT consumer, the escalation loop and the API."""

    def __init__(self, services: Services, *, clock: Callable[[], datetime] | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.db = services.db
        self.ledger = services.ledger
        self.policy = rules.AlarmPolicy.from_settings(services.settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        # Set by an MQTT consumer in this process: effects are then published at once after commit
        # (the outbox relay of any instance sends what is left behind).
        self.publisher: Callable[[list[Outgoing]], None] | None = None
        self.fast_path_grace = timedelta(seconds=5)
        # A raised alarm is committed and acknowledged first; its evidence item, custody entry and
        # incident follow. Inline (right after the commit, in the caller's thread) unless an MQTT
        # consumer runs a follow-up worker of its own, so the next alarm is not kept waiting.
        self.followups_inline = True
        # Called (in the committing thread) after a commit that had effects to send, which is nearly
        # every change of an alarm: the live stream of this process looks at once instead of at its
        # next poll. Listeners must be quick and thread-safe.
        self.committed_listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ device messages

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
            for _ in range(MAX_CAS_ATTEMPTS):
                try:
                    result = self._handle_once(topic, raw, retained, now)
                except (CasConflict, IntegrityError):
                    continue  # another instance got there first: read again and decide again
                self._committed([result])
                return result
            raise RuntimeError(f"replay state of {topic} kept changing under us")
        finally:
            HANDLE_SECONDS.observe(time.perf_counter() - started)

    def handle_many(
        self, messages: Sequence[tuple[str, bytes, bool]], *, now: datetime | None = None
    ) -> list[HandleResult]:
        """Several messages, of different devices, in one transaction: a burst of alarms or a
        second's heartbeats pay for one commit between them. If any of them meets another
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
                session.execute(
                    select(_STATE.c.device_id)
                    .where(_STATE.c.device_id.in_(sorted({device_of(t) for t, _, _ in messages})))
                    .order_by(_STATE.c.device_id)
                    .with_for_update()
                )
                results = [
                    self._handle_in(session, topic, raw, retained, now, outboxes[i])
                    for i, (topic, raw, retained) in enumerate(messages)
                ]
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

    def _committed(self, results: list[HandleResult]) -> None:
        """After the commit: the effects out (one publish call), the counts, inline follow-ups."""
        self._after_commit([m for r in results for m in r.publish])
        for result in results:
            MESSAGES.labels(type=result.type or "unknown", outcome=result.outcome).inc()
        if self.followups_inline:
            for result in results:
                if result.followup and result.alarm_id:
                    self.complete_followup(result.alarm_id)

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
    ) -> HandleResult:
        """Read the device (no lock), verify, then compare-and-set and act, in the caller's transaction.
        Messages refused before the device matters write nothing."""
        snapshot: dict[str, _Snapshot | None] = {}
        verdict = verify_device_message(
            raw,
            topic,
            partial(self._lookup, session, snapshot),
            now,
            self.settings.max_clock_skew_seconds,
            self.settings.max_payload_bytes,
            partial(self._replay, snapshot),
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
            result = self._write(session, snap, verdict, topic, raw, retained, now, outbox)
        return result

    def _lookup(
        self, session: Session, snapshot: dict[str, _Snapshot | None], device_id: str
    ) -> DeviceKey | None:
        if device_id not in snapshot:
            snapshot[device_id] = self._read_snapshot(session, device_id)
        snap = snapshot[device_id]
        return snap.key() if snap is not None else None

    def _replay(self, snapshot: dict[str, _Snapshot | None], device_id: str) -> ReplayState:
        snap = snapshot.get(device_id)
        return snap.replay if snap is not None else ReplayState()

    def _read_snapshot(self, session: Session, device_id: str) -> _Snapshot | None:
        # Here and in the reads below, up to the compare-and-set: rows that earlier messages of the
        # same batch added are none of this message's business, and left unflushed they go in one
        # INSERT per table.
        row = session.connection().execute(_SNAPSHOT, {"device_id": device_id}).first()
        if row is None:
            return None
        return _Snapshot(
            device_id=device_id,
            kind=row.kind,
            status=row.status,
            public_key=_raw_key(row.public_key) if row.public_key else None,
            staff_id=row.assigned_staff_id,
            site=row.site,
            version=row.version,
            replay=ReplayState.from_json(row.replay_state),
            session=row.session,
            presence_at=row.presence_at,
            battery_low=bool(row.battery_low),
            offline_alarm_id=row.offline_alarm_id,
            active_visit_id=row.active_visit_id,
        )

    @staticmethod
    def _known_event(session: Session, verdict: Rejected) -> bool:
        message = verdict.message
        if verdict.reason != ReasonCode.REPLAY or message is None or message.type not in ("alarm", "checkin"):
            return False
        found = session.scalar(
            select(LoneWorkerEvent.event_id).where(
                LoneWorkerEvent.event_id == message.event_id, LoneWorkerEvent.device_id == message.device_id
            )
        )
        return found is not None

    def _rejected(self, verdict: Rejected, raw: bytes, topic: str, now: datetime) -> HandleResult:
        REJECTIONS.labels(reason=verdict.reason.value).inc()
        message = verdict.message
        type_ = message.type if message is not None else None
        log.warning(
            "lone-worker message rejected",
            extra={
                "reason": verdict.reason.value,
                "detail": verdict.detail,
                "device": verdict.device_id,
                "topic": topic[:160],
                "bytes": len(raw),
            },
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
            ack = self._ack(message.device_id, message.event_id, AckStatus.REJECTED, now, reason="clock_skew")
            result.publish.append(Outgoing(topic_for(message.device_id, "ack"), ack, 1, None))
        return result

    def _write(
        self,
        session: Session,
        snap: _Snapshot,
        verdict: Accepted | Duplicate,
        topic: str,
        raw: bytes,
        retained: bool,
        now: datetime,
        outbox: list[AlarmOutbox],
    ) -> HandleResult:
        message = verdict.message
        result = HandleResult(
            "accepted" if isinstance(verdict, Accepted) else "duplicate",
            type=message.type,
            device_id=message.device_id,
            event_id=message.event_id,
        )
        if isinstance(message, StatusMessage):
            self._status(session, snap, message, retained, now)
            return result
        self._compare_and_set(session, snap, verdict.replay_state, message, now)
        if isinstance(verdict, Duplicate):
            self._duplicate(session, message, result, outbox, now)
        elif isinstance(message, AlarmMessage | CheckinMessage):
            early_cancel: str | None = None
            if isinstance(message, AlarmMessage) and message.alarm.action == "raise":
                found = session.connection().execute(
                    _RAISE_LOOKUP, {"event_id": message.event_id, "device_id": snap.device_id}
                )
                ids = [r.event_id for r in found]
                early_cancel = next((i for i in ids if i != message.event_id), None)
                known = message.event_id in ids
            else:
                known = True
            existing = None
            if known:
                with session.no_autoflush:  # see _read_snapshot
                    existing = session.get(LoneWorkerEvent, message.event_id)
            if existing is not None:  # accepted long ago (beyond the replay state's memory)
                result.outcome = "duplicate"
                self._duplicate(session, message, result, outbox, now, existing)
            elif isinstance(message, AlarmMessage):
                self._alarm_message(session, snap, verdict, topic, raw, result, outbox, now, early_cancel)
            else:
                self._checkin_message(session, snap, verdict, topic, raw, result, outbox, now)
        self._liveness(session, snap, message, outbox, now)
        return result

    def _compare_and_set(
        self, session: Session, snap: _Snapshot, state: ReplayState, message: Any, now: datetime
    ) -> None:
        """Write the replay state (and what every message says about the device) if nobody else did."""
        due = now + timedelta(seconds=self.policy.offline_after_s)
        position = message.position
        if snap.version is None:
            values: dict[str, Any] = {
                "replay_state": state.to_json(),
                "last_seen_at": now,
                "updated_at": now,
                "offline_due_at": due,
                "battery": message.battery,
            }
            if position is not None:
                values.update(
                    lat=position.lat,
                    lon=position.lon,
                    accuracy_m=position.accuracy_m,
                    position_at=message.event_time,
                )
            stmt = (
                _insert(session)(LoneWorkerState)
                .values(device_id=snap.device_id, version=1, presence="unknown", battery_low=False, **values)
                .on_conflict_do_nothing()
                .returning(LoneWorkerState.device_id)
            )
            if session.execute(stmt).first() is None:  # (rowcount is not reported for ON CONFLICT)
                raise CasConflict(snap.device_id)
            return
        params = {
            "b_device": snap.device_id,
            "b_version": snap.version,
            "b_state": state.to_json(),
            "b_now": now,
            "b_due": due,
            "b_battery": message.battery,
            "b_lat": position.lat if position else None,
            "b_lon": position.lon if position else None,
            "b_has_position": position is not None,
            "b_accuracy": position.accuracy_m if position else None,
            "b_position_at": message.event_time if position else None,
        }
        swapped = session.connection().execute(_CAS, params).rowcount == 1  # see _read_snapshot
        if not swapped:
            raise CasConflict(snap.device_id)

    def _status(
        self, session: Session, snap: _Snapshot, message: StatusMessage, retained: bool, now: datetime
    ) -> None:
        """Presence is a hint: an offline will of an older connection, or a retained copy of something
        older than what we know, changes nothing."""
        state = message.status
        said_at = min(message.sent_at, now) if message.sent_at is not None else now
        if state.state == "offline" and snap.session is not None and state.session != snap.session:
            return
        if retained and snap.presence_at is not None and said_at <= snap.presence_at:
            return
        values: dict[str, Any] = {
            "presence": state.state,
            "session": state.session,
            "presence_at": said_at,
            "updated_at": now,
        }
        if state.state == "online" and not retained:
            values["last_seen_at"] = now
            values["offline_due_at"] = now + timedelta(seconds=self.policy.offline_after_s)
        if snap.version is None:
            session.execute(
                _insert(session)(LoneWorkerState)
                .values(device_id=snap.device_id, version=0, replay_state="", battery_low=False, **values)
                .on_conflict_do_nothing()
            )
        else:
            session.execute(
                update(LoneWorkerState).where(LoneWorkerState.device_id == snap.device_id).values(**values)
            )

    def _duplicate(
        self,
        session: Session,
        message: Any,
        result: HandleResult,
        outbox: list[AlarmOutbox],
        now: datetime,
        existing: LoneWorkerEvent | None = None,
    ) -> None:
        """Absorb a re-sent event: act on nothing, tell the device again that we have it."""
        REJECTIONS.labels(reason=ReasonCode.DUPLICATE.value).inc()
        if message.type not in ("alarm", "checkin"):
            return
        existing = existing or session.get(LoneWorkerEvent, message.event_id)
        alarm_id = (
            existing.alarm_id if existing is not None and existing.device_id == message.device_id else None
        )
        result.alarm_id = alarm_id
        log.info(
            "duplicate lone-worker event absorbed",
            extra={"device": message.device_id, "event_id": message.event_id, "alarm": alarm_id},
        )
        self._queue_ack(
            session, outbox, message.device_id, message.event_id, AckStatus.DUPLICATE, alarm_id, now
        )

    # ------------------------------------------------------------------ alarms from devices

    def _alarm_message(
        self,
        session: Session,
        snap: _Snapshot,
        verdict: Accepted,
        topic: str,
        raw: bytes,
        result: HandleResult,
        outbox: list[AlarmOutbox],
        now: datetime,
        early_cancel_id: str | None = None,
    ) -> None:
        """A raise or a cancel. ``early_cancel_id``: a stored cancel of this raise that overtook it."""
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
        elif early_cancel_id is not None:  # several instances share the stream (locked by _RAISE_LOOKUP)
            with session.no_autoflush:  # see _read_snapshot
                early_cancel = session.get(LoneWorkerEvent, early_cancel_id)
        self._lock_liveness_rows(session, snap, message)
        # The event row is added once everything about it is known: one INSERT, no UPDATEs.
        event = self._record_event(session, snap, verdict, topic, raw, now, add=False)
        event.kind = body.kind
        event.ref_event_id = body.ref_event_id
        # A raise is acknowledged as soon as the event and the alarm are committed; the payload's
        # evidence item, the custody entry and the incident follow (see ``_follow_up``). A raise
        # that a cancel overtook, a raise escalated on arrival, a low-battery raise, and every cancel
        # take the whole path at once.
        fast = (
            body.action == "raise"
            and early_cancel is None
            and body.kind != rules.AlarmKind.LOW_BATTERY.value  # its own message may clear it (_liveness)
            and not self._escalated_on_arrival(message, now)
        )
        item = None if fast else self._store_payload(session, snap, event, message)
        if body.action == "raise":
            event.alarm_id = new_id()
            if fast:  # nothing in this transaction reads the event back
                stage(session, event)
            else:
                session.add(event)
            row = self._raise(
                session,
                outbox,
                now,
                alarm_id=event.alarm_id,
                device_id=snap.device_id,
                kind=rules.AlarmKind(body.kind),
                wearer=snap.staff_id,
                site=snap.site,
                occurred_at=message.occurred_at,
                source_event_id=message.event_id,
                amber_timeout_s=body.amber_timeout_s,
                reason=body.reason,
                note=body.note,
                message=message,
                late=verdict.late,
                evidence_item_id=item.id if item is not None else None,
                actor=f"device:{snap.device_id}",
                fast=fast,
            )
            result.alarm_id = row.id
            result.followup = fast
            if body.kind == "low_battery":
                self._state_values(session, snap.device_id, battery_low=True)
            if early_cancel is not None:
                early_cancel.alarm_id = row.id
                self._transition(
                    session,
                    row,
                    rules.DeviceCancel(early_cancel.event_id, now),
                    outbox,
                    now,
                    actor=f"device:{snap.device_id}",
                )
                self._link_to_incident(session, row, early_cancel.evidence_item_id, "alarm cancel")
        elif target is not None:
            event.alarm_id = target.id
            session.add(event)
            result.alarm_id = target.id
            self._transition(
                session,
                target,
                rules.DeviceCancel(message.event_id, now),
                outbox,
                now,
                actor=f"device:{snap.device_id}",
            )
            self._link_to_incident(session, target, event.evidence_item_id, "alarm cancel")
        else:
            # The alarm it cancels has not arrived yet: keep the cancel for it, tell the device we have it.
            session.add(event)
            self._queue_ack(session, outbox, snap.device_id, message.event_id, AckStatus.RECEIVED, None, now)

    def _escalated_on_arrival(self, message: AlarmMessage, now: datetime) -> bool:
        """An amber held on the device past its timer and the acknowledgement time is escalated as
        it is raised: its escalation must name the incident, so it cannot wait for a follow-up."""
        body = message.alarm
        amber = body.kind == rules.AlarmKind.AMBER.value
        if self.policy.ack_timeout_s > 0 and (not amber or message.occurred_at >= now):
            return False  # the common case, decided without working the rules through
        transition = rules.raise_alarm(
            alarm_id="-",
            device_id=message.device_id,
            kind=rules.AlarmKind(body.kind),
            at=now,
            policy=self.policy,
            occurred_at=message.occurred_at,
            amber_timeout_s=body.amber_timeout_s,
        )
        return any(isinstance(e, rules.CallWebhook) for e in transition.effects)

    def _record_event(
        self,
        session: Session,
        snap: _Snapshot,
        verdict: Accepted,
        topic: str,
        raw: bytes,
        now: datetime,
        *,
        add: bool = True,
    ) -> LoneWorkerEvent:
        message = verdict.message
        assert isinstance(message, AlarmMessage | CheckinMessage)
        body = message.alarm if isinstance(message, AlarmMessage) else message.checkin
        event = LoneWorkerEvent(
            event_id=message.event_id,
            device_id=snap.device_id,
            type=message.type,
            action=body.action,
            seq=message.seq,
            occurred_at=message.occurred_at,
            sent_at=message.sent_at,
            received_at=now,
            late=verdict.late,
            topic=topic,
            raw=raw,
            sha256=hashlib.sha256(raw).hexdigest(),
            visit_id=getattr(body, "visit_id", None),
            device_public_key=base64.b64encode(snap.public_key).decode() if snap.public_key else None,
        )
        if add:
            session.add(event)
        return event

    def _store_payload(
        self,
        session: Session,
        snap: _Snapshot,
        event: LoneWorkerEvent,
        message: AlarmMessage,
    ) -> EvidenceItem | None:
        """The exact bytes received become a locked evidence item. If object storage is down the alarm
        still goes through (the bytes wait in the event row) and the evidence is stored later."""
        stored = self._put_payload(event)
        if stored is None:
            return None
        item = self._record_payload_evidence(
            session, event, stored, snap.staff_id, message.sig, snap.public_key
        )
        event.evidence_item_id = item.id
        return item

    @staticmethod
    def _object_key(event: LoneWorkerEvent) -> str:
        return f"lone-worker/{event.device_id}/{event.received_at:%Y/%m/%d}/{event.event_id}.json"

    def _record_payload_evidence(
        self,
        session: Session,
        event: LoneWorkerEvent,
        stored: Any,
        wearer: str | None,
        signature: str | None,
        public_key: bytes | None,
    ) -> EvidenceItem:
        quarantine = None
        if stored.sha256 != event.sha256 or stored.size != len(event.raw):
            quarantine = f"object store holds {stored.sha256} ({stored.size} bytes), received {event.sha256}"
        return record_evidence(
            session,
            self.ledger,
            stored,
            Provenance(
                kind="alarm",
                actor=f"device:{event.device_id}",
                source_device_id=event.device_id,
                wearer=wearer,
                captured_start=event.occurred_at,
                captured_stop=event.occurred_at,
                filename=f"{event.event_id}.json",
                content_type="application/json",
                retain_until=event.received_at + timedelta(days=self.settings.retention_days),
            ),
            captured={
                "device": event.device_id,
                "event_id": event.event_id,
                "type": event.type,
                "action": event.action,
                "kind": event.kind,
                "seq": event.seq,
                "occurred_at": rfc3339(event.occurred_at),
                "sent_at": rfc3339(event.sent_at),
                "device_signature": signature,
                "device_public_key": base64.b64encode(public_key).decode() if public_key else None,
            },
            received={
                "via": "mqtt",
                "topic": event.topic,
                "received_at": rfc3339(event.received_at),
                "sha256": event.sha256,
                "bytes": len(event.raw),
                "late": event.late,
            },
            quarantine_reason=quarantine,
            verified={"device_signature_valid": True, "sequence_fresh": True},
        )

    def _raise(
        self,
        session: Session,
        outbox: list[AlarmOutbox],
        now: datetime,
        *,
        device_id: str,
        kind: rules.AlarmKind,
        wearer: str | None,
        site: str | None,
        alarm_id: str | None = None,
        occurred_at: datetime | None = None,
        source_event_id: str | None = None,
        dedupe_key: str | None = None,
        amber_timeout_s: int | None = None,
        reason: str | None = None,
        visit_id: str | None = None,
        note: str | None = None,
        message: Any = None,
        late: bool = False,
        evidence_item_id: str | None = None,
        actor: str = SERVICE_ACTOR,
        fast: bool = False,
    ) -> AlarmRecord:
        transition = rules.raise_alarm(
            alarm_id=alarm_id or new_id(),
            device_id=device_id,
            kind=kind,
            at=now,
            policy=self.policy,
            occurred_at=occurred_at,
            source_event_id=source_event_id,
            amber_timeout_s=amber_timeout_s,
            reason=reason,
            visit_id=visit_id,
        )
        row = AlarmRecord(
            id=transition.alarm.alarm_id,
            wearer=wearer,
            site=site,
            dedupe_key=dedupe_key,
            note=note,
            late=late,
            evidence_item_id=evidence_item_id,
            followup_pending=fast,
        )
        if message is not None:
            if message.position is not None:
                row.lat, row.lon = message.position.lat, message.position.lon
                row.accuracy_m = message.position.accuracy_m
            row.battery = message.battery
        if fast:  # a fast raise's alarm is changed by nothing else before its commit
            stage(session, row)
        else:
            session.add(row)
        ALARMS_RAISED.labels(kind=kind.value).inc()
        log.info(
            "alarm raised",
            extra={"alarm": row.id, "device": device_id, "kind": kind.value, "wearer": wearer},
        )
        self._apply(session, row, transition, outbox, now, actor=actor, raised=True)
        return row

    # ------------------------------------------------------------------ the follow-up of a fast raise

    def _follow_up(self, session: Session, row: AlarmRecord, now: datetime) -> None:
        """Make an alarm accepted on the fast path whole, in the order the full path would have:
        the payload as an evidence item, the ``alarm_raised`` custody entry, then the incident a red
        alarm opens or joins. Runs before any other change to the alarm (see ``_apply``), so the
        custody trail never shows a change before the raise. The caller holds the alarm's row lock."""
        event = session.get(LoneWorkerEvent, row.source_event_id) if row.source_event_id else None
        if event is not None and event.evidence_item_id is None:
            stored = self._put_payload(event)
            if stored is not None:
                event.evidence_item_id = self._payload_evidence(session, event, stored, row.wearer).id
        if event is not None and row.evidence_item_id is None:
            row.evidence_item_id = event.evidence_item_id
        row.followup_pending = False
        session.flush()
        details = self._custody_details(row, [rules.Change.RAISED.value])
        details["accepted_at"] = rfc3339(row.raised_at)
        self.ledger.append(
            session,
            "alarm_raised",
            f"device:{row.device_id}",
            item_id=row.evidence_item_id,
            details=details,
            at=now,
        )
        if row.incident_requested and row.incident_id is None:
            self._open_incident(session, row, now)
            self._feed(session, row, "incident_linked", now)

    def _put_payload(self, event: LoneWorkerEvent) -> Any:
        """The exact bytes received, into locked storage; None (evidence deferred) while storage is down."""
        try:
            return self.services.store.put_bytes(
                self._object_key(event),
                event.raw,
                retain_until=event.received_at + timedelta(days=self.settings.retention_days),
                content_type="application/json",
            )
        except StorageError as exc:
            EVIDENCE_DEFERRED.inc()
            log.warning(
                "alarm evidence deferred: object storage unavailable",
                extra={"device": event.device_id, "event_id": event.event_id, "error": str(exc)},
            )
            return None

    def _payload_evidence(
        self, session: Session, event: LoneWorkerEvent, stored: Any, wearer: str | None
    ) -> EvidenceItem:
        """The evidence item of a payload stored after its message was handled, from the event row: the
        bytes, and the key the signature was verified with at accept (the registry's key for events
        stored before the row kept it)."""
        device = session.get(Device, event.device_id)
        signature = json.loads(event.raw).get("sig")
        key_b64 = event.device_public_key or (device.public_key if device is not None else None)
        public_key = _raw_key(key_b64) if key_b64 else None
        if wearer is None and device is not None:
            wearer = device.assigned_staff_id
        return self._record_payload_evidence(session, event, stored, wearer, signature, public_key)

    def complete_followup(self, alarm_id: str, now: datetime | None = None) -> bool:
        """Finish one fast-path alarm if it is still pending and nobody else is at it; True if done here.

        The alarm's row is locked first (skipping it if someone else holds it), so only one
        instance ever puts the payload into storage; the put happens before the ledger lock."""
        with self.db.session() as session:
            row = session.scalars(
                select(AlarmRecord).where(AlarmRecord.id == alarm_id).with_for_update(skip_locked=True)
            ).first()
            if row is None or not row.followup_pending:
                return False
            self._follow_up(session, row, now or self.clock())
        return True

    def pending_followups(self, limit: int = 50, raised_before: datetime | None = None) -> list[str]:
        """Alarms accepted on the fast path and not yet made whole, oldest first."""
        q = select(AlarmRecord.id).where(AlarmRecord.followup_pending.is_(True))
        if raised_before is not None:
            q = q.where(AlarmRecord.raised_at <= raised_before)
        with self.db.session() as session:
            return list(session.scalars(q.order_by(AlarmRecord.raised_at).limit(limit)))

    def complete_followups(
        self,
        now: datetime | None = None,
        limit: int = 20,
        older_than: timedelta = timedelta(0),
        before_each: Callable[[], bool] | None = None,
    ) -> int:
        """Finish fast-path alarms that are still pending (oldest first); safe on many instances.
        ``before_each`` runs before every alarm and may wait; False stops the pass."""
        now = now or self.clock()
        done = 0
        for alarm_id in self.pending_followups(limit, now - older_than):
            if before_each is not None and not before_each():
                break
            try:
                done += self.complete_followup(alarm_id, now)
            except Exception:  # noqa: BLE001 - left pending; the next pass tries again
                log.exception("alarm follow-up failed; will retry", extra={"alarm": alarm_id})
        return done

    # ------------------------------------------------------------------ transitions and their effects

    def _transition(
        self,
        session: Session,
        row: AlarmRecord,
        event: rules.AlarmEvent,
        outbox: list[AlarmOutbox],
        now: datetime,
        *,
        actor: str,
    ) -> rules.Transition:
        transition = rules.apply(to_rule(row), event, self.policy)
        self._apply(session, row, transition, outbox, now, actor=actor)
        return transition

    def _apply(
        self,
        session: Session,
        row: AlarmRecord,
        transition: rules.Transition,
        outbox: list[AlarmOutbox],
        now: datetime,
        *,
        actor: str,
        raised: bool = False,
    ) -> None:
        """Store the alarm as the rules left it, append its custody entry, then perform the effects.

        A fast raise (``row.followup_pending``) skips the custody entry and the incident: they come
        with its follow-up, which any later change to the alarm performs first."""
        if not raised and row.followup_pending:
            self._follow_up(session, row, now)
        fast = raised and row.followup_pending
        before = (row.status, row.severity) if not raised else None
        store_rule(row, transition.alarm)
        row.updated_at = now
        changes = [e.change.value for e in transition.effects if isinstance(e, rules.NotifyOperators)]
        if not raised and not transition.effects and before == (row.status, row.severity):
            return
        if not fast:
            session.flush()
            self.ledger.append(
                session,
                "alarm_raised" if raised else "alarm_changed",
                actor,
                item_id=row.evidence_item_id,
                details=self._custody_details(row, changes),
                at=now,
            )
            for effect in transition.effects:
                if isinstance(effect, rules.OpenOrJoinIncident):
                    self._open_incident(session, row, now)
        for effect in transition.effects:
            if isinstance(effect, rules.NotifyOperators):
                self._feed(session, row, effect.change.value, effect.at)
            elif isinstance(effect, rules.PublishAck):
                self._queue_ack(
                    session, outbox, effect.device_id, effect.event_id, effect.status, row.id, now
                )
            elif isinstance(effect, rules.CallWebhook):
                self._escalation_effects(session, row, effect, outbox, now)

    @staticmethod
    def _custody_details(row: AlarmRecord, changes: list[str]) -> dict[str, Any]:
        return {
            "alarm_id": row.id,
            "device": row.device_id,
            "kind": row.kind,
            "severity": row.severity,
            "status": row.status,
            "changes": changes,
            "outcome": row.outcome,
            "source_event_id": row.source_event_id,
        }

    def _feed(self, session: Session, row: AlarmRecord, change: str, at: datetime) -> None:
        body = {"change": change, "at": at.isoformat(), "alarm": alarm_view(row)}
        stage_feed(session, AlarmChange(alarm_id=row.id, change=change, at=at, body=json.dumps(body)))

    def _queue(
        self,
        session: Session,
        outbox: list[AlarmOutbox],
        channel: str,
        target: str,
        payload: bytes,
        now: datetime,
        alarm_id: str | None,
    ) -> None:
        fast = channel == "mqtt" and self.publisher is not None
        row = AlarmOutbox(
            channel=channel,
            target=target,
            payload=payload,
            qos=1,
            alarm_id=alarm_id,
            created_at=now,
            next_attempt_at=now + self.fast_path_grace if fast else now,
            attempts=0,
        )
        stage(session, row)  # the outbox is read by the relay, in transactions of its own
        outbox.append(row)

    def _ack(
        self,
        device_id: str,
        event_id: str,
        status: AckStatus,
        now: datetime,
        *,
        alarm_id: str | None = None,
        reason: str | None = None,
    ) -> bytes:
        return build_ack(
            private_key=self.services.key.private,
            device_id=device_id,
            event_id=event_id,
            status=status,
            at=now,
            alarm_id=alarm_id,
            reason=reason,
        )

    def _queue_ack(
        self,
        session: Session,
        outbox: list[AlarmOutbox],
        device_id: str,
        event_id: str,
        status: AckStatus,
        alarm_id: str | None,
        now: datetime,
    ) -> None:
        payload = self._ack(device_id, event_id, status, now, alarm_id=alarm_id)
        self._queue(session, outbox, "mqtt", topic_for(device_id, "ack"), payload, now, alarm_id)

    def _escalation_effects(
        self,
        session: Session,
        row: AlarmRecord,
        effect: rules.CallWebhook,
        outbox: list[AlarmOutbox],
        now: datetime,
    ) -> None:
        """An escalation goes to the control topic (other systems on the broker) and the webhook."""
        ALARM_ESCALATIONS.labels(reason=effect.reason.value).inc()
        log.warning(
            "alarm escalated",
            extra={"alarm": row.id, "device": row.device_id, "kind": row.kind, "reason": effect.reason.value},
        )
        body = canonical_json(
            {
                "v": 1,
                "type": "alarm_escalated",
                "alarm_id": row.id,
                "device_id": row.device_id,
                "wearer": row.wearer,
                "site": row.site,
                "kind": row.kind,
                "severity": row.severity,
                "reason": effect.reason.value,
                "at": rfc3339(effect.at),
                "raised_at": rfc3339(row.raised_at),
                "position": (
                    {"lat": row.lat, "lon": row.lon, "accuracy_m": row.accuracy_m}
                    if row.lat is not None
                    else None
                ),
                "incident_id": row.incident_id,
            }
        )
        self._queue(session, outbox, "mqtt", ESCALATION_TOPIC, body, now, row.id)
        if self.settings.escalation_webhook_url:
            self._queue(session, outbox, "webhook", self.settings.escalation_webhook_url, body, now, row.id)

    # ------------------------------------------------------------------ incidents

    def _open_incident(self, session: Session, row: AlarmRecord, now: datetime) -> None:
        """A red alarm opens an incident, or joins the wearer's recent one; footage of the wearer from
        around the alarm is linked now, and footage arriving later by the clip hook."""
        if row.incident_id is not None:
            return
        at = min(row.occurred_at, row.raised_at)
        window = timedelta(minutes=self.settings.incident_join_minutes)
        if row.wearer:
            incident, _ = open_or_join_incident_for_wearer(
                session,
                self.ledger,
                row.wearer,
                at,
                INCIDENT_CATEGORY,
                row.site,
                SERVICE_ACTOR,
                window,
                now=now,
            )
        else:  # a device nobody is assigned to: an incident of its own, nobody's footage to link
            incident = create_incident(
                session,
                IncidentDraft(
                    category=INCIDENT_CATEGORY,
                    occurred_at=at,
                    site=row.site or "unknown",
                    title=f"Lone-worker alarm from device {row.device_id}",
                ),
                SERVICE_ACTOR,
                now=now,
            )
        row.incident_id = incident.id
        reason = f"{row.kind} alarm from {row.device_id}"
        link_alarm(session, self.ledger, incident.id, row.id, SERVICE_ACTOR, reason, now=now)
        for item_id in self._alarm_items(session, row):
            self._link_to_incident(session, row, item_id, "alarm evidence")
        log.info("alarm linked to incident", extra={"alarm": row.id, "incident": incident.reference})

    @staticmethod
    def _alarm_items(session: Session, row: AlarmRecord) -> list[str]:
        items = [row.evidence_item_id, row.voice_memo_item_id]
        items += list(
            session.scalars(
                select(LoneWorkerEvent.evidence_item_id).where(
                    LoneWorkerEvent.alarm_id == row.id, LoneWorkerEvent.evidence_item_id.is_not(None)
                )
            )
        )
        return list(dict.fromkeys(i for i in items if i))

    def _link_to_incident(self, session: Session, row: AlarmRecord, item_id: str | None, what: str) -> None:
        if row.incident_id is None or item_id is None:
            return
        link_evidence(
            session,
            self.ledger,
            row.incident_id,
            item_id,
            SERVICE_ACTOR,
            f"{what} of alarm {row.id} ({row.kind})",
        )

    # ------------------------------------------------------------------ check-ins and liveness

    def _checkin_message(
        self,
        session: Session,
        snap: _Snapshot,
        verdict: Accepted,
        topic: str,
        raw: bytes,
        result: HandleResult,
        outbox: list[AlarmOutbox],
        now: datetime,
    ) -> None:
        message = verdict.message
        assert isinstance(message, CheckinMessage)
        body = message.checkin
        visit = session.scalars(
            select(LoneWorkerVisit)
            .where(LoneWorkerVisit.device_id == snap.device_id, LoneWorkerVisit.visit_id == body.visit_id)
            .with_for_update()
        ).first()
        missed: AlarmRecord | None = None
        if body.action == "end" and visit is not None and visit.missed_alarm_id:
            missed = session.get(AlarmRecord, visit.missed_alarm_id, with_for_update=True)
        self._lock_liveness_rows(session, snap, message)
        self._record_event(session, snap, verdict, topic, raw, now)
        grace = timedelta(seconds=self.policy.missed_checkin_grace_s)
        if body.action == "start":
            assert body.expected_end is not None
            if visit is None:
                visit = LoneWorkerVisit(
                    device_id=snap.device_id, visit_id=body.visit_id, wearer=snap.staff_id
                )
                session.add(visit)
            if visit.ended_at is None:
                visit.started_at = visit.started_at or message.occurred_at
                visit.expected_end = body.expected_end
                visit.start_event_id = message.event_id
                visit.note = body.note
                visit.due_at = None if visit.missed_alarm_id else body.expected_end + grace
                self._state_values(session, snap.device_id, active_visit_id=body.visit_id)
        else:
            if visit is None:  # the end of a visit whose start never reached us
                visit = LoneWorkerVisit(
                    device_id=snap.device_id, visit_id=body.visit_id, wearer=snap.staff_id
                )
                session.add(visit)
            if visit.ended_at is None:
                visit.ended_at = now
                visit.end_event_id = message.event_id
                visit.due_at = None
                if missed is not None:
                    self._transition(
                        session,
                        missed,
                        rules.ConditionCleared(now, f"visit {body.visit_id} ended"),
                        outbox,
                        now,
                        actor=f"device:{snap.device_id}",
                    )
            if snap.active_visit_id == body.visit_id:
                self._state_values(session, snap.device_id, active_visit_id=None)
        self._queue_ack(session, outbox, snap.device_id, message.event_id, AckStatus.RECEIVED, None, now)

    def _lock_liveness_rows(self, session: Session, snap: _Snapshot, message: Any) -> None:
        """Lock the alarm rows :meth:`_liveness` may change, before the ledger lock is taken."""
        ids: list[str] = []
        if snap.offline_alarm_id:
            ids.append(snap.offline_alarm_id)
        if (
            snap.battery_low
            and message.battery is not None
            and rules.is_battery_recovered(message.battery, self.policy)
        ):
            ids += session.scalars(
                select(AlarmRecord.id).where(
                    AlarmRecord.device_id == snap.device_id,
                    AlarmRecord.kind == "low_battery",
                    AlarmRecord.status != "resolved",
                )
            )
        if ids:
            list(session.scalars(select(AlarmRecord).where(AlarmRecord.id.in_(ids)).with_for_update()))

    def _liveness(
        self, session: Session, snap: _Snapshot, message: Any, outbox: list[AlarmOutbox], now: datetime
    ) -> None:
        """What any message says: the device is back (clears an offline alarm); its battery level."""
        actor = f"device:{snap.device_id}"
        if snap.offline_alarm_id:
            row = session.get(AlarmRecord, snap.offline_alarm_id, with_for_update=True)
            if row is not None:
                self._transition(
                    session, row, rules.ConditionCleared(now, "device back online"), outbox, now, actor=actor
                )
            self._state_values(session, snap.device_id, offline_alarm_id=None)
        battery = message.battery
        if battery is None:
            return
        if not snap.battery_low and rules.is_battery_low(battery, self.policy):
            if isinstance(message, AlarmMessage) and message.alarm.kind == "low_battery":
                return  # the device raised it itself
            self._raise(
                session,
                outbox,
                now,
                device_id=snap.device_id,
                kind=rules.AlarmKind.LOW_BATTERY,
                wearer=snap.staff_id,
                site=snap.site,
                dedupe_key=f"low_battery:{snap.device_id}:{rfc3339(now)}",
                message=message,
            )
            self._state_values(session, snap.device_id, battery_low=True)
        elif snap.battery_low and rules.is_battery_recovered(battery, self.policy):
            for row in session.scalars(
                select(AlarmRecord).where(
                    AlarmRecord.device_id == snap.device_id,
                    AlarmRecord.kind == "low_battery",
                    AlarmRecord.status != "resolved",
                )
            ):
                self._transition(
                    session,
                    row,
                    rules.ConditionCleared(now, f"battery at {battery}%"),
                    outbox,
                    now,
                    actor=actor,
                )
            self._state_values(session, snap.device_id, battery_low=False)

    @staticmethod
    def _state_values(session: Session, device_id: str, **values: Any) -> None:
        session.execute(
            update(LoneWorkerState).where(LoneWorkerState.device_id == device_id).values(**values)
        )

    def _after_commit(self, publish: list[Outgoing]) -> None:
        if publish:
            for listener in self.committed_listeners:
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a listener never costs the alarm its effects
                    log.exception("alarm commit listener failed")
        if publish and self.publisher is not None:
            try:
                self.publisher(publish)
            except Exception:  # noqa: BLE001 - the outbox relay sends it later
                log.exception("publishing alarm effects failed; the outbox relay will retry")

    # ------------------------------------------------------------------ the control room

    def get(self, alarm_id: str) -> dict[str, Any]:
        with self.db.session() as session:
            row = session.get(AlarmRecord, alarm_id)
            if row is None:
                raise AlarmNotFound(alarm_id)
            return alarm_view(row)

    def list_alarms(
        self,
        *,
        status: Iterable[str] = (),
        open_only: bool = False,
        device_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        q = select(AlarmRecord)
        statuses = list(status)
        if statuses:
            q = q.where(AlarmRecord.status.in_(statuses))
        if open_only:
            q = q.where(AlarmRecord.status != "resolved")
        if device_id:
            q = q.where(AlarmRecord.device_id == device_id)
        if kind:
            q = q.where(AlarmRecord.kind == kind)
        q = q.order_by(AlarmRecord.raised_at.desc(), AlarmRecord.id).limit(limit).offset(offset)
        with self.db.session() as session:
            return [alarm_view(r) for r in session.scalars(q)]

    def act(self, alarm_id: str, event: rules.Acknowledge | rules.Escalate | rules.Resolve) -> dict[str, Any]:
        """An operator's action; :class:`ingest.alarm_rules.AlarmTransitionError` when it does not apply
        (any deadline that fell due before it is stored all the same)."""
        outbox: list[AlarmOutbox] = []
        error: rules.AlarmTransitionError | None = None
        now = event.at
        with self.db.session() as session:
            row = session.get(AlarmRecord, alarm_id, with_for_update=True)
            if row is None:
                raise AlarmNotFound(alarm_id)
            try:
                transition = rules.apply(to_rule(row), event, self.policy)
            except rules.AlarmTransitionError as exc:
                error = exc
                transition = exc.transition or rules.Transition(to_rule(row))
            self._apply(session, row, transition, outbox, now, actor=event.by)
            session.flush()
            view = alarm_view(row)
        self._after_commit(mqtt_effects(outbox))
        if error is not None:
            raise error
        return view

    # ------------------------------------------------------------------ what the clock decides

    def _claim(self, session: Session, q: Any, limit: int) -> list[Any]:
        return list(session.scalars(q.limit(limit).with_for_update(skip_locked=True)))

    def fire_deadlines(self, now: datetime | None = None, limit: int = 50) -> int:
        """Amber timers that ran out and acknowledgements that are overdue; safe on many instances."""
        now = now or self.clock()
        outbox: list[AlarmOutbox] = []
        with self.db.session() as session:
            rows = self._claim(
                session,
                select(AlarmRecord)
                .where(AlarmRecord.next_deadline <= now)
                .order_by(AlarmRecord.next_deadline),
                limit,
            )
            for row in rows:
                self._transition(session, row, rules.Tick(now), outbox, now, actor=SERVICE_ACTOR)
                if row.next_deadline is not None and row.next_deadline <= now:  # never spin on one row
                    row.next_deadline = None
            session.flush()
        self._after_commit(mqtt_effects(outbox))
        return len(rows)

    def raise_missed_checkins(self, now: datetime | None = None, limit: int = 50) -> int:
        """A visit whose end check-in is overdue by the grace period raises ``missed_checkin``."""
        now = now or self.clock()
        outbox: list[AlarmOutbox] = []
        with self.db.session() as session:
            visits = self._claim(
                session,
                select(LoneWorkerVisit)
                .where(LoneWorkerVisit.due_at <= now, LoneWorkerVisit.ended_at.is_(None))
                .order_by(LoneWorkerVisit.due_at),
                limit,
            )
            for visit in visits:
                visit.due_at = None
                if visit.missed_alarm_id is not None:
                    continue
                device = session.get(Device, visit.device_id)
                row = self._raise(
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
            session.flush()
        self._after_commit(mqtt_effects(outbox))
        return len(visits)

    def raise_offline(self, now: datetime | None = None, limit: int = 50) -> int:
        """A device silent for ``device_offline_after_seconds`` while on a visit or with an alarm open."""
        now = now or self.clock()
        outbox: list[AlarmOutbox] = []
        with self.db.session() as session:
            states = self._claim(
                session,
                select(LoneWorkerState)
                .where(LoneWorkerState.offline_due_at <= now)
                .order_by(LoneWorkerState.offline_due_at),
                limit,
            )
            for state in states:
                state.offline_due_at = None
                if state.offline_alarm_id is not None or state.last_seen_at is None:
                    continue
                visit_active = session.scalar(
                    select(func.count())
                    .select_from(LoneWorkerVisit)
                    .where(LoneWorkerVisit.device_id == state.device_id, LoneWorkerVisit.ended_at.is_(None))
                )
                alarm_open = session.scalar(
                    select(func.count())
                    .select_from(AlarmRecord)
                    .where(
                        AlarmRecord.device_id == state.device_id,
                        AlarmRecord.status != "resolved",
                        AlarmRecord.kind.in_(WATCHED_KINDS),
                    )
                )
                if not rules.is_device_offline(
                    state.last_seen_at,
                    now,
                    self.policy,
                    visit_active=bool(visit_active),
                    alarm_open=bool(alarm_open),
                ):
                    continue
                device = session.get(Device, state.device_id)
                row = self._raise(
                    session,
                    outbox,
                    now,
                    device_id=state.device_id,
                    kind=rules.AlarmKind.DEVICE_OFFLINE,
                    wearer=device.assigned_staff_id if device else None,
                    site=device.site if device else None,
                    occurred_at=state.last_seen_at,
                    visit_id=state.active_visit_id,
                    dedupe_key=f"device_offline:{state.device_id}:{rfc3339(state.last_seen_at)}",
                )
                state.offline_alarm_id = row.id
            session.flush()
        self._after_commit(mqtt_effects(outbox))
        return len(states)

    def store_deferred_evidence(self, now: datetime | None = None, limit: int = 20) -> int:
        """Alarm payloads that arrived while object storage was down become evidence now."""
        now = now or self.clock()
        with self.db.session() as session:
            pending = list(
                session.execute(
                    select(LoneWorkerEvent.event_id, LoneWorkerEvent.device_id, LoneWorkerEvent.received_at)
                    .where(
                        LoneWorkerEvent.type == "alarm",
                        LoneWorkerEvent.evidence_item_id.is_(None),
                        LoneWorkerEvent.received_at <= now - timedelta(seconds=2),
                        ~select(AlarmRecord.id)  # a pending follow-up stores its own payload
                        .where(
                            AlarmRecord.id == LoneWorkerEvent.alarm_id, AlarmRecord.followup_pending.is_(True)
                        )
                        .exists(),
                    )
                    .order_by(LoneWorkerEvent.received_at)
                    .limit(limit)
                )
            )
        done = 0
        for event_id, _, _ in pending:
            with self.db.session() as session:
                event = session.get(LoneWorkerEvent, event_id)
                if event is None or event.evidence_item_id is not None:
                    continue
                raw = event.raw
                key = self._object_key(event)
                retain_until = event.received_at + timedelta(days=self.settings.retention_days)
            stored = self.services.store.put_bytes(
                key, raw, retain_until=retain_until, content_type="application/json"
            )
            with self.db.session() as session:
                event = session.get(LoneWorkerEvent, event_id, with_for_update=True)
                if event is None or event.evidence_item_id is not None:
                    continue
                alarm = (
                    session.get(AlarmRecord, event.alarm_id, with_for_update=True) if event.alarm_id else None
                )
                item = self._payload_evidence(session, event, stored, alarm.wearer if alarm else None)
                event.evidence_item_id = item.id
                if alarm is not None:
                    if alarm.evidence_item_id is None and alarm.source_event_id == event.event_id:
                        alarm.evidence_item_id = item.id
                    self._link_to_incident(session, alarm, item.id, "alarm evidence")
                done += 1
        return done

    def sample_trails(self) -> int:
        """Add each device's newest position to its trail while it has an alarm open (once per fix)."""
        S, P = LoneWorkerState, LoneWorkerPosition
        newest = select(P.device_id, func.max(P.at).label("at")).group_by(P.device_id).subquery("newest")
        with self.db.session() as session:
            rows = session.execute(
                select(S.device_id, S.position_at, S.lat, S.lon, S.accuracy_m)
                .outerjoin(newest, newest.c.device_id == S.device_id)
                .where(
                    S.device_id.in_(
                        select(AlarmRecord.device_id).where(AlarmRecord.status != "resolved").distinct()
                    ),
                    S.position_at.is_not(None),
                    S.lat.is_not(None),
                    S.lon.is_not(None),
                    or_(newest.c.at.is_(None), S.position_at > newest.c.at),
                )
            ).all()
            if rows:
                session.execute(
                    _insert(session)(P)
                    .values(
                        [
                            {
                                "device_id": r.device_id,
                                "at": r.position_at,
                                "lat": r.lat,
                                "lon": r.lon,
                                "accuracy_m": r.accuracy_m,
                            }
                            for r in rows
                        ]
                    )
                    .on_conflict_do_nothing()
                )
        return len(rows)

    def purge(self, now: datetime | None = None, keep: timedelta = timedelta(days=7)) -> None:
        """Forget sent outbox rows and old change-feed rows (the alarms and custody keep the history)."""
        now = now or self.clock()
        with self.db.session() as session:
            session.execute(delete(AlarmOutbox).where(AlarmOutbox.sent_at < now - keep))
            newest = session.scalar(select(func.max(AlarmChange.id)))
            if newest is not None:  # the newest row stays, so ids keep rising on SQLite
                session.execute(
                    delete(AlarmChange).where(AlarmChange.at < now - keep, AlarmChange.id < newest)
                )

    # ------------------------------------------------------------------ outbox

    def claim_outbox(
        self, channel: str, now: datetime | None = None, limit: int = 100, lease_s: float = 30
    ) -> list[AlarmOutbox]:
        """Due unsent effects, leased to the caller for ``lease_s`` (another instance takes them after)."""
        now = now or self.clock()
        with self.db.session() as session:
            rows = self._claim(
                session,
                select(AlarmOutbox)
                .where(
                    AlarmOutbox.channel == channel,
                    AlarmOutbox.sent_at.is_(None),
                    AlarmOutbox.next_attempt_at <= now,
                )
                .order_by(AlarmOutbox.next_attempt_at, AlarmOutbox.id),
                limit,
            )
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = now + timedelta(seconds=lease_s)
            session.flush()
            for row in rows:
                session.expunge(row)
        return rows

    def mark_sent(self, ids: Iterable[int], now: datetime | None = None) -> None:
        ids = list(ids)
        if not ids:
            return
        now = now or self.clock()
        with self.db.session() as session:
            session.execute(
                update(AlarmOutbox)
                .where(AlarmOutbox.id.in_(ids), AlarmOutbox.sent_at.is_(None))
                .values(sent_at=now)
            )

    def mark_failed(self, row_id: int, error: str, retry_in: timedelta) -> None:
        with self.db.session() as session:
            session.execute(
                update(AlarmOutbox)
                .where(AlarmOutbox.id == row_id)
                .values(last_error=error[:1000], next_attempt_at=self.clock() + retry_in)
            )

    # ------------------------------------------------------------------ voice memos

    def attach_voice_memo(
        self,
        device_id: str,
        event_id: str,
        data: bytes,
        *,
        content_type: str,
        sent_at: str,
        signature: str,
        now: datetime | None = None,
    ) -> tuple[str, bool]:
        """Store a device's voice memo for its alarm as evidence and link it; returns (item id, new).

        The device signs ``voice_memo_manifest(...)`` with its enrolled key, so the signature both
        authenticates the upload and binds the exact bytes (their SHA-256) to the alarm's event.
        """
        now = now or self.clock()
        digest = hashlib.sha256(data).hexdigest()
        manifest = voice_memo_manifest(device_id, event_id, digest, len(data), content_type, sent_at)
        with self.db.session() as session:
            device = session.get(Device, device_id)
            if device is None or device.kind != "lone_worker" or not device.public_key:
                raise VoiceMemoRefused("unknown_device", "device is not an enrolled lone-worker device", 401)
            public_key = _raw_key(device.public_key)
            wearer = device.assigned_staff_id
            active = device.status == "active"
        if public_key is None or not _signature_ok(public_key, signature, manifest):
            raise VoiceMemoRefused("bad_signature", "signature does not verify with the device key", 401)
        if not active:
            raise VoiceMemoRefused("disabled_device", "device is disabled", 403)
        try:
            moment = parse_time(sent_at)
        except ValueError:
            raise VoiceMemoRefused("bad_time", "sent_at must be RFC 3339 UTC", 400) from None
        if abs((moment - now).total_seconds()) > self.settings.max_clock_skew_seconds:
            raise VoiceMemoRefused("clock_skew", "sent_at is too far from the server clock; sign again", 401)
        with self.db.session() as session:
            alarm_id = session.scalar(
                select(AlarmRecord.id).where(
                    AlarmRecord.source_event_id == event_id, AlarmRecord.device_id == device_id
                )
            )
            if alarm_id is None:
                raise VoiceMemoRefused(
                    "alarm_unknown", "no alarm of this device has that event id (yet)", 409
                )
            existing = session.execute(
                select(AlarmRecord.voice_memo_item_id, EvidenceItem.sha256)
                .join(EvidenceItem, EvidenceItem.id == AlarmRecord.voice_memo_item_id)
                .where(AlarmRecord.id == alarm_id)
            ).first()
        if existing is not None:
            if existing.sha256 == digest:
                return existing.voice_memo_item_id, False
            raise VoiceMemoRefused("memo_exists", "this alarm already has a different voice memo", 409)
        retain_until = now + timedelta(days=self.settings.retention_days)
        extension = {"audio/ogg": "ogg", "audio/opus": "opus", "audio/mpeg": "mp3", "audio/wav": "wav"}.get(
            content_type, "bin"
        )
        stored = self.services.store.put_bytes(
            f"lone-worker/{device_id}/{now:%Y/%m/%d}/{event_id}-memo.{extension}",
            data,
            retain_until=retain_until,
            content_type=content_type,
        )
        with self.db.session() as session:
            row = session.get(AlarmRecord, alarm_id, with_for_update=True)
            assert row is not None
            if row.voice_memo_item_id is not None:  # a concurrent upload won
                return row.voice_memo_item_id, False
            if row.followup_pending:  # custody shows the raise before anything added to it
                self._follow_up(session, row, datetime.now(UTC))
            item = record_evidence(
                session,
                self.ledger,
                stored,
                Provenance(
                    kind="voice_memo",
                    actor=f"device:{device_id}",
                    source_device_id=device_id,
                    wearer=wearer,
                    captured_start=row.occurred_at,
                    filename=f"{event_id}-memo.{extension}",
                    content_type=content_type,
                    retain_until=retain_until,
                ),
                captured={
                    "device": device_id,
                    "event_id": event_id,
                    "alarm_id": row.id,
                    "manifest": manifest_dict(manifest),
                    "device_signature": signature,
                },
                received={"via": "https", "received_at": rfc3339(now), "sha256": digest, "bytes": len(data)},
                quarantine_reason=(
                    None
                    if stored.sha256 == digest
                    else f"object store holds {stored.sha256}, received {digest}"
                ),
                verified={"device_signature_valid": True, "sha256_matches": True},
            )
            row.voice_memo_item_id = item.id
            row.updated_at = now
            self.ledger.append(
                session,
                "alarm_changed",
                f"device:{device_id}",
                item_id=row.evidence_item_id,
                details={"alarm_id": row.id, "voice_memo": item.id, "sha256": digest},
                at=now,
            )
            self._link_to_incident(session, row, item.id, "voice memo")
            self._feed(session, row, "voice_memo", now)
            item_id = item.id
        return item_id, True

    # ------------------------------------------------------------------ faults of ours

    def dead_letter(self, topic: str, raw: bytes, error: str) -> None:
        with self.db.session() as session:
            session.add(DeadLetter(topic=topic[:1000], payload=raw, error=error[:4000]))


def voice_memo_manifest(
    device_id: str, event_id: str, sha256: str, size: int, content_type: str, sent_at: str
) -> bytes:
    """The canonical JSON a device signs to upload a voice memo for one of its alarms."""
    return canonical_json(
        {
            "v": 1,
            "type": "voice_memo",
            "device_id": device_id,
            "event_id": event_id,
            "sha256": sha256,
            "size": size,
            "content_type": content_type,
            "sent_at": sent_at,
        }
    )


def manifest_dict(manifest: bytes) -> dict[str, Any]:
    return json.loads(manifest)


def _signature_ok(public_key: bytes, signature_b64: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            base64.b64decode(signature_b64, validate=True), message
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# --------------------------------------------------------------------------- enrolment and broker access


@dataclass(frozen=True)
class EnrolledLoneWorker:
    device: Device
    mqtt_password: str  # shown once; the registry keeps only its Mosquitto hash


def enrol_lone_worker(
    session: Session,
    services: Services,
    device_id: str,
    public_key_b64: str,
    actor: str,
    *,
    staff_id: str | None = None,
    name: str = "",
    site: str | None = None,
) -> EnrolledLoneWorker:
    """Register a lone-worker device by its key, issue its broker password and start its sequence afresh."""
    device = enrol_keyed_device(
        session,
        services.ledger,
        "lone_worker",
        device_id,
        public_key_b64,
        actor,
        staff_id=staff_id,
        name=name,
        site=site,
    )
    password = generate_password()
    device.broker_password_hash = hash_password(password)
    session.execute(
        update(LoneWorkerState)
        .where(LoneWorkerState.device_id == device_id)
        .values(replay_state="", version=LoneWorkerState.version + 1, session=None)
    )
    session.flush()
    return EnrolledLoneWorker(device, password)


def broker_accounts(session: Session) -> list[BrokerAccount]:
    """Every active lone-worker device that has a broker password, for the Mosquitto files."""
    rows = session.scalars(
        select(Device)
        .where(
            Device.kind == "lone_worker", Device.status == "active", Device.broker_password_hash.is_not(None)
        )
        .order_by(Device.id)
    )
    return [BrokerAccount(d.id, d.broker_password_hash or "") for d in rows]


def service_account(settings: Any) -> BrokerAccount:
    """The service's own broker login, from ``EVIDENCE_MQTT_USERNAME`` / ``EVIDENCE_MQTT_PASSWORD``."""
    if not settings.mqtt_username or settings.mqtt_password is None:
        raise ValueError(
            "set EVIDENCE_MQTT_USERNAME and EVIDENCE_MQTT_PASSWORD for the service's broker login"
        )
    return BrokerAccount(settings.mqtt_username, hash_password(settings.mqtt_password.get_secret_value()))


def alarm_service(services: Services) -> AlarmService:
    """The process's one :class:`AlarmService` (created on first use)."""
    existing = services.extras.get("alarms")
    if isinstance(existing, AlarmService):
        return existing
    created = AlarmService(services)
    services.extras["alarms"] = created
    return created
