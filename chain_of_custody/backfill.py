"""Adopting rows made before the ledger recorded them: a one-off, signed like any entry.

Links, investigator assignments, incidents' sites and footage windows, users' sites and
passwords, staff and their sites, devices' sites and alarms' sites were rows alone before the
ledger carried them, so ``evidence verify`` names the old ones as unrecorded (or notes them as not
checked), and a link no entry records grants nobody anything. ``backfill`` appends, for each such
row as it stands, the entry the service would have made (the same action and details, with
``"backfilled": true``), under the ledger's lock, in one transaction.

It is a decision of trust, taken once by an administrator: whatever the rows say at that moment
becomes the record, planted rows included. So it lists what it would adopt first (``apply``
False), and the administrator runs it after ``evidence verify`` has shown nothing but the
unrecorded rows they mean to adopt. Later changes are checked against the adopted entries as
against any. An item's wearer and device cannot be adopted: they belong in its ``stored`` entry,
which is written once when the item arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from .entries import CustodyAction, SignedEntry
from .ledger import Ledger, hold_head
from .registry_replay import alarm_replay, device_replay, staff_replay
from .row_checks import (
    alarm_rows,
    assignment_rows,
    device_rows,
    incident_windows,
    link_rows,
    staff_rows,
    user_rows,
)
from .row_replay import (
    PASSWORD_DIGESTS,
    assignment_replay,
    incident_site_replay,
    link_replay,
    user_replay,
)
from .window_replay import window_replay

BACKFILLER = "cli:backfill"
LINK_REASON = "linked before the ledger recorded links"

_INCIDENTS = table("incidents", column("id"), column("site"))


@dataclass
class Adoption:
    """The entries a backfill makes (or would make): action, item id, details."""

    entries: list[tuple[CustodyAction, str | None, dict[str, Any]]] = field(default_factory=list)

    def add(self, action: CustodyAction, item_id: str | None, details: dict[str, Any]) -> None:
        self.entries.append((action, item_id, {**details, "backfilled": True}))

    def lines(self) -> list[str]:
        """One line an entry, for the administrator to read before applying: no secret in any (a
        password's digest is keyed, never the hash)."""
        out = []
        for action, item_id, d in self.entries:
            shown = {k: v for k, v in d.items() if k not in ("backfilled", "password_digest")}
            if "password_digest" in d:
                shown["password"] = "(its current hash)"
            out.append(f"{action}{f' item {item_id}' if item_id else ''}: {shown}")
        return out


def plan(session: Session, ledger: Ledger) -> Adoption:
    """What the ledger does not hold of the rows as they stand now."""
    entries = list(ledger.all_entries(session))
    adoption = Adoption()
    links = link_replay(entries)
    for row in link_rows(session):
        if (row.incident_id, row.kind, row.target_id) in links:
            continue
        details: dict[str, Any] = {"incident_id": row.incident_id, "link": row.id, "reason": LINK_REASON}
        if row.kind == "evidence":
            adoption.add(CustodyAction.LINKED, row.target_id, details)
        else:
            adoption.add(CustodyAction.LINKED, None, {**details, "alarm": row.target_id})
    assignments = assignment_replay(entries)
    for a in assignment_rows(session):
        if (a.incident_id, a.username) not in assignments:
            adoption.add(
                CustodyAction.USER_CHANGED,
                None,
                {"user": a.username, "incident_id": a.incident_id, "assignment": a.id, "assigned": True},
            )
    sites, windows, kept = incident_site_replay(entries), window_replay(entries), incident_windows(session)
    for incident_id, site in session.execute(select(_INCIDENTS.c.id, _INCIDENTS.c.site)):
        incident: dict[str, Any] = {"incident_id": str(incident_id)}
        if incident["incident_id"] not in sites:
            incident["site"] = site
        if incident["incident_id"] not in windows and incident["incident_id"] in kept:
            incident["window"] = kept[incident["incident_id"]]
        if len(incident) > 1:
            adoption.add(CustodyAction.INCIDENT_CHANGED, None, incident)
    users = user_replay(entries)
    for u in user_rows(session, ledger.key.derived_secret(PASSWORD_DIGESTS)):
        known = users.get(u.username)
        password = {"password_digest": u.password_digest} if u.password_digest else {}
        if known is None:
            adoption.add(
                CustodyAction.USER_CHANGED,
                None,
                {"user": u.username, "created": True, "role": u.role, "site": u.site, **password},
            )
            if not u.active:
                adoption.add(
                    CustodyAction.USER_CHANGED, None, {"user": u.username, "changes": {"active": False}}
                )
            continue
        changes: dict[str, Any] = {}
        if "site" not in known:
            changes["site"] = u.site
        if "password" not in known and password:
            changes.update(password)
        if changes:
            adoption.add(CustodyAction.USER_CHANGED, None, {"user": u.username, "changes": changes})
    _plan_registry(session, entries, adoption)
    return adoption


def _plan_registry(session: Session, entries: list[SignedEntry], adoption: Adoption) -> None:
    """Staff no entry adds, devices no entry enrols or whose enrolment did not say their site or
    assigned member of staff, and alarms raised before their site was recorded (``registry_replay``)."""
    staff = staff_replay(entries)
    for member in staff_rows(session):
        if member.id not in staff:
            adoption.add(
                CustodyAction.STAFF_CHANGED, None, {"staff": member.id, "created": True, "site": member.site}
            )
    devices = device_replay(entries)
    for d in device_rows(session):
        known = devices.get(d.id)
        if known is None:
            adoption.add(
                CustodyAction.DEVICE_ENROLLED,
                None,
                {"device": d.id, "kind": d.kind, "site": d.site, "staff": d.staff},
            )
            continue
        details: dict[str, Any] = {}
        if "site" not in known:
            details["site"] = d.site
        if "staff" not in known:
            details["assigned_to"] = d.staff
        if details:
            adoption.add(CustodyAction.DEVICE_CHANGED, None, {"device": d.id, **details})
    alarms = alarm_replay(entries)
    for a in alarm_rows(session):
        if not a.provisional and "site" not in alarms.get(a.id, {}):
            adoption.add(CustodyAction.ALARM_CHANGED, None, {"alarm_id": a.id, "site": a.site})


def backfill(session: Session, ledger: Ledger, *, apply: bool) -> Adoption:
    """Plan the adoption under the ledger's lock and, with ``apply``, append its entries."""
    hold_head(session)
    adoption = plan(session, ledger)
    if apply:
        for action, item_id, details in adoption.entries:
            ledger.append(session, action, BACKFILLER, item_id=item_id, details=details)
    return adoption
