"""Lists that grow with the service's use come a page at a time, in the custody trail's way
(``limit``, ``after``, ``Link: <...>; rel="next"`` and ``X-Next-After``): staff, devices, users,
lone-worker devices, subject access requests, an incident's export packages and a clip's redaction
versions. The first page with no parameters is what a client
saw before (the same order); following the links reads every entry once, in order. On SQLite and on
PostgreSQL (the keyset reads compare dates, times and texts in SQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chain_of_custody.reach_seals import reach_secret, staff_seal
from devices.models import Device, StaffMember
from incidents.export.models import ExportJob
from incidents.service import IncidentDraft, create_incident
from redaction.models import RedactionJob
from tests.test_alarms_kit import seal_as_enrolled
from tests.test_history_paging import follow
from tests.test_incidents_kit import bearer, store_item, user

COUNT = 7


@pytest.fixture
def site(services: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    from ingest.app import create_app

    user(services, "admin", "admin")
    with TestClient(create_app(services.settings, services)) as client:
        yield client, services, bearer(services, "admin")


def _pages(client: TestClient, url: str, headers: dict[str, str], key: str = "id") -> list[Any]:
    """The whole list (no parameters), and the same read three at a time by its links: equal."""
    whole = client.get(url, headers=headers)
    assert whole.status_code == 200, whole.text
    assert "link" not in whole.headers
    paged = follow(client, url + ("&" if "?" in url else "?") + "limit=3", headers, 3)
    assert [x[key] for x in paged] == [x[key] for x in whole.json()]
    return whole.json()  # type: ignore[no-any-return]


def test_staff_and_devices_come_a_page_at_a_time(site: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, services, admin = site
    reach = reach_secret(services.key)
    with services.db.session() as session:
        for n in range(COUNT):
            seal = staff_seal(reach, f"S-{n:03d}", "NORTH")
            session.add(StaffMember(id=f"S-{n:03d}", name=f"Porter {n}", site="NORTH", seal=seal))
            session.add(Device(id=f"LW-{n:03d}", kind="lone_worker", site="NORTH"))
            session.add(Device(id=f"CAM-{n:03d}", kind="camera", site="NORTH"))
        seal_as_enrolled(session, services.ledger)
    staff = _pages(client, "/api/v1/staff", admin)
    assert [s["id"] for s in staff] == [f"S-{n:03d}" for n in range(COUNT)]
    devices = _pages(client, "/api/v1/devices", admin)
    assert len(devices) == 2 * COUNT and [d["id"] for d in devices] == sorted(d["id"] for d in devices)
    # A filter is kept in the next page's address.
    lone = _pages(client, "/api/v1/devices?kind=lone_worker", admin)
    assert [d["id"] for d in lone] == [f"LW-{n:03d}" for n in range(COUNT)]
    r = client.get("/api/v1/devices?kind=lone_worker&limit=3", headers=admin)
    assert "kind=lone_worker" in r.headers["link"]
    assert client.get("/api/v1/staff?limit=0", headers=admin).status_code == 422
    assert client.get("/api/v1/staff?limit=100000", headers=admin).status_code == 422


def test_subject_access_requests_come_a_page_at_a_time(site: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, _, admin = site
    today = datetime.now(UTC).date()
    for n in range(COUNT):
        r = client.post(
            "/api/v1/subject-access-requests",
            json={
                "requester": f"Requester {n}",
                "contact": "someone@example.org",
                # Some on the same day: their order is then by when they were recorded, then by id.
                "received_on": (today - timedelta(days=n // 2)).isoformat(),
                "site": "NORTH",
                "description": "grey coat, A&E waiting room",
            },
            headers=admin,
        )
        assert r.status_code == 201, r.text
    requests = _pages(client, "/api/v1/subject-access-requests", admin)
    assert len(requests) == COUNT
    due = [date.fromisoformat(r["due_on"]) for r in requests]
    assert due == sorted(due)
    assert client.get("/api/v1/subject-access-requests?after=nonesuch", headers=admin).status_code == 422


def test_an_incidents_packages_come_a_page_at_a_time(site: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, services, admin = site
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    with services.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", at - timedelta(hours=1), "NORTH"),
            "user:admin",
            ledger=services.ledger,
        )
        for n in range(COUNT):
            session.add(
                ExportJob(
                    id=str(uuid.uuid4()),
                    incident_id=incident.id,
                    requested_by="user:admin",
                    requester_role="admin",
                    scope=json.dumps({"items": []}),
                    status="failed",
                    error="no items",
                    # Two of them asked for at the same moment: then by id.
                    created_at=at + timedelta(minutes=min(n, COUNT - 2)),
                )
            )
        incident_id = incident.id
    url = f"/api/v1/incidents/{incident_id}/exports"
    jobs = _pages(client, url, admin)
    assert len(jobs) == COUNT
    assert client.get(f"{url}?after={uuid.uuid4()}", headers=admin).status_code == 422


def test_users_and_lone_workers_come_a_page_at_a_time(site: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, services, admin = site
    for n in range(COUNT):
        user(services, f"user-{n:02d}", "operator", "NORTH")
    with services.db.session() as session:
        for n in range(COUNT):
            session.add(Device(id=f"LW-{n:03d}", kind="lone_worker", site="NORTH" if n % 2 else "SOUTH"))
            session.add(Device(id=f"CAM-{n:03d}", kind="camera", site="NORTH"))
        seal_as_enrolled(session, services.ledger)
    users = _pages(client, "/api/v1/users", admin)
    assert [u["username"] for u in users] == ["admin", *(f"user-{n:02d}" for n in range(COUNT))]
    assert client.get("/api/v1/users?limit=0", headers=admin).status_code == 422
    lone = _pages(client, "/api/v1/lone-workers", admin)
    assert [d["id"] for d in lone] == [f"LW-{n:03d}" for n in range(COUNT)]
    assert client.get("/api/v1/lone-workers?limit=100000", headers=admin).status_code == 422
    # A site's manager pages through their own site's devices only; users stay the admin's.
    user(services, "manager", "security_manager", "NORTH")
    manager = bearer(services, "manager")
    north = _pages(client, "/api/v1/lone-workers", manager)
    assert [d["id"] for d in north] == [f"LW-{n:03d}" for n in range(COUNT) if n % 2]
    r = client.get("/api/v1/lone-workers?limit=1&after=LW-000", headers=manager)
    assert [d["id"] for d in r.json()] == ["LW-001"] and r.headers["x-next-after"] == "LW-001"
    assert client.get("/api/v1/users?limit=1", headers=manager).status_code == 403


def test_a_clips_redaction_versions_come_a_page_at_a_time(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, admin = site
    clip = store_item(services)
    with services.db.session() as session:
        for version in range(1, COUNT + 1):
            session.add(
                RedactionJob(
                    id=str(uuid.uuid4()),
                    source_item_id=clip.id,
                    version=version,
                    requested_by="user:admin",
                    spec="{}",
                    status="done",
                )
            )
    url = f"/api/v1/evidence/{clip.id}/redactions"
    versions = _pages(client, url, admin)
    assert [v["version"] for v in versions] == list(range(COUNT, 0, -1))
    r = client.get(f"{url}?limit=3", headers=admin)
    assert r.headers["x-next-after"] == str(COUNT - 2)
    assert client.get(f"{url}?after=0", headers=admin).status_code == 422
    assert client.get(f"/api/v1/evidence/{uuid.uuid4()}/redactions?limit=1", headers=admin).status_code == 404
