"""Account logic: password hashing (argon2), lock-out after repeated failures, token issue and lookup."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ROLES, ApiToken, User

_hasher = PasswordHasher()


class AccountError(Exception):
    """A refusal with a reason safe to show the person (never which of user or password was wrong)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user id, name, role and site, as the access rules need them."""

    user_id: int
    username: str
    role: str
    site: str | None

    @property
    def actor(self) -> str:
        return f"user:{self.username}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(
    session: Session, username: str, password: str, role: str, *, full_name: str = "", site: str | None = None
) -> User:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if len(password) < 12:
        raise AccountError("password must be at least 12 characters")
    if session.scalar(select(User).where(User.username == username)):
        raise AccountError(f"user {username!r} exists")
    user = User(
        username=username, password_hash=_hasher.hash(password), role=role, full_name=full_name, site=site
    )
    session.add(user)
    session.flush()
    return user


def authenticate(
    session: Session,
    username: str,
    password: str,
    *,
    max_failures: int,
    lockout: timedelta,
    now: datetime | None = None,
) -> User:
    """Check a password; lock the account for ``lockout`` after ``max_failures`` consecutive failures."""
    now = now or datetime.now(UTC)
    user = session.scalar(select(User).where(User.username == username).with_for_update())
    if user is None or not user.active:
        _hasher.hash(password)  # same cost either way: no user enumeration by timing
        raise AccountError("invalid credentials")
    if user.locked_until and user.locked_until > now:
        raise AccountError("account locked after repeated failures; try later")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        user.failed_logins += 1
        if user.failed_logins >= max_failures:
            user.locked_until = now + lockout
            user.failed_logins = 0
        raise AccountError("invalid credentials") from None
    user.failed_logins = 0
    user.locked_until = None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def issue_token(session: Session, user: User, ttl: timedelta) -> tuple[str, datetime]:
    token = "evt_" + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + ttl
    session.add(ApiToken(token_hash=token_digest(token), user_id=user.id, expires_at=expires))
    return token, expires


def resolve_token(session: Session, token: str, now: datetime | None = None) -> Principal | None:
    now = now or datetime.now(UTC)
    row = session.get(ApiToken, token_digest(token))
    if row is None or row.revoked or row.expires_at <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        return None
    return Principal(user.id, user.username, user.role, user.site)
