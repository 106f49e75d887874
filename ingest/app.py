"""The HTTP application: assembles every package's routes and runs the periodic housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from accounts.service import Principal
from chain_of_custody.checkpoints import write_checkpoint
from console import install as install_console
from storage.objects import StorageError
from storage.settings import Settings, get_settings

from .auth import require_roles
from .metrics import exposition
from .routes import ROUTERS
from .services import Services, build_services, settle_heap
from .uploads import UploadEngine

log = logging.getLogger(__name__)

Plugin = Callable[[FastAPI, Services], None]
PLUGINS: list[Plugin] = []  # other capabilities register their routes and loops here


async def housekeeping(services: Services, every: float = 30.0) -> None:
    """Checkpoint the ledger tip and expire abandoned uploads, forever (one loop per process is harmless)."""
    uploads: UploadEngine = services.extras["uploads"]  # type: ignore[assignment]
    while True:
        try:

            def work() -> None:
                with services.db.session() as session:
                    write_checkpoint(session, services.store, services.key, retain_days=3650)
                uploads.expire()

            await asyncio.to_thread(work)
        except StorageError as exc:
            log.warning("housekeeping deferred: storage unavailable", extra={"error": str(exc)})
        except Exception:  # noqa: BLE001 - the loop must survive anything
            log.exception("housekeeping failed")
        await asyncio.sleep(every)


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


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal services
        own = services is None
        if services is None:
            services = await asyncio.to_thread(build_services, settings)
        services.extras.setdefault("uploads", UploadEngine(services))
        app.state.services = services
        tasks = [asyncio.create_task(housekeeping(services))]
        for start in services.extras.get("startup", []):  # type: ignore[union-attr]
            task = asyncio.create_task(start(services), name=getattr(start, "__name__", "loop"))
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
            if own:
                services.close()

    app = FastAPI(
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
    install_console(app, settings)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        log.warning("invalid request", extra={"path": request.url.path, "errors": str(errors)[:500]})
        return JSONResponse({"error": "invalid request", "detail": errors}, status_code=422)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics(user: Principal = Depends(require_roles("admin", "auditor"))) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    for plugin in PLUGINS:
        plugin(app, services)  # type: ignore[arg-type]
    return app
