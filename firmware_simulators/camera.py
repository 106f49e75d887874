"""A body-worn camera as the service sees it: a serial, an Ed25519 key and signed clip manifests.

The camera hashes each clip as it closes it and signs a manifest of the clip's facts, so the
service can tell later whether the bytes and paperwork it received are the ones the camera wrote.
Only docs/PROTOCOLS.md is followed here; nothing of the service is imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_VERSION = 1
HASH_CHUNK_BYTES = 1024 * 1024
SIDECAR_SUFFIX = ".manifest.json"
_SERIAL_HEADER = "Camera-Serial:"
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----\s*", re.DOTALL)
_MAX_FILENAME_BYTES = 255


class KeyFileError(ValueError):
    """A camera key file that is malformed or readable by others."""


@dataclass(frozen=True)
class CameraIdentity:
    """A camera's serial and signing key; the public half is what enrolment registers."""

    serial: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, serial: str) -> CameraIdentity:
        """A new camera with a fresh Ed25519 key."""
        if not serial or any(ch.isspace() for ch in serial):
            raise ValueError(f"camera serial must be non-empty without whitespace: {serial!r}")
        return cls(serial=serial, private_key=Ed25519PrivateKey.generate())

    def rekeyed(self) -> CameraIdentity:
        """The same camera with a new key pair, as re-enrolment gives it (its old key lost, say);
        clips it closed before keep their old signatures."""
        return CameraIdentity.generate(self.serial)

    def public_key_raw(self) -> bytes:
        """The 32 raw public key bytes."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_key_b64(self) -> str:
        """The public key as the protocol carries it: 32 raw bytes, standard base64."""
        return base64.b64encode(self.public_key_raw()).decode("ascii")

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature over ``message``."""
        return self.private_key.sign(message)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM preceded by the serial as RFC 7468 explanatory text (OpenSSL reads it as is)."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return f"{_SERIAL_HEADER} {self.serial}\n".encode() + pem

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key file with mode 0600 from the moment it exists (a key must never be world-readable)."""
        target = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = os.open(target, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(self.to_pem())
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if fd != -1:
                os.close(fd)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], serial: str | None = None) -> CameraIdentity:
        """Read a key file written by :meth:`save`; refuses files that group or others can read."""
        source = Path(path)
        mode = source.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{source} is accessible by group or others (mode {mode & 0o777:o}); chmod 600"
            )
        text = source.read_text("ascii")
        block = _PEM_BLOCK.search(text)
        if block is None:
            raise KeyFileError(f"{source} holds no PEM block")
        found_serial = None
        for line in text[: block.start()].splitlines():
            if line.startswith(_SERIAL_HEADER):
                found_serial = line[len(_SERIAL_HEADER) :].strip()
        serial = serial or found_serial
        if not serial:
            raise KeyFileError(f"{source} names no camera serial and none was given")
        key = serialization.load_pem_private_key(block.group(0).encode("ascii"), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} is not an Ed25519 private key")
        return cls(serial=serial, private_key=key)


def canonical_json(obj: Any) -> bytes:
    """The bytes a device signs: sorted keys, no whitespace, UTF-8, no NaN (docs/PROTOCOLS.md)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def rfc3339_utc(moment: datetime | str) -> str:
    """A time as RFC 3339 UTC with ``Z``; naive datetimes are refused rather than guessed."""
    if isinstance(moment, str):
        if not moment.endswith("Z"):
            raise ValueError(f"time must be RFC 3339 UTC ending in Z: {moment!r}")
        datetime.fromisoformat(moment[:-1] + "+00:00")
        return moment
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a timezone-aware time")
    utc = moment.astimezone(UTC)
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if utc.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return utc.strftime(pattern)


def clip_filename(camera_serial: str, recorded_start: datetime | str, suffix: str = ".mp4") -> str:
    """The camera's naming convention: ``20261122T140000Z_CAM-0001.mp4``."""
    start = datetime.fromisoformat(rfc3339_utc(recorded_start)[:-1] + "+00:00")
    return f"{start:%Y%m%dT%H%M%SZ}_{camera_serial}{suffix}"


def check_filename(name: str) -> str:
    """Refuse names the protocol refuses, so the mistake shows on the camera, not at the service."""
    if (
        not name
        or "/" in name
        or "\\" in name
        or ".." in name
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
        or len(name.encode("utf-8")) > _MAX_FILENAME_BYTES
    ):
        raise ValueError(f"filename not allowed by the protocol: {name!r}")
    return name


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = HASH_CHUNK_BYTES) -> tuple[str, int]:
    """Hex SHA-256 and size of a file, read in fixed chunks into one reused buffer (clips are many GB)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def clip_manifest(
    path: str | os.PathLike[str],
    camera_serial: str,
    wearer: str,
    recorded_start: datetime | str,
    recorded_stop: datetime | str,
    filename: str | None = None,
) -> dict[str, Any]:
    """The manifest a camera computes when it closes a clip (keys exactly as docs/PROTOCOLS.md).

    ``filename`` defaults to the camera's naming convention built from the start time and serial.
    """
    start = rfc3339_utc(recorded_start)
    stop = rfc3339_utc(recorded_stop)
    if _parse_utc(stop) < _parse_utc(start):
        raise ValueError(f"recorded_stop {stop} is before recorded_start {start}")
    name = check_filename(filename or clip_filename(camera_serial, start, Path(path).suffix or ".mp4"))
    sha256, size = file_sha256(path)
    return {
        "camera_serial": camera_serial,
        "filename": name,
        "recorded_start": start,
        "recorded_stop": stop,
        "sha256": sha256,
        "size": size,
        "v": MANIFEST_VERSION,
        "wearer": wearer,
    }


def sign_manifest(identity: CameraIdentity, manifest: dict[str, Any]) -> str:
    """Standard base64 Ed25519 signature over the manifest's canonical JSON."""
    return base64.b64encode(identity.sign(canonical_json(manifest))).decode("ascii")


def verify_manifest(public_key_b64: str, manifest: dict[str, Any], signature_b64: str) -> bool:
    """Whether ``signature_b64`` is the given camera key's signature over ``manifest``."""
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
    try:
        public_key.verify(base64.b64decode(signature_b64, validate=True), canonical_json(manifest))
    except (InvalidSignature, ValueError):
        return False
    return True


def _parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text[:-1] + "+00:00")


@dataclass(frozen=True)
class RecordedClip:
    """A finished clip on the camera: the file, its manifest and the camera's signature over it."""

    path: Path
    manifest: dict[str, Any]
    signature: str

    @property
    def sidecar_path(self) -> Path:
        """Where the paperwork lives next to the clip: ``<clip>.manifest.json``."""
        return self.path.with_name(self.path.name + SIDECAR_SUFFIX)

    def save_sidecar(self) -> Path:
        """Write manifest and signature next to the clip so a dock can pick both up later."""
        body = {"clip": self.path.name, "manifest": self.manifest, "signature": self.signature}
        target = self.sidecar_path
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True), "utf-8")
        os.replace(tmp, target)
        return target

    @classmethod
    def load_sidecar(cls, sidecar: str | os.PathLike[str]) -> RecordedClip:
        """Read a clip's paperwork written by :meth:`save_sidecar`."""
        source = Path(sidecar)
        body = json.loads(source.read_text("utf-8"))
        return cls(
            path=source.with_name(body["clip"]), manifest=body["manifest"], signature=body["signature"]
        )


def record_clip(
    identity: CameraIdentity,
    path: str | os.PathLike[str],
    wearer: str,
    recorded_start: datetime | str,
    recorded_stop: datetime | str,
    filename: str | None = None,
    *,
    write_sidecar: bool = True,
) -> RecordedClip:
    """Close a finished clip file: hash it, sign its manifest, and (by default) leave the sidecar."""
    manifest = clip_manifest(path, identity.serial, wearer, recorded_start, recorded_stop, filename)
    clip = RecordedClip(path=Path(path), manifest=manifest, signature=sign_manifest(identity, manifest))
    if write_sidecar:
        clip.save_sidecar()
    return clip
