"""Background work done for a person acts on their authority as it holds when the work is done, not
as it held when they asked: an export package's build and a redaction job, asked for by someone
deactivated, taken off the incident, or whose items moved out of their reach before (or while) the
worker acts, end refused with the reason on the job and a warning logged, and nothing is stored or
recorded for them. The same holds for a build or a job claimed again after its worker stopped (a
restart), and for a redaction retried after a failed attempt. Both databases, the real store and
the real ffmpeg; requests and changes go through the API as people make them (no background
builder runs: the test runs the builder and the worker itself, between or during the changes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

import ingest.app
from chain_of_custody.models import CustodyEntry, EvidenceItem
from firmware_simulators.scene import render_clip
from incidents.export import build as build_module
from incidents.export.jobs import ExportBuilds
from incidents.export.models import ExportJob
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from redaction import jobs
from redaction import worker as worker_module
from redaction.models import RedactionJob
from tests.conftest import start_server
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
REASON = "disclosure to the police of the assault on ward 7"


@pytest.fixture
def world(services: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A live server without background loops, and: ``inv``, an investigator assigned to NORTH's
    incident A; ``mgr``, NORTH's security manager; ``boss``, an administrator who makes the changes.
    Clip ``x`` is linked to A (inv sees it through A); clip ``y`` is worn by S-N, a nurse of NORTH
    (mgr sees it by reach), and its redacted copy ``c`` is linked to A. Both clips are real video."""
    s = services
    monkeypatch.setattr(ingest.app, "background_loops", lambda settings: [])
    path = tmp_path / "faces.mp4"
    render_clip(path, seconds=1, width=320, height=180, fps=10, faces=1, seed=5)
    staff(s, "S-N", "nurse", "NORTH")
    inv, mgr = user(s, "inv", "investigator"), user(s, "mgr", "security_manager", "NORTH")
    user(s, "boss", "admin")
    x = store_item(s, start=T0, stop=T0 + timedelta(seconds=1), data=path.read_bytes()).id
    y = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(seconds=1), data=path.read_bytes()).id
    c = store_item(s, kind="redacted_clip", derived_from=y).id
    with s.db.session() as session:
        draft = IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH", title="A")
        incident = create_incident(session, draft, "user:seed", ledger=s.ledger)
        assign_investigator(session, s.ledger, incident, inv, "user:seed")
        link_evidence(session, s.ledger, incident.id, x, "user:seed", "the clip of the assault")
        link_evidence(session, s.ledger, incident.id, c, "user:seed", "the redacted copy")
        a = incident.id
    server, thread, url = start_server(s)
    yield {
        "s": s,
        "url": url,
        "a": a,
        "ids": {"inv": inv, "mgr": mgr},
        "items": {"x": x, "y": y, "c": c},
        "headers": {"inv": bearer(s, "inv"), "mgr": bearer(s, "mgr"), "boss": bearer(s, "boss")},
    }
    server.should_exit = True
    thread.join(15)


def _change(w: dict[str, Any], change: str, who: str) -> None:
    """What ``boss`` does to ``who`` (through the API): ``deactivated``, ``unassigned`` from A,
    ``staff_moved`` (S-N to SOUTH), or ``site_changed`` (``who`` to SOUTH)."""
    person = w["ids"][who]
    method, path, body = {
        "deactivated": ("PATCH", f"/api/v1/users/{person}", {"active": False}),
        "unassigned": ("DELETE", f"/api/v1/incidents/{w['a']}/investigators/{person}", None),
        "staff_moved": (
            "POST",
            "/api/v1/staff",
            {"id": "S-N", "name": "Staff S-N", "group": "nurse", "site": "SOUTH"},
        ),
        "site_changed": ("PATCH", f"/api/v1/users/{person}", {"site": "SOUTH"}),
    }[change]
    r = httpx.request(method, w["url"] + path, json=body, headers=w["headers"]["boss"], timeout=60)
    assert r.status_code in (200, 201, 204), r.text


# -- export builds -------------------------------------------------------------------------------

# Who asks (with what), and what takes it out of their reach.
EXPORT_CASES = {
    "deactivated": ("inv", {}),
    "unassigned": ("inv", {}),
    "staff_moved": ("mgr", {"include_originals": True, "reason": REASON}),  # y, its original, hidden
    "site_changed": ("mgr", {}),
}


def _ask_export(w: dict[str, Any], who: str, body: dict[str, Any]) -> str:
    r = httpx.post(
        f"{w['url']}/api/v1/incidents/{w['a']}/exports", json=body, headers=w["headers"][who], timeout=60
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _build(s: Any, job_id: str) -> None:
    """Claim the build (it is the one waiting) and run it, as a builder's loop does."""
    builds = ExportBuilds(s, name="host-a:1:exports")
    assert builds.claim() == job_id
    builds.run(job_id)


def _export_left(s: Any, job_id: str) -> tuple[str, str, bool, int, int, list[str]]:
    """The job's status and error; whether its package item exists; the ``exported`` and
    ``exhibit_referenced`` custody entries; the package's objects in the store."""
    with s.db.reading() as session:
        job = session.get(ExportJob, job_id)
        assert job is not None
        package = session.get(EvidenceItem, job_id) is not None
        exported = session.scalar(select(func.count()).where(CustodyEntry.action == "exported"))
        referenced = session.scalar(select(func.count()).where(CustodyEntry.action == "exhibit_referenced"))
        status, error = job.status, job.error or ""
    return (
        status,
        error,
        package,
        int(exported or 0),
        int(referenced or 0),
        s.store.list_keys(f"exports/{job_id}"),
    )


def _refused(left: tuple[str, str, bool, int, int, list[str]], why: str) -> None:
    status, error, package, exported, referenced, _ = left
    assert status == "failed" and error.startswith("refused: ") and why in error, (status, error)
    assert not package and exported == 0 and referenced == 0, left


def _warned(caplog: pytest.LogCaptureFixture, what: str) -> None:
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith(what) for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


WHY = {
    "deactivated": "no longer signs in",
    "unassigned": "may no longer see the incident",
    "staff_moved": "may not see evidence item",
    "site_changed": "may no longer see the incident",
}


def test_an_export_whose_requester_still_stands_is_built(world: dict[str, Any]) -> None:
    """The setting builds when nothing changes (each requester's package: what the refusals below
    would otherwise have built)."""
    w = world
    for who, body in EXPORT_CASES.values():
        job_id = _ask_export(w, who, body)
        _build(w["s"], job_id)
        status, error, package, *_ = _export_left(w["s"], job_id)
        assert (status, error, package) == ("ready", "", True), (who, error)


@pytest.mark.parametrize("change", sorted(EXPORT_CASES))
def test_an_export_whose_requester_lost_it_before_the_build_is_refused(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture, change: str
) -> None:
    w = world
    who, body = EXPORT_CASES[change]
    job_id = _ask_export(w, who, body)
    _change(w, change, who)
    with caplog.at_level(logging.WARNING):
        _build(w["s"], job_id)
    left = _export_left(w["s"], job_id)
    _refused(left, WHY[change])
    assert left[5] == [], "the package was stored"
    _warned(caplog, "export refused: refused: ")


@pytest.mark.parametrize("when", ["media_pass", "after_storing"])
def test_an_export_whose_requester_is_deactivated_while_it_builds_records_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Deactivated during the media pass: refused before the package is stored. Deactivated once it
    is stored (and the items' locks extended), before it is recorded: the recording refuses it."""
    w = world
    job_id = _ask_export(w, "inv", {})
    name = "compose_package" if when == "media_pass" else "lock_for_package"
    real = getattr(build_module, name)

    def meanwhile(*args: Any, **kw: Any) -> Any:
        _change(w, "deactivated", "inv")
        return real(*args, **kw)

    monkeypatch.setattr(build_module, name, meanwhile)
    _build(w["s"], job_id)
    left = _export_left(w["s"], job_id)
    status, error, package, exported, _, stored = left
    assert status == "failed" and "no longer signs in" in error, error
    assert not package and exported == 0, left
    # Exhibit references were given while inv still stood; the package's layout is in the store
    # only when the refusal came after it was stored, and is recorded nowhere.
    assert stored == ([] if when == "media_pass" else [f"exports/{job_id}.layout"]), stored


def test_an_export_claimed_again_after_a_restart_is_refused_for_a_requester_unassigned_meanwhile(
    world: dict[str, Any],
) -> None:
    """The first builder claimed the build and stopped (a restart); inv was taken off A; the build
    claimed again once the lease ran out is refused, not built on the first claim's authority."""
    w = world
    s = w["s"]
    job_id = _ask_export(w, "inv", {})
    assert ExportBuilds(s, name="host-a:1:exports").claim() == job_id  # and then it stops
    _change(w, "unassigned", "inv")
    second = ExportBuilds(s, name="host-b:2:exports")
    later = datetime.now(UTC) + timedelta(seconds=s.settings.worker_lease_seconds + 1)
    assert second.claim(later) == job_id
    second.run(job_id)
    _refused(_export_left(s, job_id), WHY["unassigned"])
    with s.db.reading() as session:
        job = session.get(ExportJob, job_id)
        assert job is not None and job.attempts == 2 and job.lease_owner is None


# -- redaction jobs ------------------------------------------------------------------------------

REDACTION_CASES = {"deactivated": ("inv", "x"), "unassigned": ("inv", "x"), "staff_moved": ("mgr", "y")}
REDACTION_WHY = {
    "deactivated": "no longer signs in",
    "unassigned": "may no longer see evidence item",
    "staff_moved": "may no longer see evidence item",
}


def _ask_redaction(w: dict[str, Any], who: str, item: str) -> str:
    r = httpx.post(
        f"{w['url']}/api/v1/evidence/{w['items'][item]}/redactions",
        json={"note": "hide the bystanders"},
        headers=w["headers"][who],
        timeout=60,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _redaction_left(s: Any, job_id: str) -> tuple[RedactionJob, int, int, list[str]]:
    """The job; the items derived from its clip since it was asked for; the workers' entries on the clip (its reads and
    its redactions); the redacted objects stored for it."""
    with s.db.reading() as session:
        job = session.get(RedactionJob, job_id)
        assert job is not None
        session.expunge(job)
        derived = session.scalar(
            select(func.count()).where(
                EvidenceItem.derived_from_id == job.source_item_id,
                EvidenceItem.kind.in_(("redacted_clip", "redaction_record")),
                EvidenceItem.created_at > job.created_at,
            )
        )
        worked = session.scalar(
            select(func.count()).where(
                CustodyEntry.item_id == job.source_item_id, CustodyEntry.actor.like("worker:%")
            )
        )
    stored = [k for k in s.store.list_keys("redacted/") if f"/{job.source_item_id}/" in k]
    return job, int(derived or 0), int(worked or 0), stored


def _redaction_refused(s: Any, job_id: str, why: str, *, reads: int = 0) -> RedactionJob:
    job, derived, worked, stored = _redaction_left(s, job_id)
    assert job.status == "failed" and (job.error or "").startswith("refused: "), (job.status, job.error)
    assert why in (job.error or ""), job.error
    assert (derived, worked, stored) == (0, reads, []), (derived, worked, stored)
    return job


def test_a_redaction_whose_requester_still_stands_is_made(world: dict[str, Any]) -> None:
    w = world
    for who, item in (("inv", "x"), ("mgr", "y")):
        job_id = _ask_redaction(w, who, item)
        assert w["s"].redaction_worker().run_once() == job_id
        job, derived, *_ = _redaction_left(w["s"], job_id)
        assert (job.status, job.error, derived) == ("done", None, 2), (who, job.error)


@pytest.mark.parametrize("change", sorted(REDACTION_CASES))
def test_a_redaction_whose_requester_lost_it_before_the_job_ran_is_refused(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture, change: str
) -> None:
    w = world
    who, item = REDACTION_CASES[change]
    job_id = _ask_redaction(w, who, item)
    _change(w, change, who)
    with caplog.at_level(logging.WARNING):
        assert w["s"].redaction_worker().run_once() == job_id
    job = _redaction_refused(w["s"], job_id, REDACTION_WHY[change])  # not even read
    assert job.attempts == 1 < job.max_attempts  # refused for good: not queued again
    assert w["s"].redaction_worker().run_once() is None
    _warned(caplog, "redaction job refused: refused: ")


def test_a_redaction_whose_requester_is_deactivated_while_it_runs_stores_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clip was read for the job and redacted; inv is deactivated before the copy is stored:
    nothing is stored or recorded, and the read stays on the clip's custody."""
    w = world
    job_id = _ask_redaction(w, "inv", "x")
    real = worker_module.redact_file

    def meanwhile(*args: Any, **kw: Any) -> Any:
        result = real(*args, **kw)
        _change(w, "deactivated", "inv")
        return result

    monkeypatch.setattr(worker_module, "redact_file", meanwhile)
    assert w["s"].redaction_worker().run_once() == job_id
    _redaction_refused(w["s"], job_id, "no longer signs in", reads=1)


def test_a_redaction_retried_after_a_failed_attempt_is_refused_for_a_requester_unassigned_meanwhile(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    s = w["s"]
    job_id = _ask_redaction(w, "inv", "x")
    real = worker_module.redact_file
    attempts: list[int] = []

    def failing_once(*args: Any, **kw: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the first attempt's ffmpeg was killed")
        return real(*args, **kw)

    monkeypatch.setattr(worker_module, "redact_file", failing_once)
    assert s.redaction_worker().run_once() == job_id
    with s.db.reading() as session:
        assert session.scalar(select(RedactionJob.status).where(RedactionJob.id == job_id)) == "queued"
    _change(w, "unassigned", "inv")
    assert s.redaction_worker().run_once() == job_id
    job = _redaction_refused(s, job_id, "may no longer see evidence item", reads=1)  # the first read
    assert job.attempts == 2 and attempts == [1]


def test_a_redaction_claimed_again_after_a_restart_is_refused_for_a_requester_deactivated_meanwhile(
    world: dict[str, Any],
) -> None:
    """The first worker claimed the job and stopped (a restart); inv was deactivated; the worker that
    takes the job over once the lease ran out refuses it."""
    w = world
    s = w["s"]
    job_id = _ask_redaction(w, "inv", "x")
    first = s.redaction_worker(name="host-a:1:1")
    with s.db.session() as session:
        claimed = jobs.claim(session, first.name, first.lease)
    assert claimed is not None and claimed.id == job_id  # and then it stops
    _change(w, "deactivated", "inv")
    with s.db.session() as session:  # its lease runs out
        session.execute(
            update(RedactionJob)
            .where(RedactionJob.id == job_id)
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert s.redaction_worker(name="host-b:2:1").run_once() == job_id
    job = _redaction_refused(s, job_id, "no longer signs in")
    assert job.attempts == 2


def test_an_automatic_redaction_acts_for_nobody(world: dict[str, Any]) -> None:
    """A new clip's automatic version (queued by the service) is made whoever has left since."""
    w = world
    s = w["s"]
    with s.db.session() as session:
        job_id = jobs.enqueue(session, w["items"]["x"], "service").id
    _change(w, "deactivated", "inv")
    assert s.redaction_worker().run_once() == job_id
    job, derived, *_ = _redaction_left(s, job_id)
    assert (job.status, derived) == ("done", 2), job.error
    assert json.loads(job.spec) == {}
