"""The HTTP edge: how the service is served (uvicorn with httptools) and the limits a client meets there.

uvicorn's httptools protocol reads a request's header block without a size limit or a deadline:
a 64 MB header was answered 200, twenty unfinished 8 MB headers held 123 MB, and half-sent
requests were kept open for ever. :class:`EdgeProtocol` adds, per connection:

- a **header size limit** (``http_max_header_bytes``): bytes are counted *before* the parser sees
  them, and the request is answered ``431 Request Header Fields Too Large`` once the block passes
  the limit, so memory per connection stays bounded;
- a **header deadline** (``http_header_timeout_seconds``): from connecting (or from the first byte
  of the next request on a kept-alive connection) to the end of the headers; past it ``408`` and
  the connection is closed (a slowloris holds nothing);
- a **body idle timeout** (``http_body_idle_timeout_seconds``): while the application waits for a
  request body and no byte arrives for that long, the connection is closed (the application sees a
  disconnect). Time the service itself spends not reading (back-pressure) never counts;
- a **cap on connections per client address** (``http_max_connections_per_client``): past it a new
  connection is answered ``503`` with ``Retry-After`` and closed.

A request body is capped (``http_max_body_bytes``, :class:`BodyLimit`) except on the routes that
stream to storage and bound their bodies themselves.

uvicorn's own ``timeout_keep_alive`` (``http_keep_alive_seconds``) closes idle kept-alive
connections and ``limit_concurrency`` (``http_max_connections``) caps the whole server.
``evidence serve`` and the tests build the server from :func:`server_config`, so both meet the same edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from typing import Any, cast

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from storage.settings import Settings

from .errors import envelope

log = logging.getLogger(__name__)


def _answer(status: str, message: str, reason: str, extra: bytes = b"") -> bytes:
    """A whole response in the service's error envelope, written before any application code runs."""
    body = json.dumps(envelope(message, reason)).encode()
    return b"".join(
        [
            b"HTTP/1.1 " + status.encode() + b"\r\n",
            b"content-type: application/json\r\n",
            extra,
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


TOO_LARGE = _answer("431 Request Header Fields Too Large", "request headers too large", "headers_too_large")
TIMED_OUT = _answer("408 Request Timeout", "request headers not received in time", "header_timeout")
TOO_MANY = _answer(
    "503 Service Unavailable",
    "too many connections from this address",
    "too_many_connections",
    b"retry-after: 5\r\n",
)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (set on a subclass by :func:`edge_protocol`)."""

    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    body_idle_timeout = 60.0
    max_per_client = 0  # 0: no cap
    per_client: Counter[str]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))
        self._edge_timer: asyncio.TimerHandle | None = None
        self._reading_headers = True
        self._header_bytes = 0
        self._counted: str | None = None
        self._body_seen = 0.0  # when the request body's last bytes arrived (loop time)
        address = self.client[0] if self.client else None
        if address is not None and self.max_per_client:
            if self.per_client[address] >= self.max_per_client:
                log.warning("connection refused: too many from one client", extra={"client": address})
                self._refuse(TOO_MANY)
                return
            self.per_client[address] += 1
            self._counted = address
        self._arm(self.header_timeout, self._header_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted is not None:
            self.per_client[self._counted] -= 1
            if self.per_client[self._counted] <= 0:
                del self.per_client[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._reading_headers:
            # A body's bytes only note the time: the idle timer looks at it when it fires (one timer
            # a timeout, not one for every read of a clip's megabytes).
            self._body_seen = self.loop.time()
            super().data_received(data)
            return
        room = self.max_header_bytes - self._header_bytes
        head, rest = data[:room], data[room:]
        self._header_bytes += len(head)
        super().data_received(head)
        if self.transport.is_closing():
            return
        if self._reading_headers:
            if rest or self._header_bytes >= self.max_header_bytes:
                log.warning("request refused: header block too large", extra={"client": self._client_host()})
                self._refuse(TOO_LARGE)
            return
        if rest:
            self.data_received(rest)

    # parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = 0
        if self._edge_timer is None:
            self._arm(self.header_timeout, self._header_deadline)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._body_seen = self.loop.time()
            self._arm(self.body_idle_timeout, self._body_idle)

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_headers = True  # what follows on this connection is the next request's headers
        self._header_bytes = 0
        super().on_message_complete()

    # timers -----------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._edge_timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        timer = getattr(self, "_edge_timer", None)
        if timer is not None:
            timer.cancel()
            self._edge_timer = None

    def _header_deadline(self) -> None:
        self._edge_timer = None
        if self._reading_headers and not self.transport.is_closing():
            log.info("connection closed: headers not received in time", extra={"client": self._client_host()})
            self._refuse(TIMED_OUT)

    def _body_idle(self) -> None:
        self._edge_timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        if self.flow.read_paused:  # we are not reading (back-pressure): the client is not idle
            self._arm(self.body_idle_timeout, self._body_idle)
            return
        quiet = self.loop.time() - self._body_seen
        if quiet < self.body_idle_timeout:  # bytes came since the timer was set
            self._arm(self.body_idle_timeout - quiet, self._body_idle)
            return
        log.info("connection closed: request body stalled", extra={"client": self._client_host()})
        self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        self.transport.write(answer)
        self.transport.close()

    def _client_host(self) -> str | None:
        return self.client[0] if self.client else None


STREAMED = re.compile(r"^/api/v1/(dock/uploads(/.*)?|lone-worker/devices/[^/]+/alarms/[^/]+/voice-memo)$")
"""Routes that stream their bodies to storage and bound them themselves (a clip's ``Upload-Length``,
a voice memo's size limit); every other body is read whole, so it is capped here."""


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 (``body_too_large``).

    ``Content-Length`` is checked before the route runs; a chunked body is counted as it is read
    and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or STREAMED.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(scope, receive, send)
                return
        seen = 0
        exceeded = False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            if not exceeded:  # once over the limit, whatever the route answers is replaced by the 413
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body larger than {self.limit} bytes"
        body = envelope(message, "body_too_large")
        await JSONResponse(body, status_code=413, headers={"connection": "close"})(scope, receive, send)


class _TooLarge(Exception):
    pass


def edge_protocol(settings: Settings) -> type[EdgeProtocol]:
    """A protocol class with this server's limits and its own count of connections per client."""
    return type(
        "ServedEdgeProtocol",
        (EdgeProtocol,),
        {
            "max_header_bytes": settings.http_max_header_bytes,
            "header_timeout": float(settings.http_header_timeout_seconds),
            "body_idle_timeout": float(settings.http_body_idle_timeout_seconds),
            "max_per_client": settings.http_max_connections_per_client,
            "per_client": Counter(),
        },
    )


def server_config(
    app: Any, settings: Settings, host: str | None = None, port: int | None = None, **extra: Any
) -> uvicorn.Config:
    """The one uvicorn configuration: ``evidence serve`` and the tests' live servers use it."""
    return uvicorn.Config(
        app,
        host=host or settings.http_host,
        port=port or settings.http_port,
        http=edge_protocol(settings),
        log_config=None,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        limit_concurrency=settings.http_max_connections or None,
        **extra,
    )
