"""Redaction jobs: every clip is redacted into new derived evidence; workers share jobs safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.verify import verify_service
from firmware_simulators.camera import CameraIdentity, record_clip
from firmware_simulators.dock import Dock
from firmware_simulators.scene import render_clip
from redaction import jobs
from redaction.models import RedactionJob
from redaction.worker import RedactionWorker
from storage.db import Database
from tests.conftest import backends_waiting_on_a_lock, settings_env, wait_for

START = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)


def _worker(s, **kw) -> RedactionWorker:  # type: ignore[no-untyped-def]
    return s.redaction_worker(**kw)


def _clip_item(s, path: Path) -> EvidenceItem:  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        stored = s.store.put_stream(
            f"clips/test/{path.name}",
            f,
            retain_until=datetime.now(UTC) + timedelta(days=1),
            content_type="video/mp4",
        )
    with s.db.session() as session:
        item = record_evidence(
            session,
            s.ledger,
            stored,
            Provenance(kind="clip", actor="test", wearer="S-R", content_type="video/mp4"),
        )
        session.expunge(item)
        return item


def test_uploaded_clip_is_redacted_into_derived_evidence(live, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    cam = CameraIdentity.generate("CAM-R")
    admin = live.admin()
    httpx.post(f"{live.url}/api/v1/staff", json={"id": "S-R", "name": "R"}, headers=admin).raise_for_status()
    httpx.post(
        f"{live.url}/api/v1/devices/cameras",
        json={"id": "CAM-R", "public_key": cam.public_key_b64(), "staff_id": "S-R"},
        headers=admin,
    ).raise_for_status()
    token = httpx.post(f"{live.url}/api/v1/devices/docks", json={"id": "D-R"}, headers=admin).json()["token"]
    path = tmp_path / "faces.mp4"
    render_clip(path, seconds=2, width=640, height=360, fps=25, faces=3, seed=7)
    clip = record_clip(cam, path, "S-R", START, START + timedelta(seconds=2), write_sidecar=False)
    with Dock(live.url, token) as dock:
        result = dock.upload(clip)
    original_id = result.evidence_item_id
    queued = httpx.get(f"{live.url}/api/v1/evidence/{original_id}/redactions", headers=admin).json()
    assert [(j["version"], j["status"]) for j in queued] == [(1, "queued")]

    assert _worker(s).run_once() == queued[0]["id"]
    job = httpx.get(f"{live.url}/api/v1/redaction-jobs/{queued[0]['id']}", headers=admin).json()
    assert (
        job["status"] == "done" and job["progress"] == 1.0 and job["frames_done"] == job["frames_total"] == 50
    )

    with s.db.session() as session:
        redacted = session.get(EvidenceItem, job["result_item_id"])
        record = session.get(EvidenceItem, job["record_item_id"])
        original = session.get(EvidenceItem, original_id)
        assert redacted.kind == "redacted_clip" and redacted.derived_from_id == original_id
        assert record.kind == "redaction_record" and record.derived_from_id == original_id
        assert redacted.sha256 != original.sha256
        original_trail = [e.body.action for e in Ledger.item_entries(session, original_id)]
        derived_trail = [e.body.action for e in Ledger.item_entries(session, redacted.id)]
    # The original was read (logged) and redacted, never changed.
    assert original_trail[-2:] == ["viewed", "redacted"]
    assert derived_trail == ["stored", "verified", "redacted"]
    assert s.store.sha256_of(original.object_key, original.version_id)[0] == original.sha256
    # The copy is locked as long as its original, and its custody says the time runs from the original's.
    held = s.store.info(original.object_key, original.version_id).retain_until
    assert s.store.info(redacted.object_key, redacted.version_id).retain_until == held
    with s.db.session() as session:
        entries = [Ledger.stored_entry(session, i) for i in (original_id, redacted.id)]
    stored = [json.loads(e.body.details) for e in entries if e is not None]
    assert stored[1]["retention_basis"]["at"] == stored[0]["retention_basis"]["at"]
    assert stored[1]["retention_basis"]["note"] == f"the original's ({original_id})"
    details = httpx.get(f"{live.url}/api/v1/evidence/{redacted.id}/custody", headers=admin).json()[-1][
        "details"
    ]
    assert details["detector"]["name"] and details["detector"]["model_sha256"] and details["settings"]
    assert details["detector"]["runtime"].startswith("onnxruntime")  # the default: the int8 model
    rec = httpx.get(f"{live.url}/api/v1/evidence/{record.id}/content", headers=admin).json()
    assert len(rec["record"]) == 50 and any(frame for frame in rec["record"])

    # An investigator's correction is a new version; version 1 stays as it was.
    edit = {
        "manual_regions": [{"start": 0, "end": 1, "x": 10, "y": 10, "w": 80, "h": 60}],
        "audio_edits": [{"start": 0.5, "end": 1.0}],
        "note": "hide the whiteboard",
    }
    r = httpx.post(
        f"{live.url}/api/v1/evidence/{original_id}/redactions?based_on={job['id']}", json=edit, headers=admin
    )
    assert r.status_code == 202 and r.json()["version"] == 2
    assert _worker(s).run_once() == r.json()["id"]
    v2 = httpx.get(f"{live.url}/api/v1/redaction-jobs/{r.json()['id']}", headers=admin).json()
    assert v2["status"] == "done" and v2["result_item_id"] != job["result_item_id"]
    versions = httpx.get(f"{live.url}/api/v1/evidence/{original_id}/redactions", headers=admin).json()
    assert [(v["version"], v["result_item_id"]) for v in versions] == [
        (2, v2["result_item_id"]),
        (1, job["result_item_id"]),
    ]
    bad = httpx.post(
        f"{live.url}/api/v1/evidence/{original_id}/redactions", json={"settings": {"crf": 0}}, headers=admin
    )
    assert bad.status_code == 422
    with s.db.session() as session:
        assert verify_service(session, s.store, s.key).ok


@pytest.mark.postgres
def test_two_workers_never_take_the_same_job(pg_url: str, tmp_path: Path) -> None:
    from ingest.migrations_runner import upgrade_database

    upgrade_database(pg_url)
    db = Database(pg_url)
    with db.session() as session:
        for i in range(30):
            session.add(
                EvidenceItem(
                    id=f"clip-{i:02d}", kind="clip", bucket="b", object_key=f"k{i}", sha256="0" * 64, size=1
                )
            )
        session.flush()
        for i in range(30):
            jobs.enqueue(session, f"clip-{i:02d}", "test")
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        own = Database(pg_url)
        try:
            while True:
                with own.session() as session:
                    job = jobs.claim(session, f"w{n}", timedelta(minutes=5))
                if job is None:
                    return
                with lock:
                    claims.append((job.id, f"w{n}"))
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [c[0] for c in claims]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert len({c[1] for c in claims}) > 1  # the work really was shared
    db.dispose()


@pytest.mark.postgres
def test_two_people_asking_for_a_version_at_once_get_the_next_two(pg_url: str) -> None:
    """The next version number is counted under the clip's row lock: the second request waits for
    the first and takes the number after it, where both once took the same and one failed."""

    from ingest.migrations_runner import upgrade_database

    upgrade_database(pg_url)
    db = Database(pg_url)
    with db.session() as session:
        session.add(
            EvidenceItem(id="clip-v", kind="clip", bucket="b", object_key="kv", sha256="0" * 64, size=1)
        )
    versions: list[int] = []
    failures: list[BaseException] = []

    def second() -> None:
        try:
            with db.session() as session:
                versions.append(jobs.enqueue(session, "clip-v", "user:second").version)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failures.append(exc)

    with db.session() as first:
        versions.append(jobs.enqueue(first, "clip-v", "user:first").version)
        other = threading.Thread(target=second)
        other.start()

        def waiting() -> bool:
            return bool(backends_waiting_on_a_lock(db.engine))

        wait_for(waiting, 20, what="the second request to wait on the first")
    other.join(20)
    assert not failures, failures
    assert sorted(versions) == [1, 2]
    db.dispose()


def test_killed_worker_leaves_its_job_to_another(sqlite_services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = sqlite_services
    path = tmp_path / "long.mp4"
    render_clip(path, seconds=8, width=640, height=360, fps=25, faces=2, seed=3)
    item = _clip_item(s, path)
    with s.db.session() as session:
        job_id = jobs.enqueue(session, item.id, "service").id
    env = settings_env(s.settings)
    env["EVIDENCE_WORKER_LEASE_SECONDS"] = "2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "worker", "--once"],
        env=env,
        cwd=Path(__file__).parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def progressing() -> bool:
        with s.db.session() as session:
            job = session.get(RedactionJob, job_id)
            return job.status == "running" and job.frames_done > 0

    try:
        wait_for(progressing, 90, 0.1, "the first worker to make progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # Before the lease runs out nobody else may take it; after, the next worker does and finishes.
    assert _worker(s, lease_seconds=2).run_once() is None
    wait_for(
        lambda: _worker(s, lease_seconds=30).run_once() == job_id, 30, 0.3, "another worker to take the job"
    )
    with s.db.session() as session:
        job = session.get(RedactionJob, job_id)
        assert job.status == "done" and job.attempts == 2 and job.result_item_id
        readers = [
            json.loads(d)
            for (d,) in session.execute(
                select(CustodyEntry.details).where(
                    CustodyEntry.item_id == item.id, CustodyEntry.action == "viewed"
                )
            )
        ]
    assert len(readers) == 2  # both workers' reads of the original are on record


def test_a_job_that_keeps_failing_is_marked_failed(sqlite_services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = sqlite_services
    bogus = tmp_path / "not-video.mp4"
    bogus.write_bytes(os.urandom(50_000))
    item = _clip_item(s, bogus)
    with s.db.session() as session:
        job_id = jobs.enqueue(session, item.id, "service", max_attempts=2).id
    w = _worker(s)
    assert w.run_once() == job_id
    with s.db.session() as session:
        assert session.get(RedactionJob, job_id).status == "queued"
    assert w.run_once() == job_id
    assert w.run_once() is None
    with s.db.session() as session:
        job = session.get(RedactionJob, job_id)
        assert job.status == "failed" and job.attempts == 2 and job.error
