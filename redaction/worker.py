"""The redaction worker: claim a job, redact the clip, store the result as new evidence, record custody.

The original is streamed from storage to a private temporary file (reading it is a custody entry),
redacted by the ffmpeg pipeline, and the result is stored write-once as a new evidence item derived
from the original, beside a per-frame record of what was hidden. The original is never touched.

A version asked for by a person is made on their authority as it holds when the worker acts, not
as it held when they asked: the worker is given the rule (``authority``, from the application,
which knows who sees what; ``redaction`` does not) and asks it first in each write transaction it
makes for the job (the read of the original, the one before the copy is stored, the recording).
When the requester no longer stands or no longer sees the clip, the job fails for good with the
reason on it, a warning is logged, and nothing is read, stored or recorded for it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.evidence import Provenance, quarantine_hook, read_item, record_evidence
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.retention_basis import inherited_basis
from storage.db import Database
from storage.objects import ObjectStore
from storage.settings import Settings

from . import jobs
from .pipeline import RedactionResult, RedactionSettings
from .runner import redact_file
from .spec import RedactionSpec, check_settings, left_visible

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker took the job over (our lease ran out): stop without storing anything."""


class RequesterRefused(Exception):
    """The person the job acts for may no longer have it made: nothing is read, stored or recorded."""


class Authority(Protocol):
    """Why a job asked for by ``requested_by`` may not act on ``item_id`` now, or None, asked in a
    write transaction the job makes (``session``): the application's access rules, as they hold
    there (``ingest.job_authority``)."""

    def __call__(self, session: Session, requested_by: str, item_id: str) -> str | None: ...


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class RedactionWorker:
    """Runs jobs one at a time; start as many processes as there are cores to spare, on any machine."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        ledger: Ledger,
        settings: Settings,
        *,
        authority: Authority,
        name: str | None = None,
        lease_seconds: int | None = None,
    ) -> None:
        self.db = db
        self.authority = authority
        self.store = store
        self.ledger = ledger
        self.settings = settings
        self.name = name or worker_name()
        self.lease = timedelta(seconds=lease_seconds or settings.worker_lease_seconds)
        self.scratch = Path(settings.data_dir) / "scratch"

    def run_once(self) -> str | None:
        """Claim and run one job; returns its id, or None when the queue is empty."""
        with self.db.session() as session:
            job = jobs.claim(session, self.name, self.lease)
        if job is None:
            return None
        log.info(
            "redaction job claimed",
            extra={"job": job.id, "item": job.source_item_id, "attempt": job.attempts, "worker": self.name},
        )
        try:
            self._run(job)
        except LeaseLost:
            log.warning("redaction job taken over by another worker", extra={"job": job.id})
        except RequesterRefused as exc:
            with self.db.session() as session:
                state = jobs.fail(session, job.id, self.name, str(exc), final=True)
            log.warning(
                "redaction job refused: " + str(exc),
                extra={"job": job.id, "reason": "requester", "requested_by": job.requested_by, "now": state},
            )
        except Exception as exc:  # noqa: BLE001 - recorded on the job, retried or failed
            with self.db.session() as session:
                state = jobs.fail(session, job.id, self.name, f"{type(exc).__name__}: {exc}")
            log.exception("redaction job failed", extra={"job": job.id, "now": state})
        return job.id

    def run_forever(self, idle_sleep: float = 2.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            if self.run_once() is None:
                stop.wait(idle_sleep)

    # -- one job -----------------------------------------------------------------------------
    def _requester_stands(self, session: Session, job: jobs.ClaimedJob) -> None:
        """Refuse what this write transaction would do for the job unless its requester may still
        have it (``authority``); run first in it."""
        why = self.authority(session, job.requested_by or "", job.source_item_id)
        if why is not None:
            raise RequesterRefused(f"refused: {why}; nothing was made for {job.requested_by}")

    def _run(self, job: jobs.ClaimedJob) -> None:
        spec = RedactionSpec.model_validate(job.spec)
        # However the job was queued, it never hides less than the service's settings.
        check_settings(spec, RedactionSettings.from_settings(self.settings), job.requested_by or "")
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            src = Path(tmp) / "original.mp4"
            dst = Path(tmp) / "redacted.mp4"
            self._fetch(job, src)
            renewer = _Renewer(self, job)
            result = redact_file(src, dst, spec, self.settings, progress=renewer)
            renewer.final(result.frames)
            self._store(job, spec, dst, result)

    def _fetch(self, job: jobs.ClaimedJob, dest: Path) -> None:
        """Stream the original to a 0600 scratch file; the read is on the original's custody record."""
        with self.db.session() as session:
            self._requester_stands(session, job)
            item = session.get(EvidenceItem, job.source_item_id)
            if item is None:
                raise jobs.JobRefused("source evidence item is gone")
            blocks = read_item(
                session,
                self.ledger,
                self.store,
                item,
                f"worker:{self.name}",
                None,
                purpose=f"redaction job {job.id} v{job.version}",
                # An original that no longer checks is never redacted into a new item: the read
                # stops short, the job fails and the original is quarantined.
                on_altered=quarantine_hook(
                    self.db, self.ledger, item.id, f"reading it for redaction job {job.id}", job=job.id
                ),
            )
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            for block in blocks:
                f.write(block)

    def _store(self, job: jobs.ClaimedJob, spec: RedactionSpec, dst: Path, result: RedactionResult) -> None:
        now = datetime.now(UTC)
        with self.db.session() as session:  # checked before anything is stored
            self._requester_stands(session, job)
            original = session.get(EvidenceItem, job.source_item_id)
            assert original is not None
            keep = timedelta(days=self.settings.retention_days)
            entry = Ledger.stored_entry(session, original.id)
            recorded = json.loads(entry.body.details).get("retention_basis") if entry else None
            basis = inherited_basis(recorded, original.captured_start, original.created_at, keep, original.id)
            retain = original.retain_until or basis.retain_until(keep)
        base = f"redacted/{now:%Y/%m/%d}/{job.source_item_id}/v{job.version}"
        with open(dst, "rb") as f:
            video = self.store.put_stream(f"{base}.mp4", f, retain_until=retain, content_type="video/mp4")
        # Who asked for this version, and each person it leaves visible (the exclusion's track, span
        # and stated reason) and by whose request: in the record, and in the copy's custody below.
        visible = left_visible(spec, job.requested_by)
        record_json = {**result.to_json(), "requested_by": job.requested_by, "left_visible": visible}
        record_bytes = json.dumps(record_json, separators=(",", ":")).encode()
        record = self.store.put_bytes(
            f"{base}.record.json", record_bytes, retain_until=retain, content_type="application/json"
        )
        edits = {
            "manual_regions": [r.model_dump() for r in spec.manual_regions],
            "exclusions": [e.model_dump() for e in spec.exclusions],
            "audio_edits": [a.model_dump() for a in spec.audio_edits],
            "note": spec.note,
        }
        how = {
            "job": job.id,
            "version": job.version,
            "detector": result.detector,
            "settings": result.settings,
            "plan": result.plan,
            "edits": edits,  # its exclusions are the tracks left visible, each with its reason
            "requested_by": job.requested_by,
            "frames": result.frames,
            "tracks": result.tracks,
            "original_sha256": None,
        }
        with self.db.session() as session:
            self._requester_stands(session, job)
            original = session.get(EvidenceItem, job.source_item_id)
            assert original is not None
            how["original_sha256"] = original.sha256
            actor = f"worker:{self.name}"
            common = Provenance(
                kind="redacted_clip",
                actor=actor,
                source_device_id=original.source_device_id,
                wearer=original.wearer,
                captured_start=original.captured_start,
                captured_stop=original.captured_stop,
                derived_from_id=original.id,
                retain_until=retain,
                retention_basis=basis,
                site=original.site,
            )
            video_item = record_evidence(
                session,
                self.ledger,
                video,
                replace(
                    common,
                    content_type="video/mp4",
                    filename=f"{(original.filename or 'clip').rsplit('.', 1)[0]}-redacted-v{job.version}.mp4",
                ),
                verified={"derived_from": original.id, "original_sha256": original.sha256},
            )
            record_item = record_evidence(
                session,
                self.ledger,
                record,
                replace(
                    common,
                    kind="redaction_record",
                    content_type="application/json",
                    filename=f"redaction-record-v{job.version}.json",
                ),
                verified={"derived_from": original.id, "describes": video_item.id},
            )
            details = {
                **how,
                "redacted_item": video_item.id,
                "record_item": record_item.id,
                "redacted_sha256": video.sha256,
            }
            self.ledger.append(session, CustodyAction.REDACTED, actor, item_id=original.id, details=details)
            self.ledger.append(session, CustodyAction.REDACTED, actor, item_id=video_item.id, details=details)
            if not jobs.finish(session, job.id, self.name, video_item.id, record_item.id):
                raise LeaseLost()
        log.info(
            "redaction stored",
            extra={"job": job.id, "item": video_item.id, "fps": round(result.speed_fps, 1)},
        )


class _Renewer:
    """Progress callback: renews the lease at most once a second and stops the run if the job was taken over."""

    def __init__(self, worker: RedactionWorker, job: jobs.ClaimedJob) -> None:
        self.w = worker
        self.job = job
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        self._renew(done, total)

    def final(self, frames: int) -> None:
        self._renew(frames, frames)

    def _renew(self, done: int, total: int | None) -> None:
        with self.w.db.session() as session:
            if not jobs.renew(session, self.job.id, self.w.name, self.w.lease, done, total):
                raise LeaseLost()
