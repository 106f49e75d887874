"""A retried POST makes one thing: sent again with the same ``Idempotency-Key`` it answers its first
answer (status and body) and records nothing new (no second incident, link, export, download link or
redaction version, subject access request, no second custody entry); the same key with another body is refused with the one
error envelope; another person's same key is their own; two requests at once under one key make one
thing on PostgreSQL (``storage.idempotency``)."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from accounts.service import HOLD_PERSON_LOCK
from chain_of_custody.models import CustodyEntry
from incidents.export.models import ExportJob, ExportLink
from incidents.grants import seal_export_job
from incidents.models import Incident, IncidentLink
from incidents.service import IncidentDraft, create_incident, link_target
from incidents.subject_access.models import SubjectAccessRequest
from redaction.models import RedactionJob
from storage.idempotency import HEADER, REPLAYED_HEADER, IdempotencyKey, forget_expired
from tests.conftest import backends_waiting_on_a_lock, wait_for
from tests.test_incidents_kit import bearer, store_item, user


@dataclass
class World:
    """Two administrators (``ann``, ``bob``), an incident with a linked item, a ready package of it,
    and a clip not linked yet; an application answering in process (no background work)."""

    services: Any
    client: TestClient
    incident_id: str
    linked_id: str
    free_id: str
    export_id: str
    ids: dict[str, int]

    def post(self, who: str, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
        headers = bearer(self.services, who)
        if key is not None:
            headers[HEADER] = key
        return self.client.post(path, json=body, headers=headers)


@pytest.fixture
def world(services: Any) -> Iterator[World]:
    from ingest.app import create_app

    s = services
    ids = {name: user(s, name, "admin") for name in ("ann", "bob")}
    linked, free = store_item(s), store_item(s)
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", datetime.now(UTC) - timedelta(hours=1), "NORTH"),
            "test",
            ledger=s.ledger,
        )
        link_target(session, s.ledger, incident.id, "evidence", linked.id, "test", "on the scene")
        job = ExportJob(
            id=str(uuid.uuid4()),
            incident_id=incident.id,
            requested_by="user:ann",
            requester_role="admin",
            scope=json.dumps({"item_ids": [linked.id], "outside": [], "pinned": {}}),
            status="ready",
            result="{}",
            package_sha256="0" * 64,
            package_size=1,
            filename="package.zip",
        )
        seal_export_job(job, s.key)  # as the route that asks for an export seals it
        session.add(job)
        incident_id, export_id = incident.id, job.id
    app = create_app(s.settings, s)
    app.state.services = s  # no lifespan: no builder or worker appends meanwhile
    yield World(s, TestClient(app), incident_id, linked.id, free.id, export_id, ids)


@dataclass(frozen=True)
class Route:
    """One creating route: where it is, two different bodies, how many things it has made."""

    name: str
    path: Callable[[World], str]
    body: Callable[[World], dict[str, Any]]
    other: Callable[[World], dict[str, Any]]
    count: Callable[[Any], int]
    status: int
    # How many things made once another person sent the same request too: their own as well, except
    # where the thing has a natural key (a link of the same item answers the link that is there).
    after_other_person: int = 2


def _count(model: Any) -> Callable[[Any], int]:
    def count(services: Any) -> int:
        with services.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)

    return count


INCIDENT = {"category": "physical_assault", "occurred_at": "2026-11-30T10:00:00Z", "site": "NORTH"}
REQUEST = {"contact": "sam@example.org", "received_on": "2026-11-30", "site": "NORTH"}
ROUTES = [
    Route(
        "incident",
        lambda w: "/api/v1/incidents",
        lambda w: {**INCIDENT, "title": "Assault in A&E"},
        lambda w: {**INCIDENT, "title": "Assault on Ward 7"},
        _count(Incident),
        201,
    ),
    Route(
        "evidence link",
        lambda w: f"/api/v1/incidents/{w.incident_id}/links",
        lambda w: {"target_id": w.free_id, "reason": "the wearer's clip"},
        lambda w: {"target_id": w.free_id, "reason": "another reason"},
        _count(IncidentLink),
        201,
        after_other_person=1,  # a link of the same item: the natural key answers the one there is
    ),
    Route(
        "export",
        lambda w: f"/api/v1/incidents/{w.incident_id}/exports",
        lambda w: {"item_ids": [w.linked_id]},
        lambda w: {},
        _count(ExportJob),
        202,
    ),
    Route(
        "download link",
        lambda w: f"/api/v1/exports/{w.export_id}/links",
        lambda w: {"recipient": "PC Jones, West Yorkshire Police"},
        lambda w: {"recipient": "Ms Smith, defence solicitor"},
        _count(ExportLink),
        201,
    ),
    Route(
        "redaction",
        lambda w: f"/api/v1/evidence/{w.linked_id}/redactions",
        lambda w: {"note": "blur the bystander"},
        lambda w: {"note": "and mute the name"},
        _count(RedactionJob),
        202,
    ),
    Route(
        "subject access request",
        lambda w: "/api/v1/subject-access-requests",
        lambda w: {**REQUEST, "requester": "Sam Requester"},
        lambda w: {**REQUEST, "requester": "Alex Requester"},
        _count(SubjectAccessRequest),
        201,
    ),
]


def entries(services: Any, actor: str) -> int:
    """Custody entries made on ``actor``'s behalf (the service's own work appends under its name)."""
    with services.db.session() as session:
        found = select(func.count()).select_from(CustodyEntry).where(CustodyEntry.actor == actor)
        return int(session.scalar(found) or 0)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_a_retry_answers_the_first_answer_and_makes_nothing(
    world: World, route: Route, caplog: pytest.LogCaptureFixture
) -> None:
    s, path, key = world.services, route.path(world), str(uuid.uuid4())
    before = route.count(s)
    first = world.post("ann", path, route.body(world), key)
    assert first.status_code == route.status, first.text
    made, recorded = route.count(s), entries(s, "user:ann")
    assert made == before + 1

    again = world.post("ann", path, route.body(world), key)
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.headers.get("location") == first.headers.get("location")
    assert (route.count(s), entries(s, "user:ann")) == (made, recorded)

    # The same key with another body: refused, in the one envelope, logged, nothing made.
    with caplog.at_level(logging.WARNING, logger="storage.idempotency"):
        other = world.post("ann", path, route.other(world), key)
    assert other.status_code == 422, other.text
    assert other.json()["reason"] == "idempotency_key_reused"
    assert "another request" in other.json()["error"]
    assert any("idempotency key used again" in r.getMessage() for r in caplog.records)
    assert (route.count(s), entries(s, "user:ann")) == (made, recorded)

    # Another person's same key is theirs: their request is answered as their own.
    theirs = world.post("bob", path, route.body(world), key)
    assert theirs.status_code in (200, route.status), theirs.text
    assert REPLAYED_HEADER not in theirs.headers
    assert theirs.json()["id"] != first.json()["id"] or route.name == "evidence link"
    assert route.count(s) == before + route.after_other_person


def test_without_a_key_each_request_is_its_own(world: World) -> None:
    """No key, no memory: two requests for two packages make two (as before)."""
    path = f"/api/v1/incidents/{world.incident_id}/exports"
    answers = [world.post("ann", path, {}, None) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["id"] != answers[1].json()["id"]


def test_a_key_is_checked_and_forgotten_after_its_time(world: World) -> None:
    s, path = world.services, f"/api/v1/incidents/{world.incident_id}/exports"
    bad = world.post("ann", path, {}, "x" * 256)
    assert bad.status_code == 400 and bad.json()["reason"] == "bad_idempotency_key"
    quoted = world.post("ann", path, {}, '"a7c1"')
    assert world.post("ann", path, {}, "a7c1").content == quoted.content  # the draft's sf-string
    with s.db.session() as session:
        row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == "a7c1"))
        assert row is not None and row.user_id == world.ids["ann"]
        assert row.expires_at - row.created_at == timedelta(hours=s.settings.idempotency_key_hours)
        assert forget_expired(session, row.expires_at) == 1
    fresh = world.post("ann", path, {}, "a7c1")
    assert fresh.status_code == 202 and fresh.json()["id"] != quoted.json()["id"]


def test_a_kept_download_link_answer_holds_no_token(world: World) -> None:
    """Whoever reads the database could download with a stored link's token: the answer is kept
    without it and given again with the same token made anew."""
    path, body = f"/api/v1/exports/{world.export_id}/links", {"recipient": "PC Jones"}
    first = world.post("ann", path, body, "link-1")
    token = first.json()["path"].rsplit("/", 1)[1]
    with world.services.db.session() as session:
        kept = session.scalar(select(IdempotencyKey.response).where(IdempotencyKey.key == "link-1"))
    assert kept is not None and token not in kept and token.rsplit(".", 1)[1] not in kept
    assert world.post("ann", path, body, "link-1").content == first.content


HELD_ANN = f"SELECT pg_advisory_xact_lock({HOLD_PERSON_LOCK}, (SELECT id FROM users WHERE username = 'ann'))"
LOCKS: dict[str, str] = {
    # Something each route takes after it has claimed its key: the test holds it, so that both
    # requests are inside the route at once before either can finish.
    "incident": "SELECT year FROM incident_counters FOR UPDATE",
    "evidence link": "SELECT id FROM ledger_head WHERE id = 1 FOR UPDATE",
    # The person's own lock (``accounts.service.hold_person``), not their row: every write on their
    # authority holds that for share first (``accounts.service.stands``), before the key is claimed.
    "export": HELD_ANN,
    "download link": HELD_ANN,
    "redaction": HELD_ANN,
    "subject access request": "SELECT id FROM ledger_head WHERE id = 1 FOR UPDATE",
}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_two_requests_at_once_under_one_key_make_one_thing(world: World, route: Route) -> None:
    s, path, key = world.services, route.path(world), str(uuid.uuid4())
    if route.name == "incident":  # the year's counter row, so that there is one to hold
        assert world.post("ann", path, {**route.body(world), "title": "earlier"}, None).status_code == 201
    before = route.count(s)
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(world.post("ann", path, route.body(world), key))

    with s.db.engine.connect() as holder:
        holder.execute(text(LOCKS[route.name]))
        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()

        def both_waiting() -> bool:
            return backends_waiting_on_a_lock(s.db.engine) >= 2

        wait_for(both_waiting, 20, 0.02, "both requests to wait inside the route")
        holder.rollback()
    for t in threads:
        t.join(30)
    assert len(answers) == 2
    assert [a.status_code for a in answers] == [route.status] * 2, [a.text for a in answers]
    assert answers[0].content == answers[1].content
    assert route.count(s) == before + 1
