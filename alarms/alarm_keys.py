"""An alarm row's keys, the device event it was raised from and the visit it belongs to, as the
service vouches for them, and a row holding a raise's event id that the service did not raise from
it, set aside.

``alarms.source_event_id`` is unique: an alarm raised from a device's message holds its event id,
so one event raises one alarm. A row written by SQL holding the event id of an SOS still to come
had the genuine SOS fail to be stored (the unique key), attempt after attempt, and never raised;
with a planted event row beside it, the SOS was acknowledged as a duplicate of the planted
"alarm". The keys need no seal of their own: the lifecycle seal (``chain_of_custody.lifecycle_seals``)
covers the device, the source event id and the visit id with every column the rules read, and
every custody entry of an alarm records its device and source event id. What was missing is that
nothing read them through it. So a row holding a raise's event id is the alarm raised from it only
when the service vouches for that key (:func:`vouched_keys`: its lifecycle seal holds, or its
latest custody entry that holds records it). Any other row is set aside (:func:`set_aside_alarm`):
one that is no alarm of the service's (no seal of its id holds, no entry records it) is moved to
:class:`alarms.models.AlarmSetAside` as it stood, never deleted; one that is the service's alarm,
its key altered, stays where it is (it may be open and due to escalate) with its key put back to
what its custody record says, a copy of it as found kept beside the others. Each is named in a
warning and an ``alarm_set_aside`` custody entry (the intake appends it), ``evidence verify``
names it (``alarm_set_aside``), and the SOS is raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, inspect, select
from sqlalchemy.orm import Session

from chain_of_custody.alarm_seals import alarm_seal
from chain_of_custody.lifecycle_seals import (
    RecordedKeys,
    RecordedLifecycle,
    alarm_entries,
    entry_holds,
    keys_of,
    lifecycle_holds,
    recorded_lifecycle,
    warn_of_entry,
)
from chain_of_custody.models import CustodyEntry
from chain_of_custody.raise_seals import raise_holds, raises_alarm
from chain_of_custody.receipt_upgrade import received
from chain_of_custody.row_seals import _holds

from .models import AlarmRecord, AlarmSetAside, LoneWorkerEvent
from .set_aside import plain

log = logging.getLogger(__name__)

_ALARMS = cast(Table, AlarmRecord.__table__)

NOT_RAISED = (
    "it held the event id of a raise its device then sent, but the service did not raise it from that "
    "message (no seal nor custody entry of the service's says so): written or edited in the database"
)
NOT_RECORDED = (
    "a whole alarm no seal of the service's vouches for and no custody entry that holds records, "
    "naming no raise the service received from its device: written in the database, never raised "
    "(not sealed, not escalated)"
)
NO_RAISE = (
    "a provisional alarm no seal of the service's vouches for, naming a raise that is no receipt of the "
    "service's of its device's message: written in the database, never raised (not made whole)"
)


# What the service vouches an alarm was raised from: its device, the device's event id (None: raised
# by the service) and its visit (``visit_known`` False: nothing vouches for one).
Keys = RecordedKeys


def recorded_keys(session: Session, alarm_id: str, public: bytes) -> Keys | None:
    """The device and source event id the alarm's latest custody entry that holds records (one that
    does not hold is named and passed over); None when no entry records them. A scan of its entries,
    for the rare alarm whose lifecycle seal does not hold."""
    for row in session.execute(alarm_entries(alarm_id).order_by(CustodyEntry.seq.desc())):
        try:
            d = json.loads(row.details)
        except ValueError:
            continue
        said = keys_of(d) if isinstance(d, dict) and d.get("alarm_id") == alarm_id else None
        if said is None:
            continue
        if not entry_holds(public, row):
            warn_of_entry(row.seq)
            continue
        return said
    return None


def vouched_keys(session: Session, secret: bytes, public: bytes, row: AlarmRecord) -> Keys | None:
    """An alarm's keys as the service vouches for them: the row's when its lifecycle seal holds
    (it covers them), else what its latest custody entry that holds says (:func:`recorded_keys`),
    else None (a row no seal nor entry of the service's vouches for: written in the database)."""
    if row.lifecycle_seal is not None and lifecycle_holds(secret, row):
        return Keys(row.device_id, row.source_event_id, row.visit_id)
    return recorded_keys(session, row.id, public)


def raised_from(
    session: Session,
    secret: bytes,
    public: bytes,
    row: AlarmRecord,
    event_id: str,
    device_id: str | None = None,
) -> bool:
    """Whether the service vouches ``row`` was raised from the device's event ``event_id`` (and, given
    ``device_id``, by that device); a warning names it when not (a cancel of that raise then waits
    for it, as for one not yet arrived)."""
    keys = vouched_keys(session, secret, public, row)
    if (
        keys is not None
        and keys.source_event_id == event_id
        and (device_id is None or keys.device in (None, device_id))
    ):
        return True
    log.warning(
        "an alarm row holds the event id of a raise it was not raised from: not taken as its alarm",
        extra={"alarm": row.id, "event_id": event_id},
    )
    return False


def shown_keys(
    session: Session, secret: bytes, public: bytes, view: dict[str, Any], row: AlarmRecord
) -> None:
    """An alarm's view (``alarms.feed.alarm_view``) with the keys its record finds the device's
    messages by put to what the service vouches for: a source event or visit id written by SQL
    would have its record show another event's or visit's messages as its own."""
    if row.lifecycle_seal is not None and lifecycle_holds(secret, row):
        return
    keys = recorded_keys(session, row.id, public)
    view["source_event_id"] = keys.source_event_id if keys is not None else None
    view["visit_id"] = keys.visit_id if keys is not None else None


def put_back_keys(
    session: Session, public: bytes, row: AlarmRecord, free: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """Put an alarm's keys back to what its custody record says, before its lifecycle is put back
    and sealed again (else the new seal would take keys written by SQL for the service's): what
    was found of those it changed. A visit no entry records (an alarm recorded before entries
    named it) is left as it stands. ``free``: frees the source event id for it when another row
    holds it (the key is unique: the put-back failed, pass after pass, and the alarm never
    escalated); False leaves it as it stands."""
    keys = recorded_keys(session, row.id, public)
    if keys is None:
        return {}
    said: dict[str, str | None] = {}
    source = keys.source_event_id
    if source == row.source_event_id or source is None or free is None or free(source):
        said["source_event_id"] = source
    if keys.device is not None:
        said["device_id"] = keys.device
    if keys.visit_known:
        said["visit_id"] = keys.visit_id
    found = {name: getattr(row, name) for name, value in said.items() if getattr(row, name) != value}
    for name in found:
        setattr(row, name, said[name])
    if found:
        log.warning("an alarm's keys are not as its custody record says: put back", extra={"alarm": row.id})
    return found


def free_for(
    session: Session, secret: bytes, public: bytes, row: AlarmRecord, event_id: str, now: datetime
) -> tuple[bool, dict[str, Any] | None]:
    """Before ``row`` is put back to hold ``event_id`` (its custody record's key): (whether it may,
    the details of the custody entry of another row holding it, set aside). A row the service
    vouches was raised from that event keeps it (two records cannot both say so: a warning)."""
    other = holder(session, event_id)
    if other is None or other.id == row.id:
        return True, None
    keys = vouched_keys(session, secret, public, other)
    if keys is not None and keys.source_event_id == event_id:
        log.warning(
            "an alarm's custody record names a key another alarm is vouched for: left as it stands",
            extra={"alarm": row.id, "held_by": other.id},
        )
        return False, None
    return True, set_aside_alarm(session, secret, other, keys, now)


def holder(session: Session, event_id: str) -> AlarmRecord | None:
    """The alarm row holding ``event_id`` as the event it was raised from, locked (the key is the
    whole table's: any device's)."""
    with session.no_autoflush:  # see device_state.read_snapshot
        return session.scalars(
            select(AlarmRecord).where(AlarmRecord.source_event_id == event_id).with_for_update()
        ).first()


def ours(secret: bytes, row: AlarmRecord, keys: Keys | None) -> bool:
    """Whether the row is an alarm of the service's whatever its key says: an entry records it, or a
    seal of its id holds (copied with its id, such a row is the alarm, moved or not)."""
    reach = alarm_seal(
        secret, row.id, row.site, row.wearer, row.device_id, row.voice_memo_item_id, row.incident_id
    )
    return keys is not None or _holds(reach, row.seal) or raise_holds(secret, row)


def unraised(session: Session, secret: bytes, devices_secret: bytes, public: bytes, row: AlarmRecord) -> bool:
    """Whether a provisional alarm row is none the service raised: no seal of its holds (every alarm
    is raised with all three) and the raise it names is no receipt of the service's of its device's
    message (the intake stores the two in one transaction). Made whole, such a row would have the
    service seal it and record it in custody as an alarm its device raised, vouching for a key
    written by SQL; it is set aside instead (:func:`set_aside_alarm`)."""
    if (row.lifecycle_seal is not None and lifecycle_holds(secret, row)) or ours(secret, row, None):
        return False
    with session.no_autoflush:
        event = session.get(LoneWorkerEvent, row.source_event_id) if row.source_event_id else None
    return (
        event is None
        or event.device_id != row.device_id
        or not raises_alarm(event.raw)  # a check-in or a cancel of its device's raised nothing
        or not received(session, devices_secret, public, event)
    )


def unrecorded_whole(
    session: Session,
    secret: bytes,
    devices_secret: bytes,
    public: bytes,
    row: AlarmRecord,
    said: RecordedLifecycle | None,
) -> bool:
    """Whether an alarm row that says it is whole is none the service raised: its lifecycle seal
    does not hold, no custody entry that holds records it (every whole alarm has its
    ``alarm_raised`` entry; ``said``, when the caller's cursor read it) and, as for a provisional
    row (:func:`unraised`), nothing else of the service's is behind it. Taken as it stood, the
    clock sealed the deadline its lifecycle gives and then escalated it, recorded in custody as the
    service's, and one entry written in the database naming it was enough to have it taken as
    raised and due. A rare read: only a row whose lifecycle seal does not hold."""
    if row.provisional or (row.lifecycle_seal is not None and lifecycle_holds(secret, row)):
        return False
    said = said or recorded_lifecycle(session, row.id, public)
    if said is not None and said.vouched:
        return False
    return unraised(session, secret, devices_secret, public, row)


def set_aside_alarm(
    session: Session,
    secret: bytes,
    row: AlarmRecord,
    keys: Keys | None,
    now: datetime,
    reason: str = NOT_RAISED,
) -> dict[str, Any]:
    """Free the event id ``row`` holds, which the service did not raise it from, in the caller's
    transaction: a row that is no alarm of the service's is moved aside as it stands; the service's
    own alarm keeps its row, its key put back to what its custody record says (or none), and a copy
    as found is kept. The details of the custody entry that records it (the caller appends it, in
    its lock order)."""
    columns = json.dumps(
        {attr.key: plain(getattr(row, attr.key)) for attr in inspect(AlarmRecord).column_attrs},
        sort_keys=True,
    )
    moved = not ours(secret, row, keys)
    kept = AlarmSetAside(
        alarm_id=row.id,
        source_event_id=row.source_event_id,
        device_id=row.device_id,
        moved=moved,
        set_aside_at=now,
        reason=reason,
        sha256=hashlib.sha256(columns.encode()).hexdigest(),
        columns=columns,
    )
    if moved:
        session.expunge(row)
        session.execute(delete(_ALARMS).where(_ALARMS.c.id == kept.alarm_id))
    else:
        row.source_event_id = keys.source_event_id if keys is not None else None
        row.updated_at = now
    session.add(kept)
    session.flush()
    log.warning(
        "an alarm row the service did not raise, or holding the event id of a raise it was not raised "
        "from: set aside",
        extra={
            "reason": reason,
            "alarm": kept.alarm_id,
            "event_id": kept.source_event_id,
            "moved": moved,
            "set_aside": kept.id,
        },
    )
    return {
        "alarm_id": kept.alarm_id,
        "source_event_id": kept.source_event_id,
        "device_id": kept.device_id,
        "set_aside_id": kept.id,
        "moved": moved,
        "sha256": kept.sha256,
        "reason": reason,
    }


def free_key(
    session: Session, secret: bytes, public: bytes, event_id: str, now: datetime
) -> tuple[str | None, dict[str, Any] | None]:
    """Before a raise with ``event_id`` is acted on as new: (the alarm raised from it already, when
    the row holding it is one the service vouches was; the details of the custody entry of a row
    set aside, when the row holding it is not). (None, None) when no row holds it, the common case:
    one indexed read."""
    row = holder(session, event_id)
    if row is None:
        return None, None
    keys = vouched_keys(session, secret, public, row)
    if keys is not None and keys.source_event_id == event_id:
        return row.id, None
    return None, set_aside_alarm(session, secret, row, keys, now)
