"""Export builds are jobs that any builder claims under a lease: a build whose builder stopped (a
restart, a crash) is claimed again once the lease runs out and finished by another, and one
interrupted too often is marked failed. Each job is asked for by ``inv``, an investigator assigned
to a real incident the item is linked to: a build acts on its requester's authority as it holds
when it is built (``tests.test_job_authority``)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents.export import jobs as jobs_module
from incidents.export.jobs import ExportBuilds, record_request
from incidents.export.models import ExportJob
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_incidents_kit import user

INCIDENT = {"id": "inc-jobs", "reference": "INC-2026-000077", "title": "Ward 7", "site": "QEH"}


def _alarm_item(services: Any) -> str:
    stored = services.store.put_bytes(
        f"tests/{uuid.uuid4()}.json",
        b'{"alarm":"sos"}',
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="application/json",
    )
    with services.db.session() as session:
        item = record_evidence(
            session,
            services.ledger,
            stored,
            Provenance(kind="alarm", actor="device:LW-J", content_type="application/json"),
        )
        return item.id


def _asked_by_inv(services: Any, item_id: str) -> str:
    """``inv``, an investigator, assigned to a new incident the item is linked to; its id."""
    inv = user(services, "inv", "investigator")
    with services.db.session() as session:
        draft = IncidentDraft(category="physical_assault", occurred_at=datetime.now(UTC), site="QEH")
        incident = create_incident(session, draft, "user:seed", ledger=services.ledger)
        assign_investigator(session, services.ledger, incident, inv, "user:seed")
        link_evidence(session, services.ledger, incident.id, item_id, "user:seed", "the alarm")
        return incident.id


def _job(services: Any, item_id: str, **values: Any) -> str:
    job_id = str(uuid.uuid4())
    incident_id = _asked_by_inv(services, item_id)
    with services.db.session() as session:
        job = ExportJob(
            id=job_id,
            incident_id=incident_id,
            requested_by="user:inv",
            requester_role="investigator",
            include_originals=False,
            scope=json.dumps({"incident": {**INCIDENT, "id": incident_id}, "item_ids": [item_id]}),
            media_bytes_total=15,
            status="building",
            created_at=datetime.now(UTC),
            heartbeat_at=datetime.now(UTC),
            **values,
        )
        session.add(job)
        session.flush()
        record_request(session, services.ledger, job)  # as the route that asks for an export does
    return job_id


def _status(services: Any, job_id: str) -> ExportJob:
    with services.db.session() as session:
        job = session.get(ExportJob, job_id)
        assert job is not None
        session.expunge(job)
        return job


def test_a_build_whose_builder_stopped_is_claimed_again_and_finished(sqlite_services: Any) -> None:
    s = sqlite_services
    job_id = _job(s, _alarm_item(s))
    first = ExportBuilds(s, name="host-a:1:exports")
    second = ExportBuilds(s, name="host-b:2:exports")
    assert first.claim() == job_id
    assert second.claim() is None  # held by the first builder, which then stops without a word
    later = datetime.now(UTC) + timedelta(seconds=s.settings.worker_lease_seconds + 1)
    assert second.claim(later) == job_id  # the lease ran out: taken over
    claimed = _status(s, job_id)
    assert (claimed.lease_owner, claimed.attempts) == ("host-b:2:exports", 2)
    second.run(job_id)
    done = _status(s, job_id)
    assert done.status == "ready" and done.lease_owner is None
    assert json.loads(done.result or "{}")["included"]


def test_a_build_interrupted_too_often_fails(sqlite_services: Any) -> None:
    s = sqlite_services
    past = datetime.now(UTC) - timedelta(seconds=1)
    job_id = _job(
        s,
        _alarm_item(s),
        lease_owner="host-a:1:exports",
        lease_until=past,
        attempts=s.settings.worker_max_attempts,
    )
    assert ExportBuilds(s, name="host-b:2:exports").claim() is None
    failed = _status(s, job_id)
    assert failed.status == "failed" and "interrupted" in (failed.error or "")


def test_a_builder_whose_lease_was_taken_over_records_nothing(sqlite_services: Any) -> None:
    """The builder that lost its lease may still finish its package: the job stays the newer one's."""
    s = sqlite_services
    job_id = _job(s, _alarm_item(s))
    first = ExportBuilds(s, name="host-a:1:exports")
    second = ExportBuilds(s, name="host-b:2:exports")
    assert first.claim() == job_id
    later = datetime.now(UTC) + timedelta(seconds=s.settings.worker_lease_seconds + 1)
    assert second.claim(later) == job_id
    first.run(job_id)  # it was only slow: it wakes and finishes
    stale = _status(s, job_id)
    assert (stale.status, stale.lease_owner, stale.result) == ("building", "host-b:2:exports", None)
    second.run(job_id)
    done = _status(s, job_id)
    assert done.status == "ready" and done.lease_owner is None


def test_a_build_finished_twice_records_one_package(services: Any, monkeypatch: Any) -> None:
    """The first builder records its package and, before it marks the job ready, its lease runs out
    and a second builder claims the build and finishes it too: one package item, one ``exported``
    entry on each item, and the job ready with the package recorded (not failed on the second
    builder's clash with it)."""
    s = services
    item_id = _alarm_item(s)
    job_id = _job(s, item_id)
    first = ExportBuilds(s, name="host-a:1:exports")
    second = ExportBuilds(s, name="host-b:2:exports")
    later = datetime.now(UTC) + timedelta(seconds=s.settings.worker_lease_seconds + 1)
    real = jobs_module.build_package
    builds: list[str] = []

    def build(*args: Any, **kw: Any) -> Any:
        builds.append("built")
        result = real(*args, **kw)
        if len(builds) == 1:  # the first builder's package is recorded: it stalls, its lease runs out
            if second.claim(later) == job_id:
                second.run(job_id)
        return result

    monkeypatch.setattr(jobs_module, "build_package", build)
    assert first.claim() == job_id
    first.run(job_id)

    done = _status(s, job_id)
    assert (done.status, done.error) == ("ready", None)
    with s.db.session() as session:
        packages = list(session.scalars(select(EvidenceItem.id).where(EvidenceItem.kind == "export")))
        exported = session.scalars(
            select(CustodyEntry.item_id).where(CustodyEntry.action == "exported").order_by(CustodyEntry.seq)
        )
        assert packages == [job_id]
        assert sorted(exported) == sorted([job_id, item_id])
    assert json.loads(done.result or "{}")["included"] == [item_id]
