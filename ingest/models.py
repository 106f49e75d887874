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


class ReadGrant(Base):
    """A reason for reading an original, stated once in a request body, standing for it in an
    address the console cannot send a header with (a download, the player's ``<video src>``): the
    address carries only the grant's token (only its SHA-256 is kept here), never the reason.
    Kept to one item, one person and the sign-in that asked; short-lived; a download's is used once
    (``ingest.read_grants``). Forgotten by the personal-data sweep once expired."""

    __tablename__ = "read_grants"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[int] = mapped_column(Integer)
    sign_in: Mapped[str] = mapped_column(String(64))
    use: Mapped[str] = mapped_column(String(16))  # download (once) | play (ranges, until it expires)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # HMAC under a secret the database does not hold, over all but ``used_at`` (``read_grants``).
    seal: Mapped[str | None] = mapped_column(String(64), default=None)
