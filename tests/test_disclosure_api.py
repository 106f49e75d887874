"""The disclosure log and subject access requests through the API, on PostgreSQL and the real store.

Access is checked by its effects: a user who cannot see an incident gets neither its disclosure log
nor its requests, and a search for footage returns only what the searcher could already see.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from accounts.models import User
from accounts.service import create_user, issue_token
from chain_of_custody.evidence import Provenance
from chain_of_custody.models import CustodyEntry
from chain_of_custody.reach_seals import reach_secret, staff_seal
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from devices.models import StaffMember
from incidents.subject_access.service import days_left, due_date
from tests import test_export_api
from tests.conftest import ADMIN_PASSWORD, free_port, wait_for
from tests.test_export_api import PASSWORD, Server, custody_of
from tests.test_export_package import put_evidence


@pytest.fixture
def server(services: Any) -> Iterator[Server]:
    """The export API tests' service and users, with tokens issued directly (signing in by password
    through HTTP is not what these tests are about, and costs seconds on a busy machine)."""
    from ingest.app import create_app

    with services.db.session() as session:
        for name, role, site in USERS:
            create_user(
                session,
                name,
                ADMIN_PASSWORD if name == "admin" else PASSWORD,
                role,
                site=site,
                key=services.key,
            )
    tokens = {}
    with services.db.session() as session:
        for name, _, _ in USERS:
            user = session.scalar(select(User).where(User.username == name))
            tokens[name], _ = issue_token(
                session, user, timedelta(hours=2), services.key.derived_secret(CREDENTIAL_SEALS)
            )
    app = create_app(services.settings, services)
    srv = test_export_api._ThreadedServer(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, 60, what="HTTP server to start")
    yield Server(f"http://127.0.0.1:{srv.config.port}", services, tokens)
    srv.should_exit = True
    thread.join(15)


USERS = (
    ("admin", "admin", None),
    ("inv", "investigator", None),
    ("other_inv", "investigator", None),
    ("boss", "security_manager", "QEH"),
    ("audit", "auditor", None),
)


def wait_ready(server: Server, export_id: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        r = http.get(f"{server.url}/api/v1/exports/{export_id}", headers=server.as_("inv"), timeout=60)
        assert r.status_code == 200 and r.json()["status"] != "failed", r.text
        return r.json() if r.json()["status"] == "ready" else None  # type: ignore[no-any-return]

    return wait_for(ready, 120, 0.2, "the export to be ready")  # type: ignore[no-any-return]


# Patient answers: these tests run beside others on a busy machine.
http = httpx.Client(timeout=120)


@pytest.fixture
def database_url(pg_url: str) -> Iterator[str]:
    """These tests' subject is access and records, not the database: PostgreSQL, as in production."""
    yield pg_url


def _incident(server: Server, site: str = "QEH", assign: str | None = "inv") -> dict[str, str]:
    r = http.post(
        f"{server.url}/api/v1/incidents",
        json={
            "category": "verbal_abuse",
            "occurred_at": "2026-11-22T10:00:00Z",
            "site": site,
            "title": "Ward 7",
        },
        headers=server.as_("admin"),
    )
    assert r.status_code == 201, r.text
    incident = r.json()
    if assign:
        with server.services.db.session() as session:  # type: ignore[attr-defined]
            user_id = session.scalar(select(User.id).where(User.username == assign))
        r = http.put(
            f"{server.url}/api/v1/incidents/{incident['id']}/investigators/{user_id}",
            headers=server.as_("admin"),
        )
        assert r.status_code == 200, r.text
    return incident  # type: ignore[no-any-return]


def _link(server: Server, incident_id: str, item_id: str) -> None:
    r = http.post(
        f"{server.url}/api/v1/incidents/{incident_id}/links",
        json={"kind": "evidence", "target_id": item_id, "reason": "seen on the footage"},
        headers=server.as_("admin"),
    )
    assert r.status_code in (200, 201), r.text


def test_disclosure_log_records_packages_links_downloads_and_revocations(server: Server) -> None:
    s = server.services
    inv = server.as_("inv")
    first = put_evidence(
        s, b'{"alarm":"sos"}', Provenance(kind="alarm", actor="device:LW-1", content_type="application/json")
    )
    second = put_evidence(
        s,
        b'{"alarm":"amber"}',
        Provenance(kind="alarm", actor="device:LW-2", content_type="application/json"),
    )
    stray = put_evidence(
        s,
        b'{"alarm":"stray"}',
        Provenance(kind="alarm", actor="device:LW-3", content_type="application/json"),
    )
    incident = _incident(server)
    _link(server, incident["id"], first.id)
    _link(server, incident["id"], second.id)
    exports = f"{server.url}/api/v1/incidents/{incident['id']}/exports"

    # The items are chosen: one the incident does not hold is refused by name, the chosen one alone goes in.
    r = http.post(exports, json={"item_ids": [first.id, stray.id]}, headers=inv)
    assert r.status_code == 422 and stray.id in r.text, r.text
    r = http.post(exports, json={"item_ids": [first.id]}, headers=inv)
    assert r.status_code == 202, r.text
    job = wait_ready(server, r.json()["id"])
    assert job["included"] == [first.id]

    # Two links: an officer's (downloaded whole and in part, then revoked) and one with a hostile name.
    links = f"{server.url}/api/v1/exports/{job['id']}/links"
    r = http.post(
        links, json={"recipient": "DC Jones, Met Police", "purpose": "charging decision"}, headers=inv
    )
    assert r.status_code == 201, r.text
    officer = r.json()
    assert officer["purpose"] == "charging decision"
    hostile = '=HYPERLINK("http://x")'
    assert http.post(links, json={"recipient": hostile}, headers=inv).status_code == 201
    assert http.get(officer["url"]).status_code == 200
    assert http.get(officer["url"], headers={"Range": "bytes=0-99"}).status_code == 206
    assert http.delete(f"{links}/{officer['id']}", headers=inv).status_code == 204
    assert http.get(officer["url"]).status_code == 410

    log = http.get(f"{server.url}/api/v1/incidents/{incident['id']}/disclosures", headers=inv)
    assert log.status_code == 200, log.text
    body = log.json()
    [package] = body["packages"]
    assert package["package_sha256"] == job["package_sha256"] and package["requested_by"] == "user:inv"
    by_recipient = {link["recipient"]: link for link in package["links"]}
    jones = by_recipient["DC Jones, Met Police"]
    assert jones["created_by"] == "user:inv" and jones["revoked_by"] == "user:inv"
    assert [d["range"] for d in jones["downloads"]] == [None, [0, 99]]
    assert by_recipient[hostile]["downloads"] == [] and by_recipient[hostile]["revoked_at"] is None
    jones_events = [e["event"] for e in body["events"] if e["recipient"] == "DC Jones, Met Police"]
    assert jones_events == ["link_issued", "downloaded", "downloaded", "link_revoked"]
    assert body["events"][0]["event"] == "package_built"
    assert all(e["package_sha256"] == job["package_sha256"] for e in body["events"])

    # The CSV is the same events, and a recipient typed as a formula stays text.
    r = http.get(f"{server.url}/api/v1/incidents/{incident['id']}/disclosures?format=csv", headers=inv)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert incident["reference"] in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["event"] for row in rows] == [e["event"] for e in body["events"]]
    assert any(row["recipient"] == "'" + hostile for row in rows)
    assert not any(row["recipient"].startswith("=") for row in rows)

    # Issuing and revoking are in the package's custody chain, beside the downloads.
    actions = [e.action for e in custody_of(s, job["id"])]
    assert actions.count("link_issued") == 2 and actions.count("link_revoked") == 1
    assert actions.count("viewed") == 2

    # Who may read it: the site's security manager; not an investigator of other incidents, not an auditor.
    disclosures = f"{server.url}/api/v1/incidents/{incident['id']}/disclosures"
    assert http.get(disclosures, headers=server.as_("boss")).status_code == 200
    assert http.get(disclosures, headers=server.as_("other_inv")).status_code == 404
    assert http.get(disclosures + "?format=csv", headers=server.as_("other_inv")).status_code == 404
    assert http.get(disclosures, headers=server.as_("audit")).status_code == 403
    assert http.get(disclosures).status_code == 401


def test_due_date_is_one_calendar_month_later() -> None:
    assert due_date(date(2026, 3, 14)) == date(2026, 4, 14)
    assert due_date(date(2026, 1, 31)) == date(2026, 2, 28)
    assert due_date(date(2028, 1, 31)) == date(2028, 2, 29)
    assert due_date(date(2026, 8, 31)) == date(2026, 9, 30)
    assert due_date(date(2026, 12, 15)) == date(2027, 1, 15)
    assert days_left(date(2026, 4, 14), date(2026, 4, 10)) == 4
    assert days_left(date(2026, 4, 14), date(2026, 4, 16)) == -2


def test_subject_access_requests_by_days_left_and_only_visible_footage(server: Server) -> None:
    s = server.services
    base = f"{server.url}/api/v1/subject-access-requests"
    today = datetime.now(UTC).date()
    reach = reach_secret(s.key)  # type: ignore[attr-defined]
    with s.db.session() as session:  # type: ignore[attr-defined]
        session.add_all(  # sealed as the service seals them (``chain_of_custody.reach_seals``)
            [
                StaffMember(id="S-QEH", name="Porter", site="QEH", seal=staff_seal(reach, "S-QEH", "QEH")),
                StaffMember(id="S-GEN", name="Nurse", site="GEN", seal=staff_seal(reach, "S-GEN", "GEN")),
            ]
        )
    at = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)

    def clip(wearer: str, start: datetime) -> str:
        prov = Provenance(
            kind="clip",
            actor="dock:D-1",
            wearer=wearer,
            captured_start=start,
            captured_stop=start + timedelta(minutes=2),
            content_type="video/mp4",
        )
        return put_evidence(s, b"not really a video", prov).id

    in_window_qeh = clip("S-QEH", at)
    in_window_gen = clip("S-GEN", at + timedelta(minutes=5))
    too_late = clip("S-QEH", at + timedelta(hours=3))

    # Recorded by the investigator (assigned to its incident), the older first by days left.
    def receive(who: str, received: date, site: str = "QEH") -> httpx.Response:
        return http.post(
            base,
            json={
                "requester": "Alex Smith",
                "contact": "alex@example.org",
                "received_on": received.isoformat(),
                "site": site,
                "description": "grey coat, A&E waiting room, about 2pm",
            },
            headers=server.as_(who),
        )

    r = receive("inv", today - timedelta(days=2))
    assert r.status_code == 201, r.text
    recent = r.json()
    assert recent["due_on"] == due_date(today - timedelta(days=2)).isoformat()
    assert recent["status"] == "open" and recent["incident_reference"].startswith("INC-")
    older = receive("inv", today - timedelta(days=25)).json()
    assert receive("boss", today, site="GEN").status_code == 403
    assert receive("inv", today + timedelta(days=1)).status_code in (409, 422)
    listed = http.get(base, headers=server.as_("inv")).json()
    assert [x["id"] for x in listed] == [older["id"], recent["id"]]
    assert listed[0]["days_left"] < listed[1]["days_left"]

    # Nobody outside the requests' incidents sees them, by list, by id, by change or by search.
    one = f"{base}/{recent['id']}"
    window = {
        "start": (at - timedelta(minutes=30)).isoformat(),
        "end": (at + timedelta(minutes=30)).isoformat(),
    }
    assert http.get(base, headers=server.as_("other_inv")).json() == []
    assert http.get(one, headers=server.as_("other_inv")).status_code == 404
    assert http.patch(one, json={"notes": "x"}, headers=server.as_("other_inv")).status_code == 404
    assert http.get(f"{one}/candidates", params=window, headers=server.as_("other_inv")).status_code == 404
    assert http.get(base, headers=server.as_("audit")).status_code == 403
    assert [x["id"] for x in http.get(base, headers=server.as_("boss")).json()] == [
        older["id"],
        recent["id"],
    ]

    # The footage search returns only what the searcher could already see.
    def search(who: str, **extra: str) -> list[str]:
        r = http.get(f"{one}/candidates", params={**window, **extra}, headers=server.as_(who))
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()]

    assert search("admin") == [in_window_qeh, in_window_gen]
    assert search("admin", wearer="S-GEN") == [in_window_gen]
    assert search("admin", site="QEH") == [in_window_qeh]
    assert too_late not in search("admin")
    assert search("boss") == [in_window_qeh]  # footage of the manager's own site only
    assert search("inv") == []  # an investigator sees only what is linked to their incidents
    _link(server, recent["incident_id"], in_window_qeh)
    assert search("inv") == [in_window_qeh]

    # Answering it: a package of another incident is refused; the status change closes it.
    r = http.patch(one, json={"status": "answered", "notes": "sent by post"}, headers=server.as_("inv"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "answered" and r.json()["closed_by"] == "user:inv"
    assert r.json()["notes"] == "sent by post"
    assert http.patch(one, json={"export_id": "nope"}, headers=server.as_("inv")).status_code == 404
    assert [x["id"] for x in http.get(base, headers=server.as_("inv")).json()] == [older["id"]]
    everything = http.get(base, params={"status": ["open", "answered"]}, headers=server.as_("inv")).json()
    assert len(everything) == 2

    # Every step is in custody, naming the request and its incident but never the requester.
    with s.db.session() as session:  # type: ignore[attr-defined]
        entries = session.scalars(
            select(CustodyEntry).where(CustodyEntry.action == "subject_access").order_by(CustodyEntry.seq)
        ).all()
        mine = [e for e in entries if recent["id"] in e.details]
        assert ['"received"' in mine[0].details, len(mine)] == [True, 9]
        assert all("Alex Smith" not in e.details and "alex@example.org" not in e.details for e in entries)
        everything = session.scalars(select(CustodyEntry.details)).all()
        assert not [d for d in everything if d and ("Alex Smith" in d or "alex@example.org" in d)]
