"""The seals the service puts on rows that speak for a device or sign someone in, and their check
in ``evidence verify``.

A device row's seal (``devices.seals``) and a bearer token's or console session's seal
(``accounts.seals``) are HMAC-SHA256s under secrets derived from the service key. How they are made
lives here, below both domains, so the verifier recomputes them without importing either; the
tables are read as plain tables, only the columns a seal covers. Findings name the row (a device
id, or a credential's kind and user), never a token, digest or key.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .entries import ChainReport, Problem

DEVICE_SEALS = "device seals v1"  # the label of the service key's secret for device seals
CREDENTIAL_SEALS = "credential seals v1"  # the label of the service key's secret for credential seals
TOKEN, SESSION = "token", "session"

SealedValues = tuple[str, str, str, str | None, str | None, str | None, str | None, str | None]


def device_seal(secret: bytes, values: SealedValues) -> str:
    """The seal of a device row with these values (id, kind, status, public key, token digest,
    broker password hash, site, assigned staff), hex."""
    # None and "" differ: each value is marked present ("=") or absent ("-").
    message = "\x00".join("-" if v is None else "=" + v for v in values).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


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


def check_row_seals(
    session: Session, report: ChainReport, device_secret: bytes, credential_secret: bytes
) -> None:
    """Device rows', bearer tokens' and console sessions' seals (see the module's docstring)."""
    check_device_seals(session, report, device_secret)
    check_credential_seals(session, report, credential_secret, datetime.now(UTC))
