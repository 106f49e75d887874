"""The export manifest and the package layout: pure data, no I/O.

The builder (``incidents.export``) and the offline verifier (``chain_of_custody.package_verify``) both
use this module, so the layout an auditor checks is by construction the one that was written.

A package (ZIP64; media stored, not deflated) holds::

    evidence/<item id>/<file name>   the media and records exported (redacted videos, alarms, memos)
    custody/<item id>.json           every custody entry of each item, with its hash and signature
    continuity_report.html           the same for people: items, hashes, who did what when
    continuity_report.pdf            the same report as PDF, with each item's exhibit reference
    VERIFY.txt                       how to check it all with sha256sum and openssl
    manifest.json                    every file above with SHA-256 and size, every item (and for a
                                     derived file, its original's id and SHA-256), the signing key
    manifest.sig                     raw Ed25519 signature of manifest.json by the service key
    SHA256SUMS, SHA256SUMS.sig       the files and manifest.json in ``sha256sum -c`` form, signed
    public_key.pem                   the service's public key (SubjectPublicKeyInfo PEM)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .entries import CustodyAction

FORMAT = "evidence-export/1"

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SUMS = "SHA256SUMS"
SUMS_SIGNATURE = "SHA256SUMS.sig"
PUBLIC_KEY = "public_key.pem"
REPORT = "continuity_report.html"
REPORT_PDF = "continuity_report.pdf"
INSTRUCTIONS = "VERIFY.txt"

# Files that carry or prove the manifest rather than being listed in it.
CONTROL_FILES = frozenset({MANIFEST, SIGNATURE, SUMS, SUMS_SIGNATURE, PUBLIC_KEY})

EXTENSIONS = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "application/json": ".json",
    "text/plain": ".txt",
    "application/zip": ".zip",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def safe_filename(name: str | None, fallback: str, content_type: str) -> str:
    """A file name that is the same on every file system and needs no quoting in a shell."""
    base = _UNSAFE.sub("_", (name or "").rsplit("/", 1)[-1]).strip("._")[:120]
    if not base:
        base = _UNSAFE.sub("_", fallback).strip("._")[:64] + EXTENSIONS.get(content_type, ".bin")
    return base


def media_path(item_id: str, filename: str | None, content_type: str, kind: str) -> str:
    """``evidence/<item id>/<file name>``: the item id keeps names unique, the name keeps them readable."""
    return f"evidence/{item_id}/{safe_filename(filename, kind or 'item', content_type)}"


def custody_path(item_id: str) -> str:
    return f"custody/{item_id}.json"


VIEWING_RANGES_DIR = "custody/viewings/"


def viewing_ranges_path(viewing_id: str) -> str:
    """A sealed viewing's ranges, one ``<n> <first byte> <last byte> <RFC 3339 time>`` line each in
    order: ``sha256sum`` of it is the seal's ``ranges_sha256`` (``viewing.ranges_digest``)."""
    return f"{VIEWING_RANGES_DIR}{viewing_id}.txt"


def is_safe_member(name: str) -> bool:
    """Relative, forward-slash, no ``..`` and no odd characters: safe to unpack and to name in SHA256SUMS."""
    if not name or name.startswith("/") or "\\" in name or "\n" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") and not _UNSAFE.search(p) for p in parts)


@dataclass(frozen=True)
class PackageFile:
    """One file in the package and the hash it was written with."""

    path: str
    sha256: str
    size: int
    role: str  # media, custody, report, instructions

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "role": self.role}


@dataclass(frozen=True)
class OriginalRef:
    """The item a derived file (a redacted video) was made from, by id and exact hash."""

    item_id: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ItemRecord:
    """One evidence item as the manifest describes it: media included, or withheld with a reason."""

    item_id: str
    kind: str
    status: str
    sha256: str
    size: int
    content_type: str
    filename: str | None
    path: str | None
    withheld_reason: str | None
    derived_from: OriginalRef | None
    custody_entries: int
    custody_tip: str | None
    wearer: str | None = None
    source_device_id: str | None = None
    captured_start: str | None = None
    captured_stop: str | None = None
    quarantine_reason: str | None = None
    # item_seq -> entry_hash of each custody entry whose content the package withholds (it belongs to
    # another incident or package): signed here, so those hashes stay vouched for and no other entry
    # can be passed off as withheld.
    custody_withheld: dict[int, str] | None = None
    # The item's exhibit reference in the incident exported (``JS/1``), and master or working copy.
    exhibit_reference: str | None = None
    copy_type: str | None = None
    # For a redacted copy (and its redaction record) that goes in: which redaction of the clip it
    # is and why the package holds this one (``{"redaction_version", "why", "left_visible", ...}``).
    selection: dict[str, Any] | None = None

    @property
    def custody_path(self) -> str:
        return custody_path(self.item_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "kind": self.kind,
            "status": self.status,
            "quarantine_reason": self.quarantine_reason,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "filename": self.filename,
            "path": self.path,
            "withheld_reason": self.withheld_reason,
            "derived_from": self.derived_from.to_json() if self.derived_from else None,
            "custody": {
                "path": self.custody_path,
                "entries": self.custody_entries,
                "tip": self.custody_tip,
                **(
                    {"withheld": {str(k): v for k, v in sorted(self.custody_withheld.items())}}
                    if self.custody_withheld
                    else {}
                ),
            },
            "wearer": self.wearer,
            "source_device_id": self.source_device_id,
            "captured_start": self.captured_start,
            "captured_stop": self.captured_stop,
            "exhibit_reference": self.exhibit_reference,
            "copy_type": self.copy_type,
            **({"selection": self.selection} if self.selection is not None else {}),
        }


def manifest_document(
    *,
    export_id: str,
    created_at: str,
    created_by: str,
    incident: dict[str, Any],
    key_fingerprint: str,
    key_id: str,
    originals: dict[str, Any],
    items: Iterable[ItemRecord],
    files: Iterable[PackageFile],
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict; ``encode`` gives the exact bytes that are signed."""
    return {
        "format": FORMAT,
        "export_id": export_id,
        "created_at": created_at,
        "created_by": created_by,
        "incident": incident,
        "signing_key": {"algorithm": "Ed25519", "fingerprint_sha256": key_fingerprint, "key_id": key_id},
        "originals": originals,
        "items": [i.to_json() for i in items],
        "files": [f.to_json() for f in files],
    }


def encode(doc: Any) -> bytes:
    """Readable, stable JSON (sorted keys, two-space indent, UTF-8, trailing newline)."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()


def custody_document(item_id: str, entries: list[dict[str, Any]], log: dict[str, Any] | None = None) -> bytes:
    """One item's custody chain as exported: every entry with its hash and signature, and ``log``:
    a signed tree head of the ledger's Merkle log and each entry's inclusion proof against it
    (``{"tree_head": {...}, "inclusion": [{"seq", "leaf_index", "path": [hex, ...]}, ...]}``)."""
    doc: dict[str, Any] = {"item_id": item_id, "entries": entries}
    if log is not None:
        doc["log"] = log
    return encode(doc)


def sha256sums(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``sha256sum -c`` input: ``<hex>  <path>`` lines in the order given."""
    return "".join(f"{digest}  {path}\n" for path, digest in pairs).encode()


def parse_sha256sums(text: bytes) -> list[tuple[str, str]]:
    """(path, hex) pairs; ValueError naming the first line that is not in ``sha256sum`` form."""
    out: list[tuple[str, str]] = []
    for n, line in enumerate(text.decode("utf-8").splitlines(), start=1):
        digest, sep, path = line.partition("  ")
        if not sep or not _HEX64.match(digest) or not path:
            raise ValueError(f"line {n} is not '<sha256>  <path>'")
        out.append((path, digest))
    return out


def stored_details(entries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The details of an item's 'stored' custody entry: what the ledger says the object is."""
    for e in entries:
        if e.get("action") == CustodyAction.STORED:
            details = e.get("details")
            return details if isinstance(details, dict) else None
    return None
