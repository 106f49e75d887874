"""Every package's HTTP routers, in the order the application mounts them.

Each capability adds its router here (one import and one list entry); ``ingest.app`` mounts them all.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import dock_api, evidence_api, people_api

ROUTERS: list[APIRouter] = [
    dock_api.router,
    evidence_api.router,
    people_api.router,
]
