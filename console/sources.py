"""Every read the console makes of the alarm, device and account domains, in one place.

The pages show what the API shows: the same role lists (imported from the modules that guard the
API routes, never restated here) and the same views of the same rows (``shown_view`` is the one the
API and the live stream use), limited to the sites the person sees by the API's own rule
(``accounts.access.site_scope``; a site's devices and staff by ``device_scope`` and ``staff_scope``,
alarms through ``alarms.reach``). Actions never come through here at all: the pages' scripts call the
API routes themselves, with the session cookie and its CSRF token.

Everything comes from the domain packages (``alarms``, ``devices``, ``accounts``); nothing of the
console reaches into ``ingest``, the application that mounts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from accounts.access import ReachViewer, SiteViewer, device_scope, site_scope
from accounts.api import USER_ADMINS, USERS_PAGE
from accounts.models import ROLES, User
from accounts.service import list_users
from alarms import performance
from alarms.api import OPERATORS, READERS
from alarms.models import AlarmChange, AlarmRecord, LoneWorkerVisit
from alarms.pages import in_pages
from alarms.reach import readable, readable_visits
from alarms.records import MessageKeys, alarm_record, answer_summaries, answer_times
from alarms.standing import Standing
from alarms.trails import TRAIL_POINTS, trail
from chain_of_custody.keys import ServiceKey
from devices.api import ADMINS as DEVICE_ADMINS
from devices.api import LIST_PAGE
from devices.models import Device, LoneWorkerState, StaffMember
from devices.service import list_staff

__all__ = [
    "MessageKeys",
    "alarm_record",
    "answer_summaries",
    "answer_times",
    "performance",
    "DEVICE_ADMINS",
    "DEVICE_READERS",
    "LIST_PAGE",
    "OPERATORS",
    "READERS",
    "ROLES",
    "TRAIL_POINTS",
    "USER_ADMINS",
    "USERS_PAGE",
]

# Who may list the fleet: the roles of ``GET /api/v1/devices``.
DEVICE_READERS = (*DEVICE_ADMINS, "auditor", "operator")
SEVERITY_ORDER = {"red": 0, "amber": 1, "warning": 2}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --------------------------------------------------------------------------- the board


def latest_change(session: Session) -> int:
    """The live stream's newest change id: a board drawn from the rows read after this misses nothing
    if it follows the stream from here."""
    return int(session.scalar(select(func.max(AlarmChange.id))) or 0)


def open_alarms(
    session: Session, viewer: SiteViewer, key: ServiceKey, limit: int = 2000, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The open alarms of the viewer's sites, oldest first, each whose row the service sealed
    (``alarms.reach``), the first ``limit`` of them, each open and shown as the service vouches
    (``alarms.standing``: its lifecycle seal, or its custody record): an alarm marked resolved in
    the database stays on the board as its record says it stands, and a row no seal nor entry of
    the service's vouches for is not on it. Each row is judged before it counts (in pages,
    ``alarms.pages``): rows written in the database with early raise times would otherwise fill the
    board's places and crowd the site's own alarms off it. An alarm whose lifecycle seal (over its
    raise time) does not hold is placed and shown by the raise time its custody record gives
    (``Standing.raised_at``): one given another by SQL moved on the board, and said since when."""
    standing = Standing(session, key, now or datetime.now(UTC))
    secret = standing.secret
    q = select(AlarmRecord).where(standing.where(), site_scope(viewer, AlarmRecord.site))
    shown: list[dict[str, Any]] = []
    for row in in_pages(session, q, AlarmRecord.raised_at, AlarmRecord.id, entities=True):
        if not readable(secret, viewer, [row]):
            continue
        view = standing.view(row)
        if view is not None:
            if row.id in standing.altered:
                view["raised_at"] = standing.raised_at(row).isoformat()
            shown.append(view)
            if len(shown) == limit:
                break
    return sorted(shown, key=lambda a: (datetime.fromisoformat(a["raised_at"]), a["id"]))


def directory(session: Session, device_ids: list[str] | None, viewer: ReachViewer) -> dict[str, Any]:
    """Names behind the ids an alarm carries: the device, its wearer (name, staff group), the visit
    under way (the address a community worker gave) and the device's last known state; devices the
    viewer sees only (``accounts.access.device_scope``), and a visit a reader by site reads only from
    a row whose seal holds, and only one begun under the device's holder now
    (``alarms.reach.readable_visits``: a former holder's visit is not shown as the new one's)."""
    devices_q = select(Device).where(Device.kind == "lone_worker", device_scope(viewer, Device))
    if device_ids is not None:
        devices_q = devices_q.where(Device.id.in_(device_ids[:1000]))
    devices = list(session.scalars(devices_q))
    ids = [d.id for d in devices]
    staff_ids = {d.assigned_staff_id for d in devices if d.assigned_staff_id}
    staff: Iterable[StaffMember] = (
        session.scalars(select(StaffMember).where(StaffMember.id.in_(staff_ids))) if staff_ids else []
    )
    states: Iterable[LoneWorkerState] = (
        session.scalars(select(LoneWorkerState).where(LoneWorkerState.device_id.in_(ids))) if ids else []
    )
    visits: Iterable[LoneWorkerVisit] = (
        readable_visits(
            viewer.reach.secret,
            viewer,
            session.scalars(
                select(LoneWorkerVisit).where(
                    LoneWorkerVisit.device_id.in_(ids), LoneWorkerVisit.ended_at.is_(None)
                )
            ),
            {d.id: d for d in devices},
        )
        if ids
        else []
    )
    return {
        "devices": {
            d.id: {"name": d.name, "site": d.site, "staff_id": d.assigned_staff_id, "status": d.status}
            for d in devices
        },
        "staff": {m.id: {"name": m.name, "group": m.staff_group, "site": m.site} for m in staff},
        "states": {st.device_id: state_view(st) for st in states},
        "visits": {
            v.device_id: {
                "visit_id": v.visit_id,
                "note": v.note,
                "expected_end": _iso(v.expected_end),
                "started_at": _iso(v.started_at),
            }
            for v in visits
        },
    }


def state_view(st: LoneWorkerState) -> dict[str, Any]:
    return {
        "presence": st.presence,
        "last_seen_at": _iso(st.last_seen_at),
        "battery": st.battery,
        "position": (
            {"lat": st.lat, "lon": st.lon, "accuracy_m": st.accuracy_m, "at": _iso(st.position_at)}
            if st.lat is not None and st.lon is not None
            else None
        ),
    }


# --------------------------------------------------------------------------- where people are


def positions(session: Session, viewer: ReachViewer) -> list[dict[str, Any]]:
    """Every lone-worker device's last known position (the map's layer of people), of the devices
    the viewer sees (``accounts.access.device_scope``)."""
    rows = session.execute(
        select(Device, LoneWorkerState)
        .join(LoneWorkerState, LoneWorkerState.device_id == Device.id)
        .where(Device.kind == "lone_worker", LoneWorkerState.lat.is_not(None), device_scope(viewer, Device))
        .order_by(Device.id)
        .limit(20000)
    ).all()
    return [
        {"device_id": d.id, "staff_id": d.assigned_staff_id, "site": d.site, **state_view(st)}
        for d, st in rows
    ]


def open_trails(
    session: Session, alarms: list[dict[str, Any]], now: datetime
) -> dict[str, list[dict[str, Any]]]:
    return {a["id"]: trail(session, a, now) for a in alarms[:200]}


# --------------------------------------------------------------------------- devices and people


def fleet(
    session: Session, viewer: ReachViewer, key: ServiceKey, *, after: str = "", limit: int | None = None
) -> list[dict[str, Any]]:
    """The devices the viewer sees (the rows of ``GET /api/v1/devices``, by id, those after
    ``after``, at most ``limit``), with their state and how many alarms the viewer reads are open
    as the service vouches (``alarms.standing.Standing.counts``: an SOS resolved by SQL still
    counts, a row planted open does not)."""
    rows = session.execute(
        select(Device, LoneWorkerState, StaffMember)
        .outerjoin(LoneWorkerState, LoneWorkerState.device_id == Device.id)
        .outerjoin(StaffMember, StaffMember.id == Device.assigned_staff_id)
        .where(device_scope(viewer, Device), Device.id > after if after else true())
        .order_by(Device.id)
        .limit(limit)
    ).all()
    counts = Standing(session, key, datetime.now(UTC)).counts(viewer, [d.id for d, _, _ in rows])
    out = []
    for d, st, member in rows:
        n = counts.get(d.id)
        out.append(
            {
                "id": d.id,
                "kind": d.kind,
                "name": d.name,
                "site": d.site,
                "status": d.status,
                "staff_id": d.assigned_staff_id,
                "staff_name": member.name if member else None,
                "has_broker_login": d.broker_password_hash is not None,
                "open_alarms": int(n or 0),
                **(state_view(st) if st else {"presence": None, "last_seen_at": None, "battery": None}),
            }
        )
    return out


def staff(
    session: Session, viewer: ReachViewer, *, after: str = "", limit: int | None = None
) -> list[StaffMember]:
    """The staff the viewer sees (the rows of ``GET /api/v1/staff``, by staff number, those after
    ``after``, at most ``limit``)."""
    return list_staff(session, viewer, after=after, limit=limit)


def users(session: Session, *, after: str = "", limit: int | None = None) -> list[User]:
    """The users (the rows of ``GET /api/v1/users``, by username, those after ``after``, at most ``limit``)."""
    return list_users(session, after=after, limit=limit)


# --------------------------------------------------------------------------- how well the room answers
