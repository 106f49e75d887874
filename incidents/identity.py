"""What identifies an incident and decides who sees it: its reference number, and its site and
footage window on the custody ledger.

A security manager sees the incidents of their site, and everything linked to them, so an incident's
site is recorded as a custody entry (``incident_changed``) when the incident is opened and whenever
it changes; ``evidence verify`` compares the row with the latest such entry
(``chain_of_custody.row_replay.incident_site_findings``). Its footage window (a wearer and a span)
has the service link that wearer's clips as they arrive, so the same entry records it, and every
change of it is one (``chain_of_custody.window_replay``).
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from chain_of_custody.ledger import Ledger
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


def record_site(
    session: Session, ledger: Ledger, incident: Incident, actor: str, *, created: bool = False
) -> None:
    """The ``incident_changed`` entry that says the incident's site and footage window, in the
    transaction that sets either."""
    details: dict[str, object] = {
        "incident_id": incident.id,
        "site": incident.site,
        "window": window_record(incident.wearer, incident.window_start, incident.window_end),
    }
    if created:
        details["created"] = True
    ledger.append(session, "incident_changed", actor, details=details)
