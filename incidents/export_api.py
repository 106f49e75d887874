"""Export routes: ask for an incident's evidence package, follow its build, and hand out expiring links.

An investigator (or security manager, or admin) who can see an incident asks for its package; the
build runs in the background: one pass over the media that checks their hashes, then the package's
layout is stored as its evidence item (see :mod:`incidents.export`). The zip is assembled from the
layout and the locked media objects on every download, byte for byte the same each time. Original (unredacted)
footage goes in only when a security manager or admin asks for it and states a reason, which is
recorded in custody on every original exported. A package is downloaded through a link that names
its recipient, expires, can be revoked, and carries an HMAC-signed token, so the recipient (an
officer, a solicitor) needs no account; every download is a ``viewed`` custody entry on the package.

The application supplies its authentication and services dependencies (``build_router``), so this
module does not import the application.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody import package_layout as pl
from chain_of_custody.evidence import parse_range
from chain_of_custody.fixity import FixityCheck
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from storage.objects import StorageError

from .access import EVIDENCE_MEDIA, INCIDENT_MANAGERS, Viewer, visible_incident
from .export import (
    ExportError,
    ExportRequest,
    OriginalsPermission,
    PackageAltered,
    assemble,
    build_package,
    gather_items,
    items_read,
    plan_package,
    read_layout,
    unrecorded,
)
from .export_models import ExportJob, ExportLink
from .models import IncidentLink

log = logging.getLogger(__name__)


async def blocks_in_thread(blocks: Iterator[bytes], depth: int = 2) -> AsyncIterator[bytes]:
    """A blocking block iterator run on one thread of its own for the whole response, its blocks
    handed to the event loop as they come. Starlette would instead make a round trip to its worker
    pool for every block; this way a download runs about a tenth faster on two cores. When the
    response ends early (the client went away, an error), the thread stops and closes ``blocks``."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def hand_over(got: bytes | BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to receive
            loop.call_soon_threadsafe(ready.put_nowait, got)

    def pump() -> None:
        try:
            for block in blocks:
                while not room.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(block)
            hand_over(None)
        except BaseException as exc:  # noqa: BLE001 - raised again on the event loop
            hand_over(exc)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    threading.Thread(target=pump, name="download-blocks", daemon=True).start()
    try:
        while True:
            got = await ready.get()
            room.release()
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        room.release()


EXPORTERS = EVIDENCE_MEDIA
ORIGINALS_AUTHORISERS = INCIDENT_MANAGERS
LINK_INFO = b"evidence export download link v1"


# -- the one integration point with incidents ----------------------------------------------------


def incident_export_scope(
    session: Session, principal: Viewer, incident_id: str
) -> tuple[dict[str, Any], list[str]]:
    """The incident's summary for the manifest and the evidence items linked to it now.

    Raises LookupError when the incident does not exist or is outside the caller's scope (the two
    are not told apart). Alarms linked by their alarm id are listed in the summary; an alarm whose
    record is an evidence item under the same id is packaged as that item.
    """
    incident = visible_incident(session, principal, incident_id)
    if incident is None:
        raise LookupError("no such incident")
    links = session.execute(
        select(IncidentLink.target_kind, IncidentLink.target_id)
        .where(IncidentLink.incident_id == incident.id, IncidentLink.unlinked_at.is_(None))
        .order_by(IncidentLink.linked_at, IncidentLink.id)
    ).all()
    evidence = [t for k, t in links if k == "evidence"]
    alarms = [t for k, t in links if k == "alarm"]
    alarm_items = (
        set(session.scalars(select(EvidenceItem.id).where(EvidenceItem.id.in_(alarms)))) if alarms else set()
    )
    summary = {
        "id": incident.id,
        "reference": incident.reference,
        "category": incident.category,
        "status": incident.status,
        "title": incident.title,
        "occurred_at": incident.occurred_at.isoformat(),
        "site": incident.site,
        "ward": incident.ward,
        "linked_alarms": alarms,
    }
    return summary, list(dict.fromkeys(evidence + [a for a in alarms if a in alarm_items]))


# -- download link tokens (pure) -----------------------------------------------------------------


class LinkRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


# -- background builds ---------------------------------------------------------------------------


def _retain_until(items: list[EvidenceItem], retention_days: int, now: datetime) -> datetime:
    """At least the default retention, and no shorter than any item the package holds."""
    floor = now + timedelta(days=max(1, retention_days))
    return max([floor] + [i.retain_until for i in items if i.retain_until is not None])


def run_export_job(s: Any, job_id: str, heartbeat_seconds: float) -> None:
    """Build the package of one job, keeping its heartbeat and progress current; never raises."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat_seconds):
            try:
                with s.db.session() as session:
                    job = session.get(ExportJob, job_id)
                    if job is not None and job.status == "building":
                        job.heartbeat_at = datetime.now(UTC)
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("export heartbeat failed", exc_info=True)

    def progress(n: int) -> None:
        try:
            with s.db.session() as session:
                job = session.get(ExportJob, job_id)
                if job is not None:
                    job.media_bytes_done = n
                    job.heartbeat_at = datetime.now(UTC)
        except Exception:  # noqa: BLE001 - progress is for people watching; the build goes on
            log.warning("export progress not recorded", exc_info=True)

    ticker = threading.Thread(target=beat, name=f"export-beat-{job_id[:8]}", daemon=True)
    ticker.start()
    try:
        with s.db.session() as session:
            job = session.get(ExportJob, job_id)
            scope = json.loads(job.scope)
            items = gather_items(session, scope["item_ids"])
            originals = (
                OriginalsPermission(job.requested_by, job.requester_role, job.reason or "")
                if job.include_originals
                else None
            )
            request = ExportRequest(
                export_id=job.id,
                incident=scope["incident"],
                actor=job.requested_by,
                retain_until=_retain_until(items, s.settings.retention_days, datetime.now(UTC)),
                originals=originals,
            )
        result = build_package(
            s.db,
            s.store,
            s.ledger,
            s.key,
            items,
            request,
            progress=progress,
        )
        with s.db.session() as session:
            job = session.get(ExportJob, job_id)
            job.status = "ready"
            job.media_bytes_done = job.media_bytes_total = result.media_bytes
            job.package_sha256 = result.package_sha256
            job.package_size = result.package_size
            job.filename = result.filename
            job.result = json.dumps(
                {
                    "included": result.included,
                    "withheld": result.withheld,
                    "manifest_sha256": result.manifest_sha256,
                    "key_fingerprint": result.key_fingerprint,
                    "layout_sha256": result.stored.sha256,
                }
            )
            job.finished_at = datetime.now(UTC)
        log.info("export ready", extra={"export": job_id, "bytes": result.package_size})
    except Exception as exc:  # noqa: BLE001 - recorded on the job for the requester to see
        log.exception("export failed", extra={"export": job_id})
        message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        with s.db.session() as session:
            job = session.get(ExportJob, job_id)
            if job is not None:
                job.status = "failed"
                job.error = message
                job.finished_at = datetime.now(UTC)
    finally:
        done.set()


# -- HTTP ----------------------------------------------------------------------------------------


class ExportIn(BaseModel):
    include_originals: bool = False
    reason: str | None = Field(None, max_length=2000, description="required to include original footage")


class ExportOut(BaseModel):
    id: str
    incident_id: str
    status: str
    requested_by: str
    include_originals: bool
    reason: str | None
    created_at: datetime
    finished_at: datetime | None
    media_bytes_total: int
    media_bytes_done: int
    package_sha256: str | None
    package_size: int | None
    filename: str | None
    included: list[str] | None = None
    withheld: dict[str, str] | None = None
    manifest_sha256: str | None = None
    key_fingerprint: str | None = None
    layout_sha256: str | None = Field(
        None, description="SHA-256 of the stored package layout (the item's object)"
    )
    error: str | None = None


class LinkIn(BaseModel):
    recipient: str = Field(
        min_length=3, max_length=200, description="who the link is for, as recorded in custody"
    )
    expires_in_hours: int = Field(72, ge=1, le=24 * 30)


class LinkOut(BaseModel):
    id: str
    export_id: str
    recipient: str
    created_by: str
    expires_at: datetime
    url: str
    path: str


def _job_out(job: ExportJob) -> dict[str, Any]:
    out: dict[str, Any] = {
        c: getattr(job, c)
        for c in (
            "id",
            "incident_id",
            "status",
            "requested_by",
            "include_originals",
            "reason",
            "created_at",
            "finished_at",
            "media_bytes_total",
            "media_bytes_done",
            "package_sha256",
            "package_size",
            "filename",
        )
    }
    if job.result:
        out.update(json.loads(job.result))
    out["error"] = job.error
    return out


def build_router(require_roles: Callable[..., Any], services: Callable[..., Any]) -> APIRouter:
    """The export routes, with the application's role check and services dependencies."""
    router = APIRouter(prefix="/api/v1", tags=["exports"])
    exporters = Depends(require_roles(*EXPORTERS))

    def visible_job(session: Session, user: Viewer, export_id: str, lease: int) -> ExportJob:
        job = session.get(ExportJob, export_id)
        if job is None or visible_incident(session, user, job.incident_id) is None:
            raise HTTPException(404, "no such export")
        stale = datetime.now(UTC) - timedelta(seconds=lease)
        if job.status == "building" and job.heartbeat_at < stale:
            job.status = "failed"
            job.error = "interrupted: the process building the package stopped; ask for a new export"
            job.finished_at = datetime.now(UTC)
        return job

    @router.post("/incidents/{incident_id}/exports", response_model=ExportOut, status_code=202)
    def request_export(
        incident_id: str,
        body: ExportIn,
        response: Response,
        user: Viewer = exporters,
        s: Any = Depends(services),
    ) -> dict[str, Any]:
        """Start building the incident's evidence package; poll the returned export until it is ready."""
        reason = (body.reason or "").strip()
        if body.include_originals:
            if user.role not in ORIGINALS_AUTHORISERS:
                raise HTTPException(403, f"role {user.role} may not export original footage")
            if len(reason) < 10:
                raise HTTPException(
                    422, "exporting original footage needs a stated reason (10 characters or more)"
                )
        with s.db.session() as session:
            try:
                summary, item_ids = incident_export_scope(session, user, incident_id)
            except LookupError:
                raise HTTPException(404, "no such incident") from None
            if not item_ids:
                raise HTTPException(409, "nothing is linked to this incident yet")
            try:
                items = gather_items(session, item_ids)
            except ExportError as exc:
                raise HTTPException(409, str(exc)) from None
            permission = (
                OriginalsPermission(user.actor, user.role, reason) if body.include_originals else None
            )
            total = sum(p.item.size for p in plan_package(items, permission) if p.include_media)
            job = ExportJob(
                id=str(uuid.uuid4()),
                incident_id=summary["id"],
                requested_by=user.actor,
                requester_role=user.role,
                include_originals=body.include_originals,
                reason=reason or None,
                scope=json.dumps({"incident": summary, "item_ids": item_ids}),
                media_bytes_total=total,
                media_bytes_done=0,
                status="building",
                created_at=datetime.now(UTC),
                heartbeat_at=datetime.now(UTC),
            )
            session.add(job)
            session.flush()
            out = _job_out(job)
        lease = s.settings.worker_lease_seconds
        threading.Thread(
            target=run_export_job,
            args=(s, out["id"], max(1.0, lease / 4)),
            name=f"export-{out['id'][:8]}",
            daemon=True,
        ).start()
        response.headers["Location"] = f"/api/v1/exports/{out['id']}"
        return out

    @router.get("/incidents/{incident_id}/exports", response_model=list[ExportOut])
    def incident_exports(
        incident_id: str, user: Viewer = exporters, s: Any = Depends(services)
    ) -> list[dict[str, Any]]:
        with s.db.session() as session:
            incident = visible_incident(session, user, incident_id)
            if incident is None:
                raise HTTPException(404, "no such incident")
            jobs = session.scalars(
                select(ExportJob)
                .where(ExportJob.incident_id == incident.id)
                .order_by(ExportJob.created_at.desc())
            ).all()
            return [_job_out(visible_job(session, user, j.id, s.settings.worker_lease_seconds)) for j in jobs]

    @router.get("/exports/{export_id}", response_model=ExportOut)
    def get_export(export_id: str, user: Viewer = exporters, s: Any = Depends(services)) -> dict[str, Any]:
        with s.db.session() as session:
            return _job_out(visible_job(session, user, export_id, s.settings.worker_lease_seconds))

    @router.post("/exports/{export_id}/links", response_model=LinkOut, status_code=201)
    def create_link(
        export_id: str, body: LinkIn, request: Request, user: Viewer = exporters, s: Any = Depends(services)
    ) -> dict[str, Any]:
        """A download link for a named recipient, valid for ``expires_in_hours``."""
        now = datetime.now(UTC).replace(microsecond=0)
        with s.db.session() as session:
            job = visible_job(session, user, export_id, s.settings.worker_lease_seconds)
            if job.status != "ready":
                raise HTTPException(409, f"the export is {job.status}, not ready")
            link = ExportLink(
                id=str(uuid.uuid4()),
                export_id=job.id,
                recipient=body.recipient.strip(),
                created_by=user.actor,
                created_at=now,
                expires_at=now + timedelta(hours=body.expires_in_hours),
            )
            session.add(link)
        path = f"/api/v1/exports/download/{make_link_token(link_secret(s.key), link.id, job.id, link.expires_at)}"
        log.info("export link issued", extra={"export": job.id, "link": link.id, "by": user.actor})
        return {
            "id": link.id,
            "export_id": job.id,
            "recipient": link.recipient,
            "created_by": link.created_by,
            "expires_at": link.expires_at,
            "url": str(request.base_url).rstrip("/") + path,
            "path": path,
        }

    @router.delete("/exports/{export_id}/links/{link_id}", status_code=204)
    def revoke_link(
        export_id: str, link_id: str, user: Viewer = exporters, s: Any = Depends(services)
    ) -> Response:
        with s.db.session() as session:
            job = visible_job(session, user, export_id, s.settings.worker_lease_seconds)
            link = session.get(ExportLink, link_id)
            if link is None or link.export_id != job.id:
                raise HTTPException(404, "no such link")
            if link.revoked_at is None:
                link.revoked_at = datetime.now(UTC)
                link.revoked_by = user.actor
        return Response(status_code=204)

    @router.get("/exports/download/{token}")
    def download(token: str, request: Request, s: Any = Depends(services)) -> Response:
        """The package, for whoever holds an unexpired, unrevoked link (the token is the credential).

        The zip is assembled from the package's layout and the locked media objects, each media hash
        checked as it streams; a mismatch breaks the response off before the member's last bytes, so
        a package that looks whole is always the package as exported. Range requests resume large
        downloads; every request is a ``viewed`` entry on the package naming the items it reads."""
        now = datetime.now(UTC)
        try:
            link_id, _, _ = parse_link_token(token)
            with s.db.session() as session:
                link = session.get(ExportLink, link_id)
                if link is None:
                    raise LinkRefused(404, "no such download link")
                check_link_token(link_secret(s.key), token, link.export_id, now)
                if link.revoked_at is not None:
                    raise LinkRefused(410, "this download link was revoked")
                if link.expires_at <= now:
                    raise LinkRefused(410, "this download link has expired")
                item = session.get(EvidenceItem, link.export_id)
                if item is None or item.status == "deleted":
                    raise LinkRefused(410, "the package is no longer held")
                # The layout is found and checked by the package's row: it must be what was recorded.
                problem = unrecorded(item, Ledger.stored_entry(session, item.id), s.ledger.verifier)
                session.expunge(item)
                recipient, created_by = link.recipient, link.created_by
        except LinkRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if problem is not None:
            log.error("export package record altered", extra={"export": item.id, "problem": problem})
            raise HTTPException(409, f"the package cannot be served: {problem}")
        layout = None
        if item.content_type == pl.CONTENT_TYPE:
            try:
                layout = read_layout(s.store, item)
            except PackageAltered as exc:
                log.error("export package altered", extra={"export": item.id, "problem": str(exc)})
                raise HTTPException(409, f"the package cannot be served: {exc}") from None
            except StorageError as exc:
                raise HTTPException(
                    503, "storage unavailable; try again", headers={"Retry-After": "5"}
                ) from exc
        size = layout.size if layout else item.size
        package_sha256 = layout.sha256 if layout else item.sha256
        try:
            byte_range = parse_range(request.headers.get("range"), size)
        except ValueError:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = (byte_range.start, byte_range.end) if byte_range else (0, size - 1)
        with s.db.session() as session:
            s.ledger.append(
                session,
                "viewed",
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
                media = session.get(EvidenceItem, seg.item_id, with_for_update=True)
                reason = f"stored object {check.mismatch()}; found while serving export {item.id}"
                s.ledger.append(
                    session,
                    "quarantined",
                    "service",
                    item_id=seg.item_id,
                    details={"reason": reason, "export_id": item.id, "link": link_id},
                )
                if media is not None and media.status != "deleted":
                    media.status = "quarantined"
                    media.quarantine_reason = reason

        def guarded(body: Iterator[bytes]) -> Iterator[bytes]:
            try:
                yield from body
            except StorageError:
                log.error(
                    "export download broken off: storage failed", extra={"export": item.id}, exc_info=True
                )
                raise

        if layout is not None:
            body = guarded(assemble(s.store, layout, start, end, on_altered=altered))
        elif byte_range is None:
            body = s.store.read(item.object_key, item.version_id)
        else:
            body = s.store.read(item.object_key, item.version_id, offset=start, length=end - start + 1)
        headers["Content-Length"] = str(end - start + 1)
        stream = blocks_in_thread(body)
        if byte_range is None:
            return StreamingResponse(stream, media_type="application/zip", headers=headers)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return StreamingResponse(stream, status_code=206, media_type="application/zip", headers=headers)

    return router
