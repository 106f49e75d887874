"""The device registry's routes: staff, docks (token shown once), cameras and lone-worker devices
(enrolled by their public keys; a new broker password on request), the fleet, and changes of status
and assignment."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, StrictBool
from sqlalchemy.orm import Session

from accounts.access import require_roles, sees_sealed, services
from accounts.service import Principal
from chain_of_custody.core import CoreServices
from storage.paging import after_key, link_next, next_headers, page_limit

from . import service
from .lone_worker_wire import DEVICE_ID_PATTERN, topic_for
from .models import Device, StaffMember
from .service import DeviceRefused

router = APIRouter(prefix="/api/v1", tags=["devices"])

ADMINS = ("admin", "security_manager")


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


class LoneWorkerIn(BaseModel):
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key: str = Field(description="base64 of the device's raw 32-byte Ed25519 public key")
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
    unassign: StrictBool = False


def _enrolment_site(
    session: Session, user: Principal, device_id: str, site: str | None, staff_id: str | None = None
) -> str | None:
    """The site an enrolment records, checked against the caller's sites: re-enrolling an existing
    id the caller does not see is refused (another site's, or for a manager one whose row's seal did
    not hold when they signed in: enrolling it again would seal a row moved by SQL), and a device is
    assigned only to staff the caller sees."""
    site = service.site_for_write(user, site)
    existing = session.get(Device, device_id)
    if existing is not None and not sees_sealed(user, existing.site, existing.id, user.reach.devices):
        raise DeviceRefused("id_in_use", f"{device_id} is enrolled at another site", 409)
    if staff_id is not None:
        service.seen_staff(session, user, staff_id)
    return site


@router.post("/staff", status_code=201)
def add_staff(
    body: StaffIn, user: Principal = Depends(require_roles(*ADMINS)), s: CoreServices = Depends(services)
) -> dict[str, str]:
    """Add a member of staff or change one; a security manager, of their own site only (a staff number of
    another site is refused, and so is one whose row's seal did not hold when they signed in: a row
    moved to their site in the database is not theirs to seal again)."""
    with s.db.session() as session:
        site = service.site_for_write(user, body.site)
        existing = session.get(StaffMember, body.id)
        if existing is not None and not sees_sealed(user, existing.site, existing.id, user.reach.staff):
            raise DeviceRefused("id_in_use", f"staff number {body.id} belongs to another site", 409)
        service.add_staff(session, s.ledger, body.id, body.name, body.group, site, actor=user.actor)
    return {"id": body.id}


class StaffOut(BaseModel):
    id: str
    name: str
    staff_group: str
    site: str | None

    model_config = {"from_attributes": True}


LIST_PAGE = 500  # staff or devices in a page, unless the caller asks for fewer
LIST_PAGE_MAX = 1000


LIMIT = page_limit(LIST_PAGE, LIST_PAGE_MAX)


def _paged(response: Response, path: str, rows: list[Any], limit: int, **params: str) -> list[Any]:
    """The first ``limit`` of ``rows`` (read one beyond), saying on ``response`` where the next starts."""
    link_next(response, path, rows[limit - 1].id if len(rows) > limit else None, limit, **params)
    return rows[:limit]


@router.get("/staff", response_model=list[StaffOut], responses=next_headers())
def list_staff(
    response: Response,
    after: str = after_key("staff number"),
    limit: int = LIMIT,
    user: Principal = Depends(require_roles(*ADMINS, "auditor", "operator")),
    s: CoreServices = Depends(services),
) -> list[StaffMember]:
    """Staff who wear cameras or carry alarms (the control room names the person behind an alarm), of
    the sites the caller sees, by staff number, a page at a time (``limit``, then ``after``): while
    more follow, the answer links the next page (``Link: <...>; rel="next"`` and ``X-Next-After``)."""
    with s.db.reading() as session:  # only reads: waits for no writer
        rows = service.list_staff(session, user, after=after, limit=limit + 1)
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    return _paged(response, "/api/v1/staff", rows, limit)


@router.post("/devices/docks", status_code=201)
def enrol_dock(
    body: DockIn, user: Principal = Depends(require_roles(*ADMINS)), s: CoreServices = Depends(services)
) -> dict[str, str]:
    """Enrol a dock; the token is shown once here and only its hash is kept."""
    with s.db.session() as session:
        site = _enrolment_site(session, user, body.id, body.site)
        enrolled = service.enrol_dock(session, s.ledger, body.id, user.actor, name=body.name, site=site)
    return {"id": body.id, "token": enrolled.token}


@router.post("/devices/cameras", status_code=201, response_model=DeviceOut)
def enrol_camera(
    body: KeyedDeviceIn,
    user: Principal = Depends(require_roles(*ADMINS)),
    s: CoreServices = Depends(services),
) -> Device:
    with s.db.session() as session:
        site = _enrolment_site(session, user, body.id, body.site, body.staff_id)
        return service.enrol_keyed_device(
            session,
            s.ledger,
            "camera",
            body.id,
            body.public_key,
            user.actor,
            staff_id=body.staff_id,
            name=body.name,
            site=site,
        )


@router.post("/devices/lone-workers", status_code=201)
def enrol_lone_worker(
    body: LoneWorkerIn, user: Principal = Depends(require_roles(*ADMINS)), s: CoreServices = Depends(services)
) -> dict[str, Any]:
    """Enrol a lone-worker device. Its broker password is shown once here; regenerate the broker's
    files (``evidence broker-access``) and reload the broker for it to log in."""
    with s.db.session() as session:
        site = _enrolment_site(session, user, body.id, body.site, body.staff_id)
        enrolled = service.enrol_lone_worker(
            session,
            s.ledger,
            body.id,
            body.public_key,
            user.actor,
            staff_id=body.staff_id,
            name=body.name,
            site=site,
        )
        device = enrolled.device
        return {
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


@router.post("/devices/lone-workers/{device_id}/broker-password")
def new_broker_password(
    device_id: str, user: Principal = Depends(require_roles(*ADMINS)), s: CoreServices = Depends(services)
) -> dict[str, str]:
    """Issue a lone-worker device a new broker password, shown once here; regenerate the broker's
    files (``evidence broker-access``) and reload the broker for it to take the place of the old one."""
    with s.db.session() as session:
        service.seen_device(session, user, device_id)
        password = service.regenerate_broker_password(session, s.ledger, device_id, user.actor)
    return {"id": device_id, "mqtt_username": device_id, "mqtt_password": password}


@router.get("/devices", response_model=list[DeviceOut], responses=next_headers())
def list_devices(
    response: Response,
    kind: str | None = None,
    after: str = after_key("id"),
    limit: int = LIMIT,
    user: Principal = Depends(require_roles(*ADMINS, "auditor", "operator")),
    s: CoreServices = Depends(services),
) -> list[Device]:
    """The fleet of the sites the caller sees, by id, a page at a time (``limit``, then ``after``):
    while more follow, the answer links the next page (``Link: <...>; rel="next"`` and
    ``X-Next-After``)."""
    with s.db.reading() as session:
        rows = service.list_devices(session, user, kind, after=after, limit=limit + 1)
        session.expunge_all()
    return _paged(response, "/api/v1/devices", rows, limit, kind=kind or "")


@router.patch("/devices/{device_id}", response_model=DeviceOut)
def change_device(
    device_id: str,
    body: DeviceChange,
    user: Principal = Depends(require_roles(*ADMINS)),
    s: CoreServices = Depends(services),
) -> Device:
    """Disable, enable or (re)assign a device of a site the caller sees, to staff they see."""
    with s.db.session() as session:
        device = service.seen_device(session, user, device_id)
        if body.staff_id is not None and not body.unassign:
            service.seen_staff(session, user, body.staff_id)
        if body.status is not None:
            device = service.set_status(session, s.ledger, device_id, body.status, user.actor)
        if body.staff_id is not None or body.unassign:
            device = service.assign(
                session, s.ledger, device_id, None if body.unassign else body.staff_id, user.actor
            )
        return device
