"""The control room's alarm routes, the live stream of alarm changes, lone-worker enrolment and the
devices' voice memo upload.

The live stream (``GET /api/v1/alarms/stream``, server-sent events) reads the ``alarm_changes``
table, not memory, so a change made by any instance reaches operators connected to any other.
Each event's ``id`` is the change's id: a reconnecting browser sends ``Last-Event-ID`` and misses
nothing. One watcher per process polls the newest id and wakes the open streams.

Voice memo (devices, no user token): ``PUT /api/v1/lone-worker/devices/{device_id}/alarms/{event_id}/voice-memo``
with the audio as the body, ``Content-Type: audio/...``, ``X-Device-Sent-At: <RFC 3339 UTC>`` and
``X-Device-Signature: <base64 Ed25519>`` over the canonical JSON
``{"v":1,"type":"voice_memo","device_id":…,"event_id":…,"sha256":<hex of the body>,"size":<bytes>,"content_type":…,"sent_at":…}``.
The signature by the device's enrolled key is the authentication, and it binds the exact bytes to
the alarm. Answers: ``201`` stored (``200`` if that memo was already stored), ``401`` bad
signature or stale ``sent_at``, ``403`` device disabled, ``409`` ``alarm_unknown`` (the alarm has
not arrived yet: upload after its ``received`` ack) or ``memo_exists``, ``413`` too large, ``415``
not audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from accounts.service import Principal
from devices.lone_worker_wire import DEVICE_ID_PATTERN, EVENT_ID_PATTERN, topic_for
from devices.models import Device
from devices.service import DeviceRefused, regenerate_broker_password

from . import alarm_performance as performance
from . import alarm_rules as rules
from .alarm_models import AlarmChange, AlarmRecord, LoneWorkerState, LoneWorkerVisit
from .alarm_records import alarm_record, answer_times, voice_memo_item
from .alarms import AlarmNotFound, VoiceMemoRefused, alarm_service, enrol_lone_worker
from .auth import require_roles, services, still_signed_in
from .evidence_api import item_response
from .services import Services

router = APIRouter(prefix="/api/v1", tags=["alarms"])

# The control room's view (where staff are, who raised what). Investigators reach an alarm through
# the incident it is linked to; auditors read everything.
READERS = ("admin", "security_manager", "operator", "auditor")
OPERATORS = ("admin", "security_manager", "operator")
ENROLLERS = ("admin", "security_manager")
KEEPALIVE_S = 15.0
# How often an open stream checks that its caller is still signed in (sign-out, a disabled account,
# a revoked token or a changed role end the stream within this time).
RECHECK_S = 15.0


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _not_found(alarm_id: str) -> HTTPException:
    return HTTPException(404, {"error": f"no alarm {alarm_id}", "reason": "unknown_alarm"})


# --------------------------------------------------------------------------- alarms


@router.get("/alarms")
def list_alarms(
    status: Annotated[
        list[str] | None, Query(description="raised, acknowledged, escalated, resolved")
    ] = None,
    open: Annotated[bool, Query(description="only alarms not yet resolved")] = False,
    device_id: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    user: Principal = Depends(require_roles(*READERS)),
    s: Services = Depends(services),
) -> list[dict[str, Any]]:
    """Alarms, newest first."""
    return alarm_service(s).list_alarms(
        status=status or (), open_only=open, device_id=device_id, kind=kind, limit=limit, offset=offset
    )


@router.get("/alarms/performance", responses={200: {"content": {"text/csv": {}}}})
def answer_performance(
    format: Annotated[Literal["json", "csv"], Query(description="json, or csv for a report")] = "json",
    user: Principal = Depends(require_roles(*READERS)),
    s: Services = Depends(services),
) -> Response:
    """How well the control room answers red alarms over the last day, week and 30 days: the share
    acknowledged within 10 s and 40 s (BS 8484 targets 80 % and 98.5 %), median and 95th percentile
    time to acknowledge. A time that is an alarm nobody took is null, with ``…_missed`` true."""
    now = datetime.now(UTC)
    with s.db.session() as session:
        answers = answer_times(session, now - max(performance.PERIODS.values()))
    rows = performance.summaries(answers, now)
    if format == "csv":
        return Response(
            performance.to_csv(rows, now),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="control-room-performance-{now:%Y-%m-%d}.csv"'
            },
        )
    return JSONResponse({"at": now.isoformat(), "periods": [performance.as_json(r) for r in rows]})


class _FeedWatcher:
    """Polls the newest change id for this process and wakes every open stream when it moves; an
    alarm change committed by this process pokes it to look at once (others' are seen at the poll)."""

    def __init__(self, s: Services, poll_s: float = 0.25) -> None:
        self.services = s
        self.poll_s = poll_s
        self.latest = 0
        self.streams = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poked: asyncio.Event | None = None

    def poke(self) -> None:
        """Thread-safe: something committed an alarm change; look now."""
        loop, poked = self._loop, self._poked
        if loop is not None and poked is not None and self.streams > 0:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(poked.set)

    def latest_id(self) -> int:
        with self.services.db.session() as session:
            return int(session.scalar(select(func.max(AlarmChange.id))) or 0)

    def join(self) -> None:
        self.streams += 1
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._poked = asyncio.Event()
            self._task = self._loop.create_task(self._run())

    def leave(self) -> None:
        self.streams -= 1

    async def _run(self) -> None:
        while self.streams > 0:
            with contextlib.suppress(Exception):  # a database hiccup: try again next poll
                latest = await asyncio.to_thread(self.latest_id)
                if latest != self.latest:
                    self.latest = latest
                    async with self._changed:
                        self._changed.notify_all()
            poked = self._poked
            if poked is None:
                await asyncio.sleep(self.poll_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poked.wait(), self.poll_s)
            poked.clear()

    async def wait_beyond(self, cursor: int, timeout: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.latest > cursor), timeout)


def _watcher(s: Services) -> _FeedWatcher:
    watcher = s.extras.get("alarm_feed_watcher")
    if not isinstance(watcher, _FeedWatcher):
        watcher = _FeedWatcher(s, s.settings.alarm_stream_poll_seconds)
        s.extras["alarm_feed_watcher"] = watcher
        alarm_service(s).committed_listeners.append(watcher.poke)
    return watcher


def _changes_after(s: Services, cursor: int, limit: int) -> list[tuple[int, str]]:
    with s.db.session() as session:
        return [
            (row.id, row.body)
            for row in session.execute(
                select(AlarmChange.id, AlarmChange.body)
                .where(AlarmChange.id > cursor)
                .order_by(AlarmChange.id)
                .limit(limit)
            )
        ]


@router.get(
    "/alarms/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def alarm_stream(
    request: Request,
    after: Annotated[
        int | None, Query(ge=0, description="replay changes after this id (0: all kept)")
    ] = None,
    follow: Annotated[
        bool, Query(description="keep the stream open for new changes (false: send the backlog, then end)")
    ] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    user: Principal = Depends(require_roles(*READERS)),
    s: Services = Depends(services),
) -> StreamingResponse:
    """Server-sent events, one ``alarm`` event per change: ``{"change", "at", "alarm": {...}}``.

    Starts with changes after ``Last-Event-ID`` (a reconnect), else after ``after``, else from now.
    Ends when the caller is no longer signed in (checked every ``RECHECK_S``).
    """
    watcher = _watcher(s)
    if last_event_id and last_event_id.strip().isdigit():
        cursor = int(last_event_id.strip())
    elif after is not None:
        cursor = after
    else:
        cursor = await asyncio.to_thread(watcher.latest_id)

    async def events() -> Any:
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
                rows = await asyncio.to_thread(_changes_after, s, cursor, 200)
                for change_id, body in rows:
                    yield f"id: {change_id}\nevent: alarm\ndata: {body}\n\n"
                    cursor = change_id
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

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/alarms/{alarm_id}")
def get_alarm(
    alarm_id: str, user: Principal = Depends(require_roles(*READERS)), s: Services = Depends(services)
) -> dict[str, Any]:
    try:
        return alarm_service(s).get(alarm_id)
    except AlarmNotFound:
        raise _not_found(alarm_id) from None


@router.get("/alarms/{alarm_id}/record")
def get_alarm_record(
    alarm_id: str, user: Principal = Depends(require_roles(*READERS)), s: Services = Depends(services)
) -> dict[str, Any]:
    """The alarm with the device's messages (byte for byte, with their hashes), its position trail,
    and its signed payload and voice memo with their custody trails (metadata only)."""
    with s.db.session() as session:
        record = alarm_record(session, alarm_id, datetime.now(UTC))
    if record is None:
        raise _not_found(alarm_id)
    return record


@router.get("/alarms/{alarm_id}/voice-memo", responses={200: {"content": {"audio/*": {}}}})
async def play_voice_memo(
    alarm_id: str,
    request: Request,
    user: Principal = Depends(require_roles(*OPERATORS)),
    s: Services = Depends(services),
) -> Response:
    """The amber alert's voice memo for the control room (HTTP Range supported); every play is a
    ``viewed`` custody entry before any byte leaves."""
    with s.db.session() as session:
        item = voice_memo_item(session, alarm_id)
    if item is None:
        raise HTTPException(404, {"error": f"no voice memo for alarm {alarm_id}", "reason": "no_memo"})
    return await item_response(s, item, request, user.actor, {"Cache-Control": "no-store"}, "control room")


class EscalateIn(BaseModel):
    note: str = Field(default="", max_length=2000)


class ResolveIn(BaseModel):
    outcome: Literal["genuine", "false_alarm", "test"]
    note: str = Field(default="", max_length=2000)


def _act(s: Services, alarm_id: str, event: Any) -> dict[str, Any]:
    try:
        return alarm_service(s).act(alarm_id, event)
    except AlarmNotFound:
        raise _not_found(alarm_id) from None
    except rules.AlarmTransitionError as exc:
        raise HTTPException(409, {"error": str(exc), "reason": "not_applicable"}) from None


@router.post("/alarms/{alarm_id}/acknowledge")
def acknowledge(
    alarm_id: str, user: Principal = Depends(require_roles(*OPERATORS)), s: Services = Depends(services)
) -> dict[str, Any]:
    """An operator takes the alarm; the device is told (``operator_acknowledged``)."""
    return _act(s, alarm_id, rules.Acknowledge(by=user.actor, at=datetime.now(UTC)))


@router.post("/alarms/{alarm_id}/escalate")
def escalate(
    alarm_id: str,
    body: EscalateIn | None = None,
    user: Principal = Depends(require_roles(*OPERATORS)),
    s: Services = Depends(services),
) -> dict[str, Any]:
    """Hand the alarm up: the control topic and the escalation webhook are told."""
    note = body.note if body else ""
    return _act(s, alarm_id, rules.Escalate(by=user.actor, at=datetime.now(UTC), note=note))


@router.post("/alarms/{alarm_id}/resolve")
def resolve(
    alarm_id: str,
    body: ResolveIn,
    user: Principal = Depends(require_roles(*OPERATORS)),
    s: Services = Depends(services),
) -> dict[str, Any]:
    """Close the alarm as genuine, a false alarm or a test (genuine opens an incident if none)."""
    return _act(
        s,
        alarm_id,
        rules.Resolve(
            by=user.actor, at=datetime.now(UTC), outcome=rules.Outcome(body.outcome), note=body.note
        ),
    )


# --------------------------------------------------------------------------- lone-worker devices


class LoneWorkerIn(BaseModel):
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key: str = Field(description="base64 of the device's raw 32-byte Ed25519 public key")
    staff_id: str | None = None
    name: str = ""
    site: str | None = None


@router.post("/devices/lone-workers", status_code=201)
def enrol(
    body: LoneWorkerIn, user: Principal = Depends(require_roles(*ENROLLERS)), s: Services = Depends(services)
) -> dict[str, Any]:
    """Enrol a lone-worker device. Its broker password is shown once here; regenerate the broker's
    files (``evidence broker-access``) and reload the broker for it to log in."""
    try:
        with s.db.session() as session:
            enrolled = enrol_lone_worker(
                session,
                s,
                body.id,
                body.public_key,
                user.actor,
                staff_id=body.staff_id,
                name=body.name,
                site=body.site,
            )
            device = enrolled.device
            out = {
                "id": device.id,
                "kind": device.kind,
                "status": device.status,
                "assigned_staff_id": device.assigned_staff_id,
                "mqtt_username": device.id,
                "mqtt_password": enrolled.mqtt_password,
                "topics": {
                    leaf: topic_for(device.id, leaf)
                    for leaf in ("alarm", "checkin", "heartbeat", "location", "status", "ack", "command")
                },
                "service_public_key": s.key.public_b64,
            }
    except DeviceRefused as exc:
        raise HTTPException(exc.status, {"error": str(exc), "reason": exc.reason}) from None
    return out


@router.post("/devices/lone-workers/{device_id}/broker-password")
def new_broker_password(
    device_id: str, user: Principal = Depends(require_roles(*ENROLLERS)), s: Services = Depends(services)
) -> dict[str, str]:
    """Issue a lone-worker device a new broker password, shown once here; regenerate the broker's
    files (``evidence broker-access``) and reload the broker for it to take the place of the old one."""
    try:
        with s.db.session() as session:
            password = regenerate_broker_password(session, s.ledger, device_id, user.actor)
    except DeviceRefused as exc:
        raise HTTPException(exc.status, {"error": str(exc), "reason": exc.reason}) from None
    return {"id": device_id, "mqtt_username": device_id, "mqtt_password": password}


@router.get("/lone-workers")
def lone_workers(
    user: Principal = Depends(require_roles(*READERS)), s: Services = Depends(services)
) -> list[dict[str, Any]]:
    """Every lone-worker device: who carries it, presence, last seen, battery, position, open alarms."""
    open_alarms = (
        select(AlarmRecord.device_id, func.count().label("n"))
        .where(AlarmRecord.status != "resolved")
        .group_by(AlarmRecord.device_id)
        .subquery()
    )
    S = LoneWorkerState
    with s.db.session() as session:
        rows = session.execute(
            select(Device, S, open_alarms.c.n)
            .outerjoin(S, S.device_id == Device.id)
            .outerjoin(open_alarms, open_alarms.c.device_id == Device.id)
            .where(Device.kind == "lone_worker")
            .order_by(Device.id)
        ).all()
        visits = {
            v.device_id: {"visit_id": v.visit_id, "note": v.note, "expected_end": _iso(v.expected_end)}
            for v in session.scalars(select(LoneWorkerVisit).where(LoneWorkerVisit.ended_at.is_(None)))
        }
        out = []
        for device, state, n in rows:
            out.append(
                {
                    "id": device.id,
                    "status": device.status,
                    "staff_id": device.assigned_staff_id,
                    "site": device.site,
                    "presence": state.presence if state else "unknown",
                    "last_seen_at": state.last_seen_at.isoformat() if state and state.last_seen_at else None,
                    "battery": state.battery if state else None,
                    "position": (
                        {
                            "lat": state.lat,
                            "lon": state.lon,
                            "accuracy_m": state.accuracy_m,
                            "at": state.position_at.isoformat() if state.position_at else None,
                        }
                        if state and state.lat is not None
                        else None
                    ),
                    "active_visit_id": state.active_visit_id if state else None,
                    "visit": visits.get(device.id),
                    "open_alarms": int(n or 0),
                }
            )
    return out


AUDIO_TYPES = ("audio/",)


@router.put(
    "/lone-worker/devices/{device_id}/alarms/{event_id}/voice-memo",
    status_code=201,
    responses={200: {"description": "this memo was already stored"}},
)
async def upload_voice_memo(
    request: Request,
    device_id: str,
    event_id: str,
    content_type: Annotated[str, Header()] = "application/octet-stream",
    content_length: Annotated[int | None, Header()] = None,
    x_device_signature: Annotated[str | None, Header()] = None,
    x_device_sent_at: Annotated[str | None, Header()] = None,
    s: Services = Depends(services),
) -> JSONResponse:
    """A device's voice memo for one of its alarms (authenticated by the device's signature)."""
    if not x_device_signature or not x_device_sent_at:
        raise HTTPException(
            401,
            {"error": "sign the upload with the device key", "reason": "no_signature"},
            headers={"WWW-Authenticate": "X-Device-Signature"},
        )
    if not re.match(DEVICE_ID_PATTERN, device_id) or not re.match(EVENT_ID_PATTERN, event_id):
        raise HTTPException(400, {"error": "not a device id and event id", "reason": "bad_id"})
    limit = s.settings.max_voice_memo_bytes
    if not content_type.startswith(AUDIO_TYPES):
        raise HTTPException(415, {"error": "a voice memo is audio/*", "reason": "not_audio"})
    if content_length is not None and content_length > limit:
        raise HTTPException(413, {"error": f"at most {limit} bytes", "reason": "too_large"})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, {"error": f"at most {limit} bytes", "reason": "too_large"})
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(400, {"error": "empty body", "reason": "empty"})
    try:
        item_id, created = await asyncio.to_thread(
            alarm_service(s).attach_voice_memo,
            device_id,
            event_id,
            data,
            content_type=content_type,
            sent_at=x_device_sent_at,
            signature=x_device_signature,
        )
    except VoiceMemoRefused as exc:
        raise HTTPException(exc.status, {"error": str(exc), "reason": exc.reason}) from None
    return JSONResponse(
        {"evidence_item_id": item_id, "event_id": event_id, "created": created},
        status_code=201 if created else 200,
    )
