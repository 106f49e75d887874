"""Redaction jobs: one row per redaction version of a clip, claimed by workers under a lease."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

JOB_STATES = ("queued", "running", "done", "failed")


class RedactionJob(Base):
    """Version ``version`` of the redaction of ``source_item_id``; edits make a new version, never an overwrite."""

    __tablename__ = "redaction_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source_item_id: Mapped[str] = mapped_column(ForeignKey("evidence_items.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    based_on_job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    requested_by: Mapped[str] = mapped_column(String(128))
    spec: Mapped[str] = mapped_column(
        Text
    )  # JSON: settings overrides, manual regions, exclusions, audio edits
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    frames_total: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result_item_id: Mapped[str | None] = mapped_column(String(36), default=None)
    record_item_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        UniqueConstraint("source_item_id", "version", name="uq_redaction_jobs_source_version"),
        Index("ix_redaction_jobs_claim", "status", "lease_until", "created_at"),
    )
