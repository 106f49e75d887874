"""A method a path does not answer gets 405 with every method it does answer (RFC 9110, 15.5.6: the
answer MUST carry an Allow header listing them), for the routes of included routers as for the app's own."""

from __future__ import annotations

import httpx


def test_a_method_not_answered_is_told_every_method_the_path_answers(live) -> None:  # type: ignore[no-untyped-def]
    for path, answered in (
        ("/api/v1/incidents", {"GET", "POST"}),
        ("/api/v1/users", {"GET", "POST"}),
        ("/healthz", {"GET"}),
        ("/api/v1/devices/cameras", {"POST"}),  # not also PATCH of /api/v1/devices/{device_id}
    ):
        r = httpx.request("OPTIONS", f"{live.url}{path}", headers=live.admin(), timeout=30)
        assert r.status_code == 405, (path, r.status_code, r.text)
        allowed = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
        assert allowed == answered, (path, r.headers.get("allow"))
        assert r.json()["reason"] == "method_not_allowed", r.text
