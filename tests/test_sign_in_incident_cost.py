"""A security manager's sign-in checks none of their site's incidents: ``GET /api/v1/me`` costs them
no incident seal and the same SQL statements with one incident at their site as with many, on both
databases. The sealed incidents are read when a request asks for them (the incident list), once in
that request, and afresh in the next: an incident moved to their site by SQL stays hidden."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update

import chain_of_custody.incident_seals as incident_seals
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.site_incidents import SiteIncidents
from incidents.models import Incident
from incidents.service import IncidentDraft, create_incident
from tests.test_incident_seals import T0, _incident
from tests.test_incidents_kit import bearer, user


class Costs:
    """The incident seals checked and the SQL statements run on the service's database."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, engine: Any) -> None:
        self.seals = self.statements = 0
        checks = incident_seals.incident_holds

        def counted(*args: Any) -> bool:
            self.seals += 1
            return checks(*args)

        monkeypatch.setattr(incident_seals, "incident_holds", counted)
        event.listen(engine, "before_cursor_execute", self._statement)

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def of(self, url: str, headers: dict[str, str]) -> tuple[Any, int, int]:
        """The response to a GET and the seals and statements it cost."""
        seals, statements = self.seals, self.statements
        r = httpx.get(url, headers=headers, params={"limit": 500})
        assert r.status_code == 200, r.text
        return r.json(), self.seals - seals, self.statements - statements


@pytest.fixture
def costs(live: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Costs]:
    found = Costs(monkeypatch, live.services.db.engine)
    yield found
    event.remove(live.services.db.engine, "before_cursor_execute", found._statement)


def test_me_checks_no_incident_seal_however_many_incidents_the_site_has(live: Any, costs: Costs) -> None:
    s, api = live.services, f"{live.url}/api/v1"
    user(s, "south_mgr", "security_manager", "SOUTH")
    first = _incident(s, "SOUTH")
    headers = bearer(s, "south_mgr")
    me, seals, few = costs.of(f"{api}/me", headers)
    assert me["role"] == "security_manager" and seals == 0, (me, seals)

    more = {_incident(s, "SOUTH") for _ in range(24)}
    north = _incident(s, "NORTH")
    _, seals, many = costs.of(f"{api}/me", headers)
    assert seals == 0, f"/me checked {seals} incident seals"
    assert many == few, f"/me ran {many} SQL statements with 25 incidents at the site, {few} with one"

    # The list reads them, each seal checked once in the request, and again in the next.
    for _ in range(2):
        listed, seals, _ = costs.of(f"{api}/incidents", headers)
        assert {i["id"] for i in listed} == {first, *more}
        assert seals == 25, f"the list checked {seals} seals, not one per incident of the site"

    # Still checked: one moved to the site by SQL is no more the manager's than before.
    with s.db.session() as session:
        session.execute(update(Incident).where(Incident.id == north).values(site="SOUTH"))
    listed, _, _ = costs.of(f"{api}/incidents", headers)
    assert north not in {i["id"] for i in listed}
    assert httpx.get(f"{api}/incidents/{north}", headers=headers).status_code == 404


def test_the_sealed_incidents_are_read_in_the_transaction_in_use_and_kept(services: Any) -> None:
    """Read inside a ``Database`` block, through its session (an incident opened in that transaction,
    not committed yet, is among them); read once and kept; outside any block, through a read-only
    session of their own."""
    secret = reach_secret(services.key)
    with services.db.session() as session:
        opened = create_incident(
            session,
            IncidentDraft(category="theft", occurred_at=T0, site="SOUTH", title="Ward 2"),
            "user:seed",
            ledger=services.ledger,
        ).id
        inside = SiteIncidents(services.db.engine, secret, "SOUTH")
        assert not inside.read
        assert inside() == {opened} and inside.read
        session.execute(update(Incident).where(Incident.id == opened).values(site="NORTH"))
        assert inside() == {opened}, "read again within the request"
    outside = SiteIncidents(services.db.engine, secret, "SOUTH")
    assert outside() == frozenset()
    assert SiteIncidents(services.db.engine, secret, "NORTH")() == frozenset(), "moved by SQL: its seal fails"


def test_a_read_only_block_is_read_through_too(services: Any) -> None:
    """Inside a ``Database.reading`` block (its engine carries options of its own) the incidents are
    read through that block's connection: no second one is taken from the pool."""
    taken: list[object] = []

    def checkout(*_: Any) -> None:
        taken.append(object())

    with services.db.reading() as session:
        session.execute(select(1))
        event.listen(services.db.engine, "checkout", checkout)
        try:
            assert SiteIncidents(services.db.engine, reach_secret(services.key), "SOUTH")() == frozenset()
        finally:
            event.remove(services.db.engine, "checkout", checkout)
    assert taken == [], "a second connection was taken"
