"""Where an alarm stands as the service vouches for it, for the reads that show open alarms.

An alarm's status is a column SQL can set: one marked resolved in the database dropped off the
control room's board (the board asked for ``status != 'resolved'``) until the clock's sweep put it
back to its custody record, and a resolved one marked raised came back onto it. Where it stands is
what its lifecycle seal vouches for (``chain_of_custody.lifecycle_seals``), or, when that does not
hold, what its latest custody entry that holds records: the alarms the custody record holds open
are followed by the sweep's own cursor (``chain_of_custody.sweep_cursor.OpenByCustody``), started
from its sealed checkpoint and read on to the ledger's last entry (what the reader costs: the
alarm entries since the sweep's last pass, one signature each), and never kept by a reader.

So an open-alarm read takes the rows open by their column or by their custody record
(:meth:`Standing.where`) and shows each as :meth:`Standing.view` says: as it stands when its seal
holds; as its custody record says when not (an alarm resolved by SQL is shown open, as it was,
and one its record holds resolved is not shown); a provisional one (nothing in custody yet) whose
seal does not hold, as raised, when it is the service's (``alarms.alarm_keys.ours``); a row no seal
nor entry of the service's vouches for (written in the database), not at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from accounts.access import SiteViewer, site_scope
from chain_of_custody.keys import ServiceKey
from chain_of_custody.lifecycle_seals import (
    RecordedLifecycle,
    lifecycle_holds,
    recorded_lifecycle,
    recorded_raise_time,
)
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.sweep_cursor import OpenByCustody

from . import rules
from .alarm_keys import ours, shown_keys
from .feed import shown_view
from .lifecycle import as_recorded
from .models import AlarmRecord
from .reach import readable

log = logging.getLogger(__name__)


class Standing:
    """The open alarms as the service vouches for them, read once per request."""

    def __init__(
        self, session: Session, key: ServiceKey, now: datetime, cursor: OpenByCustody | None = None
    ) -> None:
        """``cursor``: one already followed to where it is taken (the clock's, as its sweep last
        left it); else a reader's, followed to the ledger's last entry."""
        self.session, self.now = session, now
        self.secret = reach_secret(key)
        self.public = key.public_raw
        if cursor is None:
            cursor = OpenByCustody(key)
            cursor.advance(session, keep=False)
        self.open: dict[str, RecordedLifecycle] = cursor.open
        self.altered: set[str] = set()  # the alarms :meth:`view` showed whose lifecycle seal does not hold

    def where(self) -> ColumnElement[bool]:
        """The rows an open-alarm read looks at: open by their column, or by their custody record."""
        if not self.open:
            return AlarmRecord.status != "resolved"
        return or_(AlarmRecord.status != "resolved", AlarmRecord.id.in_(sorted(self.open)))

    def opened(self, row: AlarmRecord) -> bool:
        """Whether the alarm is open as the service vouches: as its row says when its lifecycle seal
        holds, else as :meth:`said` (cheap: one seal check, and a dict's look-up)."""
        if row.lifecycle_seal is not None and lifecycle_holds(self.secret, row):
            return row.status != rules.AlarmStatus.RESOLVED.value
        return self.said(row) is not None

    def rows(self, *where: ColumnElement[bool]) -> list[AlarmRecord]:
        """The alarms ``where`` selects that are open as the service vouches (:meth:`opened`): for
        the readers that act on an alarm being open (a silent device's offline alarm, a trail kept),
        whom an SOS resolved by SQL would otherwise silence, and a row planted open would mislead."""
        q = select(AlarmRecord).where(self.where(), *where)
        return [row for row in self.session.scalars(q) if self.opened(row)]

    def counts(self, viewer: SiteViewer | None, device_ids: list[str]) -> dict[str, int]:
        """How many alarms of each device the viewer reads (``alarms.reach``) are open as the service
        vouches (:meth:`rows`): by the status column, a lone worker whose SOS was resolved by SQL
        was listed with none open (as safe), and one with a row planted open, with one."""
        if not device_ids:
            return {}
        where: list[ColumnElement[bool]] = [AlarmRecord.device_id.in_(device_ids)]
        if viewer is not None:
            where.append(site_scope(viewer, AlarmRecord.site))
        return dict(Counter(row.device_id for row in readable(self.secret, viewer, self.rows(*where))))

    def said(self, row: AlarmRecord) -> RecordedLifecycle | None:
        """What the row is taken at when its lifecycle seal does not hold, or None when it is not
        open as far as the service vouches."""
        said = self.open.get(row.id)
        if said is None:
            if row.provisional and ours(self.secret, row, None):  # altered before it was made whole
                return RecordedLifecycle(0, row.kind, rules.AlarmStatus.RAISED.value, None, None, self.now)
            return None
        if said.kind is None and not ours(self.secret, row, None):
            return None  # only entries written in the database name it
        return said

    def where_status(self, statuses: list[str]) -> ColumnElement[bool]:
        """The rows a read by status looks at (each then judged, :meth:`shown`): those whose column
        says one of ``statuses``, those the custody record holds open at one of them (an SOS marked
        resolved by SQL) and, for ``resolved``, those whose column says open that the custody record
        does not hold open (resolved as its record says, marked open again by SQL; or provisional)."""
        held = sorted(a for a, said in self.open.items() if said.status in statuses)
        clauses: list[ColumnElement[bool]] = [AlarmRecord.status.in_(statuses)]
        if held:
            clauses.append(AlarmRecord.id.in_(held))
        if rules.AlarmStatus.RESOLVED.value in statuses:
            unheld = AlarmRecord.status != rules.AlarmStatus.RESOLVED.value
            clauses.append(and_(unheld, AlarmRecord.id.not_in(sorted(self.open))) if self.open else unheld)
        return or_(*clauses)

    def shown(self, row: AlarmRecord) -> dict[str, Any] | None:
        """Any alarm, open or not, as a read by status shows it: as :meth:`view` when it is open as
        the service vouches; as it stands when its lifecycle seal holds; when not, resolved as its
        latest custody entry that holds says (a rare scan), its keys as recorded; None when nothing
        of the service's vouches for it (written in the database). One seal check a row, as a rule."""
        if row.lifecycle_seal is not None and lifecycle_holds(self.secret, row):
            return shown_view(self.secret, row)
        if self.said(row) is not None:
            return self.view(row)
        said = recorded_lifecycle(self.session, row.id, self.public)
        if said is None or not said.vouched or said.open:
            return None
        view = shown_view(self.secret, row)
        view.update(status=said.status, severity=said.severity, outcome=said.outcome, next_deadline=None)
        shown_keys(self.session, self.secret, self.public, view, row)
        return view

    def raised_at(self, row: AlarmRecord) -> datetime:
        """When the alarm was raised as the service vouches: its row's while its lifecycle seal (over
        ``raised_at`` among the rest) holds; else as its ``alarm_raised`` custody entry that holds
        records (a rare scan); else, for one no entry records yet (provisional), its row's, but not
        later than now."""
        if row.lifecycle_seal is not None and lifecycle_holds(self.secret, row):
            return row.raised_at
        return recorded_raise_time(self.session, row.id, self.public) or min(row.raised_at, self.now)

    def view(self, row: AlarmRecord) -> dict[str, Any] | None:
        """The alarm as an open-alarm read shows it, or None when it is not open as the service
        vouches (a warning names a row shown otherwise than its columns say)."""
        if row.lifecycle_seal is not None and lifecycle_holds(self.secret, row):
            return shown_view(self.secret, row) if row.status != rules.AlarmStatus.RESOLVED.value else None
        said = self.said(row)
        if said is None:
            return None
        self.altered.add(row.id)
        view = shown_view(self.secret, row)
        unsealed_as_recorded = (
            row.lifecycle_seal is None
            and not row.provisional
            and said.seq > 0
            and said.differs(row.status, row.severity, row.outcome, row.next_deadline) is None
        )
        if unsealed_as_recorded:  # raised before lifecycles were sealed, and as its record says
            shown_keys(self.session, self.secret, self.public, view, row)
            return view
        try:
            alarm = as_recorded(row, said, self.now)
        except ValueError:  # a column no rule knows
            return None
        log.warning(
            "an alarm's lifecycle is not as the service sealed it: shown as its custody record says",
            extra={"alarm": row.id, "entry": said.seq},
        )
        shown = alarm.to_dict()
        for name in view:
            if name in shown and name != "alarm_id":
                view[name] = shown[name]
        view["next_deadline"] = _iso(rules.next_deadline(alarm))
        shown_keys(self.session, self.secret, self.public, view, row)
        return view


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def vouched_view(session: Session, key: ServiceKey, row: AlarmRecord, now: datetime) -> dict[str, Any] | None:
    """One alarm as a read of it alone shows it (its page, ``GET /alarms/{id}``): as it stands while
    its lifecycle seal holds (one seal check); else as :meth:`Standing.shown` has it (its custody
    record's; a read of the ledger's open alarms, rare), None when nothing of the service's vouches
    for it. By its columns, an SOS resolved by SQL read as resolved on its own page while the board
    showed it open."""
    secret = reach_secret(key)
    if row.lifecycle_seal is not None and lifecycle_holds(secret, row):
        return shown_view(secret, row)
    return Standing(session, key, now).shown(row)
