"""Whose an alarm or a visit is: its device's holder when the device says it happened.

A lone-worker device keeps what it could not send (no signal in a basement, a stairwell) and sends
it when it can, signed, with the time it happened (``occurred_at``). Taken as its device's holder
and site as they stand at receipt, an SOS pressed by one member of staff and delivered after the
device was handed to another, or re-enrolled at another site, was raised in the name of the new
holder and shown to the other site's control room: the wrong person called, and the evidence in
the wrong name. It is the holder's of its time, read from the device's custody record
(``chain_of_custody.device_holders``, the rule a camera's late clip follows): the device's word on
the time is taken only from the moment its current key was enrolled up to its receipt, and only
when the custody record bears out the holder its row names now; otherwise it is the holder's at
receipt, as before.

Most messages are sent the moment they happen: one within :data:`SAME_MOMENT` of its receipt is the
holder's now, with no read of the device's record.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from chain_of_custody.device_holders import device_holdings, held_at

from .device_state import Snapshot

log = logging.getLogger(__name__)

SAME_MOMENT = timedelta(seconds=1)


def holder_then(
    session: Session,
    devices_secret: bytes,
    public: bytes,
    snap: Snapshot,
    occurred_at: datetime,
    received: datetime,
) -> tuple[str | None, str | None]:
    """The member of staff and site of the device ``snap`` (its row's seal checked) when its
    message says it happened, as its custody record has it (see the module)."""
    if occurred_at >= received - SAME_MOMENT or snap.public_key is None:
        return snap.staff_id, snap.site
    key = base64.b64encode(snap.public_key).decode()
    holdings = device_holdings(session, devices_secret, public, snap.device_id)
    held = held_at(holdings, (snap.staff_id, snap.site, key), occurred_at, received)
    if (held.staff, held.site) != (snap.staff_id, snap.site):
        log.warning(
            "a device's message is its holder's when it happened, not its holder's now",
            extra={"device": snap.device_id, "entry": held.seq, "at": occurred_at.isoformat()},
        )
    return held.staff, held.site
