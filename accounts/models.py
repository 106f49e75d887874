"""Tables for user accounts and their bearer tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, column_property, mapped_column

from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import latest_user_entry
from storage.db import Base, UTCDateTime, utcnow

ROLES = ("admin", "security_manager", "investigator", "operator", "auditor")
# The roles that see only their own site's rows (``access.sites_seen``).
SITE_SCOPED_ROLES = ("security_manager",)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(32))
    site: Mapped[str | None] = mapped_column(String(64), default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # HMAC under a secret the database does not hold, over what decides what the person may do
    # (``accounts.seals``): a row without one that holds signs nobody in.
    seal: Mapped[str | None] = mapped_column(String(64), default=None)
    # The seq of the latest custody entry about the user (``chain_of_custody.row_seals.user_subject``),
    # read in every statement that loads the row: the seal covers it, so a copy of the row taken
    # before a later change (a deactivation, a lower role, a new password) no longer fits.
    custody_seq: Mapped[int | None] = column_property(latest_user_entry(CustodyEntry.__table__, id))


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, so a database dump gives no one access."""

    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # HMAC under a secret the database does not hold, over the digest, user and expiry (``accounts.seals``).
    seal: Mapped[str | None] = mapped_column(String(64), default=None)


class UserSession(Base):
    """A signed-in browser. Only the SHA-256 of the cookie's secret is kept (like a bearer token), so
    a database dump signs nobody in; ``last_seen_at`` drives the idle timeout, ``expires_at`` caps
    the session's whole life, ``ended_at`` is set by sign-out and by changes to the account."""

    __tablename__ = "user_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    seal: Mapped[str | None] = mapped_column(String(64), default=None)  # as ``ApiToken.seal``
    # ``last_seen_at`` as the service last wrote it, with an HMAC (``accounts.sessions``): the idle
    # timeout counts from it, so moving ``last_seen_at`` forward by SQL revives no idle session.
    activity_seal: Mapped[str | None] = mapped_column(String(96), default=None)

    __table_args__ = (Index("ix_user_sessions_expires_at", "expires_at"),)  # forgotten by age


class SignInFailures(Base):
    """Failed sign-ins of one username from one client address (``accounts.throttle``), shared by every
    replica. Both are kept only as keyed SHA-256 digests: a password typed into the username field
    never lands in the database."""

    __tablename__ = "sign_in_failures"

    username_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)  # seconds since 1970
    updated: Mapped[float] = mapped_column(Float, index=True)  # seconds since 1970


class SignInBucket(Base):
    """A token bucket of failed sign-ins, per client address (``scope`` client) or per username
    (``scope`` account); the key is a digest as in :class:`SignInFailures`."""

    __tablename__ = "sign_in_buckets"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float, index=True)  # seconds since 1970, when last refilled
