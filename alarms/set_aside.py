"""Rows of the device messages' table that are not the service's receipt of a message, set aside.

The event table's primary key is the device's event id, so a message is acted on once however often
it is delivered: a row holding its id means "received already". A row written there by SQL with the
event id of a message still to come (an SOS, a cancel, a check-in: an id guessed or watched for)
had the genuine message, when it came, taken for one stored long ago, acknowledged to the device as
a duplicate, and no alarm raised. So the intake takes a row holding a message's event id as that
message received only when it is the service's receipt of it
(``chain_of_custody.receipt_upgrade.received``: the seal of its receipt holds, or, for a row stored
before receipt seals while they are still to be upgraded, the rule that held then). Any other row is
moved here (:class:`alarms.models.LoneWorkerEventSetAside`) as it stood, never deleted, with a
warning and an ``event_set_aside`` custody entry naming it and its bytes' hash, and the genuine
message is acted on. ``evidence verify`` names each row set aside (``device_event_set_aside``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, inspect
from sqlalchemy.orm import Session

from .models import LoneWorkerEvent, LoneWorkerEventSetAside

log = logging.getLogger(__name__)

_EVENTS = cast(Table, LoneWorkerEvent.__table__)

NOT_RECEIVED = (
    "it held the event id of a message the device then sent, but it is not the service's receipt of "
    "that message (its receipt seal does not hold): written or edited in the database"
)


def plain(value: Any) -> Any:
    """A column's value as JSON keeps it (times in ISO 8601, bytes in base64)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value


def set_aside(
    session: Session, row: LoneWorkerEvent, now: datetime, reason: str = NOT_RECEIVED
) -> dict[str, Any]:
    """Move ``row`` out of the event table into the rows set aside, as it stands, in the caller's
    transaction (its event id is then free for the genuine message); the details of the custody
    entry that records it (the caller appends it, in its lock order)."""
    columns = {
        attr.key: plain(getattr(row, attr.key))
        for attr in inspect(LoneWorkerEvent).column_attrs
        if attr.key != "raw"
    }
    raw = None if row.raw is None else bytes(row.raw)
    digest = hashlib.sha256(raw or b"").hexdigest()
    kept = LoneWorkerEventSetAside(
        event_id=row.event_id,
        device_id=row.device_id,
        set_aside_at=now,
        reason=reason,
        sha256=digest,
        raw=raw,
        columns=json.dumps(columns, sort_keys=True),
    )
    session.expunge(row)  # the genuine message's row takes its key in this session
    session.execute(delete(_EVENTS).where(_EVENTS.c.event_id == kept.event_id))
    session.add(kept)
    session.flush()
    log.warning(
        "a stored device message is not the service's receipt of it: set aside, and the device's "
        "message acted on",
        extra={"device": kept.device_id, "event_id": kept.event_id, "set_aside": kept.id},
    )
    return {
        "event_id": kept.event_id,
        "device_id": kept.device_id,
        "set_aside_id": kept.id,
        "sha256": digest,
        "reason": reason,
    }
