"""Expiring download links: the token is the credential (a recipient such as an officer or a
solicitor needs no account), an HMAC over the link, its package and its expiry, with a key derived
from the service key so that every replica agrees on it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chain_of_custody.keys import ServiceKey
from storage.errors import Refused

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
