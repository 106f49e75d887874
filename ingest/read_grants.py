"""A read's reason for what cannot send a header: stated once in a request body, then an opaque
token in the address instead of the reason.

A reason for reading an original may name a patient. An API client states it in the
``X-Evidence-Reason`` header (``ingest.read_reasons``); the console's download and its player's
``<video src>`` cannot send headers, and a reason in their address (``?reason=``) would land in
browser history, download lists, a proxy's log and a ``Referer``. So the console posts the reason
(``POST /api/v1/evidence/{id}/read-grants``, with its CSRF token) and gets back an address holding
a grant: a random token, of which only the SHA-256 is kept, standing for that reason for

- one item and one person, from the sign-in that asked (a grant copied to another browser or
  another person's session is refused);
- a short time (``DOWNLOAD_SECONDS`` to start a download, ``PLAY_SECONDS`` for a player's ranges);
- a download: one read (a second use is refused); a player: its ranges until it expires.

A download's grant is used by the read it admits, in the transaction that records it: a read
refused before that (busy, a range the item cannot meet) leaves the grant for the next try.

A grant's row is sealed (``chain_of_custody.row_seals.read_grant_seal``, under a secret derived from
the service key) over its item, person, sign-in, use, reason and expiry: one planted or widened in
the database stands for nothing, and ``evidence verify`` names it. Its use cannot be sealed (the
row as issued, unused, carries a seal that still fits), so using a download's grant also ends it on
custody: a ``credential_ended`` entry, in the transaction of the read, whose subject is a keyed
digest of the grant (``row_seals.credential_end_subject``, kind ``read grant``). The check asks for
it in the statement that finds the row, so a grant put back unused in the database reads nothing
more, and ``evidence verify`` names it (``read_grant_use_undone``).

A refused grant answers 403 ``grant_refused`` and records nothing. The token in an address is
never logged either (``logging_setup.scrub``).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NoReturn

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from accounts.service import Principal
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import (
    GRANT,
    READ_GRANT_SEALS,
    credential_end_subject,
    read_grant_seal,
    seal_verdict,
)
from storage.digests import secret_digest
from storage.errors import Refused

from .models import ReadGrant

log = logging.getLogger(__name__)

Use = Literal["download", "play"]
DOWNLOAD_SECONDS = 60
PLAY_SECONDS = 3600
LIFETIME = {"download": DOWNLOAD_SECONDS, "play": PLAY_SECONDS}


class GrantRefused(Refused):
    """A grant that does not stand for this read (403 ``grant_refused``)."""

    status = 403
    structured = True


@dataclass(frozen=True)
class Issued:
    token: str
    expires_at: datetime


# A grant's row beside the seq of a ``credential_ended`` entry for it (or NULL): one statement.
_LOOKUP = select(
    ReadGrant,
    select(CustodyEntry.seq).where(CustodyEntry.item_id == bindparam("ended")).limit(1).scalar_subquery(),
).where(ReadGrant.token_hash == bindparam("digest"))


def grant_seal_key(key: ServiceKey) -> bytes:
    """The secret grants are sealed with, derived from the service key for this purpose alone."""
    return key.derived_secret(READ_GRANT_SEALS)


def _seal(secret: bytes, row: ReadGrant) -> str:
    return read_grant_seal(
        secret, row.token_hash, row.item_id, row.user_id, row.sign_in, row.use, row.reason, row.expires_at
    )


def issue(session: Session, user: Principal, item_id: str, use: Use, reason: str, seal_key: bytes) -> Issued:
    """A new grant of ``reason`` for the caller's reads of ``item_id`` from this sign-in, sealed."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=LIFETIME[use])
    row = ReadGrant(
        token_hash=secret_digest(token),
        item_id=item_id,
        user_id=user.user_id,
        sign_in=user.sign_in,
        use=use,
        reason=reason,
        expires_at=expires,
    )
    row.seal = _seal(seal_key, row)
    session.add(row)
    return Issued(token, expires)


@dataclass(frozen=True)
class Granted:
    """A grant that stands for a read, not yet used: its reason, and what using it takes."""

    token_hash: str
    use: str
    reason: str
    expires_at: datetime


def check(session: Session, user: Principal, item_id: str, token: str, seal_key: bytes) -> Granted:
    """The grant ``token`` names, if it stands for this read of ``item_id`` by ``user``: refused
    otherwise (a download's grant once used, too). Nothing is used up here: a download's grant is used
    by :func:`use_up`, once the read is admitted, so a read refused on the way (busy, a range beyond
    the item) leaves it for the next try."""
    now = datetime.now(UTC)
    digest = secret_digest(token)
    found = session.execute(
        _LOOKUP, {"digest": digest, "ended": credential_end_subject(seal_key, GRANT, digest)}
    ).first()
    row, ended = (None, None) if found is None else (found[0], found[1])
    if (
        row is None
        or row.item_id != item_id
        or row.user_id != user.user_id
        or not secrets.compare_digest(row.sign_in, user.sign_in)
        or row.expires_at <= now
        or not seal_verdict(_seal(seal_key, row), row.seal, log, "read grant", {"item_id": item_id})
    ):
        log.warning("read refused: a grant that does not stand for it", extra={"item_id": item_id})
        raise GrantRefused(
            "grant_refused",
            "this address's grant has expired or is not yours for this item: state the reason again",
        )
    if row.use == "download" and (row.used_at is not None or ended is not None):
        if row.used_at is None:
            log.warning("read refused: custody says the grant was used", extra={"item_id": item_id})
        _used_twice(item_id)
    return Granted(row.token_hash, row.use, row.reason, row.expires_at)


def use_up(
    session: Session, granted: Granted, item_id: str, *, ledger: Ledger, seal_key: bytes, actor: str
) -> None:
    """Use a download's grant, in the transaction that records the read it admits (atomically: of
    two reads at once, one gets it; the other is refused and its transaction records nothing), and
    end it on custody (a ``credential_ended`` entry, see the module's docstring). A player's grant
    serves until it expires."""
    if granted.use != "download":
        return
    used = session.execute(
        update(ReadGrant)
        .where(ReadGrant.token_hash == granted.token_hash, ReadGrant.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
    )
    if getattr(used, "rowcount", 0) != 1:
        _used_twice(item_id)
    ledger.append(
        session,
        CustodyAction.CREDENTIAL_ENDED,
        actor,
        item_id=credential_end_subject(seal_key, GRANT, granted.token_hash),
        details={"credential": GRANT, "why": "used"},
    )


def _used_twice(item_id: str) -> NoReturn:
    log.warning("read refused: a download grant used twice", extra={"item_id": item_id})
    raise GrantRefused("grant_refused", "this download was started already: state the reason again")


def forget_expired(session: Session, now: datetime) -> int:
    """Forget every grant past its time (the reasons they held are on the custody record of the reads)."""
    result = session.execute(delete(ReadGrant).where(ReadGrant.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
