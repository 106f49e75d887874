"""A deployment upgraded to new seals, before ``evidence upgrade-seals --yes`` has run, says so.

Until the command runs, users under an older seal version (or none) cannot sign in, devices without
a seal are refused, items reach managers only through links, and so on; the refusal itself tells
the person nothing. So the service counts, per kind, the rows the command adopts
(``chain_of_custody.awaiting_upgrade``) and says so where an operator looks: a warning when it
starts, a field of ``/healthz`` (a success all the same: alarms keep flowing), a banner on an
administrator's console pages, the command's own listing, and a sign-in refused for an old seal is
logged as awaiting the upgrade (the client is told nothing more). On both databases; the banner in a
real browser.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update
from typer.testing import CliRunner

from accounts.models import ApiToken, User
from accounts.seals import sealed_values
from accounts.service import token_digest
from alarms.models import AlarmRecord, LoneWorkerVisit
from chain_of_custody.models import EvidenceItem
from chain_of_custody.row_seals import USER_SEALS_V1, USER_SEALS_V2, user_seal_v1, user_seal_v2
from devices.models import Device, StaffMember
from incidents.export.models import ExportJob
from incidents.models import Incident, IncidentAssignment
from incidents.service import IncidentDraft, assign_investigator, create_incident
from ingest.cli import app
from ingest.logging_setup import configure_logging, flush_logging
from ingest.settings import get_settings
from tests.conftest import ADMIN_PASSWORD, recorded_user, settings_env, start_server
from tests.test_alarms_kit import enrol, raise_test_alarm
from tests.test_error_logging import _Buffer
from tests.test_incidents_kit import store_item

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
COMMAND = "evidence upgrade-seals --yes"


def _older_seals(services: Any, **versions: str) -> None:
    """Put the named users' rows under an older seal version (``USER_SEALS_V2`` or ``V1``), as the
    rows of a deployment sealed before that version."""
    v2, v1 = services.key.derived_secret(USER_SEALS_V2), services.key.derived_secret(USER_SEALS_V1)
    with services.db.session() as session:
        for username, version in versions.items():
            row = session.scalar(select(User).where(User.username == username))
            assert row is not None
            values = sealed_values(row)
            row.seal = user_seal_v2(v2, values) if version == USER_SEALS_V2 else user_seal_v1(v1, values)


def _sql(services: Any, *statements: Any) -> None:
    with services.db.session() as session:
        for statement in statements:
            session.execute(statement)


def _people(services: Any) -> None:
    """An administrator sealed as now; users under version 2, version 1 and no seal."""
    with services.db.session() as session:
        recorded_user(session, services.ledger, "admin", ADMIN_PASSWORD, "admin", full_name="Ada Admin")
        for name in ("lead", "porter", "older"):
            recorded_user(session, services.ledger, name, ADMIN_PASSWORD, "operator", full_name=name.title())
    _older_seals(services, lead=USER_SEALS_V2, porter=USER_SEALS_V1)
    _sql(services, update(User).where(User.username == "older").values(seal=None))


def old_deployment(services: Any) -> dict[str, int]:
    """Rows of every kind the upgrade adopts, as a deployment made before their seals holds them;
    the counts expected of each kind."""
    _people(services)
    enrol(services, "LW-OLD", staff_id="S-OLD")
    alarm = raise_test_alarm(services, "LW-ALARM", site="NORTH")
    item = store_item(services, wearer="S-OLD", start=T0)
    with services.db.session() as session:
        inv = recorded_user(session, services.ledger, "inv", ADMIN_PASSWORD, "investigator")
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH"),
            "user:admin",
            ledger=services.ledger,
        )
        assignment = assign_investigator(session, services.ledger, incident, inv, "user:admin").id
        incident_id = incident.id
        admin = session.scalar(select(User.id).where(User.username == "admin"))
        now = datetime.now(UTC)
        live, revoked = (
            {
                "token_hash": token_digest(secrets.token_urlsafe(24)),
                "user_id": admin,
                "expires_at": now + timedelta(hours=1),
                "revoked": flag,
                "created_at": now,
            }
            for flag in (False, True)
        )
        session.execute(insert(ApiToken.__table__).values([live, revoked]))
        session.add(  # no `export_requested` entry records it: the step refuses it, and it still counts
            ExportJob(
                id="job-old",
                incident_id=incident.id,
                requested_by="user:admin",
                requester_role="admin",
                scope="{}",
                status="failed",
            )
        )
        # a lone visit opened before visits were sealed, its wearer the one the device was issued to
        session.add(LoneWorkerVisit(device_id="LW-OLD", visit_id="V-OLD", wearer="S-OLD", started_at=T0))
    _sql(
        services,
        update(Device).where(Device.id == "LW-OLD").values(seal=None),
        update(StaffMember).where(StaffMember.id == "S-OLD").values(seal=None),
        update(AlarmRecord).where(AlarmRecord.id == alarm).values(seal=None),
        update(EvidenceItem).where(EvidenceItem.id == item.id).values(reach_seal=None),
        update(IncidentAssignment).where(IncidentAssignment.id == assignment).values(seal=None),
        update(Incident).where(Incident.id == incident_id).values(seal=None),
    )
    return {
        "users": 3,
        "devices": 1,
        "api_credentials": 1,
        "incident_assignments": 1,
        "export_jobs": 1,
        "staff": 1,
        "evidence_items": 1,
        "alarms": 1,
        "item_capture_sites": 0,  # no item of a device here (counted in tests/test_capture_site_upgrade.py)
        "incidents": 1,
        "lone_worker_visits": 1,
        "lone_worker_states": 0,  # no device of it was heard from (counted in tests/test_heard_seals.py)
        "alarm_lifecycles": 0,  # raised by this service: sealed (counted in tests/test_lifecycle_seals.py)
        "alarm_outbox": 0,  # queued by this service: sealed (counted in tests/test_outbox_seals.py)
        "device_watches": 0,  # no device of it is low or on a visit (counted in tests/test_watched_seals.py)
        "device_replay_states": 0,  # no device of it was heard from (counted in tests/test_replay_state_seals.py)
        "alarm_raises": 0,  # raised by this service: sealed (counted in tests/test_raise_seals.py)
        "device_receipts": 0,  # received by this service: sealed (counted in tests/test_receipt_seal_keys.py)
    }


def _cli(services: Any, *args: str) -> Any:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env=settings_env(services.settings))
    finally:
        get_settings.cache_clear()


def test_the_counts_are_what_the_upgrade_would_list_and_the_command_prints_them(services: Any) -> None:
    """Every kind the upgrade's sealing steps adopt is counted, each as many as its step lists (a
    row it would refuse too); ``upgrade-seals`` prints the counts first, and after ``--yes`` what
    still awaits (here the export job no custody entry records)."""
    from accounts.seals import unsealed_tokens, unsealed_users
    from alarms.replay_state import unsealed_replays
    from chain_of_custody.alarm_seals import unsealed_alarms
    from chain_of_custody.awaiting_upgrade import awaiting_upgrade
    from chain_of_custody.capture_sites import unsited_items
    from chain_of_custody.heard_seals import unsealed_heard
    from chain_of_custody.incident_seals import unsealed_incidents
    from chain_of_custody.lifecycle_seals import unsealed_lifecycles
    from chain_of_custody.outbox_seals import unsealed_outbox
    from chain_of_custody.raise_seals import unsealed_raises
    from chain_of_custody.reach_seals import unsealed_reach
    from chain_of_custody.receipt_upgrade import unsealed_receipts
    from chain_of_custody.visit_seals import unsealed_visits
    from chain_of_custody.watched_seals import unsealed_watched
    from devices.seals import unsealed_devices
    from incidents.grants import unsealed_grants

    s = services
    with s.db.session() as session:
        assert not awaiting_upgrade(session, s.key)  # a fresh deployment: nothing awaits
    expected = old_deployment(s)
    with s.db.session() as session:
        found = awaiting_upgrade(session, s.key)
        entries = s.ledger.all_entries(session)
        grants = [g.kind for g in unsealed_grants(session, s.ledger)]
        reach = [r.kind for r in unsealed_reach(session, s.key, entries)]
        listed = {
            "users": len(unsealed_users(session, s.ledger)),
            "devices": len(unsealed_devices(session, s.ledger)),
            "api_credentials": len(unsealed_tokens(session)),
            "incident_assignments": grants.count("assignment"),
            "export_jobs": grants.count("export job"),
            "staff": reach.count("member of staff"),
            "evidence_items": reach.count("evidence item"),
            "alarms": len(unsealed_alarms(session, entries)),
            "item_capture_sites": len(unsited_items(session, s.key, entries)),
            "incidents": len(unsealed_incidents(session, s.key, entries)),
            "lone_worker_visits": len(unsealed_visits(session, s.key, entries)),
            "lone_worker_states": len(unsealed_heard(session)),
            "alarm_lifecycles": len(unsealed_lifecycles(session, entries, s.key)),
            "alarm_outbox": len(unsealed_outbox(session, s.key)),
            "device_watches": len(unsealed_watched(session, s.key)),
            "device_replay_states": len(unsealed_replays(session, s.key)),
            "alarm_raises": len(unsealed_raises(session, entries, s.key)),
            "device_receipts": len(unsealed_receipts(session, s.key)),
        }
    assert found.counts == expected == listed
    assert found.total == 12

    shown = _cli(s, "upgrade-seals")
    assert shown.exit_code == 0, shown.output
    head = shown.output.split("== evidence ", 1)[0]
    assert (
        "Seals awaiting upgrade: 3 users, 1 device, 1 bearer token, 1 incident assignment, "
        "1 export job, 1 member of staff, 1 evidence item, 1 alarm, 1 incident, 1 lone visit. "
        f"Run `{COMMAND}` to adopt them." in " ".join(head.split())
    ), head
    assert "3 users cannot sign in (its step: seal-users)" in head, head

    done = _cli(s, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # the export job is refused
    with s.db.session() as session:
        # refused, and so still awaiting: the job no entry asks for, and the alarm, still
        # provisional (its raise reaches custody once it is made whole, which no loop here does)
        assert awaiting_upgrade(session, s.key).fields() == {"export_jobs": 1, "alarms": 1}, done.output
    tail = " ".join(done.output.rsplit("== evidence seal-reach", 1)[1].split())
    assert (
        "still awaiting (refused above, with why): 1 export job cannot give a download link (its "
        "step: seal-grants); "
        "1 alarm cannot reach their site's managers (its step: seal-reach)" in tail
    ), tail


def test_an_incident_under_the_seal_made_before_seals_were_bound_awaits_the_upgrade(services: Any) -> None:
    """An incident sealed before seals were bound to its latest custody entry reaches no site's
    managers: it is counted (and listed) as awaiting ``seal-incidents``, which adopts it as custody
    records it, bound to a new entry."""
    from chain_of_custody.awaiting_upgrade import awaiting_upgrade
    from chain_of_custody.incident_seals import incident_seal_v1, unsealed_incidents
    from chain_of_custody.reach_seals import reach_secret

    s = services
    with s.db.session() as session:
        draft = IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH")
        incident = create_incident(session, draft, "user:admin", ledger=s.ledger)
        older = incident_seal_v1(reach_secret(s.key), incident.id, "NORTH", None, None, None)
        incident_id = incident.id
    _sql(s, update(Incident).where(Incident.id == incident_id).values(seal=older))
    with s.db.session() as session:
        assert awaiting_upgrade(session, s.key).fields() == {"incidents": 1}
        listed = unsealed_incidents(session, s.key, s.ledger.all_entries(session))
        assert [(i.incident_id, i.refused) for i in listed] == [(incident_id, None)]
    shown = _cli(s, "upgrade-seals")
    assert "1 incident cannot reach their site's managers" in " ".join(shown.output.split()), shown.output
    done = _cli(s, "upgrade-seals", "--yes")
    assert done.exit_code == 0, done.output
    with s.db.session() as session:
        assert not awaiting_upgrade(session, s.key)


class _Log(_Buffer):
    """The service's log as it writes it with ``EVIDENCE_LOG_JSON=true``, one JSON object a line."""

    def attach(self) -> None:
        """Take the log (again: the ``evidence`` command, run in this process, sets up its own)."""
        configure_logging("INFO", json_lines=True, stream=self)

    def lines(self, event: str) -> list[dict[str, Any]]:
        found = [
            json.loads(line) for line in self.text().splitlines() if line.startswith('{"event": "' + event)
        ]
        return [f for f in found if str(f.get("event", "")).startswith(event)]


@pytest.fixture
def service_log() -> Iterator[_Log]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    log = _Log()
    log.attach()
    yield log
    flush_logging()
    root.handlers[:], root.level = saved


def _token(url: str, username: str, password: str = ADMIN_PASSWORD) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/auth/token", data={"username": username, "password": password}, timeout=15
    )


def test_start_up_warns_health_says_so_and_a_refusal_for_an_old_seal_is_logged_as_such(
    services: Any, service_log: _Log
) -> None:
    """Started on rows under old seals, the service warns once with the counts and the command,
    ``/healthz`` succeeds and reports seals awaiting upgrade, and a sign-in refused for an old seal
    is logged as awaiting the upgrade, with the same answer to the client as any refusal; a seal
    written outside the service is still logged as wrong. Once the command has run, the next
    housekeeping pass clears the field and the person signs in."""
    from ingest import app as application

    s = services
    _people(s)
    item = store_item(s, wearer=None, start=T0)
    _sql(s, update(EvidenceItem).where(EvidenceItem.id == item.id).values(reach_seal=None))
    with s.db.session() as session:
        recorded_user(session, s.ledger, "planted", ADMIN_PASSWORD, "operator")
    _sql(s, update(User).where(User.username == "planted").values(seal="0" * 64))
    server, thread, url = start_server(s)
    try:
        (warning,) = service_log.lines("seals awaiting upgrade")
        assert warning["level"] == "warning"
        assert warning["awaiting_upgrade"] == {"users": 3, "evidence_items": 1}, warning
        assert warning["rows"] == 4 and warning["command"] == COMMAND
        assert COMMAND in warning["event"], warning

        health = httpx.get(f"{url}/healthz", timeout=15)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "seals": "awaiting upgrade", "upgrade": COMMAND}

        unknown = _token(url, "nobody-at-all")
        for name in ("lead", "porter", "older", "planted"):
            refused = _token(url, name)
            assert (refused.status_code, refused.json()) == (401, unknown.json()), refused.text
            assert refused.headers.get("www-authenticate") == unknown.headers.get("www-authenticate")
        by_user = {line["username"]: line for line in service_log.lines("login refused")}
        missing = "missing: made before seals, or written outside the service"
        for name, seal, note in (
            ("lead", USER_SEALS_V2, "it is sealed under 'user seals v2'"),
            ("porter", USER_SEALS_V1, "it is sealed under 'user seals v1'"),
            ("older", missing, f"its seal is {missing}"),
        ):
            line = by_user[name]
            assert line["event"] == f"login refused: the user's row awaits `evidence upgrade-seals` ({note})"
            assert (line["seal"], line["awaiting"], line["user_id"]) == (seal, COMMAND, _id(s, name)), line
        assert by_user["planted"]["event"] == "login refused" and "awaiting" not in by_user["planted"]
        assert by_user["(no such user)"]["event"] == "login refused"
        said = {line.get("user_id"): line["event"] for line in service_log.lines("user refused")}
        assert said[_id(s, "lead")] == (
            "user refused: its row awaits `evidence upgrade-seals` (it is sealed under 'user seals v2')"
        )
        assert said[_id(s, "older")] == (
            f"user refused: its row awaits `evidence upgrade-seals` (its seal is {missing})"
        )
        assert said[_id(s, "planted")] == "user refused: its row's seal is wrong"

        done = _cli(s, "upgrade-seals", "--yes")
        assert done.exit_code == 0, done.output
        service_log.attach()
        application.housekeeping_pass(s)
        assert httpx.get(f"{url}/healthz", timeout=15).json() == {"status": "ok", "seals": "current"}
        assert service_log.lines("seals awaiting upgrade: none remain")
        assert _token(url, "lead").status_code == 200
    finally:
        server.should_exit = True
        thread.join(15)


def _id(services: Any, username: str) -> int:
    with services.db.session() as session:
        found = session.scalar(select(User.id).where(User.username == username))
        assert found is not None
        return int(found)


def test_the_console_sign_in_refused_for_an_old_seal_is_logged_as_awaiting(
    sqlite_services: Any, service_log: _Log
) -> None:
    """The console's form answers the one refusal page; its log line says the row awaits the upgrade."""
    s = sqlite_services
    _people(s)
    server, thread, url = start_server(s)
    try:
        answers = {}
        for name in ("lead", "nobody-at-all"):
            with httpx.Client(base_url=url, timeout=15) as client:
                form = client.get("/sign-in")
                token = re.search(r'name="csrf" value="([^"]+)"', form.text)
                assert token, form.text
                fields = {"csrf": token.group(1), "username": name, "password": ADMIN_PASSWORD}
                answers[name] = client.post("/sign-in", data=fields)
        assert answers["lead"].status_code == answers["nobody-at-all"].status_code == 401
        shown = [re.sub(r'value="[^"]*"', "", a.text) for a in answers.values()]
        assert shown[0] == shown[1]  # the same page, but for its fresh form token
        (line,) = [x for x in service_log.lines("console sign-in refused") if x["username"] == "lead"]
        assert line["event"] == (
            "console sign-in refused: the user's row awaits `evidence upgrade-seals` "
            "(it is sealed under 'user seals v2')"
        )
        assert line["seal"] == USER_SEALS_V2 and line["awaiting"] == COMMAND
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.e2e
def test_an_administrator_sees_the_counts_and_the_command_on_every_page(
    sqlite_services: Any, tmp_path: Any
) -> None:
    """In a real browser: an administrator's pages carry a banner with each kind's count and the
    command; an operator's do not (they cannot run it)."""
    from tests.test_console_kit import PASSWORD, chromium, new_page, screenshot_dir, sign_in

    s = sqlite_services
    old_deployment(s)
    with s.db.session() as session:
        recorded_user(session, s.ledger, "op", PASSWORD, "operator", site="NORTH")
        admin = session.scalar(select(User).where(User.username == "admin"))
        assert admin is not None
    shots = screenshot_dir(tmp_path)
    server, thread, url = start_server(s)
    try:
        with chromium() as browser:
            page = new_page(browser)
            sign_in(page, url, "admin", ADMIN_PASSWORD, next_path="/admin/people")
            banner = page.locator("#seals-awaiting")
            banner.wait_for()
            assert page.locator("#seals-awaiting-title").inner_text() == "Seals awaiting upgrade"
            assert COMMAND in banner.inner_text()
            kinds = {
                li.get_attribute("data-kind"): li.inner_text() for li in banner.locator("li[data-kind]").all()
            }
            assert kinds["users"].startswith("3 users cannot sign in"), kinds
            assert kinds["devices"].startswith("1 device cannot be heard from (refused as unknown"), kinds
            assert kinds["evidence_items"].startswith("1 evidence item can reach managers only through links")
            assert set(kinds) == {
                "users",
                "devices",
                "api_credentials",
                "incident_assignments",
                "export_jobs",
                "staff",
                "evidence_items",
                "alarms",
                "incidents",
                "lone_worker_visits",
            }
            page.screenshot(path=str(shots / "seals-awaiting-upgrade.png"))
            page.goto(f"{url}/board")
            assert page.locator("#seals-awaiting").is_visible()
            assert page.errors == []  # type: ignore[attr-defined]

            other = new_page(browser)
            sign_in(other, url, "op", PASSWORD, next_path="/board")
            assert other.locator("#seals-awaiting").count() == 0
    finally:
        server.should_exit = True
        thread.join(15)
