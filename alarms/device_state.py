"""What the service keeps about each lone-worker device while it handles its messages: the state row
(``devices.models.LoneWorkerState``: replay window, presence, battery, position, what is watched),
read once per message and written back by compare-and-set, and the event row of an accepted
alarm or check-in.

The statements every device message runs are built once, in plain Core, and run on the session's
connection: building SQLAlchemy statements per message, or passing them through the ORM, costs
more than executing them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Boolean, Float, Integer, Table, Text, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from chain_of_custody.keys import raw_public_key
from chain_of_custody.models import CustodyEntry
from chain_of_custody.raise_seals import receipt_seal
from devices.ends import LATEST_ENTRY
from devices.lone_worker_wire import (
    Accepted,
    AlarmMessage,
    CheckinMessage,
    DeviceKey,
    ReplayState,
    StatusMessage,
    parse_topic,
)
from devices.models import Device, LoneWorkerState
from devices.seals import DeviceSeals, SealedValues
from storage.db import UTCDateTime, dialect_insert

from .models import LoneWorkerEvent


class CasConflict(Exception):
    """Another instance wrote the device's replay state between our read and our write."""


@dataclass
class Snapshot:
    """The device as the first (read) part of a message's transaction saw it."""

    device_id: str
    kind: str
    status: str
    public_key: bytes | None
    staff_id: str | None
    site: str | None
    version: int | None  # None: no state row yet
    replay_text: str | None  # the replay state as stored, its seal not checked (``alarms.replay_state``)
    replay_seal: str | None
    session: str | None
    presence_at: datetime | None
    battery_low: bool
    offline_alarm_id: str | None
    active_visit_id: str | None
    watched_seal: str | None  # over ``battery_low`` and ``active_visit_id`` (``alarms.watched``)
    sealed: SealedValues  # what the row's seal covers, as read (``devices.seals``)
    seal: str | None
    bound: int | None  # the seq of its latest custody entry (``devices.ends``): its seal's
    # The replay state its message is judged against, once its seal is checked, and the details of
    # the custody entry recording it rebuilt when the stored one's seal was wrong.
    replay: ReplayState | None = None
    replay_rebuilt: dict[str, Any] | None = None

    def key(self, seals: DeviceSeals) -> DeviceKey | None:
        """The device's key, or None for no lone-worker device: a row whose seal does not hold for
        its latest custody entry (altered or planted in the database, or an older copy put back: a
        key since rotated, active again after a disable) is none (``seals`` keeps the verdict per
        row as read)."""
        if (
            self.kind != "lone_worker"
            or self.public_key is None
            or not seals.holds(self.sealed, self.seal, self.bound)
        ):
            return None
        return DeviceKey(self.public_key, enabled=self.status == "active")


_STATE = cast(Table, LoneWorkerState.__table__)
_DEVICES = cast(Table, Device.__table__)
_SNAPSHOT = (
    select(
        _DEVICES.c.kind,
        _DEVICES.c.status,
        _DEVICES.c.public_key,
        _DEVICES.c.assigned_staff_id,
        _DEVICES.c.site,
        _DEVICES.c.token_hash,
        _DEVICES.c.broker_password_hash,
        _DEVICES.c.seal,
        _STATE.c.version,
        _STATE.c.replay_state,
        _STATE.c.replay_seal,
        _STATE.c.session,
        _STATE.c.presence_at,
        _STATE.c.battery_low,
        _STATE.c.offline_alarm_id,
        _STATE.c.active_visit_id,
        _STATE.c.watched_seal,
        LATEST_ENTRY.label("bound"),  # one probe of the custody index, in the same statement
    )
    .outerjoin(_STATE, _STATE.c.device_id == _DEVICES.c.id)
    .where(_DEVICES.c.id == bindparam("device_id"))
)
# A position moves only to a fix the device took after the one kept: an older message (held by the
# broker, or replayed once the replay state was rolled back in the database) never moves it back.
_FIX_AT = bindparam("b_position_at", type_=UTCDateTime())
_NEWER_FIX = and_(
    bindparam("b_has_position", type_=Boolean()),
    or_(_STATE.c.position_at.is_(None), _FIX_AT > _STATE.c.position_at),
)
CAS = (
    update(_STATE)
    .where(_STATE.c.device_id == bindparam("b_device"), _STATE.c.version == bindparam("b_version"))
    .values(
        version=_STATE.c.version + 1,
        replay_state=bindparam("b_state", type_=Text()),
        replay_seal=bindparam("b_replay_seal", type_=Text()),
        last_seen_at=bindparam("b_now", type_=UTCDateTime()),
        heard_seal=bindparam("b_heard", type_=Text()),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
        offline_due_at=bindparam("b_due", type_=UTCDateTime()),
        battery=func.coalesce(bindparam("b_battery", type_=Integer()), _STATE.c.battery),
        lat=case((_NEWER_FIX, bindparam("b_lat", type_=Float())), else_=_STATE.c.lat),
        lon=case((_NEWER_FIX, bindparam("b_lon", type_=Float())), else_=_STATE.c.lon),
        accuracy_m=case((_NEWER_FIX, bindparam("b_accuracy", type_=Float())), else_=_STATE.c.accuracy_m),
        position_at=case((_NEWER_FIX, _FIX_AT), else_=_STATE.c.position_at),
    )
)


def device_of(topic: str) -> str:
    """The device id of a device topic; a malformed topic stands for itself (it is refused later)."""
    parsed = parse_topic(topic)
    return parsed[0] if parsed is not None else topic


_SNAPSHOTS = (
    # The single read's columns but its last (the latest entry: a batch reads those in one more query).
    select(_DEVICES.c.id.label("device_id"), *list(_SNAPSHOT.selected_columns)[:-1])
    .outerjoin(_STATE, _STATE.c.device_id == _DEVICES.c.id)
    .where(_DEVICES.c.id.in_(bindparam("device_ids", expanding=True)))
)
_ENTRIES = cast(Table, CustodyEntry.__table__)
# The latest entry of each of several devices, by subject: a batch's devices' seal bindings.
_LATEST_ENTRIES = (
    select(_ENTRIES.c.item_id, func.max(_ENTRIES.c.seq))
    .where(_ENTRIES.c.item_id.in_(bindparam("subjects", expanding=True)))
    .group_by(_ENTRIES.c.item_id)
)


def read_snapshot(session: Session, device_id: str, seals: DeviceSeals) -> Snapshot | None:
    # Here and in the reads of a message up to the compare-and-set: rows that earlier messages of the
    # same batch added are none of this message's business, and left unflushed they go in one
    # INSERT per table.
    params = {"device_id": device_id, "device_subject": seals.subject(device_id)}
    row = session.connection().execute(_SNAPSHOT, params).first()
    return None if row is None else _snapshot(device_id, row, row.bound)


def read_snapshots(session: Session, device_ids: list[str], seals: DeviceSeals) -> dict[str, Snapshot | None]:
    """Several devices' snapshots in two queries (a batch's, read after its state rows are locked):
    their rows, and the seq of their latest entries on custody; ``None`` for an id that is not a
    device."""
    found: dict[str, Snapshot | None] = dict.fromkeys(device_ids)
    subjects = {seals.subject(d): d for d in device_ids}
    latest = {
        subjects[subject]: int(seq)
        for subject, seq in session.connection().execute(_LATEST_ENTRIES, {"subjects": list(subjects)})
    }
    for row in session.connection().execute(_SNAPSHOTS, {"device_ids": device_ids}):
        found[row.device_id] = _snapshot(row.device_id, row, latest.get(row.device_id))
    return found


def _snapshot(device_id: str, row: Any, bound: int | None) -> Snapshot:
    return Snapshot(
        device_id=device_id,
        kind=row.kind,
        status=row.status,
        public_key=raw_public_key(row.public_key) if row.public_key else None,
        staff_id=row.assigned_staff_id,
        site=row.site,
        version=row.version,
        replay_text=row.replay_state,
        replay_seal=row.replay_seal,
        session=row.session,
        presence_at=row.presence_at,
        battery_low=bool(row.battery_low),
        offline_alarm_id=row.offline_alarm_id,
        active_visit_id=row.active_visit_id,
        watched_seal=row.watched_seal,
        sealed=(
            device_id,
            row.kind,
            row.status,
            row.public_key,
            row.token_hash,
            row.broker_password_hash,
            row.site,
            row.assigned_staff_id,
        ),
        seal=row.seal,
        bound=None if bound is None else int(bound),
    )


def compare_and_set(
    session: Session,
    snap: Snapshot,
    state: ReplayState,
    message: Any,
    now: datetime,
    offline_after: timedelta,
    heard: str,
    deferred: list[dict[str, Any]] | None = None,
    *,
    seal_state: Callable[[str, str], str],
) -> None:
    """Write the replay state (and what every message says about the device) if nobody else did;
    ``heard``: the seal of ``now`` as when it was last heard from (``chain_of_custody.heard_seals``).
    The state is written with its seal, ``seal_state(device_id, text)``
    (``alarms.replay_state.ReplaySeals.seal``), in the same statement.

    With ``deferred``, an update of an existing row is only added there, for :func:`write_deferred`
    to run with the rest of its batch in one round trip."""
    due = now + offline_after
    position = message.position
    text = state.to_json()
    sealed = seal_state(snap.device_id, text)
    if snap.version is None:
        values: dict[str, Any] = {
            "replay_state": text,
            "replay_seal": sealed,
            "last_seen_at": now,
            "heard_seal": heard,
            "updated_at": now,
            "offline_due_at": due,
            "battery": message.battery,
        }
        if position is not None:
            values.update(
                lat=position.lat,
                lon=position.lon,
                accuracy_m=position.accuracy_m,
                position_at=message.event_time,
            )
        stmt = (
            dialect_insert(session, LoneWorkerState)
            .values(device_id=snap.device_id, version=1, presence="unknown", battery_low=False, **values)
            .on_conflict_do_nothing()
            .returning(LoneWorkerState.device_id)
        )
        if session.execute(stmt).first() is None:  # (rowcount is not reported for ON CONFLICT)
            raise CasConflict(snap.device_id)
        return
    params = {
        "b_device": snap.device_id,
        "b_version": snap.version,
        "b_state": text,
        "b_replay_seal": sealed,
        "b_now": now,
        "b_heard": heard,
        "b_due": due,
        "b_battery": message.battery,
        "b_lat": position.lat if position else None,
        "b_lon": position.lon if position else None,
        "b_has_position": position is not None,
        "b_accuracy": position.accuracy_m if position else None,
        "b_position_at": message.event_time if position else None,
    }
    if deferred is not None:
        deferred.append(params)
        return
    swapped = session.connection().execute(CAS, params).rowcount == 1  # see read_snapshot
    if not swapped:
        raise CasConflict(snap.device_id)


def write_deferred(session: Session, deferred: list[dict[str, Any]]) -> None:
    """The batch's compare-and-sets in one ``executemany`` (pipelined by the driver); if any row was
    not where its message read it, :class:`CasConflict` (the caller rolls back and goes one by one)."""
    if not deferred:
        return
    connection = session.connection()
    if len(deferred) == 1 or not connection.dialect.supports_sane_multi_rowcount:
        for params in deferred:
            if connection.execute(CAS, params).rowcount != 1:
                raise CasConflict(params["b_device"])
        return
    if connection.execute(CAS, deferred).rowcount != len(deferred):
        raise CasConflict(",".join(p["b_device"] for p in deferred))


def record_presence(
    session: Session,
    snap: Snapshot,
    message: StatusMessage,
    retained: bool,
    now: datetime,
    offline_after: timedelta,
    heard: str,
) -> None:
    """Presence is a hint: an offline will of an older connection, or a retained copy of something
    older than what we know, changes nothing."""
    state = message.status
    said_at = min(message.sent_at, now) if message.sent_at is not None else now
    if state.state == "offline" and snap.session is not None and state.session != snap.session:
        return
    if retained and snap.presence_at is not None and said_at <= snap.presence_at:
        return
    values: dict[str, Any] = {
        "presence": state.state,
        "session": state.session,
        "presence_at": said_at,
        "updated_at": now,
    }
    if state.state == "online" and not retained:
        values["last_seen_at"] = now
        values["heard_seal"] = heard
        values["offline_due_at"] = now + offline_after
    if snap.version is None:
        session.execute(
            dialect_insert(session, LoneWorkerState)
            .values(device_id=snap.device_id, version=0, replay_state="", battery_low=False, **values)
            .on_conflict_do_nothing()
        )
    else:
        session.execute(
            update(LoneWorkerState).where(LoneWorkerState.device_id == snap.device_id).values(**values)
        )


def set_state(session: Session, device_id: str, **values: Any) -> None:
    session.execute(update(LoneWorkerState).where(LoneWorkerState.device_id == device_id).values(**values))


def new_event(
    snap: Snapshot, verdict: Accepted, topic: str, raw: bytes, now: datetime, secret: bytes
) -> LoneWorkerEvent:
    """The event row of an accepted alarm or check-in: the exact bytes, the key they were verified
    with, and the seal of their receipt under it (``raise_seals.receipt_seal``, under the device
    rows' seal secret ``secret``): a key replaced since vouches only for what it sealed."""
    message = verdict.message
    assert isinstance(message, AlarmMessage | CheckinMessage)
    body = message.alarm if isinstance(message, AlarmMessage) else message.checkin
    key_b64 = base64.b64encode(snap.public_key).decode() if snap.public_key else None
    return LoneWorkerEvent(
        event_id=message.event_id,
        device_id=snap.device_id,
        type=message.type,
        action=body.action,
        seq=message.seq,
        occurred_at=message.occurred_at,
        sent_at=message.sent_at,
        received_at=now,
        late=verdict.late,
        topic=topic,
        raw=raw,
        sha256=hashlib.sha256(raw).hexdigest(),
        visit_id=getattr(body, "visit_id", None),
        device_public_key=key_b64,
        receipt_seal=receipt_seal(secret, snap.device_id, message.event_id, raw, key_b64),
    )
