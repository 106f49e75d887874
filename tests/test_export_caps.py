"""Per-person caps hold under concurrent requests, on PostgreSQL (several requests of one person at
once, as a script or a double-clicking page sends them): exports building, download links live and
redactions queued are counted and added as one step, so the person ends with exactly the cap."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import ingest.app
from incidents.service import IncidentDraft, create_incident, link_evidence
from storage.embedded import EmbeddedSeaweed
from tests.conftest import make_settings, start_server
from tests.test_incidents_kit import bearer, sealed_export_job, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
CAP = 3
CALLERS = 12


@pytest.fixture
def capped(
    tmp_path: Path, pg_url: str, seaweed: EmbeddedSeaweed, monkeypatch: Any
) -> Iterator[tuple[Any, str]]:
    """A live server on PostgreSQL with small caps and no background loops (no build finishes while
    the requests race, so a cap overshot stays overshot)."""
    from ingest.services import build_services

    monkeypatch.setattr(ingest.app, "background_loops", lambda settings: [])
    s = build_services(
        make_settings(
            tmp_path,
            pg_url,
            seaweed,
            max_exports_building_per_user=CAP,
            max_export_links_per_user=CAP,
            max_redactions_queued_per_user=CAP,
        )
    )
    server, thread, url = start_server(s)
    yield s, url
    server.should_exit = True
    thread.join(15)
    s.db.dispose()


def _at_once(send: Callable[[], httpx.Response]) -> Counter[int]:
    """``CALLERS`` requests released together; how many got each status."""
    gate = threading.Barrier(CALLERS)
    got: list[int] = []

    def one() -> None:
        gate.wait()
        got.append(send().status_code)

    threads = [threading.Thread(target=one) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return Counter(got)


def _incident_with_item(s: Any) -> tuple[str, str]:
    item = store_item(s, kind="redacted_clip", start=T0, stop=T0 + timedelta(minutes=1))
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH"),
            "user:seed",
            ledger=s.ledger,
        )
        link_evidence(session, s.ledger, incident.id, item.id, "user:seed", "filmed at the scene")
        return incident.id, item.id


def test_exports_building_at_once_stop_at_the_cap(capped: tuple[Any, str]) -> None:
    s, url = capped
    user(s, "boss", "admin")
    headers = bearer(s, "boss")
    incident_id, _ = _incident_with_item(s)
    got = _at_once(
        lambda: httpx.post(
            f"{url}/api/v1/incidents/{incident_id}/exports", json={}, headers=headers, timeout=60
        )
    )
    assert got == Counter({202: CAP, 429: CALLERS - CAP}), got


def test_download_links_issued_at_once_stop_at_the_cap(capped: tuple[Any, str]) -> None:
    s, url = capped
    user(s, "boss", "admin")
    headers = bearer(s, "boss")
    incident_id, _ = _incident_with_item(s)
    export_id = str(uuid.uuid4())
    with s.db.session() as session:  # a package ready to hand out (its bytes are not read here)
        sealed_export_job(s, session, export_id, incident_id, "user:boss", "admin")
    got = _at_once(
        lambda: httpx.post(
            f"{url}/api/v1/exports/{export_id}/links",
            json={"recipient": "DC Jones"},
            headers=headers,
            timeout=60,
        )
    )
    assert got == Counter({201: CAP, 429: CALLERS - CAP}), got


def test_redactions_queued_at_once_stop_at_the_cap(capped: tuple[Any, str]) -> None:
    s, url = capped
    user(s, "boss", "admin")
    headers = bearer(s, "boss")
    clip = store_item(s, start=T0, stop=T0 + timedelta(minutes=1))
    got = _at_once(
        lambda: httpx.post(
            f"{url}/api/v1/evidence/{clip.id}/redactions",
            json={"note": "at once"},
            headers=headers,
            timeout=60,
        )
    )
    assert got == Counter({202: CAP, 429: CALLERS - CAP}), got
