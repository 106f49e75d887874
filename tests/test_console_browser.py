"""The control-room console in a real browser (Debian's chromium through Playwright) against the real
service, a private Mosquitto from the project's own configuration and devices from the simulator.

What an operator does, end to end: a device's SOS appears on the board; the operator takes it with
the keyboard alone and the device receives the acknowledgement; an amber alert counts down and
escalates; a dropped event stream catches up; a second operator sees who has the alarm; every role
sees only its pages; text from people and devices is shown as text. The tests also take the
README's screenshots (kept when ``EVIDENCE_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn

from devices.broker_access import BrokerAccount, BrokerProcess, hash_password, start_private_broker
from devices.service import broker_accounts
from firmware_simulators.lone_worker import LoneWorkerDevice
from ingest.services import build_services
from tests.conftest import SIGN_IN_TIMEOUT, free_port, make_settings, wait_for
from tests.test_alarms_kit import SERVICE_USER, DeviceKit
from tests.test_console_kit import PASSWORD, add_users, chromium, new_page, screenshot_dir, sign_in

pytestmark = pytest.mark.e2e

HOSTILE = '<img src=x onerror="window.__pwned=1">'


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@dataclass
class Service:
    """The HTTP service on a fixed port, so that it can be stopped and started again (a dropped stream)."""

    services: Any
    port: int
    server: _Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from ingest.app import create_app

        config = uvicorn.Config(
            create_app(self.services.settings, self.services),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20, what="HTTP server to start")
        consumer = wait_for(lambda: self.services.mqtt_consumer, 10, what="consumer")
        assert consumer.wait_ready(10)

    def stop(self) -> None:
        assert self.server and self.thread
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the HTTP server did not stop"
        self.services.mqtt_consumer = None  # start() waits for the new one
        # The live stream's watcher belonged to the stopped server's event loop; the restarted
        # server's first stream starts it afresh on its own loop (``alarms.feed.FeedWatcher.join``).


@dataclass
class Stack:
    service: Service
    broker: BrokerProcess
    service_password: str
    tmp: Path
    browser: Any
    devices: list[LoneWorkerDevice] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def services(self) -> Any:
        return self.service.services

    def admin_api(self) -> httpx.Client:
        r = httpx.post(
            f"{self.url}/api/v1/auth/token",
            data={"username": "admin", "password": PASSWORD},
            timeout=SIGN_IN_TIMEOUT,
        )
        r.raise_for_status()
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {r.json()['access_token']}"},
            timeout=15,
        )

    def device(
        self, staff_id: str, staff_name: str, site: str = "Ward 7", name: str = ""
    ) -> LoneWorkerDevice:
        """Enrol through the API (as an administrator would), reload the broker, connect the simulator."""
        device_id = f"LW-{uuid.uuid4().hex[:6].upper()}"
        kit = DeviceKit(device_id)
        with self.admin_api() as api:
            api.post(
                "/staff", json={"id": staff_id, "name": staff_name, "group": "nurse", "site": site}
            ).raise_for_status()
            r = api.post(
                "/devices/lone-workers",
                json={
                    "id": device_id,
                    "public_key": kit.public_b64,
                    "staff_id": staff_id,
                    "site": site,
                    "name": name,
                },
            )
            assert r.status_code == 201, r.text
            password = r.json()["mqtt_password"]
        with self.services.db.session() as session:
            accounts = broker_accounts(session)
        self.broker.update_accounts(
            devices=accounts, service=BrokerAccount(SERVICE_USER, hash_password(self.service_password))
        )
        device = LoneWorkerDevice(
            device_id,
            password,
            port=self.broker.port,
            private_key=kit.key,
            service_public_key=self.services.key.public_raw,
            reconnect_delay_s=0.2,
            position=(51.5072 + len(self.devices) * 0.002, -0.1276 + len(self.devices) * 0.003, 9.0),
        )
        self.devices.append(device)
        wait_for(lambda: _try_connect(device), 10, 0.2, f"{device_id} to connect")
        return device


def _try_connect(device: LoneWorkerDevice) -> bool:
    try:
        device.connect(timeout=5)
        return True
    except ConnectionError:
        device.connect_error = None
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, seaweed: Any) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    service_password = "svc-" + uuid.uuid4().hex
    broker = start_private_broker(
        tmp / "mosquitto", devices=[], service=BrokerAccount(SERVICE_USER, hash_password(service_password))
    )
    settings = make_settings(
        tmp,
        f"sqlite:///{tmp / 'evidence.db'}",
        seaweed,
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_username=SERVICE_USER,
        mqtt_password=service_password,
        mqtt_client_id=f"evidence-{uuid.uuid4().hex[:8]}",
        alarm_ack_timeout_seconds=4,
        escalation_poll_seconds=0.2,
    )
    services = build_services(settings)
    add_users(services)
    service = Service(services, free_port())
    service.start()
    with chromium() as browser:
        s = Stack(service, broker, service_password, tmp, browser)
        yield s
        for device in s.devices:
            device.close()
    service.stop()
    broker.stop()
    services.db.dispose()


def until(page: Any, script: str, timeout: float = 15.0) -> Any:
    """Wait for a script to be true in the page (evaluated from outside: the page's CSP forbids eval,
    which Playwright's own wait_for_function needs)."""
    return wait_for(lambda: page.evaluate(script), timeout, 0.1, script)


def row(page: Any, text: str) -> Any:
    return page.locator("#alarm-rows tr", has_text=text)


def board(stack: Stack, user: str) -> Any:
    page = new_page(stack.browser)
    sign_in(page, stack.url, user, next_path="/board")
    page.wait_for_selector("#connection[data-state=live]")
    return page


def test_sos_on_the_board_taken_with_the_keyboard_alone_and_the_device_told(stack: Stack) -> None:
    device = stack.device("S-2001", "Alex Morgan", name="Ward 7 pendant")
    alice = board(stack, "operator")
    bob = board(stack, "operator2")
    event_id = device.sos()
    device.wait_ack(event_id, "received", timeout=10)
    # It arrives without a reload, red, unclaimed, announced by colour and sound.
    alarm_row = row(alice, "Alex Morgan")
    alarm_row.wait_for()
    assert alarm_row.get_attribute("data-severity") == "red"
    assert "unclaimed" in (alarm_row.get_attribute("class") or "")
    assert "Nobody has it" in alarm_row.inner_text()
    assert "Ward 7" in alarm_row.inner_text() and "±9 m" in alarm_row.inner_text()
    until(alice, "document.body.dataset.alarmSound === 'on'")
    assert alice.locator("#unclaimed").is_visible()
    # The keyboard alone: move to the alarm and press A.
    alice.keyboard.press("Home")
    focused = alice.evaluate("document.activeElement.dataset.alarm")
    assert focused and focused == alarm_row.get_attribute("data-alarm")
    alice.keyboard.press("a")
    wait_for(
        lambda: "Taken by operator" in alarm_row.inner_text(), 10, what="the board to show the alarm taken"
    )
    # The device is told, on its own ack topic, signed by the service.
    device.wait_ack(event_id, "operator_acknowledged", timeout=10)
    # The sound and the banner stop once someone has it.
    until(alice, "document.body.dataset.alarmSound === 'off'")
    assert not alice.locator("#unclaimed").is_visible()
    # A second operator sees who has it, live, and cannot take it unknowingly.
    bob_row = row(bob, "Alex Morgan")
    wait_for(
        lambda: "Taken by operator" in bob_row.inner_text(), 10, what="the second board to show who has it"
    )
    bob.keyboard.press("Home")
    bob.keyboard.press("a")
    until(bob, "document.getElementById('action-status').textContent.includes('already acknowledged')")
    assert "operator" in bob.locator("#action-status").inner_text()
    # Resolve with the keyboard: R, 2 (false alarm), a note, Ctrl+Enter.
    alice.keyboard.press("r")
    alice.keyboard.press("2")
    alice.keyboard.press("Tab")
    alice.keyboard.type("pressed by accident " + HOSTILE)
    alice.keyboard.press("Control+Enter")
    alarm_row.wait_for(state="detached")
    assert bob_row.count() == 0 or wait_for(
        lambda: bob_row.count() == 0, 10, what="the alarm to leave bob's board"
    )
    assert not alice.errors and not bob.errors, (alice.errors, bob.errors)
    assert alice.evaluate("window.__pwned") is None
    alice.context.close()
    bob.context.close()


def test_amber_counts_down_then_turns_red_and_escalates(stack: Stack) -> None:
    device = stack.device("S-2002", "Sam Patel", site="Community")
    page = board(stack, "operator")
    event_id = device.amber(5, note="going into flat 3")
    device.wait_ack(event_id, "received", timeout=10)
    amber = row(page, "Sam Patel")
    amber.wait_for()
    assert amber.get_attribute("data-severity") == "amber"
    first = amber.locator(".detail").inner_text()
    assert first.startswith("turns red in 0:0"), first
    wait_for(lambda: amber.locator(".detail").inner_text() != first, 5, what="the countdown to move")
    # It runs out: red, then escalated when nobody takes it within the acknowledgement timeout.
    wait_for(lambda: amber.get_attribute("data-severity") == "red", 15, what="the amber alert to turn red")
    assert "timer ran out" in amber.inner_text()
    wait_for(lambda: "Escalated: nobody took it in time" in amber.inner_text(), 15, what="the escalation")
    device.wait_ack(event_id, "escalated", timeout=10)
    page.context.close()


def test_a_dropped_event_stream_catches_up(stack: Stack) -> None:
    device = stack.device("S-2003", "Jo Evans", site="A&E")
    page = board(stack, "operator")
    stack.service.stop()
    page.wait_for_selector("#connection[data-state=lost]")
    lost = page.locator("#lost")
    assert lost.is_visible() and "NOT arriving" in lost.inner_text()
    # While the service is away the device raises an SOS; the broker keeps it for the service.
    event_id = device.sos()
    stack.service.start()
    device.wait_ack(event_id, "received", timeout=20)
    page.wait_for_selector("#connection[data-state=live]", timeout=20000)
    row(page, "Jo Evans").wait_for()
    assert "caught up" in lost.inner_text()
    page.context.close()


CONTROL_ROOM = {"/board", "/map", "/performance", "/admin/devices"}
WORKSPACE = {"/incidents", "/exports", "/subject-access", "/retention", "/custody"}
PAGES = sorted(CONTROL_ROOM | WORKSPACE | {"/admin/people", "/statistics", "/welcome"})
OPEN_TO = {
    "admin": CONTROL_ROOM | WORKSPACE | {"/admin/people", "/statistics", "/welcome"},
    "manager": CONTROL_ROOM | WORKSPACE | {"/admin/people", "/statistics", "/welcome"},
    "operator": CONTROL_ROOM | {"/welcome"},
    "auditor": CONTROL_ROOM | {"/statistics", "/retention", "/custody", "/welcome"},
    "investigator": WORKSPACE | {"/welcome"},
}


def test_each_role_sees_only_its_pages_and_data(stack: Stack) -> None:
    for user, allowed in OPEN_TO.items():
        page = new_page(stack.browser)
        sign_in(page, stack.url, user)
        nav = set(
            page.locator("header nav a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        )
        assert nav - {"/docs"} == allowed - {"/welcome"}, (user, nav)
        for path in PAGES:
            response = page.goto(stack.url + path)
            assert response is not None
            if path in allowed:
                assert response.status == 200, (user, path, response.status)
            else:
                assert response.status == 403, (user, path, response.status)
                assert "not open to your role" in page.inner_text("main")
        # Data within a page follows the role too: only administrators see the users' table and
        # only administrators and managers get the enrolment and change forms.
        if "/admin/people" in allowed:
            page.goto(stack.url + "/admin/people")
            assert (page.locator("#users").count() == 1) == (user == "admin"), user
        if "/admin/devices" in allowed:
            page.goto(stack.url + "/admin/devices")
            assert (page.locator("#enrol-dock").count() == 1) == (user in ("admin", "manager")), user
        if "/board" in allowed:
            page.goto(stack.url + "/board")
            can_act = page.locator("#board").get_attribute("data-can-act") == "yes"
            assert can_act == (user in ("admin", "manager", "operator")), user
        assert not page.errors, (user, page.errors)
        page.context.close()


def test_forms_act_through_the_api_and_every_text_is_shown_as_text(stack: Stack) -> None:
    page = new_page(stack.browser)
    sign_in(page, stack.url, "admin", next_path="/admin/people")
    # A member of staff and a user whose names are markup.
    page.fill("#staff-id", "S-XSS")
    page.fill("#staff-name", HOSTILE)
    page.click("#add-staff button[type=submit]")
    page.wait_for_selector(f"#staff td:text-is('{HOSTILE}')")
    page.fill("#new-username", "mallory")
    page.fill("#new-full-name", HOSTILE)
    page.fill("#new-password", "a long enough password")
    page.select_option("#new-role", "operator")
    page.click("#add-user button[type=submit]")
    page.wait_for_selector("tr[data-user=mallory]")
    # A dock enrolled from the page: its token is shown once, as text.
    page.goto(stack.url + "/admin/devices")
    page.fill("#dock-id", "DOCK-XSS")
    page.fill("#dock-name", HOSTILE)
    page.click("#enrol-dock button[type=submit]")
    token = page.locator("#enrol-dock [data-secret=token]")
    token.wait_for()
    assert token.inner_text().startswith("DOCK-XSS.")
    page.reload()
    assert page.locator("#enrol-dock [data-secret=token]").count() == 0  # shown once only
    # A device whose wearer and note are markup raises an alarm: board, map and record show text.
    device = stack.device("S-XSS2", HOSTILE, site=HOSTILE, name=HOSTILE)
    event_id = device.sos(note=HOSTILE)
    device.wait_ack(event_id, "received", timeout=10)
    for path in ["/board", "/map", "/admin/devices", "/admin/people"]:
        page.goto(stack.url + path)
        page.wait_for_timeout(300)
        assert HOSTILE in page.inner_text("main"), path
        assert page.locator("img[src=x]").count() == 0, path
    page.goto(stack.url + "/board")
    hostile_row = row(page, "window.__pwned").first
    hostile_row.wait_for()
    hostile_row.locator("a.open").click()
    page.wait_for_url("**/alarms/*")
    assert HOSTILE in page.inner_text("main")
    assert page.locator("img[src=x]").count() == 0
    assert page.evaluate("window.__pwned") is None
    # The device handed to the member of staff added above, from its row: the row's field suggests
    # from the page's one list of staff (whose names are markup, shown as text).
    page.goto(stack.url + "/admin/devices")
    assign = page.locator(f"tr[data-device={device.device_id}]")
    assign.locator("input[name=staff_id]").fill("S-XSS")
    assign.locator("button:text-is('Assign')").click()
    page.wait_for_selector(f"tr[data-device={device.device_id}] td small:text-is('S-XSS')")
    assert page.locator("#staff-choices option[value=S-XSS]").count() == 1
    assert page.evaluate("window.__pwned") is None
    assert not [e for e in page.errors if not e.startswith("dialog")], page.errors
    page.context.close()


def test_the_map_follows_alarms_and_their_trails_live_from_the_stream(stack: Stack) -> None:
    """The map draws a new alarm, each new point of its trail and its resolution as they come on the
    board's live stream, without reloading or polling for them."""
    page = new_page(stack.browser)
    sign_in(page, stack.url, "operator", next_path="/map")
    page.wait_for_selector("#map[data-ready=yes][data-connection=live]")
    page.evaluate("window.__sameMapPage = true")  # gone if the page were loaded again
    walker = stack.device("S-4001", "Sam Walker", name="Community pendant")
    sos = walker.sos()
    walker.wait_ack(sos, "received", timeout=10)
    listed = page.locator("#map-alarms li", has_text="Sam Walker")
    listed.wait_for(timeout=5000)

    def points() -> int:
        return int(page.locator("#map").get_attribute("data-trail-points") or 0)

    wait_for(lambda: points() >= 1, 5, what="the alarm's first point drawn")
    before = points()
    lat, lon, acc = walker.position or (0.0, 0.0, 0.0)
    walker.position = (lat + 0.0005, lon + 0.0005, acc)
    walker.location()
    wait_for(lambda: points() > before, 10, what="the new trail point drawn")
    with stack.admin_api() as api:
        alarm = next(
            a
            for a in api.get("/alarms", params={"open": "true"}).json()
            if a["device_id"] == walker.device_id
        )
        api.post(
            f"/alarms/{alarm['id']}/resolve", json={"outcome": "test", "note": "map test"}
        ).raise_for_status()
    listed.wait_for(state="detached", timeout=5000)
    assert page.evaluate("window.__sameMapPage === true")
    assert not page.errors, page.errors
    page.context.close()


def test_screenshots_of_the_board_the_map_and_an_alarm(stack: Stack, tmp_path: Path) -> None:
    out = screenshot_dir(tmp_path)
    with stack.admin_api() as api:  # a clean board: what the earlier tests left open is resolved
        for left in api.get("/alarms", params={"open": "true", "limit": 1000}).json():
            api.post(f"/alarms/{left['id']}/resolve", json={"outcome": "test", "note": "test run"})
    nurse = stack.device("S-3001", "Priya Shah", site="Ward 12", name="Ward 12 pendant")
    porter = stack.device("S-3002", "Tom Reid", site="Main entrance")
    medic = stack.device("S-3003", "Chris Lee", site="Community")
    sos = nurse.sos(note="aggressive visitor at the nurses' station")
    amber = medic.amber(600, note="visiting 14 Mill Lane, client known to police")
    fall = porter.man_down("fall")
    porter.wait_ack(fall, "received", timeout=10)
    nurse.wait_ack(sos, "received", timeout=10)
    medic.wait_ack(amber, "received", timeout=10)
    wait_for(lambda: _trail_points(stack, nurse.device_id) >= 1, 10, what="the first trail point")
    for step in range(3):  # a trail: the nurse moves while her alarm is open
        lat, lon, acc = nurse.position or (0.0, 0.0, 0.0)
        nurse.position = (lat + 0.0004, lon + 0.0006, acc + 4)
        nurse.location()
        wait_for(lambda n=step + 2: _trail_points(stack, nurse.device_id) >= n, 10, what="a trail point")
    page = board(stack, "operator")
    row(page, "Tom Reid").wait_for()
    row(page, "Tom Reid").locator(".since").click()  # the man-down: taken by this operator
    page.keyboard.press("a")
    porter.wait_ack(fall, "operator_acknowledged", timeout=10)
    row(page, "Priya Shah").wait_for()
    page.keyboard.press("Home")
    page.screenshot(path=str(out / "board.png"))
    big = new_page(stack.browser, 2560, 1440)
    sign_in(big, stack.url, "operator2", next_path="/board")
    big.wait_for_selector("#connection[data-state=live]")
    big.screenshot(path=str(out / "board-large-display.png"))
    big.context.close()
    page.goto(stack.url + "/map")
    page.wait_for_selector("#map[data-ready=yes]")
    page.screenshot(path=str(out / "map.png"))
    page.goto(stack.url + "/board")
    row(page, "Priya Shah").locator("a.open").click()
    page.wait_for_url("**/alarms/*")
    page.wait_for_selector("#map[data-ready=yes]")
    page.screenshot(path=str(out / "alarm.png"), full_page=True)
    for name in ("board.png", "board-large-display.png", "map.png", "alarm.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert not page.errors, page.errors
    alarm = page.url.removeprefix(stack.url)
    page.context.close()

    # Times shown in the reader's own clock name its zone: the alarm and the board read in Berlin.
    berlin = new_page(stack.browser, timezone="Europe/Berlin")
    sign_in(berlin, stack.url, "operator", next_path=alarm)
    berlin.wait_for_selector("#map[data-ready=yes]")
    moments = berlin.locator("main time[datetime]")
    assert moments.count() >= 3
    for n in range(moments.count()):
        moment = moments.nth(n)
        local = datetime.fromisoformat(moment.get_attribute("datetime") or "").astimezone(
            ZoneInfo("Europe/Berlin")
        )
        assert moment.inner_text().endswith(local.strftime("%H:%M:%S %Z")), moment.inner_text()
        assert "Europe/Berlin" in (moment.get_attribute("title") or "")
    berlin.goto(stack.url + "/board")
    raised = row(berlin, "Priya Shah").locator(".since")
    raised.wait_for()
    zone = datetime.now(ZoneInfo("Europe/Berlin")).strftime("%Z")
    assert re.search(rf"\(\d{{2}}:\d{{2}}:\d{{2}} {zone}\)$", raised.inner_text()), raised.inner_text()
    berlin.screenshot(path=str(tmp_path / "board-local-time.png"))  # looked at, not the README's
    assert not berlin.errors, berlin.errors
    berlin.context.close()


def _trail_points(stack: Stack, device_id: str) -> int:
    from sqlalchemy import func, select

    from alarms.models import LoneWorkerPosition

    with stack.services.db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(LoneWorkerPosition)
                .where(LoneWorkerPosition.device_id == device_id)
            )
            or 0
        )
