"""Download links last only as long as their issuer's authority, and only those who answer for the
incident's disclosures revoke them (both databases, through the real routes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from accounts.models import User
from incidents.models import Incident
from incidents.service import (
    IncidentDraft,
    assign_investigator,
    create_incident,
    link_evidence,
    unassign_investigator,
)
from tests.conftest import wait_for
from tests.test_incidents_kit import actions, assigned_incident, bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _ready(api: str, export_id: str, headers: dict[str, str]) -> None:
    def ready() -> bool:
        got = httpx.get(f"{api}/exports/{export_id}", headers=headers).json()
        assert got["status"] != "failed", got
        return bool(got["status"] == "ready")

    wait_for(ready, 60, 0.1, "the export to be ready")


def test_a_link_stops_with_its_issuers_access_and_only_those_answerable_revoke(live: Any) -> None:
    s = live.services
    api = f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    ids = {name: user(s, name, "investigator") for name in ("inv1", "inv2", "inv3")}
    user(s, "mgr_north", "security_manager", "NORTH")
    user(s, "mgr_south", "security_manager", "SOUTH")
    incident_id, copy = assigned_incident(s, T0, ids["inv1"], ids["inv2"])
    h = {name: bearer(s, name) for name in ("inv1", "inv2", "inv3", "mgr_north", "mgr_south")}
    r = httpx.post(f"{api}/incidents/{incident_id}/exports", json={}, headers=h["inv1"])
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]
    _ready(api, export_id, h["inv1"])

    def issue(who: str) -> dict[str, Any]:
        r = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=h[who])
        assert r.status_code == 201, r.text
        return dict(r.json())

    def serves(link: dict[str, Any]) -> int:
        got = httpx.get(f"{live.url}{link['path']}")
        if got.status_code == 200:
            assert got.content[:2] == b"PK"
        else:
            assert got.json()["reason"] == "link_gone", got.text
            assert httpx.get(f"{live.url}{link['path']}/about").status_code == got.status_code
        return got.status_code

    def revoke(link: dict[str, Any], who: str) -> int:
        return httpx.delete(f"{api}/exports/{export_id}/links/{link['id']}", headers=h[who]).status_code

    first, second, third = issue("inv1"), issue("inv1"), issue("inv2")
    assert serves(first) == serves(second) == serves(third) == 200

    # The issuer is taken off the incident: their links stop; another's link still serves.
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        unassign_investigator(session, s.ledger, row, ids["inv1"], "user:seed")
    assert serves(first) == 410 and serves(third) == 200
    # ...and they may still take back what they handed out (recorded in custody, by them).
    assert revoke(second, "inv1") == 204
    # Nobody else who does not answer for the incident may revoke a link of it.
    assert revoke(third, "inv1") == 404  # no longer assigned, and not theirs
    assert revoke(third, "inv3") == 404  # an exporter, never assigned
    assert revoke(third, "mgr_south") == 404  # a security manager of another site
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        assign_investigator(session, s.ledger, row, ids["inv1"], "user:seed")
    assert serves(first) == 200  # the issuer's access is back, and so is the link
    assert revoke(first, "mgr_north") == 204  # the incident's site's security manager
    assert serves(first) == 410

    # The issuer is deactivated: their link stops.
    with s.db.session() as session:
        session.execute(update(User).where(User.id == ids["inv2"]).values(active=False))
    assert serves(third) == 410

    with s.db.session() as session:
        from chain_of_custody.ledger import Ledger

        revoked = [
            (e.body.actor, json.loads(e.body.details)["link"])
            for e in Ledger.item_entries(session, export_id)
            if e.body.action == "link_revoked"
        ]
    assert revoked == [("user:inv1", second["id"]), ("user:mgr_north", first["id"])]
    assert "link_revoked" in actions(s, export_id)


def test_a_link_row_edited_in_the_database_hands_out_nothing(live: Any) -> None:
    """A revoked link put back in the database, or a link handed to another issuer there (to outlive
    its issuer's access), is refused: custody says who issued it, for whom, and that it was revoked."""
    from incidents.export.models import ExportLink

    s = live.services
    api = f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv1", "investigator")
    user(s, "mgr_north", "security_manager", "NORTH")
    incident_id, copy = assigned_incident(s, T0, inv)
    h = bearer(s, "inv1")
    r = httpx.post(f"{api}/incidents/{incident_id}/exports", json={}, headers=h)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]
    _ready(api, export_id, h)
    links = [
        httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=h).json()
        for _ in range(2)
    ]
    assert all(httpx.get(f"{live.url}{link['path']}").status_code == 200 for link in links)
    revoked, handed = links
    assert httpx.delete(f"{api}/exports/{export_id}/links/{revoked['id']}", headers=h).status_code == 204
    with s.db.session() as session:
        session.execute(
            update(ExportLink).where(ExportLink.id == revoked["id"]).values(revoked_at=None, revoked_by=None)
        )
        session.execute(
            update(ExportLink).where(ExportLink.id == handed["id"]).values(created_by="user:mgr_north")
        )
    got = httpx.get(f"{live.url}{revoked['path']}")
    assert got.status_code == 410 and got.json()["reason"] == "link_gone", got.text
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        unassign_investigator(session, s.ledger, row, inv, "user:seed")  # the real issuer's access ends
    got = httpx.get(f"{live.url}{handed['path']}")
    assert got.status_code == 410 and got.json()["reason"] == "link_gone", got.text


def test_an_exhibit_reference_edited_in_the_database_is_not_packaged(live: Any) -> None:
    """A package names each item's exhibit reference as its custody gave it: a row swapped in the
    database (so that the clip seems to be another exhibit) makes the export fail, not a signed package saying so."""
    from incidents.models import ExhibitReference

    s = live.services
    api = f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv1", "investigator")
    copies = []
    for _ in range(2):
        clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
        copies.append(store_item(s, kind="redacted_clip", derived_from=clip.id))
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH"),
            "user:seed",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, inv, "user:seed")
        for copy in copies:
            link_evidence(session, s.ledger, incident.id, copy.id, "user:seed", "the redacted copy")
        incident_id = incident.id
    with s.db.session() as session:
        row = session.query(ExhibitReference).filter(ExhibitReference.item_id == copies[1].id).one()
        row.reference = row.series + "/9"
    h = bearer(s, "inv1")
    r = httpx.post(f"{api}/incidents/{incident_id}/exports", json={}, headers=h)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]

    def settled() -> dict[str, Any] | None:
        got = dict(httpx.get(f"{api}/exports/{export_id}", headers=h).json())
        return got if got["status"] in ("failed", "ready") else None

    done = wait_for(settled, 60, 0.1, "the export to settle")
    assert done["status"] == "failed" and "exhibit reference" in (done["error"] or ""), done
