"""Bad input is a clear 4xx, never a 500: integers the database cannot hold, nulls a PATCH cannot store.

Each class is checked twice: through the real HTTP API for the cases found (huge ``offset`` and
``limit`` on the list routes, ``null`` in a PATCH), and over the whole OpenAPI document so a new
route with an unbounded integer fails here before it reaches a database.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ingest.tus_protocol import TusRefusal, parse_length, parse_offset
from tests.test_incidents_kit import staff, user

TOO_BIG = "9223372036854775808"  # 2**63: one past the largest integer SQLite and PostgreSQL keep
DB_INT_MAX = 2**63 - 1


def _integers_without_maximum(schema: Any, doc: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target = doc
            for part in ref.lstrip("#/").split("/"):
                target = target[part]
            found += _integers_without_maximum(target, doc, f"{where}->{ref.rsplit('/', 1)[-1]}", seen)
        # (the document writes bounds as floats: 2**63 - 1 becomes 9.223372036854776e18)
        if schema.get("type") == "integer" and float(schema.get("maximum", float("inf"))) > float(DB_INT_MAX):
            found.append(where)
        for key, value in schema.items():
            found += _integers_without_maximum(value, doc, f"{where}/{key}", seen)
    elif isinstance(schema, list):
        for value in schema:
            found += _integers_without_maximum(value, doc, where, seen)
    return found


def test_every_integer_a_request_carries_has_a_bound_the_database_can_hold(sqlite_services) -> None:  # type: ignore[no-untyped-def]
    from ingest.app import create_app

    doc = create_app(sqlite_services.settings, sqlite_services).openapi()
    unbounded: list[str] = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                where = f"{method.upper()} {path} {p['in']}:{p['name']}"
                unbounded += _integers_without_maximum(p.get("schema", {}), doc, where, set())
            for media in op.get("requestBody", {}).get("content", {}).values():
                where = f"{method.upper()} {path} body"
                unbounded += _integers_without_maximum(media.get("schema", {}), doc, where, set())
    assert unbounded == []


PAGED = (f"offset={TOO_BIG}", f"limit={TOO_BIG}", "offset=-1", f"offset={DB_INT_MAX}0", "limit=0")


@pytest.mark.parametrize(
    ("route", "queries"),
    [
        ("/evidence", PAGED),
        ("/incidents", PAGED),
        ("/alarms", PAGED),
        ("/redaction-jobs", (f"limit={TOO_BIG}",)),
    ],
)
def test_a_huge_offset_or_limit_is_a_clear_422(live, route: str, queries: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    for query in queries:
        r = httpx.get(f"{live.url}/api/v1{route}?{query}", headers=live.admin())
        assert r.status_code == 422, (query, r.status_code, r.text)
        assert r.json()["reason"] == "invalid_request"


def test_huge_ids_are_a_clear_4xx(live) -> None:  # type: ignore[no-untyped-def]
    api = f"{live.url}/api/v1"
    for method, path in (
        ("GET", f"/users/{TOO_BIG}"),
        ("PATCH", f"/users/{TOO_BIG}"),
        ("GET", f"/incidents?assigned_to={TOO_BIG}"),
        ("GET", f"/alarms/stream?after={TOO_BIG}&follow=false"),
        ("PUT", f"/incidents/x/investigators/{TOO_BIG}"),
        ("DELETE", f"/incidents/x/investigators/{TOO_BIG}"),
    ):
        r = httpx.request(method, api + path, headers=live.admin(), json={})
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)


def test_a_patch_cannot_store_null_where_a_value_is_required(live) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    api = f"{live.url}/api/v1"
    uid = user(s, "sam", "operator", "NORTH")
    for field in ("active", "full_name", "role", "password", "unlock"):
        r = httpx.patch(f"{api}/users/{uid}", headers=live.admin(), json={field: None})
        assert r.status_code == 422, (field, r.status_code, r.text)
        assert r.json()["reason"] == "invalid_request"
    r = httpx.patch(f"{api}/users/{uid}", headers=live.admin(), json={"site": None})
    assert (
        r.status_code == 200 and r.json()["site"] is None and r.json()["active"] is True
    )  # site may be none

    staff(s, "S-1")
    incident = httpx.post(
        f"{api}/incidents",
        headers=live.admin(),
        json={"category": "theft", "occurred_at": "2026-11-03T09:30:00Z", "site": "NORTH"},
    ).json()
    for field in ("category", "status", "title", "description", "occurred_at", "site"):
        r = httpx.patch(f"{api}/incidents/{incident['id']}", headers=live.admin(), json={field: None})
        assert r.status_code == 422, (field, r.status_code, r.text)
    r = httpx.patch(f"{api}/incidents/{incident['id']}", headers=live.admin(), json={"ward": None})
    assert r.status_code == 200  # a ward may be cleared


def test_tus_numbers_must_be_plain_digits() -> None:
    for bad in ("²", "١٢", "1" * 21, "-1", " 1", ""):
        with pytest.raises(TusRefusal) as refused:
            parse_offset(bad)
        assert refused.value.status == 400
        with pytest.raises(TusRefusal):
            parse_length(bad, 10**12)
    assert parse_offset("0") == 0 and parse_length("12", 100) == 12
