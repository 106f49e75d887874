"""What a security manager reads of incidents by figures and by links is checked against seals and
the custody record, not only the rows' columns, on both databases: an incident moved to the SOUTH
site by SQL is not counted in SOUTH's statistics (table or CSV), and an alarm's or a clip's link
moved by SQL to a SOUTH incident shows the SOUTH manager nothing of it (the incident's links in the
API and on its page, the linked alarms' facts, its timeline, the summary an export package carries)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from alarms.models import AlarmRecord, LoneWorkerVisit
from devices.lone_worker_wire import format_time
from incidents.export.models import ExportJob
from incidents.models import Incident, IncidentLink
from incidents.service import link_evidence
from tests.test_incident_seals import SouthManager, _incident
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_site_reads import South

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


def _statistics(live: Any, username: str) -> tuple[dict[str, Any], str]:
    """The user's statistics by site, as the table and as the CSV."""
    api, headers = f"{live.url}/api/v1/statistics", bearer(live.services, username)
    table = httpx.get(api, params={"by": "site"}, headers=headers)
    assert table.status_code == 200, table.text
    csv = httpx.get(api, params={"by": "site", "format": "csv"}, headers=headers)
    assert csv.status_code == 200, csv.text
    return table.json(), csv.text


def test_an_incident_moved_in_the_database_is_not_in_that_sites_statistics(live: Any) -> None:
    s = live.services
    s.settings.statistics_min_count, s.settings.statistics_rounding = 1, 1  # every count shown as it is
    user(s, "south_mgr", "security_manager", "SOUTH")
    incident = _incident(s, "NORTH")
    _sql(s, update(Incident).where(Incident.id == incident).values(site="SOUTH"))
    table, csv = _statistics(live, "south_mgr")
    assert table["total"] == 0 and table["rows"] == [], table
    assert csv.splitlines() == ["site,count", "total,0"], csv
    # The control: moved by an administrator through the service, it is counted at SOUTH.
    restated = {"site": "SOUTH", "wearer": None, "window_start": None, "window_end": None}
    r = httpx.patch(f"{live.url}/api/v1/incidents/{incident}", json=restated, headers=live.admin())
    assert r.status_code == 200, r.text
    table, csv = _statistics(live, "south_mgr")
    assert table["total"] == 1 and table["rows"] == [{"site": "SOUTH", "count": 1, "suppressed": False}]
    assert csv.splitlines() == ["site,count", "SOUTH,1", "total,1"], csv


@pytest.fixture
def south(live: Any) -> South:
    return South(live)


def _link(south: South, incident: str, kind: str, target: str) -> None:
    body = {"kind": kind, "target_id": target, "reason": "seen on the ward"}
    r = httpx.post(f"{south.api}/incidents/{incident}/links", json=body, headers=south.headers)
    assert r.status_code == 201, r.text


def _export_scope(south: South, incident: str) -> dict[str, Any]:
    """What the SOUTH manager's export package of the incident will hold (its job's scope)."""
    r = httpx.post(f"{south.api}/incidents/{incident}/exports", json={}, headers=south.headers)
    assert r.status_code == 202, r.text
    with south.s.db.session() as session:
        scope = session.scalar(select(ExportJob.scope).where(ExportJob.id == r.json()["id"]))
    assert scope is not None
    found: dict[str, Any] = json.loads(scope)
    return found


def test_links_moved_in_the_database_to_another_sites_incident_are_not_shown_there(south: South) -> None:
    """A NORTH alarm (its own NORTH incident) and a NORTH nurse's clip linked there: their link rows
    re-pointed by SQL at a SOUTH incident show the SOUTH manager neither, while the SOUTH alarm and
    clip linked there through the service show as ever."""
    body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "SOUTH"}
    r = httpx.post(f"{south.api}/incidents", json=body, headers=south.headers)
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    own_alarm, north_alarm = south.sos("LW-S"), south.sos("LW-N")
    own_clip = store_item(south.s, wearer="S-2", start=T0, stop=T0 + timedelta(minutes=1))
    north_clip = store_item(south.s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=1))
    _link(south, incident, "alarm", own_alarm)
    _link(south, incident, "evidence", own_clip.id)
    north_incident = httpx.get(f"{south.api}/alarms/{north_alarm}", headers=south.admin).json()["incident_id"]
    with south.s.db.session() as session:
        link_evidence(session, south.s.ledger, north_incident, north_clip.id, "user:seed", "on the ward")
    moved = (north_alarm, north_clip.id)
    _sql(
        south.s,
        update(IncidentLink).where(IncidentLink.target_id.in_(moved)).values(incident_id=incident),
    )

    view = south.get(f"/incidents/{incident}")
    assert {link["target_id"] for link in view["links"]} == {own_alarm, own_clip.id}, view["links"]
    page = south.page(f"/incidents/{incident}")
    assert own_alarm in page and own_clip.id in page
    assert not any(m in page for m in (*moved, "N-1")), "NORTH's alarm or clip on the SOUTH incident"
    for path in (f"/incidents/{incident}/timeline", f"/incidents/{incident}/history"):
        text = json.dumps(south.get(path))
        assert own_alarm in text and own_clip.id in text, path
        assert not any(m in text for m in moved), path
    scope = _export_scope(south, incident)
    assert scope["incident"]["linked_alarms"] == [own_alarm], scope["incident"]
    assert north_clip.id not in json.dumps(scope), scope


def test_a_linked_alarms_wearer_changed_in_the_database_is_not_shown_on_the_incident(south: South) -> None:
    """An alarm linked through the service stays listed, but a wearer written to its row by SQL is
    not printed as the alarm's on the SOUTH manager's incident page (its row's seal does not hold)."""
    body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "SOUTH"}
    r = httpx.post(f"{south.api}/incidents", json=body, headers=south.headers)
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    alarm = south.sos("LW-S")
    _link(south, incident, "alarm", alarm)
    assert "<td>Staff S-2</td>" in south.page(f"/incidents/{incident}")
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == alarm).values(wearer="N-1"))
    page = south.page(f"/incidents/{incident}")
    assert alarm in page and "N-1" not in page


def test_a_visit_moved_in_the_database_to_another_sites_device_is_not_shown_there(south: South) -> None:
    """A NORTH worker's visit (the address they gave) moved by SQL to SOUTH's device: the SOUTH
    manager's list of lone workers and the board's directory show SOUTH's device with no visit."""
    kit, end = south.kits["LW-N"], datetime.now(UTC) + timedelta(hours=2)
    body = {
        "action": "start",
        "visit_id": "V-N",
        "expected_end": format_time(end),
        "note": "12 Acacia Avenue",
    }
    assert south.s.alarms.handle(*kit.message("checkin", body)).outcome == "accepted"
    _sql(south.s, update(LoneWorkerVisit).where(LoneWorkerVisit.visit_id == "V-N").values(device_id="LW-S"))
    lone = {d["id"]: d for d in south.get("/lone-workers")}
    assert lone["LW-S"]["visit"] is None, lone["LW-S"]
    board = json.loads(south.page("/board/directory.json", device=["LW-S"]))
    assert board["devices"].keys() == {"LW-S"} and board["visits"] == {}, board
    # The control: the administrator (every site) still reads the row, as alarms of every site.
    r = httpx.get(f"{south.api}/lone-workers", headers=south.admin)
    assert {d["id"]: d for d in r.json()}["LW-S"]["visit"]["note"] == "12 Acacia Avenue"


def test_an_export_moved_in_the_database_to_another_sites_incident_is_not_shown_there(live: Any) -> None:
    """A package of a NORTH incident (its requester, reason, file name and hash) moved by SQL to a
    SOUTH incident: the SOUTH manager neither lists nor opens it there, nor finds it in that
    incident's disclosure log (API or page); the administrator, who reads every incident, still does."""
    from tests.test_cross_site_reads import cookie

    north = SouthManager(live)
    r = httpx.post(f"{north.api}/incidents/{north.incident}/exports", json={}, headers=north.admin)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]
    mine = bearer(north.s, "south_mgr")
    body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "SOUTH"}
    r = httpx.post(f"{north.api}/incidents", json=body, headers=mine)
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    _sql(north.s, update(ExportJob).where(ExportJob.id == export_id).values(incident_id=incident))

    listed = httpx.get(f"{north.api}/incidents/{incident}/exports", headers=mine)
    assert listed.status_code == 200 and listed.json() == [], listed.text
    assert httpx.get(f"{north.api}/exports/{export_id}", headers=mine).status_code == 404
    log = httpx.get(f"{north.api}/incidents/{incident}/disclosures", headers=mine)
    assert log.status_code == 200 and export_id not in log.text, log.text
    csv = httpx.get(f"{north.api}/incidents/{incident}/disclosures", params={"format": "csv"}, headers=mine)
    assert csv.status_code == 200 and export_id not in csv.text, csv.text
    page = httpx.get(f"{live.url}/incidents/{incident}/exports", headers=cookie(north.s, "south_mgr"))
    assert page.status_code == 200 and export_id not in page.text
    admin = httpx.get(f"{north.api}/incidents/{incident}/exports", headers=north.admin)
    assert [j["id"] for j in admin.json()] == [export_id], admin.text
