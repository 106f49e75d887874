"""Every package's HTTP routers, in the order the application mounts them.

Each capability adds its router here (one import and one list entry); ``ingest.app`` mounts them all.
"""

from __future__ import annotations

from fastapi import APIRouter

from accounts import api as accounts_api
from incidents import api as incidents_api
from incidents import export_api

from . import alarm_api, dock_api, evidence_api, people_api, redaction_api
from .auth import require_roles, services

ROUTERS: list[APIRouter] = [
    dock_api.router,
    evidence_api.router,
    people_api.router,
    alarm_api.router,
    redaction_api.router,
    accounts_api.build_router(require_roles, services),
    incidents_api.build_router(require_roles, services),
    export_api.build_router(require_roles, services),
]
