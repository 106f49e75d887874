"""Who a browser is: the session cookie, checked the same way for the console's pages and for the API.

A request carrying the console's session cookie (and no bearer token) is that session's person,
with the same roles and scope as a token would give them: the pages' scripts call the very API
routes that token clients call, so there is one access implementation. A cookie is sent by the
browser on its own, so every state-changing request made with it must prove it came from our page:
the session's CSRF token in ``X-CSRF-Token`` (or the form field ``csrf``), and an ``Origin`` /
``Sec-Fetch-Site`` that is our own. The cookie is ``HttpOnly`` and ``SameSite=Strict`` as well.
"""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from storage.settings import ConsoleSettings

from .sessions import BrowserSession, SessionPolicy, csrf_matches, resolve_session

log = logging.getLogger(__name__)

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_name(secure: bool) -> str:
    """``__Host-`` binds the cookie to this host and path ``/`` over HTTPS; plain HTTP cannot use it."""
    return "__Host-evidence_session" if secure else "evidence_session"


def session_secret(request: Request, secure: bool) -> str | None:
    return request.cookies.get(cookie_name(secure))


def same_origin(request: Request) -> bool:
    """The request was sent by one of our own pages (or typed by the person), not by another site.

    Browsers send ``Sec-Fetch-Site``, which no page can forge: when present it decides. Otherwise an
    ``Origin`` (sent with a POST) must be our own.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.netloc == host and parts.scheme in ("http", "https")


def check_csrf(request: Request, secret: str, presented: str | None) -> None:
    """Refuse (403) a state-changing request that did not come from our page."""
    if not same_origin(request):
        log.warning("cross-site request refused", extra={"path": request.url.path})
        raise HTTPException(403, {"error": "cross-site request refused", "reason": "cross_site"})
    if not csrf_matches(secret, presented):
        log.warning("CSRF token missing or wrong", extra={"path": request.url.path})
        raise HTTPException(403, {"error": "CSRF token missing or wrong", "reason": "csrf"})


BACKGROUND_HEADER = "X-Console-Background"


def is_background(request: Request) -> bool:
    """A request the page makes by itself (the live alarm stream, a timer's refresh), not something
    the person did: it must not keep an unattended screen signed in."""
    return "text/event-stream" in request.headers.get("accept", "") or bool(
        request.headers.get(BACKGROUND_HEADER)
    )


def browser_session(
    request: Request,
    session: Session,
    settings: ConsoleSettings,
    *,
    csrf: str | None = None,
    now: datetime | None = None,
) -> BrowserSession | None:
    """The signed-in browser behind ``request``, or None; 403 for a state-changing request without
    proof that our page sent it. ``csrf`` is a token found in a form body (else the header is used)."""
    secure = settings.console_secure_cookie
    secret = session_secret(request, secure)
    if not secret:
        return None
    found = resolve_session(
        session, secret, SessionPolicy.from_settings(settings), activity=not is_background(request), now=now
    )
    if found is None:
        return None
    if request.method not in SAFE_METHODS:
        check_csrf(request, secret, csrf if csrf is not None else request.headers.get(CSRF_HEADER))
    return found
