"""A redaction version is recorded once, however many workers finish it, on both databases, the real
store and the real ffmpeg: a worker whose lease ran out while it worked finishes late, before or
after the worker that took the job over. One redacted clip and one redaction record derived from the
original per job, one ``redacted`` entry on the original, and the job done by the worker that held it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.verify import verify_service
from firmware_simulators.scene import render_clip
from redaction import jobs
from redaction.models import RedactionJob
from redaction.worker import LeaseLost, RedactionWorker
from tests.test_redaction_jobs import _clip_item


def _clip(s: Any, tmp_path: Path) -> str:
    path = tmp_path / "short.mp4"
    render_clip(path, seconds=1, width=320, height=180, fps=10, faces=1, seed=5)
    return str(_clip_item(s, path).id)


def _claim(worker: RedactionWorker, now: datetime | None = None) -> jobs.ClaimedJob:
    with worker.db.session() as session:
        job = jobs.claim(session, worker.name, worker.lease, now)
    assert job is not None
    return job


def _recorded_once(s: Any, clip_id: str, job_id: str, holder: str) -> None:
    with s.db.session() as session:
        job = session.get(RedactionJob, job_id)
        assert job is not None
        derived = {
            kind: n
            for kind, n in session.execute(
                select(EvidenceItem.kind, func.count())
                .where(EvidenceItem.derived_from_id == clip_id)
                .group_by(EvidenceItem.kind)
            )
        }
        redacted = list(
            session.scalars(
                select(CustodyEntry.actor).where(
                    CustodyEntry.item_id == clip_id, CustodyEntry.action == "redacted"
                )
            )
        )
        report = verify_service(session, s.store, s.key)
    assert job.status == "done" and job.result_item_id and job.lease_owner == holder
    assert derived == {"redacted_clip": 1, "redaction_record": 1}
    assert redacted == [f"worker:{holder}"]
    assert report.ok, report.problems


def test_a_worker_whose_lease_was_taken_over_finishing_last_records_nothing(
    services: Any, tmp_path: Path
) -> None:
    """The first worker has its clip redacted; before it records it, its lease runs out and the
    second worker takes the job over and finishes it. The first one's late finish is refused."""
    s = services
    clip_id = _clip(s, tmp_path)
    with s.db.session() as session:
        job_id = jobs.enqueue(session, clip_id, "service").id
    first = s.redaction_worker(name="host-a:1:1")
    second = s.redaction_worker(name="host-b:2:1")
    store = first._store

    def taken_over_then_store(*args: Any) -> None:
        # The first one stalled: its lease, taken when it claimed the job, ran out (counted from
        # now, after the claim, so a slow start cannot leave the lease still running).
        later = datetime.now(UTC) + timedelta(seconds=s.settings.worker_lease_seconds + 1)
        taken = _claim(second, later)
        assert (taken.id, taken.attempts) == (job_id, 2)
        second._run(taken)
        store(*args)

    first._store = taken_over_then_store  # type: ignore[method-assign]
    assert first.run_once() == job_id  # its late finish: refused, logged, nothing recorded
    _recorded_once(s, clip_id, job_id, "host-b:2:1")


def test_a_worker_whose_lease_was_taken_over_finishing_first_records_nothing(
    services: Any, tmp_path: Path
) -> None:
    """The second worker takes the job over and is slow; the first one, back, finishes first and is
    refused; then the second finishes."""
    s = services
    clip_id = _clip(s, tmp_path)
    with s.db.session() as session:
        job_id = jobs.enqueue(session, clip_id, "service").id
    first = s.redaction_worker(name="host-a:1:1")
    second = s.redaction_worker(name="host-b:2:1")
    mine = _claim(first)
    later = datetime.now(UTC) + timedelta(seconds=s.settings.worker_lease_seconds + 1)
    taken = _claim(second, later)
    assert taken.id == job_id
    with pytest.raises(LeaseLost):  # found at its first renewal (else at its finish): nothing stored
        first._run(mine)
    second._run(taken)
    _recorded_once(s, clip_id, job_id, "host-b:2:1")
