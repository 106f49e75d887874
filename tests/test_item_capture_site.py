"""An evidence item stays with the site it was captured under when its device moves, on both databases.

A SOUTH lone worker's SOS payload, and a clip from a SOUTH body-worn camera, are SOUTH's evidence.
An administrator then re-enrols the device at NORTH (the lone-worker device for a NORTH member of
staff, the camera for a NORTH wearer). NORTH's security manager, who could not read those items
before, must still not: not by ``GET /evidence/{id}``, not in the evidence list, not on the console's
footage page, not by linking them into a NORTH incident, and not in that incident's package. SOUTH's
security manager keeps reading them."""

from __future__ import annotations

import base64
import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.clipkit import Fleet
from tests.test_alarm_incident_site import _package
from tests.test_alarms_kit import enrol
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, staff, store_item, user
from tests.test_lifecycle_seals import _row
from tests.test_upload_completion import _upload
from tests.test_visit_site import _re_enrol_at_north


def _managers(s: Any) -> dict[str, dict[str, str]]:
    user(s, "north_mgr", "security_manager", "NORTH")
    user(s, "south_mgr", "security_manager", "SOUTH")
    return {who: bearer(s, who) for who in ("north_mgr", "south_mgr")}


def _reads(live: Any, who: str, headers: dict[str, str], item_id: str) -> dict[str, Any]:
    """What a manager gets of the item: its record, whether it is listed, its console footage page."""
    api = f"{live.url}/api/v1"
    one = httpx.get(f"{api}/evidence/{item_id}", headers=headers)
    listed = httpx.get(f"{api}/evidence", params={"limit": 200}, headers=headers)
    assert listed.status_code == 200, listed.text
    page = httpx.get(f"{live.url}/footage/{item_id}", headers=cookie(live.services, who))
    return {
        "item": one.status_code,
        "listed": item_id in {i["id"] for i in listed.json()},
        "page": page.status_code,
    }


def _north_reaches_nothing(live: Any, h: dict[str, dict[str, str]], item_id: str) -> None:
    """NORTH's manager reads nothing of the item, links nothing of it, and packages nothing of it."""
    api = f"{live.url}/api/v1"
    assert _reads(live, "north_mgr", h["north_mgr"], item_id) == {"item": 404, "listed": False, "page": 404}
    body = {"category": "theft", "occurred_at": datetime.now(UTC).isoformat(), "site": "NORTH"}
    r = httpx.post(f"{api}/incidents", json=body, headers=h["north_mgr"])
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    link = {"kind": "evidence", "target_id": item_id, "reason": "found on our device"}
    r = httpx.post(f"{api}/incidents/{incident}/links", json=link, headers=h["north_mgr"])
    assert r.status_code == 404, r.text
    # The incident holds a NORTH item of its own (an incident with nothing linked is not packaged):
    # its package carries that one and nothing of the SOUTH item.
    staff(live.services, "N-OWN", site="NORTH")
    own = store_item(live.services, wearer="N-OWN").id
    link = {"kind": "evidence", "target_id": own, "reason": "our own footage"}
    r = httpx.post(f"{api}/incidents/{incident}/links", json=link, headers=h["north_mgr"])
    assert r.status_code in (200, 201), r.text
    package = _package(api, incident, h["north_mgr"], live.url)
    with zipfile.ZipFile(BytesIO(package)) as z:
        names = z.namelist()
        assert not any(item_id in n for n in names), names
        assert not any(item_id.encode() in z.read(n) for n in names if not n.endswith("/"))


def _south_reads(live: Any, h: dict[str, dict[str, str]], item_id: str) -> None:
    assert _reads(live, "south_mgr", h["south_mgr"], item_id) == {"item": 200, "listed": True, "page": 200}


def test_an_sos_payload_stays_with_its_site_when_its_device_is_re_enrolled(live: Any) -> None:
    s = live.services
    h = _managers(s)
    kit = enrol(s, "LW-Z", staff_id="S-Z", site="SOUTH")
    result = s.alarms.handle(*kit.sos())
    assert result.outcome == "accepted" and result.alarm_id, result
    payload = _row(s, result.alarm_id).evidence_item_id
    assert payload is not None
    # Before: SOUTH's item, out of NORTH's reach.
    assert _reads(live, "north_mgr", h["north_mgr"], payload) == {"item": 404, "listed": False, "page": 404}
    _south_reads(live, h, payload)

    _re_enrol_at_north(live, "LW-Z", "N-1")

    _north_reaches_nothing(live, h, payload)
    _south_reads(live, h, payload)


def _enrol_camera(live: Any, serial: str, staff_id: str, site: str) -> Ed25519PrivateKey:
    """The administrator enrols (or re-enrols) a camera at ``site`` for a member of staff there."""
    api = f"{live.url}/api/v1"
    r = httpx.post(
        f"{api}/staff",
        json={"id": staff_id, "name": f"Staff {staff_id}", "group": "nurse", "site": site},
        headers=live.admin(),
    )
    assert r.status_code == 201, r.text
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = {"id": serial, "public_key": base64.b64encode(public).decode(), "staff_id": staff_id, "site": site}
    r = httpx.post(f"{api}/devices/cameras", json=body, headers=live.admin())
    assert r.status_code == 201, r.text
    return key


def test_a_clip_stays_with_its_site_when_its_camera_is_re_enrolled(live: Any) -> None:
    s, api = live.services, f"{live.url}/api/v1"
    h = _managers(s)
    key = _enrol_camera(live, "CAM-S", "S-C", "SOUTH")
    r = httpx.post(f"{api}/devices/docks", json={"id": "DOCK-S", "site": "SOUTH"}, headers=live.admin())
    assert r.status_code == 201, r.text
    fleet = Fleet(live.url, r.json()["token"], "CAM-S", key, "S-C")
    start = datetime.now(UTC) - timedelta(hours=1)
    done = _upload(
        fleet,
        b"\x00\x00\x00\x18ftypmp42" + b"south footage" * 400,
        recorded_start=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        recorded_stop=(start + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    assert done.headers["evidence-status"] == "stored", done.headers
    clip = done.headers["evidence-item-id"]
    assert _reads(live, "north_mgr", h["north_mgr"], clip) == {"item": 404, "listed": False, "page": 404}
    _south_reads(live, h, clip)

    _enrol_camera(live, "CAM-S", "N-C", "NORTH")

    _north_reaches_nothing(live, h, clip)
    _south_reads(live, h, clip)
