"""Login (OAuth2 password flow) and the device registry routes."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from accounts.service import AccountError, Principal, authenticate, issue_token
from devices import service as device_service
from devices.models import Device, StaffMember
from devices.service import DeviceRefused

from .auth import require_roles, services
from .services import Services

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["access"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: str
    role: str


@router.post("/auth/token", response_model=TokenOut)
def login(form: OAuth2PasswordRequestForm = Depends(), s: Services = Depends(services)) -> TokenOut:
    settings = s.settings
    try:
        with s.db.session() as session:
            user = authenticate(
                session,
                form.username,
                form.password,
                max_failures=settings.login_max_failures,
                lockout=timedelta(minutes=settings.login_lockout_minutes),
            )
            token, expires = issue_token(session, user, timedelta(minutes=settings.token_ttl_minutes))
            role = user.role
    except AccountError as exc:
        log.warning("login refused", extra={"username": form.username, "reason": str(exc)})
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    log.info("login", extra={"username": form.username})
    return TokenOut(access_token=token, expires_at=expires.isoformat(), role=role)


class StaffIn(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str = Field(min_length=1, max_length=128)
    group: str = "other"
    site: str | None = None


class DockIn(BaseModel):
    id: str
    name: str = ""
    site: str | None = None


class KeyedDeviceIn(BaseModel):
    id: str
    public_key: str
    staff_id: str | None = None
    name: str = ""
    site: str | None = None


class DeviceOut(BaseModel):
    id: str
    kind: str
    name: str
    site: str | None
    status: str
    public_key: str | None
    assigned_staff_id: str | None

    model_config = {"from_attributes": True}


class DeviceChange(BaseModel):
    status: str | None = None
    staff_id: str | None = None
    unassign: bool = False


ADMINS = ("admin", "security_manager")


def _refused(exc: DeviceRefused) -> HTTPException:
    return HTTPException(exc.status, {"error": str(exc), "reason": exc.reason})


@router.post("/staff", status_code=201)
def add_staff(
    body: StaffIn, user: Principal = Depends(require_roles(*ADMINS)), s: Services = Depends(services)
) -> dict[str, str]:
    with s.db.session() as session:
        device_service.add_staff(session, body.id, body.name, body.group, body.site)
    return {"id": body.id}


class StaffOut(BaseModel):
    id: str
    name: str
    staff_group: str
    site: str | None

    model_config = {"from_attributes": True}


@router.get("/staff", response_model=list[StaffOut])
def list_staff(
    user: Principal = Depends(require_roles(*ADMINS, "auditor", "operator")), s: Services = Depends(services)
) -> list[StaffMember]:
    """Staff who wear cameras or carry alarms (the control room names the person behind an alarm)."""
    with s.db.session() as session:
        return device_service.list_staff(session)


@router.post("/devices/docks", status_code=201)
def enrol_dock(
    body: DockIn, user: Principal = Depends(require_roles(*ADMINS)), s: Services = Depends(services)
) -> dict[str, str]:
    """Enrol a dock; the token is shown once here and only its hash is kept."""
    try:
        with s.db.session() as session:
            enrolled = device_service.enrol_dock(
                session, s.ledger, body.id, user.actor, name=body.name, site=body.site
            )
    except DeviceRefused as exc:
        raise _refused(exc) from None
    return {"id": body.id, "token": enrolled.token}


def _enrol_keyed(kind: str, body: KeyedDeviceIn, user: Principal, s: Services) -> Device:
    try:
        with s.db.session() as session:
            return device_service.enrol_keyed_device(
                session,
                s.ledger,
                kind,
                body.id,
                body.public_key,
                user.actor,
                staff_id=body.staff_id,
                name=body.name,
                site=body.site,
            )
    except DeviceRefused as exc:
        raise _refused(exc) from None


@router.post("/devices/cameras", status_code=201, response_model=DeviceOut)
def enrol_camera(
    body: KeyedDeviceIn, user: Principal = Depends(require_roles(*ADMINS)), s: Services = Depends(services)
) -> Device:
    return _enrol_keyed("camera", body, user, s)


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(
    kind: str | None = None,
    user: Principal = Depends(require_roles(*ADMINS, "auditor", "operator")),
    s: Services = Depends(services),
) -> list[Device]:
    with s.db.session() as session:
        return device_service.list_devices(session, kind)


@router.patch("/devices/{device_id}", response_model=DeviceOut)
def change_device(
    device_id: str,
    body: DeviceChange,
    user: Principal = Depends(require_roles(*ADMINS)),
    s: Services = Depends(services),
) -> Device:
    try:
        with s.db.session() as session:
            device = session.get(Device, device_id)
            if device is None:
                raise DeviceRefused("unknown_device", f"no device {device_id}", 404)
            if body.status is not None:
                device = device_service.set_status(session, s.ledger, device_id, body.status, user.actor)
            if body.staff_id is not None or body.unassign:
                device = device_service.assign(
                    session, s.ledger, device_id, None if body.unassign else body.staff_id, user.actor
                )
            return device
    except DeviceRefused as exc:
        raise _refused(exc) from None
