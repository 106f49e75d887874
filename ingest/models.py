"""Tables of the intake paths: resumable dock uploads."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow


class Upload(Base):
    """One tus upload of a clip: how far it got, which S3 parts hold it, and what it became."""

    __tablename__ = "dock_uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dock_id: Mapped[str] = mapped_column(String(64), index=True)
    camera_serial: Mapped[str] = mapped_column(String(64))
    wearer: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    recorded_start: Mapped[str] = mapped_column(String(40))
    recorded_stop: Mapped[str] = mapped_column(String(40))
    camera_sha256: Mapped[str] = mapped_column(String(64), index=True)
    signature: Mapped[str] = mapped_column(String(128))
    length: Mapped[int] = mapped_column(BigInteger)
    committed: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes in finished S3 parts
    staged: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[offset, size, writer], ...] tails
    offset: Mapped[int] = mapped_column(BigInteger, default=0)  # committed + staged bytes
    part_size: Mapped[int] = mapped_column(Integer)
    parts: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[part_number, etag], ...] in offset order
    parts_issued: Mapped[int] = mapped_column(Integer, default=0)  # the last S3 part number handed out
    object_key: Mapped[str] = mapped_column(String(512))
    s3_upload_id: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open, complete, terminated, expired
    evidence_item_id: Mapped[str | None] = mapped_column(String(36), default=None)
    evidence_status: Mapped[str | None] = mapped_column(String(16), default=None)
    lease_id: Mapped[str | None] = mapped_column(String(40), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
