"""tus 1.0 routes for docking stations under ``/api/v1/dock/uploads`` (see docs/PROTOCOLS.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from accounts.access import services
from chain_of_custody.core import CoreServices
from devices.models import Device
from devices.seals import device_seal_key
from devices.service import DeviceRefused, authenticate_dock
from storage.api_schema import error_responses
from storage.errors import Refused
from storage.objects import StorageError, StorageFull, StorageUnavailable

from .metrics import UPLOAD_REFUSALS
from .tus_protocol import (
    CHECKSUM_ALGORITHMS,
    TUS_EXTENSIONS,
    TUS_VERSION,
    TusRefusal,
    parse_clip_metadata,
    parse_length,
    parse_offset,
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
router = APIRouter(prefix="/api/v1/dock/uploads", tags=["dock"], responses=error_responses(401, 403))


def _header(name: str, description: str, required: bool = False, **schema: object) -> dict[str, object]:
    """A tus request header, as the document lists it (the routes read them from the request)."""
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


TUS_RESUMABLE = _header("Tus-Resumable", "The protocol version: 1.0.0 (412 otherwise).", True)
# What each tus request may be answered, besides 401/403 (docs/PROTOCOLS.md).
STATE = {"Upload-Offset": {"schema": {"type": "string"}}, "Upload-Length": {"schema": {"type": "string"}}}


def engine(request: Request) -> UploadEngine:
    """The application's one upload engine."""
    found: UploadEngine = request.app.state.services.uploads
    return found


class DockRefused(Refused):
    """A dock that may not upload: its token is missing, wrong or disabled."""


def current_dock(request: Request, s: CoreServices = Depends(services)) -> Device:
    """The dock whose bearer token the request carries (401 without one or with a wrong one, 403 disabled)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        UPLOAD_REFUSALS.labels(reason="no_token").inc()
        raise DockRefused("no_token", "dock token required", 401, headers={"WWW-Authenticate": "Bearer"})
    try:
        with s.db.reading() as session:  # only reads: no write lock for every request of every dock
            dock = authenticate_dock(session, token.strip(), device_seal_key(s.key))
            session.expunge(dock)
            return dock
    except DeviceRefused as exc:
        UPLOAD_REFUSALS.labels(reason=exc.reason).inc()
        log.warning(
            "dock refused",
            extra={"reason": exc.reason, "client": request.client.host if request.client else None},
        )
        raise DockRefused(exc.reason, str(exc), exc.status) from None


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


def refusal(refused: Refused, dock: Device | None = None) -> JSONResponse:
    """The error envelope of a refused dock request, with the tus headers, counted and logged."""
    UPLOAD_REFUSALS.labels(reason=refused.reason).inc()
    log.warning(
        "dock request refused",
        extra={
            "reason": refused.reason,
            "status": refused.status,
            "dock": dock.id if dock else None,
            "detail": str(refused),
        },
    )
    headers = _tus_headers(refused.response_headers())
    return JSONResponse(refused.envelope(), status_code=refused.status, headers=headers)


def _check_version(request: Request) -> None:
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise TusRefusal(412, "tus_version", f"Tus-Resumable {TUS_VERSION} is required")


def _handle(exc: Exception, dock: Device | None, retry_after: int) -> JSONResponse:
    """Every refusal of a dock request as the envelope with tus headers; anything else is a fault."""
    if isinstance(exc, Refused):
        return refusal(exc, dock)
    if isinstance(exc, UploadGone):
        return refusal(TusRefusal(exc.status, "gone" if exc.status == 410 else "not_found", str(exc)), dock)
    if isinstance(exc, UploadBusy):
        return refusal(TusRefusal(503, "busy", str(exc), retry_after), dock)
    if isinstance(exc, (StorageFull, StorageFullError)):
        return refusal(TusRefusal(507, "storage_full", "evidence storage is full", retry_after * 12), dock)
    if isinstance(exc, (StorageUnavailable, StorageError)):
        message = f"evidence storage unavailable: {exc}"
        return refusal(TusRefusal(503, "storage_unavailable", message, retry_after), dock)
    raise exc


@router.options("", status_code=204, responses={204: {"description": "tus discovery headers"}})
def options(dock: Device = Depends(current_dock), s: CoreServices = Depends(services)) -> Response:
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


@router.post(
    "",
    status_code=201,
    responses={
        201: {"description": "Upload created (Location)", "headers": STATE},
        **error_responses(400, 412, 413, 429, 431, 503, 507),
    },
    openapi_extra={
        "parameters": [
            TUS_RESUMABLE,
            _header("Upload-Length", "The clip's size in bytes.", True),
            _header("Upload-Metadata", "Comma-separated key and base64 value pairs.", True),
        ]
    },
)
async def create(
    request: Request,
    dock: Device = Depends(current_dock),
    s: CoreServices = Depends(services),
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


@router.head(
    "/{upload_id}",
    responses={
        200: {"description": "How far the upload got", "headers": STATE},
        **error_responses(410, 412, 503),
    },
    openapi_extra={"parameters": [TUS_RESUMABLE]},
)
async def head(
    upload_id: str,
    request: Request,
    dock: Device = Depends(current_dock),
    s: CoreServices = Depends(services),
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


@router.patch(
    "/{upload_id}",
    status_code=204,
    responses={
        204: {"description": "Bytes appended", "headers": STATE},
        **error_responses(400, 408, 409, 410, 412, 415, 460, 503, 507),
    },
    openapi_extra={
        "parameters": [
            TUS_RESUMABLE,
            _header("Upload-Offset", "Where this request's bytes go: the current offset.", True),
            _header("Upload-Checksum", "Optional: algorithm and base64 digest of this request's body."),
        ],
    },
)
async def patch(
    upload_id: str,
    request: Request,
    dock: Device = Depends(current_dock),
    s: CoreServices = Depends(services),
    uploads: UploadEngine = Depends(engine),
) -> Response:
    """tus data: append the request body (``Content-Type: application/offset+octet-stream``, the
    clip's next bytes) at ``Upload-Offset``."""
    try:
        _check_version(request)
        if request.headers.get("content-type") != "application/offset+octet-stream":
            raise TusRefusal(415, "content_type", "Content-Type must be application/offset+octet-stream")
        offset = parse_offset(request.headers.get("upload-offset", ""))
        length = request.headers.get("content-length", "")
        state = await uploads.patch(
            dock,
            upload_id,
            offset,
            _body(request),
            request.headers.get("upload-checksum"),
            int(length) if length.isdigit() else None,
        )
    except _Disconnected:
        return Response(status_code=400)
    except Exception as exc:  # noqa: BLE001
        return _handle(exc, dock, s.settings.retry_after_seconds)
    return Response(status_code=204, headers=_tus_headers(_state_headers(state)))


@router.delete(
    "/{upload_id}",
    status_code=204,
    responses=error_responses(403, 410, 412, 503),
    openapi_extra={"parameters": [TUS_RESUMABLE]},
)
async def terminate(
    upload_id: str,
    request: Request,
    dock: Device = Depends(current_dock),
    s: CoreServices = Depends(services),
    uploads: UploadEngine = Depends(engine),
) -> Response:
    """tus termination: abandon an unfinished upload."""
    try:
        _check_version(request)
        await asyncio.to_thread(uploads.terminate, dock, upload_id)
    except Exception as exc:  # noqa: BLE001
        return _handle(exc, dock, s.settings.retry_after_seconds)
    return Response(status_code=204, headers=_tus_headers())
