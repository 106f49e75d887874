"""User administration routes (admins only) and "who am I" for everyone signed in.

The application supplies the authentication dependencies (``build_router``), so this package does
not depend on the HTTP application that mounts it. Every change is a ``user_changed`` custody entry.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from .models import ROLES, User
from .service import AccountError, Principal, create_user, list_users, update_user

USER_ADMINS = ("admin",)
ROLE_PATTERN = "^(" + "|".join(ROLES) + ")$"


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


class UserChange(BaseModel):
    full_name: str | None = Field(None, max_length=128)
    role: str | None = Field(None, pattern=ROLE_PATTERN)
    site: str | None = Field(None, max_length=64)
    active: bool | None = None
    password: str | None = Field(None, min_length=12, max_length=1024)
    unlock: bool | None = None


class MeOut(BaseModel):
    user_id: int
    username: str
    role: str
    site: str | None


def build_router(require_roles: Callable[..., Any], services: Callable[..., Any]) -> APIRouter:
    """The routes, with the application's role check and services dependencies."""
    router = APIRouter(prefix="/api/v1", tags=["users"])
    admins = Depends(require_roles(*USER_ADMINS))
    everyone = Depends(require_roles(*ROLES))

    @router.get("/me", response_model=MeOut)
    def me(user: Principal = everyone) -> MeOut:
        return MeOut(user_id=user.user_id, username=user.username, role=user.role, site=user.site)

    @router.get("/users", response_model=list[UserOut])
    def users(user: Principal = admins, s: Any = Depends(services)) -> list[User]:
        with s.db.session() as session:
            return list_users(session)

    @router.post("/users", response_model=UserOut, status_code=201)
    def add_user(body: UserIn, user: Principal = admins, s: Any = Depends(services)) -> User:
        try:
            with s.db.session() as session:
                created = create_user(
                    session, body.username, body.password, body.role, full_name=body.full_name, site=body.site
                )
                s.ledger.append(
                    session,
                    "user_changed",
                    user.actor,
                    details={"user": body.username, "created": True, "role": body.role, "site": body.site},
                )
                return created
        except AccountError as exc:
            raise HTTPException(409 if "exists" in str(exc) else 400, str(exc)) from None

    @router.get("/users/{user_id}", response_model=UserOut)
    def get_user(user_id: int, user: Principal = admins, s: Any = Depends(services)) -> User:
        with s.db.session() as session:
            found = session.get(User, user_id)
        if found is None:
            raise HTTPException(404, "no such user")
        return found

    @router.patch("/users/{user_id}", response_model=UserOut)
    def change_user(
        user_id: int, body: UserChange, user: Principal = admins, s: Any = Depends(services)
    ) -> User:
        changes = {k: getattr(body, k) for k in body.model_fields_set}
        try:
            with s.db.session() as session:
                if session.get(User, user_id) is None:
                    raise HTTPException(404, "no such user")
                changed, done = update_user(session, user_id, changes)
                if done:
                    s.ledger.append(
                        session,
                        "user_changed",
                        user.actor,
                        details={"user": changed.username, "changes": done},
                    )
                return changed
        except AccountError as exc:
            raise HTTPException(400, str(exc)) from None

    return router
