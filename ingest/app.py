"""The HTTP application: every domain's routes, the one error handler, and the background loops.

This module and ``ingest.cli`` are the composition root: they build the services
(``ingest.services``), mount the domains' routers and choose which loops run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST

from accounts import api as accounts_api
from accounts.access import require_roles
from accounts.service import Principal
from accounts.sessions import forget_sessions
from alarms import api as alarms_api
from alarms.service import escalation_loop
from alarms.standing import Standing
from alarms.trails import forget_old_points
from chain_of_custody.awaiting_upgrade import AwaitingUpgrade
from chain_of_custody.checkpoints import write_checkpoint
from chain_of_custody.row_seals import UPGRADE_COMMAND
from chain_of_custody.viewing import ViewingPolicy
from chain_of_custody.viewings import open_viewings, seal_over, seal_served
from console import install as install_console
from devices import api as devices_api
from incidents import api as incidents_api
from incidents import continuity_api
from incidents.export import api as export_api
from incidents.export import downloads as export_downloads
from incidents.retention import RetentionRules, retention_loop
from incidents.subject_access import api as subject_access_api
from ingest import read_grants
from storage import idempotency
from storage.objects import StorageError
from storage.schedule import run_when_due
from storage.settings import Settings

from . import custody_api, dock_api, errors, evidence_api, footage_api, openapi, redaction_api, release_api
from .http_edge import BodyLimit
from .metrics import VIEWINGS_OPEN, exposition
from .mqtt_consumer import AlarmConsumer, consumer_configured
from .services import Services, build_services, settle_heap
from .settings import get_settings
from .telemetry_process import TelemetryProcess, discard_companion_session, telemetry_process_wanted

log = logging.getLogger(__name__)

ROUTERS: list[APIRouter] = [
    dock_api.router,
    evidence_api.router,
    release_api.router,
    accounts_api.router,
    devices_api.router,
    alarms_api.router,
    redaction_api.router,
    incidents_api.router,
    continuity_api.router,
    export_api.router,
    export_downloads.router,
    subject_access_api.router,
    custody_api.router,
    footage_api.router,
]

Loop = Callable[[Services], Coroutine[Any, Any, object]]


PERSONAL_DATA_JOB = "forget-old-trails-and-sessions"
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


def forget_personal_data(services: Services, now: datetime) -> None:
    """Forget position trail points and console sessions past their retention (settings
    ``position_trail_retention_days`` and ``ended_session_retention_days``), expired read grants
    with the reasons they held, and expired idempotency keys with the answers they kept."""
    settings = services.settings
    with services.db.session() as session:
        before = now - timedelta(days=settings.position_trail_retention_days)
        points = forget_old_points(session, before, Standing(session, services.key, now))
        sessions = forget_sessions(session, now - timedelta(days=settings.ended_session_retention_days))
        grants = read_grants.forget_expired(session, now)
        keys = idempotency.forget_expired(session, now)
    log.info(
        "old personal data forgotten",
        extra={"trail_points": points, "sessions": sessions, "read_grants": grants, "idempotency_keys": keys},
    )


def forget_personal_data_when_due(services: Services, now: datetime | None = None) -> bool:
    """One instance at a time, every ``personal_data_sweep_seconds`` (``storage.schedule``)."""
    return run_when_due(
        services.db,
        PERSONAL_DATA_JOB,
        timedelta(seconds=services.settings.personal_data_sweep_seconds),
        INSTANCE,
        lambda at: forget_personal_data(services, at),
        now or datetime.now(UTC),
    )


def seal_viewings_at_shutdown(services: Services) -> None:
    """Seal the viewings this process served (``chain_of_custody.viewings``): their ranges go on the
    signed record now rather than when another instance's sweep finds them idle."""
    try:
        sealed = seal_served(services.db, services.ledger)
    except Exception:  # noqa: BLE001 - shutdown goes on; the sweep of any instance seals them later
        log.exception("viewings not sealed at shutdown")
        return
    if sealed:
        log.info("viewings sealed at shutdown", extra={"viewings": sealed})


def announce_seals_awaiting_upgrade(services: Services) -> AwaitingUpgrade | None:
    """Count what awaits ``evidence upgrade-seals`` (``chain_of_custody.awaiting_upgrade``) as the
    service starts and, when anything does, say so in one warning naming the counts and the command:
    otherwise an operator who upgraded and forgot it sees people refused with no reason given.

    The service starts and serves all the same, and ``/healthz`` stays a success: refusing to start,
    or a probe that took the instance out of service, would stop every lone worker's alarm reaching
    the control room, and an operator acknowledging them, for the sake of rows that only withhold
    their own access until the command runs. A count that fails is logged and does not stop the
    start either."""
    try:
        found = services.awaiting_upgrade.count()
    except Exception:  # noqa: BLE001 - the start goes on; housekeeping counts again
        log.exception("seals awaiting upgrade not counted")
        return None
    if found:
        said = ", ".join(f"{n} {k.name}" for k, n in found.awaiting())
        log.warning(
            f"seals awaiting upgrade ({said}): until `{UPGRADE_COMMAND}` runs they sign nobody in "
            "and reach nobody by their row",
            extra={"awaiting_upgrade": found.fields(), "rows": found.total, "command": UPGRADE_COMMAND},
        )
    return found


def recount_seals_awaiting_upgrade(services: Services) -> None:
    """Count again while rows await the upgrade, so the health field and the console's banner clear
    once the command has run; say so once they have."""
    before = services.awaiting_upgrade.latest
    found = services.awaiting_upgrade.recount_while_awaiting()
    if before and found is not None and not found:
        log.info("seals awaiting upgrade: none remain")


def housekeeping_jobs(services: Services) -> list[tuple[str, Callable[[], object]]]:
    """The housekeeping pass's jobs, each run on its own (``housekeeping_pass``)."""

    def checkpoint() -> None:
        with services.db.session() as session:
            write_checkpoint(session, services.store, services.key, retain_days=3650)

    def viewings() -> None:
        seal_over(services.db, services.ledger, ViewingPolicy.from_settings(services.settings))
        with services.db.session() as session:
            VIEWINGS_OPEN.set(open_viewings(session))

    return [
        ("checkpoint", checkpoint),
        ("expire uploads", services.uploads.expire),
        ("seal viewings", viewings),
        ("forget personal data", lambda: forget_personal_data_when_due(services)),
        ("seals awaiting upgrade", lambda: recount_seals_awaiting_upgrade(services)),
    ]


def housekeeping_pass(services: Services) -> list[str]:
    """One pass: each job in a try of its own, so one that fails (storage away, a bug) never stops
    the others; returns the names of those that failed."""
    failed = []
    for name, job in housekeeping_jobs(services):
        try:
            job()
        except StorageError as exc:
            failed.append(name)
            log.warning(
                "housekeeping job deferred: storage unavailable", extra={"job": name, "error": str(exc)}
            )
        except Exception:  # noqa: BLE001 - the other jobs and the loop must survive anything
            failed.append(name)
            log.exception("housekeeping job failed", extra={"job": name})
    return failed


async def housekeeping(services: Services, every: float = 30.0) -> None:
    """Checkpoint the ledger tip, expire abandoned uploads, seal viewings nobody came back to (any
    instance; each row once) and (when due, on one instance) forget old personal data, forever (one
    loop per process is harmless); each job on its own (``housekeeping_pass``)."""
    while True:
        try:
            await asyncio.to_thread(housekeeping_pass, services)
        except Exception:  # noqa: BLE001 - the loop must survive anything
            log.exception("housekeeping failed")
        await asyncio.sleep(every)


async def run_retention(services: Services) -> None:
    """The retention sweeper: deletes expired evidence and renews the locks of what is kept."""
    s = services
    rules = RetentionRules.from_settings(s.settings)
    await retention_loop(s.db, s.ledger, s.store, rules, s.settings.retention_sweep_seconds)


async def run_exports(services: Services) -> None:
    """Build the export packages asked for, here or on any other instance (``incidents.export.jobs``)."""
    await services.exports.serve()


async def run_verifications(services: Services) -> None:
    """Run the custody verifications asked for over HTTP (``chain_of_custody.verify_jobs``)."""
    await services.verifications.serve()


async def run_consumer(services: Services) -> None:
    """The MQTT consumer as one of the application's background loops (stops when cancelled)."""
    companion = telemetry_process_wanted(services.settings)
    if not companion:
        # A companion of an earlier run would otherwise keep its share of the telemetry queued.
        await asyncio.to_thread(discard_companion_session, services.settings)
    consumer = AlarmConsumer(services, companion=companion)
    services.mqtt_consumer = consumer
    await asyncio.to_thread(consumer.start)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.to_thread(consumer.stop)


async def run_telemetry_process(services: Services) -> None:
    """The telemetry companion (``ingest.telemetry_process``), kept running with this process."""
    companion = TelemetryProcess(services.settings, services.embedded)
    services.telemetry_process = companion
    await companion.watch()


async def run_clock(services: Services) -> None:
    """What the clock decides about alarms (``alarms.clock``), every ``escalation_poll_seconds``."""
    await escalation_loop(services.alarms, services.settings.escalation_poll_seconds)


def background_loops(settings: Settings) -> list[Loop]:
    """The loops this process runs beside the HTTP API. Lone-worker alarms need a broker (a host and
    the service's login): the MQTT consumer (unless ``EVIDENCE_MQTT_CONSUMER_ENABLED=false``), its
    telemetry companion when asked for, and the clock."""
    loops: list[Loop] = [housekeeping, run_retention, run_exports, run_verifications]
    if not consumer_configured(settings):
        return loops
    if settings.mqtt_consumer_enabled:
        loops.append(run_consumer)
    if telemetry_process_wanted(settings):
        loops.append(run_telemetry_process)
    elif settings.mqtt_telemetry_process:
        log.warning(
            "no telemetry process: it needs the consumer, a broker login, PostgreSQL, and both alarm "
            "and telemetry types in EVIDENCE_MQTT_MESSAGE_TYPES"
        )
    loops.append(run_clock)
    return loops


def _loop_ended(task: asyncio.Task[object]) -> None:
    """A background loop is meant to run until shutdown: say so loudly when one stops early."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.critical(
            "background loop failed; it is not running", extra={"loop": task.get_name()}, exc_info=exc
        )
    else:
        log.error("background loop ended early", extra={"loop": task.get_name()})


def build_routes(app: FastAPI) -> None:
    """Build every route's request handling before the service reports ready, on a worker thread.

    FastAPI builds a route's handling (its parameters' and answer's models) the first time a request
    is matched through it, on the event loop: a process's first request built all 110 of them,
    about 0.1 s on a quiet machine and seconds on a busy one, while every other request waited,
    the alarm board's stream included. Built here, the first operator's request is as fast as the
    rest."""
    started = time.perf_counter()
    routes = sum(1 for _ in iter_route_contexts(app.router.routes))
    log.info("routes built", extra={"routes": routes, "seconds": round(time.perf_counter() - started, 3)})


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal services
        # Blocking steps waiting on the store or the write lock use no CPU: enough threads that
        # sixteen docks' steps wait side by side rather than six at a time (``http_worker_threads``).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(settings.http_worker_threads, thread_name_prefix="blocking")
        )
        own = services is None
        if services is None:
            services = await asyncio.to_thread(build_services, settings)
        app.state.services = services
        app.state.awaiting_upgrade = services.awaiting_upgrade  # the console's banner reads it
        await asyncio.to_thread(announce_seals_awaiting_upgrade, services)
        await asyncio.to_thread(build_routes, app)
        tasks = []
        for loop in background_loops(services.settings):
            task = asyncio.create_task(loop(services), name=loop.__name__)
            task.add_done_callback(_loop_ended)
            tasks.append(task)
        if own:  # this process's service (``evidence serve``), not one a test or caller handed in
            await asyncio.to_thread(settle_heap)
        log.info(
            "service ready",
            extra={"s3": services.store.endpoint, "database": settings.resolved_database_url.split("@")[-1]},
        )
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            await asyncio.to_thread(seal_viewings_at_shutdown, services)
            if own:
                services.close()

    app = openapi.DocumentedAPI(
        title="Evidence service",
        version="1",
        description="Body-worn camera and lone-worker evidence for healthcare security teams.",
        lifespan=lifespan,
        # The console serves /docs and /redoc itself, from installed files (no CDN).
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    for router in ROUTERS:
        app.include_router(router)
    errors.install(app)
    install_console(app, settings)
    app.add_middleware(BodyLimit, limit=settings.http_max_body_bytes)
    errors.install_last_resort(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """Liveness and readiness: ``ok`` while the service serves. ``seals`` says whether rows await
        ``evidence upgrade-seals`` (as last counted: no query here), for a monitor to raise; it never
        makes the probe fail, since an instance taken out of service would stop the alarms with it
        (``announce_seals_awaiting_upgrade``). The counts stay off this unauthenticated answer: they
        are in the log and on an administrator's console."""
        latest = services.awaiting_upgrade.latest if services is not None else None
        if latest is None:
            return {"status": "ok", "seals": "not counted"}
        if latest:
            return {"status": "ok", "seals": "awaiting upgrade", "upgrade": UPGRADE_COMMAND}
        return {"status": "ok", "seals": "current"}

    @app.get("/metrics", include_in_schema=False)
    def metrics(user: Principal = Depends(require_roles("admin", "auditor"))) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
