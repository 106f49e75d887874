"""Seals on a lone-worker device's replay state: the recent event ids and sequence numbers the intake
refuses replays by.

``lone_worker_states.replay_state`` says which of a device's messages were accepted: its highest
sequence number, which below it, and its latest alarm and check-in event ids. Written by SQL, it
silenced the device: an event id still to come written into its recent events had the device's
SOS, when it came, acknowledged as a duplicate and never raised; its highest sequence raised had
every message it sent refused as stale. So every write of the state by a device's message also
writes ``replay_seal``, in the same statement: an HMAC-SHA256 under the reach secret over the
device's id and the state's stored text (:func:`replay_seal`; one HMAC per message). The state as
enrolment leaves it (empty: a device not heard from since) needs none.

A state whose seal does not hold is not taken: the intake rebuilds it from what vouches for the
device's messages, its rows of the device messages' table whose receipt is the service's
(``receipt_upgrade.received``), with a warning and a ``replay_state_rebuilt`` custody entry naming
the device (``alarms.replay_state``), and ``evidence verify`` names it
(``device_replay_state_altered``), and, once it is rebuilt, its entry
(``device_replay_state_rebuilt``).

States written before this have no seal: they await ``evidence upgrade-seals`` (its ``seal-replay``
step, which writes each rebuilt from the device's received messages, sealed), and until then the
intake takes such a state only as far as those messages bear it out, rebuilding it from them as
above (no warning: nothing says it was altered) and sealing what it writes at the device's next
message; ``evidence verify`` counts them in a note. Tables are read as plain tables: this sits
below ``alarms``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from .entries import ChainReport, CustodyAction, Problem, report_unsealed
from .keys import ServiceKey
from .models import CustodyEntry
from .reach_seals import reach_secret
from .row_seals import _holds, row_seal

_STATES = table("lone_worker_states", column("device_id"), column("replay_state"), column("replay_seal"))

ALTERED = "device_replay_state_altered"
REBUILT = "device_replay_state_rebuilt"


def replay_seal(secret: bytes, device_id: str, state: str) -> str:
    """The seal of a device's replay state as stored (its JSON text), hex."""
    return row_seal(secret, ("replay", device_id, state))


def replay_holds(secret: bytes, device_id: str, state: str | None, seal: str | None) -> bool:
    """Whether a stored replay state is as the service wrote it (an empty one, a device not heard
    from since enrolment, needs no seal)."""
    if seal is None:
        return not state
    return _holds(replay_seal(secret, device_id, state or ""), seal)


def check_replay_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each device whose replay state is not as the service sealed it, and for each
    state the intake found so and rebuilt (its ``replay_state_rebuilt`` entry: the state written
    since is sealed, the tampering is not forgotten); a note counting the states written before
    seals."""
    secret, s = reach_secret(key), _STATES.c
    older = 0
    for device_id, state, seal in session.execute(
        select(s.device_id, s.replay_state, s.replay_seal).order_by(s.device_id)
    ):
        if replay_holds(secret, str(device_id), state, seal):
            continue
        if seal is None:
            older += 1
            continue
        report.problems.append(
            Problem(
                ALTERED,
                f"device {device_id}",
                "its replay state (recent event ids, highest sequence) is not as the service sealed it "
                "(written by someone other than the service: its next message is checked against the "
                "state its received messages bear out)",
            )
        )
    q = select(CustodyEntry.seq, CustodyEntry.details).where(
        CustodyEntry.action == CustodyAction.REPLAY_STATE_REBUILT.value
    )
    for seq, details in session.execute(q.order_by(CustodyEntry.seq)):  # few: each is a tampering found
        said = _details(details)
        report.problems.append(
            Problem(
                REBUILT,
                f"device {said.get('device')}",
                f"its replay state was not as the service sealed it when its message came (written or "
                f"edited in the database: highest {said.get('found_highest')!r}, events "
                f"{said.get('found_events')!r}); rebuilt from its received messages, custody entry #{seq}",
            )
        )
    report_unsealed(
        report,
        older,
        "device(s) have a replay state written before it was sealed: each is taken only as far as "
        "its received messages bear it out, and sealed at its next message or by "
        "`evidence upgrade-seals`",
    )


def older_replays(session: Session) -> list[Any]:
    """The states stored before seals (none, and not empty): ``(device_id, replay_state)``, what
    the upgrade lists."""
    s = _STATES.c
    unsealed = s.replay_seal.is_(None) & s.replay_state.is_not(None) & (s.replay_state != "")
    return list(session.execute(select(s.device_id, s.replay_state).where(unsealed).order_by(s.device_id)))


def _details(text: str | None) -> dict[str, Any]:
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
