"""Building a package: one pass over the media (``media``), then what is new (custody documents, the
continuity report, VERIFY.txt, the signed manifest, every zip header) stored write-once as the
package's own evidence item with the layout of the zip, and the items' locks extended to match."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody import manifest as mf
from chain_of_custody import package_layout as pl
from chain_of_custody.canonical import rfc3339
from chain_of_custody.entries import CustodyAction
from chain_of_custody.evidence import Provenance, quarantine, record_evidence
from chain_of_custody.keys import FINGERPRINT_COMMAND, SIGNING_KEY_PATH, ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.signed_tree_head import TreeHead
from chain_of_custody.viewing import range_line
from chain_of_custody.viewings import kept_ranges
from storage.db import Database
from storage.objects import ObjectLocked, ObjectStore, StoredObject

from .. import exhibits
from ..continuity import package_continuity
from ..continuity_record import people_names
from . import media
from .media import MediaAltered, _MediaDigests, _Progress, unrecorded
from .plan import (
    ORIGINAL_VIDEO_KINDS,
    PACKAGE_KIND,
    ExportError,
    ExportRequest,
    PlannedItem,
    foreign_markers,
    own_chain,
    package_filename,
    plan_package,
    redaction_records,
)
from .report import render_continuity_report
from .zip import ZipBuilder

LogProofs = tuple[TreeHead, dict[int, list[str]]]  # a tree head and inclusion paths by entry seq


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


def verification_instructions(export_id: str, created_at: str, filename: str) -> bytes:
    """VERIFY.txt: how to check the package with sha256sum and openssl alone (commands run as written).

    It names no key fingerprint on purpose: whoever forges a package rewrites this file too, so the
    reader is sent to the trust for the fingerprint, never to the package."""
    return f"""How to verify this evidence export package
==========================================

Package:  {filename}
Export:   {export_id}
Created:  {created_at} (UTC)

Before you start, obtain from the trust itself, never from this package (anyone who alters a
package can re-sign it with a key of their own and put that key, and its fingerprint, inside it):
  - the fingerprint of the trust's signing key: at the trust's web address {SIGNING_KEY_PATH}
    (no account needed), on the page of the download link you were sent (the link followed by
    /about), or in the export's record as the trust sent it to you;
  - the SHA-256 of the package file itself: on the download link's page, or in the export's record.

Everything below needs only GNU coreutils (sha256sum, sort, cut, tail, wc, diff), Info-ZIP unzip,
OpenSSL 3 and bash, and no access to the service that made the package. Put the package file in an
empty directory, unpack it there with any zip tool that handles ZIP64, for example

    unzip {filename} -d package
    cd package

and run each command below in that directory (the package file is then ../{filename}).

0. The file is exactly the one the trust published. This prints its SHA-256, which must equal the
   SHA-256 you obtained from the trust. If it does, no byte of the file was changed, added or
   removed since it was made, and the steps below show what it contains and who signed it.

    $ sha256sum ../{filename}

1. The signing key is the trust's.
   This prints the key's fingerprint. It must equal the fingerprint you obtained from the trust.
   If it does not, the package was not signed by the trust: stop here.

    $ {FINGERPRINT_COMMAND}

2. The manifest and the checksum list were signed by that key.
   Each command prints "Signature Verified Successfully".

    $ openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in manifest.json -sigfile manifest.sig
    $ openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig

3. Every file is exactly as it was exported. Every line must end in "OK".

    $ sha256sum -c SHA256SUMS

4. The package holds exactly those files and nothing else: no file, directory, second copy or name
   differing only in case beside them, no comment, no bytes before the zip. The first command prints
   "No errors detected" and no warning; the second prints 0 (the zip has no comment); the third
   prints nothing (a line starting "<" names a member that does not belong, one starting ">" a
   listed file that is missing).

    $ unzip -tq ../{filename}
    $ unzip -zq ../{filename} | wc -c
    $ unzip -Z1 ../{filename} | LC_ALL=C sort | diff - <( (cut -c67- SHA256SUMS; printf '%s\\n' {" ".join(sorted(CONTROL_NOT_IN_SUMS))}) | LC_ALL=C sort)

5. What the manifest says.
   manifest.json lists every file with its SHA-256 and size, and every evidence item: its kind, its
   hash, and for a redacted video ("redacted_clip") the item and SHA-256 of the original it was made
   from ("derived_from"). Originals not included are listed with the reason they were withheld; their
   custody record is still included, and its "stored" entry shows the original's SHA-256.
   continuity_report.html (and continuity_report.pdf) say the same in words, with each item's
   exhibit reference ("exhibit_reference" in the manifest).

6. The custody record of each item (custody/<item>.json).
   Each entry was signed by the service key when the action happened. Its "entry_hash" is the
   SHA-256 of the canonical JSON (keys sorted, no spaces, UTF-8) of the entry without "entry_hash"
   and "signature", plus "v": 1; "signature" is the base64 Ed25519 signature of those same bytes;
   "item_prev_hash" links each entry to the one before it and "item_seq" counts from 1.
   An entry with "withheld" belongs to another incident or package: it keeps only its place and
   "entry_hash" (the manifest lists that hash under the item's custody "withheld", and the next
   entry names it as "item_prev_hash"), so it cannot be re-hashed or its signature checked.
   "log" holds a tree head of the service's custody log (RFC 9162 Merkle tree of every entry, in
   order, signed by the same key and kept in write-once storage) and each entry's inclusion proof
   against it: the leaf is the SHA-256 of 0x00 followed by the same canonical bytes.
   A viewing (a player's many ranged reads of one item) is two entries: "viewed" opens it and
   "viewing_closed" seals it; custody/viewings/<viewing>.txt lists its ranges, and its SHA-256
   (sha256sum) is the seal's "ranges_sha256". A viewing is carried whole or withheld whole.
   The service's own command checks all of this, every hash, signature and proof, offline, given the
   fingerprint you obtained from the trust:

    evidence verify {filename} --key-fingerprint <the fingerprint from the trust>
""".encode()


# The members SHA256SUMS cannot list (itself, the signatures, the key): VERIFY.txt's member check adds them.
CONTROL_NOT_IN_SUMS = frozenset(mf.CONTROL_FILES - {mf.MANIFEST})


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


def _log_section(chain: list[dict[str, Any]], log: LogProofs | None) -> dict[str, Any] | None:
    """The tree head and each of the chain's entries' inclusion proofs against it."""
    if log is None:
        return None
    head, paths = log
    return {
        "tree_head": head.to_json(),
        "inclusion": [{"seq": e["seq"], "leaf_index": e["seq"] - 1, "path": paths[e["seq"]]} for e in chain],
    }


def _selection(p: PlannedItem, chain: list[dict[str, Any]]) -> dict[str, Any]:
    """Which redaction of its clip a packaged copy (or its record) is, as its custody says, who asked
    for it and whom it leaves visible, and why the package holds this version."""
    done = next(
        (
            e.get("details") or {}
            for e in chain
            if e.get("action") == CustodyAction.REDACTED and "withheld" not in e
        ),
        {},
    )
    return {
        "why": p.chosen,
        "redaction_version": done.get("version"),
        "redaction_job": done.get("job"),
        "requested_by": done.get("requested_by"),
        "left_visible": [
            {**e, "by": done.get("requested_by")} for e in (done.get("edits") or {}).get("exclusions", [])
        ],
    }


def recorded_reference(chain: Sequence[dict[str, Any]], incident_id: str, reference: str) -> bool:
    """Whether the item's custody gives it ``reference`` in the incident (the ``linked`` or
    ``exhibit_referenced`` entry that gave it)."""
    return any(
        e.get("action") in (CustodyAction.LINKED, CustodyAction.EXHIBIT_REFERENCED)
        and (e.get("details") or {}).get("exhibit") == reference
        and (e.get("details") or {}).get("incident_id") == incident_id
        for e in chain
    )


def viewing_range_lists(session: Session, chains: dict[str, list[dict[str, Any]]]) -> dict[str, bytes]:
    """The range list of every sealed viewing whose seal the chains carry (not withheld), as its
    seal's digest takes it; ExportError when the kept ranges no longer hash to the seal."""
    out: dict[str, bytes] = {}
    for chain in chains.values():
        for e in chain:
            details = e.get("details") or {}
            if (
                e.get("action") != CustodyAction.VIEWING_CLOSED
                or "withheld" in e
                or not isinstance(details, dict)
            ):
                continue
            viewing_id = str(details.get("viewing"))
            listed = b"".join(range_line(*r) for r in kept_ranges(session, viewing_id))
            if hashlib.sha256(listed).hexdigest() != details.get("ranges_sha256"):
                raise ExportError(
                    f"viewing {viewing_id}: its kept ranges no longer hash to its seal (custody entry "
                    f"#{e.get('seq')}): not exported; run 'evidence verify'"
                )
            out[viewing_id] = listed
    return out


def compose_package(
    store: ObjectStore,
    key: ServiceKey,
    request: ExportRequest,
    plan: list[PlannedItem],
    chains: dict[str, list[dict[str, Any]]],
    *,
    log: LogProofs | None = None,
    created_at: datetime,
    package_hash: bool = False,
    progress: Callable[[int], None] | None = None,
    viewing_ranges: dict[str, bytes] | None = None,
) -> tuple[pl.Layout, int]:
    """One streaming pass over the media, then the layout of the whole package; (layout, media bytes).

    With ``package_hash`` the pass also computes the SHA-256 of the whole zip (a second SHA-256 over
    every media byte, in zip order). Raises ExportError if any media object differs from its record.
    ``viewing_ranges``: the range list of each sealed viewing the chains carry (``viewing_range_lists``)."""
    stamp = rfc3339(created_at, 0)
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
    crcs = {} if package_hash else media._scan_parallel(store, media_items, counter)
    with ThreadPoolExecutor(1, thread_name_prefix="export-crc") as side:
        for p in plan:
            it = p.item
            path = mf.media_path(it.id, it.filename, it.content_type, it.kind) if p.include_media else None
            if path is not None:
                out.data(out.zip.header(path, it.size, stored=True))
                start = out.zip.pos
                if package_hash:
                    crcs[it.id] = media._check_media(store, it, _MediaDigests(it, side, out.package), counter)
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
            hidden = it.id in request.outside
            records.append(
                mf.ItemRecord(
                    item_id=it.id,
                    kind=it.kind,
                    status=it.status,
                    sha256=it.sha256,
                    size=it.size,
                    content_type=it.content_type,
                    filename=None if hidden else it.filename,
                    path=path,
                    withheld_reason=p.withheld_reason,
                    derived_from=mf.OriginalRef(origin.id, origin.sha256, origin.size) if origin else None,
                    custody_entries=len(chain),
                    custody_tip=chain[-1]["entry_hash"] if chain else None,
                    wearer=None if hidden else it.wearer,
                    source_device_id=None if hidden else it.source_device_id,
                    captured_start=it.captured_start.isoformat()
                    if it.captured_start and not hidden
                    else None,
                    captured_stop=it.captured_stop.isoformat() if it.captured_stop and not hidden else None,
                    quarantine_reason=None if hidden else it.quarantine_reason,
                    custody_withheld={e["item_seq"]: e["entry_hash"] for e in chain if "withheld" in e},
                    exhibit_reference=request.exhibits.get(it.id),
                    copy_type=it.copy_type,
                    selection=_selection(p, chain) if p.chosen is not None else None,
                )
            )
    for p in plan:
        doc = mf.custody_document(p.item.id, chains[p.item.id], _log_section(chains[p.item.id], log))
        files.append(member(mf.custody_path(p.item.id), doc, "custody"))
    for viewing_id, listed in sorted((viewing_ranges or {}).items()):
        files.append(member(mf.viewing_ranges_path(viewing_id), listed, "custody"))
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
    from ..continuity_pdf import render_pdf  # ReportLab and Pillow: loaded by a build, not at start

    pdf = render_pdf(package_continuity(draft, chains, request.people))
    files.append(member(mf.REPORT_PDF, pdf, "report"))
    instructions = verification_instructions(request.export_id, stamp, filename)
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


class BuildTakenOver(ExportError):
    """The builder's lease ran out and another builder took the export over: this build records nothing."""


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
    fence: Callable[[Session], bool] | None = None,
    finish: Callable[[Session, ExportResult], None] | None = None,
    authority: Callable[[Session], None] | None = None,
) -> ExportResult:
    """Make, store and record an export package of ``items`` (see ``gather_items``) for an incident.

    The package's layout becomes evidence item ``request.export_id`` (kind ``export``); every item
    gets an ``exported`` entry naming the package and its hashes (and, for originals, who authorised
    them and why), all in one transaction after the layout is safely stored and the items' locks
    extended in storage (:func:`lock_for_package`: no storage call in the transaction). The whole
    zip's SHA-256 is computed only with ``package_hash`` (see ``compose_package``): the signed
    manifest's hash identifies the package either way. ``fence`` runs first in the recording transaction: when it
    says False (the build's lease was taken over), nothing is recorded and :class:`BuildTakenOver`
    is raised. ``finish`` runs last in the same transaction, so whoever keeps the build's state (an
    export job) records it done with the package, never after it: a builder that took the build
    over meanwhile finds it done, not still to record. ``authority`` checks that the person the
    package is built for may still have it, and raises (an ExportError) when not: run first in each
    write transaction made on their authority (the exhibit references, the recording) and in one of
    its own before anything is stored, so a refusal found during the media pass stores nothing and
    one found at the end records nothing.
    """
    if request.originals is not None and not request.originals.reason.strip():
        raise ExportError("including originals needs a stated reason")
    request = replace(request, incident=json.loads(json.dumps(request.incident, default=str)))
    incident_id = request.incident.get("id")
    with db.session() as session:  # every item the requester may see gets its exhibit reference first
        if authority is not None:
            authority(session)
        refs = (
            exhibits.assign_all(
                session,
                ledger,
                str(incident_id),
                [i.id for i in items if i.id not in request.outside],
                request.actor,
            )
            if incident_id
            else {}
        )
        actors = {
            r[0]
            for r in session.execute(
                select(CustodyEntry.actor).where(CustodyEntry.item_id.in_([i.id for i in items])).distinct()
            )
        }
        people = people_names(session, ledger.key, actors)
    request = replace(request, exhibits=refs, people=people)
    with db.reading() as session:  # the reads take no write lock: other writers go on meanwhile
        entries = {it.id: Ledger.item_entries(session, it.id) for it in items}
        foreign = foreign_markers(session, entries, request.incident.get("id"))
    chains = {item_id: [e.to_json() for e in signed] for item_id, signed in entries.items()}
    for item_id, reference in refs.items():  # the package says what custody says, not what a row says
        if not recorded_reference(chains.get(item_id, []), str(incident_id), reference):
            raise ExportError(
                f"evidence item {item_id}: its exhibit reference {reference} in this incident is not "
                "the one its custody records: not exported; run 'evidence verify'"
            )
    plan = plan_package(items, request.originals, redaction_records(chains), request.outside, request.pins)
    for p in plan:  # withheld items and originals too: the manifest names their SHA-256 as well
        stored_entry = next((e for e in entries[p.item.id] if e.body.action == CustodyAction.STORED), None)
        problem = unrecorded(p.item, stored_entry, ledger.verifier)
        if problem is not None:
            raise ExportError(problem + ": not exported; run 'evidence verify'")
    created_at = datetime.now(UTC).replace(microsecond=0)
    # Each chain as this package may carry it: what belongs to other incidents or packages withheld.
    shown = {
        i: own_chain(i, chain, request.export_id, foreign, request.outside) for i, chain in chains.items()
    }
    with db.reading() as session:
        ranges = viewing_range_lists(session, shown)
    log = (
        ledger.tree_heads.inclusion([e["seq"] for c in chains.values() for e in c], db.engine)
        if ledger.tree_heads is not None
        else None
    )
    try:
        layout, media_bytes = compose_package(
            store,
            key,
            request,
            plan,
            shown,
            log=log,
            created_at=created_at,
            package_hash=package_hash,
            progress=progress,
            viewing_ranges=ranges,
        )
    except MediaAltered as exc:  # an object that no longer checks is quarantined, not only skipped
        with db.session() as session:
            reason = f"stored object {exc.mismatch}; found while building export {request.export_id}"
            quarantine(session, ledger, exc.item_id, reason, {"export_id": request.export_id})
        raise
    if authority is not None:  # what the media pass took: nothing is stored for someone refused now
        with db.session() as session:
            authority(session)
    layout_object = store.put_bytes(
        f"exports/{request.export_id}.layout",
        pl.encode(layout),
        retain_until=request.retain_until,
        content_type=pl.CONTENT_TYPE,
    )
    included = [p.item.id for p in plan if p.include_media]
    withheld = {p.item.id: str(p.withheld_reason) for p in plan if not p.include_media}
    originals = request.originals
    result = ExportResult(
        export_id=request.export_id,
        stored=layout_object,
        filename=layout.filename,
        manifest_sha256=layout.manifest_sha256,
        package_sha256=layout.sha256,
        package_size=layout.size,
        key_fingerprint=key.fingerprint,
        included=included,
        withheld=withheld,
        media_bytes=media_bytes,
    )
    locked = lock_for_package(db, store, [p.item.id for p in plan if p.include_media], request)
    with db.session() as session:
        if authority is not None:  # first: their row, then the job's (``fence``), then the ledger's
            authority(session)
        if fence is not None and not fence(session):
            raise BuildTakenOver(f"export {request.export_id} was taken over by another builder")
        record_evidence(
            session,
            ledger,
            layout_object,
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
            CustodyAction.EXPORTED,
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
                _record_lock(session, ledger, store, p.item.id, request, locked)
            original_footage = p.include_media and p.item.kind in ORIGINAL_VIDEO_KINDS
            ledger.append(
                session,
                CustodyAction.EXPORTED,
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
                    **({"chosen": p.chosen} if p.chosen is not None else {}),
                },
            )
        if finish is not None:
            finish(session, result)
    return result


def lock_for_package(
    db: Database, store: ObjectStore, item_ids: list[str], request: ExportRequest
) -> dict[str, datetime]:
    """Storage keeps each packaged item's object at least as long as the package (the retention
    sweeper also refuses to delete it while the package is held): the lock of each item whose
    record says it ends sooner is extended here, before the recording transaction and outside any,
    so the storage calls (one per item) hold no write lock. The lock is set first and recorded after
    (``_record_lock``): COMPLIANCE retention can only be extended, so a crash or a failure between
    leaves storage stricter than the record, never looser, and the next build finds it set (an
    earlier date is refused and the later one held is adopted). The date storage holds, by item."""
    if not item_ids:
        return {}
    with db.reading() as session:
        rows = session.execute(
            select(
                EvidenceItem.id, EvidenceItem.object_key, EvidenceItem.version_id, EvidenceItem.retain_until
            ).where(EvidenceItem.id.in_(item_ids))
        ).all()
    return {
        item_id: _extend_lock(store, key, version, request.retain_until)
        for item_id, key, version, until in rows
        if until is None or until < request.retain_until
    }


def _extend_lock(store: ObjectStore, key: str, version_id: str | None, until: datetime) -> datetime:
    """Lock the object until at least ``until``; the date storage now holds."""
    target = until.replace(microsecond=0) + timedelta(seconds=1)
    try:
        store.set_retention(key, version_id, target)
    except ObjectLocked:
        held = store.info(key, version_id).retain_until  # already later in storage
        if held is None or held < until:
            raise
        target = held
    return target


def _record_lock(
    session: Session,
    ledger: Ledger,
    store: ObjectStore,
    item_id: str,
    request: ExportRequest,
    locked: dict[str, datetime],
) -> None:
    """The item's lock as the package needs it, recorded in the recording transaction with a
    ``retention_changed`` entry saying why: the date :func:`lock_for_package` set in storage."""
    item = session.get(EvidenceItem, item_id, with_for_update=True)
    if item is None or (item.retain_until is not None and item.retain_until >= request.retain_until):
        return
    target = locked.get(item_id)
    if target is None:  # the record ended sooner than when the locks were set: set this one now
        target = _extend_lock(store, item.object_key, item.version_id, request.retain_until)
    ledger.append(
        session,
        CustodyAction.RETENTION_CHANGED,
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
