"""Evidence export packages: choose what goes in, lay out a signed ZIP64 over the stored media, and
assemble it on download.

The media of a package are already held write-once, so the package does not copy them. Building it
is one streaming pass over every media object, which checks each object against the digest and size
recorded when it was stored (BLAKE3, or SHA-256 for items stored before BLAKE3 was kept; altered
evidence is never packaged) and computes the CRC-32 the zip needs (and, when asked, the SHA-256 of
the whole zip). Before it, every item's row is checked against its signed ``stored`` custody entry,
since the manifest takes each item's SHA-256 from the row. What is new (the custody documents, the
continuity report, VERIFY.txt, the signed manifest and checksum list, the public key, and every zip
header) is stored write-once as one object with the layout of the zip
(:mod:`chain_of_custody.package_layout`); that object is the package's evidence item (kind ``export``).
A download streams the zip from the layout and the items' locked objects, re-checking each media
hash on the way, and gives the same bytes every time. Memory stays at a few read blocks however
large the incident.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from isal.isal_zlib import crc32
from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody import manifest as mf
from chain_of_custody import package_layout as pl
from chain_of_custody.entries import SignedEntry, Verifier, check_entry
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.fixity import FixityCheck
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import row_disagreements
from storage.db import Database
from storage.objects import ObjectLocked, ObjectStore, StoredObject

from .continuity_report import render_continuity_report
from .export_zip import ZipBuilder

ORIGINAL_VIDEO_KINDS = frozenset({"clip"})
REDACTED_VIDEO_KIND = "redacted_clip"
REDACTION_RECORD_KIND = "redaction_record"
PACKAGE_KIND = "export"
CHUNK = 4 * 1024 * 1024
READ_AHEAD_CHUNKS = 4
SCAN_WORKERS = 2
PROGRESS_EVERY = 64 * 1024 * 1024


class ExportError(Exception):
    """The package could not be made; nothing was recorded as exported."""


class PackageAltered(Exception):
    """A stored object no longer matches what the package recorded: the download must not complete."""


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
    stored: StoredObject  # the layout object: the package item's own bytes
    filename: str
    manifest_sha256: str
    package_sha256: str | None  # of the assembled zip, when computed at build time
    package_size: int
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


# -- reading media ------------------------------------------------------------------------------


def _read_ahead(
    blocks: Iterator[bytes], depth: int, tap: Callable[[bytes], None] | None = None
) -> Iterator[bytes]:
    """Fetch the next blocks in a thread so that storage reads overlap with hashing and sending;
    ``tap`` (a hash update) runs on that thread too, before the block is handed on."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for block in blocks:
                if tap is not None:
                    tap(block)
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


def _media_blocks(
    store: ObjectStore, key: str, version_id: str | None, tap: Callable[[bytes], None] | None = None
) -> Iterator[bytes]:
    return _read_ahead(store.read(key, version_id, chunk=CHUNK), READ_AHEAD_CHUNKS, tap)


class _MediaDigests:
    """The fixity check of an item (BLAKE3 where recorded, else SHA-256; ``storage.digests``) and its
    CRC-32 (ISA-L's, several times zlib's speed on this hardware); the running zip hash, when wanted,
    goes on a second thread with the CRC (hashlib, blake3 and ISA-L release the GIL on large blocks),
    so the pass is bound by one digest, not two."""

    def __init__(self, it: EvidenceItem, side: ThreadPoolExecutor | None, package: Any | None) -> None:
        self.side = side
        self.package = package
        self.check = FixityCheck(it.sha256, it.blake3, it.size)
        self.crc32 = 0
        self._pending: Future[None] | None = None

    def _side(self, block: bytes) -> None:
        self.crc32 = crc32(block, self.crc32)
        if self.package is not None:
            self.package.update(block)

    def update(self, block: bytes) -> None:
        if self.side is None:
            self._side(block)
        else:
            if self._pending is not None:
                self._pending.result()
            self._pending = self.side.submit(self._side, block)
        self.check.update(block)

    def finish(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None


def _altered(item_id: str, check: FixityCheck) -> str:
    return f"stored object of evidence item {item_id} {check.mismatch()}"


def unrecorded(it: EvidenceItem, stored: SignedEntry | None, verify_sig: Verifier) -> str | None:
    """Why the item's row cannot be trusted for its object and digests, or None. Objects are found
    and re-checked by the row (media against its BLAKE3, while the manifest carries its SHA-256), so
    the row must say what the item's ``stored`` custody entry says, and that entry must be intact
    and signed by the service."""
    if stored is None:
        return f"evidence item {it.id} has no 'stored' custody entry"
    broken = check_entry(stored, verify_sig)
    if broken:
        return f"evidence item {it.id}: its 'stored' custody entry fails its check ({broken[0]})"
    differ = row_disagreements(it, json.loads(stored.body.details))
    return f"evidence item {it.id}: {differ[0]}" if differ else None


# -- building -----------------------------------------------------------------------------------


class _Progress:
    """Media bytes checked so far, reported every 64 MiB (from any scanning thread)."""

    def __init__(self, hook: Callable[[int], None] | None) -> None:
        self.hook = hook
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.hook is not None and self.done % PROGRESS_EVERY < n:
                self.hook(self.done)

    def report(self) -> None:
        if self.hook is not None:
            self.hook(self.done)


def _check_media(
    store: ObjectStore,
    it: EvidenceItem,
    digests: _MediaDigests,
    counter: _Progress,
    stop: threading.Event | None = None,
) -> int:
    """Read one media object whole, checking it against its record; its CRC-32."""
    blocks = _media_blocks(store, it.object_key, it.version_id)
    with contextlib.closing(blocks):  # type: ignore[type-var]
        for block in blocks:
            if stop is not None and stop.is_set():
                raise ExportError("stopped: another media object failed its check")
            digests.update(block)
            counter.add(len(block))
    digests.finish()
    if not digests.check.ok:
        raise ExportError(_altered(it.id, digests.check) + ": not exported; run 'evidence verify'")
    return digests.crc32


def _scan_parallel(store: ObjectStore, items: list[EvidenceItem], counter: _Progress) -> dict[str, int]:
    """Check every media object, SCAN_WORKERS at a time (storage, hashing and CRC overlap across
    objects as well as within one); their CRC-32s by item. The first failure stops the rest."""
    stop = threading.Event()
    crcs: dict[str, int] = {}
    with ThreadPoolExecutor(SCAN_WORKERS, thread_name_prefix="export-scan") as pool:
        futures = {
            pool.submit(_check_media, store, it, _MediaDigests(it, None, None), counter, stop): it
            for it in items
        }
        try:
            for f in as_completed(futures):
                crcs[futures[f].id] = f.result()
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise
    return crcs


class _Composer:
    """Lays the package out in zip order: the bytes that are new go into the blob, media are named."""

    def __init__(self, when: datetime, package_hash: bool) -> None:
        self.zip = ZipBuilder(when)
        self.blob = bytearray()
        self.segments: list[pl.Segment] = []
        self.package = hashlib.sha256() if package_hash else None

    def data(self, raw: bytes) -> None:
        if not raw:
            return
        if self.package is not None:
            self.package.update(raw)
        last = self.segments[-1] if self.segments else None
        if isinstance(last, pl.DataSegment) and last.offset + last.length == len(self.blob):
            self.segments[-1] = pl.DataSegment(last.start, last.offset, last.length + len(raw))
        else:
            self.segments.append(pl.DataSegment(self.zip.pos - len(raw), len(self.blob), len(raw)))
        self.blob += raw

    def small(self, path: str, data: bytes) -> None:
        self.data(self.zip.deflated(path, data))

    def layout(self, export_id: str, filename: str, manifest_sha256: str) -> pl.Layout:
        return pl.Layout(
            export_id=export_id,
            filename=filename,
            size=self.zip.pos,
            sha256=self.package.hexdigest() if self.package is not None else None,
            manifest_sha256=manifest_sha256,
            segments=tuple(self.segments),
            blob=bytes(self.blob),
        )


def compose_package(
    store: ObjectStore,
    key: ServiceKey,
    request: ExportRequest,
    plan: list[PlannedItem],
    chains: dict[str, list[dict[str, Any]]],
    *,
    created_at: datetime,
    package_hash: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[pl.Layout, int]:
    """One streaming pass over the media, then the layout of the whole package; (layout, media bytes).

    With ``package_hash`` the pass also computes the SHA-256 of the whole zip (a second SHA-256 over
    every media byte, in zip order). Raises ExportError if any media object differs from its record."""
    stamp = created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    filename = package_filename(request.incident, request.export_id)
    by_id = {p.item.id: p.item for p in plan}
    out = _Composer(created_at, package_hash)
    records: list[mf.ItemRecord] = []
    files: list[mf.PackageFile] = []

    def member(path: str, data: bytes, role: str) -> mf.PackageFile:
        out.small(path, data)
        return mf.PackageFile(path, hashlib.sha256(data).hexdigest(), len(data), role)

    counter = _Progress(progress)
    media_items = [p.item for p in plan if p.include_media]
    # Without the zip hash each object is checked on its own, two at a time; with it, in zip order.
    crcs = {} if package_hash else _scan_parallel(store, media_items, counter)
    with ThreadPoolExecutor(1, thread_name_prefix="export-crc") as side:
        for p in plan:
            it = p.item
            path = mf.media_path(it.id, it.filename, it.content_type, it.kind) if p.include_media else None
            if path is not None:
                out.data(out.zip.header(path, it.size, stored=True))
                start = out.zip.pos
                if package_hash:
                    crcs[it.id] = _check_media(store, it, _MediaDigests(it, side, out.package), counter)
                out.segments.append(
                    pl.MediaSegment(
                        start,
                        it.id,
                        it.object_key,
                        it.version_id,
                        it.size,
                        it.sha256,
                        crcs[it.id],
                        path,
                        it.blake3,
                    )
                )
                out.data(out.zip.descriptor(crcs[it.id], it.size, it.size))
                files.append(mf.PackageFile(path, it.sha256, it.size, "media"))
            origin = by_id.get(it.derived_from_id) if it.derived_from_id else None
            if it.derived_from_id and origin is None:
                raise ExportError(f"the original {it.derived_from_id} of item {it.id} was not gathered")
            chain = chains[it.id]
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
                    derived_from=mf.OriginalRef(origin.id, origin.sha256, origin.size) if origin else None,
                    custody_entries=len(chain),
                    custody_tip=chain[-1]["entry_hash"] if chain else None,
                    wearer=it.wearer,
                    source_device_id=it.source_device_id,
                    captured_start=it.captured_start.isoformat() if it.captured_start else None,
                    captured_stop=it.captured_stop.isoformat() if it.captured_stop else None,
                    quarantine_reason=it.quarantine_reason,
                )
            )
    for p in plan:
        doc = mf.custody_document(p.item.id, chains[p.item.id])
        files.append(member(mf.custody_path(p.item.id), doc, "custody"))
    originals = (
        {
            "included": True,
            "authorised_by": request.originals.actor,
            "authorised_role": request.originals.role,
            "reason": request.originals.reason,
        }
        if request.originals
        else {"included": False, "authorised_by": None, "authorised_role": None, "reason": None}
    )
    common = dict(
        export_id=request.export_id,
        created_at=stamp,
        created_by=request.actor,
        incident=request.incident,
        key_fingerprint=key.fingerprint,
        key_id=key.key_id,
        originals=originals,
        items=records,
    )
    draft = mf.manifest_document(**common, files=[])  # type: ignore[arg-type]
    files.append(member(mf.REPORT, render_continuity_report(draft, chains), "report"))
    instructions = verification_instructions(request.export_id, key.fingerprint, stamp, filename)
    files.append(member(mf.INSTRUCTIONS, instructions, "instructions"))
    manifest = mf.encode(mf.manifest_document(**common, files=files))  # type: ignore[arg-type]
    manifest_sha256 = hashlib.sha256(manifest).hexdigest()
    member(mf.MANIFEST, manifest, "control")
    member(mf.SIGNATURE, key.private.sign(manifest), "control")
    sums = mf.sha256sums([(f.path, f.sha256) for f in files] + [(mf.MANIFEST, manifest_sha256)])
    member(mf.SUMS, sums, "control")
    member(mf.SUMS_SIGNATURE, key.private.sign(sums), "control")
    member(mf.PUBLIC_KEY, key.public_pem.encode(), "control")
    out.data(out.zip.end())
    counter.report()
    return out.layout(request.export_id, filename, manifest_sha256), counter.done


def build_package(
    db: Database,
    store: ObjectStore,
    ledger: Ledger,
    key: ServiceKey,
    items: Sequence[EvidenceItem],
    request: ExportRequest,
    *,
    package_hash: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Make, store and record an export package of ``items`` (see ``gather_items``) for an incident.

    The package's layout becomes evidence item ``request.export_id`` (kind ``export``); every item
    gets an ``exported`` entry naming the package and its hashes (and, for originals, who authorised
    them and why), all in one transaction after the layout is safely stored. The whole zip's SHA-256
    is computed only with ``package_hash`` (see ``compose_package``): the signed manifest's hash
    identifies the package either way.
    """
    if request.originals is not None and not request.originals.reason.strip():
        raise ExportError("including originals needs a stated reason")
    request = replace(request, incident=json.loads(json.dumps(request.incident, default=str)))
    with db.session() as session:
        entries = {it.id: Ledger.item_entries(session, it.id) for it in items}
    chains = {item_id: [e.to_json() for e in signed] for item_id, signed in entries.items()}
    plan = plan_package(items, request.originals, redaction_records(chains))
    for p in plan:  # withheld items and originals too: the manifest names their SHA-256 as well
        stored = next((e for e in entries[p.item.id] if e.body.action == "stored"), None)
        problem = unrecorded(p.item, stored, ledger.verifier)
        if problem is not None:
            raise ExportError(problem + ": not exported; run 'evidence verify'")
    created_at = datetime.now(UTC).replace(microsecond=0)
    layout, media_bytes = compose_package(
        store,
        key,
        request,
        plan,
        chains,
        created_at=created_at,
        package_hash=package_hash,
        progress=progress,
    )
    stored = store.put_bytes(
        f"exports/{request.export_id}.layout",
        pl.encode(layout),
        retain_until=request.retain_until,
        content_type=pl.CONTENT_TYPE,
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
                filename=layout.filename,
                content_type=pl.CONTENT_TYPE,
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
                "manifest_sha256": layout.manifest_sha256,
                "package_sha256": layout.sha256,
                "package_size": layout.size,
                "filename": layout.filename,
                "key_fingerprint": key.fingerprint,
                "included": included,
                "withheld": withheld,
                "media": [
                    {"item": m.item_id, "sha256": m.sha256, "size": m.length, "crc32": m.crc32}
                    for m in layout.media
                ],
                "originals": (
                    {"authorised_by": originals.actor, "role": originals.role, "reason": originals.reason}
                    if originals
                    else None
                ),
            },
        )
        for p in plan:
            if p.include_media:
                _lock_for_package(session, ledger, store, p.item.id, request)
            original_footage = p.include_media and p.item.kind in ORIGINAL_VIDEO_KINDS
            ledger.append(
                session,
                "exported",
                request.actor,
                item_id=p.item.id,
                details={
                    "export_id": request.export_id,
                    "package_sha256": layout.sha256,
                    "manifest_sha256": layout.manifest_sha256,
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
        filename=layout.filename,
        manifest_sha256=layout.manifest_sha256,
        package_sha256=layout.sha256,
        package_size=layout.size,
        key_fingerprint=key.fingerprint,
        included=included,
        withheld=withheld,
        media_bytes=media_bytes,
    )


def _lock_for_package(
    session: Session, ledger: Ledger, store: ObjectStore, item_id: str, request: ExportRequest
) -> None:
    """Storage keeps a packaged item's object at least as long as the package (the retention sweeper
    also refuses to delete it while the package is held); a ``retention_changed`` entry says why."""
    item = session.get(EvidenceItem, item_id, with_for_update=True)
    target = request.retain_until.replace(microsecond=0) + timedelta(seconds=1)
    if item is None or (item.retain_until is not None and item.retain_until >= request.retain_until):
        return
    try:
        store.set_retention(item.object_key, item.version_id, target)
    except ObjectLocked:
        held = store.info(item.object_key, item.version_id).retain_until  # already later in storage
        if held is None or held < request.retain_until:
            raise
        target = held
    ledger.append(
        session,
        "retention_changed",
        "service:export",
        item_id=item.id,
        details={
            "class": "export_package",
            "from": item.retain_until.isoformat() if item.retain_until else None,
            "to": target.isoformat(),
            "cause": f"held in export package {request.export_id}",
            "incidents": [],
        },
    )
    item.retain_until = target


# -- assembling on download ---------------------------------------------------------------------


def read_layout(store: ObjectStore, item: EvidenceItem) -> pl.Layout:
    """The package item's layout, after checking the object against the item's recorded hash."""
    data = store.get_bytes(item.object_key, item.version_id)
    check = FixityCheck(item.sha256, None, item.size)  # a few KB: SHA-256, the evidence hash itself
    check.update(data)
    if not check.ok:
        raise PackageAltered(_altered(item.id, check))
    try:
        return pl.decode(data)
    except pl.LayoutError as exc:
        raise PackageAltered(f"package {item.id}: {exc}") from None


AlteredHook = Callable[[pl.MediaSegment, FixityCheck], None]


def _media_piece(
    store: ObjectStore, seg: pl.MediaSegment, lo: int, n: int, on_altered: AlteredHook | None
) -> Iterator[bytes]:
    """Bytes ``lo``..``lo+n`` of one media member, read whole so that it is checked against the
    digests the package recorded; the last block sent waits for the check, so an altered object
    never reaches the recipient complete."""
    check = FixityCheck(seg.sha256, seg.blake3, seg.length)
    pos = 0
    held: bytes | None = None
    blocks = _media_blocks(store, seg.key, seg.version_id, tap=check.update)
    with contextlib.closing(blocks):  # type: ignore[type-var]
        for block in blocks:
            a, b = max(lo, pos), min(lo + n, pos + len(block))
            if a < b:
                part = block if (a, b) == (pos, pos + len(block)) else block[a - pos : b - pos]
                if held is not None:
                    yield held
                held = part
            pos += len(block)
    if not check.ok:
        if on_altered is not None:
            on_altered(seg, check)
        raise PackageAltered(_altered(seg.item_id, check))
    if held is not None:
        yield held


def assemble(
    store: ObjectStore,
    layout: pl.Layout,
    start: int = 0,
    end: int | None = None,
    on_altered: AlteredHook | None = None,
) -> Iterator[bytes]:
    """The package's bytes ``start``..``end`` (inclusive; the whole zip by default), streamed.

    Raises PackageAltered (after calling ``on_altered``) when a media object no longer matches."""
    last = layout.size - 1 if end is None else end
    for seg, lo, n in pl.pieces(layout, start, last):
        if isinstance(seg, pl.DataSegment):
            yield layout.blob[seg.offset + lo : seg.offset + lo + n]
        else:
            yield from _media_piece(store, seg, lo, n, on_altered)


def items_read(layout: pl.Layout, start: int = 0, end: int | None = None) -> list[str]:
    """The evidence items whose stored bytes a download of this range reads."""
    last = layout.size - 1 if end is None else end
    return list(
        dict.fromkeys(
            s.item_id for s, _, _ in pl.pieces(layout, start, last) if isinstance(s, pl.MediaSegment)
        )
    )
