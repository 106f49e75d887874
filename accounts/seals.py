"""Seals on the rows that sign someone in: bearer tokens (``api_tokens``) and console sessions
(``user_sessions``).

A row's seal is an HMAC-SHA256, under a secret derived from the service key
(``ServiceKey.derived_secret(CREDENTIAL_SEALS)``, which the database does not hold), over what the
row grants: its kind, its digest (which is also its id), its user and its expiry. A row written in
the database by anyone but the service (a token or session planted for an administrator, a genuine
one moved to another user or given a later expiry) has no seal that holds, and its look-up refuses
it as unknown. Ending a row (``revoked``, ``ended_at``) narrows what it grants, so it is not sealed.

Tokens issued before seals existed have none: ``evidence seal-tokens`` lists them and, with
``--yes``, seals them (as they stand: review the list first). Console sessions open at the upgrade
end there (migration 0029); their people sign in again.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.keys import ServiceKey
from chain_of_custody.row_seals import CREDENTIAL_SEALS, TOKEN, credential_seal
from chain_of_custody.row_seals import SESSION as SESSION  # re-exported for accounts.sessions

from .models import ApiToken, User

log = logging.getLogger(__name__)


def credential_seal_key(key: ServiceKey) -> bytes:
    """The secret seals are made with, derived from the service key for this purpose alone."""
    return key.derived_secret(CREDENTIAL_SEALS)


def seal_holds(
    secret: bytes, kind: str, token_hash: str, user_id: int, expires_at: datetime, seal: str | None
) -> bool:
    """Whether a row's seal is the one the service made for its values; a warning (naming the kind
    and user, never the credential or its digest) when it is not."""
    if seal and hmac.compare_digest(credential_seal(secret, kind, token_hash, user_id, expires_at), seal):
        return True
    log.warning(
        "credential refused: its row's seal is %s",
        "missing" if not seal else "wrong",
        extra={"credential": kind, "user_id": user_id},
    )
    return False


@dataclass(frozen=True)
class UnsealedToken:
    """A live bearer token without a seal, as ``evidence seal-tokens`` lists it."""

    token_hash: str
    username: str
    created_at: datetime
    expires_at: datetime

    def line(self) -> str:
        return (
            f"token of {self.username} (digest {self.token_hash[:12]}…), issued {self.created_at.isoformat()}, "
            f"expires {self.expires_at.isoformat()}"
        )


def unsealed_tokens(session: Session, now: datetime | None = None) -> list[UnsealedToken]:
    """The tokens that could still be used but have no seal (issued before seals), oldest first."""
    now = now or datetime.now(UTC)
    rows = session.execute(
        select(ApiToken, User.username)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.seal.is_(None), ApiToken.revoked.is_(False), ApiToken.expires_at > now)
        .order_by(ApiToken.created_at, ApiToken.token_hash)
    )
    return [UnsealedToken(t.token_hash, name, t.created_at, t.expires_at) for t, name in rows]


def seal_tokens(session: Session, secret: bytes, now: datetime | None = None) -> int:
    """Seal every token :func:`unsealed_tokens` lists, as it stands; how many."""
    listed = unsealed_tokens(session, now)
    for found in listed:
        row = session.get(ApiToken, found.token_hash)
        assert row is not None
        row.seal = credential_seal(secret, TOKEN, row.token_hash, row.user_id, row.expires_at)
    return len(listed)
