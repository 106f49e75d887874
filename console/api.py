"""The console's routes: sign-in and sign-out, the pages, the few files and small reads they need.

Every page is behind the session cookie (``accounts.browser``) and the same role lists as the API
routes whose data it shows (``console.sources``). A page never changes anything itself: its script
calls the API (``/api/v1/...``) with the cookie and the session's CSRF token, exactly as a token
client would, so the API's rules are the only rules. The one exception is the session itself
(sign-in, sign-out, "I am still here").
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from accounts.access import client_address, services, sign_in_throttle
from accounts.browser import CSRF_HEADER, browser_session, cookie_name, same_origin, session_secret
from accounts.ends import record_ends
from accounts.seals import SESSION, SignInSeals
from accounts.service import AccountError, Principal, refusal_log
from accounts.service import sign_in as check_password
from accounts.sessions import BrowserSession, SessionPolicy, end_session, start_session
from chain_of_custody.awaiting_upgrade import AwaitingUpgrade, UpgradeWatch
from chain_of_custody.core import CoreServices
from chain_of_custody.keys import ServiceKey
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.row_seals import CREDENTIAL_SEALS, UPGRADE_COMMAND
from incidents.access import EVIDENCE_MEDIA, EVIDENCE_METADATA, INCIDENT_READERS, STATISTICS_READERS
from storage.errors import NotFound, SignInFirst
from storage.settings import Settings

from . import assets, sources, times
from .security import content_security_policy

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.globals["asset"] = assets.url
performance = sources.performance
templates.env.filters["share"] = performance.share_text
templates.env.filters["seconds"] = performance.seconds_text
templates.env.filters.update(times.FILTERS)

router = APIRouter(include_in_schema=False)

PRESESSION_COOKIE = "evidence_signin"


class PageRefused(Exception):
    """A signed-in person asked for a page their role does not open (shown as a page, not JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- who is asking

NAV: list[tuple[str, str, tuple[str, ...]]] = [
    ("Alarm board", "/board", sources.READERS),
    ("Map", "/map", sources.READERS),
    ("Performance", "/performance", sources.READERS),
    ("Incidents", "/incidents", INCIDENT_READERS),
    ("Exports", "/exports", EVIDENCE_MEDIA),
    ("Subject access", "/subject-access", INCIDENT_READERS),
    ("Devices", "/admin/devices", sources.DEVICE_READERS),
    ("People", "/admin/people", sources.DEVICE_ADMINS),
    ("Statistics", "/statistics", STATISTICS_READERS),
    ("Retention", "/retention", EVIDENCE_METADATA),
    ("Custody", "/custody", EVIDENCE_METADATA),
    ("API", "/docs", sources.ROLES),
]


def _session(request: Request, s: CoreServices, csrf: str | None = None) -> BrowserSession | None:
    return browser_session(request, s.db, s.settings, SignInSeals.of(s.key), csrf=csrf)


def signed_in(request: Request, roles: tuple[str, ...], csrf: str | None = None) -> BrowserSession:
    """The page's person; to the sign-in page when there is none, a refusal page for the wrong role."""
    s = services(request)
    who = _session(request, s, csrf)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInFirst("sign in first", headers={"Location": "/sign-in?next=" + quote(target)})
    if who.principal.role not in roles:
        log.info("page refused", extra={"path": request.url.path, "role": who.principal.role})
        raise PageRefused(403, "This page is not open to your role.")
    return who


def seals_awaiting(request: Request, who: BrowserSession | None) -> AwaitingUpgrade | None:
    """For an administrator, what awaits ``evidence upgrade-seals`` as the service last counted it
    (``ingest.app`` keeps the count on the application; no query per page), when anything does:
    the banner on every page of theirs, since the people and items it holds back say nothing."""
    if who is None or who.principal.role != "admin":
        return None
    watch: UpgradeWatch | None = getattr(request.app.state, "awaiting_upgrade", None)
    latest = watch.latest if watch is not None else None
    return latest if latest else None


# Pages without a menu entry of their own, by their address's first segment, and the entries they sit
# under, the first of them in the role's menu: a clip's pages (its record, its redaction review) are
# reached from an incident, and by an auditor, who has no incidents, from the custody of evidence.
SECTIONS_OF = {"footage": ("/incidents", "/custody")}


def current_section(path: str, hrefs: list[str]) -> str | None:
    """The menu entry a page belongs to: the one whose address is the page's, or opens it, and whose
    own name comes last among the page's segments, so ``/incidents/INC-1/exports`` is an export
    page, not an incident page; for a page with no entry of its own, the entry ``SECTIONS_OF`` puts
    it under."""
    segments = path.strip("/").split("/")
    for href in SECTIONS_OF.get(segments[0], ()):
        if href in hrefs:
            return href
    best: tuple[int, str] | None = None
    for href in hrefs:
        if (
            path != href
            and not path.startswith(href + "/")
            and href.strip("/").split("/")[-1] not in segments
        ):
            continue
        name = href.strip("/").split("/")[-1]
        where = max(i for i, s in enumerate(segments) if s == name) if name in segments else -1
        if best is None or where > best[0]:
            best = (where, href)
    return best[1] if best else None


def render(
    request: Request, name: str, who: BrowserSession | None, status: int = 200, **context: Any
) -> Response:
    nav = [(label, href) for label, href, roles in NAV if who and who.principal.role in roles]
    path = request.url.path
    return templates.TemplateResponse(
        request,
        name,
        {
            "who": who.principal if who else None,
            "csrf": who.csrf_token if who else None,
            "idle_ends_at": who.idle_ends_at.isoformat() if who else None,
            "nav": nav,
            "path": path,
            "current": current_section(path, [href for _label, href in nav]),
            "seals_awaiting": seals_awaiting(request, who),
            "upgrade_command": UPGRADE_COMMAND,
            **context,
        },
        status_code=status,
    )


def home_for(principal: Principal) -> str:
    for _label, href, roles in NAV:
        if principal.role in roles and href != "/docs":
            return href
    return "/welcome"


def _safe_next(target: str | None) -> str | None:
    """Only a path on this site (no ``//host``, no scheme, no backslash tricks)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(c in target for c in "\r\n\t"):
        return None
    return target


# --------------------------------------------------------------------------- signing in and out


@router.get("/")
def root(request: Request) -> Response:
    who = _session(request, services(request))
    if who is None:
        return RedirectResponse("/sign-in", 303)
    return RedirectResponse(home_for(who.principal), 303)


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    token = request.cookies.get(PRESESSION_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request, "sign_in.html", None, form_token=token, next=_safe_next(next) or "", error=None
    )
    _set_presession(request, response, token)
    return response


def _set_presession(request: Request, response: Response, token: str) -> None:
    secure = services(request).settings.console_secure_cookie
    response.set_cookie(
        PRESESSION_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/sign-in",
    )


@router.post("/sign-in")
def sign_in(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    form_token: Annotated[str, Form(alias="csrf", max_length=128)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Password sign-in from our own form (a double-submitted token: no other site can post it)."""
    s = services(request)
    expected = request.cookies.get(PRESESSION_COOKIE, "")
    if not same_origin(request) or not expected or not secrets.compare_digest(expected, form_token):
        log.warning("sign-in refused: not from our form")
        raise PageRefused(403, "This sign-in form has expired. Open the sign-in page again.")
    settings = s.settings
    client = client_address(request)
    try:
        with s.db.session() as session:
            user = check_password(
                session, username, password, client, sign_in_throttle(request), s.key, s.ledger
            )
            policy = SessionPolicy.from_settings(settings)
            secret, started = start_session(session, user, policy, s.key.derived_secret(CREDENTIAL_SEALS))
    except AccountError as exc:
        why, fields = refusal_log(exc)
        log.warning("console sign-in refused" + why, extra={**fields, "client": client})
        fresh = secrets.token_urlsafe(24)
        response = render(
            request, "sign_in.html", None, 401, form_token=fresh, next=_safe_next(next) or "", error=str(exc)
        )
        _set_presession(request, response, fresh)
        return response
    log.info("console sign-in", extra={"username": username})
    response = RedirectResponse(_safe_next(next) or home_for(started.principal), 303)
    response.set_cookie(
        cookie_name(settings.console_secure_cookie),
        secret,
        max_age=int(SessionPolicy.from_settings(settings).absolute.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=settings.console_secure_cookie,
        path="/",
    )
    response.delete_cookie(PRESESSION_COOKIE, path="/sign-in")
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    s = services(request)
    secure = s.settings.console_secure_cookie
    secret = session_secret(request, secure)
    if secret:
        who = signed_in(request, sources.ROLES, csrf=csrf)  # only our page may sign someone out
        with s.db.session() as session:
            ended = end_session(session, secret)
            if ended is not None:  # on custody too, so the row put back signs nobody in
                seal_key = s.key.derived_secret(CREDENTIAL_SEALS)
                record_ends(
                    session,
                    s.ledger,
                    seal_key,
                    [(SESSION, ended)],
                    username=who.principal.username,
                    actor=who.principal.actor,
                    why="signed out",
                )
    response = RedirectResponse("/sign-in", 303)
    response.delete_cookie(cookie_name(secure), path="/")
    return response


@router.post("/session/keepalive")
def keepalive(request: Request) -> JSONResponse:
    """The person is at the screen (a key or the mouse): the idle clock starts again."""
    who = signed_in(request, sources.ROLES)
    return JSONResponse(
        {"idle_ends_at": who.idle_ends_at.isoformat(), "expires_at": who.expires_at.isoformat()}
    )


@router.get("/welcome")
def welcome(request: Request) -> Response:
    who = signed_in(request, sources.ROLES)
    return render(request, "welcome.html", who)


# --------------------------------------------------------------------------- the control room


def _now() -> datetime:
    return datetime.now(UTC)


@router.get("/board")
def board(request: Request) -> Response:
    who = signed_in(request, sources.READERS)
    s = services(request)
    with s.db.reading() as session:  # the control room's reads wait for no writer
        snapshot = board_snapshot(session, s.settings, who.principal, s.key)
    return render(
        request,
        "board.html",
        who,
        board=snapshot,
        can_act=who.principal.role in sources.OPERATORS,
        summaries=_summaries(s, who.principal),
    )


def board_snapshot(
    session: Session, settings: Settings, viewer: Principal, key: ServiceKey
) -> dict[str, Any]:
    cursor = sources.latest_change(session)  # before the rows: the stream replays what follows
    alarms = sources.open_alarms(session, viewer, key)
    return {
        "cursor": cursor,
        "alarms": alarms,
        "directory": sources.directory(session, sorted({a["device_id"] for a in alarms}), viewer),
        "ack_timeout_s": settings.alarm_ack_timeout_seconds,
        "server_time": _now().isoformat(),
    }


@router.get("/board/directory.json")
def board_directory(request: Request, device: Annotated[list[str], Query(max_length=200)]) -> JSONResponse:
    """Names for devices the board has not seen yet (a device enrolled after the page was drawn)."""
    who = signed_in(request, sources.READERS)
    with services(request).db.reading() as session:
        return JSONResponse(sources.directory(session, [d[:64] for d in device], who.principal))


@router.get("/map")
def map_page(request: Request) -> Response:
    who = signed_in(request, sources.READERS)
    s = services(request)
    return render(
        request,
        "map.html",
        who,
        map_data=_map_data(s, who.principal),
        tiles={"url": s.settings.map_tile_url, "attribution": s.settings.map_tile_attribution},
    )


def _map_data(s: CoreServices, viewer: Principal) -> dict[str, Any]:
    now = _now()
    with s.db.reading() as session:
        cursor = sources.latest_change(session)
        alarms = sources.open_alarms(session, viewer, s.key)
        return {
            "cursor": cursor,
            "alarms": alarms,
            "trails": sources.open_trails(session, alarms, now),
            "positions": sources.positions(session, viewer),
            "directory": sources.directory(session, sorted({a["device_id"] for a in alarms}), viewer),
            "server_time": now.isoformat(),
        }


@router.get("/map/data.json")
def map_data(request: Request) -> JSONResponse:
    who = signed_in(request, sources.READERS)
    return JSONResponse(_map_data(services(request), who.principal))


@router.get("/alarms/{alarm_id}")
def alarm_page(request: Request, alarm_id: str) -> Response:
    who = signed_in(request, sources.READERS)
    s = services(request)
    with s.db.reading() as session:
        record = sources.alarm_record(
            session, alarm_id[:64], _now(), who.principal, reach_secret(s.key), sources.MessageKeys.of(s.key)
        )
        if record is None:
            return render(request, "missing.html", who, 404, what="alarm")
        directory = sources.directory(session, [record["alarm"]["device_id"]], who.principal)
    return render(
        request,
        "alarm.html",
        who,
        record=record,
        directory=directory,
        timeline=timeline(record["alarm"], record["payload"], record["voice_memo"]),
        # The most of the device's points a trail holds (the alarm's own fix, drawn first, is not one).
        trail_cap=sources.TRAIL_POINTS,
        can_act=who.principal.role in sources.OPERATORS,
        can_hear=who.principal.role in sources.OPERATORS,
        can_read_custody=who.principal.role in EVIDENCE_METADATA,
        tiles={"url": s.settings.map_tile_url, "attribution": s.settings.map_tile_attribution},
    )


def timeline(view: dict[str, Any], *items: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Everything that happened to the alarm, oldest first: its own lifecycle and its items' custody."""
    events: list[dict[str, Any]] = []
    steps = [
        ("occurred_at", "happened (device's clock)", None),
        ("raised_at", "received by the service", None),
        ("red_at", "red", None),
        ("acknowledged_at", "acknowledged", "acknowledged_by"),
        ("escalated_at", "escalated", "escalated_by"),
        ("cancel_requested_at", "the wearer asked to cancel", None),
        ("condition_cleared_at", "condition cleared", None),
        ("resolved_at", "resolved", "resolved_by"),
    ]
    for field, what, by in steps:
        if not view.get(field):
            continue
        detail = ""
        if field == "escalated_at" and view.get("escalation_reason"):
            detail = view["escalation_reason"].replace("_", " ")
        if field == "resolved_at":
            outcome = (view.get("outcome") or "").replace("_", " ")
            detail = " — ".join(x for x in (outcome, view.get("resolution_note") or "") if x)
        events.append({"at": view[field], "what": what, "by": view.get(by) if by else None, "detail": detail})
    for item in items:
        if item is None:
            continue
        kind = item["kind"].replace("_", " ")
        for entry in item["custody"]:
            what = f"{kind}: {entry['action'].replace('_', ' ')}"
            detail = f"withheld: {entry['withheld']}" if entry.get("withheld") else ""
            events.append({"at": entry["at"], "what": what, "by": entry.get("actor"), "detail": detail})
    events.sort(key=lambda e: e["at"])
    return events


def _summaries(s: CoreServices, viewer: Principal) -> list[performance.Summary]:
    now = _now()
    with s.db.reading() as session:
        return sources.answer_summaries(session, now, viewer, reach_secret(s.key))


@router.get("/performance")
def performance_page(request: Request) -> Response:
    """The figures of ``GET /api/v1/alarms/performance`` (whose ``?format=csv`` is the report)."""
    who = signed_in(request, sources.READERS)
    return render(request, "performance.html", who, summaries=_summaries(services(request), who.principal))


# --------------------------------------------------------------------------- devices and people


AfterKey = Annotated[str, Query(max_length=64)]  # where a page of a list starts (its last key shown)


def _page(rows: list[Any], size: int, key: str) -> tuple[list[Any], str | None]:
    """The first ``size`` of ``rows`` (read one beyond), and the key the next page starts after."""
    if len(rows) <= size:
        return rows, None
    last = rows[size - 1]
    return rows[:size], str(last[key] if isinstance(last, dict) else getattr(last, key))


@router.get("/admin/devices")
def devices_page(request: Request, after: AfterKey = "") -> Response:
    """The fleet a page at a time (by id, ``after`` the last one shown), as ``GET /api/v1/devices``."""
    who = signed_in(request, sources.DEVICE_READERS)
    size = sources.LIST_PAGE
    s = services(request)
    with s.db.reading() as session:  # only reads: waits for no writer
        fleet, next_after = _page(
            sources.fleet(session, who.principal, s.key, after=after, limit=size + 1),
            size,
            "id",
        )
        staff = [{"id": m.id, "name": m.name} for m in sources.staff(session, who.principal)]
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return render(
        request,
        "devices.html",
        who,
        fleet=fleet,
        after=after,
        next_after=next_after,
        staff=staff,
        can_manage=who.principal.role in sources.DEVICE_ADMINS,
    )


@router.get("/admin/people")
def people_page(request: Request, users_after: AfterKey = "", staff_after: AfterKey = "") -> Response:
    """Users and staff, each a page at a time (``users_after``, ``staff_after``: the last one shown),
    as ``GET /api/v1/users`` and ``GET /api/v1/staff``."""
    who = signed_in(request, sources.DEVICE_ADMINS)
    users: list[Any] | None = None
    users_next = None
    with services(request).db.reading() as session:
        staff, staff_next = _page(
            sources.staff(session, who.principal, after=staff_after, limit=sources.LIST_PAGE + 1),
            sources.LIST_PAGE,
            "id",
        )
        if who.principal.role in sources.USER_ADMINS:
            users, users_next = _page(
                sources.users(session, after=users_after, limit=sources.USERS_PAGE + 1),
                sources.USERS_PAGE,
                "username",
            )
        session.expunge_all()
    return render(
        request,
        "people.html",
        who,
        staff=staff,
        staff_after=staff_after,
        staff_next=staff_next,
        users=users,
        users_after=users_after if users is not None else "",
        users_next=users_next,
        roles=sources.ROLES,
    )


# --------------------------------------------------------------------------- API documentation, offline


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    response = templates.TemplateResponse(request, "apidocs.html", {"which": "swagger"})
    response.headers["Content-Security-Policy"] = content_security_policy()
    return response


@router.get("/redoc")
def redoc(request: Request) -> Response:
    response = templates.TemplateResponse(request, "apidocs.html", {"which": "redoc"})
    # ReDoc styles itself with <style> elements it writes at run time and searches in a blob worker;
    # still no inline or foreign script.
    response.headers["Content-Security-Policy"] = content_security_policy(
        **{"style-src": "'self' 'unsafe-inline'", "worker-src": "'self' blob:"}
    )
    return response


# --------------------------------------------------------------------------- files


@router.get("/static/{prefix}/{name:path}")
def static_file(prefix: str, name: str) -> Response:
    path = assets.resolve(prefix, name)
    if path is None:
        raise NotFound("no such file")  # the one error envelope, as everywhere
    return FileResponse(
        path, media_type=assets.TYPES[path.suffix], headers={"Cache-Control": "public, max-age=86400"}
    )


__all__ = ["CSRF_HEADER", "PageRefused", "router", "templates"]
