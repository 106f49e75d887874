"""Incident scope over HTTP on both databases: outside your scope an incident and its evidence do not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_incidents_kit import bearer, login, staff, store_item, user


def _setup(live):  # type: ignore[no-untyped-def]
    s = live.services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-S", "porter", "SOUTH")
    ids = {
        name: user(s, name, role, site)
        for name, role, site in (
            ("north_mgr", "security_manager", "NORTH"),
            ("south_mgr", "security_manager", "SOUTH"),
            ("inv", "investigator", None),
            ("other_inv", "investigator", None),
            ("op", "operator", None),
            ("aud", "auditor", None),
        )
    }
    linked = store_item(s, wearer="S-N")
    redacted = store_item(s, kind="redacted_clip", derived_from=linked.id)
    unlinked_north = store_item(s, wearer="S-N")
    unlinked_south = store_item(s, wearer="S-S")
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(
                category="physical_assault", occurred_at=datetime.now(UTC), site="NORTH", title="assault"
            ),
            "user:north_mgr",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, ids["inv"], "user:north_mgr")
        link_evidence(session, s.ledger, incident.id, linked.id, "user:north_mgr", "shows the assault")
        ref, incident_id = incident.reference, incident.id
    headers = {name: bearer(s, name) for name in ids}
    headers["north_mgr"] = login(live.url, "north_mgr")  # the real login path works for these users too
    return s, ids, headers, ref, incident_id, linked, redacted, unlinked_north, unlinked_south


def test_out_of_scope_gets_404_for_incident_and_evidence(live) -> None:  # type: ignore[no-untyped-def]
    s, ids, h, ref, incident_id, linked, redacted, north, south = _setup(live)
    api = f"{live.url}/api/v1"
    incident_urls = [
        f"{api}/incidents/{incident_id}",
        f"{api}/incidents/{ref}",
        f"{api}/incidents/{ref.lower()}",
        f"{api}/incidents/{incident_id}/timeline",
    ]
    evidence_urls = [
        f"{api}/evidence/{item}{suffix}"
        for item in (linked.id, redacted.id)
        # An original is read with a stated reason (recorded on the read's custody entry).
        for suffix in ("", "/custody", "/content?reason=checking+the+incident", "/retention")
    ]
    for who in ("north_mgr", "inv"):
        for url in incident_urls + evidence_urls:
            assert httpx.get(url, headers=h[who]).status_code == 200, (who, url)
    for who in ("south_mgr", "other_inv"):
        for url in incident_urls + evidence_urls:
            r = httpx.get(url, headers=h[who])
            assert r.status_code == 404, (who, url, r.status_code)
        # The same 404 as for something that does not exist at all: nothing to tell them apart.
        missing = httpx.get(f"{api}/incidents/INC-2026-999999", headers=h[who])
        assert (
            missing.status_code == 404
            and missing.json() == httpx.get(incident_urls[1], headers=h[who]).json()
        )
        assert httpx.get(f"{api}/incidents", headers=h[who]).json() == []
        listed = {i["id"] for i in httpx.get(f"{api}/evidence", headers=h[who]).json()}
        assert linked.id not in listed and redacted.id not in listed
        r = httpx.patch(f"{api}/incidents/{incident_id}", json={"title": "x"}, headers=h[who])
        assert r.status_code == 404
        r = httpx.post(
            f"{api}/incidents/{incident_id}/links",
            json={"kind": "evidence", "target_id": north.id, "reason": "trying"},
            headers=h[who],
        )
        assert r.status_code == 404
    # Operators never see incidents or evidence; auditors see evidence metadata and custody, never media.
    assert httpx.get(incident_urls[0], headers=h["op"]).status_code == 403
    assert httpx.get(evidence_urls[0], headers=h["op"]).status_code == 403
    assert httpx.get(incident_urls[0], headers=h["aud"]).status_code == 403
    assert httpx.get(f"{api}/evidence/{linked.id}/custody", headers=h["aud"]).status_code == 200
    assert httpx.get(f"{api}/evidence/{linked.id}/content", headers=h["aud"]).status_code == 403


def test_site_footage_and_assignment_decide_evidence_scope(live) -> None:  # type: ignore[no-untyped-def]
    s, ids, h, ref, incident_id, linked, redacted, north, south = _setup(live)
    api = f"{live.url}/api/v1"
    # A security manager finds their site's unlinked footage, to link it; not another site's.
    listed = {i["id"] for i in httpx.get(f"{api}/evidence", headers=h["north_mgr"]).json()}
    assert {linked.id, redacted.id, north.id} <= listed and south.id not in listed
    assert httpx.get(f"{api}/evidence/{south.id}", headers=h["north_mgr"]).status_code == 404
    # An investigator sees only what is linked to their incidents, so cannot link footage they cannot see.
    listed = {i["id"] for i in httpx.get(f"{api}/evidence", headers=h["inv"]).json()}
    assert listed == {linked.id, redacted.id}
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        json={"kind": "evidence", "target_id": north.id, "reason": "seen on camera"},
        headers=h["inv"],
    )
    assert r.status_code == 404
    # Once the manager links it, the investigator sees it.
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        json={"kind": "evidence", "target_id": north.id, "reason": "seen on camera"},
        headers=h["north_mgr"],
    )
    assert r.status_code == 201, r.text
    assert httpx.get(f"{api}/evidence/{north.id}", headers=h["inv"]).status_code == 200
    # A security manager cannot open an incident at another site.
    r = httpx.post(
        f"{api}/incidents",
        json={"category": "theft", "occurred_at": datetime.now(UTC).isoformat(), "site": "NORTH"},
        headers=h["south_mgr"],
    )
    assert r.status_code == 403
    # Unassigned, the investigator loses the incident and its evidence at once.
    r = httpx.delete(f"{api}/incidents/{ref}/investigators/{ids['inv']}", headers=h["north_mgr"])
    assert r.status_code == 204
    assert httpx.get(f"{api}/incidents/{ref}", headers=h["inv"]).status_code == 404
    assert httpx.get(f"{api}/evidence/{linked.id}/content", headers=h["inv"]).status_code == 404
    # An investigator who opens an incident is assigned to it.
    r = httpx.post(
        f"{api}/incidents",
        json={
            "category": "verbal_abuse",
            "occurred_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            "site": "SOUTH",
        },
        headers=h["other_inv"],
    )
    assert r.status_code == 201 and [i["username"] for i in r.json()["investigators"]] == ["other_inv"]
    assert httpx.get(f"{api}/incidents/{r.json()['reference']}", headers=h["other_inv"]).status_code == 200
