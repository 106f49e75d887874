"""Evidence export packages: choose what goes in, then stream a signed ZIP64 straight into storage.

The package is written by a zip writer thread into a pipe that the object store reads as an upload of
unknown length, so neither a media file nor the package is ever held in memory, however large the
incident. Each media file is hashed as it passes and must match its recorded hash, or the export
stops: altered evidence is never packaged. The finished package is itself evidence (kind ``export``)
and every item in it gets an ``exported`` custody entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody import manifest as mf
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from storage.db import Database
from storage.objects import ObjectStore, StoredObject

from .continuity_report import render_continuity_report

ORIGINAL_VIDEO_KINDS = frozenset({"clip"})
REDACTED_VIDEO_KIND = "redacted_clip"
REDACTION_RECORD_KIND = "redaction_record"
PACKAGE_KIND = "export"
CHUNK = 1024 * 1024
READ_AHEAD_CHUNKS = 8


class ExportError(Exception):
    """The package could not be made; nothing was recorded as exported."""


@dataclass(frozen=True)
class OriginalsPermission:
    """An authorised decision to include original (unredacted) footage, and why."""

    actor: str
    role: str
    reason: str


@dataclass(frozen=True)
class ExportRequest:
    export_id: str
    incident: dict[str, Any]
    actor: str
    retain_until: datetime
    originals: OriginalsPermission | None = None


@dataclass(frozen=True)
class PlannedItem:
    item: EvidenceItem
    include_media: bool
    withheld_reason: str | None = None


@dataclass(frozen=True)
class ExportResult:
    export_id: str
    stored: StoredObject
    filename: str
    manifest_sha256: str
    key_fingerprint: str
    included: list[str]
    withheld: dict[str, str]
    media_bytes: int


# -- choosing what goes in (pure) ---------------------------------------------------------------


def redaction_records(chains: Mapping[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Redaction record item -> the redacted video it describes, as its custody says."""
    out: dict[str, str] = {}
    for item_id, chain in chains.items():
        for e in chain:
            describes = (e.get("details") or {}).get("describes")
            if e.get("action") == "verified" and isinstance(describes, str):
                out[item_id] = describes
    return out


def plan_package(
    items: Sequence[EvidenceItem],
    originals: OriginalsPermission | None,
    describes: Mapping[str, str] | None = None,
) -> list[PlannedItem]:
    """Which items' bytes go in and which are withheld (with the reason the manifest will state).

    Videos go in as their latest redacted copy (with the redaction record that describes it); an
    original clip only with ``originals``. Every other kind (alarm records, voice memos) goes in as
    stored. Withheld items keep their custody record in the package, so each redacted copy's
    original is still accounted for by hash.
    """
    describes = describes or {}
    latest_redaction: dict[str, EvidenceItem] = {}
    for it in sorted(items, key=lambda i: (i.created_at, i.id)):
        if it.kind == REDACTED_VIDEO_KIND and it.derived_from_id and it.status != "deleted":
            latest_redaction[it.derived_from_id] = it
    plan: list[PlannedItem] = []
    for it in items:
        reason: str | None = None
        if it.status == "deleted":
            reason = "deleted under its retention class; its custody record remains"
        elif it.kind == PACKAGE_KIND:
            reason = "an earlier export package"
        elif it.kind in ORIGINAL_VIDEO_KINDS and originals is None:
            redacted = latest_redaction.get(it.id)
            reason = (
                f"original footage; its redacted copy {redacted.id} is included"
                if redacted
                else "original footage with no redacted copy yet"
            )
        elif it.kind == REDACTED_VIDEO_KIND and it.derived_from_id:
            latest = latest_redaction.get(it.derived_from_id)
            if latest is not None and latest.id != it.id:
                reason = f"superseded by the later redaction {latest.id}"
        elif it.kind == REDACTION_RECORD_KIND and it.derived_from_id and it.id in describes:
            latest = latest_redaction.get(it.derived_from_id)
            if latest is not None and latest.id != describes[it.id]:
                reason = f"describes the superseded redaction {describes[it.id]}"
        plan.append(PlannedItem(it, reason is None, reason))
    return plan


def gather_items(session: Session, item_ids: Iterable[str]) -> list[EvidenceItem]:
    """The scope's items, their derived copies (redactions) and the originals of any derived item."""
    wanted = list(dict.fromkeys(item_ids))
    found = {i.id: i for i in session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(wanted)))}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ExportError(f"evidence items not found: {', '.join(missing)}")
    for derived in session.scalars(select(EvidenceItem).where(EvidenceItem.derived_from_id.in_(list(found)))):
        found.setdefault(derived.id, derived)
    origins = {i.derived_from_id for i in found.values() if i.derived_from_id} - found.keys()
    while origins:
        for origin in session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(list(origins)))):
            found[origin.id] = origin
        origins = {i.derived_from_id for i in found.values() if i.derived_from_id} - found.keys()
    return sorted(found.values(), key=lambda i: (i.created_at, i.id))


def package_filename(incident: dict[str, Any], export_id: str) -> str:
    ref = str(incident.get("reference") or incident.get("id") or "incident")
    return mf.safe_filename(f"evidence-export-{ref}-{export_id[:8]}.zip", export_id, "application/zip")


def verification_instructions(export_id: str, fingerprint: str, created_at: str, filename: str) -> bytes:
    """VERIFY.txt: how to check the package with sha256sum and openssl alone (commands run as written)."""
    return f"""How to verify this evidence export package
==========================================

Package:  {filename}
Export:   {export_id}
Created:  {created_at} (UTC)
Signing key (Ed25519), SHA-256 fingerprint of the raw public key:
          {fingerprint}

Everything below needs only GNU coreutils (sha256sum, tail) and OpenSSL 3, and no access to the
service that made the package. Unpack the package into an empty directory with any zip tool that
handles ZIP64, for example

    unzip {filename} -d package

and run each command below in that directory.

1. The signing key is the service's.
   This prints the key's fingerprint. It must equal the fingerprint above AND the one the service
   publishes (GET /api/v1/custody/public-key, or as given to you separately by its operator).
   Trust the copy you received separately, never only the one in this file.

    $ openssl pkey -pubin -in public_key.pem -outform DER | tail -c 32 | sha256sum

2. The manifest and the checksum list were signed by that key.
   Each command prints "Signature Verified Successfully".

    $ openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in manifest.json -sigfile manifest.sig
    $ openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig

3. Every file is exactly as it was exported. Every line must end in "OK".

    $ sha256sum -c SHA256SUMS

4. What the manifest says.
   manifest.json lists every file with its SHA-256 and size, and every evidence item: its kind, its
   hash, and for a redacted video ("redacted_clip") the item and SHA-256 of the original it was made
   from ("derived_from"). Originals not included are listed with the reason they were withheld; their
   custody record is still included, and its "stored" entry shows the original's SHA-256.
   continuity_report.html says the same in words.

5. The custody record of each item (custody/<item>.json).
   Each entry was signed by the service key when the action happened. Its "entry_hash" is the
   SHA-256 of the canonical JSON (keys sorted, no spaces, UTF-8) of the entry without "entry_hash"
   and "signature", plus "v": 1; "signature" is the base64 Ed25519 signature of those same bytes;
   "item_prev_hash" links each entry to the one before it and "item_seq" counts from 1.
   The service's own command checks all of this, every hash and both signatures, offline:

    evidence verify {filename} --key-fingerprint {fingerprint}
""".encode()


# -- streaming ------------------------------------------------------------------------------------


def _read_ahead(blocks: Iterator[bytes], depth: int) -> Iterator[bytes]:
    """Fetch the next blocks in a thread so that storage reads overlap with zip writing."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put(block, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    t = threading.Thread(target=pump, name="export-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            got = q.get()
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join()


def _zip_info(path: str, when: datetime, size: int, stored: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.file_size = size  # lets zipfile choose ZIP64 headers for members of 4 GiB and more
    return info


class _PackageWriter(threading.Thread):
    """Writes the whole package into ``out`` (the pipe); any failure is kept for the reading side."""

    def __init__(
        self,
        out: BinaryIO,
        store: ObjectStore,
        key: ServiceKey,
        request: ExportRequest,
        plan: list[PlannedItem],
        chains: dict[str, list[dict[str, Any]]],
        created_at: datetime,
        filename: str,
        progress: Callable[[int], None] | None,
    ) -> None:
        super().__init__(name=f"export-{request.export_id[:8]}", daemon=True)
        self.out = out
        self.store = store
        self.key = key
        self.request = request
        self.plan = plan
        self.chains = chains
        self.created_at = created_at
        self.filename = filename
        self.progress = progress
        self.error: BaseException | None = None
        self.manifest_sha256 = ""
        self.media_bytes = 0

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # noqa: BLE001 - reported by the reading side
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self.out.close()

    def _member(self, zf: zipfile.ZipFile, path: str, data: bytes, role: str) -> mf.PackageFile:
        with zf.open(_zip_info(path, self.created_at, len(data), stored=False), "w") as dest:
            dest.write(data)
        return mf.PackageFile(path, hashlib.sha256(data).hexdigest(), len(data), role)

    def _media(self, zf: zipfile.ZipFile, item: EvidenceItem, path: str) -> mf.PackageFile:
        h = hashlib.sha256()
        size = 0
        blocks = _read_ahead(
            self.store.read(item.object_key, item.version_id, chunk=CHUNK), READ_AHEAD_CHUNKS
        )
        with (
            contextlib.closing(blocks),  # type: ignore[type-var]
            zf.open(_zip_info(path, self.created_at, item.size, stored=True), "w") as dest,
        ):
            for block in blocks:
                h.update(block)
                dest.write(block)
                size += len(block)
                self.media_bytes += len(block)
                if self.progress is not None and self.media_bytes % (64 * CHUNK) < len(block):
                    self.progress(self.media_bytes)
        if h.hexdigest() != item.sha256 or size != item.size:
            raise ExportError(
                f"stored object of evidence item {item.id} hashes to {h.hexdigest()} ({size} bytes), "
                f"its record says {item.sha256} ({item.size} bytes): not exported; run 'evidence verify'"
            )
        return mf.PackageFile(path, item.sha256, item.size, "media")

    def _write(self) -> None:
        req = self.request
        stamp = self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        by_id = {p.item.id: p.item for p in self.plan}
        records: list[mf.ItemRecord] = []
        files: list[mf.PackageFile] = []
        with zipfile.ZipFile(self.out, "w", allowZip64=True) as zf:
            for p in self.plan:
                it = p.item
                path = (
                    mf.media_path(it.id, it.filename, it.content_type, it.kind) if p.include_media else None
                )
                if path is not None:
                    files.append(self._media(zf, it, path))
                origin = by_id.get(it.derived_from_id) if it.derived_from_id else None
                if it.derived_from_id and origin is None:
                    raise ExportError(f"the original {it.derived_from_id} of item {it.id} was not gathered")
                chain = self.chains[it.id]
                records.append(
                    mf.ItemRecord(
                        item_id=it.id,
                        kind=it.kind,
                        status=it.status,
                        sha256=it.sha256,
                        size=it.size,
                        content_type=it.content_type,
                        filename=it.filename,
                        path=path,
                        withheld_reason=p.withheld_reason,
                        derived_from=mf.OriginalRef(origin.id, origin.sha256, origin.size)
                        if origin
                        else None,
                        custody_entries=len(chain),
                        custody_tip=chain[-1]["entry_hash"] if chain else None,
                        wearer=it.wearer,
                        source_device_id=it.source_device_id,
                        captured_start=it.captured_start.isoformat() if it.captured_start else None,
                        captured_stop=it.captured_stop.isoformat() if it.captured_stop else None,
                        quarantine_reason=it.quarantine_reason,
                    )
                )
            for p in self.plan:
                doc = mf.custody_document(p.item.id, self.chains[p.item.id])
                files.append(self._member(zf, mf.custody_path(p.item.id), doc, "custody"))
            originals = (
                {
                    "included": True,
                    "authorised_by": req.originals.actor,
                    "authorised_role": req.originals.role,
                    "reason": req.originals.reason,
                }
                if req.originals
                else {"included": False, "authorised_by": None, "authorised_role": None, "reason": None}
            )
            common = dict(
                export_id=req.export_id,
                created_at=stamp,
                created_by=req.actor,
                incident=req.incident,
                key_fingerprint=self.key.fingerprint,
                key_id=self.key.key_id,
                originals=originals,
                items=records,
            )
            draft = mf.manifest_document(**common, files=[])  # type: ignore[arg-type]
            files.append(self._member(zf, mf.REPORT, render_continuity_report(draft, self.chains), "report"))
            files.append(
                self._member(
                    zf,
                    mf.INSTRUCTIONS,
                    verification_instructions(req.export_id, self.key.fingerprint, stamp, self.filename),
                    "instructions",
                )
            )
            manifest = mf.encode(mf.manifest_document(**common, files=files))  # type: ignore[arg-type]
            self.manifest_sha256 = hashlib.sha256(manifest).hexdigest()
            self._member(zf, mf.MANIFEST, manifest, "control")
            self._member(zf, mf.SIGNATURE, self.key.private.sign(manifest), "control")
            sums = mf.sha256sums([(f.path, f.sha256) for f in files] + [(mf.MANIFEST, self.manifest_sha256)])
            self._member(zf, mf.SUMS, sums, "control")
            self._member(zf, mf.SUMS_SIGNATURE, self.key.private.sign(sums), "control")
            self._member(zf, mf.PUBLIC_KEY, self.key.public_pem.encode(), "control")
        if self.progress is not None:
            self.progress(self.media_bytes)


class _PipeSource:
    """The upload's input: the pipe's read end, which fails (rather than ending) if the writer failed,
    so a half-written package is never completed as an object."""

    def __init__(self, fd: int, writer: _PackageWriter) -> None:
        self.raw = os.fdopen(fd, "rb")
        self.writer = writer

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if n < 0 or len(data) < n:
            self.writer.join()
            if self.writer.error is not None:
                raise ExportError(f"package writing failed: {self.writer.error}") from self.writer.error
        return data

    def close(self) -> None:
        self.raw.close()


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)  # type: ignore[attr-defined]
    return r, w


def stream_package(
    store: ObjectStore,
    key: ServiceKey,
    request: ExportRequest,
    plan: list[PlannedItem],
    chains: dict[str, list[dict[str, Any]]],
    *,
    part_size: int = 16 * CHUNK,
    progress: Callable[[int], None] | None = None,
) -> tuple[StoredObject, str, int, str]:
    """Write the package into storage as it is produced; returns (stored object, manifest hash,
    media bytes, file name). Memory stays at a few upload parts whatever the package's size."""
    created_at = datetime.now(UTC).replace(microsecond=0)
    filename = package_filename(request.incident, request.export_id)
    r, w = _pipe()
    writer = _PackageWriter(
        os.fdopen(w, "wb"), store, key, request, plan, chains, created_at, filename, progress
    )
    source = _PipeSource(r, writer)
    writer.start()
    try:
        stored = store.put_stream(
            f"exports/{request.export_id}.zip",
            source,  # type: ignore[arg-type]
            retain_until=request.retain_until,
            content_type="application/zip",
            length=-1,
            part_size=part_size,
        )
    except BaseException:
        source.close()  # the writer's next write fails, so it stops
        writer.join()
        if writer.error is not None and not isinstance(writer.error, BrokenPipeError):
            raise ExportError(f"package writing failed: {writer.error}") from writer.error
        raise
    source.close()
    writer.join()
    if writer.error is not None:
        raise ExportError(f"package writing failed: {writer.error}") from writer.error
    return stored, writer.manifest_sha256, writer.media_bytes, filename


def build_package(
    db: Database,
    store: ObjectStore,
    ledger: Ledger,
    key: ServiceKey,
    items: Sequence[EvidenceItem],
    request: ExportRequest,
    *,
    part_size: int = 16 * CHUNK,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Make, store and record an export package of ``items`` (see ``gather_items``) for an incident.

    The package becomes evidence item ``request.export_id`` (kind ``export``); every packaged item
    gets an ``exported`` entry naming the package and its hash (and, for originals, who authorised
    them and why), all in one transaction after the package is safely stored.
    """
    if request.originals is not None and not request.originals.reason.strip():
        raise ExportError("including originals needs a stated reason")
    request = replace(request, incident=json.loads(json.dumps(request.incident, default=str)))
    with db.session() as session:
        chains = {it.id: [e.to_json() for e in Ledger.item_entries(session, it.id)] for it in items}
    plan = plan_package(items, request.originals, redaction_records(chains))
    stored, manifest_sha256, media_bytes, filename = stream_package(
        store, key, request, plan, chains, part_size=part_size, progress=progress
    )
    included = [p.item.id for p in plan if p.include_media]
    withheld = {p.item.id: str(p.withheld_reason) for p in plan if not p.include_media}
    originals = request.originals
    with db.session() as session:
        record_evidence(
            session,
            ledger,
            stored,
            Provenance(
                kind=PACKAGE_KIND,
                actor=request.actor,
                filename=filename,
                content_type="application/zip",
                retain_until=request.retain_until,
            ),
            item_id=request.export_id,
        )
        ledger.append(
            session,
            "exported",
            request.actor,
            item_id=request.export_id,
            details={
                "incident": request.incident,
                "manifest_sha256": manifest_sha256,
                "key_fingerprint": key.fingerprint,
                "included": included,
                "withheld": withheld,
                "originals": (
                    {"authorised_by": originals.actor, "role": originals.role, "reason": originals.reason}
                    if originals
                    else None
                ),
            },
        )
        for p in plan:
            original_footage = p.include_media and p.item.kind in ORIGINAL_VIDEO_KINDS
            ledger.append(
                session,
                "exported",
                request.actor,
                item_id=p.item.id,
                details={
                    "export_id": request.export_id,
                    "package_sha256": stored.sha256,
                    "manifest_sha256": manifest_sha256,
                    "media_included": p.include_media,
                    "withheld_reason": p.withheld_reason,
                    "original_footage": original_footage,
                    "reason": originals.reason if original_footage and originals else None,
                    "authorised_by": originals.actor if original_footage and originals else None,
                },
            )
    return ExportResult(
        export_id=request.export_id,
        stored=stored,
        filename=filename,
        manifest_sha256=manifest_sha256,
        key_fingerprint=key.fingerprint,
        included=included,
        withheld=withheld,
        media_bytes=media_bytes,
    )
