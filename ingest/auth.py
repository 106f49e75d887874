"""Authentication for every route: user bearer tokens (role-checked) and dock tokens."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from accounts.browser import browser_session
from accounts.service import Principal, resolve_token
from devices.models import Device
from devices.service import DeviceRefused, authenticate_dock

from .metrics import UPLOAD_REFUSALS
from .services import Services

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def current_user(
    request: Request,
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
    s: Services = Depends(services),
) -> Principal:
    """The caller by bearer token or, from the console's pages, by session cookie (with CSRF checks)."""
    if creds is None:
        with s.db.session() as session:
            browser = browser_session(request, session, s.settings)
        if browser is not None:
            return browser.principal
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    with s.db.session() as session:
        principal = resolve_token(session, creds.credentials)
    if principal is None:
        log.info("rejected user token")
        raise HTTPException(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def still_signed_in(request: Request, s: Services, user: Principal) -> bool:
    """Whether the credentials a long-lived request (the live stream) opened with still hold: the
    token not revoked or expired, the browser session not ended, the role unchanged."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    with s.db.session() as session:
        if scheme.lower() == "bearer" and token:
            now = resolve_token(session, token.strip())
        else:
            browser = browser_session(request, session, s.settings)
            now = browser.principal if browser else None
    return now is not None and now.user_id == user.user_id and now.role == user.role


def require_roles(*roles: str) -> Callable[..., Principal]:
    """A dependency that admits only the given roles (403 otherwise)."""

    def check(user: Principal = Depends(current_user)) -> Principal:
        if user.role not in roles:
            raise HTTPException(403, f"role {user.role} may not do this")
        return user

    return check


def current_dock(request: Request, s: Services = Depends(services)) -> Device:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        UPLOAD_REFUSALS.labels(reason="no_token").inc()
        raise HTTPException(401, "dock token required", headers={"WWW-Authenticate": "Bearer"})
    try:
        with s.db.session() as session:
            dock = authenticate_dock(session, token.strip())
            session.expunge(dock)
            return dock
    except DeviceRefused as exc:
        UPLOAD_REFUSALS.labels(reason=exc.reason).inc()
        log.warning(
            "dock refused",
            extra={"reason": exc.reason, "client": request.client.host if request.client else None},
        )
        raise HTTPException(exc.status, str(exc)) from None
