"""Reads that write the custody record cannot be made by another page with a signed-in person's
cookie: the headers a browser sends for an ``<img>``/``<video>`` from another origin are refused
before anything is written, on every route whose GET appends custody entries; our own pages, a
typed address and bearer-token clients still read, each read on the record as before."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from accounts.models import User
from accounts.service import Principal
from accounts.sessions import SessionPolicy, start_session
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from incidents.service import IncidentDraft, create_incident
from incidents.subject_access.service import RequestDraft, receive_request
from tests.test_incidents_kit import bearer, store_item, user

REASON = "Attacker chose this reason"
# What chromium sends for <img src="https://evidence.example/..."> on another origin.
CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
# Another host name of the same site: SameSite=Strict lets the cookie through, the origin differs.
SAME_SITE = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "video"}
OUR_PAGE = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "video"}
TYPED = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


def entries(services: Any, actor: str = "user:admin") -> int:
    """Custody entries made on ``actor``'s behalf (the reader's): the application's own background
    work (the service's ``verified`` entries for items just stored, checkpoints) appends under its
    own name while a request is answered, and must not be counted as the request's."""
    with services.db.session() as session:
        found = select(func.count()).select_from(CustodyEntry).where(CustodyEntry.actor == actor)
        return int(session.scalar(found) or 0)


def cookie(services: Any, username: str) -> dict[str, str]:
    with services.db.session() as session:
        row = session.scalar(select(User).where(User.username == username))
        assert row is not None
        secret, _ = start_session(
            session,
            row,
            SessionPolicy.from_settings(services.settings),
            services.key.derived_secret(CREDENTIAL_SEALS),
        )
    return {"Cookie": f"evidence_session={secret}"}


@pytest.fixture
def site(sqlite_services: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    """An admin, an original clip linked to an incident, and a subject access request: one address of
    each route whose GET writes custody."""
    from ingest.app import create_app
    from tests.test_alarms_kit import enrol

    s = sqlite_services
    admin_id = user(s, "admin", "admin")
    clip = store_item(s)
    admin = Principal(admin_id, "admin", "admin", None)
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", datetime.now(UTC) - timedelta(hours=1), "NORTH"),
            "user:admin",
            ledger=s.ledger,
        )
        sar = receive_request(
            session,
            s.ledger,
            admin,
            RequestDraft("Sam Requester", "sam@example.org", datetime.now(UTC).date(), "NORTH"),
        )
        incident_id, sar_id = incident.id, sar.id
    kit = enrol(s, "LW-XSITE", staff_id=None, site="NORTH")
    result = s.alarms.handle(*kit.amber(600))
    audio = b"OggS" + bytes(range(256)) * 4
    signed = kit.voice_memo_headers(result.event_id, audio)
    s.alarms.attach_voice_memo(
        "LW-XSITE",
        result.event_id,
        audio,
        content_type="audio/ogg",
        sent_at=signed["X-Device-Sent-At"],
        signature=signed["X-Device-Signature"],
    )
    paths = {
        "content": f"/api/v1/evidence/{clip.id}/content?reason={REASON.replace(' ', '+')}",
        "waveform": f"/api/v1/evidence/{clip.id}/waveform?reason={REASON.replace(' ', '+')}",
        "item continuity": f"/api/v1/evidence/{clip.id}/continuity",
        "item statement": f"/api/v1/evidence/{clip.id}/continuity-statement",
        "incident continuity": f"/api/v1/incidents/{incident_id}/continuity?format=pdf",
        "incident statement": f"/api/v1/incidents/{incident_id}/continuity-statement",
        "subject access search": f"/api/v1/subject-access-requests/{sar_id}/candidates"
        "?start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z",
        "voice memo": f"/api/v1/alarms/{result.alarm_id}/voice-memo",
    }
    with TestClient(create_app(s.settings, s)) as client:
        yield client, s, paths


@pytest.mark.parametrize(
    "browser", [CROSS_SITE, SAME_SITE, {}], ids=["cross-site", "same-site", "no-metadata"]
)
def test_a_cookie_read_from_another_origin_writes_nothing(
    site: tuple[TestClient, Any, dict[str, str]], browser: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, services, paths = site
    session = cookie(services, "admin")
    for name, path in paths.items():
        before = entries(services)
        with caplog.at_level(logging.WARNING, logger="accounts.browser"):
            r = client.get(path, headers={**session, **browser})
        assert r.status_code == 403, (name, r.status_code, r.text)
        assert r.json()["reason"] == "cross_site", (name, r.text)
        assert entries(services) == before, f"{name}: a custody entry was written"
    refusals = [r for r in caplog.records if r.getMessage() == "cross-site read refused"]
    assert len(refusals) == len(paths)
    # The log names the route, never the reason given in the address nor the session.
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in refusals)
    assert REASON.split()[0] not in logged and session["Cookie"].split("=", 1)[1] not in logged


def test_the_console_a_typed_address_and_a_token_still_read_and_are_recorded(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, paths = site
    session = cookie(services, "admin")
    token = bearer(services, "admin")
    path = paths["content"]
    for headers in (
        {**session, **OUR_PAGE},
        {**session, **TYPED},
        # An older browser sends no Sec-Fetch-*, but its Referer from our own page.
        {**session, "Referer": "http://testserver/footage/x"},
        # A bearer token cannot be added by another page: fetch metadata does not matter.
        {**token, **CROSS_SITE},
    ):
        before = entries(services)
        r = client.get(path, headers=headers)
        assert r.status_code == 200, (headers, r.text)
        assert entries(services) == before + 1
    # A foreign Referer without fetch metadata is refused.
    r = client.get(path, headers={**session, "Referer": "https://evil.example/page"})
    assert r.status_code == 403 and r.json()["reason"] == "cross_site"
    for name in ("item continuity", "subject access search", "voice memo"):
        before = entries(services)
        assert client.get(paths[name], headers={**session, **OUR_PAGE}).status_code == 200, name
        assert entries(services) > before, name


def test_a_cookie_read_without_fetch_metadata_is_a_setting(
    site: tuple[TestClient, Any, dict[str, str]],
) -> None:
    client, services, paths = site
    session = cookie(services, "admin")
    assert client.get(paths["content"], headers=session).status_code == 403
    services.settings.console_reads_need_fetch_metadata = False
    try:
        before = entries(services)
        assert client.get(paths["content"], headers=session).status_code == 200
        assert entries(services) == before + 1
        # Still refused when a browser says it is another site.
        assert client.get(paths["content"], headers={**session, **CROSS_SITE}).status_code == 403
    finally:
        services.settings.console_reads_need_fetch_metadata = True
