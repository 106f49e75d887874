"""An alarm's link is checked against custody with one index search, whatever the ledger holds of
other alarms (both databases): the access rule's look-up of an alarm's link steps is served by the
index on the alarm they name, not by a scan of every alarm's link steps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text

from incidents.access import alarm_link_on_custody, link_holds, link_on_custody
from incidents.models import IncidentLink
from incidents.service import IncidentDraft, create_incident, link_alarm

T0 = datetime(2026, 3, 6, 8, 0, tzinfo=UTC)


def _plan(session: Any, statement: Any) -> str:
    sql = str(statement.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}))
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL enable_seqscan = off"))  # a few rows: ask whether it can be used
        return "\n".join(r[0] for r in session.execute(text("EXPLAIN " + sql)))
    return "\n".join(str(r[-1]) for r in session.execute(text("EXPLAIN QUERY PLAN " + sql)))


def test_an_alarm_links_steps_are_looked_up_by_the_alarm(services: Any) -> None:
    with services.db.session() as session:
        draft = IncidentDraft(category="theft", occurred_at=T0, site="NORTH", title="plans")
        incident = create_incident(session, draft, "user:test", ledger=services.ledger)
        for n in range(3):
            link_alarm(session, services.ledger, incident.id, f"AL-{n}", "user:test", "seen on the board")
    with services.db.reading() as session:
        links = select(IncidentLink.target_id).where(IncidentLink.incident_id == incident.id)
        assert sorted(session.scalars(links.where(link_holds()))) == ["AL-0", "AL-1", "AL-2"]
        plan = _plan(session, links.where(alarm_link_on_custody()))
        assert "ix_custody_entries_alarm_link_steps" in plan, plan


def test_the_rules_are_built_once() -> None:
    """The clauses name no value of their own: every query shares one of each."""
    assert link_on_custody() is link_on_custody()
    assert alarm_link_on_custody() is alarm_link_on_custody()
    assert link_holds() is link_holds()
