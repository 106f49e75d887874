"""The running service's parts, built once from settings: the composition root of every process.

``build_services`` opens the database (migrating it), the object store (starting the embedded one
when no endpoint is configured), the service key and the ledger, and assembles the domains' long-lived
parts on them: the upload engine, the alarm service and its change-feed watcher, the builder of
export packages, and what happens
inside the transaction that records a new clip (``clip_hooks``: queue its automatic redaction, link
it to an incident of its wearer). Which background loops run is the application's choice
(``ingest.app.background_loops``).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from alarms.feed import FeedWatcher
from alarms.service import AlarmService
from chain_of_custody.awaiting_upgrade import UpgradeWatch
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.tree_heads import TreeHeadLog
from chain_of_custody.verify_jobs import Verifications
from incidents import exhibits
from incidents.export.jobs import ExportBuilds
from incidents.retention import RetentionRules
from incidents.service import Retention, make_clip_hook
from storage.db import Database
from storage.embedded import EmbeddedSeaweed
from storage.objects import ObjectStore
from storage.settings import Settings

from .job_authority import SERVICE, redaction_authority
from .migrations_runner import upgrade_database
from .mqtt_consumer import AlarmConsumer
from .telemetry_process import TelemetryProcess
from .uploads import ClipHook, UploadEngine

if TYPE_CHECKING:
    from redaction.worker import RedactionWorker

log = logging.getLogger(__name__)

TREE_HEAD_RETAIN_DAYS = 3650  # as the ledger's checkpoints: longer than any evidence is kept


@dataclass
class Services:
    """Everything a process of the service works with."""

    settings: Settings
    db: Database
    store: ObjectStore
    key: ServiceKey
    ledger: Ledger
    embedded: EmbeddedSeaweed | None = None
    clip_hooks: list[ClipHook] = field(default_factory=list)
    uploads: UploadEngine = field(init=False)
    alarms: AlarmService = field(init=False)
    alarm_feed: FeedWatcher = field(init=False)
    exports: ExportBuilds = field(init=False)
    verifications: Verifications = field(init=False)
    awaiting_upgrade: UpgradeWatch = field(init=False)  # what awaits ``evidence upgrade-seals``
    mqtt_consumer: AlarmConsumer | None = None  # set by the loop that runs it (``ingest.app``)
    telemetry_process: TelemetryProcess | None = None  # likewise

    def __post_init__(self) -> None:
        self.uploads = UploadEngine(self)
        self.alarms = AlarmService(self)
        self.alarm_feed = FeedWatcher(self.db, timedelta(seconds=self.settings.alarm_stream_poll_seconds))
        # An alarm change committed here wakes this process's live streams at once.
        self.alarms.committed_listeners.append(self.alarm_feed.poke)
        self.exports = ExportBuilds(self)
        self.verifications = Verifications(self)
        self.awaiting_upgrade = UpgradeWatch(self.db, self.key)

    def redaction_worker(
        self, *, name: str | None = None, lease_seconds: int | None = None
    ) -> RedactionWorker:
        """A redaction worker on these services, asking the access rules for each job's requester
        where it acts (``ingest.job_authority``)."""
        from redaction.worker import RedactionWorker  # here: it brings cv2 and numpy to the service

        return RedactionWorker(
            self.db,
            self.store,
            self.ledger,
            self.settings,
            authority=redaction_authority(self.key),
            name=name,
            lease_seconds=lease_seconds,
        )

    def close(self) -> None:
        """Once nothing is served any more: the upload engine's hashing and part-sending threads end
        (each waits for what it holds, so no accepted chunk is dropped), then the database and the
        embedded store."""
        self.uploads.hash_pool.shutdown(wait=True)
        self.uploads.part_pool.shutdown(wait=True)
        self.db.dispose()
        if self.embedded is not None:
            self.embedded.stop()


def open_object_store(
    settings: Settings, start_embedded: bool = True
) -> tuple[ObjectStore, EmbeddedSeaweed | None]:
    """The configured S3 endpoint, or the embedded SeaweedFS (started on loopback if not yet running)."""
    embedded: EmbeddedSeaweed | None = None
    if settings.s3_endpoint:
        endpoint = settings.s3_endpoint
        access, secret = settings.s3_access_key, settings.s3_secret_key.get_secret_value()
    else:
        embedded = EmbeddedSeaweed(
            Path(settings.data_dir) / "s3", settings.embedded_s3_base_port, settings.embedded_s3_memory_limit
        )
        if start_embedded:
            embedded.start()
        endpoint = embedded.endpoint
        access, secret = embedded.credentials.access_key, embedded.credentials.secret_key
    store = ObjectStore(
        endpoint,
        access,
        secret,
        bucket=settings.bucket,
        staging_bucket=settings.staging_bucket,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )
    return store, embedded


def build_services(settings: Settings, *, migrate: bool = True, start_embedded: bool = True) -> Services:
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade_database(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    store, embedded = open_object_store(settings, start_embedded)
    store.ensure_buckets(settings.retention_days)
    key = ServiceKey.load_or_create(settings.resolved_service_key_path)
    ledger = Ledger(key, TreeHeadLog(store, key, retain_days=TREE_HEAD_RETAIN_DAYS))
    exhibits.configure(settings.exhibit_pattern)
    hooks = clip_hooks(settings, store, ledger)
    return Services(settings, db, store, key, ledger, embedded=embedded, clip_hooks=hooks)


def clip_hooks(settings: Settings, store: ObjectStore, ledger: Ledger) -> list[ClipHook]:
    """What happens inside the transaction that records a new clip: it joins the incident of its
    wearer's alarm, and its automatic redaction is queued."""
    hooks: list[ClipHook] = [make_clip_hook(ledger, Retention(store, RetentionRules.from_settings(settings)))]
    if settings.redaction_enabled:
        from redaction.jobs import enqueue

        def queue_redaction(session: Session, item: EvidenceItem) -> None:
            if item.kind == "clip" and item.status == "stored":
                enqueue(session, item.id, SERVICE, {}, max_attempts=settings.worker_max_attempts)

        hooks.append(queue_redaction)
    return hooks


def settle_heap() -> None:
    """Once a service process has started: what it built so far (imported modules, the services)
    lives as long as the process, so the cyclic garbage collector stops walking it. A full
    collection over it took about 110 ms, and an alarm arriving meanwhile waited that long."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "heap settled",
        extra={"objects": gc.get_freeze_count(), "seconds": round(time.perf_counter() - started, 3)},
    )
