"""Browser sessions: sign-in with a cookie instead of a bearer token, for the web console.

The cookie holds a random secret; the database keeps only its SHA-256 (as for bearer tokens), so a
dump of the table signs nobody in. A session ends when the person does nothing for the idle
timeout, at its absolute expiry, at sign-out, and whenever their password, role or active flag
changes (with their bearer tokens, see ``accounts.service.update_user``).

The CSRF token of a session is derived from its secret (a second, independent SHA-256), so it
needs no column and only a holder of the cookie's secret (the page the service rendered) knows it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_
from sqlalchemy.orm import Session

from chain_of_custody.row_seals import activity_mark, activity_of
from storage.digests import secret_digest
from storage.settings import ConsoleSettings

from .ends import SESSION_LOOKUP, standing_row
from .models import User, UserSession
from .recent_sign_ins import forget_ended
from .seals import SESSION, SignInSeals, credential_seal, user_seal_holds
from .service import Principal, sign_in_mark, signed_in_as

log = logging.getLogger(__name__)

# A session's last activity is written at most this often (a page and its data calls come together).
TOUCH_EVERY = timedelta(seconds=20)


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lives, from the settings (``console_idle_minutes``, ``console_session_hours``)."""

    idle: timedelta
    absolute: timedelta

    @classmethod
    def from_settings(cls, settings: ConsoleSettings) -> SessionPolicy:
        return cls(
            idle=timedelta(minutes=settings.console_idle_minutes),
            absolute=timedelta(hours=settings.console_session_hours),
        )


@dataclass(frozen=True)
class BrowserSession:
    """A live session as the console needs it: who, their CSRF token, and when it will end if idle."""

    principal: Principal
    csrf_token: str
    idle_ends_at: datetime
    expires_at: datetime


def csrf_token_for(secret: str) -> str:
    """The CSRF token of the session whose cookie holds ``secret``."""
    return hashlib.sha256(b"csrf\x00" + secret.encode()).hexdigest()


def csrf_matches(secret: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token_for(secret), str(presented))


def start_session(
    session: Session, user: User, policy: SessionPolicy, seal_key: bytes, now: datetime | None = None
) -> tuple[str, BrowserSession]:
    """A new session for a user who just proved their password, its row sealed with ``seal_key``
    (``accounts.seals``); returns the cookie's secret."""
    now = now or datetime.now(UTC)
    secret = secrets.token_urlsafe(32)
    digest, expires = secret_digest(secret), now + policy.absolute
    row = UserSession(
        token_hash=digest,
        user_id=user.id,
        created_at=now,
        last_seen_at=now,
        expires_at=expires,
        seal=credential_seal(seal_key, SESSION, digest, user.id, expires),
        activity_seal=activity_mark(seal_key, digest, now),
    )
    session.add(row)
    session.flush()
    principal = Principal(
        user.id,
        user.username,
        user.role,
        user.site,
        sign_in_mark("console", row.token_hash),
        credential=(SESSION, row.token_hash),
    )
    return secret, BrowserSession(
        principal, csrf_token_for(secret), min(now + policy.idle, row.expires_at), row.expires_at
    )


@dataclass(frozen=True)
class SessionChange:
    """What a sign-in by cookie found to write, made apart from the read (:func:`touch_or_end`): the
    session's idle end, or the person's activity (at most every :data:`TOUCH_EVERY`)."""

    token_hash: str
    at: datetime
    ended: bool  # ended by its idle timeout; else touched


def read_session(
    session: Session,
    secret: str,
    policy: SessionPolicy,
    seals: SignInSeals,
    *,
    activity: bool = True,
    now: datetime | None = None,
) -> tuple[BrowserSession | None, SessionChange | None]:
    """The live session a cookie names, or None (unknown, ended, idle too long, expired, user
    disabled, or a session's or user's row whose seal does not hold: planted or altered in the
    database), and what is to be written of it, or None. It only reads, so it runs in a
    ``Database.reading`` block and a request waits for no writer to sign in.

    ``activity``: the request is something the person did, so the idle clock restarts. The live
    alarm stream is not: a board left open must still time out when nobody is at it.
    """
    now = now or datetime.now(UTC)
    if not secret or len(secret) > 128:
        return None, None
    digest = secret_digest(secret)
    row = standing_row(session, SESSION_LOOKUP, SESSION, digest, seals.credentials, now)
    if row is None:
        return None, None
    # The idle clock runs from the last activity the service sealed (``activity_seal``), or from the
    # row's own if that is earlier: a ``last_seen_at`` moved forward in the database revives nothing.
    sealed_seen = activity_of(seals.credentials, row.token_hash, row.activity_seal)
    if sealed_seen is None:
        log.warning("credential refused: its last activity is not sealed", extra={"credential": SESSION})
        return None, None
    last_seen = min(row.last_seen_at, sealed_seen)
    if last_seen + policy.idle <= now:
        return None, SessionChange(row.token_hash, now, ended=True)
    user = session.get(User, row.user_id)
    if user is None or not user.active or not user_seal_holds(seals.users, user, seals.older_users):
        return None, None
    change = None
    if activity and now - last_seen >= TOUCH_EVERY:
        change, last_seen = SessionChange(row.token_hash, now, ended=False), now
    mark = sign_in_mark("console", row.token_hash)
    principal = signed_in_as(session, seals, user, mark, (SESSION, row.token_hash))
    idle_ends = min(last_seen + policy.idle, row.expires_at)
    return BrowserSession(principal, csrf_token_for(secret), idle_ends, row.expires_at), change


def touch_or_end(session: Session, change: SessionChange, seals: SignInSeals) -> None:
    """Write what :func:`read_session` found, in a write transaction: the idle end, or the activity
    sealed again. A session ended meanwhile (sign-out, an account change) stays ended, and a touch
    never moves the activity back (another request's later one stands)."""
    row = session.get(UserSession, change.token_hash, with_for_update=True)
    if row is None or row.ended_at is not None:
        return
    if change.ended:
        row.ended_at = change.at
    elif row.last_seen_at < change.at:
        row.last_seen_at = change.at
        row.activity_seal = activity_mark(seals.credentials, row.token_hash, change.at)


def end_session(session: Session, secret: str, now: datetime | None = None) -> str | None:
    """Sign-out: the cookie's session ends at once; its digest if there was one to end (for its
    ``credential_ended`` entry, ``accounts.ends``)."""
    now = now or datetime.now(UTC)
    row = session.get(UserSession, secret_digest(secret)) if secret else None
    if row is None or row.ended_at is not None:
        return None
    row.ended_at = now
    forget_ended(session, SESSION, [row.token_hash])
    return row.token_hash


def forget_sessions(session: Session, before: datetime) -> int:
    """Delete the rows of sessions that ended or expired before ``before`` (no session that could
    still be used is touched); how many went."""
    result = session.execute(
        delete(UserSession).where(or_(UserSession.ended_at < before, UserSession.expires_at < before))
    )
    return int(getattr(result, "rowcount", 0) or 0)
