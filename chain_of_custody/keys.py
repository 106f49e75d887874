"""The service's Ed25519 signing key: created on first start, kept outside the database, mode 0600."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def public_key_fingerprint(public_raw: bytes) -> str:
    """SHA-256 of the raw 32-byte public key, hex: short enough to read out over the phone."""
    return hashlib.sha256(public_raw).hexdigest()


def load_public_key_b64(b64: str) -> Ed25519PublicKey:
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@lru_cache(maxsize=65_536)
def raw_public_key(b64: str) -> bytes | None:
    """The 32 bytes of a base64 Ed25519 public key as the registry keeps it; None if it is not one."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


@lru_cache(maxsize=65_536)
def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Decoding a key costs as much as a verification; devices keep theirs for years."""
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(public: Ed25519PublicKey | bytes, signature_b64: str, message: bytes) -> bool:
    """Whether ``signature_b64`` (standard base64) is ``public``'s Ed25519 signature over ``message``.

    ``public`` is a key or its 32 raw bytes. Every signature the service checks goes through here:
    custody entries, checkpoints, camera clip manifests, device messages and voice memos."""
    try:
        key = public_key_from_raw(bytes(public)) if isinstance(public, bytes | bytearray) else public
        key.verify(base64.b64decode(signature_b64, validate=True), message)
        return True
    except (InvalidSignature, ValueError, binascii.Error, UnicodeEncodeError):
        return False


@dataclass
class ServiceKey:
    """Signs custody entries, checkpoints, device acks and export manifests."""

    private: Ed25519PrivateKey

    @classmethod
    def load_or_create(cls, path: Path) -> ServiceKey:
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise PermissionError(
                    f"service key {path} is readable by others (mode {mode:o}); chmod 600 it"
                )
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return cls(key)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_raw(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    @property
    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_raw)

    @property
    def key_id(self) -> str:
        return self.fingerprint[:16]

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode()

    def derived_secret(self, label: str) -> bytes:
        """A secret for ``label`` derived from the private key (HMAC-SHA256 of the label under the raw
        key): what the service alone can compute, like its signatures, but cheap enough for every row
        (the chain over a viewing's ranges, ``viewing.range_mac``)."""
        raw = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return hmac.new(raw, b"evidence derived secret\x00" + label.encode(), hashlib.sha256).digest()


SIGNING_KEY_PATH = "/.well-known/evidence-signing-key"
FINGERPRINT_COMMAND = "openssl pkey -pubin -in public_key.pem -outform DER | tail -c 32 | sha256sum"


def published_key(key: ServiceKey) -> dict[str, str]:
    """The signing key as the service publishes it out of band: the same document at the well-known
    address, in export responses and on download-link pages, so a recipient compares like with like."""
    return {
        "algorithm": "Ed25519",
        "public_key_b64": key.public_b64,
        "public_key_pem": key.public_pem,
        "fingerprint_sha256": key.fingerprint,
        "key_id": key.key_id,
        "fingerprint_command": FINGERPRINT_COMMAND,
        "published_at": SIGNING_KEY_PATH,
    }
