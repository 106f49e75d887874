"""Incidents, statistics and user administration through the real HTTP API (both databases)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select

from accounts.models import User
from chain_of_custody.models import CustodyEntry
from tests.conftest import SIGN_IN_TIMEOUT
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import PASSWORD, actions, bearer, staff, store_item, user

T0 = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def login_as(url: str, username: str, password: str) -> dict[str, str]:
    r = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": username, "password": password}, timeout=SIGN_IN_TIMEOUT
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_incident_lifecycle_search_links_and_timeline(live) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    staff(s, "S-1", "nurse", "NORTH")
    staff(s, "S-2", "porter", "NORTH")
    user(s, "mgr", "security_manager", "NORTH")
    inv_id = user(s, "inv", "investigator")
    mgr = bearer(s, "mgr")
    api = f"{live.url}/api/v1"
    clip = store_item(s, wearer="S-1", start=T0, stop=T0 + timedelta(minutes=2))

    r = httpx.post(
        f"{api}/incidents",
        headers=mgr,
        json={
            "category": "physical_assault",
            "occurred_at": T0.isoformat(),
            "site": "NORTH",
            "ward": "A&E Majors",
            "title": "Patient struck nurse",
            "description": "Patient in bay 4 struck a nurse during observations.",
            "staff": [
                {"staff_id": "S-1", "involvement": "victim"},
                {"staff_id": "S-2", "involvement": "witness"},
            ],
        },
    )
    assert r.status_code == 201, r.text
    inc = r.json()
    assert inc["reference"].startswith(f"INC-{datetime.now(UTC).year}-") and inc["status"] == "open"
    assert [x["staff_group"] for x in inc["staff"]] == ["nurse", "porter"]
    ref = inc["reference"]
    other = httpx.post(
        f"{api}/incidents",
        headers=mgr,
        json={"category": "theft", "occurred_at": (T0 + timedelta(days=2)).isoformat(), "site": "NORTH"},
    ).json()
    assert int(other["reference"][-6:]) == int(ref[-6:]) + 1

    # Bad input is refused with a reason.
    r = httpx.post(
        f"{api}/incidents",
        headers=mgr,
        json={"category": "arson", "occurred_at": T0.isoformat(), "site": "NORTH"},
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{api}/incidents",
        headers=mgr,
        json={"category": "theft", "occurred_at": "2026-11-03T09:30:00", "site": "NORTH"},
    )
    assert r.status_code == 422  # a time without its zone is ambiguous
    r = httpx.post(
        f"{api}/incidents",
        headers=mgr,
        json={
            "category": "theft",
            "occurred_at": T0.isoformat(),
            "site": "NORTH",
            "staff": [{"staff_id": "S-404"}],
        },
    )
    assert r.status_code == 400 and r.json()["detail"]["reason"] == "unknown_staff"

    # Search and filter.
    def refs(**params: object) -> list[str]:
        r = httpx.get(f"{api}/incidents", headers=mgr, params=params)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        return [i["reference"] for i in r.json()]

    assert refs() == [other["reference"], ref]
    assert refs(category="physical_assault") == [ref]
    assert refs(q="bay 4") == [ref] and refs(q="majors") == [ref] and refs(q="100%") == []
    assert refs(staff_id="S-2") == [ref]
    assert refs(occurred_from=(T0 + timedelta(days=1)).isoformat()) == [other["reference"]]
    assert refs(status="closed") == []

    # Link with a reason; every link and unlink is a custody entry on the item.
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        headers=mgr,
        json={"kind": "evidence", "target_id": clip.id, "reason": "x"},
    )
    assert r.status_code == 422  # a reason is a reason
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        headers=mgr,
        json={"kind": "evidence", "target_id": clip.id, "reason": "camera of the nurse struck"},
    )
    assert r.status_code == 201, r.text
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        headers=mgr,
        json={"kind": "evidence", "target_id": clip.id, "reason": "camera of the nurse struck"},
    )
    assert r.status_code == 200  # already linked: nothing new
    assert actions(s, clip.id).count("linked") == 1
    assert refs(evidence_id=clip.id) == [ref]
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        headers=mgr,
        json={
            "kind": "alarm",
            "target_id": raise_test_alarm(s, "LW-NORTH", site="NORTH"),
            "reason": "raised",
        },
    )
    assert r.status_code == 201

    r = httpx.put(f"{api}/incidents/{ref}/investigators/{inv_id}", headers=mgr)
    assert r.status_code == 200 and [i["username"] for i in r.json()["investigators"]] == ["inv"]
    inv = bearer(s, "inv")
    r = httpx.patch(f"{api}/incidents/{ref}", headers=inv, json={"status": "under_investigation"})
    assert r.status_code == 200 and r.json()["status"] == "under_investigation"
    r = httpx.patch(f"{api}/incidents/{ref}", headers=inv, json={"site": "SOUTH"})
    assert r.status_code == 403  # moving an incident between sites is an administrator's decision
    r = httpx.patch(f"{api}/incidents/{ref}", headers=inv, json={"status": "closed"})
    assert r.status_code == 400 and r.json()["detail"]["reason"] == "outcome_required"
    r = httpx.patch(
        f"{api}/incidents/{ref}",
        headers=inv,
        json={"status": "referred_to_police", "outcome": "crime ref 123"},
    )
    assert r.status_code == 200 and r.json()["closed_at"] is None
    r = httpx.patch(f"{api}/incidents/{ref}", headers=inv, json={"status": "closed"})
    assert r.status_code == 200 and r.json()["closed_at"] is not None
    assert refs(status="closed") == [ref]

    r = httpx.post(
        f"{api}/incidents/{ref}/unlink",
        headers=inv,
        json={"kind": "evidence", "target_id": clip.id, "reason": "wrong bay"},
    )
    assert r.status_code == 204
    assert actions(s, clip.id)[-1] == "unlinked"

    timeline = httpx.get(f"{api}/incidents/{ref}/timeline", headers=inv).json()
    kinds = [e["kind"] for e in timeline]
    assert kinds[0] == "occurred" and "created" in kinds and "assigned" in kinds and "alarm" in kinds
    assert kinds.count("linked") == 2 and kinds.count("unlinked") == 1 and kinds.count("status_changed") == 3
    assert [e["at"] for e in timeline] == sorted(e["at"] for e in timeline)


def test_statistics_are_anonymised(live) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    staff(s, "N-1", "nurse", "NORTH")
    staff(s, "P-1", "porter", "SOUTH")
    api = f"{live.url}/api/v1"
    when = T0.isoformat()
    for _ in range(7):
        r = httpx.post(
            f"{api}/incidents",
            headers=live.admin(),
            json={
                "category": "verbal_abuse",
                "occurred_at": when,
                "site": "NORTH",
                "staff": [{"staff_id": "N-1"}],
                "description": "named patient shouted at N-1",
            },
        )
        assert r.status_code == 201
    for _ in range(2):
        httpx.post(
            f"{api}/incidents",
            headers=live.admin(),
            json={"category": "theft", "occurred_at": when, "site": "SOUTH", "staff": [{"staff_id": "P-1"}]},
        ).raise_for_status()
    for _ in range(6):
        httpx.post(
            f"{api}/incidents",
            headers=live.admin(),
            json={
                "category": "verbal_abuse",
                "occurred_at": when,
                "site": "SOUTH",
                "staff": [{"staff_id": "P-1"}],
            },
        ).raise_for_status()
    user(s, "aud", "auditor")
    aud = bearer(s, "aud")
    table = httpx.get(f"{api}/statistics", headers=aud, params={"by": ["month", "site"]}).json()
    rows = {(r["month"], r["site"]): (r["count"], r["suppressed"]) for r in table["rows"]}
    assert rows == {("2026-11", "NORTH"): (5, False), ("2026-11", "SOUTH"): (10, False)}
    assert table["total"] == 15  # 15, rounded to the nearest 5 (7 -> 5, 8 -> 10)
    groups = httpx.get(f"{api}/statistics", headers=aud, params={"by": ["staff_group"]}).json()
    assert {r["staff_group"]: r["count"] for r in groups["rows"]} == {"nurse": 5, "porter": 10}
    body = httpx.get(f"{api}/statistics", headers=aud, params={"by": ["site", "category"], "format": "csv"})
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(body.text)))
    # SOUTH's 2 thefts are not listed; nor is SOUTH's abuse (6), which SOUTH's margin of 8 (a
    # query by site) would turn into the 2: secondary suppression.
    assert lines == [
        ["site", "category", "count"],
        ["NORTH", "verbal_abuse", "5"],
        ["total", "", "15"],
    ]
    # Nothing identifying leaves: no staff numbers, names or free text.
    assert "N-1" not in body.text and "patient" not in str(table)
    assert httpx.get(f"{api}/statistics", headers=aud, params={"by": ["wearer"]}).status_code == 422


def test_user_administration(live) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    api = f"{live.url}/api/v1"
    r = httpx.post(
        f"{api}/users",
        headers=live.admin(),
        json={
            "username": "jo",
            "password": "twelve chars ok",
            "role": "investigator",
            "full_name": "Jo Bloggs",
        },
    )
    assert r.status_code == 201 and r.json()["role"] == "investigator" and "password" not in r.text
    assert (
        httpx.post(
            f"{api}/users",
            headers=live.admin(),
            json={"username": "jo", "password": "twelve chars ok", "role": "investigator"},
        ).status_code
        == 409
    )
    assert (
        httpx.post(
            f"{api}/users",
            headers=live.admin(),
            json={"username": "bo", "password": "short", "role": "investigator"},
        ).status_code
        == 422
    )
    assert (
        httpx.post(
            f"{api}/users",
            headers=live.admin(),
            json={"username": "bo", "password": "twelve chars ok", "role": "king"},
        ).status_code
        == 422
    )
    jo_id = r.json()["id"]
    jo = login_as(live.url, "jo", "twelve chars ok")
    assert httpx.get(f"{api}/me", headers=jo).json()["role"] == "investigator"
    assert [u["username"] for u in httpx.get(f"{api}/users", headers=live.admin()).json()] == ["admin", "jo"]

    # A role change takes effect at once: old tokens are revoked.
    r = httpx.patch(f"{api}/users/{jo_id}", headers=live.admin(), json={"role": "auditor", "site": "NORTH"})
    assert r.status_code == 200 and r.json()["role"] == "auditor" and r.json()["site"] == "NORTH"
    assert httpx.get(f"{api}/me", headers=jo).status_code == 401
    # Deactivated users cannot sign in.
    assert (
        httpx.patch(f"{api}/users/{jo_id}", headers=live.admin(), json={"active": False}).status_code == 200
    )
    assert (
        httpx.post(
            f"{api}/auth/token",
            data={"username": "jo", "password": "twelve chars ok"},
            timeout=SIGN_IN_TIMEOUT,
        ).status_code
        == 401
    )
    # The last administrator cannot remove themselves.
    with s.db.session() as session:
        admin_id = session.scalar(select(User.id).where(User.username == "admin"))
    r = httpx.patch(f"{api}/users/{admin_id}", headers=live.admin(), json={"role": "auditor"})
    assert r.status_code == 400 and "last active administrator" in r.text
    assert httpx.get(f"{api}/users/999999", headers=live.admin()).status_code == 404
    with s.db.session() as session:  # the entries of this test's changes (not the fixture's admin)
        changes = list(
            session.scalars(
                select(CustodyEntry.details).where(
                    CustodyEntry.action == "user_changed", CustodyEntry.actor != "test"
                )
            )
        )
    assert len(changes) == 3 and "twelve chars ok" not in "".join(changes) and '"password"' not in changes[0]


def test_repeated_failures_lock_nobody_out(live) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    uid = user(s, "sam", "operator")
    token_url = f"{live.url}/api/v1/auth/token"
    for _ in range(s.settings.login_free_failures + 2):
        assert (
            httpx.post(token_url, data={"username": "sam", "password": "guess guess guess"}).status_code
            == 401
        )
    # this address must wait now, even with the right password (and is told nothing more)...
    r = httpx.post(token_url, data={"username": "sam", "password": PASSWORD})
    assert r.status_code == 401 and "locked" not in r.text
    # ...but the account is not locked: sam, from another address, signs in
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5"))
    assert other.post(token_url, data={"username": "sam", "password": PASSWORD}).status_code == 200
    with s.db.session() as session:
        assert session.get(User, uid).locked_until is None  # type: ignore[union-attr]
