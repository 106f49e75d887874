"""What the control room reads: alarms, one alarm, and every lone-worker device with its state.

Each read is a ``Database.reading`` block: on SQLite it waits for no writer, so the board's and the
map's reads answer while a long write (an export's recording, a burst of alarms) holds the lock."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from sqlalchemy import func, select, true

from accounts.access import ReachViewer, SiteViewer, device_scope, sees_site, site_scope
from devices.models import Device, LoneWorkerState
from storage.db import Database
from storage.paging import Position, after_position

from .feed import shown_view
from .lifecycle import AlarmNotFound
from .models import AlarmRecord, LoneWorkerVisit
from .pages import PAGE, first_kept, in_pages
from .reach import alarm_sealed, by_site, readable, readable_scope, readable_visits


class AlarmQueries:
    def __init__(self, db: Database, secret: bytes) -> None:
        self.db = db
        self.secret = secret  # alarm rows' seals are checked with it (``alarms.reach``)

    def get(self, alarm_id: str, viewer: SiteViewer | None = None) -> dict[str, Any]:
        """One alarm; :class:`AlarmNotFound` also when it is not the viewer's to see (``viewer`` None:
        the service itself)."""
        with self.db.reading() as session:
            row = session.get(AlarmRecord, alarm_id)
            if row is None or (viewer is not None and not sees_site(viewer, row.site)):
                raise AlarmNotFound(alarm_id)
            if not readable(self.secret, viewer, [row]):
                raise AlarmNotFound(alarm_id)
            return shown_view(self.secret, row)

    def list_alarms(
        self,
        *,
        status: Iterable[str] = (),
        open_only: bool = False,
        device_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: Position | None = None,
        viewer: SiteViewer | None = None,
    ) -> list[dict[str, Any]]:
        """Alarms, newest first (by when raised, then id: a total order), the viewer's sites only;
        those after ``after`` (where the previous page ended: rows added or gone since move no other
        row across pages) or, the older way, past the first ``offset``. For a reader by site each
        row's seal is checked before it counts (``alarms.reach``, read in pages, ``alarms.pages``):
        rows written in the database, newer (they say) than the site's own, would otherwise fill the
        page, which then came back short or empty, and its paging stopped before the site's alarms."""
        q = select(AlarmRecord).where(after_position(AlarmRecord.raised_at, AlarmRecord.id, after))
        if viewer is not None:
            q = q.where(site_scope(viewer, AlarmRecord.site))
        statuses = list(status)
        if statuses:
            q = q.where(AlarmRecord.status.in_(statuses))
        if open_only:
            q = q.where(AlarmRecord.status != "resolved")
        if device_id:
            q = q.where(AlarmRecord.device_id == device_id)
        if kind:
            q = q.where(AlarmRecord.kind == kind)
        with self.db.reading() as session:
            if not by_site(viewer):  # every row counts: nothing to judge first
                q = (
                    q.order_by(AlarmRecord.raised_at.desc(), AlarmRecord.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
                return [shown_view(self.secret, r) for r in session.scalars(q)]
            rows = in_pages(
                session,
                q,
                AlarmRecord.raised_at,
                AlarmRecord.id,
                entities=True,
                page=max(1, min(limit + offset, PAGE)),
                newest_first=True,
            )
            kept = first_kept(rows, partial(alarm_sealed, self.secret), limit, offset)
            return [shown_view(self.secret, r) for r in kept]

    def lone_workers(
        self, viewer: ReachViewer | None = None, *, after: str = "", limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The lone-worker devices the viewer sees (``accounts.access.device_scope``) by id, those
        after ``after``, at most ``limit``: who carries it, presence, last seen, battery, position,
        and the open alarms the viewer reads (``alarms.reach.readable_scope``)."""
        S = LoneWorkerState
        with self.db.reading() as session:
            open_alarms = (
                select(AlarmRecord.device_id, func.count().label("n"))
                .where(*readable_scope(session, self.secret, viewer, AlarmRecord.status != "resolved"))
                .group_by(AlarmRecord.device_id)
                .subquery()
            )
            rows = session.execute(
                select(Device, S, open_alarms.c.n)
                .outerjoin(S, S.device_id == Device.id)
                .outerjoin(open_alarms, open_alarms.c.device_id == Device.id)
                .where(Device.kind == "lone_worker")
                .where(device_scope(viewer, Device) if viewer is not None else true())
                .where(Device.id > after if after else true())
                .order_by(Device.id)
                .limit(limit)
            ).all()
            ids = [device.id for device, _, _ in rows]
            visits = {
                v.device_id: {
                    "visit_id": v.visit_id,
                    "note": v.note,
                    "expected_end": v.expected_end.isoformat() if v.expected_end else None,
                }
                for v in readable_visits(
                    self.secret,
                    viewer,
                    session.scalars(
                        select(LoneWorkerVisit).where(
                            LoneWorkerVisit.ended_at.is_(None), LoneWorkerVisit.device_id.in_(ids)
                        )
                    ),
                    {device.id: device for device, _, _ in rows},
                )
            }
            return [_lone_worker(device, state, n, visits.get(device.id)) for device, state, n in rows]


def _lone_worker(
    device: Device, state: LoneWorkerState | None, n: int | None, visit: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": device.id,
        "status": device.status,
        "staff_id": device.assigned_staff_id,
        "site": device.site,
        "presence": state.presence if state else "unknown",
        "last_seen_at": state.last_seen_at.isoformat() if state and state.last_seen_at else None,
        "battery": state.battery if state else None,
        "position": (
            {
                "lat": state.lat,
                "lon": state.lon,
                "accuracy_m": state.accuracy_m,
                "at": state.position_at.isoformat() if state.position_at else None,
            }
            if state and state.lat is not None
            else None
        ),
        # The visit it is watched on, when it is its holder's now (a former holder's is theirs).
        "active_visit_id": state.active_visit_id
        if state and visit and visit["visit_id"] == state.active_visit_id
        else None,
        "visit": visit,
        "open_alarms": int(n or 0),
        "over_share_since": (
            state.over_share_since.isoformat() if state and state.over_share_since else None
        ),  # sending beyond its fair share of the service (flooding) since then
    }
