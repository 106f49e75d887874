"""Cancels that came before their raise, taken only as their device signed them.

A cancel can overtake the raise it cancels (another instance handled it first): it waits in
``lone_worker_events`` (``action`` ``cancel``, ``alarm_id`` empty, ``ref_event_id`` the raise's
event id) and is applied when the raise arrives (``alarms.intake``). Its columns are no seal's: a
row written there by SQL, naming a raise still to come (an event id guessed or watched for), or a
genuine cancel of an earlier alarm pointed at it, resolved an amber alarm on arrival or told the
control room that the worker had cancelled an SOS. So a waiting cancel is applied only when its
stored bytes are the device's message as it signed it, vouched for by the key in force as the
service received them (``raise_seals.message_key``: the key the service sealed their receipt
under, ``receipt_seal``), and they cancel that raise; any other is named in a warning and ignored
(the raise stands), and ``evidence verify`` names it (``device_cancel_altered``), as it names each
row the intake set aside for holding a message's event id without being the service's receipt of
it (``device_event_set_aside``, ``alarms.set_aside``) and each alarm row it set aside for holding
the event id of a raise the service did not raise it from (``alarm_set_aside``,
``alarms.alarm_keys``). Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from .entries import ChainReport, Problem
from .keys import ServiceKey
from .raise_seals import message_key
from .row_seals import DEVICE_SEALS

log = logging.getLogger(__name__)

_EVENTS = table(
    "lone_worker_events",
    column("event_id"),
    column("device_id"),
    column("action"),
    column("alarm_id"),
    column("ref_event_id"),
    column("raw"),
    column("device_public_key"),
    column("receipt_seal"),
    column("received_at"),
)
_SET_ASIDE = table(
    "lone_worker_events_set_aside",
    column("id"),
    column("event_id"),
    column("device_id"),
    column("set_aside_at"),
    column("sha256"),
)

_ALARMS_SET_ASIDE = table(
    "alarms_set_aside",
    column("id"),
    column("alarm_id"),
    column("source_event_id"),
    column("device_id"),
    column("moved"),
    column("reason"),
    column("set_aside_at"),
    column("sha256"),
)


def _raise(event_id: str | None) -> str:
    return "no raise" if event_id is None else f"raise {event_id}"


def cancels(raw: bytes, raise_event_id: str | None) -> bool:
    """Whether the (checked) bytes of a device message are a cancel of the raise ``raise_event_id``."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeError, RecursionError):
        return False
    body = message.get("alarm") if isinstance(message, dict) else None
    return (
        raise_event_id is not None
        and message.get("type") == "alarm"
        and isinstance(body, dict)
        and body.get("action") == "cancel"
        and body.get("ref_event_id") == raise_event_id
    )


def cancel_holds(
    session: Session,
    devices_secret: bytes,
    public: bytes,
    device_id: str,
    row: Any,
    raise_event_id: str | None,
) -> bool:
    """Whether ``row``, a stored cancel of the device's (its ``event_id``, ``raw``,
    ``device_public_key`` and ``receipt_seal``), is the device's cancel of the raise
    ``raise_event_id``, as it signed it: its bytes vouched for by a key of the device's
    (``raise_seals.message_key``) and saying so. No warning: the caller names what it does."""
    if row.raw is None:
        return False
    key = message_key(
        session,
        devices_secret,
        public,
        device_id,
        str(row.event_id),
        row.raw,
        (row.device_public_key, row.receipt_seal),
    )
    return key is not None and cancels(bytes(row.raw), raise_event_id)


def warn_of_cancel(device_id: str, event_id: str, raise_event_id: str | None) -> None:
    """A warning naming a stored cancel that is not its device's cancel of the raise it waits for."""
    log.warning(
        "a stored cancel is not its device's cancel of the raise it waits for (written or edited in "
        "the database): it is not applied, the raise stands",
        extra={"device": device_id, "event_id": event_id, "raise": raise_event_id},
    )


def check_waiting_cancels(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each stored cancel not applied to an alarm (one waiting for its raise, or one
    the service refused when it came) that is not its device's cancel of the raise it names."""
    e = _EVENTS.c
    rows = session.execute(
        select(_EVENTS).where(e.action == "cancel", e.alarm_id.is_(None)).order_by(e.received_at, e.event_id)
    ).all()  # few: each waits only until its raise comes
    secret = key.derived_secret(DEVICE_SEALS)
    for row in rows:
        if cancel_holds(session, secret, key.public_raw, str(row.device_id), row, row.ref_event_id):
            continue
        report.problems.append(
            Problem(
                "device_cancel_altered",
                f"event {row.event_id}",
                f"a cancel of device {row.device_id} waiting for raise {row.ref_event_id} is not the "
                "device's cancel of it as the device signed it, received under its key then in force: "
                "written or edited in the database (it cancels nothing)",
            )
        )


def check_set_aside_events(session: Session, report: ChainReport) -> None:
    """A finding for each row of the device messages' table the intake set aside: it held the event
    id of a message its device then sent, but was not the service's receipt of it (written or
    edited in the database; ``alarms.set_aside``). Kept as evidence; it is acted on by nothing."""
    s = _SET_ASIDE.c
    rows = session.execute(select(_SET_ASIDE).order_by(s.id)).all()  # few: each is a tampering found
    for row in rows:
        report.problems.append(
            Problem(
                "device_event_set_aside",
                f"event {row.event_id}",
                f"a row naming device {row.device_id} held the event id of a message the device then "
                "sent but was not the service's receipt of it (its receipt seal did not hold): written "
                f"or edited in the database; set aside at {row.set_aside_at} (bytes sha256 {row.sha256}) "
                "and the device's message acted on",
            )
        )
    _check_set_aside_alarms(session, report)


def _check_set_aside_alarms(session: Session, report: ChainReport) -> None:
    """A finding for each alarm row the intake set aside: it held the event id of a raise its device
    then sent, but the service had not raised it from that message (``alarms.alarm_keys``)."""
    a = _ALARMS_SET_ASIDE.c
    for row in session.execute(select(_ALARMS_SET_ASIDE).order_by(a.id)).all():  # few: tamperings
        done = (
            "moved out of the alarms (no alarm of the service's)"
            if row.moved
            else "its key put back to its custody record (an alarm of the service's)"
        )
        report.problems.append(
            Problem(
                "alarm_set_aside",
                f"alarm {row.alarm_id}",
                f"a row naming device {row.device_id} and {_raise(row.source_event_id)}: {row.reason}; set "
                f"aside at {row.set_aside_at} (columns sha256 {row.sha256}), {done}",
            )
        )
