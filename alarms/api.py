"""The control room's alarm routes, the live stream of alarm changes and the devices' voice memo upload.

The live stream (``GET /api/v1/alarms/stream``, server-sent events) reads the change feed
(``alarms.feed``), not memory, so a change made by any instance reaches operators connected to any
other. Each event's ``id`` is the change's id: a reconnecting browser sends ``Last-Event-ID`` and
misses nothing. A stream ends when its caller is no longer signed in (sign-out, a disabled account,
a revoked token or a changed role), checked every ``RECHECK_S``.

One alarm's record (``GET /api/v1/alarms/{id}/record``: the device's messages byte for byte, the
position trail, the signed payload and the voice memo with their custody trails), the voice memo for
the control room (``GET …/voice-memo``, every play a custody entry) and how well the control room
answers (``GET /api/v1/alarms/performance``, JSON or a CSV report) are what the console's pages read
too (``alarms.records``, ``alarms.performance``).

Every route here, the live stream included, shows a caller only the alarms and devices of the sites
they see (``accounts.access.site_scope``: a security manager, their own site's); another site's
alarm is reported as missing.

Voice memo (devices, no user token): ``PUT /api/v1/lone-worker/devices/{device_id}/alarms/{event_id}/voice-memo``
with the audio as the body, ``Content-Type: audio/...``, ``Content-Length``, ``X-Device-Sent-At: <RFC
3339 UTC>``, ``X-Device-Content-SHA256: <hex>`` and ``X-Device-Signature: <base64 Ed25519>`` over the
canonical JSON
``{"v":1,"type":"voice_memo","device_id":…,"event_id":…,"sha256":<hex of the body>,"size":<bytes>,"content_type":…,"sent_at":…}``.
The signature by the device's enrolled key is the authentication, and it binds the exact bytes to
the alarm. It is checked from the headers (the declared digest and length) before a byte of the
body is read, so nobody but the device can make the service read a memo; then the body is read
(never past its length) and hashed, and bytes that do not hash to what was signed are kept
quarantined. Bodies are read a few at a time per device and per process (``Slots``).
Answers: ``201`` stored or quarantined (``status`` says which; ``200`` if that memo was already
stored), ``400`` ``no_digest`` or ``incomplete``, ``401`` bad signature or stale ``sent_at``,
``403`` device disabled, ``409`` ``alarm_unknown`` (the alarm has not arrived yet: upload after its
``received`` ack), ``memo_exists`` or ``stale_resend``, ``411`` no Content-Length, ``413`` too
large, ``415`` not audio, ``429`` the device's own uploads in progress are at its share, ``503``
the process's are. A quarantined memo may be sent again (signed later): a new item whose
``received`` custody entry names the one it is ``resent_for``; the alarm then points to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from accounts.access import WRITES_CUSTODY, require_roles, sees_site, services, sites_seen, still_signed_in
from accounts.service import Principal
from chain_of_custody.core import CoreServices, list_cursors
from chain_of_custody.models import EvidenceItem
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.reads import item_response
from devices.lone_worker_wire import DEVICE_ID_PATTERN, EVENT_ID_PATTERN
from incidents.access import ALARM_READERS
from storage.api_schema import error_responses
from storage.bounds import DB_INT_MAX, MAX_OFFSET
from storage.errors import Refused
from storage.paging import (
    BadCursor,
    after_key,
    cursor_param,
    link_next,
    link_next_keeping,
    next_headers,
    page_limit,
)
from storage.slots import NoSlot

from . import performance, rules
from .feed import FeedWatcher, changes_after
from .lifecycle import AlarmNotFound
from .reach import change_body
from .records import MessageKeys, alarm_record, answer_summaries, voice_memo_item
from .service import AlarmService
from .voice_memos import VoiceMemoRefused

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["alarms"])

# The control room's view (where staff are, who raised what). Investigators reach an alarm through
# the incident it is linked to; auditors read everything.
READERS = ALARM_READERS
OPERATORS = ("admin", "security_manager", "operator")
KEEPALIVE_S = 15.0
# How often an open stream checks that its caller is still signed in (sign-out, a disabled account,
# a revoked token or a changed role end the stream within this time).
RECHECK_S = 15.0
AUDIO_TYPES = ("audio/",)


def alarm_service(request: Request) -> AlarmService:
    """The application's one alarm service."""
    found: AlarmService = request.app.state.services.alarms
    return found


def feed_watcher(request: Request) -> FeedWatcher:
    """The application's one watcher of the change feed."""
    found: FeedWatcher = request.app.state.services.alarm_feed
    return found


class NotApplicable(Refused):
    status = 409
    structured = True


class EscalateIn(BaseModel):
    note: str = Field(default="", max_length=2000)


class ResolveIn(BaseModel):
    outcome: Literal["genuine", "false_alarm", "test"]
    note: str = Field(default="", max_length=2000)


ALARMS_PAGE = 100  # alarms in a page, unless the caller asks for fewer
ALARMS_PAGE_MAX = 1000


@router.get("/alarms", responses={**next_headers(), **error_responses(400)})
def list_alarms(
    request: Request,
    response: Response,
    status: Annotated[
        list[rules.AlarmStatus] | None, Query(description="raised, acknowledged, escalated, resolved")
    ] = None,
    open: Annotated[bool, Query(description="only alarms not yet resolved")] = False,
    device_id: str | None = None,
    kind: str | None = None,
    after: str = cursor_param("alarms"),
    limit: int = page_limit(ALARMS_PAGE, ALARMS_PAGE_MAX, "alarms"),
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="kept for older clients: skip this many (use after)")
    ] = 0,
    user: Principal = Depends(require_roles(*READERS)),
    alarms: AlarmService = Depends(alarm_service),
    s: CoreServices = Depends(services),
) -> list[dict[str, Any]]:
    """Alarms, newest first (when raised, then id), a page at a time: ``limit``, then ``after`` as the
    answer's ``X-Next-After`` (and its ``Link: <...>; rel="next"``, which keeps the filters) give it.
    A page starts right after the previous one's last alarm, so alarms raised meanwhile never push
    one onto two pages or past both. ``offset`` still skips rows for older clients; it cannot be
    combined with ``after``."""
    cursors = list_cursors(s)
    position = cursors.read("alarms", after) if after else None
    if position is not None and offset:
        raise BadCursor("give after or offset, not both")
    rows = alarms.queries.list_alarms(
        status=status or (),
        open_only=open,
        device_id=device_id,
        kind=kind,
        limit=limit + 1,
        offset=offset,
        after=position,
        viewer=user,
    )
    page = rows[:limit]
    if len(rows) > limit:
        last = page[-1]
        at = datetime.fromisoformat(last["raised_at"])
        link_next_keeping(response, request, cursors.make("alarms", at, last["id"]), limit)
    return page


@router.get("/alarms/performance", responses={200: {"content": {"text/csv": {}}}})
def answer_performance(
    format: Annotated[Literal["json", "csv"], Query(description="json, or csv for a report")] = "json",
    user: Principal = Depends(require_roles(*READERS)),
    s: CoreServices = Depends(services),
) -> Response:
    """How well the control room answers red alarms over the last day, week and 30 days: the share
    acknowledged within 10 s and 40 s (BS 8484 targets 80 % and 98.5 %), median and 95th percentile
    time to acknowledge. A time that is an alarm nobody took is null, with ``…_missed`` true."""
    now = datetime.now(UTC)
    with s.db.reading() as session:  # only reads: waits for no writer
        rows = answer_summaries(session, now, user, reach_secret(s.key))  # figured in the database
    if format == "csv":
        return Response(
            performance.to_csv(rows, now),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="control-room-performance-{now:%Y-%m-%d}.csv"'
            },
        )
    return JSONResponse({"at": now.isoformat(), "periods": [performance.as_json(r) for r in rows]})


@router.get(
    "/alarms/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(429)},
)
async def alarm_stream(
    request: Request,
    after: Annotated[
        int | None, Query(ge=0, le=DB_INT_MAX, description="replay changes after this id (0: all kept)")
    ] = None,
    follow: Annotated[
        bool, Query(description="keep the stream open for new changes (false: send the backlog, then end)")
    ] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    user: Principal = Depends(require_roles(*READERS)),
    s: CoreServices = Depends(services),
    watcher: FeedWatcher = Depends(feed_watcher),
    alarms: AlarmService = Depends(alarm_service),
) -> StreamingResponse:
    """Server-sent events, one ``alarm`` event per change: ``{"change", "at", "alarm": {...}}``.

    Starts with changes after ``Last-Event-ID`` (a reconnect), else after ``after``, else from now.
    Ends when the caller is no longer signed in (checked every ``RECHECK_S``). Changes of alarms at
    sites the caller does not see are left out (their ids still move the cursor on).
    """
    scoped = sites_seen(user) is not None
    secret = reach_secret(s.key)
    if last_event_id and last_event_id.strip().isdigit():
        cursor = int(last_event_id.strip())
    elif after is not None:
        cursor = after
    else:
        cursor = await asyncio.to_thread(watcher.latest_id)

    async def events() -> AsyncIterator[str]:
        nonlocal cursor
        watcher.join()
        try:
            yield f"retry: 2000\n: stream of alarm changes after {cursor}\n\n"
            last_sent = checked = time.monotonic()
            while True:
                if follow and time.monotonic() - checked >= RECHECK_S:
                    if not await asyncio.to_thread(still_signed_in, request, s, user):
                        return
                    checked = time.monotonic()
                rows = await asyncio.to_thread(changes_after, s.db, cursor, 200)
                for change_id, body in rows:
                    cursor = change_id
                    if scoped and not sees_site(user, json.loads(body)["alarm"].get("site")):
                        continue
                    sent = change_body(secret, scoped, body)
                    if sent is None:
                        continue
                    yield f"id: {change_id}\nevent: alarm\ndata: {sent}\n\n"
                    last_sent = time.monotonic()
                if len(rows) == 200:
                    continue
                if not follow:
                    return
                if time.monotonic() - last_sent >= KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                await watcher.wait_beyond(cursor, min(KEEPALIVE_S, RECHECK_S))
        finally:
            watcher.leave()

    try:  # each open stream polls the feed: one person holds a bounded number of them
        alarms.streams.take(user.actor)
    except NoSlot:
        log.warning("alarm stream refused", extra={"user": user.actor})
        raise Refused(
            "too_many_streams",
            "you have as many live alarm streams open as one person may: close a page first",
            429,
            retry_after=s.settings.retry_after_seconds,
        ) from None
    return _HeldStream(
        events(),
        release=lambda: alarms.streams.give_back(user.actor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _HeldStream(StreamingResponse):
    """A stream that gives its slot back when it ends, however it ends (even never started)."""

    def __init__(self, content: AsyncIterator[str], *, release: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release: Callable[[], None] | None = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:  # a response dropped before it was sent
        self.release()


@router.get("/alarms/{alarm_id}")
def get_alarm(
    alarm_id: str,
    user: Principal = Depends(require_roles(*READERS)),
    alarms: AlarmService = Depends(alarm_service),
) -> dict[str, Any]:
    return alarms.queries.get(alarm_id, viewer=user)


@router.get("/alarms/{alarm_id}/record")
def get_alarm_record(
    alarm_id: str, user: Principal = Depends(require_roles(*READERS)), s: CoreServices = Depends(services)
) -> dict[str, Any]:
    """The alarm with the device's messages (byte for byte, with their hashes; one whose stored bytes
    are not as the device signed them has ``holds`` false and no payload), its position trail, and
    its signed payload and voice memo with their custody trails (metadata only)."""
    with s.db.reading() as session:
        record = alarm_record(
            session, alarm_id, datetime.now(UTC), user, reach_secret(s.key), MessageKeys.of(s.key)
        )
    if record is None:
        raise AlarmNotFound(alarm_id)
    return record


@router.get(
    "/alarms/{alarm_id}/voice-memo",
    responses={200: {"content": {"audio/*": {}}}},
    dependencies=[WRITES_CUSTODY],
)
async def play_voice_memo(
    alarm_id: str,
    request: Request,
    user: Principal = Depends(require_roles(*OPERATORS)),
    s: CoreServices = Depends(services),
) -> Response:
    """The amber alert's voice memo for the control room (HTTP Range supported); every play is a
    ``viewed`` custody entry before any byte leaves."""

    def look_up() -> EvidenceItem | None:
        with s.db.session() as session:  # on a worker thread: never the event loop's
            return voice_memo_item(session, alarm_id, user, reach_secret(s.key))

    item = await asyncio.to_thread(look_up)
    if item is None:
        raise VoiceMemoRefused("no_memo", f"no voice memo for alarm {alarm_id}", 404)
    return await item_response(
        s, item, request, user.actor, {"Cache-Control": "no-store"}, "control room", sign_in=user.sign_in
    )


def _act(
    alarms: AlarmService,
    user: Principal,
    alarm_id: str,
    event: rules.Acknowledge | rules.Escalate | rules.Resolve,
) -> dict[str, Any]:
    alarms.queries.get(alarm_id, viewer=user)  # another site's alarm is missing (an alarm keeps its site)
    try:
        return alarms.act(alarm_id, event)
    except rules.AlarmTransitionError as exc:
        now = alarms.queries.get(alarm_id)
        fields = ("id", "status", "severity", "acknowledged_by", "escalated_by", "resolved_by", "outcome")
        # The alarm as it now stands: a second operator's client can say who has it.
        raise NotApplicable(
            "not_applicable", str(exc), detail={"alarm": {k: now[k] for k in fields}}
        ) from None


@router.post("/alarms/{alarm_id}/acknowledge")
def acknowledge(
    alarm_id: str,
    user: Principal = Depends(require_roles(*OPERATORS)),
    alarms: AlarmService = Depends(alarm_service),
) -> dict[str, Any]:
    """An operator takes the alarm; the device is told (``operator_acknowledged``)."""
    return _act(alarms, user, alarm_id, rules.Acknowledge(by=user.actor, at=datetime.now(UTC)))


@router.post("/alarms/{alarm_id}/escalate")
def escalate(
    alarm_id: str,
    body: EscalateIn | None = None,
    user: Principal = Depends(require_roles(*OPERATORS)),
    alarms: AlarmService = Depends(alarm_service),
) -> dict[str, Any]:
    """Hand the alarm up: the control topic and the escalation webhook are told."""
    note = body.note if body else ""
    return _act(alarms, user, alarm_id, rules.Escalate(by=user.actor, at=datetime.now(UTC), note=note))


@router.post("/alarms/{alarm_id}/resolve")
def resolve(
    alarm_id: str,
    body: ResolveIn,
    user: Principal = Depends(require_roles(*OPERATORS)),
    alarms: AlarmService = Depends(alarm_service),
) -> dict[str, Any]:
    """Close the alarm as genuine, a false alarm or a test (genuine opens an incident if none)."""
    event = rules.Resolve(
        by=user.actor, at=datetime.now(UTC), outcome=rules.Outcome(body.outcome), note=body.note
    )
    return _act(alarms, user, alarm_id, event)


LONE_WORKERS_PAGE = 500  # devices in a page, unless the caller asks for fewer (as ``GET /devices``)
LONE_WORKERS_PAGE_MAX = 1000


@router.get("/lone-workers", responses=next_headers())
def lone_workers(
    response: Response,
    after: str = after_key("id", "device"),
    limit: int = page_limit(LONE_WORKERS_PAGE, LONE_WORKERS_PAGE_MAX, "devices"),
    user: Principal = Depends(require_roles(*READERS)),
    alarms: AlarmService = Depends(alarm_service),
) -> list[dict[str, Any]]:
    """The lone-worker devices of the caller's sites by id: who carries it, presence, last seen,
    battery, position, open alarms; a page at a time (``limit``, then ``after``): while more follow,
    the answer links the next page (``Link: <...>; rel="next"`` and ``X-Next-After``)."""
    rows = alarms.queries.lone_workers(viewer=user, after=after, limit=limit + 1)
    link_next(response, "/api/v1/lone-workers", rows[limit - 1]["id"] if len(rows) > limit else None, limit)
    return rows[:limit]


DIGEST_HEADER = {
    "name": "X-Device-Content-SHA256",
    "in": "header",
    "required": True,
    "description": "The SHA-256 (hex) of the body, as the device signed it in the manifest: the "
    "signature is checked before the body is read.",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@router.put(
    "/lone-worker/devices/{device_id}/alarms/{event_id}/voice-memo",
    status_code=201,
    responses={
        200: {"description": "this memo was already stored"},
        **error_responses(400, 401, 403, 409, 411, 413, 415, 429, 503),
    },
    openapi_extra={"parameters": [DIGEST_HEADER]},
)
async def upload_voice_memo(
    request: Request,
    device_id: str,
    event_id: str,
    content_type: Annotated[str, Header()] = "application/octet-stream",
    x_device_signature: Annotated[str | None, Header()] = None,
    x_device_sent_at: Annotated[str | None, Header()] = None,
    s: CoreServices = Depends(services),
    alarms: AlarmService = Depends(alarm_service),
) -> JSONResponse:
    """A device's voice memo for one of its alarms (authenticated by the device's signature, which is
    checked from the headers before a byte of the body is read)."""
    if not x_device_signature or not x_device_sent_at:
        raise VoiceMemoRefused(
            "no_signature",
            "sign the upload with the device key",
            401,
            headers={"WWW-Authenticate": "X-Device-Signature"},
        )
    if not re.match(DEVICE_ID_PATTERN, device_id) or not re.match(EVENT_ID_PATTERN, event_id):
        raise VoiceMemoRefused("bad_id", "not a device id and event id", 400)
    limit = s.settings.max_voice_memo_bytes
    if not content_type.startswith(AUDIO_TYPES):
        raise VoiceMemoRefused("not_audio", "a voice memo is audio/*", 415)
    # The header is read here rather than as a parameter: the document declares it (DIGEST_HEADER)
    # and a missing or malformed one is this operation's own refusal, not a schema error.
    declared_sha256 = request.headers.get("x-device-content-sha256", "").strip()
    if not SHA256_HEX.fullmatch(declared_sha256):
        raise VoiceMemoRefused(
            "no_digest", "declare the body's SHA-256 (hex) in X-Device-Content-SHA256, as signed", 400
        )
    # Content-Length is the HTTP layer's framing, not a parameter of this operation; the memo's size
    # is signed, so it must be known before the body is read.
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise VoiceMemoRefused("length_required", "send the memo with a Content-Length", 411)
    size = int(declared)
    if size > limit:
        raise VoiceMemoRefused("too_large", f"at most {limit} bytes", 413)
    if size == 0:
        raise VoiceMemoRefused("empty", "empty body", 400)
    admission = await asyncio.to_thread(
        alarms.admit_voice_memo,
        device_id,
        event_id,
        sha256=declared_sha256,
        size=size,
        content_type=content_type,
        sent_at=x_device_sent_at,
        signature=x_device_signature,
    )
    if admission.stored_item is not None:  # this very memo is stored: nothing to read
        return _memo_answer(admission.stored_item, event_id, False, "stored")
    retry = s.settings.retry_after_seconds
    try:
        alarms.memo_uploads.take(device_id)
    except NoSlot as full:
        log.warning("voice memo upload refused", extra={"device": device_id, "own_share": full.mine})
        if full.mine:
            raise VoiceMemoRefused(
                "too_many_uploads",
                "this device already has as many voice memo uploads in progress as one device may",
                429,
                retry_after=retry,
            ) from None
        raise VoiceMemoRefused(
            "busy", "too many voice memo uploads in progress; try again", 503, retry_after=retry
        ) from None
    try:
        data = await _memo_body(request, size)
        item_id, created, status = await asyncio.to_thread(alarms.store_voice_memo, admission, data)
    finally:
        alarms.memo_uploads.give_back(device_id)
    return _memo_answer(item_id, event_id, created, status)


async def _memo_body(request: Request, size: int) -> bytes:
    """The body, never more than the signed size (the HTTP layer holds it to Content-Length too)."""
    chunks: list[bytes] = []
    got = 0
    try:
        async for chunk in request.stream():
            got += len(chunk)
            if got > size:
                raise VoiceMemoRefused("too_large", "the body is longer than its Content-Length", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise VoiceMemoRefused("incomplete", "the body ended before its Content-Length", 400) from None
    if got != size:
        raise VoiceMemoRefused("incomplete", "the body ended before its Content-Length", 400)
    return b"".join(chunks)


def _memo_answer(item_id: str, event_id: str, created: bool, status: str) -> JSONResponse:
    return JSONResponse(
        {"evidence_item_id": item_id, "event_id": event_id, "created": created, "status": status},
        status_code=201 if created else 200,
    )
