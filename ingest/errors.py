"""The one exception handler and the one JSON error envelope, for every client of the API.

Every error answer is ``{"error": <a sentence>, "reason": <a stable code>, "detail": ...}`` with
the right status and headers (``Retry-After`` when trying later may help):

- a domain's refusal (``storage.errors.Refused`` and its subclasses) answers its own status;
- the object store failing answers 503 (507 when it is full), with ``Retry-After``;
- FastAPI's own refusals (authentication, roles, unknown routes) and invalid requests (422, with
  the validation errors in ``detail``) take the same shape.

Each is logged in one short line, without locals and without secrets.

Anything else a route raises (a bug) is caught by :class:`LastResort`, the outermost of our
middlewares: the request gets a 500 envelope (``internal_error``) and the log one brief line
(``ingest.logging_setup`` keeps it brief and off the request path). The exception goes no further,
so the server never renders it again.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.errors import REASONS, Refused
from storage.objects import StorageError, StorageFull

log = logging.getLogger(__name__)


def envelope(message: str, reason: str, detail: Any = None) -> dict[str, Any]:
    return {"error": message, "reason": reason, "detail": message if detail is None else detail}


async def error_response(request: Request, exc: Exception) -> Response:
    """The answer to any error a route raised (registered for each family in :func:`install`)."""
    headers: dict[str, str] = {}
    if isinstance(exc, Refused):
        status, body, headers = exc.status, exc.envelope(), exc.response_headers()
    elif isinstance(exc, StorageError):
        retry = request.app.state.services.settings.retry_after_seconds
        if isinstance(exc, StorageFull):
            status, body = 507, envelope("evidence storage is full", "storage_full")
            retry *= 12
        else:
            status, body = 503, envelope(f"evidence storage unavailable: {exc}", "storage_unavailable")
        headers = {"Retry-After": str(retry)}
    elif isinstance(exc, RequestValidationError):
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        log.warning("invalid request", extra={"path": request.url.path, "errors": str(errors)[:500]})
        return JSONResponse(envelope("invalid request", "invalid_request", errors), status_code=422)
    elif isinstance(exc, HTTPException):
        status, headers = exc.status_code, dict(exc.headers or {})
        if status == 405:
            headers["Allow"] = allowed_methods(request)
        detail = exc.detail
        if isinstance(detail, dict) and "error" in detail and "reason" in detail:
            body = envelope(str(detail["error"]), str(detail["reason"]), detail)
        else:
            body = envelope(str(detail), REASONS.get(status, "refused"), detail)
    else:  # pragma: no cover - only the families above are registered
        raise exc
    if status >= 500:
        log.warning(
            "request failed", extra={"path": request.url.path, "status": status, "reason": body["reason"]}
        )
    else:
        log.info(
            "request refused", extra={"path": request.url.path, "status": status, "reason": body["reason"]}
        )
    return JSONResponse(body, status_code=status, headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method the request's path answers. Starlette names only the first route that matched the
    path, so a path served by several routes (GET and POST of ``/users``) told of one method only;
    and the app's own list of routes holds each included router as one entry without methods, so
    the routes are walked as FastAPI resolves them (``iter_route_contexts``), each by its full path.
    Of the paths that match, the most literal wins (``/devices/cameras`` over ``/devices/{id}``), as
    the API's document lists them."""
    matching: dict[str, set[str]] = {}
    for route in iter_route_contexts(request.app.router.routes):
        route_methods, path = route.methods, route.path
        if route_methods and path and _path_pattern(path).match(request.url.path):
            matching.setdefault(path, set()).update(route_methods)
    if not matching:
        return ""
    fewest = min(path.count("{") for path in matching)
    methods = set().union(*(m for path, m in matching.items() if path.count("{") == fewest))
    return ", ".join(sorted(methods))


@lru_cache(maxsize=1024)
def _path_pattern(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


def install(app: FastAPI) -> None:
    """Answer every error family with :func:`error_response`."""
    for family in (Refused, StorageError, RequestValidationError, HTTPException):
        app.add_exception_handler(family, error_response)


class LastResort:
    """ASGI middleware: an unhandled exception costs its own request only.

    It answers 500 with the envelope when nothing was sent yet (otherwise the response is cut
    short), and logs the failure once, briefly: the route's path, method and the exception's type,
    first message line and place (never its locals).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - the boundary: every bug ends here, briefly
            log.error(
                "request failed: unhandled error",
                extra={"path": scope.get("path"), "method": scope.get("method"), "status": 500},
                exc_info=exc,
            )
            if not started:
                body = envelope("internal error; the failure is logged", "internal_error")
                await JSONResponse(body, status_code=500)(scope, receive, send)


def install_last_resort(app: FastAPI) -> None:
    """Add :class:`LastResort` outside every other middleware of ours (call it after adding them)."""
    app.add_middleware(LastResort)
