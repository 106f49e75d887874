"""The seals the service puts on rows that speak for a device or sign someone in, and their check
in ``evidence verify``.

A device row's seal (``devices.seals``), a user row's seal and a bearer token's or console
session's seal (``accounts.seals``) are HMAC-SHA256s under secrets derived from the service key,
one label each. How they are made lives here, below both domains, so the verifier recomputes them
without importing either; the tables are read as plain tables, only the columns a seal covers.
Findings name the row (a device id, a user id, or a credential's kind and user), never a token,
digest, password hash or key.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .entries import ChainReport, Problem
from .keys import ServiceKey

DEVICE_SEALS = "device seals v1"  # the label of the service key's secret for device seals
CREDENTIAL_SEALS = "credential seals v1"  # the label of the service key's secret for credential seals
USER_SEALS = "user seals v1"  # the label of the service key's secret for user seals
TOKEN, SESSION = "token", "session"

SealedValues = tuple[str, str, str, str | None, str | None, str | None, str | None, str | None]
# A user row's: id, username, role, site, password hash, and "active" or "inactive".
UserValues = tuple[str, str, str, str | None, str, str]


def row_seal(secret: bytes, values: tuple[str | None, ...]) -> str:
    """The seal of a row with these values, in order, hex."""
    # None and "" differ: each value is marked present ("=") or absent ("-").
    message = "\x00".join("-" if v is None else "=" + v for v in values).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def device_seal(secret: bytes, values: SealedValues) -> str:
    """The seal of a device row with these values (id, kind, status, public key, token digest,
    broker password hash, site, assigned staff), hex."""
    return row_seal(secret, values)


def user_values(
    user_id: int, username: str, role: str, site: str | None, password_hash: str, active: bool
) -> UserValues:
    """What a user row's seal covers, in order: everything that decides what the person may do
    (who they are, their role and site, the password that proves them, whether they may at all)."""
    return (str(user_id), username, role, site, password_hash, "active" if active else "inactive")


def user_seal(secret: bytes, values: UserValues) -> str:
    """The seal of a user row with these values (:func:`user_values`), hex."""
    return row_seal(secret, values)


def credential_seal(secret: bytes, kind: str, token_hash: str, user_id: int, expires_at: datetime) -> str:
    """The seal of a ``kind`` (:data:`TOKEN` or :data:`SESSION`) row with these values, hex."""
    expires = expires_at.astimezone(UTC).isoformat(timespec="microseconds")
    message = f"{kind}\x00{token_hash}\x00{user_id}\x00{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


_DEVICES = table(
    "devices",
    column("id"),
    column("kind"),
    column("status"),
    column("public_key"),
    column("token_hash"),
    column("broker_password_hash"),
    column("site"),
    column("assigned_staff_id"),
    column("seal"),
)
_USERS = table(
    "users",
    column("id"),
    column("username"),
    column("role"),
    column("site"),
    column("password_hash"),
    column("active"),
    column("seal"),
)
_TOKENS = table(
    "api_tokens",
    column("token_hash"),
    column("user_id"),
    column("expires_at", UTCDateTime),
    column("revoked"),
    column("seal"),
)
_SESSIONS = table(
    "user_sessions",
    column("token_hash"),
    column("user_id"),
    column("expires_at", UTCDateTime),
    column("ended_at"),
    column("seal"),
)


def _holds(expected: str, seal: str | None) -> bool:
    return bool(seal) and hmac.compare_digest(expected, seal or "")


def check_device_seals(session: Session, report: ChainReport, secret: bytes) -> None:
    """A finding for each device row whose seal does not hold; a note counting those not sealed yet."""
    c = _DEVICES.c
    q = select(
        c.id,
        c.kind,
        c.status,
        c.public_key,
        c.token_hash,
        c.broker_password_hash,
        c.site,
        c.assigned_staff_id,
        c.seal,
    ).order_by(c.id)
    unsealed = 0
    for *row, seal in session.execute(q):
        values: SealedValues = (str(row[0]), str(row[1]), str(row[2]), *row[3:])
        if not seal:
            unsealed += 1
        elif not _holds(device_seal(secret, values), seal):
            report.problems.append(
                Problem(
                    "device_seal_broken",
                    f"device {values[0]}",
                    "its row's seal does not hold: its credentials, status, site or assigned staff were "
                    "written by someone other than the service",
                )
            )
    if unsealed:
        report.notes.append(
            f"{unsealed} device(s) have no seal yet (enrolled before seals), so not checked: "
            "`evidence seal-devices` lists them and seals them"
        )


def check_user_seals(session: Session, report: ChainReport, secret: bytes) -> None:
    """A finding for each user row whose seal does not hold (named by id and username, never its
    password hash); a note counting those not sealed yet."""
    c = _USERS.c
    q = select(c.id, c.username, c.role, c.site, c.password_hash, c.active, c.seal).order_by(c.id)
    unsealed = 0
    for user_id, username, role, site, password_hash, active, seal in session.execute(q):
        if not seal:
            unsealed += 1
            continue
        values = user_values(int(user_id), str(username), str(role), site, str(password_hash), bool(active))
        if not _holds(user_seal(secret, values), seal):
            report.problems.append(
                Problem(
                    "user_seal_broken",
                    f"user id {user_id} ({username})",
                    "its row's seal does not hold: its name, role, site, password or active state were "
                    "written by someone other than the service (it signs nobody in)",
                )
            )
    if unsealed:
        report.notes.append(
            f"{unsealed} user(s) have no seal yet (made before seals), so they sign nobody in and are "
            "not checked: `evidence seal-users` lists them and seals those the custody record bears out"
        )


def check_credential_seals(session: Session, report: ChainReport, secret: bytes, now: datetime) -> None:
    """A finding for each bearer token or console session, not revoked or ended and not expired,
    whose seal is missing or wrong; named by its kind and user only."""
    t, s = _TOKENS.c, _SESSIONS.c
    tokens = select(t.token_hash, t.user_id, t.expires_at, t.seal).where(
        t.revoked.is_(False), t.expires_at > now
    )
    sessions = select(s.token_hash, s.user_id, s.expires_at, s.seal).where(
        s.ended_at.is_(None), s.expires_at > now
    )
    for kind, q in ((TOKEN, tokens), (SESSION, sessions)):
        for digest, user_id, expires_at, seal in session.execute(q):
            if _holds(credential_seal(secret, kind, str(digest), int(user_id), expires_at), seal):
                continue
            report.problems.append(
                Problem(
                    "credential_seal_broken",
                    f"{'bearer token' if kind == TOKEN else 'console session'} of user id {user_id}",
                    f"its row's seal is {'missing' if not seal else 'wrong'}: it was written or changed "
                    "by someone other than the service",
                )
            )


def check_row_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """Device rows', users', bearer tokens' and console sessions' seals (see the module's docstring)."""
    check_device_seals(session, report, key.derived_secret(DEVICE_SEALS))
    check_user_seals(session, report, key.derived_secret(USER_SEALS))
    check_credential_seals(session, report, key.derived_secret(CREDENTIAL_SEALS), datetime.now(UTC))
