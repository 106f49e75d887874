"""Expiring download links: the token is the credential (a recipient such as an officer or a
solicitor needs no account), an HMAC over the link, its package and its expiry, with a key derived
from the service key so that every replica agrees on it. A link's row is taken for what custody says
of it (``link_off_custody``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import uuid
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction, details_object
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry
from storage.errors import Refused

from .models import ExportLink

log = logging.getLogger(__name__)

LINK_INFO = b"evidence export download link v1"


class LinkRefused(Refused):
    """A download link that is not (or no longer) good: 404 unknown, 410 expired or revoked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__("unknown_link" if status == 404 else "link_gone", message, status)


def link_secret(key: ServiceKey) -> bytes:
    """The HMAC key for download links, derived from the service key, so every replica agrees on it."""
    raw = key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=LINK_INFO).derive(raw)


def _mac(secret: bytes, link_id: str, export_id: str, expires: int) -> str:
    digest = hmac.new(secret, f"{link_id}|{export_id}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_link_token(secret: bytes, link_id: str, export_id: str, expires_at: datetime) -> str:
    expires = int(expires_at.timestamp())
    return f"{link_id}.{expires}.{_mac(secret, link_id, export_id, expires)}"


def parse_link_token(token: str) -> tuple[str, int, str]:
    """(link id, expiry as Unix time, MAC); LinkRefused(404) for anything malformed."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        raise LinkRefused(404, "no such download link")
    try:
        uuid.UUID(parts[0])
    except ValueError:
        raise LinkRefused(404, "no such download link") from None
    return parts[0], int(parts[1]), parts[2]


def check_link_token(secret: bytes, token: str, export_id: str, now: datetime) -> None:
    """The token is ours for this export and not expired (LinkRefused 404 or 410 otherwise)."""
    link_id, expires, mac = parse_link_token(token)
    if not hmac.compare_digest(mac, _mac(secret, link_id, export_id, expires)):
        raise LinkRefused(404, "no such download link")
    if now.timestamp() >= expires:
        raise LinkRefused(410, "this download link has expired")


def link_off_custody(session: Session, link: ExportLink) -> str | None:
    """Why the link's row is not what custody says of it, or None: the package's ``link_issued``
    entry for it must name the same issuer and recipient, and no ``link_revoked`` entry may name it
    (a row un-revoked or handed to another issuer in the database hands out nothing)."""
    issued: list[tuple[str, dict[str, Any]]] = []
    for action, actor, raw in session.execute(
        select(CustodyEntry.action, CustodyEntry.actor, CustodyEntry.details).where(
            CustodyEntry.item_id == link.export_id,
            CustodyEntry.action.in_(("link_issued", "link_revoked")),
        )
    ):
        details = details_object(raw)
        if details is None:  # edited in the database: it may have revoked this link
            return (
                f"a {action} custody entry of package {link.export_id} cannot be read (its details "
                "are not a JSON object)"
            )
        if details.get("link") != link.id:
            continue
        if action == CustodyAction.LINK_REVOKED:
            return f"link {link.id} was revoked on custody (by {actor}) but its row says it is not"
        issued.append((actor, details))
    if len(issued) != 1:
        return f"link {link.id} is issued by {len(issued)} custody entries, not one"
    actor, details = issued[0]
    if (actor, details.get("recipient")) != (link.created_by, link.recipient):
        return f"link {link.id}'s row names {link.created_by} for {link.recipient}; custody {actor} for {details.get('recipient')}"
    return None


def on_custody(session: Session, link: ExportLink) -> None:
    """LinkRefused (410, logged) when the link's row is not what custody says of it."""
    problem = link_off_custody(session, link)
    if problem is not None:
        log.error(
            "download link refused: its row disagrees with custody",
            extra={"link": link.id, "problem": problem},
        )
        raise LinkRefused(410, "this download link is no longer good")
