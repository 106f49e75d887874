"""A caller's item-level authority as it holds in the write transaction that acts on it.

A request's sign-in reads, in a transaction of its own, the investigator's sealed incident
assignments and the security manager's sealed members of staff and devices (``Principal``'s
``assignments`` and ``reach``). Taken as they were then, an investigator taken off an incident, or
a member of staff or a device moved to another site, between the sign-in and the request's write
would still open that incident's items, or that member's footage, to one more action (a read
recorded, a link, an export, a hold). So every write transaction that acts on a caller's authority
(``stands`` marks it, :func:`hold_in`) reads them again, in itself, the first time the access rules
ask for them (:func:`held_now`), and the rules decide by what holds there.

What is read again is whether each row the sign-in found sealed still grants it: an assignment not
ended since (``unassigned_at``), a member of staff or a device still of the manager's site. Every
change the service makes to what such a row grants ends the assignment or moves the row's site (and
seals it again for that); the seals' HMACs, which only tell a row written outside the service, are
not checked a second time, and nothing is granted that the sign-in did not find sealed.

On SQLite the write transaction holds the one writer lock from its start, so what is read is what
it commits against. On PostgreSQL an investigator's assignments still standing are held for share
until the transaction ends, as ``stands`` holds the caller's own row: an unassignment made meanwhile
waits for this commit, and one committed before it is seen. Investigators never change assignment
rows, so no transaction of theirs raises such a lock to an exclusive one. A manager's members of
staff and devices are read again but not held: a manager's own writes change those rows (a member
of staff's details, a device's status), and two of them at once, each holding every row of the site
for share and raising one to update it, would wait for each other for ever. A move committed in the
moment between this read and the action's commit is not waited for there.

The cost falls on the write transactions that ask (one indexed look-up by ids for an investigator,
two for a manager), not on reads, which decide by the sign-in a moment before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from chain_of_custody.reach_seals import SiteReach
from storage.db import is_postgres, session_in_use

# The tables as plain tables: assignments belong to ``incidents`` and staff and devices to
# ``devices``, both above ``accounts``.
_ASSIGNMENTS = table("incident_assignments", column("id"), column("user_id"), column("unassigned_at"))
_STAFF = table("staff", column("id"), column("site"))
_DEVICES = table("devices", column("id"), column("site"))
_HELD = "evidence_held_reach"  # in a write transaction's ``Session.info``: the callers it acts for


class Caller(Protocol):
    """The caller as their sign-in read them (``accounts.service.Principal`` satisfies this)."""

    @property
    def user_id(self) -> int: ...

    @property
    def credential(self) -> tuple[str, str] | None: ...

    @property
    def signed_in_assignments(self) -> frozenset[int]: ...

    @property
    def signed_in_reach(self) -> SiteReach: ...


@dataclass
class HeldReach:
    """What one caller's item-level authority is in one write transaction: read on first use, kept
    for the rest of it (a transaction sees its own locks' rows unchanged)."""

    session: Session
    principal: Caller
    _assignments: frozenset[int] | None = field(default=None, repr=False)
    _reach: SiteReach | None = field(default=None, repr=False)

    @property
    def assignments(self) -> frozenset[int]:
        if self._assignments is None:
            self._assignments = _still_assigned(self.session, self.principal)
        return self._assignments

    @property
    def reach(self) -> SiteReach:
        if self._reach is None:
            self._reach = _still_reached(self.session, self.principal.signed_in_reach)
        return self._reach


def hold_in(session: Session, principal: Caller) -> None:
    """Mark ``session``'s write transaction as acting for ``principal`` (``stands`` does, once it
    found them standing): the access rules asked in it decide by :func:`held_now`."""
    session.info.setdefault(_HELD, {})[(principal.user_id, principal.credential)] = HeldReach(
        session, principal
    )


def held_now(principal: Caller) -> HeldReach | None:
    """The caller's authority as the write transaction in use reads it, or None outside one that
    acts for them (a read, the service's own work): then the sign-in's is what holds."""
    session = session_in_use()
    if session is None:
        return None
    held: dict[tuple[int, Any], HeldReach] | None = session.info.get(_HELD)
    return held.get((principal.user_id, principal.credential)) if held else None


def _still_assigned(session: Session, principal: Caller) -> frozenset[int]:
    """The sign-in's assignments not ended since (held for share on PostgreSQL)."""
    signed_in = principal.signed_in_assignments
    if not signed_in:
        return signed_in
    a = _ASSIGNMENTS.c
    query = select(a.id).where(
        a.id.in_(sorted(signed_in)), a.user_id == principal.user_id, a.unassigned_at.is_(None)
    )
    if is_postgres(session):  # in the rows' order, as every holder takes them
        query = query.order_by(a.id).with_for_update(read=True)
    return frozenset(int(row_id) for row_id in session.scalars(query))


def _still_reached(session: Session, reach: SiteReach) -> SiteReach:
    """The sign-in's members of staff and devices still of the reach's site (read, not held: see the
    module's note); the rest of the reach as the sign-in read it."""
    if reach.site is None or not (reach.staff or reach.devices):
        return reach
    staff, devices = reach.staff, reach.devices
    if staff:
        s = _STAFF.c
        q = select(s.id).where(s.id.in_(sorted(staff)), s.site == reach.site)
        staff = frozenset(str(i) for i in session.scalars(q))
    if devices:
        d = _DEVICES.c
        q = select(d.id).where(d.id.in_(sorted(devices)), d.site == reach.site)
        devices = frozenset(str(i) for i in session.scalars(q))
    return replace(reach, staff=staff, devices=devices)
