"""The web console for people: the control room's alarm board, map and alarm records, device and
people administration, control-room performance, the offline API documentation, and the
investigator's and auditor's pages (incidents and their timelines, statistics, retention, custody).

Pages are rendered on the server (Jinja2, autoescaped) and made live by small scripts of our own
in ``console/static`` (no build step, no Node.js). ``install`` mounts it on the application.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from storage.settings import Settings

from . import export_pages, footage_pages, subject_access_pages
from .api import PageRefused, render, router
from .incident_pages import router as incident_router
from .oversight_pages import router as oversight_router
from .security import SecurityHeaders

# Every router of the console's pages (the API's role matrix leaves them to the console's own tests):
# the control room's and administration's pages, then the workspace's.
ROUTERS: tuple[APIRouter, ...] = (
    router,
    incident_router,
    oversight_router,
    export_pages.router,
    subject_access_pages.router,
    footage_pages.router,
)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console's routes and put the security headers on every response of ``app``."""
    for pages in ROUTERS:
        app.include_router(pages)
    app.add_middleware(SecurityHeaders, tile_url=settings.map_tile_url)

    @app.exception_handler(PageRefused)
    async def refused(request: Request, exc: PageRefused) -> Response:
        return render(request, "refused.html", None, exc.status, message=str(exc))
