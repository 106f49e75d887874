"""Enrolment, assignment and authentication of devices, and the staff who carry them, with every
change on the custody ledger: a device's site and assigned member of staff, and a member of staff's
site, decide whose footage and alarms a site's security managers see
(``chain_of_custody.registry_replay``)."""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from accounts.access import ReachViewer, SiteViewer, device_scope, sees_sealed, sites_seen, staff_scope
from chain_of_custody.device_holders import Held, device_holdings, held_at, held_by_retired_key
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import load_public_key_b64, verify_signature
from chain_of_custody.ledger import Ledger
from chain_of_custody.reach_seals import reach_secret, staff_seal
from chain_of_custody.row_seals import latest_device_entries
from storage.digests import secret_digest
from storage.errors import Refused
from storage.settings import Settings

from .broker_access import BrokerAccount, generate_password, hash_password
from .ends import latest_status_entry, load_device, record_status
from .models import DEVICE_KINDS, Device, LoneWorkerState, StaffMember
from .seals import SealedValues, device_seal_holds, device_seal_key, record_device, sealed_values

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DeviceRefused(Refused):
    """A device may not do what it asked; ``reason`` is a stable machine code, ``str()`` a sentence."""

    status = 403
    structured = True


@dataclass(frozen=True)
class EnrolledDock:
    device: Device
    token: str  # shown once; only its hash is kept


def _check_id(device_id: str) -> None:
    if not DEVICE_ID.match(device_id):
        raise DeviceRefused("bad_device_id", "device id must be 1-64 letters, digits, '.', '_' or '-'", 400)


def add_staff(
    session: Session,
    ledger: Ledger,
    staff_id: str,
    name: str,
    group: str = "other",
    site: str | None = None,
    *,
    actor: str,
) -> StaffMember:
    """Add a member of staff or change one. Their site decides which site's security managers see
    the footage they wear (``incidents.access``), so adding them and each change of site is a
    ``staff_changed`` custody entry in the same transaction (``evidence verify`` compares the row
    with it): the staff number and the site, never the name. The row is sealed over the same
    (``chain_of_custody.reach_seals``): a site moved in the database reaches no site's managers."""
    _check_id(staff_id)
    member = session.get(StaffMember, staff_id)
    details: dict[str, object] | None
    if member is None:
        member = StaffMember(id=staff_id, name=name, staff_group=group, site=site)
        session.add(member)
        details = {"staff": staff_id, "created": True, "site": site}
    else:
        # A row whose seal does not hold (written in the database) has its site recorded again, so
        # the ledger says what the service now seals.
        sealed = hmac.compare_digest(
            member.seal or "", staff_seal(reach_secret(ledger.key), staff_id, member.site)
        )
        changed = member.site != site or not sealed
        details = {"staff": staff_id, "changes": {"site": site}} if changed else None
        member.name, member.staff_group, member.site = name, group, site
    member.seal = staff_seal(reach_secret(ledger.key), staff_id, site)
    session.flush()
    if details is not None:
        ledger.append(session, CustodyAction.STAFF_CHANGED, actor, details=details)
    return member


def enrol_dock(
    session: Session, ledger: Ledger, dock_id: str, actor: str, *, name: str = "", site: str | None = None
) -> EnrolledDock:
    """Register a dock and issue its token ``<dock_id>.<secret>``; re-enrolling rotates the secret.
    Re-enrolling a dock whose row's seal does not hold (``seal_held``: moved to another site in the
    database, say) restates its site as given here rather than seal what SQL wrote."""
    _check_id(dock_id)
    secret = secrets.token_urlsafe(32)
    dock = session.get(Device, dock_id)
    if dock is not None and dock.kind != "dock":
        raise DeviceRefused("id_in_use", f"{dock_id} is already enrolled as a {dock.kind}", 409)
    if dock is None:
        dock = Device(id=dock_id, kind="dock", name=name, site=site)
        session.add(dock)
    elif not seal_held(session, ledger, dock, any_status=True):
        dock.site, dock.assigned_staff_id = site, None
    dock.token_hash = secret_digest(secret)
    dock.status = "active"
    record_device(
        session,
        ledger,
        dock,
        CustodyAction.DEVICE_ENROLLED,
        actor,
        {"device": dock_id, "kind": "dock", "site": dock.site, "staff": dock.assigned_staff_id},
    )
    _enabled_by_enrolment(session, ledger, dock, actor)
    return EnrolledDock(dock, f"{dock_id}.{secret}")


def _enabled_by_enrolment(session: Session, ledger: Ledger, device: Device, actor: str) -> None:
    """Enrolling a device custody says was disabled enables it again: recorded as such
    (``devices.ends``), or it would stay refused."""
    if latest_status_entry(session, device_seal_key(ledger.key), device.id) == "device_disabled":
        record_status(session, ledger, device, actor, why="enrolled again")


def enrol_keyed_device(
    session: Session,
    ledger: Ledger,
    kind: str,
    device_id: str,
    public_key_b64: str,
    actor: str,
    *,
    staff_id: str | None = None,
    name: str = "",
    site: str | None = None,
    broker_password_hash: str | None = None,
) -> Device:
    """Register a camera or lone-worker unit by its Ed25519 public key, optionally assigned to staff
    (and, for a lone-worker unit, with the hash of the broker password it is issued)."""
    if kind not in DEVICE_KINDS or kind == "dock":
        raise DeviceRefused("bad_kind", f"kind must be camera or lone_worker, not {kind!r}", 400)
    _check_id(device_id)
    try:
        load_public_key_b64(public_key_b64)
    except ValueError as exc:
        raise DeviceRefused("bad_public_key", f"public key is not a base64 Ed25519 key: {exc}", 400) from exc
    if staff_id is not None and session.get(StaffMember, staff_id) is None:
        raise DeviceRefused("unknown_staff", f"no member of staff {staff_id}", 400)
    device = session.get(Device, device_id)
    if device is not None and device.kind != kind:
        raise DeviceRefused("id_in_use", f"{device_id} is already enrolled as a {device.kind}", 409)
    if device is None:
        device = Device(id=device_id, kind=kind)
        session.add(device)
    device.public_key = public_key_b64
    device.name, device.site, device.assigned_staff_id, device.status = name, site, staff_id, "active"
    details: dict[str, object] = {
        "device": device_id,
        "kind": kind,
        "public_key": public_key_b64,
        "staff": staff_id,
        "site": site,
    }
    if broker_password_hash is not None:
        device.broker_password_hash = broker_password_hash
        details["broker_password"] = "issued"
    record_device(session, ledger, device, CustodyAction.DEVICE_ENROLLED, actor, details)
    _enabled_by_enrolment(session, ledger, device, actor)
    return device


@dataclass(frozen=True)
class EnrolledLoneWorker:
    device: Device
    mqtt_password: str  # shown once; the registry keeps only its Mosquitto hash


def enrol_lone_worker(
    session: Session,
    ledger: Ledger,
    device_id: str,
    public_key_b64: str,
    actor: str,
    *,
    staff_id: str | None = None,
    name: str = "",
    site: str | None = None,
) -> EnrolledLoneWorker:
    """Register a lone-worker device by its key, issue its broker password and start its sequence afresh.

    The device's state row is locked first, before anything takes the ledger: the intake locks it
    and then appends to the ledger, and an enrolment taking them the other way round beside one of
    the device's messages would deadlock with it (PostgreSQL kills one of the two)."""
    session.execute(
        select(LoneWorkerState.device_id).where(LoneWorkerState.device_id == device_id).with_for_update()
    )
    password = generate_password()
    device = enrol_keyed_device(
        session,
        ledger,
        "lone_worker",
        device_id,
        public_key_b64,
        actor,
        staff_id=staff_id,
        name=name,
        site=site,
        broker_password_hash=hash_password(password),
    )
    session.execute(
        update(LoneWorkerState)
        .where(LoneWorkerState.device_id == device_id)
        .values(replay_state="", replay_seal=None, version=LoneWorkerState.version + 1, session=None)
    )
    session.flush()
    return EnrolledLoneWorker(device, password)


def broker_accounts(session: Session, seal_key: bytes | None = None) -> list[BrokerAccount]:
    """Every active lone-worker device that has a broker password, for the Mosquitto files; with
    ``seal_key`` (``devices.seals.device_seal_key``), only those whose row's seal holds for its
    latest custody entry (read for them all in one more query: a row altered, or an older copy put
    back in the database, is left out)."""
    rows = list(
        session.scalars(
            select(Device)
            .where(
                Device.kind == "lone_worker",
                Device.status == "active",
                Device.broker_password_hash.is_not(None),
            )
            .order_by(Device.id)
        )
    )
    bound = latest_device_entries(session, seal_key, [d.id for d in rows]) if seal_key and rows else {}
    return [
        BrokerAccount(d.id, d.broker_password_hash or "")
        for d in rows
        if seal_key is None or device_seal_holds(seal_key, sealed_values(d), d.seal, bound.get(d.id))
    ]


def service_account(settings: Settings) -> BrokerAccount:
    """The service's own broker login, from ``EVIDENCE_MQTT_USERNAME`` / ``EVIDENCE_MQTT_PASSWORD``."""
    if not settings.mqtt_username or settings.mqtt_password is None:
        raise ValueError(
            "set EVIDENCE_MQTT_USERNAME and EVIDENCE_MQTT_PASSWORD for the service's broker login"
        )
    return BrokerAccount(settings.mqtt_username, hash_password(settings.mqtt_password.get_secret_value()))


def seal_held(session: Session, ledger: Ledger, device: Device, *, any_status: bool = False) -> bool:
    """Whether ``device``'s row, as it stands before a change, carries the seal the service made for
    it bound to its latest custody entry. A change seals the row as it then stands, so a change of a
    row put back or edited by SQL would seal what SQL wrote (an old key, token, password, site or
    wearer trusted again): such a row is changed only by re-enrolment, which restates every field.
    ``any_status``: for a change that sets the status itself, a row whose status alone was changed
    by SQL (every other value as sealed at its latest entry) holds too."""
    secret = device_seal_key(ledger.key)
    loaded, bound = load_device(session, secret, device.id)
    if loaded is not device:
        return False
    values = sealed_values(device)
    others = [s for s in ("active", "disabled") if any_status and s != device.status]
    return any(
        device_seal_holds(
            secret, values if status == device.status else values_with(values, status), device.seal, bound
        )
        for status in (device.status, *others)
    )


def values_with(values: SealedValues, status: str) -> SealedValues:
    """A row's sealed values with another status."""
    return (values[0], values[1], status, *values[3:])


def _refuse_unsealed(device: Device) -> None:
    raise DeviceRefused(
        "device_seal_broken",
        f"device {device.id}'s record is not as the service sealed it: re-enrol it (or run "
        "`evidence upgrade-seals` if it was sealed before the current version)",
        409,
    )


def assign(session: Session, ledger: Ledger, device_id: str, staff_id: str | None, actor: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise DeviceRefused("unknown_device", f"no device {device_id}", 404)
    if not seal_held(session, ledger, device):
        _refuse_unsealed(device)
    if staff_id is not None and session.get(StaffMember, staff_id) is None:
        raise DeviceRefused("unknown_staff", f"no member of staff {staff_id}", 400)
    previous = device.assigned_staff_id
    device.assigned_staff_id = staff_id
    record_device(
        session,
        ledger,
        device,
        CustodyAction.DEVICE_CHANGED,
        actor,
        {"device": device_id, "assigned_from": previous, "assigned_to": staff_id},
    )
    return device


def set_status(session: Session, ledger: Ledger, device_id: str, status: str, actor: str) -> Device:
    """Disable a device or enable it again: its row sealed as it now stands, and the change a
    ``device_disabled`` or ``device_enabled`` custody entry (``devices.ends``), so a copy of the
    row from before a disable, put back in the database, enables nothing."""
    if status not in ("active", "disabled"):
        raise DeviceRefused("bad_status", "status must be active or disabled", 400)
    device = session.get(Device, device_id)
    if device is None:
        raise DeviceRefused("unknown_device", f"no device {device_id}", 404)
    held = seal_held(session, ledger, device, any_status=True)
    if not held and status == "active":
        _refuse_unsealed(device)
    before = device.seal
    device.status = status
    record_status(session, ledger, device, actor, why="set by " + actor)
    if not held:  # disabling is always allowed, and recorded; the row is not sealed as SQL left it
        device.seal = before
    return device


def regenerate_broker_password(session: Session, ledger: Ledger, device_id: str, actor: str) -> str:
    """A new broker password for a lone-worker device (shown once; only its Mosquitto hash is kept).

    The old one stops working when the broker's files are next regenerated from the registry.
    """
    device = session.get(Device, device_id, with_for_update=True)
    if device is None or device.kind != "lone_worker":
        raise DeviceRefused("unknown_device", f"no lone-worker device {device_id}", 404)
    if not seal_held(session, ledger, device):
        _refuse_unsealed(device)
    password = generate_password()
    device.broker_password_hash = hash_password(password)
    record_device(
        session,
        ledger,
        device,
        CustodyAction.DEVICE_CHANGED,
        actor,
        {"device": device_id, "broker_password": "regenerated"},
    )
    return password


def authenticate_dock(session: Session, token: str, seal_key: bytes) -> Device:
    """The dock a bearer token belongs to; a refusal never says whether the id or the secret was
    wrong. A row whose seal does not hold for its latest custody entry (``devices.seals``: a token
    planted or a dock enabled again in the database, or an older copy of the row put back, with a
    token since rotated or from before a disable) is refused like an unknown dock."""
    dock_id, _, secret = token.partition(".")
    dock, bound = load_device(session, seal_key, dock_id) if dock_id and secret else (None, None)
    valid = (
        dock is not None
        and dock.kind == "dock"
        and dock.token_hash is not None
        and hmac.compare_digest(dock.token_hash, secret_digest(secret))
        and device_seal_holds(seal_key, sealed_values(dock), dock.seal, bound)
    )
    if not valid or dock is None:
        raise DeviceRefused("bad_token", "dock token not recognised", 401)
    if dock.status != "active":
        raise DeviceRefused("dock_disabled", f"dock {dock_id} is disabled", 403)
    return dock


@dataclass(frozen=True)
class ClipClaim:
    """What a clip says of when it was recorded (``recorded``, the camera's ``recorded_start``), with
    the manifest the camera signed and its signature, when the clip was received, and the custody
    key its camera's entries are checked with."""

    recorded: datetime
    received: datetime
    manifest: bytes
    signature: str
    custody_public: bytes


def camera_for_clip(
    session: Session, serial: str, wearer: str, seal_key: bytes, claim: ClipClaim | None = None
) -> Device:
    """The enrolled camera that may deliver a clip recorded by ``wearer``; a row whose seal does not
    hold for its latest custody entry (``devices.seals``: altered, or an older copy put back, with a
    key since rotated, another wearer, or from before a disable) is not enrolled.

    ``wearer`` must be the member of staff the camera was assigned to when the clip was recorded
    (``claim``; without one, now): a clip recorded before the camera was handed to another wearer,
    or re-enrolled elsewhere or with a new key, and docked after, is its wearer's then, and is not
    refused (:func:`clip_holder`, ``chain_of_custody.device_holders`` for the bounds on the camera's
    word). Nor is a disabled camera's clip (reported lost, then found and docked): evidence is never
    refused for the camera's standing, it is stored held for review (``ingest.clip_facts``)."""
    camera, bound = load_device(session, seal_key, serial)
    if (
        camera is None
        or camera.kind != "camera"
        or not device_seal_holds(seal_key, sealed_values(camera), camera.seal, bound)
    ):
        raise DeviceRefused("unknown_camera", f"camera {serial} is not enrolled")
    held = camera.assigned_staff_id if claim is None else clip_holder(session, seal_key, camera, claim).staff
    if held != wearer:
        when = "when the clip was recorded" if claim is not None else "now"
        raise DeviceRefused(
            "camera_not_assigned", f"camera {serial} was not assigned to wearer {wearer} {when}"
        )
    return camera


def clip_holder(session: Session, seal_key: bytes, camera: Device, claim: ClipClaim) -> Held:
    """The wearer and site a clip of ``camera`` (its row's seal checked) is attributed to: those its
    custody record gave it at the clip's recording time, when its current key's signature vouches
    for that time and it is within the bounds ``chain_of_custody.device_holders`` sets, or when a
    key it had before signed it and the time is within that key's period (held for review: see
    ``Held.review``); else those it had when the clip was received."""

    def vouches(key: str) -> bool:
        return verify_signature(load_public_key_b64(key), claim.signature, claim.manifest)

    holdings = device_holdings(session, seal_key, claim.custody_public, camera.id)
    now = (camera.assigned_staff_id, camera.site, camera.public_key)
    signed = camera.public_key is not None and vouches(camera.public_key)
    held = held_at(holdings, now, claim.recorded if signed else None, claim.received)
    if held.passed_over is None:
        return held
    return held_by_retired_key(holdings, now, claim.recorded, claim.received, vouches) or held


def list_staff(
    session: Session, viewer: ReachViewer | None, *, after: str = "", limit: int | None = None
) -> list[StaffMember]:
    """The staff of the sites ``viewer`` sees (``accounts.access.staff_scope``: for a viewer by
    site, those whose row's seal held when they signed in), by staff number, those after ``after``,
    at most ``limit``; ``viewer`` None is the service itself (the command line: everyone)."""
    q = select(StaffMember).order_by(StaffMember.id)
    if viewer is not None:
        q = q.where(staff_scope(viewer, StaffMember))
    if after:
        q = q.where(StaffMember.id > after)
    return list(session.scalars(q.limit(limit)))


def list_devices(
    session: Session,
    viewer: ReachViewer | None,
    kind: str | None = None,
    *,
    after: str = "",
    limit: int | None = None,
) -> list[Device]:
    """The devices of the sites ``viewer`` sees (``accounts.access.device_scope``; None: the
    service itself, every device), by id, those after ``after``, at most ``limit``."""
    q = select(Device).order_by(Device.id)
    if viewer is not None:
        q = q.where(device_scope(viewer, Device))
    if kind:
        q = q.where(Device.kind == kind)
    if after:
        q = q.where(Device.id > after)
    return list(session.scalars(q.limit(limit)))


def seen_device(session: Session, viewer: ReachViewer, device_id: str, *, for_update: bool = False) -> Device:
    """The device if ``viewer`` sees it (its site, and for a viewer by site a row whose seal held when
    they signed in: a change would seal a row moved by SQL again); another site's device answers as
    a missing one (404)."""
    device = session.get(Device, device_id, with_for_update=for_update)
    if device is None or not sees_sealed(viewer, device.site, device.id, viewer.reach.devices):
        raise DeviceRefused("unknown_device", f"no device {device_id}", 404)
    return device


def seen_staff(session: Session, viewer: ReachViewer, staff_id: str) -> StaffMember:
    """The member of staff if ``viewer`` sees them (as :func:`seen_device`); else refused as unknown (400)."""
    member = session.get(StaffMember, staff_id)
    if member is None or not sees_sealed(viewer, member.site, member.id, viewer.reach.staff):
        raise DeviceRefused("unknown_staff", f"no member of staff {staff_id}", 400)
    return member


def site_for_write(viewer: SiteViewer, site: str | None) -> str | None:
    """The site a registry write by ``viewer`` records: a site-scoped caller (a security manager)
    writes only rows of a site they see, their own by default. A row of another site would be
    another site's people and footage put in their reach (``incidents.access`` follows a wearer's
    and a camera's site)."""
    seen = sites_seen(viewer)
    if seen is None:
        return site
    if site is None and len(seen) == 1:
        site = next(iter(seen))
    if site is None or site not in seen:
        raise DeviceRefused("site_out_of_scope", "you may register staff and devices of your own site only")
    return site
