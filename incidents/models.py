"""Tables of the incident domain: incidents, what is linked to them, who investigates, and legal holds."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

CATEGORIES = (
    "physical_assault",
    "verbal_abuse",
    "threatening_behaviour",
    "sexual_assault",
    "hate_incident",
    "theft",
    "criminal_damage",
    "lone_worker_alarm",
    "other",
)
STATUSES = ("open", "under_investigation", "referred_to_police", "closed")
INVOLVEMENTS = ("victim", "witness", "wearer", "responder", "other")
LINK_KINDS = ("evidence", "alarm")
HOLD_TARGETS = ("evidence", "incident")


def new_id() -> str:
    return str(uuid.uuid4())


class Incident(Base):
    """One incident record. ``wearer`` and the window say which camera footage belongs to it automatically."""

    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    reference: Mapped[str] = mapped_column(String(20), unique=True)  # INC-2026-000123
    year: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(24), default="open", index=True)
    outcome: Mapped[str | None] = mapped_column(Text, default=None)
    title: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    site: Mapped[str] = mapped_column(String(64), index=True)
    ward: Mapped[str | None] = mapped_column(String(128), default=None)
    address: Mapped[str | None] = mapped_column(Text, default=None)
    # The staff number whose footage and alarms belong to this incident during [window_start, window_end].
    wearer: Mapped[str | None] = mapped_column(String(64), default=None)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    opened_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The service's seal over id, site, wearer and window (``chain_of_custody.incident_seals``): an
    # incident whose seal does not hold is read by no site's managers, and its window links nothing.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (
        Index("ix_incidents_year_number", "year", "number", unique=True),
        Index("ix_incidents_wearer_window", "wearer", "window_start", "window_end"),
        Index("ix_incidents_occurred_at_reference", "occurred_at", "reference"),  # the list, newest first
    )


class IncidentCounter(Base):
    """The last reference number issued in a year; its row lock makes numbers sequential without gaps."""

    __tablename__ = "incident_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer, default=0)


class IncidentStaff(Base):
    """A member of staff involved in an incident (their staff group feeds the anonymised statistics)."""

    __tablename__ = "incident_staff"

    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), primary_key=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"), primary_key=True)
    involvement: Mapped[str] = mapped_column(String(16), default="victim")


class IncidentAssignment(Base):
    """An investigator assigned to an incident; ended assignments are kept, with who ended them."""

    __tablename__ = "incident_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_by: Mapped[str] = mapped_column(String(128))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    unassigned_by: Mapped[str | None] = mapped_column(String(128), default=None)
    unassigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # HMAC over what it grants, under a secret the database does not hold (``incidents.grants``).
    seal: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (
        Index(
            "uq_incident_assignments_active",
            "incident_id",
            "user_id",
            unique=True,
            sqlite_where=text("unassigned_at IS NULL"),
            postgresql_where=text("unassigned_at IS NULL"),
        ),
    )


class IncidentLink(Base):
    """An evidence item or alarm linked to an incident, by hand or by rule, with the reason; unlinks are kept."""

    __tablename__ = "incident_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    target_kind: Mapped[str] = mapped_column(String(16))  # evidence | alarm
    target_id: Mapped[str] = mapped_column(String(64))
    linked_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    unlinked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    unlink_reason: Mapped[str | None] = mapped_column(Text, default=None)
    unlinked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        Index("ix_incident_links_target", "target_kind", "target_id"),
        Index(
            "uq_incident_links_active",
            "incident_id",
            "target_kind",
            "target_id",
            unique=True,
            sqlite_where=text("unlinked_at IS NULL"),
            postgresql_where=text("unlinked_at IS NULL"),
        ),
    )


class IncidentEvent(Base):
    """A line of the incident's own history (created, changed, assigned, linked...), for its timeline."""

    __tablename__ = "incident_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON


class LegalHold(Base):
    """A legal hold on one evidence item or on everything linked to an incident; kept after release."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(16))  # evidence | incident
    target_id: Mapped[str] = mapped_column(String(36))
    reason: Mapped[str] = mapped_column(Text)
    placed_by: Mapped[str] = mapped_column(String(128))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(128), default=None)
    release_reason: Mapped[str | None] = mapped_column(Text, default=None)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (Index("ix_legal_holds_target", "target_kind", "target_id"),)


class ExhibitReference(Base):
    """An evidence item's exhibit reference in one incident (``JS/1``: its producer's initials and
    their next number in that incident), given once and never given to another item: the row stays
    when the item is unlinked, so a number is never reused, and a relinked item gets its own back."""

    __tablename__ = "exhibit_references"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    item_id: Mapped[str] = mapped_column(String(36), index=True)
    reference: Mapped[str] = mapped_column(String(64))
    series: Mapped[str] = mapped_column(String(16))  # what the numbering counts within (the initials)
    number: Mapped[int] = mapped_column(Integer)
    producer_kind: Mapped[str] = mapped_column(String(16))  # staff (the wearer), user, service
    producer_id: Mapped[str] = mapped_column(String(128))
    producer_name: Mapped[str] = mapped_column(String(128))
    assigned_by: Mapped[str] = mapped_column(String(128))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("uq_exhibit_references_item", "incident_id", "item_id", unique=True),
        Index("uq_exhibit_references_reference", "incident_id", "reference", unique=True),
        Index("uq_exhibit_references_number", "incident_id", "series", "number", unique=True),
    )
