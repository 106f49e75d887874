"""Why an original is read (which may name a patient) goes on its custody entry and nowhere else:
stated in a header by API clients, in the query only where a header cannot be sent, and never
written to the log, access lines included, whatever the route answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chain_of_custody.ledger import Ledger
from ingest.read_reasons import REASON_HEADER
from tests.conftest import start_server
from tests.test_error_logging import _Buffer, captured  # noqa: F401 - the log capture fixture
from tests.test_incidents_kit import bearer, store_item, user

PATIENT = "Bernadette Quigley-Oyelaran"
REASON = f"Complaint by {PATIENT}, bed 4, ward 7"


@pytest.fixture
def site(sqlite_services: Any) -> Iterator[tuple[str, Any, dict[str, str]]]:
    user(sqlite_services, "admin", "admin")
    server, thread, url = start_server(sqlite_services)
    yield url, sqlite_services, bearer(sqlite_services, "admin")
    server.should_exit = True
    thread.join(15)


def reasons_on_record(services: Any, item_id: str) -> list[str | None]:
    with services.db.session() as session:
        return [
            json.loads(e.body.details).get("reason")
            for e in Ledger.item_entries(session, item_id)
            if e.body.action == "viewed"
        ]


def test_the_reason_in_a_header_goes_on_the_record(site: tuple[str, Any, dict[str, str]]) -> None:
    url, services, admin = site
    clip = store_item(services)
    content = f"{url}/api/v1/evidence/{clip.id}/content"
    # UTF-8 in the header, as HTTP libraries send it.
    named = "Revue demandée par José Núñez"
    r = httpx.get(content, headers={**admin, REASON_HEADER: named.encode()})
    assert r.status_code == 200, r.text
    r = httpx.get(content, headers={**admin, REASON_HEADER: REASON}, params={"reason": REASON})
    assert r.status_code == 200, r.text
    # The query alone still works (the player's <video src>, a download link).
    assert httpx.get(content, headers=admin, params={"reason": "checking the query form"}).status_code == 200
    assert reasons_on_record(services, clip.id) == [named, REASON, "checking the query form"]
    # Two different reasons for one read, a header too short: refused, nothing recorded.
    for headers, params, code in [
        ({REASON_HEADER: REASON}, {"reason": "another reason entirely"}, "reason_conflict"),
        ({REASON_HEADER: "too short"}, {}, "invalid_request"),
        # Ten bytes, five characters: long enough for the server's look at the raw header, not as text.
        ({REASON_HEADER: "ééééé".encode()}, {}, "invalid_reason"),
    ]:
        r = httpx.get(content, headers={**admin, **headers}, params=params)
        assert r.status_code == 422 and r.json()["reason"] == code, (headers, r.text)
    r = httpx.get(content, headers=admin)
    assert r.status_code == 422 and r.json()["reason"] == "reason_required"
    assert len(reasons_on_record(services, clip.id)) == 3
    # The waveform takes it the same way (this item has no sound; the read is recorded all the same).
    r = httpx.get(f"{url}/api/v1/evidence/{clip.id}/waveform", headers={**admin, REASON_HEADER: REASON})
    assert r.status_code == 200, r.text
    assert reasons_on_record(services, clip.id)[-1] == REASON


def test_no_reason_reaches_the_log_not_even_in_an_access_line(
    site: tuple[str, Any, dict[str, str]],
    captured: _Buffer,  # noqa: F811
) -> None:
    url, services, admin = site
    clip = store_item(services)
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel("INFO")  # as a deployment that keeps access lines would have it
    try:
        content = f"{url}/api/v1/evidence/{clip.id}/content"
        assert httpx.get(content, headers=admin, params={"reason": REASON}).status_code == 200
        assert httpx.get(content, headers={**admin, REASON_HEADER: REASON}).status_code == 200
        assert (
            httpx.get(content, headers=admin, params={"review_reason": REASON, "reason": REASON}).status_code
            == 200
        )
        # Refused ones: two reasons, a reason too long, a cross-site read with the reason in it.
        httpx.get(content, headers={**admin, REASON_HEADER: REASON}, params={"reason": REASON + "!"})
        httpx.get(content, headers=admin, params={"reason": REASON * 100})
        httpx.get(
            f"{url}/api/v1/evidence/{clip.id}/waveform",
            params={"reason": REASON},
            headers={"Cookie": "evidence_session=x", "Sec-Fetch-Site": "cross-site"},
        )
        text = captured.text()
    finally:
        access.setLevel(level)
    assert f"/api/v1/evidence/{clip.id}/content?reason=[redacted]" in text  # the access line is there
    for part in (PATIENT, "Quigley", "Bernadette", "Complaint"):
        assert part not in text, text
    assert reasons_on_record(services, clip.id) == [REASON, REASON, REASON]


def test_a_deletion_reason_goes_in_the_header_too(site: tuple[str, Any, dict[str, str]]) -> None:
    url, services, admin = site
    locked = store_item(services)  # under COMPLIANCE lock for a day: the deletion itself is refused
    item = f"{url}/api/v1/evidence/{locked.id}"
    r = httpx.delete(item, headers=admin)
    assert r.status_code == 422 and r.json()["reason"] == "reason_required"
    # With the reason in the header, the request reaches the deletion (and storage's lock refuses it).
    r = httpx.delete(item, headers={**admin, REASON_HEADER: "recorded by mistake"})
    assert r.status_code == 409 and r.json()["detail"]["reason"] == "storage_locked", r.text
    r = httpx.delete(
        item, headers={**admin, REASON_HEADER: "recorded by mistake"}, params={"reason": "other"}
    )
    assert r.status_code == 422 and r.json()["reason"] == "reason_conflict"


@pytest.fixture
def either(services: Any) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """The served application on SQLite and on PostgreSQL (a download's grant is used up in SQL)."""
    user(services, "admin", "admin")
    server, thread, url = start_server(services)
    yield url, services, bearer(services, "admin")
    server.should_exit = True
    thread.join(15)


def test_a_read_grant_carries_the_reason_so_no_address_has_to(
    either: tuple[str, Any, dict[str, str]],
    captured: _Buffer,  # noqa: F811
) -> None:
    """The console's download and player cannot send a header: the reason is posted once, and the
    address holds a grant instead, kept to the item, the person and the sign-in; a download's works
    once. Nothing of the reason or the grant reaches the log."""
    from datetime import UTC, datetime, timedelta

    from ingest.models import ReadGrant
    from ingest.read_grants import forget_expired

    url, services, admin = either
    clip, other = store_item(services), store_item(services)
    grants = f"{url}/api/v1/evidence/{clip.id}/read-grants"
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel("INFO")
    try:
        r = httpx.post(grants, headers=admin, json={"reason": REASON})
        assert r.status_code == 201, r.text
        download = r.json()["url"]
        assert r.json()["use"] == "download" and "reason" not in download and PATIENT not in download
        assert download.startswith(f"/api/v1/evidence/{clip.id}/content?grant=")
        token = download.split("grant=", 1)[1]
        assert reasons_on_record(services, clip.id) == []  # asking for a grant reads nothing
        # Another sign-in of the same person, or the grant on another item: refused, nothing recorded.
        again = bearer(services, "admin")
        r = httpx.get(f"{url}{download}", headers=again)
        assert r.status_code == 403 and r.json()["reason"] == "grant_refused"
        r = httpx.get(f"{url}/api/v1/evidence/{other.id}/content", headers=admin, params={"grant": token})
        assert r.status_code == 403 and r.json()["reason"] == "grant_refused"
        # Beside a reason of its own: refused.
        r = httpx.get(f"{url}{download}", headers={**admin, REASON_HEADER: "another reason entirely"})
        assert r.status_code == 422 and r.json()["reason"] == "reason_conflict"
        assert reasons_on_record(services, clip.id) == []
        # Used: the reason goes on the read's entry; a second use of a download's grant is refused.
        r = httpx.get(f"{url}{download}", headers=admin)
        assert r.status_code == 200, r.text
        assert reasons_on_record(services, clip.id) == [REASON]
        r = httpx.get(f"{url}{download}", headers=admin)
        assert r.status_code == 403 and r.json()["reason"] == "grant_refused"
        # A player's grant serves its ranges until it expires.
        r = httpx.post(grants, headers=admin, json={"reason": REASON, "use": "play"})
        play = r.json()["url"]
        for first in (0, 10, 20):
            r = httpx.get(f"{url}{play}", headers={**admin, "Range": f"bytes={first}-{first + 9}"})
            assert r.status_code == 206, r.text
        with services.db.session() as session:
            for row in session.query(ReadGrant):
                row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        r = httpx.get(f"{url}{play}", headers={**admin, "Range": "bytes=0-9"})
        assert r.status_code == 403 and r.json()["reason"] == "grant_refused"
        # Too short a reason is refused in the body as in the header.
        r = httpx.post(grants, headers=admin, json={"reason": "short"})
        assert r.status_code == 422
        text = captured.text()
    finally:
        access.setLevel(level)
    assert "/content?grant=[redacted]" in text  # the access lines are there
    for part in (PATIENT, "Quigley", "Complaint", token):
        assert part not in text, part
    with services.db.session() as session:
        assert forget_expired(session, datetime.now(UTC)) >= 2
        assert session.query(ReadGrant).count() == 0  # the reasons they held are forgotten


def test_a_refused_read_leaves_a_download_grant_for_the_next_try(
    either: tuple[str, Any, dict[str, str]],
) -> None:
    """A download's grant is used by the read it admits: a read refused on the way (here a range
    beyond the item: 416) leaves it unused, so the download that follows is served, once; of several
    reads with it at once, one is served."""
    from concurrent.futures import ThreadPoolExecutor

    url, services, admin = either
    clip = store_item(services)
    grants = f"{url}/api/v1/evidence/{clip.id}/read-grants"
    download = httpx.post(grants, headers=admin, json={"reason": REASON}).json()["url"]
    r = httpx.get(f"{url}{download}", headers={**admin, "Range": f"bytes={clip.size + 10}-"})
    assert r.status_code == 416 and r.json()["reason"] == "range_not_satisfiable", r.text
    assert reasons_on_record(services, clip.id) == []
    r = httpx.get(f"{url}{download}", headers=admin)
    assert r.status_code == 200, r.text
    assert reasons_on_record(services, clip.id) == [REASON]
    r = httpx.get(f"{url}{download}", headers=admin)
    assert r.status_code == 403 and r.json()["reason"] == "grant_refused"
    assert reasons_on_record(services, clip.id) == [REASON]

    # Several reads with one grant at once: one is served, the others refused, one read on record.
    download = httpx.post(grants, headers=admin, json={"reason": REASON}).json()["url"]
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda _: httpx.get(f"{url}{download}", headers=admin).status_code, range(4)))
    assert codes == [200, 403, 403, 403], codes
    assert reasons_on_record(services, clip.id) == [REASON, REASON]
