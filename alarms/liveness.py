"""What any device message says besides its own content: the device is alive (which clears an
offline alarm) and how full its battery is (which raises or clears a low-battery alarm).

A message clears a condition only if the device sent it after the condition arose, by the time it
signed (``sent_at``), not by when it reached us: a heartbeat from before the device fell silent,
held by the broker or sent again once its replay state was rolled back in the database, says
nothing about the device now, and must not close a safety alarm (with a custody entry saying the
device is back) while it is still silent.

The device's state row, which names its open offline alarm, is not sealed: an alarm id written into
it in the database (another lone worker's offline alarm, an SOS) is not taken at its word. Only the
device's own offline alarm is cleared by its messages (:func:`own_offline_alarm`), and the clock
raises a new one for a device whose state names any other (``alarms.clock``)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import rfc3339
from devices.lone_worker_wire import AlarmMessage

from . import rules
from .alarm_keys import ours
from .device_state import Snapshot, set_state
from .lifecycle import Lifecycle
from .models import AlarmOutbox, AlarmRecord
from .standing import Standing
from .watched import set_watched

log = logging.getLogger(__name__)


def own_offline_alarm(
    session: Session, device_id: str, alarm_id: str, *, lock: bool = False
) -> AlarmRecord | None:
    """The alarm a device's state row names as its offline alarm (``alarm_id``), if it is that
    device's offline alarm; None, with a warning naming the device and the id, when it is no alarm
    or some other alarm."""
    row = session.get(AlarmRecord, alarm_id, with_for_update=lock)
    if row is not None and row.device_id == device_id and row.kind == rules.AlarmKind.DEVICE_OFFLINE.value:
        return row
    log.warning(
        "the device's state names an alarm that is not its offline alarm: not taken",
        extra={"device": device_id, "alarm": alarm_id},
    )
    return None


class Liveness:
    def __init__(self, lifecycle: Lifecycle, policy: rules.AlarmPolicy) -> None:
        self.lifecycle = lifecycle
        self.policy = policy

    def _open_low_battery(
        self, session: Session, device_id: str
    ) -> tuple[Standing, list[ColumnElement[bool]]]:
        """The device's low-battery alarms that may be open as the service vouches (``alarms.standing``:
        by the status column, one marked resolved by SQL as the battery was charged took the device
        as no longer low, and once the clock's sweep put it back open no reading cleared it again).
        Read on a charged battery's reading of a device that was low only: a custody cursor's pass."""
        standing = Standing(session, self.lifecycle.core.key, self.lifecycle.clock())
        where = [standing.where(), AlarmRecord.device_id == device_id, AlarmRecord.kind == "low_battery"]
        return standing, where

    def lock_rows(self, session: Session, snap: Snapshot, message: object) -> None:
        """Lock the alarm rows :meth:`apply` may change, before the ledger lock is taken."""
        ids: list[str] = []
        if snap.offline_alarm_id:
            ids.append(snap.offline_alarm_id)
        battery = getattr(message, "battery", None)
        if snap.battery_low and battery is not None and rules.is_battery_recovered(battery, self.policy):
            _, where = self._open_low_battery(session, snap.device_id)
            ids += session.scalars(select(AlarmRecord.id).where(*where))
        if ids:
            own = (AlarmRecord.id.in_(ids), AlarmRecord.device_id == snap.device_id)
            list(session.scalars(select(AlarmRecord).where(*own).with_for_update()))

    def apply(
        self, session: Session, snap: Snapshot, message: Any, outbox: list[AlarmOutbox], now: datetime
    ) -> None:
        """The device is back (clears an offline alarm); its battery level."""
        actor = f"device:{snap.device_id}"
        sent_at: datetime = message.sent_at
        if snap.offline_alarm_id:
            # Only the device's own offline alarm is its to clear, and a message sent before the
            # device fell silent proves nothing now (see the module).
            row = own_offline_alarm(session, snap.device_id, snap.offline_alarm_id, lock=True)
            if row is None or sent_after(sent_at, row):
                if row is not None:
                    self.lifecycle.transition(
                        session,
                        row,
                        rules.ConditionCleared(now, "device back online"),
                        outbox,
                        now,
                        actor=actor,
                    )
                set_state(session, snap.device_id, offline_alarm_id=None)
        battery = getattr(message, "battery", None)
        if battery is None:
            return
        if not snap.battery_low and rules.is_battery_low(battery, self.policy):
            if isinstance(message, AlarmMessage) and message.alarm.kind == "low_battery":
                return  # the device raised it itself
            self.lifecycle.raise_alarm(
                session,
                outbox,
                now,
                device_id=snap.device_id,
                kind=rules.AlarmKind.LOW_BATTERY,
                wearer=snap.staff_id,
                site=snap.site,
                dedupe_key=f"low_battery:{snap.device_id}:{rfc3339(now)}",
                message=message,
            )
            set_watched(session, self.lifecycle.seal_secret, snap, battery_low=True)
        elif snap.battery_low and rules.is_battery_recovered(battery, self.policy):
            # Only the service's own (``alarm_keys.ours``): a row planted open, raised (it says) after
            # this reading, kept the device's own alarm open for good, and was cleared as the device's.
            secret = self.lifecycle.seal_secret
            standing, where = self._open_low_battery(session, snap.device_id)
            low = [
                row
                for row in session.scalars(select(AlarmRecord).where(*where))
                if ours(secret, row, None) and standing.opened(row)
            ]
            if not all(sent_after(sent_at, row) for row in low):
                return  # a reading from before the battery ran low
            for row in low:
                self.lifecycle.transition(
                    session,
                    row,
                    rules.ConditionCleared(now, f"battery at {battery}%"),
                    outbox,
                    now,
                    actor=actor,
                )
            set_watched(session, self.lifecycle.seal_secret, snap, battery_low=False)


def sent_after(sent_at: datetime, row: AlarmRecord) -> bool:
    """Whether the device signed a message after the condition of ``row`` arose."""
    return sent_at > min(row.occurred_at, row.raised_at)
