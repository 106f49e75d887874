"""Position trails: where a device was while it had an alarm open, sampled by the clock's pass and
read for the alarm's record and the map.

Sampling reads the devices' state rows (``devices.models.LoneWorkerState``), not each device
message, so the alarm path does no extra work; one row per device and fix time. Each new point is
announced on the change feed as the alarm having ``moved`` (with the point), so the map and the
board follow a moving alarm from the live stream.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from devices.models import LoneWorkerState
from storage.db import Database, dialect_insert

from .feed import record_change
from .models import AlarmRecord, LoneWorkerPosition
from .standing import Standing


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sample_trails(db: Database, now: datetime, standing: Callable[[Session], Standing]) -> int:
    """Add each device's newest position to its trail while it has an alarm open (once per fix), and
    announce it as each of its open alarms having ``moved`` (unless it is the alarm's own fix).
    Open as the service vouches (``standing``, ``alarms.standing``): by the status column, an SOS
    resolved by SQL lost the points of its trail while it stayed so, and the map stopped following
    it; a row planted open had its device's whereabouts kept and announced."""
    S, P = LoneWorkerState, LoneWorkerPosition
    newest = select(P.device_id, func.max(P.at).label("at")).group_by(P.device_id).subquery("newest")
    with db.session() as session:
        vouched = standing(session)
        # Only the devices with a new fix have their alarms judged (``Standing.rows``, a seal check a
        # row): this runs twice a second beside the intake, and judging every open alarm each time
        # (hundreds, in a busy hour) held the interpreter's lock from the SOS being handled.
        fixed = session.execute(
            select(S.device_id, S.position_at, S.lat, S.lon, S.accuracy_m)
            .outerjoin(newest, newest.c.device_id == S.device_id)
            .where(
                S.device_id.in_(select(AlarmRecord.device_id).where(vouched.where())),
                S.position_at.is_not(None),
                S.lat.is_not(None),
                S.lon.is_not(None),
                or_(newest.c.at.is_(None), S.position_at > newest.c.at),
            )
        ).all()
        open_alarms = (
            vouched.rows(AlarmRecord.device_id.in_(sorted({r.device_id for r in fixed}))) if fixed else []
        )
        following = {a.device_id for a in open_alarms}
        rows = [r for r in fixed if r.device_id in following]
        if rows:
            session.execute(
                dialect_insert(session, P)
                .values(
                    [
                        {
                            "device_id": r.device_id,
                            "at": r.position_at,
                            "lat": r.lat,
                            "lon": r.lon,
                            "accuracy_m": r.accuracy_m,
                        }
                        for r in rows
                    ]
                )
                .on_conflict_do_nothing()
            )
            points = {
                r.device_id: {
                    "lat": r.lat,
                    "lon": r.lon,
                    "accuracy_m": r.accuracy_m,
                    "at": _iso(r.position_at),
                }
                for r in rows
            }
            for alarm in (a for a in open_alarms if a.device_id in points):
                point = points[alarm.device_id]
                if (alarm.lat, alarm.lon, alarm.accuracy_m) == (
                    point["lat"],
                    point["lon"],
                    point["accuracy_m"],
                ):
                    continue  # the alarm's own fix, which its view already carries: it has not moved
                record_change(session, alarm, "moved", now, position=point)
    return len(rows)


TRAIL_POINTS = 2000  # the most points of a trail an answer holds


def trail(session: Session, view: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """Where the device was from the alarm until it was resolved (or now): its own fix first (at
    most ``TRAIL_POINTS`` of the device's points: :func:`trail_page` says whether more were taken)."""
    return trail_page(session, view, now)[0]


def trail_page(session: Session, view: dict[str, Any], now: datetime) -> tuple[list[dict[str, Any]], bool]:
    """The trail (:func:`trail`), and whether the device sent more points in that time than the
    ``TRAIL_POINTS`` it holds (the earliest are kept: where the alarm began)."""
    raised = datetime.fromisoformat(view["raised_at"])
    until = datetime.fromisoformat(view["resolved_at"]) if view.get("resolved_at") else now
    points: list[dict[str, Any]] = []
    if view.get("position"):
        points.append({**view["position"], "at": view["occurred_at"]})
    rows = list(
        session.scalars(
            select(LoneWorkerPosition)
            .where(
                LoneWorkerPosition.device_id == view["device_id"],
                LoneWorkerPosition.at >= raised - timedelta(seconds=60),
                LoneWorkerPosition.at <= until,
            )
            .order_by(LoneWorkerPosition.at)
            .limit(TRAIL_POINTS + 1)
        )
    )
    more = len(rows) > TRAIL_POINTS
    for p in rows[:TRAIL_POINTS]:
        point = {"lat": p.lat, "lon": p.lon, "accuracy_m": p.accuracy_m, "at": _iso(p.at)}
        if points and {k: points[-1][k] for k in ("lat", "lon", "accuracy_m")} == {
            k: point[k] for k in ("lat", "lon", "accuracy_m")
        }:
            continue  # the alarm's own fix, sampled from the device's state
        points.append(point)
    return points, more


def forget_old_points(session: Session, before: datetime, standing: Standing) -> int:
    """Delete trail points taken before ``before``, except those of devices with an alarm still open
    as the service vouches (``standing``: their trail is being followed; an SOS resolved by SQL
    would otherwise have its trail erased, with no trace); how many went."""
    following = sorted({a.device_id for a in standing.rows()})
    result = session.execute(
        delete(LoneWorkerPosition).where(
            LoneWorkerPosition.at < before, LoneWorkerPosition.device_id.not_in(following)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
