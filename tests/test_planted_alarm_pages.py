"""One alarm read alone (its console page, ``GET /api/v1/alarms/{id}``) is shown as the service
vouches for it, on both databases.

An SOS marked resolved in the database stayed on the board (its custody record holds it open) but
read as resolved, with an outcome nobody gave it, on its own page and through the API: the operator
who opened it from the board was told it was over. A row written by SQL that nothing of the
service's vouches for was shown as an alarm there too. The alarm is now shown as its custody record
says, and such a row is no alarm of the service's (404, as the lists leave it out)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from tests.test_alarms_kit import enrol, later
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, user
from tests.test_planted_alarm_readers import _resolve_by_sql, _whole_sos
from tests.test_planted_alarm_rows import _plant_alarm


def _reads(
    services: Any, alarm_id: str, name: str = "north_mgr", role: str = "security_manager"
) -> tuple[int, dict[str, Any] | None, int, str]:
    """The API's answer (status, body) and the console page's (status, text), as NORTH's manager
    (or ``name``, of ``role``, of no site)."""
    from ingest.app import create_app

    user(services, name, role, "NORTH" if role == "security_manager" else None)
    with TestClient(create_app(services.settings, services)) as client:
        api = client.get(f"/api/v1/alarms/{alarm_id}", headers=bearer(services, name))
        page = client.get(f"/alarms/{alarm_id}", headers=cookie(services, name))
    return api.status_code, api.json() if api.status_code == 200 else None, page.status_code, page.text


def test_an_sos_resolved_by_sql_reads_as_open_on_its_page_and_through_the_api(services: Any) -> None:
    device = enrol(services, "LW-PG", staff_id="S-PG", site="NORTH")
    now = datetime.now(UTC)
    alarm_id = _whole_sos(services, device, now)
    _resolve_by_sql(services, alarm_id, later(5, now))
    api, body, page, text = _reads(services, alarm_id)
    assert api == 200 and body is not None, api
    assert (body["status"], body["outcome"]) == ("raised", None), body
    assert page == 200
    state = re.search(r'id="alarm-state">(.*?)</dd>', text, re.S)
    assert state is not None and state.group(1).strip() == "raised", state and state.group(1)


def test_an_alarm_row_written_by_sql_is_no_alarm_on_a_page_or_through_the_api(services: Any) -> None:
    enrol(services, "LW-PP", staff_id="S-PP", site="NORTH")
    at = datetime.now(UTC) - timedelta(minutes=1)
    planted = _plant_alarm(
        services, "LW-PP", str(uuid.uuid4()), status="raised", site="NORTH", raised_at=at, occurred_at=at
    )
    api, _, page, _ = _reads(services, planted)
    assert (api, page) == (404, 404)  # a site's reader was refused it already (its seal)
    api, _, page, _ = _reads(services, planted, "boss", "admin")
    assert (api, page) == (404, 404)  # an administrator was shown it as an alarm
