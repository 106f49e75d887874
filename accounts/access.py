"""The dependencies every HTTP route uses: the running service's parts, who is calling, and whether
their role may.

The caller is named by a bearer token or, from the console's pages, by the session cookie with its
CSRF and same-origin checks (``accounts.browser``): one access implementation for both.

Which sites a caller sees (``sites_seen``, ``site_scope``) is decided here too, once, for the API's
routes and the console's pages alike: a security manager sees their own site's alarms, devices'
positions and incidents only (nothing without a site); every other role that may read them sees
every site (the control room answers for all of them). A site's devices and members of staff are
those whose row's seal held when the manager signed in (``device_scope``, ``staff_scope``,
``Principal.reach``): a row moved to their site by SQL is not theirs.

Routes are flat module-level ``APIRouter``s in each domain's ``api.py``; they take
``s: CoreServices = Depends(services)`` and ``user: Principal = Depends(require_roles(...))``. The
application (``ingest.app``) puts its services on ``app.state.services``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import ColumnElement, and_, false, true
from sqlalchemy.orm import Session

from chain_of_custody.core import CoreServices
from chain_of_custody.reach_seals import SiteReach
from chain_of_custody.row_seals import SESSION, TOKEN
from storage.db import act_for
from storage.errors import NotPermitted, Unauthenticated

from .browser import (
    browser_session,
    read_browser_session,
    refuse_cross_site_read,
    session_secret,
    write_session_change,
)
from .models import SITE_SCOPED_ROLES
from .recent_sign_ins import RECENT_SIGN_INS, presented_key
from .seals import SignInSeals
from .service import Principal, resolve_token, stands
from .sessions import SessionChange
from .throttle import SignInThrottle, ThrottlePolicy

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False)
_throttle_made = threading.Lock()


def services(request: Request) -> CoreServices:
    """The running service's parts (``ingest.services.Services``, seen through what every domain needs)."""
    found: CoreServices = request.app.state.services
    return found


async def services_here(request: Request) -> CoreServices:
    """:func:`services` as a dependency resolved on the event loop: a plain function dependency is
    run on a worker thread, and a request (each of a player's ranges) pays for every such hop before
    its first byte. The sign-in and the custody checks of every request depend on this one."""
    return services(request)


def sign_in_throttle(request: Request) -> SignInThrottle:
    """The one sign-in throttle of this application, shared by the API's token and the console's form."""
    state = request.app.state
    with _throttle_made:
        found: SignInThrottle | None = getattr(state, "sign_in_throttle", None)
        if found is None:
            core = services(request)
            found = SignInThrottle(core.db, ThrottlePolicy.from_settings(core.settings))
            state.sign_in_throttle = found
    return found


def client_address(request: Request) -> str:
    """Who is asking, as the throttle counts them (the peer address; uvicorn applies trusted proxies' headers)."""
    return request.client.host if request.client else "unknown"


def current_user(
    request: Request,
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
    s: CoreServices = Depends(services_here),
) -> Principal:
    """The caller by bearer token or, from the console's pages, by session cookie (with CSRF checks);
    401 without either."""
    if creds is None:
        # Read without the write lock too (``browser_session``): only a touch, rarely, writes.
        browser = browser_session(request, s.db, s.settings, SignInSeals.of(s.key))
        if browser is not None:
            return browser.principal
        raise Unauthenticated("authentication required", headers={"WWW-Authenticate": "Bearer"})
    # A token's sign-in only reads: on SQLite it waits for no writer, so a request that itself only
    # reads answers while a long write runs.
    with s.db.reading() as session:
        principal = resolve_token(session, creds.credentials, SignInSeals.of(s.key))
    if principal is None:
        log.info("rejected user token")
        raise Unauthenticated("invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
    return principal


async def same_origin_read(request: Request, s: CoreServices = Depends(services_here)) -> None:
    """A route dependency for every ``GET`` that writes custody (a read of evidence bytes, a report
    that is a read of each item, a search that is recorded): with the console's cookie it must come
    from our own pages (``browser.refuse_cross_site_read``), so no other page can write the custody
    record under a signed-in person's name. Resolved before the route's body, so a refused request
    writes nothing. It reads headers only, so it runs on the event loop, not a worker thread."""
    refuse_cross_site_read(request, s.settings)


WRITES_CUSTODY = Depends(same_origin_read)


def still_signed_in(request: Request, s: CoreServices, user: Principal) -> bool:
    """Whether the credentials a long-lived request (the live stream) opened with still hold: the
    token not revoked or expired, the browser session not ended, the role unchanged."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    seals = SignInSeals.of(s.key)
    if scheme.lower() == "bearer" and token:
        with s.db.reading() as session:
            now = resolve_token(session, token.strip(), seals)
    else:
        browser = browser_session(request, s.db, s.settings, seals)
        now = browser.principal if browser else None
    return now is not None and now.user_id == user.user_id and now.role == user.role


def require_roles(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only the given roles (403 otherwise); the role's check runs on the
    event loop (the sign-in it depends on takes the worker thread its database look-up needs).

    The sign-in is read in a transaction of its own, before the route's; so every write transaction
    the route then begins checks first, in itself, that the caller still stands as signed in
    (``service.stands``, bound to the request by ``storage.db.act_for``): an account deactivated, a
    role changed or a credential ended in between gets no further action, and on PostgreSQL such a
    change waits for that transaction's commit instead of slipping in before it."""

    async def check(user: Principal = Depends(current_user)) -> Principal:
        admitted = role_admitted(user, roles)
        act_for(partial(stands, principal=admitted))
        return admitted

    return check


def role_admitted(user: Principal, roles: tuple[str, ...]) -> Principal:
    """``user`` if their role is one of ``roles``; 403 otherwise."""
    if user.role not in roles:
        raise NotPermitted(f"role {user.role} may not do this")
    return user


class SignInWithin:
    """A request's sign-in made later, in the transaction and on the worker thread of the route's
    own look-up (an evidence read: one hop to a thread and one transaction, not one each), with the
    checks of ``require_roles``: the bearer token (``resolve_token``) or the console's session
    (``browser.read_browser_session``: idle and absolute ends, the rows' seals, CSRF for a
    state-changing request), then the role. A request with neither credential is refused (401)
    before the route's body runs, as ``current_user`` refuses it.

    The look-up's transaction writes (it records a player's range), and on SQLite a write
    transaction is the one writer lock: a credential that has not signed in here in the last
    ``VOUCHED_FOR_SECONDS`` (``accounts.recent_sign_ins``) is signed in first in a transaction that
    only reads (:meth:`before_writing`), so a made-up token or cookie is refused without ever taking
    or waiting for the writer, and so is one the service has ended since (signed out, revoked: it is
    forgotten as it ends). A person's next ranges, a moment later, sign in within the look-up.

    What the session's read finds due to be written (the person's activity, at most every
    ``TOUCH_EVERY``; the end of a session found idle) is not written in the look-up's transaction:
    :meth:`write_due` writes it in a short write transaction of its own once that one has ended
    (a failure is logged, not raised), whether the look-up answered or refused."""

    def __init__(
        self,
        request: Request,
        creds: HTTPAuthorizationCredentials | None,
        s: CoreServices,
        roles: tuple[str, ...],
    ) -> None:
        self.request = request
        self.creds = creds
        self.services = s
        self.roles = roles
        self.seals = SignInSeals.of(s.key)
        self._due: SessionChange | None = None
        self._found: Principal | None = None
        if creds is not None:
            self._digest = presented_key(TOKEN, creds.credentials)
        else:
            secret = session_secret(request, s.settings.console_secure_cookie) or ""
            self._digest = presented_key(SESSION, secret)

    def before_writing(self) -> None:
        """Sign in now, in a transaction that only reads, unless the credential signed in here a
        moment ago: what is refused (401, 403) is refused before any write transaction begins."""
        if self._found is None and not RECENT_SIGN_INS.vouches(self._digest):
            with self.services.db.reading() as session:
                self._found = self._signed_in(session)

    def principal(self, session: Session) -> Principal:
        """The caller, read in ``session`` (401 when not signed in, 403 for another role), or as
        :meth:`before_writing` read them: then checked again in ``session`` (``service.stands``), as
        every write on a caller's authority is, since they were read in a transaction of their own."""
        if self._found is None:
            return self._signed_in(session)
        stands(session, self._found)
        return self._found

    def _signed_in(self, session: Session) -> Principal:
        try:
            found = role_admitted(self._read(session), self.roles)
        except BaseException:
            RECENT_SIGN_INS.refused(self._digest)
            raise
        RECENT_SIGN_INS.signed_in(self._digest)
        return found

    def _read(self, session: Session) -> Principal:
        if self.creds is not None:
            principal = resolve_token(session, self.creds.credentials, self.seals)
            if principal is None:
                log.info("rejected user token")
                raise Unauthenticated("invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
            return principal
        found, self._due = read_browser_session(self.request, session, self.services.settings, self.seals)
        if found is None:
            raise Unauthenticated("authentication required", headers={"WWW-Authenticate": "Bearer"})
        return found.principal

    def write_due(self) -> None:
        """Write what the session's read found due, if anything (after the read's transaction)."""
        due, self._due = self._due, None
        if due is not None:
            write_session_change(self.services.db, due, self.seals)


def signs_in_within(*roles: str) -> Callable[..., Awaitable[SignInWithin]]:
    """A dependency for a route that signs its caller in within its own look-up (:class:`SignInWithin`),
    resolved on the event loop: it only sees whether the request carries a credential at all."""

    async def deferred(
        request: Request,
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),
        s: CoreServices = Depends(services_here),
    ) -> SignInWithin:
        if creds is None and not session_secret(request, s.settings.console_secure_cookie):
            raise Unauthenticated("authentication required", headers={"WWW-Authenticate": "Bearer"})
        return SignInWithin(request, creds, s, roles)

    return deferred


class SiteViewer(Protocol):
    """The caller as the site rule needs it (an ``accounts`` principal satisfies this)."""

    @property
    def role(self) -> str: ...

    @property
    def site(self) -> str | None: ...


def sites_seen(viewer: SiteViewer) -> frozenset[str] | None:
    """The sites whose rows the viewer sees: None for every site, else exactly these (none when a
    site-scoped role has no site: an unfinished account sees nothing rather than everything)."""
    if viewer.role in SITE_SCOPED_ROLES:
        return frozenset({viewer.site}) if viewer.site else frozenset()
    return None


def sees_site(viewer: SiteViewer, site: str | None) -> bool:
    """Whether one row of ``site`` is the viewer's to see (the yes/no form of :func:`site_scope`)."""
    sites = sites_seen(viewer)
    return sites is None or (site is not None and site in sites)


def site_scope(viewer: SiteViewer, column: Any) -> ColumnElement[bool]:
    """A WHERE clause on a table's site column selecting the rows the viewer sees."""
    sites = sites_seen(viewer)
    if sites is None:
        return true()
    return column.in_(sorted(sites)) if sites else false()


class ReachViewer(SiteViewer, Protocol):
    """The caller with what their reach by rows rests on (an ``accounts`` principal satisfies this)."""

    @property
    def reach(self) -> SiteReach: ...


def _sealed_scope(viewer: ReachViewer, site: Any, row_id: Any, sealed: frozenset[str]) -> ColumnElement[bool]:
    clause = site_scope(viewer, site)
    if sites_seen(viewer) is None:
        return clause
    return and_(clause, row_id.in_(sorted(sealed)))


def device_scope(viewer: ReachViewer, device: Any) -> ColumnElement[bool]:
    """A WHERE clause on ``devices`` (the class or an alias) selecting the devices the viewer sees:
    :func:`site_scope` on its site and, for a viewer by site, only the devices of that site whose
    row's seal held when they signed in (``viewer.reach.devices``): SQL cannot check an HMAC, and a
    device moved to their site by SQL would show them another site's wearer, position and alarms.
    In a write transaction acting for them, those still of their site there (``held_reach``)."""
    return _sealed_scope(viewer, device.site, device.id, viewer.reach.devices)


def staff_scope(viewer: ReachViewer, member: Any) -> ColumnElement[bool]:
    """A WHERE clause on ``staff`` selecting the members of staff the viewer sees: as
    :func:`device_scope`, by the members whose row's seal held when they signed in."""
    return _sealed_scope(viewer, member.site, member.id, viewer.reach.staff)


def sees_sealed(viewer: ReachViewer, site: str | None, row_id: str, sealed: frozenset[str]) -> bool:
    """The yes/no form of :func:`device_scope` and :func:`staff_scope` for one row: ``sealed`` is
    ``viewer.reach.devices`` or ``viewer.reach.staff``."""
    return sees_site(viewer, site) and (sites_seen(viewer) is None or row_id in sealed)
