"""Tables of lone-worker alarms: alarms, visits, the device events behind them, the outbox and the
change feed the control room's live stream reads. (Each device's state row, with its replay window,
is the device registry's: ``devices.models.LoneWorkerState``.)

Everything several service instances share lives here, so any instance can take over any work:
deadlines are columns the clock claims with ``FOR UPDATE SKIP LOCKED``, effects wait in the outbox
until sent, and the change feed has one ordered id per change (rows are written under a lock held
to the commit, so ids become visible in order on PostgreSQL too; see ``alarms.staging``).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

# An id column that is a 64-bit integer on PostgreSQL and SQLite's rowid alias (autoincrementing) there.
SerialId = BigInteger().with_variant(Integer, "sqlite")


def new_id() -> str:
    return str(uuid.uuid4())


class AlarmRecord(Base):
    """One alarm, raised by a device (``source_event_id``) or by the service (``dedupe_key``).

    The lifecycle columns mirror :class:`alarms.rules.Alarm`; ``next_deadline`` is when the clock
    must look at it again without any event (amber timer, acknowledgement due).
    """

    __tablename__ = "alarms"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    wearer: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    site: Mapped[str | None] = mapped_column(String(64), default=None)
    kind: Mapped[str] = mapped_column(String(20))
    severity: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source_event_id: Mapped[str | None] = mapped_column(String(36), default=None, unique=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), default=None, unique=True)
    reason: Mapped[str | None] = mapped_column(String(32), default=None)
    visit_id: Mapped[str | None] = mapped_column(String(64), default=None)
    amber_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    red_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ack_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), default=None)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    escalated_by: Mapped[str | None] = mapped_column(String(128), default=None)
    escalation_reason: Mapped[str | None] = mapped_column(String(20), default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    condition_cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(128), default=None)
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    resolution_note: Mapped[str | None] = mapped_column(Text, default=None)
    incident_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    next_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None, index=True)
    # What the device said with it.
    note: Mapped[str | None] = mapped_column(Text, default=None)
    lat: Mapped[float | None] = mapped_column(Float, default=None)
    lon: Mapped[float | None] = mapped_column(Float, default=None)
    accuracy_m: Mapped[float | None] = mapped_column(Float, default=None)
    battery: Mapped[int | None] = mapped_column(Integer, default=None)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    # Evidence and the incident it belongs to.
    evidence_item_id: Mapped[str | None] = mapped_column(ForeignKey("evidence_items.id"), default=None)
    voice_memo_item_id: Mapped[str | None] = mapped_column(ForeignKey("evidence_items.id"), default=None)
    incident_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    # A provisional alarm: the alarm row, the feed and the device's ack are committed, but the payload's
    # evidence item, the ``alarm_raised`` custody entry and the incident are still to come (it is
    # made whole later, see ``alarms.lifecycle``).
    provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    # The service's seal over id, site, wearer, device and voice memo (``chain_of_custody.alarm_seals``):
    # an alarm whose seal does not hold reaches no site's readers, its memo nobody.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)
    # The service's seal over the lifecycle columns and ``next_deadline``, written with them
    # (``chain_of_custody.lifecycle_seals``): an alarm whose seal does not hold is taken at its
    # custody record, so its escalation is not silenced.
    lifecycle_seal: Mapped[str | None] = mapped_column(String(64), default=None)
    # The service's seal over ``provisional``, the note, the position and the payload's item
    # (``chain_of_custody.raise_seals``): an alarm whose seal does not hold shows none of them and is
    # put back to its custody record and its device's message.
    raise_seal: Mapped[str | None] = mapped_column(String(64), default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_alarms_device_status", "device_id", "status"),
        Index("ix_alarms_provisional", "provisional"),
        Index("ix_alarms_raised_at_id", "raised_at", "id"),  # the list, newest first (``alarms.queries``)
    )


class LoneWorkerEvent(Base):
    """Every accepted alarm or check-in message, with the exact bytes received.

    The primary key is the device's event id, so one event is acted on once however often it is
    delivered (the replay state only remembers the last few). A cancel whose alarm has not arrived
    yet waits here (``alarm_id`` empty) and is applied when the alarm comes.
    """

    __tablename__ = "lone_worker_events"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # alarm | checkin
    action: Mapped[str] = mapped_column(String(16))  # raise | cancel | start | end
    kind: Mapped[str | None] = mapped_column(String(20), default=None)
    ref_event_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    visit_id: Mapped[str | None] = mapped_column(String(64), default=None)
    alarm_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    topic: Mapped[str] = mapped_column(String(160))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    evidence_item_id: Mapped[str | None] = mapped_column(ForeignKey("evidence_items.id"), default=None)
    # The device's key (base64) the signature was verified with when the event was accepted: the
    # evidence item made later names this one, even if the device's key has changed since.
    device_public_key: Mapped[str | None] = mapped_column(String(64), default=None)
    # The service's seal over its receipt of these bytes under that key, the one then in force
    # (``chain_of_custody.raise_seals.receipt_seal``): all a key since replaced vouches for.
    receipt_seal: Mapped[str | None] = mapped_column(String(64), default=None)


class LoneWorkerEventSetAside(Base):
    """A row found in ``lone_worker_events`` holding a device message's event id that is not the
    service's receipt of it (its receipt seal does not hold: written or edited behind the service's
    back), moved here as it stood when the genuine message came (``alarms.set_aside``). Kept as
    evidence of the tampering, never acted on; an ``event_set_aside`` custody entry names it."""

    __tablename__ = "lone_worker_events_set_aside"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)  # the id it held
    device_id: Mapped[str] = mapped_column(String(64))  # the device it named
    set_aside_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of ``raw`` as found
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    columns: Mapped[str] = mapped_column(Text)  # JSON: every other column, as found


class AlarmSetAside(Base):
    """An alarm row found holding the event id of a device's raise that the service did not raise
    from it (its keys are no seal's nor its custody record's: written or edited behind the service's
    back), found when the raise came (``alarms.alarm_keys``). A row that is no alarm of the
    service's is moved here as it stood (``moved``); one that is (its id sealed or recorded) stays
    where it is with its key put back, and is copied here as it was found. Kept as evidence, never
    acted on; an ``alarm_set_aside`` custody entry names it."""

    __tablename__ = "alarms_set_aside"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    alarm_id: Mapped[str] = mapped_column(String(36), index=True)  # the id it held
    # the device's event id it held; None for a row naming none (as the service's own timers' do)
    source_event_id: Mapped[str | None] = mapped_column(String(36), default=None)
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)  # the device it named
    moved: Mapped[bool] = mapped_column(Boolean)  # moved out of ``alarms`` (else its key put back)
    set_aside_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of ``columns`` as stored
    columns: Mapped[str] = mapped_column(Text)  # JSON: every column, as found


class LoneWorkerVisit(Base):
    """A lone visit between a start and an end check-in; ``due_at`` is when it counts as missed."""

    __tablename__ = "lone_worker_visits"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    visit_id: Mapped[str] = mapped_column(String(64))
    wearer: Mapped[str | None] = mapped_column(String(64), default=None)
    # The site of its device when the visit began: its alarms (missed check-in, its device silent on
    # it) are raised there, wherever the device is enrolled since. None for a device of no site, and
    # for a visit begun before it was recorded (``alarms.visits``: taken from its custody record).
    site: Mapped[str | None] = mapped_column(String(64), default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    expected_end: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None, index=True)
    missed_alarm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    start_event_id: Mapped[str | None] = mapped_column(String(36), default=None)
    end_event_id: Mapped[str | None] = mapped_column(String(36), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    # The service's seal over device, visit id, wearer, missed check-in alarm, expected end, end and
    # site (``chain_of_custody.visit_seals``): a visit whose seal does not hold lends no wearer nor
    # site, and is due by its custody record.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (UniqueConstraint("device_id", "visit_id", name="uq_lone_worker_visits_device_visit"),)


class AlarmOutbox(Base):
    """An effect to perform once its transaction committed: an MQTT publish or a webhook call.

    Written in the same transaction as the change that caused it; a relay sends it and marks it
    sent, and any instance's relay picks up what a crashed one left behind.
    """

    __tablename__ = "alarm_outbox"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))  # mqtt | webhook
    target: Mapped[str] = mapped_column(Text)  # topic or URL
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    qos: Mapped[int] = mapped_column(Integer, default=1)
    alarm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # What the message is, when it is due and when it was sent, as the service wrote them
    # (``chain_of_custody.outbox_seals``): a row marked sent, put off or rewritten by SQL is found.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)
    due_seal: Mapped[str | None] = mapped_column(String(96), default=None)
    sent_seal: Mapped[str | None] = mapped_column(String(96), default=None)

    __table_args__ = (
        Index(
            "ix_alarm_outbox_due",
            "channel",
            "next_attempt_at",
            sqlite_where=text("sent_at IS NULL"),
            postgresql_where=text("sent_at IS NULL"),
        ),
    )


class AlarmChange(Base):
    """One change of one alarm, in the order the control room must see them (the SSE stream's source)."""

    __tablename__ = "alarm_changes"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    alarm_id: Mapped[str] = mapped_column(String(36), index=True)
    change: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[str] = mapped_column(Text)  # JSON: the change and the alarm as it now stands


class DeadLetter(Base):
    """A device message the service could not process after retries (a fault of ours, kept for repair)."""

    __tablename__ = "lone_worker_dead_letters"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text)


class LoneWorkerPosition(Base):
    """Where a device was while it had an alarm open: the trail the control room follows on the map.

    Sampled from the device's state by the clock's pass (``alarms.trails``: not written by each device
    message, so the alarm path does no extra work); one row per device and fix time.
    """

    __tablename__ = "lone_worker_positions"

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    accuracy_m: Mapped[float | None] = mapped_column(Float, default=None)

    __table_args__ = (
        UniqueConstraint("device_id", "at", name="uq_lone_worker_positions_device_at"),
        Index("ix_lone_worker_positions_at", "at"),  # forgotten by age (``alarms.trails``)
    )
