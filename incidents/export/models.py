"""Tables of evidence exports: each request to build a package, and the expiring links to download it.

The package itself is an evidence item (kind ``export``) with the request's id; these rows only say
who asked, how the build is going, and who was given a link.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

EXPORT_STATUSES = ("building", "ready", "failed")


class ExportJob(Base):
    """One export request; its id becomes the package's evidence item id once it is stored."""

    __tablename__ = "export_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(36), index=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    requester_role: Mapped[str] = mapped_column(String(32))
    include_originals: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    scope: Mapped[str] = mapped_column(Text)  # JSON: the incident summary and item ids, fixed at request time
    status: Mapped[str] = mapped_column(String(16), default="building", index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[str | None] = mapped_column(Text, default=None)  # JSON: included, withheld, hashes
    media_bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    media_bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    package_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    package_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    filename: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Refreshed while the build runs, with the builder's lease (``incidents.export.jobs``): a build
    # whose builder stops is claimed again by another worker once the lease runs out.
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # HMAC over what its links hand out on, under a secret the database does not hold (``incidents.grants``).
    seal: Mapped[str | None] = mapped_column(String(64), default=None)


class ExportLink(Base):
    """A download link given to a named recipient; it expires, and it can be revoked before then."""

    __tablename__ = "export_links"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("export_jobs.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str | None] = mapped_column(Text, default=None)  # why they receive it (disclosure log)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
