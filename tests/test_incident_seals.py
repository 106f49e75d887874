"""What decides who reads an incident and what its footage window links is checked where incidents
are read and windows followed, not only by ``evidence verify``, on both databases: an incident moved
to another site by SQL is listed, streamed and exported to none of that site's managers; a window or
wearer set by SQL links no clip (as clips arrive, when the window is followed, when an alarm joins);
an administrator's change of anything else does not seal what SQL wrote; the rows are sealed
(``chain_of_custody.incident_seals``), ``evidence verify`` names a broken seal, and ``evidence
upgrade-seals`` adopts incidents opened before seals, where the ledger bears them out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents.models import Incident, IncidentLink
from incidents.service import (
    IncidentDraft,
    auto_link_clip,
    create_incident,
    link_evidence,
    link_overlapping_clips,
    open_or_join_incident_for_wearer,
)
from ingest.cli import app
from ingest.settings import get_settings
from tests.conftest import settings_env
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
WINDOW = {"wearer": "S-N", "window_start": T0 - timedelta(hours=1), "window_end": T0 + timedelta(hours=1)}


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


def _incident(services: Any, site: str = "NORTH", **fields: Any) -> str:
    """An incident opened as the service opens one (recorded on custody and sealed)."""
    with services.db.session() as session:
        draft = IncidentDraft(
            category="physical_assault", occurred_at=T0, site=site, title="Ward 7", **fields
        )
        return create_incident(session, draft, "user:seed", ledger=services.ledger).id


def _links(services: Any, incident_id: str) -> set[str]:
    with services.db.session() as session:
        return set(
            session.scalars(
                select(IncidentLink.target_id).where(
                    IncidentLink.incident_id == incident_id, IncidentLink.unlinked_at.is_(None)
                )
            )
        )


def _cli(services: Any, *args: str) -> Any:
    env = settings_env(services.settings)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()


class SouthManager:
    """What the SOUTH security manager reaches of a NORTH incident with a NORTH nurse's clip linked."""

    def __init__(self, live: Any) -> None:
        self.api, self.s, self.admin = f"{live.url}/api/v1", live.services, live.admin()
        staff(self.s, "S-N", "nurse", "NORTH")
        user(self.s, "south_mgr", "security_manager", "SOUTH")
        self.clip = store_item(self.s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=2))
        self.incident = _incident(self.s)
        with self.s.db.session() as session:
            link_evidence(session, self.s.ledger, self.incident, self.clip.id, "user:seed", "on the ward")

    def reaches(self) -> dict[str, bool]:
        """Whether each way into the incident reaches it, asked after signing in afresh."""
        headers = bearer(self.s, "south_mgr")
        listed = httpx.get(f"{self.api}/incidents", headers=headers)
        assert listed.status_code == 200, listed.text
        one = httpx.get(f"{self.api}/incidents/{self.incident}", headers=headers)
        reason = {"reason": "reviewing the assault on ward 7"}
        streamed = httpx.get(f"{self.api}/evidence/{self.clip.id}/content", params=reason, headers=headers)
        return {
            "list": self.incident in {i["id"] for i in listed.json()},
            "incident": one.status_code == 200,
            "stream": streamed.status_code == 200,
        }

    def export(self) -> httpx.Response:
        return httpx.post(
            f"{self.api}/incidents/{self.incident}/exports", json={}, headers=bearer(self.s, "south_mgr")
        )

    def patch(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.patch(f"{self.api}/incidents/{self.incident}", json=body, headers=self.admin)


NOWHERE = {"list": False, "incident": False, "stream": False}


@pytest.fixture
def south(live: Any) -> SouthManager:
    return SouthManager(live)


def test_an_incident_moved_to_another_site_in_the_database_reaches_none_of_its_managers(
    south: SouthManager,
) -> None:
    assert south.reaches() == NOWHERE
    _sql(south.s, update(Incident).where(Incident.id == south.incident).values(site="SOUTH"))
    assert south.reaches() == NOWHERE
    r = south.export()
    assert r.status_code == 404, r.text


def test_an_incident_of_the_managers_own_site_reaches_them(south: SouthManager) -> None:
    """The control: moved by an administrator through the service, it is the SOUTH manager's."""
    r = south.patch({"site": "SOUTH"})
    assert r.status_code == 200, r.text
    assert south.reaches() == {"list": True, "incident": True, "stream": True}
    assert south.export().status_code == 202


def test_an_administrators_other_change_does_not_seal_what_the_database_says(south: SouthManager) -> None:
    """A title-only change of a moved row would seal the move: refused until an administrator
    restates the site and window, which seals what they said and says so on custody."""
    _sql(south.s, update(Incident).where(Incident.id == south.incident).values(site="SOUTH"))
    r = south.patch({"title": "Ward 7, bay 2"})
    assert r.status_code == 409 and r.json()["reason"] == "incident_seal_broken", r.text
    assert south.reaches() == NOWHERE
    restated = {"site": "NORTH", "wearer": None, "window_start": None, "window_end": None}
    r = south.patch(restated)
    assert r.status_code == 200, r.text
    assert south.reaches() == NOWHERE  # NORTH again, sealed as the administrator said
    assert south.patch({"title": "Ward 7, bay 2"}).status_code == 200
    with south.s.db.session() as session:
        details = [
            json.loads(d)
            for d in session.scalars(
                select(CustodyEntry.details)
                .where(CustodyEntry.action == "incident_changed")
                .order_by(CustodyEntry.seq)
            )
        ]
    mine = [d for d in details if d["incident_id"] == south.incident]
    assert "resealed" in mine[-1] and mine[-1]["site"] == "NORTH", mine


def test_a_managers_change_of_a_moved_incident_is_refused(live: Any) -> None:
    """Only an administrator restates a row whose seal does not hold; the NORTH manager, whose
    site the row now says, may not change it at all (it is not theirs: missing), window or title."""
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    incident = _incident(s, "SOUTH")
    _sql(s, update(Incident).where(Incident.id == incident).values(site="NORTH"))
    for body in ({"wearer": None, "window_start": None, "window_end": None}, {"title": "mine now"}):
        r = httpx.patch(f"{live.url}/api/v1/incidents/{incident}", json=body, headers=bearer(s, "north_mgr"))
        assert r.status_code == 404, r.text


def _windowed_by_sql(services: Any) -> tuple[str, EvidenceItem]:
    """A NORTH incident opened without a window, given one over a NORTH nurse's clip by SQL."""
    staff(services, "S-N", "nurse", "NORTH")
    incident = _incident(services)
    _sql(services, update(Incident).where(Incident.id == incident).values(**WINDOW))
    clip = store_item(services, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=2))
    return incident, clip


def test_a_window_set_in_the_database_links_no_arriving_clip(services: Any) -> None:
    incident, clip = _windowed_by_sql(services)
    with services.db.session() as session:
        item = session.get(EvidenceItem, clip.id)
        assert item is not None
        assert auto_link_clip(session, services.ledger, item) == []
    assert _links(services, incident) == set()


def test_a_window_set_in_the_database_is_not_followed(services: Any) -> None:
    incident, _ = _windowed_by_sql(services)
    with services.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        assert link_overlapping_clips(session, services.ledger, row, "service:test") == []
    assert _links(services, incident) == set()


def test_a_wearer_set_in_the_database_is_not_followed(services: Any) -> None:
    """A sealed window of one wearer re-pointed at another by SQL follows nobody."""
    staff(services, "S-W", "porter", "NORTH")
    incident = _incident(services, **{**WINDOW, "wearer": "S-W"})
    staff(services, "S-N", "nurse", "NORTH")
    _sql(services, update(Incident).where(Incident.id == incident).values(wearer="S-N"))
    clip = store_item(services, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=2))
    with services.db.session() as session:
        item = session.get(EvidenceItem, clip.id)
        assert item is not None
        assert auto_link_clip(session, services.ledger, item) == []
    assert _links(services, incident) == set()


def alarm_for(services: Any, wearer: str) -> tuple[str, bool]:
    """An alarm of ``wearer`` at NORTH a minute after T0 joins their open incident or opens one: its
    id, and whether it was opened."""
    with services.db.session() as session:
        joined, opened = open_or_join_incident_for_wearer(
            session,
            services.ledger,
            wearer,
            T0 + timedelta(minutes=1),
            "lone_worker_alarm",
            "NORTH",
            "service:alarms",
            timedelta(minutes=30),
        )
        return joined.id, opened


def test_an_alarm_does_not_join_an_incident_whose_window_was_set_in_the_database(services: Any) -> None:
    """The alarm's own incident is opened instead, with the service's window: the clip is linked
    there, never to the incident SQL pointed at the wearer."""
    incident, clip = _windowed_by_sql(services)
    joined_id, opened = alarm_for(services, "S-N")
    assert opened and joined_id != incident
    assert _links(services, incident) == set()
    assert _links(services, joined_id) == {clip.id}


def test_verify_names_an_incident_moved_in_the_database(services: Any) -> None:
    incident = _incident(services)
    _sql(services, update(Incident).where(Incident.id == incident).values(site="SOUTH"))
    r = _cli(services, "verify", "--json")
    assert r.exit_code != 0
    assert "incident_seal_broken" in r.output and f"incident {incident}" in r.output, r.output


def test_upgrade_seals_adopts_the_incidents_the_ledger_bears_out(south: SouthManager) -> None:
    """Incidents opened before seals have none: no site's managers read them until ``upgrade-seals
    --yes`` seals those whose site and window the custody record bears out, and not one moved."""
    user(south.s, "north_mgr", "security_manager", "NORTH")
    moved = _incident(south.s)
    _sql(south.s, update(Incident).values(seal=None))
    _sql(south.s, update(Incident).where(Incident.id == moved).values(site="SOUTH"))
    north = bearer(south.s, "north_mgr")
    listed_ids = {i["id"] for i in httpx.get(f"{south.api}/incidents", headers=north).json()}
    assert south.incident not in listed_ids
    listed = _cli(south.s, "upgrade-seals")
    assert "seal-incidents" in listed.output and f"incident {south.incident}" in listed.output, listed.output
    done = _cli(south.s, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # a step refused a row: the moved incident
    assert f"incident {moved}" in done.output and "REFUSED" in done.output
    north = bearer(south.s, "north_mgr")
    listed_ids = {i["id"] for i in httpx.get(f"{south.api}/incidents", headers=north).json()}
    assert south.incident in listed_ids and moved not in listed_ids
    assert south.reaches() == NOWHERE
