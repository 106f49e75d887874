"""The device registry by the site rule (``accounts.access``), on both databases: a security manager
sees the fleet and the staff of their own site only, in the API and on the console's pages alike,
and writes only their own site's rows (a staff member, a device, an assignment, a broker login): a
row of another site is neither changed nor taken over, so nobody of another site, nor their footage,
comes into the manager's reach through the registry. Everyone else keeps seeing every site."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.models import Device, StaffMember
from devices.service import add_staff, enrol_keyed_device, enrol_lone_worker
from tests.conftest import start_server
from tests.test_console_kit import add_users, session_client
from tests.test_incidents_kit import bearer


def _pub() -> str:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


@pytest.fixture
def site(services: Any) -> Iterator[tuple[str, Any]]:
    add_users(services)  # every console user of NORTH; "manager" is NORTH's security manager
    with services.db.session() as session:
        add_staff(session, services.ledger, "N-1", "Nora North", "nurse", "NORTH", actor="test")
        add_staff(session, services.ledger, "S-1", "Sam South", "porter", "SOUTH", actor="test")
        for serial, staff, where in (("CAM-N", "N-1", "NORTH"), ("CAM-S", "S-1", "SOUTH")):
            enrol_keyed_device(
                session, services.ledger, "camera", serial, _pub(), "user:seed", staff_id=staff, site=where
            )
        enrol_lone_worker(session, services.ledger, "LW-S", _pub(), "user:seed", site="SOUTH")
    server, thread, url = start_server(services)
    yield url, services
    server.should_exit = True
    thread.join(15)


def test_a_security_manager_lists_only_their_sites_fleet_and_staff_in_the_api_and_on_the_pages(
    site: tuple[str, Any],
) -> None:
    url, services = site
    api = f"{url}/api/v1"
    manager, operator = bearer(services, "manager"), bearer(services, "operator")

    def ids(path: str, headers: dict[str, str]) -> set[str]:
        r = httpx.get(f"{api}/{path}", headers=headers)
        assert r.status_code == 200, r.text
        return {row["id"] for row in r.json()}

    assert ids("devices", manager) == {"CAM-N"}
    assert ids("devices?kind=lone_worker", manager) == set()
    assert ids("staff", manager) == {"N-1"}
    assert ids("devices", operator) == {"CAM-N", "CAM-S", "LW-S"}
    assert ids("staff", operator) == {"N-1", "S-1"}
    # The pages: the same rows (one rule, not a second one in the console).
    client, _ = session_client(url, "manager")
    fleet = client.get("/admin/devices").text
    assert "CAM-N" in fleet and "CAM-S" not in fleet and "LW-S" not in fleet and "Sam South" not in fleet
    people = client.get("/admin/people").text
    assert "Nora North" in people and "S-1" not in people and "Sam South" not in people
    everyone, _ = session_client(url, "operator")
    assert "CAM-S" in everyone.get("/admin/devices").text


def test_a_security_manager_changes_only_their_sites_registry(site: tuple[str, Any]) -> None:
    url, services = site
    api = f"{url}/api/v1"
    manager = bearer(services, "manager")

    def status(method: str, path: str, body: dict[str, Any] | None = None) -> int:
        r = httpx.request(method, f"{api}/{path}", json=body, headers=manager)
        assert "Sam South" not in r.text
        return r.status_code

    # Taking another site's member of staff into one's own site (and their footage with them).
    assert status("POST", "staff", {"id": "S-1", "name": "Sam South", "site": "NORTH"}) == 409
    # Registering people or devices of another site.
    assert status("POST", "staff", {"id": "S-2", "name": "New", "site": "SOUTH"}) == 403
    assert status("POST", "devices/docks", {"id": "DOCK-S", "site": "SOUTH"}) == 403
    assert status("POST", "devices/cameras", {"id": "CAM-S", "public_key": _pub(), "site": "NORTH"}) == 409
    assert status("POST", "devices/cameras", {"id": "CAM-X", "public_key": _pub(), "staff_id": "S-1"}) == 400
    # Acting on another site's device, or giving one's own device to another site's wearer.
    assert status("PATCH", "devices/CAM-S", {"status": "disabled"}) == 404
    assert status("PATCH", "devices/CAM-S", {"staff_id": "N-1"}) == 404
    assert status("PATCH", "devices/CAM-N", {"staff_id": "S-1"}) == 400
    assert status("POST", "devices/lone-workers/LW-S/broker-password") == 404
    with services.db.session() as session:
        south = session.get(StaffMember, "S-1")
        camera = session.get(Device, "CAM-S")
        lone = session.get(Device, "LW-S")
        assert south is not None and south.site == "SOUTH"
        assert camera is not None and (camera.site, camera.status, camera.assigned_staff_id) == (
            "SOUTH",
            "active",
            "S-1",
        )
        assert lone is not None and lone.broker_password_hash is not None
        broker_hash = lone.broker_password_hash
        assert session.get(StaffMember, "S-2") is None and session.get(Device, "DOCK-S") is None
        assert session.get(Device, "CAM-X") is None
    # Their own site's rows: as before, and a new row is of their site unless they say otherwise.
    assert status("POST", "staff", {"id": "N-2", "name": "New North"}) == 201
    assert status("POST", "devices/docks", {"id": "DOCK-N"}) == 201
    assert status("PATCH", "devices/CAM-N", {"status": "disabled"}) == 200
    with services.db.session() as session:
        assert session.get(StaffMember, "N-2").site == "NORTH"  # type: ignore[union-attr]
        assert session.get(Device, "DOCK-N").site == "NORTH"  # type: ignore[union-attr]
        assert session.get(Device, "LW-S").broker_password_hash == broker_hash  # type: ignore[union-attr]
    # An administrator still registers for any site.
    admin = bearer(services, "admin")
    r = httpx.post(f"{api}/staff", json={"id": "S-1", "name": "Sam South", "site": "SOUTH"}, headers=admin)
    assert r.status_code == 201
    assert httpx.patch(f"{api}/devices/CAM-S", json={"status": "disabled"}, headers=admin).status_code == 200
