"""Who a browser is: the session cookie, checked the same way for the console's pages and for the API.

A request carrying the console's session cookie (and no bearer token) is that session's person,
with the same roles and scope as a token would give them: the pages' scripts call the very API
routes that token clients call, so there is one access implementation. A cookie is sent by the
browser on its own, so every state-changing request made with it must prove it came from our page:
the session's CSRF token in ``X-CSRF-Token`` (or the form field ``csrf``), and an ``Origin`` /
``Sec-Fetch-Site`` that is our own. The cookie is ``HttpOnly`` and ``SameSite=Strict`` as well.

Some reads write too: every read of evidence is a custody entry naming the reader and the reason
given. A ``GET`` needs no CSRF token, yet another page could make the person's browser send one
(an ``<img>`` or ``<video>`` whose address carries a ``reason`` of the attacker's choosing) and so
write the custody record under their name. ``SameSite=Strict`` keeps the cookie off requests from
other *sites*, but not from another origin of the same site (a sibling host name); so a read that
writes custody, made with the cookie, must also come from our own origin
(:func:`refuse_cross_site_read`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from storage.db import Database, on_own_account
from storage.errors import Refused
from storage.settings import ConsoleSettings

from .seals import SignInSeals
from .sessions import (
    BrowserSession,
    SessionChange,
    SessionPolicy,
    csrf_matches,
    read_session,
    touch_or_end,
)

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
    return _own_origin(request, origin)


def _own_origin(request: Request, address: str) -> bool:
    parts = urlsplit(address)
    return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")


class ForgedRequest(Refused):
    """A state-changing request that did not come from our page: another site's form or script, or
    one without the session's CSRF token (403 ``cross_site`` or ``csrf``)."""

    status = 403
    structured = True


class CrossSiteRead(Refused):
    """A read that writes custody, made with the console's cookie, that did not come from our page
    (403 ``cross_site``, as for a state-changing request)."""

    status = 403
    structured = True


def by_bearer(request: Request) -> bool:
    """The request is authenticated by a bearer token, as ``current_user`` reads it (a cookie, if
    any, is then ignored)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def refuse_cross_site_read(request: Request, settings: ConsoleSettings) -> None:
    """Refuse (:class:`CrossSiteRead`, logged) a read that writes custody, made with the session
    cookie, unless our own page or the person (typed address, bookmark) made it.

    ``Sec-Fetch-Site`` decides when present (``same-origin`` or ``none``; ``same-site`` is another
    origin and is refused). Without it (browsers before 2023, or not a browser) an ``Origin`` or
    ``Referer`` of our own lets it through (no page can forge them; our pages send ``Referer`` to
    their own origin), and otherwise ``console_reads_need_fetch_metadata`` decides: refused by
    default, since a client that sends none of them is not a current browser on our page, and a
    program should use a bearer token. A bearer-token request is not affected: no other page can
    make a browser add one.
    """
    if by_bearer(request) or not session_secret(request, settings.console_secure_cookie):
        return
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site in ("same-origin", "none"):
            return
        seen = fetch_site[:32]
    else:
        source = request.headers.get("origin") or request.headers.get("referer")
        if source is not None and _own_origin(request, source):
            return
        if source is None and not settings.console_reads_need_fetch_metadata:
            return
        seen = "absent (foreign Origin/Referer)" if source is not None else "absent"
    log.warning(
        "cross-site read refused",
        extra={"path": request.url.path, "method": request.method, "sec_fetch_site": seen},
    )
    raise CrossSiteRead(
        "cross_site",
        "this read is recorded on the custody record, so with the console's session it must come from "
        "the console's own pages (Sec-Fetch-Site same-origin); a program should use a bearer token",
    )


def check_csrf(request: Request, secret: str, presented: str | None) -> None:
    """Refuse (403) a state-changing request that did not come from our page."""
    if not same_origin(request):
        log.warning("cross-site request refused", extra={"path": request.url.path})
        raise ForgedRequest("cross_site", "cross-site request refused")
    if not csrf_matches(secret, presented):
        log.warning("CSRF token missing or wrong", extra={"path": request.url.path})
        raise ForgedRequest("csrf", "CSRF token missing or wrong")


BACKGROUND_HEADER = "X-Console-Background"


def is_background(request: Request) -> bool:
    """A request the page makes by itself (the live alarm stream, a timer's refresh), not something
    the person did: it must not keep an unattended screen signed in."""
    return "text/event-stream" in request.headers.get("accept", "") or bool(
        request.headers.get(BACKGROUND_HEADER)
    )


def read_browser_session(
    request: Request,
    session: Session,
    settings: ConsoleSettings,
    seals: SignInSeals,
    *,
    csrf: str | None = None,
    now: datetime | None = None,
) -> tuple[BrowserSession | None, SessionChange | None]:
    """The signed-in browser behind ``request`` as ``session`` (a transaction that may only read)
    finds it, or None, and what is due to be written of it (:func:`write_session_change`, after
    the transaction); 403 for a state-changing request without proof that our page sent it, and
    then nothing is to be written. ``csrf`` is a token found in a form body (else the header)."""
    secure = settings.console_secure_cookie
    secret = session_secret(request, secure)
    if not secret:
        return None, None
    found, change = read_session(
        session,
        secret,
        SessionPolicy.from_settings(settings),
        seals,
        activity=not is_background(request),
        now=now,
    )
    if found is not None and request.method not in SAFE_METHODS:
        check_csrf(request, secret, csrf if csrf is not None else request.headers.get(CSRF_HEADER))
    return found, change


def write_session_change(db: Database, change: SessionChange, seals: SignInSeals) -> None:
    """Write what a session's read found due (``touch_or_end``) in a short write transaction of its
    own. A failure is logged, not raised: the person is signed in already; an unwritten touch only
    brings the idle end sooner, and an unwritten end is found again by the next request's read."""
    try:
        # The service's own write, whoever's request it serves: no caller's check (``act_for``), which
        # would hold the session's row for share and then update it.
        with on_own_account(), db.session() as session:
            touch_or_end(session, change, seals)
    except SQLAlchemyError:
        log.warning("session activity not written", extra={"ended": change.ended}, exc_info=True)


def browser_session(
    request: Request,
    db: Database,
    settings: ConsoleSettings,
    seals: SignInSeals,
    *,
    csrf: str | None = None,
    now: datetime | None = None,
) -> BrowserSession | None:
    """The signed-in browser behind ``request``, or None; 403 for a state-changing request without
    proof that our page sent it. ``csrf`` is a token found in a form body (else the header is used).

    The session is looked up in a read (``Database.reading``): every request of a page (a poll of
    an export's progress, a page of the board) signs in without waiting for the write lock, which a
    long write (an export's recording) may hold for seconds. Only what must be written (the
    person's activity, at most every ``TOUCH_EVERY``; the end of a session found idle) takes a short
    write transaction of its own, after the read, once the request is known to be genuine."""
    with db.reading() as session:
        found, change = read_browser_session(request, session, settings, seals, csrf=csrf, now=now)
    if change is not None:
        write_session_change(db, change, seals)
    return found
