"""The running service's parts, built once from settings: database, object store, signing key, ledger."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from storage.db import Database
from storage.embedded import EmbeddedSeaweed
from storage.objects import ObjectStore
from storage.settings import Settings

from .migrations_runner import upgrade_database

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ObjectStore
    key: ServiceKey
    ledger: Ledger
    embedded: EmbeddedSeaweed | None = None
    extras: dict[str, object] = field(default_factory=dict)

    def close(self) -> None:
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
    services = Services(settings=settings, db=db, store=store, key=key, ledger=Ledger(key), embedded=embedded)
    from .hooks import install

    install(services)
    return services


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
