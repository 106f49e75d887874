"""Tables of the device registry: staff, docks, cameras and lone-worker units."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
