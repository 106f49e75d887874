"""Seals on when a lone-worker device was last heard from, which decides when it counts as silent.

A device on a visit (or with an alarm open) that falls silent for ``device_offline_after_seconds``
raises ``device_offline``, counted from ``lone_worker_states.last_seen_at``: that column moved
forward by SQL would silence the alarm, and the clock's sweep, which reads the same column, could
not tell. So every write of ``last_seen_at`` by a device's message also writes ``heard_seal``, in
the same statement: the time in microseconds since 1970 and an HMAC over it and the device's id,
under the reach secret (one HMAC per message, no statement more). The clock counts from the
earlier of the row's time and the sealed one; a row whose seal is missing or wrong is taken as not
heard from since it was first seen so (its offline alarm raised, with a warning naming the device),
and ``evidence verify`` names it (``device_last_heard_altered``).

Rows written before this have no seal: they count as awaiting ``evidence upgrade-seals`` (its
``seal-last-heard`` step, which seals the time a row holds unless it is later than the upgrade:
no custody entry records a heartbeat, so nothing else can bear it out; a device's next message
seals its row anyway), and until then one that comes due is taken as silent. Tables are read as
plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import column, select, table, update
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .entries import ChainReport, report_unsealed
from .keys import ServiceKey
from .reach_seals import reach_secret
from .row_seals import timed_finding, timed_mark, timed_of

log = logging.getLogger(__name__)

_STATES = table(
    "lone_worker_states",
    column("device_id"),
    column("last_seen_at", UTCDateTime),
    column("heard_seal"),
)


def heard_mark(secret: bytes, device_id: str, at: datetime) -> str:
    """When the service last heard from a device, as it writes it with ``last_seen_at``: the time
    in microseconds since 1970 and an HMAC over it and the device's id (at most 85 characters)."""
    return timed_mark(secret, "heard", device_id, at)


def heard_of(secret: bytes, device_id: str, mark: str | None) -> datetime | None:
    """The time a :func:`heard_mark` holds, or None when it is missing or not the service's."""
    return timed_of(secret, "heard", device_id, mark)


@dataclass(frozen=True)
class Heard:
    """What the clock may count a device's silence from: ``at``, the earlier of its row's time and
    the sealed one; ``sealed``: whether a seal of the service's vouches for it (a row without one,
    or with a wrong one, counts as silent once it is due)."""

    at: datetime | None
    sealed: bool


def last_heard(secret: bytes, device_id: str, last_seen_at: datetime | None, mark: str | None) -> Heard:
    """When a device was last heard from, as far as its row's seal vouches (see :class:`Heard`)."""
    sealed = heard_of(secret, device_id, mark)
    if sealed is None:
        return Heard(last_seen_at, False)
    return Heard(sealed if last_seen_at is None else min(last_seen_at, sealed), True)


# -- evidence verify ------------------------------------------------------------------------------


def check_heard_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each device whose last-heard time is later than the one the service sealed, or
    whose seal of it is wrong; a note counting the rows not sealed yet."""
    secret, s = reach_secret(key), _STATES.c
    older = 0
    q = select(s.device_id, s.last_seen_at, s.heard_seal).where(s.last_seen_at.is_not(None))
    for device_id, last_seen_at, mark in session.execute(q.order_by(s.device_id)):
        if mark is None:
            older += 1
            continue
        found = timed_finding(
            "device_last_heard_altered",
            f"device {device_id}",
            last_seen_at,
            heard_of(secret, str(device_id), mark),
            what="last-heard time",
            unsealed="its last-heard time's seal is wrong (its offline alarm is raised once it is due)",
            effect="its offline alarm was put off in the database",
        )
        if found is not None:
            report.problems.append(found)
    report_unsealed(
        report,
        older,
        "device(s) have no seal on when they were last heard from, so they count as "
        "silent once due: `evidence upgrade-seals` seals them",
    )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedHeard:
    """A device's state row without a seal on its last-heard time, as the upgrade lists it."""

    device: str
    last_seen_at: datetime
    refused: str | None

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "sealed as it stands"
        return f"device {self.device}: last heard {self.last_seen_at.isoformat()}; {verdict}"


def older_heard(session: Session) -> list[Any]:
    """The state rows with a last-heard time and no seal on it (what the upgrade lists)."""
    s = _STATES.c
    q = select(s.device_id, s.last_seen_at).where(s.last_seen_at.is_not(None), s.heard_seal.is_(None))
    return list(session.execute(q.order_by(s.device_id)))


def unsealed_heard(session: Session, now: datetime | None = None) -> list[UnsealedHeard]:
    """Every state row :func:`older_heard` lists; one whose time is later than ``now`` is refused
    (no message could have been heard then)."""
    now = now or datetime.now(UTC)
    return [
        UnsealedHeard(
            str(d), at, f"its last-heard time is later than now ({now.isoformat()})" if at > now else None
        )
        for d, at in older_heard(session)
    ]


def seal_heard(session: Session, key: ServiceKey, now: datetime | None = None) -> list[UnsealedHeard]:
    """Seal the rows :func:`unsealed_heard` lists and does not refuse, as they stand (a row changed
    since it was read keeps none); all it listed."""
    secret, s = reach_secret(key), _STATES.c
    listed = unsealed_heard(session, now)
    for found in listed:
        if found.refused is None:
            session.execute(
                update(_STATES)
                .where(
                    s.device_id == found.device, s.last_seen_at == found.last_seen_at, s.heard_seal.is_(None)
                )
                .values(heard_seal=heard_mark(secret, found.device, found.last_seen_at))
            )
    return listed
