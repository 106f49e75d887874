"""An alarm opens or joins an incident of its own site only, on both databases.

A red alarm joins its wearer's open incident from around the same time. Wearers move between sites
(a bank nurse, a porter lent to another hospital): an SOS from a NORTH device must not join the
SOUTH incident its wearer's earlier SOS opened there. Joined, the NORTH alarm would carry SOUTH's
incident id to NORTH's control room (``GET /alarms/{id}``, the console's alarm page), and SOUTH's
incident readers would see NORTH's alarm and its payload linked into their incident: on its page,
its timeline, the evidence list, an investigator's reads and its export package.

An alarm of no site (a device whose row's seal does not hold lends none) joins no incident of a
site; it opens one of its own."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import httpx
from sqlalchemy import select, update

from alarms.models import AlarmRecord
from devices.models import Device
from incidents.models import Incident
from incidents.service import assign_investigator
from tests.test_alarms_kit import enrol
from tests.test_cross_site_reads import cookie
from tests.test_grant_seals import _ready_export
from tests.test_incident_seals import _links
from tests.test_incidents_kit import bearer, user
from tests.test_lifecycle_seals import _row


def _sos(s: Any, kit: Any) -> str:
    result = s.alarms.handle(*kit.sos())
    assert result.outcome == "accepted" and result.alarm_id, result
    incident = _row(s, result.alarm_id).incident_id
    assert incident is not None, "an SOS opens or joins an incident"
    return str(result.alarm_id)


def _package(api: str, incident_id: str, headers: dict[str, str], url: str) -> bytes:
    """The incident's package with originals, as its recipient downloads it."""
    body = {"include_originals": True, "reason": "requested by the police"}
    export_id = _ready_export(None, api, incident_id, headers, body)
    link = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=headers)
    assert link.status_code in (200, 201), link.text
    return httpx.get(f"{url}{link.json()['path']}").content


def test_an_alarm_joins_no_incident_of_another_site(live: Any) -> None:
    s, api = live.services, f"{live.url}/api/v1"
    for name, role, site in (
        ("north_mgr", "security_manager", "NORTH"),
        ("south_mgr", "security_manager", "SOUTH"),
        ("operator", "operator", None),
    ):
        user(s, name, role, site)
    south_inv = user(s, "south_inv", "investigator")
    h = {n: bearer(s, n) for n in ("north_mgr", "south_mgr", "operator", "south_inv")}
    # The wearer works at SOUTH: their SOS there opens a SOUTH incident (its investigator assigned).
    south_kit = enrol(s, "LW-SOUTH", staff_id="S-X", site="SOUTH")
    south_alarm = _sos(s, south_kit)
    south_incident = str(_row(s, south_alarm).incident_id)
    with s.db.session() as session:
        row = session.get(Incident, south_incident)
        assert row is not None and row.site == "SOUTH"
        assign_investigator(session, s.ledger, row, south_inv, "user:south_mgr")
    # Minutes later they work at NORTH (moved there, with a NORTH device) and raise an SOS there.
    north_kit = enrol(s, "LW-NORTH", staff_id="S-X", site="NORTH")
    north_alarm = _sos(s, north_kit)
    north_row = _row(s, north_alarm)
    payload = north_row.evidence_item_id
    assert north_row.site == "NORTH" and payload is not None

    # NORTH's control room is shown no SOUTH incident on its alarm, by the API or the console.
    for who in ("north_mgr", "operator"):
        seen = httpx.get(f"{api}/alarms/{north_alarm}", headers=h[who])
        assert seen.status_code == 200, (who, seen.text)
        assert south_incident not in seen.text, who
        page = httpx.get(f"{live.url}/alarms/{north_alarm}", headers=cookie(s, who))
        assert page.status_code == 200, (who, page.text[:300])
        assert north_alarm in page.text and south_incident not in page.text, who
    assert north_row.incident_id != south_incident
    # The NORTH alarm has an incident of its own site, which NORTH's manager reads with the alarm in it.
    own = httpx.get(f"{api}/incidents/{north_row.incident_id}", headers=h["north_mgr"])
    assert own.status_code == 200, own.text
    assert own.json()["site"] == "NORTH"
    assert north_alarm in {link["target_id"] for link in own.json()["links"]}

    # SOUTH's incident holds nothing of NORTH's alarm, for any of its readers, nor in its package.
    assert north_alarm not in _links(s, south_incident) and payload not in _links(s, south_incident)
    for who in ("south_mgr", "south_inv"):
        for path in ("", "/timeline", "/history"):
            r = httpx.get(f"{api}/incidents/{south_incident}{path}", headers=h[who])
            assert r.status_code == 200, (who, path, r.text)
            assert north_alarm not in r.text and payload not in r.text, (who, path)
        assert httpx.get(f"{api}/evidence/{payload}", headers=h[who]).status_code == 404, who
        listed = httpx.get(f"{api}/evidence", headers=h[who]).json()
        assert payload not in {i["id"] for i in listed}, who
    package = _package(api, south_incident, h["south_mgr"], live.url)
    with zipfile.ZipFile(BytesIO(package)) as z:
        names = z.namelist()
        assert not any(payload in n for n in names), names
        assert not any(north_alarm.encode() in z.read(n) for n in names if not n.endswith("/"))


def test_an_alarm_of_no_site_joins_no_sites_incident(live: Any) -> None:
    """A missed check-in whose device's row was moved in the database is raised at no site (the row
    lends none) with the wearer its visit names: it opens an incident of its own, never joins the
    wearer's SOUTH incident, so nothing of SOUTH's incident is shown with an alarm of no site."""
    from tests.test_alarms_kit import later

    s, api = live.services, f"{live.url}/api/v1"
    kit = enrol(s, "LW-VISIT", staff_id="S-Y", site="SOUTH")
    south_kit = enrol(s, "LW-SOUTH2", staff_id="S-Y", site="SOUTH")
    south_incident = str(_row(s, _sos(s, south_kit)).incident_id)
    now = datetime.now(UTC)
    assert s.alarms.handle(*kit.checkin_start("V-1", now + timedelta(seconds=5))).outcome == "accepted"
    with s.db.session() as session:  # the device row altered by SQL: its seal no longer holds
        session.execute(update(Device).where(Device.id == "LW-VISIT").values(site="NORTH"))
    assert s.alarms.raise_missed_checkins(later(3600, now)) == 1
    with s.db.session() as session:
        missed = session.scalar(select(AlarmRecord).where(AlarmRecord.kind == "missed_checkin"))
        assert missed is not None and missed.site is None and missed.wearer == "S-Y", missed
        missed_id = missed.id
    r = httpx.post(f"{api}/alarms/{missed_id}/escalate", json={"note": "no answer"}, headers=live.admin())
    assert r.status_code == 200, r.text
    incident = _row(s, missed_id).incident_id
    assert incident is not None and incident != south_incident
    assert missed_id not in _links(s, south_incident)
