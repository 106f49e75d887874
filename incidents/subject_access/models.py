"""The table of subject access requests (one per request; its incident holds the footage)."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

SAR_STATUSES = ("open", "answered", "refused", "withdrawn")
OPEN = "open"


def new_id() -> str:
    return str(uuid.uuid4())


class SubjectAccessRequest(Base):
    """A person's request for the footage of them; answered by ``due_on`` (one calendar month)."""

    __tablename__ = "subject_access_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"))
    requester: Mapped[str] = mapped_column(String(200))
    contact: Mapped[str] = mapped_column(String(500))
    # How to recognise the requester and when they were filmed, in their own words.
    description: Mapped[str] = mapped_column(Text, default="")
    received_on: Mapped[date] = mapped_column(Date)
    due_on: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default=OPEN)
    notes: Mapped[str] = mapped_column(Text, default="")
    export_id: Mapped[str | None] = mapped_column(String(36), default=None)  # the package sent
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        Index("ix_subject_access_requests_incident_id", "incident_id", unique=True),
        Index("ix_subject_access_requests_status_due", "status", "due_on"),
    )
