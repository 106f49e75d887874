"""A lone-worker device's line on the board shows only a visit of whoever holds it now, on both databases.

A SOUTH worker starts a visit with a note saying where they are; an administrator then re-enrols
their device at NORTH for another member of staff, or hands it to another SOUTH worker. The visit
is still the first worker's (its missed check-in is theirs, raised at SOUTH: ``test_visit_site``),
but the device's line on the fleet list and the board's directory now names the new holder: it
must not show the first worker's visit and address as theirs, and NORTH's managers must never read
that address."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from tests.test_alarms_kit import enrol
from tests.test_cross_site_reads import cookie
from tests.test_incidents_kit import bearer, staff, user
from tests.test_visit_site import NOTE, _re_enrol_at_north, _start


def _line(live: Any, headers: dict[str, str], device_id: str) -> tuple[dict[str, Any] | None, str]:
    """The device's line on the fleet list, and the whole answer's text."""
    r = httpx.get(f"{live.url}/api/v1/lone-workers", headers=headers)
    assert r.status_code == 200, r.text
    return next((d for d in r.json() if d["id"] == device_id), None), r.text


def _directory(live: Any, who: str, device_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{live.url}/board/directory.json", params={"device": device_id}, headers=cookie(live.services, who)
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_device_re_enrolled_elsewhere_shows_no_visit_of_its_former_wearer(live: Any) -> None:
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    user(s, "north_op", "operator", "NORTH")
    kit = enrol(s, "LW-V", staff_id="S-V", site="SOUTH")
    _start(s, kit, "V-1", datetime.now(UTC))
    line, _ = _line(live, live.admin(), "LW-V")
    assert line is not None and line["visit"]["visit_id"] == "V-1", line  # SOUTH's worker, on it

    _re_enrol_at_north(live, "LW-V", "N-V")

    line, text = _line(live, bearer(s, "north_mgr"), "LW-V")
    assert line is not None and line["staff_id"] == "N-V", line
    assert line["visit"] is None and line["active_visit_id"] is None, line
    assert NOTE not in text
    directory = _directory(live, "north_op", "LW-V")
    assert "LW-V" in directory["devices"] and directory["visits"] == {}, directory
    line, _ = _line(live, live.admin(), "LW-V")
    assert line is not None and line["visit"] is None and line["active_visit_id"] is None, line


def test_a_device_handed_to_another_worker_shows_no_visit_of_its_former_wearer(live: Any) -> None:
    s = live.services
    kit = enrol(s, "LW-W", staff_id="S-W1", site="SOUTH")
    staff(s, "S-W2", site="SOUTH")
    _start(s, kit, "V-2", datetime.now(UTC))
    r = httpx.patch(f"{live.url}/api/v1/devices/LW-W", json={"staff_id": "S-W2"}, headers=live.admin())
    assert r.status_code == 200, r.text

    line, text = _line(live, live.admin(), "LW-W")
    assert line is not None and line["staff_id"] == "S-W2", line
    assert line["visit"] is None and line["active_visit_id"] is None, line
    assert NOTE not in text
    assert _directory(live, "admin", "LW-W")["visits"] == {}
