"""What identifies an incident and decides who sees it: its reference number, and its site and
footage window on the custody ledger.

A security manager sees the incidents of their site, and everything linked to them, so an incident's
site is recorded as a custody entry (``incident_changed``) when the incident is opened and whenever
it changes; ``evidence verify`` compares the row with the latest such entry
(``chain_of_custody.row_replay.incident_site_findings``). Its footage window (a wearer and a span)
has the service link that wearer's clips as they arrive, so the same entry records it, and every
change of it is one (``chain_of_custody.window_replay``). Each such entry is written on the
incident's keyed subject (``incident_seals.incident_subject``), and the same write seals the row over
what the entry records and that entry's seq (``chain_of_custody.incident_seals``): where incidents
are read and windows followed, a row whose seal does not hold (moved or given a window in the
database, or an older copy of the row put back with the seal that fitted then) is read by no site's
managers and links nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.incident_seals import (
    incident_holds,
    incident_seal,
    incident_subject,
    latest_incident_entry,
)
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.window_replay import window_record
from storage.db import dialect_insert

from .models import Incident, IncidentCounter


def format_reference(year: int, number: int) -> str:
    return f"INC-{year}-{number:06d}"


def next_reference(session: Session, year: int) -> tuple[int, str]:
    """The next number of the year: the counter row's lock serialises creators, and a rollback returns the number.

    The first incident of a year inserts the counter row with ON CONFLICT DO NOTHING, so two creators
    racing on New Year's Day do not fail; the UPDATE then takes the row lock until commit.
    """
    session.execute(
        dialect_insert(session, IncidentCounter).values(year=year, last=0).on_conflict_do_nothing()
    )
    number = session.execute(
        update(IncidentCounter)
        .where(IncidentCounter.year == year)
        .values(last=IncidentCounter.last + 1)
        .returning(IncidentCounter.last)
    ).scalar_one()
    return number, format_reference(year, number)


def incident_sealed(session: Session, incident: Incident, key: ServiceKey) -> bool:
    """Whether the incident row's seal holds (a warning naming it when not) for its values and the
    latest entry on its subject: its site, wearer and window are the service's latest, so its
    window may link clips and its site's managers read it. Every writer that seals the row again
    asks this first (or has an administrator restate what the seal covers)."""
    secret = reach_secret(key)
    bound = latest_incident_entry(session, secret, incident.id)
    return incident_holds(secret, *_sealed_values(incident), incident.seal, bound)


def _sealed_values(
    incident: Incident,
) -> tuple[str, str | None, str | None, datetime | None, datetime | None]:
    """What an incident row's seal covers, in order (and its latest custody entry)."""
    return (incident.id, incident.site, incident.wearer, incident.window_start, incident.window_end)


RESTATED = ("site", "wearer", "window_start", "window_end")
BROKEN_SEAL = (
    "the incident's site, wearer or footage window was written in the database (its seal does not "
    "hold): an administrator restates site, wearer, window_start and window_end to seal it again"
)


def restates_site_and_window(role: str | None, changes: Mapping[str, Any]) -> bool:
    """Whether a change of an incident whose seal does not hold may seal it again: an administrator
    restating every field the seal covers (``RESTATED``), so what is sealed is what they said, not
    what the database says. Anyone else's change of it is refused."""
    return role == "admin" and set(RESTATED) <= changes.keys()


def record_site(
    session: Session,
    ledger: Ledger,
    incident: Incident,
    actor: str,
    *,
    created: bool = False,
    resealed: bool = False,
) -> None:
    """The ``incident_changed`` entry that says the incident's site and footage window, in the
    transaction that sets either, on the incident's subject, and the row's seal over them bound to
    that entry (``resealed``: an administrator restated them over a row whose seal did not hold,
    and the entry says so). The caller has checked the row's seal held (``incident_sealed``), or
    opened it now, or had an administrator restate it."""
    details: dict[str, object] = {
        "incident_id": incident.id,
        "site": incident.site,
        "window": window_record(incident.wearer, incident.window_start, incident.window_end),
    }
    if created:
        details["created"] = True
    if resealed:
        details["resealed"] = "site and window restated by an administrator over a broken seal"
    secret = reach_secret(ledger.key)
    subject = incident_subject(secret, incident.id)
    entry = ledger.append(session, CustodyAction.INCIDENT_CHANGED, actor, item_id=subject, details=details)
    incident.seal = incident_seal(secret, *_sealed_values(incident), entry.seq)


def record_window_withdrawn(session: Session, ledger: Ledger, incident: Incident, actor: str) -> None:
    """The ``incident_changed`` entry that says an incident whose seal does not hold has no footage
    window any more (the service withdrew it): custody agrees with the row's window, but nothing
    the database says of its site is recorded, nor is the row sealed again."""
    subject = incident_subject(reach_secret(ledger.key), incident.id)
    window = window_record(None, None, None)
    details: dict[str, object] = {"incident_id": incident.id, "window": window, "withdrawn": True}
    ledger.append(session, CustodyAction.INCIDENT_CHANGED, actor, item_id=subject, details=details)
