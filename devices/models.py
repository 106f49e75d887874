"""Tables of the device registry: staff, docks, cameras and lone-worker units, and each lone-worker
unit's state row (its replay window and presence, and what the alarm side watches about it)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

DEVICE_KINDS = ("dock", "camera", "lone_worker")


class StaffMember(Base):
    """A member of staff who wears a camera or carries a lone-worker device (by staff number)."""

    __tablename__ = "staff"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # staff number, e.g. S-1042
    name: Mapped[str] = mapped_column(String(128))
    staff_group: Mapped[str] = mapped_column(
        String(64), default="other"
    )  # nurse, porter, paramedic, security...
    site: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # HMAC under a secret the database does not hold, over the staff number and site
    # (``chain_of_custody.reach_seals``): a row whose seal does not hold widens nobody's reach.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)


class Device(Base):
    """A dock (authenticates with a token), a camera or a lone-worker unit (sign with Ed25519 keys)."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # dock id or serial number
    kind: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    site: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, disabled
    public_key: Mapped[str | None] = mapped_column(String(64), default=None)  # base64 raw Ed25519
    token_hash: Mapped[str | None] = mapped_column(String(64), default=None)  # docks: SHA-256 of the secret
    broker_password_hash: Mapped[str | None] = mapped_column(
        Text, default=None
    )  # lone-worker: mosquitto hash
    assigned_staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id"), default=None, index=True)
    # HMAC under a secret the database does not hold, over the id, kind, status, credentials, site
    # and assigned staff (``devices.seals``): a row altered or planted by SQL is an unknown device.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class LoneWorkerState(Base):
    """One lone-worker device's replay window, presence, battery and position, and the conditions the
    alarm side watches (``battery_low``, ``active_visit_id``, ``offline_alarm_id``, ``offline_due_at``).

    ``version`` is bumped by every replay-state write: an instance writes the state it verified
    against only if nobody wrote in between (compare-and-set), else it reloads and verifies again.
    Enrolment starts the replay window afresh (``devices.service.enrol_lone_worker``).
    """

    __tablename__ = "lone_worker_states"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    replay_state: Mapped[str] = mapped_column(Text, default="")
    # ``replay_state`` as the service wrote it, with an HMAC (``chain_of_custody.replay_seals``), in
    # the same statement: an event id or a highest sequence written into it by SQL silences nothing.
    replay_seal: Mapped[str | None] = mapped_column(String(64), default=None)
    presence: Mapped[str] = mapped_column(String(16), default="unknown")  # online | offline | unknown
    session: Mapped[str | None] = mapped_column(String(64), default=None)
    presence_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    battery: Mapped[int | None] = mapped_column(Integer, default=None)
    battery_low: Mapped[bool] = mapped_column(Boolean, default=False)
    lat: Mapped[float | None] = mapped_column(Float, default=None)
    lon: Mapped[float | None] = mapped_column(Float, default=None)
    accuracy_m: Mapped[float | None] = mapped_column(Float, default=None)
    position_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    active_visit_id: Mapped[str | None] = mapped_column(String(64), default=None)
    offline_alarm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # When the device counts as silent if nothing arrives (checked against visits and open alarms then).
    # Not indexed, like every column a device message writes: each message of every device updates
    # this row, and an update that changes no indexed column stays on its page (a HOT update, room
    # left by the table's fill factor of 50, set by migration 0008), so the row's old versions are
    # pruned without VACUUM and its primary key entry never multiplies. The clock scans for silent
    # devices instead.
    offline_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # ``last_seen_at`` as the service wrote it, with an HMAC (``chain_of_custody.heard_seals``), in
    # the same statement: the offline alarm counts from it, so moving ``last_seen_at`` forward by
    # SQL silences nothing.
    heard_seal: Mapped[str | None] = mapped_column(String(96), default=None)
    # ``battery_low`` and ``active_visit_id`` as the service wrote them, with an HMAC
    # (``chain_of_custody.watched_seals``): changed by SQL, they hide nothing.
    watched_seal: Mapped[str | None] = mapped_column(String(64), default=None)
    # Since when the device has sent beyond its fair share of the alarm consumer (its rate or its
    # queue, ingest.device_share), None while it keeps to it: a device flooding the service.
    over_share_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
