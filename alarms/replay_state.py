"""A lone-worker device's replay state as its seal vouches for it (``chain_of_custody.replay_seals``).

The intake reads the state with the device (``alarms.device_state``) and checks its seal once, when
the message's verification first asks for it (:func:`vouched_replay`): a state whose seal holds is
taken as it stands (one HMAC, none for the state this process last wrote: :class:`ReplaySeals`).
Any other is rebuilt from the device's rows of the device messages'
table that are the service's receipt of its messages (``chain_of_custody.receipt_upgrade.received``:
a row written by SQL lends it nothing), their sequence numbers and event ids read from the bytes the
device signed, not from the rows' columns (:func:`rebuilt_state`); the message is judged against
that, and the state its write stores is sealed. A state whose seal is wrong is named in a warning
and, once the message is stored, in a ``replay_state_rebuilt`` custody entry; one written before
seals (none, and not empty) is rebuilt without either, as nothing says it was altered.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from chain_of_custody.keys import ServiceKey
from chain_of_custody.raise_seals import sealed_device_key, written_key
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.receipt_upgrade import received
from chain_of_custody.replay_seals import older_replays, replay_holds, replay_seal
from chain_of_custody.row_seals import DEVICE_SEALS
from devices.lone_worker_wire import ReplayState
from devices.models import LoneWorkerState

from .models import LoneWorkerEvent

log = logging.getLogger(__name__)

_EVENTS = cast(Table, LoneWorkerEvent.__table__)


def _signed_seq(raw: bytes, event_id: str) -> int | None:
    """The sequence number a message's signed bytes give, if they are of this event id."""
    try:
        message = json.loads(bytes(raw))
    except (ValueError, UnicodeError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("event_id") != event_id:
        return None
    seq = message.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


def rebuilt_state(
    session: Session, devices_secret: bytes, public: bytes, device_id: str, key: str | None
) -> ReplayState:
    """The replay state the device's received messages bear out: the latest (by sequence) of its
    alarms and check-ins under its key now (``key``, base64: enrolment starts the sequence afresh, so a
    message under a key replaced since says nothing of it) whose rows are the service's receipt of
    them, as many as the state remembers, with their sequence numbers marked seen. Heartbeats and
    locations leave no row: their sequence numbers are not remembered, and the device's next
    message moves the state on."""
    current = written_key(key)
    fresh = ReplayState()
    found: list[tuple[int, str]] = []
    rows = session.execute(
        select(
            _EVENTS.c.event_id,
            _EVENTS.c.device_id,
            _EVENTS.c.raw,
            _EVENTS.c.device_public_key,
            _EVENTS.c.receipt_seal,
        )
        .where(_EVENTS.c.device_id == device_id)
        .order_by(_EVENTS.c.seq.desc(), _EVENTS.c.event_id)
    )
    for row in rows:
        if len(found) >= fresh.max_events:
            break
        if current is None or written_key(row.device_public_key) != current:
            continue
        seq = None if row.raw is None else _signed_seq(row.raw, str(row.event_id))
        if seq is not None and received(session, devices_secret, public, row):
            found.append((seq, str(row.event_id)))
    if not found:
        return fresh
    found.sort()
    highest = found[-1][0]
    bits = 0
    for seq, _ in found:
        if highest - seq < fresh.window:
            bits |= 1 << (highest - seq)
    return ReplayState(highest=highest, bits=bits, recent_events=tuple(e for _, e in found))


class ReplaySeals:
    """Seals devices' replay states as the intake writes them, one HMAC a message: the seal this
    process last wrote for each device is kept, and a state read back as exactly that text with
    exactly that seal holds without another (it is the service's own HMAC over that text); any
    other read, another instance's write included, is checked with one."""

    def __init__(self, secret: bytes, remembered: int = 100_000) -> None:
        self.secret = secret
        self._remembered = remembered
        self._written: dict[str, tuple[str, str]] = {}

    def seal(self, device_id: str, text: str) -> str:
        """The seal of ``text`` as the device's stored state, remembered as written."""
        sealed = replay_seal(self.secret, device_id, text)
        if len(self._written) >= self._remembered:
            self._written.clear()
        self._written[device_id] = (text, sealed)
        return sealed

    def holds(self, device_id: str, text: str | None, seal: str | None) -> bool:
        """Whether a stored state is as the service wrote it (``replay_seals.replay_holds``)."""
        if seal is not None and self._written.get(device_id) == (text, seal):
            return True
        return replay_holds(self.secret, device_id, text, seal)


def vouched_replay(
    session: Session, seals: ReplaySeals, devices_secret: bytes, public: bytes, snap: Any
) -> tuple[ReplayState, dict[str, Any] | None]:
    """The replay state of the device ``snap`` (a ``device_state.Snapshot``) to judge its message
    against, and, for a state whose seal is wrong, the details of the custody entry that records
    it rebuilt (the caller appends it once the message is stored, in its lock order)."""
    text, seal = snap.replay_text, snap.replay_seal
    if seals.holds(snap.device_id, text, seal):
        return ReplayState.from_json(text), None
    key = base64.b64encode(snap.public_key).decode() if snap.public_key else None
    state = rebuilt_state(session, devices_secret, public, snap.device_id, key)
    if seal is None:  # written before replay seals: taken as far as its received messages bear it out
        log.info("a device's replay state from before seals rebuilt", extra={"device": snap.device_id})
        return state, None
    stored = _stored(text)
    log.warning(
        "a device's replay state is not as the service sealed it: rebuilt from its received messages",
        extra={"device": snap.device_id, "found": stored, "rebuilt_highest": state.highest},
    )
    return state, {
        "device": snap.device_id,
        "found_highest": stored.get("highest"),
        "found_events": stored.get("events"),
        "rebuilt_highest": state.highest,
        "rebuilt_events": list(state.recent_events),
    }


def _stored(text: str | None) -> dict[str, Any]:
    """What a stored state says of its highest sequence and events, as far as it can be read."""
    try:
        data = json.loads(text or "{}")
    except (ValueError, RecursionError):
        return {"unreadable": True}
    if not isinstance(data, dict):
        return {"unreadable": True}
    return {"highest": data.get("highest"), "events": data.get("events")}


# -- states stored before seals: ``evidence upgrade-seals`` (its ``seal-replay`` step) ------------


@dataclass(frozen=True)
class UnsealedReplay:
    """A device's replay state stored before its seal, as the upgrade lists it: rebuilt from the
    device's received messages and sealed (as the intake would at its next message)."""

    device_id: str
    stored: dict[str, Any]
    rebuilt: ReplayState
    text: str  # the state as it was read (a state changed since is left for the intake)

    def line(self) -> str:
        return (
            f"device {self.device_id}: stored highest sequence {self.stored.get('highest')!r}; "
            f"rebuilt from its received messages: highest {self.rebuilt.highest}, "
            f"{len(self.rebuilt.recent_events)} event(s)"
        )


def unsealed_replays(session: Session, key: ServiceKey) -> list[UnsealedReplay]:
    """Every state :func:`chain_of_custody.replay_seals.older_replays` lists, with the state the
    device's received messages bear out (under its key now: a device whose row's seal does not hold
    has none, and starts afresh)."""
    devices_secret = key.derived_secret(DEVICE_SEALS)
    listed = []
    for device_id, text in older_replays(session):
        device = str(device_id)
        current = sealed_device_key(session, devices_secret, device)
        state = rebuilt_state(session, devices_secret, key.public_raw, device, current)
        listed.append(UnsealedReplay(device, _stored(text), state, str(text)))
    return listed


def seal_replays(session: Session, key: ServiceKey) -> list[UnsealedReplay]:
    """Write, sealed, the state each row :func:`unsealed_replays` lists is rebuilt to (a row changed
    since it was read is left as it is: the intake judges it); all it listed."""
    secret, s = reach_secret(key), cast(Table, LoneWorkerState.__table__).c
    listed = unsealed_replays(session, key)
    for found in listed:
        text = found.rebuilt.to_json()
        session.execute(
            update(LoneWorkerState)
            .where(s.device_id == found.device_id, s.replay_seal.is_(None), s.replay_state == found.text)
            .values(
                replay_state=text,
                replay_seal=replay_seal(secret, found.device_id, text),
                version=s.version + 1,  # an instance that read it before writes again
            )
        )
    return listed
