"""Ends of bearer tokens and console sessions, kept on the custody ledger.

A row's seal (``accounts.seals``) covers what it grants, not that it was ended, and a copy of the
row taken while it was live carries a seal that still fits: whoever can write the database could
un-revoke a token or re-open a session. So every end the service makes (a password, role or active
change, a sign-out) is also a signed ``credential_ended`` custody entry, in the same transaction,
whose subject is a keyed digest of the credential (``chain_of_custody.row_seals.credential_end_subject``).
The ledger only grows (hash chain, tree heads in write-once storage), and the sign-in asks it in the
statement that finds the row (:data:`TOKEN_LOOKUP`, one look-up by an indexed column), so a row
it says was ended signs nobody in, however the row reads.

A session ended by its idle timeout is not recorded: its end follows from its last activity.

Rows ended before ends were recorded: ``evidence record-credential-ends`` lists the tokens revoked
and sessions ended that could otherwise still be used and, with ``--yes``, records them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ScalarSelect, Select, bindparam, select
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import SESSION, TOKEN, credential_end_subject

from .models import ApiToken, User, UserSession
from .seals import seal_holds

log = logging.getLogger(__name__)
Credential = tuple[str, str]  # (kind, digest): TOKEN or SESSION, and the row's ``token_hash``


_ENDED: ScalarSelect[Any] = (
    select(CustodyEntry.seq).where(CustodyEntry.item_id == bindparam("ended")).limit(1).scalar_subquery()
)
# A credential's row beside the seq of a ``credential_ended`` entry for it (or NULL): one statement,
# so asking the ledger costs the sign-in no round trip of its own; made once, run with parameters.
TOKEN_LOOKUP = select(ApiToken, _ENDED).where(ApiToken.token_hash == bindparam("digest"))
SESSION_LOOKUP = select(UserSession, _ENDED).where(UserSession.token_hash == bindparam("digest"))


def lookup_params(secret: bytes, kind: str, token_hash: str) -> dict[str, str]:
    """The parameters of :data:`TOKEN_LOOKUP` or :data:`SESSION_LOOKUP` for this credential."""
    return {"digest": token_hash, "ended": credential_end_subject(secret, kind, token_hash)}


CredentialRow = TypeVar("CredentialRow", ApiToken, UserSession)

# What the warning says when custody ended a credential whose row reads live.
_ENDED_ON_CUSTODY = {
    TOKEN: "credential refused: custody says it was revoked",
    SESSION: "credential refused: custody says it was ended",
}


def standing_row(
    session: Session,
    lookup: Select[tuple[CredentialRow, Any]],
    kind: str,
    token_hash: str,
    secret: bytes,
    now: datetime,
) -> CredentialRow | None:
    """The row of a token (:data:`TOKEN_LOOKUP`) or session (:data:`SESSION_LOOKUP`) if it may still
    sign someone in as far as the row, custody and seal go, else None: unknown, ended in its row,
    expired, ended on custody (a row put back in the database: a warning naming the kind and user),
    or a seal that does not hold (planted or altered). The one sequence both sign-ins run, so
    neither can skip a step the other takes."""
    found = session.execute(lookup, lookup_params(secret, kind, token_hash)).first()
    if found is None:
        return None
    row = found[0]
    ended = row.revoked if isinstance(row, ApiToken) else row.ended_at is not None
    if ended or row.expires_at <= now:
        return None
    if found[1] is not None:
        log.warning(_ENDED_ON_CUSTODY[kind], extra={"credential": kind, "user_id": row.user_id})
        return None
    if not seal_holds(secret, kind, row.token_hash, row.user_id, row.expires_at, row.seal):
        return None
    return row


def live_credentials(session: Session, user_id: int, now: datetime | None = None) -> list[Credential]:
    """The user's tokens not revoked and sessions not ended, not expired, as they stand before a
    change ends them (an expired one signs nobody in whatever its row says: no entry needed)."""
    now = now or datetime.now(UTC)
    tokens = session.scalars(
        select(ApiToken.token_hash).where(
            ApiToken.user_id == user_id, ApiToken.revoked.is_(False), ApiToken.expires_at > now
        )
    )
    sessions = session.scalars(
        select(UserSession.token_hash).where(
            UserSession.user_id == user_id, UserSession.ended_at.is_(None), UserSession.expires_at > now
        )
    )
    return [(TOKEN, d) for d in tokens] + [(SESSION, d) for d in sessions]


def _ended(session: Session, kind: str, token_hash: str) -> bool:
    if kind == TOKEN:
        token = session.get(ApiToken, token_hash)
        return token is not None and token.revoked
    row = session.get(UserSession, token_hash)
    return row is not None and row.ended_at is not None


def record_ends(
    session: Session,
    ledger: Ledger,
    secret: bytes,
    credentials: list[Credential],
    *,
    username: str,
    actor: str,
    why: str,
) -> int:
    """A ``credential_ended`` entry for each of ``credentials`` whose row is now ended (in the
    caller's transaction, so the end and its entry commit together); how many."""
    done = 0
    for kind, token_hash in credentials:
        if not _ended(session, kind, token_hash):
            continue
        ledger.append(
            session,
            CustodyAction.CREDENTIAL_ENDED,
            actor,
            item_id=credential_end_subject(secret, kind, token_hash),
            details={"credential": kind, "user": username, "why": why},
        )
        done += 1
    return done


@dataclass(frozen=True)
class UnrecordedEnd:
    """A token revoked or session ended, not yet expired, that no custody entry ends."""

    kind: str
    token_hash: str
    username: str
    expires_at: datetime

    def line(self) -> str:
        what = "bearer token" if self.kind == TOKEN else "console session"
        return f"{what} of {self.username}, ended, expires {self.expires_at.isoformat()}"


def unrecorded_ends(session: Session, secret: bytes, now: datetime | None = None) -> list[UnrecordedEnd]:
    """The ended credentials that would sign someone in again if their row were put back: revoked
    or ended, not expired, and no ``credential_ended`` entry for them (ended before ends were
    recorded)."""
    now = now or datetime.now(UTC)
    recorded = set(
        session.scalars(
            select(CustodyEntry.item_id).where(CustodyEntry.action == CustodyAction.CREDENTIAL_ENDED)
        )
    )
    found: list[UnrecordedEnd] = []
    tokens = session.execute(
        select(ApiToken.token_hash, User.username, ApiToken.expires_at)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.revoked.is_(True), ApiToken.expires_at > now)
    )
    sessions = session.execute(
        select(UserSession.token_hash, User.username, UserSession.expires_at)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.ended_at.is_not(None), UserSession.expires_at > now)
    )
    for kind, rows in ((TOKEN, tokens), (SESSION, sessions)):
        for token_hash, username, expires_at in rows:
            if credential_end_subject(secret, kind, token_hash) not in recorded:
                found.append(UnrecordedEnd(kind, token_hash, username, expires_at))
    return sorted(found, key=lambda e: (e.expires_at, e.kind, e.token_hash))


def record_unrecorded_ends(session: Session, ledger: Ledger, secret: bytes, actor: str) -> int:
    """Record every end :func:`unrecorded_ends` lists; how many."""
    listed = unrecorded_ends(session, secret)
    for end in listed:
        ledger.append(
            session,
            CustodyAction.CREDENTIAL_ENDED,
            actor,
            item_id=credential_end_subject(secret, end.kind, end.token_hash),
            details={"credential": end.kind, "user": end.username, "why": "ended before ends were recorded"},
        )
    return len(listed)
