"""Every route's request handling is built before the service reports ready (``ingest.app.build_routes``).

FastAPI builds a route's handling the first time a request is matched through it, on the event loop;
a process's first request used to build all of them while every other request, the alarm board's
stream included, waited (over 5 s seen on a busy machine)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import routing

from tests.conftest import LiveServer

# Paths across the service's routers, an unknown one (which walks past every route) first.
PATHS = (
    "/no-such-page",
    "/healthz",
    "/api/v1/incidents",
    "/api/v1/evidence",
    "/api/v1/alarms",
    "/api/v1/devices",
    "/api/v1/custody/verifications",
    "/incidents",
    "/alarms",
)


def test_no_route_is_built_by_a_request(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    build = routing._IncludedRouter._build_effective_context

    def counted(self: Any, route: Any) -> Any:
        built.append(getattr(route, "path", repr(route)))
        return build(self, route)

    monkeypatch.setattr(routing._IncludedRouter, "_build_effective_context", counted)
    headers = live.admin()
    for path in PATHS:
        r = httpx.get(f"{live.url}{path}", headers=headers)
        assert r.status_code < 500, (path, r.status_code, r.text[:200])
    assert built == [], f"routes built by requests after start-up: {built[:10]}"
