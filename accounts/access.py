"""The dependencies every HTTP route uses: the running service's parts, who is calling, and whether
their role may.

Routes are flat module-level ``APIRouter``s in each domain's ``api.py``; they take
``s: CoreServices = Depends(services)`` and ``user: Principal = Depends(require_roles(...))``. The
application (``ingest.app``) puts its services on ``app.state.services``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chain_of_custody.core import CoreServices

from .service import Principal, resolve_token

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False)


def services(request: Request) -> CoreServices:
    """The running service's parts (``ingest.services.Services``, seen through what every domain needs)."""
    found: CoreServices = request.app.state.services
    return found


def current_user(
    creds: HTTPAuthorizationCredentials | None = Depends(bearer), s: CoreServices = Depends(services)
) -> Principal:
    """The signed-in caller (401 without a valid bearer token)."""
    if creds is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    with s.db.session() as session:
        principal = resolve_token(session, creds.credentials)
    if principal is None:
        log.info("rejected user token")
        raise HTTPException(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def require_roles(*roles: str) -> Callable[..., Principal]:
    """A dependency that admits only the given roles (403 otherwise)."""

    def check(user: Principal = Depends(current_user)) -> Principal:
        if user.role not in roles:
            raise HTTPException(403, f"role {user.role} may not do this")
        return user

    return check
