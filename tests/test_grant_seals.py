"""Incident assignments and export jobs planted or altered in the database grant nothing.

An active row of ``incident_assignments`` opens an incident and its evidence to an investigator, and
an ``export_jobs`` row decides what its download links hand out; each carries a seal
(``incidents.grants``): an HMAC, under a secret derived from the service key, over what it grants.
Through the real server, on both databases: an assignment inserted by SQL (or an ended one made
active again, or one moved to another incident) opens nothing, by list, by stream or by export; an
export job's originals switched off by SQL lets nobody hand out its originals; assignment,
unassignment and export through the API work as before; ``evidence verify`` names both, and
``evidence seal-grants`` seals rows made before seals only where the custody ledger bears them out.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from chain_of_custody.verify import VerifyOptions, verify_service
from incidents.export.models import ExportJob
from incidents.models import Incident, IncidentAssignment
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.conftest import wait_for
from tests.test_console_kit import session_client
from tests.test_incidents_kit import PASSWORD, bearer, plant_assignment, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
READ = "?reason=checking+the+incident"


def _incident(s: Any, *items: str) -> str:
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH"),
            "user:seed",
            ledger=s.ledger,
        )
        for item in items:
            link_evidence(session, s.ledger, incident.id, item, "user:seed", "shows it")
        return incident.id


def _seal_problems(s: Any) -> list[tuple[str, str]]:
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key, VerifyOptions(check_objects=False))
    kinds = ("assignment_seal_broken", "export_job_seal_broken")
    return sorted((p.kind, p.where) for p in report.problems if p.kind in kinds)


def _reach(api: str, headers: dict[str, str], incident_id: str, item_id: str) -> dict[str, bool]:
    """What the investigator reaches of the incident and its clip: listed, opened, streamed, exported."""
    incidents = httpx.get(f"{api}/incidents", headers=headers, timeout=15)
    assert incidents.status_code == 200, incidents.text
    evidence = httpx.get(f"{api}/evidence", headers=headers, timeout=15)
    assert evidence.status_code == 200, evidence.text
    return {
        "incident listed": incident_id in {i["id"] for i in incidents.json()},
        "incident opened": httpx.get(f"{api}/incidents/{incident_id}", headers=headers).status_code == 200,
        "evidence listed": item_id in {i["id"] for i in evidence.json()},
        "evidence streamed": httpx.get(f"{api}/evidence/{item_id}/content{READ}", headers=headers).status_code
        == 200,
        "export asked": httpx.post(
            f"{api}/incidents/{incident_id}/exports", json={}, headers=headers
        ).status_code
        == 202,
    }


NOTHING = dict.fromkeys(
    ("incident listed", "incident opened", "evidence listed", "evidence streamed", "export asked"), False
)


def test_an_assignment_planted_by_sql_opens_nothing(live, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv1", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    plant_assignment(s, incident_id, inv, T0)
    headers = bearer(s, "inv1")
    with caplog.at_level(logging.WARNING, logger="incidents"):
        assert _reach(api, headers, incident_id, clip.id) == NOTHING
    refused = [r for r in caplog.records if "incident assignment refused" in r.getMessage()]
    assert refused and all(getattr(r, "user_id", None) == inv for r in refused)
    assert _seal_problems(s) == [("assignment_seal_broken", f"incident {incident_id} / user id {inv}")]
    # Assigned through the API afterwards, the planted row is ended and a sealed one opens the incident.
    user(s, "north_mgr", "security_manager", "NORTH")
    r = httpx.put(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=bearer(s, "north_mgr"))
    assert r.status_code == 200, r.text
    assert _reach(api, headers, incident_id, clip.id) == dict.fromkeys(NOTHING, True)
    assert _seal_problems(s) == []


def test_an_ended_or_moved_assignment_made_active_by_sql_opens_nothing(live) -> None:  # type: ignore[no-untyped-def]
    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    user(s, "north_mgr", "security_manager", "NORTH")
    inv = user(s, "inv1", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    other = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id, elsewhere = _incident(s, clip.id), _incident(s, other.id)
    mgr, headers = bearer(s, "north_mgr"), bearer(s, "inv1")
    assert httpx.put(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 200
    assert httpx.delete(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 204
    table = IncidentAssignment.__table__
    with s.db.session() as session:  # taken off, then put back by SQL
        session.execute(update(table).values(unassigned_at=None, unassigned_by=None))
    assert _reach(api, headers, incident_id, clip.id) == NOTHING
    assert _seal_problems(s) == [("assignment_seal_broken", f"incident {incident_id} / user id {inv}")]
    with s.db.session() as session:  # an assignment to one incident moved to another
        session.execute(update(table).values(unassigned_at=T0))
        assign_investigator(session, s.ledger, session.get_one(Incident, incident_id), inv, "user:seed")
        session.execute(update(table).where(table.c.unassigned_at.is_(None)).values(incident_id=elsewhere))
    assert _reach(api, headers, elsewhere, other.id) == NOTHING
    assert _reach(api, headers, incident_id, clip.id)["incident opened"] is False


def test_assignment_unassignment_and_export_through_the_api_work_as_before(live) -> None:  # type: ignore[no-untyped-def]
    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    user(s, "north_mgr", "security_manager", "NORTH")
    inv = user(s, "inv1", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    mgr, headers = bearer(s, "north_mgr"), bearer(s, "inv1")
    assert _reach(api, headers, incident_id, clip.id) == NOTHING
    assert httpx.put(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 200
    assert _reach(api, headers, incident_id, clip.id) == dict.fromkeys(NOTHING, True)
    export_id = httpx.get(f"{api}/incidents/{incident_id}/exports", headers=headers).json()[0]["id"]
    wait_for(
        lambda: httpx.get(f"{api}/exports/{export_id}", headers=headers).json()["status"] == "ready",
        60,
        0.1,
        "the export to be ready",
    )
    r = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=headers)
    assert r.status_code == 201, r.text
    assert httpx.get(f"{live.url}{r.json()['path']}").status_code == 200
    assert _seal_problems(s) == []
    assert httpx.delete(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 204
    assert _reach(api, headers, incident_id, clip.id) == NOTHING
    assert _seal_problems(s) == []


def _ready_export(s: Any, api: str, incident_id: str, headers: dict[str, str], body: dict[str, Any]) -> str:
    r = httpx.post(f"{api}/incidents/{incident_id}/exports", json=body, headers=headers)
    assert r.status_code == 202, r.text
    export_id = str(r.json()["id"])
    wait_for(
        lambda: httpx.get(f"{api}/exports/{export_id}", headers=headers).json()["status"] == "ready",
        60,
        0.1,
        "the export to be ready",
    )
    return export_id


def test_originals_switched_off_by_sql_are_handed_out_by_nobody(live) -> None:  # type: ignore[no-untyped-def]
    """A package of originals may be handed out only by someone who may release originals: an
    investigator of the incident may not, and switching the job's originals off by SQL (the built
    package still holds them) does not let them; a link already given stops serving too."""
    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    user(s, "north_mgr", "security_manager", "NORTH")
    inv = user(s, "inv1", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    mgr, headers = bearer(s, "north_mgr"), bearer(s, "inv1")
    assert httpx.put(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 200
    body = {"include_originals": True, "reason": "the police asked for the original footage"}
    export_id = _ready_export(s, api, incident_id, mgr, body)
    given = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=mgr)
    assert given.status_code == 201, given.text
    path = given.json()["path"]
    assert httpx.get(f"{live.url}{path}").status_code == 200
    asked = {"recipient": "a friend"}
    assert httpx.post(f"{api}/exports/{export_id}/links", json=asked, headers=headers).status_code == 403
    table = ExportJob.__table__
    with s.db.session() as session:
        session.execute(update(table).where(table.c.id == export_id).values(include_originals=False))
    assert httpx.post(f"{api}/exports/{export_id}/links", json=asked, headers=headers).status_code == 403
    assert httpx.get(f"{live.url}{path}").status_code == 410
    assert _seal_problems(s) == [("export_job_seal_broken", f"export {export_id}")]


def test_a_job_widened_by_sql_hands_nothing_out(live) -> None:  # type: ignore[no-untyped-def]
    """The items and the requester's role a job was asked with are sealed too."""
    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv1", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    with s.db.session() as session:
        assign_investigator(session, s.ledger, session.get_one(Incident, incident_id), inv, "user:seed")
    headers = bearer(s, "inv1")
    export_id = _ready_export(s, api, incident_id, headers, {})
    given = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=headers)
    assert given.status_code == 201, given.text
    path = given.json()["path"]
    assert httpx.get(f"{live.url}{path}").status_code == 200
    table = ExportJob.__table__
    with s.db.session() as session:
        session.execute(update(table).where(table.c.id == export_id).values(requester_role="admin"))
    assert httpx.get(f"{live.url}{path}").status_code == 410
    assert _seal_problems(s) == [("export_job_seal_broken", f"export {export_id}")]


def test_a_planted_assignment_names_nobody_as_assigned_and_revokes_nothing(live) -> None:  # type: ignore[no-untyped-def]
    """Who is shown as assigned (the incident's investigators, the search by assignee, the console's
    filter of investigators) and who may revoke a link of the incident count sealed assignments
    only: a row planted by SQL names nobody and lets nobody revoke."""
    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    user(s, "north_mgr", "security_manager", "NORTH")
    inv = user(s, "inv1", "investigator")
    planted = user(s, "inv2", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    mgr = bearer(s, "north_mgr")
    assert httpx.put(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 200
    plant_assignment(s, incident_id, planted, T0)
    shown = httpx.get(f"{api}/incidents/{incident_id}", headers=mgr)
    assert shown.status_code == 200, shown.text
    assert [p["user_id"] for p in shown.json()["investigators"]] == [inv]
    reference = shown.json()["reference"]

    def found_by(assignee: int) -> list[str]:
        r = httpx.get(f"{api}/incidents", params={"assigned_to": assignee}, headers=mgr)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()]

    assert (found_by(inv), found_by(planted)) == ([incident_id], [])
    client, _ = session_client(live.url, "inv1", PASSWORD)
    try:
        page = client.get("/incidents")
        assert page.status_code == 200, page.text
        assert 'value="' + str(inv) + '"' in page.text and "(inv1)" in page.text
        assert "(inv2)" not in page.text
        listed = client.get("/incidents", params={"investigator": str(planted)})
        assert listed.status_code == 200 and reference not in listed.text
        assert reference in client.get("/incidents", params={"investigator": str(inv)}).text
    finally:
        client.close()
    export_id = _ready_export(s, api, incident_id, mgr, {})
    link = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=mgr)
    assert link.status_code == 201, link.text
    revoke = f"{api}/exports/{export_id}/links/{link.json()['id']}"
    assert httpx.delete(revoke, headers=bearer(s, "inv2")).status_code == 404
    assert httpx.delete(revoke, headers=bearer(s, "inv1")).status_code == 204


def test_seal_grants_adopts_rows_the_ledger_bears_out_and_refuses_the_rest(  # type: ignore[no-untyped-def]
    cli_services: Any,
) -> None:
    from typer.testing import CliRunner

    from incidents.grants import unsealed_grants
    from ingest.cli import app

    s = cli_services
    staff(s, "S-N", "nurse", "NORTH")
    inv, planted = user(s, "inv1", "investigator"), user(s, "inv2", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    with s.db.session() as session:
        row = assign_investigator(session, s.ledger, session.get_one(Incident, incident_id), inv, "user:seed")
        genuine = row.id
    plant_assignment(s, incident_id, planted, T0)
    with s.db.session() as session:
        session.execute(update(IncidentAssignment.__table__).values(seal=None))  # as rows made before seals
    with s.db.session() as session:
        listed = {g.row_id: g for g in unsealed_grants(session, s.ledger)}
    assert listed.keys() == {str(genuine), str(genuine + 1)}
    assert listed[str(genuine)].refused is None and listed[str(genuine + 1)].refused
    runner = CliRunner()
    shown = runner.invoke(app, ["seal-grants"])
    assert shown.exit_code == 0, shown.output
    assert "1 grants would be sealed" in shown.output and "1 grants refused" in shown.output, shown.output
    with s.db.session() as session:  # listing sealed nothing
        assert len(unsealed_grants(session, s.ledger)) == 2
    done = runner.invoke(app, ["seal-grants", "--yes"])
    assert done.exit_code == 1 and "1 grants sealed" in done.output, done.output
    with s.db.session() as session:
        assert [g.row_id for g in unsealed_grants(session, s.ledger)] == [str(genuine + 1)]
        sealed = session.get_one(IncidentAssignment, genuine)
        assert sealed.seal
    assert _seal_problems(s) == [("assignment_seal_broken", f"incident {incident_id} / user id {planted}")]


def test_taking_off_a_planted_assignment_is_refused_not_recorded(live) -> None:  # type: ignore[no-untyped-def]
    """An assignment row inserted by SQL never assigned anyone: taking it off answers 409 with why,
    and writes no "unassigned" event or custody entry (on main: 204 and a normal "unassigned" entry,
    as if the service had assigned them). A sealed assignment is taken off as before."""
    import json

    from sqlalchemy import select

    from chain_of_custody.models import CustodyEntry
    from incidents.models import IncidentEvent

    s, api = live.services, f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    user(s, "north_mgr", "security_manager", "NORTH")
    planted, inv = user(s, "inv2", "investigator"), user(s, "inv1", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    incident_id = _incident(s, clip.id)
    plant_assignment(s, incident_id, planted, T0)
    mgr = bearer(s, "north_mgr")

    def recorded() -> tuple[list[str], list[str]]:
        with s.db.session() as session:
            events = session.scalars(
                select(IncidentEvent.kind).where(IncidentEvent.incident_id == incident_id)
            )
            details = session.scalars(
                select(CustodyEntry.details).where(CustodyEntry.action == "user_changed")
            )
            return list(events), [d for d in details if json.loads(d).get("assigned") is False]

    before = recorded()
    r = httpx.delete(f"{api}/incidents/{incident_id}/investigators/{planted}", headers=mgr)
    assert r.status_code == 409 and r.json()["reason"] == "assignment_seal_broken", r.text
    assert "written in the database" in r.json()["error"]
    assert recorded() == before
    assert _seal_problems(s) == [("assignment_seal_broken", f"incident {incident_id} / user id {planted}")]
    assert httpx.put(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 200
    assert httpx.delete(f"{api}/incidents/{incident_id}/investigators/{inv}", headers=mgr).status_code == 204
    assert len(recorded()[1]) == 1
