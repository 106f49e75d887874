"""Pure parts of the tus 1.0 dock protocol: metadata parsing, clip manifest, checksum headers.

Everything here is free of I/O so that every refusal reason can be tested directly.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from storage.errors import Refused

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,checksum,termination,expiration"
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
REQUIRED_KEYS = (
    "filename",
    "camera_serial",
    "wearer",
    "recorded_start",
    "recorded_stop",
    "sha256",
    "signature",
)
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SAFE_CONTENT_TYPES = {
    "video/mp4",
    "video/quicktime",
    "video/x-matroska",
    "audio/mp4",
    "application/octet-stream",
}


class TusRefusal(Refused):
    """A dock request refused: status, stable reason code and a sentence (a 4xx can never succeed as
    sent; a 503 or 507 carries ``Retry-After``)."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(reason, message, status, retry_after=retry_after)


@dataclass(frozen=True)
class ClipMetadata:
    filename: str
    camera_serial: str
    wearer: str
    recorded_start: datetime
    recorded_stop: datetime
    sha256: str
    signature: str
    content_type: str
    recorded_start_text: str
    recorded_stop_text: str

    def manifest(self, size: int) -> dict[str, object]:
        """The manifest the camera signed, rebuilt from what the dock sent (docs/PROTOCOLS.md)."""
        return {
            "camera_serial": self.camera_serial,
            "filename": self.filename,
            "recorded_start": self.recorded_start_text,
            "recorded_stop": self.recorded_stop_text,
            "sha256": self.sha256,
            "size": size,
            "v": 1,
            "wearer": self.wearer,
        }


def parse_metadata_header(header: str) -> dict[str, str]:
    """tus ``Upload-Metadata``: comma-separated ``key base64value`` pairs; values must be UTF-8."""
    out: dict[str, str] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not key or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key):
            raise TusRefusal(400, "bad_metadata", f"metadata key {key[:32]!r} is not a plain key")
        if key in out:
            raise TusRefusal(400, "bad_metadata", f"metadata key {key!r} appears twice")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise TusRefusal(400, "bad_metadata", f"metadata value of {key!r} is not base64 UTF-8") from None
    return out


def check_filename(name: str) -> str:
    """A plain file name: no directories, no traversal, no control or invisible characters."""
    if not name or len(name.encode()) > 255:
        raise TusRefusal(400, "bad_filename", "filename must be 1-255 bytes")
    if name != unicodedata.normalize("NFC", name):
        raise TusRefusal(400, "bad_filename", "filename must be NFC-normalised")
    if any(c in name for c in "/\\\x00") or name in {".", ".."} or ".." in name:
        raise TusRefusal(400, "bad_filename", "filename must be a plain name without path separators or '..'")
    if any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in name):
        raise TusRefusal(400, "bad_filename", "filename must not contain control characters")
    if name.startswith((".", "-", " ")) or name.endswith((" ", ".")):
        raise TusRefusal(
            400, "bad_filename", "filename must not start with '.', '-' or space, or end with space or '.'"
        )
    return name


def parse_time(name: str, value: str) -> datetime:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", value):
        raise TusRefusal(400, "bad_time", f"{name} must be RFC 3339 UTC ending in Z")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise TusRefusal(400, "bad_time", f"{name} is not a valid time") from None


def parse_clip_metadata(header: str | None, max_bytes: int) -> ClipMetadata:
    if header is None:
        raise TusRefusal(400, "missing_metadata", "Upload-Metadata header is required")
    if len(header) > max_bytes:
        raise TusRefusal(431, "metadata_too_large", f"Upload-Metadata is larger than {max_bytes} bytes")
    meta = parse_metadata_header(header)
    missing = [k for k in REQUIRED_KEYS if not meta.get(k)]
    if missing:
        raise TusRefusal(400, "missing_metadata", f"metadata is missing {', '.join(missing)}")
    start = parse_time("recorded_start", meta["recorded_start"])
    stop = parse_time("recorded_stop", meta["recorded_stop"])
    if stop < start:
        raise TusRefusal(400, "bad_time", "recorded_stop is before recorded_start")
    sha = meta["sha256"].lower()
    if not HEX64.match(sha):
        raise TusRefusal(400, "bad_hash", "sha256 must be 64 hex characters")
    try:
        sig = base64.b64decode(meta["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise TusRefusal(400, "bad_signature_format", "signature must be base64") from None
    if len(sig) != 64:
        raise TusRefusal(400, "bad_signature_format", "an Ed25519 signature is 64 bytes")
    content_type = meta.get("content_type") or "video/mp4"
    if content_type not in SAFE_CONTENT_TYPES:
        raise TusRefusal(400, "bad_content_type", f"content_type must be one of {sorted(SAFE_CONTENT_TYPES)}")
    for key in ("camera_serial", "wearer"):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", meta[key]):
            raise TusRefusal(400, "bad_metadata", f"{key} must be 1-64 letters, digits, '.', '_' or '-'")
    return ClipMetadata(
        filename=check_filename(meta["filename"]),
        camera_serial=meta["camera_serial"],
        wearer=meta["wearer"],
        recorded_start=start,
        recorded_stop=stop,
        sha256=sha,
        signature=meta["signature"],
        content_type=content_type,
        recorded_start_text=meta["recorded_start"],
        recorded_stop_text=meta["recorded_stop"],
    )


def _plain_digits(value: str) -> bool:
    """ASCII digits only, at most 19 of them (``str.isdigit`` also takes "²" and other scripts' digits,
    which ``int`` then refuses or reads; 19 digits is every size a database integer holds)."""
    return value.isascii() and value.isdigit() and len(value) <= 19


def parse_offset(value: str) -> int:
    """``Upload-Offset``: a plain non-negative integer."""
    if not _plain_digits(value):
        raise TusRefusal(400, "bad_offset", "Upload-Offset must be a non-negative integer")
    return int(value)


def parse_length(value: str | None, maximum: int) -> int:
    if value is None:
        raise TusRefusal(
            400, "missing_length", "Upload-Length is required (deferred length is not supported)"
        )
    if not _plain_digits(value):
        raise TusRefusal(400, "bad_length", "Upload-Length must be a non-negative integer")
    n = int(value)
    if n == 0:
        raise TusRefusal(400, "empty_clip", "a clip cannot be empty")
    if n > maximum:
        raise TusRefusal(413, "clip_too_large", f"Upload-Length {n} exceeds the maximum of {maximum} bytes")
    return n


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>`` (checksum extension)."""
    if header is None:
        return None
    alg, _, b64 = header.strip().partition(" ")
    if alg not in CHECKSUM_ALGORITHMS:
        raise TusRefusal(
            400, "bad_checksum_algorithm", f"checksum algorithm must be one of {CHECKSUM_ALGORITHMS}"
        )
    try:
        return alg, base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise TusRefusal(400, "bad_checksum", "Upload-Checksum digest is not base64") from None


@dataclass(frozen=True)
class UploadState:
    """What a tus answer reports of an upload: how far it got, and the item it became."""

    id: str
    offset: int
    length: int
    expires_at: datetime
    evidence_item_id: str | None
    evidence_status: str | None
