"""tus 1.0 routes for docking stations under ``/api/v1/dock/uploads`` (see docs/PROTOCOLS.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from devices.models import Device
from devices.service import DeviceRefused
from storage.objects import StorageError, StorageFull, StorageUnavailable

from .auth import current_dock, services
from .metrics import UPLOAD_REFUSALS
from .services import Services
from .tus_protocol import (
    CHECKSUM_ALGORITHMS,
    TUS_EXTENSIONS,
    TUS_VERSION,
    TusRefusal,
    parse_clip_metadata,
    parse_length,
)
from .uploads import (
    ClientGone,
    StorageFullError,
    UploadBusy,
    UploadEngine,
    UploadGone,
    UploadState,
    _Disconnected,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/dock/uploads", tags=["dock"])


def engine(s: Services = Depends(services)) -> UploadEngine:
    return s.extras["uploads"]  # type: ignore[return-value]


def _tus_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    h = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    if extra:
        h.update(extra)
    return h


def _state_headers(state: UploadState) -> dict[str, str]:
    h = {
        "Upload-Offset": str(state.offset),
        "Upload-Length": str(state.length),
        "Upload-Expires": state.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }
    if state.evidence_item_id:
        h["Evidence-Item-Id"] = state.evidence_item_id
        h["Evidence-Status"] = state.evidence_status or ""
    return h


def refusal(
    status: int, reason: str, message: str, dock: Device | None = None, retry_after: int | None = None
) -> JSONResponse:
    UPLOAD_REFUSALS.labels(reason=reason).inc()
    log.warning(
        "dock request refused",
        extra={"reason": reason, "status": status, "dock": dock.id if dock else None, "detail": message},
    )
    headers = _tus_headers()
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message, "reason": reason}, status_code=status, headers=headers)


def _check_version(request: Request) -> None:
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise TusRefusal(412, "tus_version", f"Tus-Resumable {TUS_VERSION} is required")


def _handle(exc: Exception, dock: Device | None, retry_after: int) -> JSONResponse:
    if isinstance(exc, TusRefusal):
        return refusal(exc.status, exc.reason, str(exc), dock)
    if isinstance(exc, DeviceRefused):
        return refusal(exc.status, exc.reason, str(exc), dock)
    if isinstance(exc, UploadGone):
        return refusal(exc.status, "gone" if exc.status == 410 else "not_found", str(exc), dock)
    if isinstance(exc, UploadBusy):
        return refusal(503, "busy", str(exc), dock, retry_after)
    if isinstance(exc, (StorageFull, StorageFullError)):
        return refusal(507, "storage_full", "evidence storage is full", dock, retry_after * 12)
    if isinstance(exc, (StorageUnavailable, StorageError)):
        return refusal(503, "storage_unavailable", f"evidence storage unavailable: {exc}", dock, retry_after)
    raise exc


@router.options("", include_in_schema=True)
def options(dock: Device = Depends(current_dock), s: Services = Depends(services)) -> Response:
    """tus discovery: version, extensions, checksum algorithms and the largest clip accepted."""
    return Response(
        status_code=204,
        headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
            "Tus-Max-Size": str(s.settings.max_clip_bytes),
        },
    )


@router.post("", status_code=201)
async def create(
    request: Request,
    dock: Device = Depends(current_dock),
    s: Services = Depends(services),
    uploads: UploadEngine = Depends(engine),
) -> Response:
    """tus creation: open a resumable upload of one clip."""
    try:
        _check_version(request)
        length = parse_length(request.headers.get("upload-length"), s.settings.max_clip_bytes)
        meta = parse_clip_metadata(request.headers.get("upload-metadata"), s.settings.max_metadata_bytes)
        state, replayed = await asyncio.to_thread(uploads.create, dock, meta, length)
    except Exception as exc:  # noqa: BLE001 - every refusal gets a reasoned answer
        return _handle(exc, dock, s.settings.retry_after_seconds)
    headers = _tus_headers(
        {"Location": f"{request.url.path.rstrip('/')}/{state.id}", **_state_headers(state)}
    )
    if replayed:
        headers["Upload-Offset"] = "0"  # the client starts at 0; a 409 then shows the upload is finished
    return Response(status_code=201, headers=headers)


@router.head("/{upload_id}")
async def head(
    upload_id: str,
    request: Request,
    dock: Device = Depends(current_dock),
    s: Services = Depends(services),
    uploads: UploadEngine = Depends(engine),
) -> Response:
    """tus offset: how many bytes of this clip the service holds."""
    try:
        _check_version(request)
        state = await asyncio.to_thread(uploads.head, dock, upload_id)
    except Exception as exc:  # noqa: BLE001
        r = _handle(exc, dock, s.settings.retry_after_seconds)
        return Response(status_code=r.status_code, headers=dict(r.headers))
    return Response(status_code=200, headers=_tus_headers(_state_headers(state)))


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientGone() from None


@router.patch("/{upload_id}", status_code=204)
async def patch(
    upload_id: str,
    request: Request,
    dock: Device = Depends(current_dock),
    s: Services = Depends(services),
    uploads: UploadEngine = Depends(engine),
) -> Response:
    """tus data: append the request body at ``Upload-Offset``."""
    try:
        _check_version(request)
        if request.headers.get("content-type") != "application/offset+octet-stream":
            raise TusRefusal(415, "content_type", "Content-Type must be application/offset+octet-stream")
        raw_offset = request.headers.get("upload-offset", "")
        if not raw_offset.isdigit():
            raise TusRefusal(400, "bad_offset", "Upload-Offset must be a non-negative integer")
        state = await uploads.patch(
            dock, upload_id, int(raw_offset), _body(request), request.headers.get("upload-checksum")
        )
    except _Disconnected:
        return Response(status_code=400)
    except Exception as exc:  # noqa: BLE001
        return _handle(exc, dock, s.settings.retry_after_seconds)
    return Response(status_code=204, headers=_tus_headers(_state_headers(state)))


@router.delete("/{upload_id}", status_code=204)
async def terminate(
    upload_id: str,
    request: Request,
    dock: Device = Depends(current_dock),
    s: Services = Depends(services),
    uploads: UploadEngine = Depends(engine),
) -> Response:
    """tus termination: abandon an unfinished upload."""
    try:
        _check_version(request)
        await asyncio.to_thread(uploads.terminate, dock, upload_id)
    except Exception as exc:  # noqa: BLE001
        return _handle(exc, dock, s.settings.retry_after_seconds)
    return Response(status_code=204, headers=_tus_headers())
