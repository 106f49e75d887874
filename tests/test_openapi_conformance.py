"""The OpenAPI document is true: schemathesis (from PyPI) against the live service's ``/openapi.json``.

A bounded, repeatable run (a fixed number of cases per operation and a fixed seed, about a minute in
all): it fails on any 5xx, a status code or content type the document does not list, a body or
header that breaks the documented schema, an ``Allow`` header that does not name the path's methods,
or a request the schema rules out being accepted. The investigator API runs with an admin token,
the tus routes with a dock token. Checks left out, and why:

- ``positive_data_acceptance``: a request the schema allows may still break a rule of the service
  that no schema says (an unknown staff number, a duplicate id, a window that ends before it starts);
  those answer 400/409, which the document lists.
- ``use_after_free``, ``ensure_resource_availability``, ``object_level_authorization``: they need
  the stateful phase, which chains operations and runs for minutes; the access rules have their own
  tests (tests/test_roles_matrix.py, tests/test_incidents_access.py).

``/api/v1/alarms/stream`` is left out: it is a live event stream that does not end by itself.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from storage.api_schema import Timestamp
from storage.embedded import EmbeddedSeaweed
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, make_settings, start_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    )
)


def schemathesis(url: str, token: str, tmp_path: Path, *select: str) -> subprocess.CompletedProcess[str]:
    """One bounded run; ``select`` names the operations (schemathesis' include/exclude options)."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "8",
        "--seed",
        "20261202",
        "--generation-database",
        "none",
        "--workers",
        "1",
        *select,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_the_api_answers_as_its_openapi_document_says(tmp_path: Path, seaweed: EmbeddedSeaweed) -> None:
    from accounts.service import create_user
    from ingest.services import build_services

    s = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", seaweed))
    with s.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=s.key)
    server, thread, url = start_server(s)
    try:
        login = {"username": "admin", "password": ADMIN_PASSWORD}
        admin = httpx.post(f"{url}/api/v1/auth/token", data=login, timeout=SIGN_IN_TIMEOUT).json()[
            "access_token"
        ]
        dock = httpx.post(
            f"{url}/api/v1/devices/docks",
            json={"id": "DOCK-API"},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["token"]
        runs = {
            "investigator API": schemathesis(
                url,
                admin,
                tmp_path,
                "--exclude-path",
                "/api/v1/alarms/stream",
                "--exclude-path-regex",
                "^/api/v1/dock/",
            ),
            "tus routes": schemathesis(url, dock, tmp_path, "--include-path-regex", "^/api/v1/dock/"),
        }
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()
    failed = {name: run.stdout[-12000:] + run.stderr[-2000:] for name, run in runs.items() if run.returncode}
    assert not failed, "\n\n".join(f"== {name}\n{out}" for name, out in failed.items())


def test_a_date_is_text_never_a_number() -> None:
    """Pydantic alone takes a number as seconds since 1970 (``?until=0.5`` was a date in 1970)."""
    dates = TypeAdapter(Timestamp)
    assert dates.validate_python("2026-11-22T10:00:00Z") == datetime(2026, 11, 22, 10, tzinfo=UTC)
    for number in (0, 0.5, 1764000000, "0.5", "1764000000", " 12 ", "1e9", True):
        with pytest.raises(ValidationError):
            dates.validate_python(number)
    assert dates.json_schema() == {"format": "date-time", "type": "string"}
