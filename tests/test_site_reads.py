"""What a security manager reads by site is checked against the rows' seals, not only their columns,
on both databases: a device, a member of staff or an alarm moved to the SOUTH site by SQL shows the
SOUTH manager nothing of NORTH (device lists, positions and names on the map and board, open-alarm
counts, performance figures, the staff lists, an alarm linked by hand), an escalation does not vouch
for a site or wearer its row's seal does not, and a person's name changed by SQL is not printed in
the incident lists and pages (``accounts.seals.name_of``, as the continuity report prints names)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from accounts.models import User
from alarms.escalations import ESCALATION_TOPIC
from alarms.models import AlarmRecord
from devices.models import Device, StaffMember
from tests.test_alarms_kit import DeviceKit, enrol, later, outbox
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


class South:
    """The SOUTH security manager, by the API (a bearer token) and the console (a session), beside
    NORTH's and SOUTH's staff, lone-worker devices (each assigned, each with a position) and an
    administrator who acts for the control room."""

    def __init__(self, live: Any) -> None:
        self.url, self.s, self.admin = live.url, live.services, live.admin()
        self.api = f"{live.url}/api/v1"
        self.kits: dict[str, DeviceKit] = {
            "LW-N": enrol(self.s, "LW-N", staff_id="N-1", site="NORTH"),
            "LW-S": enrol(self.s, "LW-S", staff_id="S-2", site="SOUTH"),
        }
        for kit in self.kits.values():  # a heartbeat gives each device a position and a presence
            assert self.s.alarms.handle(*kit.heartbeat()).outcome == "accepted"
        user(self.s, "south_mgr", "security_manager", "SOUTH")
        self.headers = bearer(self.s, "south_mgr")
        self.cookie = cookie(self.s, "south_mgr")

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.api}{path}", params=params, headers=self.headers)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    def page(self, path: str, **params: Any) -> str:
        r = httpx.get(f"{self.url}{path}", params=params, headers=self.cookie)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.text

    def sos(self, device: str) -> str:
        result = self.s.alarms.handle(*self.kits[device].sos())
        assert result.outcome == "accepted" and result.alarm_id, result
        return str(result.alarm_id)

    def devices_seen(self) -> dict[str, bool]:
        """Whether NORTH's device LW-N reaches the SOUTH manager by each read of devices."""
        lone = {d["id"]: d for d in self.get("/lone-workers")}
        map_data = json.loads(self.page("/map/data.json"))
        board = json.loads(self.page("/board/directory.json", device=["LW-N", "LW-S"]))
        return {
            "devices": "LW-N" in {d["id"] for d in self.get("/devices")},
            "lone workers": "LW-N" in lone,
            "console fleet": 'data-device="LW-N"' in self.page("/admin/devices"),
            "map positions": "LW-N" in {p["device_id"] for p in map_data["positions"]},
            "board directory": "LW-N" in board["devices"],
        }

    def staff_seen(self) -> dict[str, bool]:
        """Whether NORTH's member of staff N-1 reaches the SOUTH manager by each list of staff."""
        devices_page = self.page("/admin/devices")
        return {
            "staff": "N-1" in {m["id"] for m in self.get("/staff")},
            "console people": ">N-1<" in self.page("/admin/people"),
            "console staff choices": 'value="N-1"' in devices_page,
        }


@pytest.fixture
def south(live: Any) -> South:
    return South(live)


def _fleet_row(html: str, device: str) -> str:
    found = re.search(rf'<tr data-device="{device}">(.*?)</tr>', html, re.S)
    assert found is not None, device
    return found.group(1)


def test_the_south_manager_reads_south_and_not_north(south: South) -> None:
    """The control: SOUTH's device and member of staff are read everywhere, NORTH's nowhere."""
    lone = {d["id"] for d in south.get("/lone-workers")}
    assert "LW-S" in lone and "LW-S" in {d["id"] for d in south.get("/devices")}
    assert "S-2" in {m["id"] for m in south.get("/staff")}
    assert not any(south.devices_seen().values()), south.devices_seen()
    assert not any(south.staff_seen().values()), south.staff_seen()


def test_a_device_moved_to_another_site_in_the_database_is_not_read_there(
    south: South, caplog: pytest.LogCaptureFixture
) -> None:
    _sql(south.s, update(Device).where(Device.id == "LW-N").values(site="SOUTH"))
    with caplog.at_level(logging.WARNING):
        assert south.devices_seen() == dict.fromkeys(south.devices_seen(), False)
    assert any("device refused" in r.getMessage() for r in caplog.records)
    # Nor is it the SOUTH manager's to change (which would seal it again as it now stands).
    for body in ({"status": "disabled"}, {"staff_id": "S-2"}):
        r = httpx.patch(f"{south.api}/devices/LW-N", json=body, headers=south.headers)
        assert r.status_code == 404, r.text
    r = httpx.post(f"{south.api}/devices/lone-workers/LW-N/broker-password", headers=south.headers)
    assert r.status_code == 404, r.text
    again = {"id": "LW-N", "public_key": south.kits["LW-N"].public_b64, "site": "SOUTH"}
    r = httpx.post(f"{south.api}/devices/lone-workers", json=again, headers=south.headers)
    assert r.status_code == 409, r.text
    with south.s.db.session() as session:
        row = session.get(Device, "LW-N")
        assert row is not None and row.status == "active" and row.assigned_staff_id == "N-1"


def test_a_member_of_staff_moved_to_another_site_in_the_database_is_not_listed_there(
    south: South,
) -> None:
    _sql(south.s, update(StaffMember).where(StaffMember.id == "N-1").values(site="SOUTH"))
    assert south.staff_seen() == dict.fromkeys(south.staff_seen(), False)
    # Nor may the SOUTH manager give them a SOUTH device.
    r = httpx.patch(f"{south.api}/devices/LW-S", json={"staff_id": "N-1"}, headers=south.headers)
    assert r.status_code == 400, r.text


def test_an_alarm_moved_in_the_database_counts_for_no_device_of_that_site(south: South) -> None:
    """A NORTH alarm moved to SOUTH's device and site: SOUTH's device shows no open alarm for it,
    in the API's list of lone workers nor on the console's fleet."""
    before = _fleet_row(south.page("/admin/devices"), "LW-S")
    alarm = south.sos("LW-N")
    _sql(
        south.s,
        update(AlarmRecord).where(AlarmRecord.id == alarm).values(site="SOUTH", device_id="LW-S"),
    )
    lone = {d["id"]: d for d in south.get("/lone-workers")}
    assert lone["LW-S"]["open_alarms"] == 0, lone["LW-S"]
    assert _fleet_row(south.page("/admin/devices"), "LW-S") == before


def test_an_alarm_moved_in_the_database_is_not_in_that_sites_performance_figures(south: South) -> None:
    before = south.get("/alarms/performance")["periods"]
    assert "<small>+1</small>" not in south.page("/performance")
    alarm = south.sos("LW-N")  # red at once: pending until answered or late
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == alarm).values(site="SOUTH"))
    assert south.get("/alarms/performance")["periods"] == before
    assert "<small>+1</small>" not in south.page("/performance")
    csv = httpx.get(f"{south.api}/alarms/performance", params={"format": "csv"}, headers=south.headers)
    assert all(line.split(",")[3] == "0" for line in csv.text.splitlines()[1:]), csv.text


def test_an_alarm_moved_in_the_database_cannot_be_linked_by_that_sites_manager(south: South) -> None:
    """Linking an alarm by hand puts its facts (kind, status, wearer) on the incident's page."""
    body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "SOUTH"}
    r = httpx.post(f"{south.api}/incidents", json=body, headers=south.headers)
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    own, moved = south.sos("LW-S"), south.sos("LW-N")
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == moved).values(site="SOUTH"))
    page = south.page(f"/incidents/{incident}")
    assert own in page and moved not in page  # offered for linking: the sealed one only
    results = {}
    for alarm in (own, moved):
        link = {"kind": "alarm", "target_id": alarm, "reason": "raised nearby"}
        results[alarm] = httpx.post(
            f"{south.api}/incidents/{incident}/links", json=link, headers=south.headers
        )
    assert results[own].status_code == 201, results[own].text
    assert results[moved].status_code in (403, 404), results[moved].text
    assert "N-1" not in south.page(f"/incidents/{incident}")


def test_an_escalation_vouches_for_no_site_or_wearer_its_rows_seal_does_not(south: South) -> None:
    """The escalation (control topic and webhook, signed by the service) of an alarm moved to SOUTH
    by SQL names neither SOUTH nor the wearer: a receiver routing by site would hand NORTH's alarm,
    with its position, to SOUTH."""
    south.s.settings.escalation_webhook_url = "http://127.0.0.1:9/escalations"  # queued, never sent
    own, moved = south.sos("LW-S"), south.sos("LW-N")
    _sql(
        south.s,
        update(AlarmRecord).where(AlarmRecord.id == moved).values(site="SOUTH", wearer="S-2"),
    )
    for alarm in (own, moved):
        r = httpx.post(
            f"{south.api}/alarms/{alarm}/escalate", json={"note": "no answer"}, headers=south.admin
        )
        assert r.status_code == 200, r.text
    hook = south.s.settings.escalation_webhook_url
    sent = [json.loads(row.payload) for target in (ESCALATION_TOPIC, hook) for row in outbox(south.s, target)]
    assert {b["alarm_id"] for b in sent} == {own, moved} and len(sent) == 4, sent
    for body in sent:
        if body["alarm_id"] == own:
            assert (body["site"], body["wearer"]) == ("SOUTH", "S-2"), body
        else:
            assert (body["site"], body["wearer"]) == (None, None), body


def test_a_name_changed_in_the_database_is_not_printed_in_the_incident_lists(south: South) -> None:
    """An investigator's full name changed by SQL: the incident's investigators (API and page), the
    console's investigator filter and the list to assign from print the name only while the user's
    seal holds, as the continuity report does."""
    inv = user(south.s, "ivy", "investigator", full_name="Ivy Investigator")
    body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "SOUTH"}
    r = httpx.post(f"{south.api}/incidents", json=body, headers=south.headers)
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    r = httpx.put(f"{south.api}/incidents/{incident}/investigators/{inv}", headers=south.headers)
    assert r.status_code in (200, 201, 204), r.text
    assert "Ivy Investigator" in south.page("/incidents")
    _sql(south.s, update(User).where(User.id == inv).values(full_name="Nora North"))
    view = south.get(f"/incidents/{incident}")
    assert [p["full_name"] for p in view["investigators"]] == [""], view["investigators"]
    assert [p["username"] for p in view["investigators"]] == ["ivy"]
    for path in ("/incidents", f"/incidents/{incident}"):
        page = south.page(path)
        assert "Nora North" not in page, path


def test_a_wearer_moved_in_the_database_opens_no_incident_at_that_site(south: South) -> None:
    """A red alarm from a device of no site opens its wearer's incident at the wearer's site: a site
    moved by SQL is not theirs, so the incident (its title names the wearer) is opened at no site."""
    kit = enrol(south.s, "LW-X", staff_id="N-3", site=None)
    staff(south.s, "N-3", "nurse", "NORTH")
    _sql(south.s, update(StaffMember).where(StaffMember.id == "N-3").values(site="SOUTH"))
    result = south.s.alarms.handle(*kit.sos())
    assert result.outcome == "accepted", result
    alarm = httpx.get(f"{south.api}/alarms/{result.alarm_id}", headers=south.admin).json()
    incident = httpx.get(f"{south.api}/incidents/{alarm['incident_id']}", headers=south.admin).json()
    assert (incident["wearer"], incident["site"]) == ("N-3", "unknown"), incident
    r = httpx.get(f"{south.api}/incidents/{alarm['incident_id']}", headers=south.headers)
    assert r.status_code == 404, r.text


def test_an_alarms_evidence_pointed_at_another_sites_clip_is_neither_linked_nor_shown(south: South) -> None:
    """A SOUTH amber alarm pointed by SQL at a NORTH nurse's clip would link that clip into the SOUTH
    incident its turning red opens (and show it as the payload in the alarm's record). The pointer
    is under the alarm's raise seal (``raise_seals``): the clip is neither linked nor shown, and the
    alarm's record shows its own payload again, put back from its custody record."""
    clip = store_item(south.s, wearer="N-1", start=T0)
    now = datetime.now(UTC)
    result = south.s.alarms.handle(*south.kits["LW-S"].amber(60, sent_at=now), now=now)
    _sql(
        south.s, update(AlarmRecord).where(AlarmRecord.id == result.alarm_id).values(evidence_item_id=clip.id)
    )
    assert south.s.alarms.fire_deadlines(later(61, now)) == 1  # red: an incident is opened
    r = httpx.get(f"{south.api}/evidence/{clip.id}", headers=south.headers)
    assert r.status_code == 404, r.text
    record = south.get(f"/alarms/{result.alarm_id}/record")
    payload = record["payload"]
    assert payload is not None and payload["id"] != clip.id and payload["kind"] == "alarm", payload
