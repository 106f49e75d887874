"""The routes a package link's holder uses, with no account: the link's page (what to check the file
against) and the download itself.

A link hands out the package on its issuer's authority, so it serves only while that authority
lasts (``issuer_still_may``). Every download is a ``viewed`` custody entry on the package naming the
items it reads, and the zip is assembled on each download from the layout and the locked media, each
checked again as it streams. A link streams a few downloads at once (``download_slots``): each range
of a media member reads that member whole to check it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.access import services
from chain_of_custody import package_layout as pl
from chain_of_custody.core import CoreServices
from chain_of_custody.entries import CustodyAction, Verifier
from chain_of_custody.evidence import parse_range, quarantine, quarantine_hook
from chain_of_custody.fixity import FixityCheck, checked_range
from chain_of_custody.keys import SIGNING_KEY_PATH, ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.quarantines import quarantine_standing, standings
from chain_of_custody.reads import RangeRefused, ReadRefused
from storage.api_schema import error_responses
from storage.errors import InConflict, Refused, Unavailable
from storage.objects import StorageError
from storage.settings import Settings
from storage.slots import NoSlot, Slots
from storage.streams import blocks_in_thread

from ..grants import export_job_seal_holds
from . import media
from .assemble import assemble, items_read, read_layout
from .authority import standing_refusal
from .links import LinkRefused, check_link_token, link_secret, on_custody, parse_link_token
from .media import PackageAltered, unrecorded
from .models import ExportJob, ExportLink

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["exports"])


class LinkPage(BaseModel):
    """What a recipient checks a download against, fetched from the trust rather than the package."""

    export_id: str
    recipient: str
    expires_at: datetime
    download_path: str
    filename: str | None
    package_sha256: str | None
    package_size: int | None
    manifest_sha256: str | None
    key_fingerprint: str
    signing_key_url: str = SIGNING_KEY_PATH
    how_to_check: list[str]


def _token_link(
    s: CoreServices, session: Session, token: str, now: datetime, *, lock: bool = False
) -> ExportLink:
    """The link the token names, if the token is ours for it and unexpired (LinkRefused 404 or 410
    otherwise): the credential itself, nothing of the link's state. ``lock``: its row is locked for
    the rest of the (write) transaction, so a revocation waits."""
    link_id, _, _ = parse_link_token(token)
    link = session.get(ExportLink, link_id, with_for_update=lock or None, populate_existing=lock)
    if link is None:
        raise LinkRefused(404, "no such download link")
    check_link_token(link_secret(s.key), token, link.export_id, now)
    return link


def _still_good(
    s: CoreServices, session: Session, link: ExportLink, now: datetime, *, lock: bool = False
) -> None:
    """LinkRefused (410) unless the link is still good at ``now``: not revoked, as custody records it,
    unexpired, and its issuer still may hand the package out (``issuer_still_may``; with ``lock``,
    the issuer's row held for share, so a deactivation waits for the transaction's commit)."""
    if link.revoked_at is not None:
        raise LinkRefused(410, "this download link was revoked")
    on_custody(session, link)
    if link.expires_at <= now:
        raise LinkRefused(410, "this download link has expired")
    job = session.get(ExportJob, link.export_id)
    if job is None or not issuer_still_may(session, job, link, s.key, hold=lock):
        log.warning("download link refused: its issuer's access ended", extra={"link": link.id})
        raise LinkRefused(410, "this download link is no longer good: whoever issued it no longer has access")


def _live_link(s: CoreServices, session: Session, token: str, now: datetime) -> ExportLink:
    """The link the token names, if it is ours, unexpired, not revoked and its issuer's access lasts
    (LinkRefused otherwise)."""
    link = _token_link(s, session, token, now)
    _still_good(s, session, link, now)
    return link


# What a link's anonymous holder is told when the package cannot be served: no item id, object or
# digest of the service's (the log names them).
NOT_SERVED = "the package cannot be served: evidence it holds no longer matches its record"


def _held_package(session: Session, link: ExportLink, verify_sig: Verifier) -> EvidenceItem:
    """The package's row, while it may be served: 410 when it is gone, 409 when it is quarantined."""
    item = session.get(EvidenceItem, link.export_id)
    if item is None or item.status == "deleted":
        raise LinkRefused(410, "the package is no longer held")
    if item.status == "quarantined" or quarantine_standing(session, verify_sig, item.id).quarantined:
        log.warning("export download refused: the package is quarantined", extra={"export": item.id})
        raise ReadRefused("quarantined", NOT_SERVED)
    return item


def quarantined_among(session: Session, item_ids: list[str], verify_sig: Verifier) -> str | None:
    """One of ``item_ids`` that is quarantined (by its row, or by a ``quarantined`` custody entry
    that no release holding on custody ended, ``chain_of_custody.quarantines``), or None."""
    if not item_ids:
        return None
    by_row = session.scalar(
        select(EvidenceItem.id)
        .where(EvidenceItem.id.in_(item_ids), EvidenceItem.status == "quarantined")
        .order_by(EvidenceItem.id)
        .limit(1)
    )
    if by_row is not None:
        return str(by_row)
    standing = standings(session, verify_sig, item_ids)
    return next((i for i in sorted(standing) if standing[i].quarantined), None)


def still_serves(
    s: CoreServices, session: Session, token: str, package_id: str, layout: pl.Layout | None
) -> None:
    """The one check of the link's state, in the transaction that records its download, its row
    locked (so a revocation waits for the record, or the record sees it), at the time of the record:
    a link revoked, expired or whose issuer's access ended, its package gone or quarantined, or an
    item the package holds quarantined, refuses the download, and nothing is recorded or streamed.
    (The read before it checked the token only: the checks and the record see one state.)"""
    now = datetime.now(UTC)
    link = _token_link(s, session, token, now, lock=True)
    if link.export_id != package_id:
        raise LinkRefused(410, "this download link is no longer good")
    _still_good(s, session, link, now, lock=True)
    _held_package(session, link, s.ledger.verifier)
    held = sorted({seg.item_id for seg in layout.media}) if layout is not None else []
    quarantined = quarantined_among(session, held, s.ledger.verifier)
    if quarantined is not None:
        log.warning(
            "export download refused: an item it holds is quarantined",
            extra={"export": package_id, "item": quarantined},
        )
        raise ReadRefused("quarantined", NOT_SERVED)


def issuer_still_may(
    session: Session, job: ExportJob, link: ExportLink, key: ServiceKey, *, hold: bool = False
) -> bool:
    """Whether the person who issued the link could issue it now: still an active user, who sees the
    incident and may hand out everything the package holds (``may_hand_out``). A link hands out the
    package on its issuer's authority, so it lasts no longer than that authority does (unassigned,
    moved to another site, given another role, deactivated, or their row altered outside the service).
    ``hold``: in the transaction that records a download, the issuer's row is held for share until
    it commits (``principal_of``), so their deactivation waits for the record instead of landing
    between this check and it."""
    if not export_job_seal_holds(key, job):
        return False
    return standing_refusal(session, job, link.created_by, key, hold=hold) is None


@router.get("/exports/download/{token}/about", response_model=LinkPage)
def link_page(token: str, s: CoreServices = Depends(services)) -> dict[str, Any]:
    """The link's page: the package's own SHA-256 and the signing key's fingerprint, from the trust,
    so the recipient can check the file as received and the key that signed it (the token is the
    credential, as for the download; reading this page reads no evidence). Read without the write
    lock: a made-up token is refused without taking or waiting for SQLite's one writer."""
    with s.db.reading() as session:
        link = _live_link(s, session, token, datetime.now(UTC))
        job = session.get(ExportJob, link.export_id)
        if job is None:
            raise LinkRefused(410, "the package is no longer held")
        result = json.loads(job.result or "{}")
        fingerprint = result.get("key_fingerprint") or s.key.fingerprint
        filename = job.filename or f"{job.id}.zip"
        return {
            "export_id": job.id,
            "recipient": link.recipient,
            "expires_at": link.expires_at,
            "download_path": f"/api/v1/exports/download/{token}",
            "filename": job.filename,
            "package_sha256": job.package_sha256,
            "package_size": job.package_size,
            "manifest_sha256": result.get("manifest_sha256"),
            "key_fingerprint": fingerprint,
            "how_to_check": [
                f"sha256sum {filename}  # must print {job.package_sha256}",
                f"evidence verify {filename} --key-fingerprint {fingerprint}",
                f"compare {fingerprint} with {SIGNING_KEY_PATH} on the trust's own address",
            ],
        }


class DownloadBusy(Refused):
    """No slot to stream a package: 429 when the link's own share is taken, 503 when the process's
    is, with Retry-After either way."""

    status = 503


_DOWNLOAD_SLOTS: dict[tuple[int, int], Slots] = {}
_DOWNLOAD_SLOTS_MADE = threading.Lock()


def download_slots(settings: Settings) -> Slots:
    """The process's package download slots (per link and in all), one set per pair of bounds."""
    bounds = (settings.max_download_streams, settings.max_download_streams_per_link)
    with _DOWNLOAD_SLOTS_MADE:
        return _DOWNLOAD_SLOTS.setdefault(bounds, Slots(*bounds))


class HeldSlot:
    """A download's body that gives its slot back once: when the body ends, fails or is closed (the
    client went away), or when it is dropped without ever being read."""

    def __init__(self, body: Iterator[bytes], release: Callable[[], None]) -> None:
        self._body = body
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def __iter__(self) -> HeldSlot:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._body)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            release()

    def __del__(self) -> None:
        self.close()


@router.get("/exports/download/{token}", responses=error_responses(409, 410, 416, 429, 503))
def download(token: str, request: Request, s: CoreServices = Depends(services)) -> Response:
    """The package, for whoever holds an unexpired, unrevoked link (the token is the credential).

    The zip is assembled from the package's layout and the locked media objects, each media hash
    checked as it streams; a mismatch breaks the response off before the member's last bytes, so
    a package that looks whole is always the package as exported. Range requests resume large
    downloads; every request is a ``viewed`` entry on the package naming the items it reads."""
    now = datetime.now(UTC)
    link_id, _, _ = parse_link_token(token)
    # The token is checked in a transaction that only reads: a made-up one is refused without taking
    # or waiting for SQLite's one writer. The link's state (revoked, expired, its issuer's access, its
    # package and what it holds quarantined) is checked once, where the download is recorded
    # (``still_serves``), so the check and the record see the same state.
    with s.db.reading() as session:
        link = _token_link(s, session, token, now)
        item = session.get(EvidenceItem, link.export_id)
        if item is None or item.status == "deleted":  # nothing to read (``still_serves`` says so too)
            raise LinkRefused(410, "the package is no longer held")
        # The layout is found and checked by the package's row: it must be what was recorded.
        problem = unrecorded(item, Ledger.stored_entry(session, item.id), s.ledger.verifier)
        session.expunge(item)
        recipient, created_by = link.recipient, link.created_by
    if problem is not None:
        log.error("export package record altered", extra={"export": item.id, "problem": problem})
        raise InConflict(NOT_SERVED)
    layout = None
    if item.content_type == pl.CONTENT_TYPE:
        try:
            layout = read_layout(s.store, item)
        except PackageAltered as exc:
            log.error("export package altered", extra={"export": item.id, "problem": str(exc)})
            raise InConflict(NOT_SERVED) from None
        except StorageError as exc:
            raise Unavailable("storage unavailable; try again", headers={"Retry-After": "5"}) from exc
    size = layout.size if layout else item.size
    package_sha256 = layout.sha256 if layout else item.sha256
    try:
        byte_range = parse_range(request.headers.get("range"), size)
    except ValueError:
        raise RangeRefused(size) from None
    start, end = (byte_range.start, byte_range.end) if byte_range else (0, size - 1)
    # Each range of a media member reads the member whole to check it against the package's record,
    # so a link's holder asking for many small ranges at once would make the store read gigabytes:
    # a link streams a few at a time (before anything is recorded, so a refusal writes nothing).
    slots = download_slots(s.settings)
    slot_key = f"link:{link_id}"
    try:
        slots.take(slot_key)
    except NoSlot as full:
        log.warning(
            "export download refused: too many at once", extra={"link": link_id, "own_share": full.mine}
        )
        raise DownloadBusy(
            "downloads_busy",
            "this link already has as many downloads streaming as it may: wait for one to end"
            if full.mine
            else "the service is streaming as many package downloads as it may: try again shortly",
            429 if full.mine else 503,
            retry_after=s.settings.retry_after_seconds,
        ) from None
    try:
        return _serve_download(
            s,
            request,
            item,
            layout,
            token,
            link_id,
            recipient,
            created_by,
            size,
            package_sha256,
            byte_range,
            start,
            end,
            lambda: slots.give_back(slot_key),
        )
    except BaseException:
        slots.give_back(slot_key)
        raise


def _serve_download(
    s: CoreServices,
    request: Request,
    item: EvidenceItem,
    layout: pl.Layout | None,
    token: str,
    link_id: str,
    recipient: str,
    created_by: str,
    size: int,
    package_sha256: str | None,
    byte_range: Any,
    start: int,
    end: int,
    release: Callable[[], None],
) -> Response:
    """Record the download on the package's custody, then stream it (the slot held until it ends).
    The link is checked again where the download is recorded (``still_serves``)."""
    with s.db.session() as session:
        still_serves(s, session, token, item.id, layout)
        s.ledger.append(
            session,
            CustodyAction.VIEWED,
            f"link:{link_id}",
            item_id=item.id,
            details={
                "purpose": "download",
                "recipient": recipient,
                "link_created_by": created_by,
                "range": [byte_range.start, byte_range.end] if byte_range else None,
                "sha256": package_sha256,
                "manifest_sha256": layout.manifest_sha256 if layout else None,
                "layout_sha256": item.sha256 if layout else None,
                "items_read": items_read(layout, start, end) if layout else [],
                "client": request.client.host if request.client else None,
            },
        )
    log.info("export downloaded", extra={"export": item.id, "link": link_id})
    etag = package_sha256 if package_sha256 else f"manifest-{layout.manifest_sha256}"  # type: ignore[union-attr]
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{etag}"',
        "Content-Disposition": f'attachment; filename="{item.filename or item.id + ".zip"}"',
        "Cache-Control": "no-store",
    }
    if package_sha256:
        headers["X-Evidence-SHA256"] = package_sha256
    if layout is not None:
        headers["X-Evidence-Manifest-SHA256"] = layout.manifest_sha256

    def altered(seg: pl.MediaSegment, check: FixityCheck) -> None:
        """Log and record it: the item no longer matches its record, so it is quarantined."""
        log.error(
            "export download stopped: stored object altered",
            extra={
                "export": item.id,
                "item": seg.item_id,
                "digest": check.algorithm,
                "found": check.found,
                "expected": check.expected,
            },
        )
        with s.db.session() as session:
            reason = f"stored object {check.mismatch()}; found while serving export {item.id}"
            quarantine(session, s.ledger, seg.item_id, reason, {"export_id": item.id, "link": link_id})

    def guarded(body: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from body
        except StorageError:
            log.error("export download broken off: storage failed", extra={"export": item.id}, exc_info=True)
            raise

    if layout is not None:
        body = guarded(assemble(s.store, layout, start, end, on_altered=altered))
    else:  # a package stored whole (an older form): checked against its own record as it streams
        check = FixityCheck(item.sha256, item.blake3, item.size)
        whole = media._media_blocks(
            s.store, item.object_key, item.version_id, check.update
        )  # a window at a time
        hook = quarantine_hook(s.db, s.ledger, item.id, f"serving it through link {link_id}")
        body = checked_range(whole, check, start, end - start + 1, hook)
    headers["Content-Length"] = str(end - start + 1)
    stream = blocks_in_thread(HeldSlot(body, release))
    if byte_range is None:
        return StreamingResponse(stream, media_type="application/zip", headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(stream, status_code=206, media_type="application/zip", headers=headers)
