"""What the control room reads: alarms, one alarm, and every lone-worker device with its state.

Each read is a ``Database.reading`` block: on SQLite it waits for no writer, so the board's and the
map's reads answer while a long write (an export's recording, a burst of alarms) holds the lock."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Select, select, true
from sqlalchemy.orm import Session

from accounts.access import ReachViewer, SiteViewer, device_scope, sees_site, site_scope
from chain_of_custody.keys import ServiceKey
from chain_of_custody.reach_seals import reach_secret
from devices.models import Device, LoneWorkerState
from storage.db import Database
from storage.paging import Position, after_position

from .feed import shown_view
from .lifecycle import AlarmNotFound
from .models import AlarmRecord, LoneWorkerVisit
from .pages import PAGE, first_kept, in_pages
from .reach import alarm_sealed, by_site, readable, readable_visits
from .standing import Standing, vouched_view


class AlarmQueries:
    def __init__(self, db: Database, key: ServiceKey) -> None:
        self.db = db
        self.key = key  # where an open alarm stands is vouched for by it (``alarms.standing``)
        self.secret = reach_secret(key)  # alarm rows' seals are checked with it (``alarms.reach``)

    def get(self, alarm_id: str, viewer: SiteViewer | None = None) -> dict[str, Any]:
        """One alarm; :class:`AlarmNotFound` also when it is not the viewer's to see (``viewer`` None:
        the service itself)."""
        with self.db.reading() as session:
            row = session.get(AlarmRecord, alarm_id)
            if row is None or (viewer is not None and not sees_site(viewer, row.site)):
                raise AlarmNotFound(alarm_id)
            if not readable(self.secret, viewer, [row]):
                raise AlarmNotFound(alarm_id)
            view = vouched_view(session, self.key, row, datetime.now(UTC))
            if view is None:  # a row nothing of the service's vouches for (written by SQL)
                raise AlarmNotFound(alarm_id)
            return view

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
        page, which then came back short or empty, and its paging stopped before the site's alarms.
        ``open_only``, ``status``: the alarms open, or of those statuses, as the service vouches,
        each shown as it stands (``alarms.standing``): by the status column, an SOS resolved by SQL
        was not among the open or the raised ones but among the resolved, and a row planted open
        was among the open."""
        q = select(AlarmRecord).where(after_position(AlarmRecord.raised_at, AlarmRecord.id, after))
        if viewer is not None:
            q = q.where(site_scope(viewer, AlarmRecord.site))
        statuses = [str(getattr(s, "value", s)) for s in status]
        if device_id:
            q = q.where(AlarmRecord.device_id == device_id)
        if kind:
            q = q.where(AlarmRecord.kind == kind)
        with self.db.reading() as session:
            if open_only or statuses:
                return self._standing(session, q, statuses, open_only, viewer, limit, offset)
            if not by_site(viewer):  # every row counts: nothing to judge first
                q = (
                    q.order_by(AlarmRecord.raised_at.desc(), AlarmRecord.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
                return [shown_view(self.secret, r) for r in session.scalars(q)]
            kept = first_kept(
                self._pages(session, q, limit + offset), partial(alarm_sealed, self.secret), limit, offset
            )
            return [shown_view(self.secret, r) for r in kept]

    @staticmethod
    def _pages(session: Session, q: Select[AlarmRecord], wanted: int) -> Iterator[AlarmRecord]:
        """The rows ``q`` selects, newest first, read in pages (``alarms.pages``)."""
        return in_pages(
            session,
            q,
            AlarmRecord.raised_at,
            AlarmRecord.id,
            entities=True,
            page=max(1, min(wanted, PAGE)),
            newest_first=True,
        )

    def _standing(
        self,
        session: Session,
        q: Select[AlarmRecord],
        statuses: list[str],
        open_only: bool,
        viewer: SiteViewer | None,
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        """The alarms ``q`` selects that are open (``open_only``) and of ``statuses`` (any, when
        none) as the service vouches, shown as they stand, each judged before it counts: a row
        whose lifecycle seal holds costs one seal check more than the plain list."""
        standing = Standing(session, self.key, datetime.now(UTC))
        shown: dict[str, dict[str, Any]] = {}
        if open_only:
            q = q.where(standing.where())
        if statuses:
            q = q.where(standing.where_status(statuses))

        def keep(row: AlarmRecord) -> bool:
            view = None
            if readable(self.secret, viewer, [row]):
                view = standing.view(row) if open_only else standing.shown(row)
            if view is None or (statuses and view["status"] not in statuses):
                return False
            shown[row.id] = view
            return True

        kept = first_kept(self._pages(session, q, limit + offset), keep, limit, offset)
        return [shown[r.id] for r in kept]

    def lone_workers(
        self, viewer: ReachViewer | None = None, *, after: str = "", limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The lone-worker devices the viewer sees (``accounts.access.device_scope``) by id, those
        after ``after``, at most ``limit``: who carries it, presence, last seen, battery, position,
        and how many alarms the viewer reads (``alarms.reach``) are open as the service vouches
        (``alarms.standing``: an SOS resolved by SQL still counts, a row planted open does not)."""
        S = LoneWorkerState
        with self.db.reading() as session:
            rows = session.execute(
                select(Device, S)
                .outerjoin(S, S.device_id == Device.id)
                .where(Device.kind == "lone_worker")
                .where(device_scope(viewer, Device) if viewer is not None else true())
                .where(Device.id > after if after else true())
                .order_by(Device.id)
                .limit(limit)
            ).all()
            ids = [device.id for device, _ in rows]
            counts = Standing(session, self.key, datetime.now(UTC)).counts(viewer, ids)
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
                    {device.id: device for device, _ in rows},
                )
            }
            return [
                _lone_worker(device, state, counts.get(device.id), visits.get(device.id))
                for device, state in rows
            ]


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
