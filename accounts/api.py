"""Sign-in (OAuth2 password flow), "who am I" for everyone signed in, and user administration (admins).

Every change of a user is a ``user_changed`` custody entry.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field, StrictBool

from chain_of_custody.core import CoreServices
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from storage.api_schema import error_responses
from storage.bounds import DB_INT_MAX, Patch
from storage.errors import NotFound, Refused
from storage.paging import after_key, link_next, next_headers, page_limit

from .access import client_address, require_roles, services, sign_in_throttle
from .ends import live_credentials, record_ends
from .models import ROLES, User
from .seals import record_user
from .service import (
    AccountError,
    Principal,
    create_user,
    creation_record,
    issue_token,
    list_users,
    password_record,
    refusal_log,
    sign_in,
    update_user,
)
from .throttle import SignInThrottle

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["users"])

USER_ADMINS = ("admin",)
UserId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="a user's id")]
ROLE_PATTERN = "^(" + "|".join(ROLES) + ")$"


class LoginRefused(Refused):
    status = 401


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: str
    role: str


class UserOut(BaseModel):
    id: int
    username: str
    full_name: str
    role: str
    site: str | None
    active: bool
    locked_until: datetime | None
    created_at: datetime

    model_config = {"from_attributes": True}


class UserIn(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    password: str = Field(min_length=12, max_length=1024)
    role: str = Field(pattern=ROLE_PATTERN)
    full_name: str = Field("", max_length=128)
    site: str | None = Field(None, max_length=64)


class UserChange(Patch):
    not_null = frozenset({"full_name", "role", "active", "password", "unlock"})

    full_name: str | None = Field(None, max_length=128)
    role: str | None = Field(None, pattern=ROLE_PATTERN)
    site: str | None = Field(None, max_length=64)
    active: StrictBool | None = None
    password: str | None = Field(None, min_length=12, max_length=1024)
    unlock: StrictBool | None = None


class MeOut(BaseModel):
    user_id: int
    username: str
    role: str
    site: str | None


@router.post("/auth/token", response_model=TokenOut, tags=["access"], responses=error_responses(401))
def login(
    request: Request,
    form: OAuth2PasswordRequestForm = Depends(),
    s: CoreServices = Depends(services),
    throttle: SignInThrottle = Depends(sign_in_throttle),
) -> TokenOut:
    """A bearer token for a username and password. Every refusal is the same 401, whatever the cause."""
    settings = s.settings
    try:
        with s.db.session() as session:
            user = sign_in(
                session, form.username, form.password, client_address(request), throttle, s.key, s.ledger
            )
            ttl = timedelta(minutes=settings.token_ttl_minutes)
            token, expires = issue_token(session, user, ttl, s.key.derived_secret(CREDENTIAL_SEALS))
            role = user.role
    except AccountError as exc:
        why, fields = refusal_log(exc)
        log.warning("login refused" + why, extra={**fields, "client": client_address(request)})
        raise LoginRefused(exc.reason, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    log.info("login", extra={"username": form.username})
    return TokenOut(access_token=token, expires_at=expires.isoformat(), role=role)


@router.get("/me", response_model=MeOut)
def me(user: Principal = Depends(require_roles(*ROLES))) -> MeOut:
    return MeOut(user_id=user.user_id, username=user.username, role=user.role, site=user.site)


USERS_PAGE = 500  # users in a page, unless the caller asks for fewer (as staff and devices)
USERS_PAGE_MAX = 1000


@router.get("/users", response_model=list[UserOut], responses=next_headers())
def users(
    response: Response,
    after: str = after_key("username", "user"),
    limit: int = page_limit(USERS_PAGE, USERS_PAGE_MAX, "users"),
    user: Principal = Depends(require_roles(*USER_ADMINS)),
    s: CoreServices = Depends(services),
) -> list[User]:
    """The users by username, a page at a time (``limit``, then ``after``): while more follow, the
    answer links the next page (``Link: <...>; rel="next"`` and ``X-Next-After``)."""
    with s.db.reading() as session:  # only reads: waits for no writer
        rows = list_users(session, after=after, limit=limit + 1)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    link_next(response, "/api/v1/users", rows[limit - 1].username if len(rows) > limit else None, limit)
    return rows[:limit]


@router.post("/users", response_model=UserOut, status_code=201, responses=error_responses(409))
def add_user(
    body: UserIn, user: Principal = Depends(require_roles(*USER_ADMINS)), s: CoreServices = Depends(services)
) -> User:
    with s.db.session() as session:
        created = create_user(
            session,
            body.username,
            body.password,
            body.role,
            key=s.key,
            full_name=body.full_name,
            site=body.site,
        )
        record_user(session, s.ledger, created, user.actor, creation_record(s.key, created))
        return created


@router.get("/users/{user_id}", response_model=UserOut)
def get_user(
    user_id: UserId,
    user: Principal = Depends(require_roles(*USER_ADMINS)),
    s: CoreServices = Depends(services),
) -> User:
    with s.db.reading() as session:
        found = session.get(User, user_id)
        session.expunge_all()
    if found is None:
        raise NotFound("no such user")
    return found


@router.patch("/users/{user_id}", response_model=UserOut)
def change_user(
    user_id: UserId,
    body: UserChange,
    user: Principal = Depends(require_roles(*USER_ADMINS)),
    s: CoreServices = Depends(services),
    throttle: SignInThrottle = Depends(sign_in_throttle),
) -> User:
    # Null is refused (422) for every field that cannot be empty; a site sent as null is cleared.
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    with s.db.session() as session:
        if session.get(User, user_id) is None:
            raise NotFound("no such user")
        live = live_credentials(session, user_id)
        changed, done = update_user(session, user_id, changes, s.key)
        if "password" in done:
            done.update(password_record(s.key, changed))
        if done:
            record_user(session, s.ledger, changed, user.actor, {"user": changed.username, "changes": done})
        why = "account changed: " + ", ".join(sorted({"password", "role", "active"} & done.keys()))
        record_ends(
            session,
            s.ledger,
            s.key.derived_secret(CREDENTIAL_SEALS),
            live,
            username=changed.username,
            actor=user.actor,
            why=why,
        )
    if body.unlock:  # after the commit: the throttle writes in a transaction of its own
        throttle.forgive(changed.username)
    return changed
