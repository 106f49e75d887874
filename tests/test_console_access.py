"""The console's doors, over plain HTTP against the running service, on both databases: sessions
(cookie flags, idle and absolute expiry, sign-out, account changes), CSRF on every state-changing
request a cookie can make, every page by every role, the security headers, no inline script, files
only from where they belong, and the API documentation without internet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from accounts.browser import CSRF_HEADER
from accounts.models import User, UserSession
from accounts.seals import SignInSeals
from accounts.service import update_user
from accounts.sessions import BrowserSession, SessionPolicy, read_session, start_session, touch_or_end
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from tests.conftest import SIGN_IN_TIMEOUT, start_server
from tests.test_alarms_kit import raise_test_alarm
from tests.test_console_kit import PASSWORD, ROLE_USERS, add_users, session_client
from tests.test_roles_matrix import POLICY, console_routes

PAGE_ROLES = {
    "/board": {"admin", "manager", "operator", "operator2", "auditor"},
    "/map": {"admin", "manager", "operator", "operator2", "auditor"},
    "/performance": {"admin", "manager", "operator", "operator2", "auditor"},
    "/admin/devices": {"admin", "manager", "operator", "operator2", "auditor"},
    "/admin/people": {"admin", "manager"},
    "/welcome": set(ROLE_USERS),
    "/board/directory.json?device=LW-MATRIX": {"admin", "manager", "operator", "operator2", "auditor"},
    "/map/data.json": {"admin", "manager", "operator", "operator2", "auditor"},
    "/alarms/{alarm}": {"admin", "manager", "operator", "operator2", "auditor"},
    "/exports": {"admin", "manager", "investigator"},
    "/subject-access": {"admin", "manager", "investigator"},
    "/incidents": {"admin", "manager", "investigator"},
    "/statistics": {"admin", "manager", "auditor"},
    "/retention": {"admin", "manager", "investigator", "auditor"},
    "/custody": {"admin", "manager", "investigator", "auditor"},
}
# Every console route, and how the table above (or a test below) covers it.
CONSOLE_ROUTES = {
    ("GET", "/"): "sends to the sign-in page or the role's first page",
    ("GET", "/sign-in"): "open: the form",
    ("POST", "/sign-in"): "open: double-submitted token, tested below",
    ("POST", "/sign-out"): "CSRF, tested below",
    ("POST", "/session/keepalive"): "CSRF, tested below",
    ("GET", "/welcome"): "PAGE_ROLES",
    ("GET", "/board"): "PAGE_ROLES",
    ("GET", "/board/directory.json"): "PAGE_ROLES",
    ("GET", "/map"): "PAGE_ROLES",
    ("GET", "/map/data.json"): "PAGE_ROLES",
    ("GET", "/alarms/{alarm_id}"): "PAGE_ROLES",
    ("GET", "/performance"): "PAGE_ROLES",
    ("GET", "/admin/devices"): "PAGE_ROLES",
    ("GET", "/admin/people"): "PAGE_ROLES",
    ("GET", "/docs"): "open: API documentation",
    ("GET", "/redoc"): "open: API documentation",
    ("GET", "/static/{prefix}/{name:path}"): "open: files, tested below",
    ("GET", "/exports"): "PAGE_ROLES",
    (
        "GET",
        "/incidents/{incident_id}/exports",
    ): "tests/test_exports_browser.py (role and incident scope); every role, tests/test_pages_by_role.py",
    ("GET", "/subject-access"): "PAGE_ROLES",
    (
        "GET",
        "/subject-access/{request_id}",
    ): "tests/test_exports_browser.py (role and incident scope); every role, tests/test_pages_by_role.py",
    (
        "GET",
        "/footage/{item_id}",
    ): "tests/test_footage_browser.py, every role; every role, tests/test_pages_by_role.py",
    (
        "GET",
        "/footage/{item_id}/review",
    ): "tests/test_footage_browser.py, every role; every role, tests/test_pages_by_role.py",
    ("GET", "/incidents"): "PAGE_ROLES",
    (
        "GET",
        "/incidents/{key}",
    ): "incident scope, tests/test_workspace_browser.py; every role, tests/test_pages_by_role.py",
    (
        "GET",
        "/incidents/{key}/timeline",
    ): "incident scope, tests/test_workspace_browser.py; every role, tests/test_pages_by_role.py",
    ("GET", "/statistics"): "PAGE_ROLES",
    ("GET", "/retention"): "PAGE_ROLES",
    ("GET", "/custody"): "PAGE_ROLES; evidence scope, tests/test_workspace_browser.py",
}


def _serve(services: Any) -> Iterator[tuple[str, Any]]:
    add_users(services)
    server, thread, url = start_server(services)
    yield url, services
    server.should_exit = True
    thread.join(15)


@pytest.fixture
def site(services: Any) -> Iterator[tuple[str, Any]]:
    """On both databases: for what the database keeps (sessions, roles)."""
    yield from _serve(services)


@pytest.fixture
def sqlite_site(sqlite_services: Any) -> Iterator[tuple[str, Any]]:
    """On SQLite only: for what does not depend on the database."""
    yield from _serve(sqlite_services)


def test_every_console_route_is_accounted_for() -> None:
    assert console_routes() == set(CONSOLE_ROUTES), console_routes() ^ set(CONSOLE_ROUTES)


def test_every_page_by_every_role(sqlite_site: tuple[str, Any]) -> None:
    url, services = sqlite_site
    alarm = raise_test_alarm(services)
    clients = {user: session_client(url, user)[0] for user in ROLE_USERS}
    anonymous = httpx.Client(base_url=url, timeout=15)
    wrong = []
    for template, allowed in PAGE_ROLES.items():
        path = template.replace("{alarm}", alarm)
        r = anonymous.get(path)
        if r.status_code != 303 or not r.headers["location"].startswith("/sign-in?next="):
            wrong.append(f"anonymous {path}: {r.status_code}")
        for user, client in clients.items():
            r = client.get(path)
            expected = 200 if user in allowed else 403
            if r.status_code != expected:
                wrong.append(f"{user} {path}: {r.status_code}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    # The start page follows the role.
    assert clients["operator"].get("/").headers["location"] == "/board"
    assert clients["investigator"].get("/").headers["location"] == "/incidents"
    assert anonymous.get("/").headers["location"] == "/sign-in"


def test_sign_in_sets_a_strict_httponly_cookie_and_refuses_what_our_form_did_not_send(
    sqlite_site: tuple[str, Any],
) -> None:
    url, services = sqlite_site
    client = httpx.Client(base_url=url, timeout=15)
    form = client.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    # Without the token from our form's cookie, or from another site: refused, nobody signed in.
    for data, headers in [
        ({"csrf": "forged", "username": "admin", "password": PASSWORD}, {}),
        ({"csrf": token, "username": "admin", "password": PASSWORD}, {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf": token, "username": "admin", "password": PASSWORD}, {"Origin": "https://evil.example"}),
    ]:
        r = client.post("/sign-in", data=data, headers=headers)
        assert r.status_code == 403, (data, headers, r.status_code)
        assert "evidence_session" not in r.headers.get("set-cookie", "")
    other = httpx.Client(base_url=url, timeout=15)  # no cookie from our form at all
    r = other.post("/sign-in", data={"csrf": token, "username": "admin", "password": PASSWORD})
    assert r.status_code == 403
    # A wrong password: the form again, 401, the same words for unknown users.
    r = client.post("/sign-in", data={"csrf": token, "username": "admin", "password": "wrong password!"})
    assert r.status_code == 401 and "invalid credentials" in r.text
    token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    r = client.post("/sign-in", data={"csrf": token, "username": "nobody", "password": "wrong password!"})
    assert r.status_code == 401 and "invalid credentials" in r.text
    token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    # The right one, with a "next" that tries to leave the site: a session, and a local redirect only.
    client.cookies.set("evidence_session", "planted-by-an-attacker")
    r = client.post(
        "/sign-in",
        data={"csrf": token, "username": "operator", "password": PASSWORD, "next": "//evil.example/x"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/board"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("evidence_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    secret = cookie.split(";", 1)[0].split("=", 1)[1]
    assert secret != "planted-by-an-attacker" and len(secret) >= 40
    with services.db.session() as session:  # only its hash is kept
        rows = list(session.scalars(select(UserSession.token_hash)))
        assert secret not in rows and len(rows) == 1


def signed_in(
    session: Any, secret: str, policy: SessionPolicy, seals: SignInSeals, **kw: Any
) -> BrowserSession | None:
    """The session a cookie names, as a request finds it: read, then what is due written."""
    found, change = read_session(session, secret, policy, seals, **kw)
    if change is not None:
        touch_or_end(session, change, seals)
    return found


def test_sessions_end_when_idle_at_their_limit_at_sign_out_and_when_the_account_changes(
    site: tuple[str, Any],
) -> None:
    url, services = site
    policy = SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=12))
    seal = services.key.derived_secret(CREDENTIAL_SEALS)
    seals = SignInSeals.of(services.key)
    t0 = datetime.now(UTC)
    with services.db.session() as session:
        user = session.scalar(select(User).where(User.username == "operator"))
        secret, started = start_session(session, user, policy, seal, now=t0)
    assert started.idle_ends_at == t0 + timedelta(minutes=30)
    with services.db.session() as session:
        # Activity moves the idle clock; the live stream (activity=False) does not.
        assert signed_in(session, secret, policy, seals, activity=False, now=t0 + timedelta(minutes=20))
        assert signed_in(session, secret, policy, seals, now=t0 + timedelta(minutes=29))
        assert signed_in(session, secret, policy, seals, now=t0 + timedelta(minutes=58))
        assert signed_in(session, secret, policy, seals, activity=False, now=t0 + timedelta(minutes=87))
    with services.db.session() as session:
        assert signed_in(session, secret, policy, seals, now=t0 + timedelta(minutes=89)) is None
    with services.db.session() as session:  # and once ended it stays ended
        assert signed_in(session, secret, policy, seals, now=t0 + timedelta(minutes=60)) is None
    # Over HTTP: a page's own refreshes (marked as background) do not count as the person being there.
    client, _ = session_client(url, "auditor")
    with services.db.session() as session:
        row = session.scalars(select(UserSession).order_by(UserSession.created_at.desc())).first()
        row.last_seen_at -= timedelta(minutes=5)
        seen = row.last_seen_at
        token_hash = row.token_hash
    assert client.get("/performance", headers={"X-Console-Background": "1"}).status_code == 200
    assert client.get("/api/v1/me", headers={"Accept": "text/event-stream"}).status_code == 200
    with services.db.session() as session:
        assert session.get(UserSession, token_hash).last_seen_at == seen
    assert client.get("/performance").status_code == 200
    with services.db.session() as session:
        assert session.get(UserSession, token_hash).last_seen_at > seen
    # However busy, a session ends at its absolute limit.
    with services.db.session() as session:
        secret, _ = start_session(session, user, policy, seal, now=t0)
    with services.db.session() as session:
        for minutes in range(25, 12 * 60, 25):
            assert signed_in(session, secret, policy, seals, now=t0 + timedelta(minutes=minutes))
        assert signed_in(session, secret, policy, seals, now=t0 + timedelta(hours=12, seconds=1)) is None
    # Sign-out ends it on the server: the old cookie opens nothing afterwards.
    client, csrf = session_client(url, "operator")
    old = dict(client.cookies)
    assert client.get("/board").status_code == 200
    assert client.post("/sign-out", data={"csrf": csrf}).status_code == 303
    replay = httpx.Client(base_url=url, cookies=old, timeout=15)
    assert replay.get("/board").status_code == 303
    assert replay.get("/api/v1/me").status_code == 401
    # A new password, a new role or disabling the account ends every session of it at once.
    for change in ({"password": "another long password"}, {"role": "auditor"}, {"active": False}):
        client, _ = session_client(url, "operator2", PASSWORD)
        assert client.get("/api/v1/me").status_code == 200
        with services.db.session() as session:
            uid = session.scalar(select(User.id).where(User.username == "operator2"))
            _, done = update_user(session, uid, change, services.key)
        assert done["sessions_ended"] == 1, done
        assert client.get("/api/v1/me").status_code == 401
        assert client.get("/board").status_code == 303
        with services.db.session() as session:
            update_user(
                session, uid, {"password": PASSWORD, "role": "operator", "active": True}, services.key
            )


def _state_changing_user_routes() -> list[tuple[str, str]]:
    return sorted(
        (m, p)
        for (m, p), rule in POLICY.items()
        if m in ("POST", "PUT", "PATCH", "DELETE") and not rule.dock and not rule.device and rule.ok
    )


def test_every_state_changing_api_route_refuses_a_cookie_without_our_csrf_token(
    sqlite_site: tuple[str, Any],
) -> None:
    """A cookie goes with every request the browser makes, whoever asked for it: for each write the
    API offers, the admin's cookie alone, a wrong token or a cross-site request changes nothing."""
    url, services = sqlite_site
    client, csrf = session_client(url, "admin")
    routes = _state_changing_user_routes()
    assert len(routes) >= 24, routes
    wrong = []
    for method, path in routes:
        concrete = re.sub(r"\{[^}]+\}", "X", path)
        for headers, reason in [
            ({}, "csrf"),
            ({"X-CSRF-Token": "0" * 64}, "csrf"),
            ({"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}, "cross_site"),
            ({"X-CSRF-Token": csrf, "Origin": "https://evil.example"}, "cross_site"),
        ]:
            r = client.request(method, concrete, headers=headers, json={})
            if r.status_code != 403 or reason not in r.text:
                wrong.append(f"{method} {path} {headers}: {r.status_code} {r.text[:100]}")
    assert not wrong, "\n".join(wrong)
    # The console's own writes too.
    for path in ("/session/keepalive", "/sign-out"):
        r = client.post(path)
        assert r.status_code == 403, (path, r.status_code)
    assert client.get("/api/v1/me").status_code == 200  # still signed in: the forged sign-out did nothing
    # With the token, from our own page: it works (a user created through the API by cookie).
    r = client.post(
        "/api/v1/users",
        json={"username": "made-by-cookie", "password": "a long enough password", "role": "auditor"},
        headers={"X-CSRF-Token": csrf, "Origin": url, "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 201, r.text
    # Bearer-token clients are not browsers: no CSRF token needed, as before.
    token = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}, timeout=SIGN_IN_TIMEOUT
    ).json()
    r = httpx.post(
        f"{url}/api/v1/users",
        json={"username": "made-by-token", "password": "a long enough password", "role": "auditor"},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert r.status_code == 201, r.text


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.urls += [v for n, v in attrs if n in ("src", "href") and v and "://" in v]


def test_headers_no_inline_script_and_nothing_from_elsewhere(sqlite_site: tuple[str, Any]) -> None:
    url, services = sqlite_site
    alarm = raise_test_alarm(services)
    client, _ = session_client(url, "admin")
    pages = [
        "/sign-in",
        "/board",
        "/map",
        "/performance",
        "/admin/devices",
        "/admin/people",
        f"/alarms/{alarm}",
    ]
    for path in pages + ["/docs", "/redoc", "/api/v1/me"]:
        assert_headers_and_no_inline_script(client, path)


def assert_headers_and_no_inline_script(client: httpx.Client, path: str) -> None:
    """The page at ``path`` answers 200 with the security headers, no inline script or handler, and
    nothing from elsewhere (the workspace's pages are checked with it too, in tests/test_pages_by_role.py)."""
    r = client.get(path)
    assert r.status_code == 200, path
    csp = r.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]+)", csp).group(1)  # type: ignore[union-attr]
    assert script_src.strip() == "'self'", (path, csp)
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    if path.startswith("/api"):
        return
    assert r.headers.get("cache-control") == "no-store" or path in ("/docs", "/redoc"), path
    parsed = _Scripts()
    parsed.feed(r.text)
    for script in parsed.scripts:
        assert script.get("src") or script.get("type") == "application/json", (path, script)
    assert not parsed.handlers, (path, parsed.handlers)
    assert not parsed.urls, (path, parsed.urls)  # every asset from this service


def test_files_come_only_from_where_they_belong(sqlite_site: tuple[str, Any]) -> None:
    url, _ = sqlite_site
    client = httpx.Client(base_url=url, timeout=15)
    for path, kind in [
        ("/static/console/board.js", "text/javascript"),
        ("/static/console/console.css", "text/css"),
        ("/static/leaflet/leaflet.js", "text/javascript"),
        ("/static/leaflet/images/layers.png", "image/png"),
        ("/static/apidocs/swagger-ui-bundle.js", "text/javascript"),
        ("/static/apidocs/redoc.standalone.js", "text/javascript"),
    ]:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
    for path in [
        "/static/console/../api.py",
        "/static/console/%2e%2e/api.py",
        "/static/console/..%2fapi.py",
        "/static/leaflet/../../js_lib_leaflet/__init__.py",
        "/static/console/templates/base.html",
        "/static/nowhere/x.js",
        "/static/console/",
        "/static/apidocs/../core.py",
        "/static/console/%00.js",
    ]:
        r = client.get(path)
        assert r.status_code in (404, 307), path  # 307: the client collapsed "..", no such route
        assert "import" not in r.text and "<html" not in r.text, path
        if r.status_code == 404:
            assert set(r.json()) == {"error", "reason", "detail"}, path  # the one error envelope


def test_api_docs_load_their_scripts_from_this_service(sqlite_site: tuple[str, Any]) -> None:
    url, _ = sqlite_site
    client = httpx.Client(base_url=url, timeout=15)
    for path, script in [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]:
        page = client.get(path).text
        assert f"/static/apidocs/{script}" in page and "cdn" not in page.lower(), path
    assert client.get("/openapi.json").json()["info"]["title"] == "Evidence service"


def test_the_voice_memo_plays_for_the_control_room_and_each_play_is_on_its_custody_trail(
    sqlite_site: tuple[str, Any],
) -> None:
    from tests.test_alarms_kit import enrol

    url, services = sqlite_site
    kit = enrol(services, "LW-MEMO", staff_id=None)
    svc = services.alarms
    result = svc.handle(*kit.amber(600))
    audio = b"OggS" + bytes(range(256)) * 40
    signed = kit.voice_memo_headers(result.event_id, audio)
    item_id, _ = svc.attach_voice_memo(
        "LW-MEMO",
        result.event_id,
        audio,
        content_type="audio/ogg",
        sent_at=signed["X-Device-Sent-At"],
        signature=signed["X-Device-Signature"],
    )
    operator, _ = session_client(url, "operator")
    # As the alarm page's <audio> asks for it (another page's cannot: tests/test_cross_site_reads.py).
    ours = {"Sec-Fetch-Site": "same-origin"}
    r = operator.get(f"/api/v1/alarms/{result.alarm_id}/voice-memo", headers=ours)
    assert r.status_code == 200 and r.content == audio and r.headers["content-type"] == "audio/ogg"
    r = operator.get(f"/api/v1/alarms/{result.alarm_id}/voice-memo", headers={**ours, "Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == audio[:10]
    with services.db.session() as session:
        views = list(
            session.scalars(
                select(CustodyEntry).where(CustodyEntry.item_id == item_id, CustodyEntry.action == "viewed")
            )
        )
    assert [v.actor for v in views] == ["user:operator", "user:operator"]
    auditor, _ = session_client(url, "auditor")
    assert auditor.get(f"/api/v1/alarms/{result.alarm_id}/voice-memo", headers=ours).status_code == 403
    page = auditor.get(f"/alarms/{result.alarm_id}").text
    assert "may not play recordings" in page and "<audio" not in page


def test_a_new_broker_login_is_shown_once_and_only_its_hash_is_kept(sqlite_site: tuple[str, Any]) -> None:
    from devices.broker_access import verify_password
    from devices.models import Device
    from tests.test_alarms_kit import enrol

    url, services = sqlite_site
    enrol(services, "LW-ROTATE", staff_id=None, site="NORTH")  # the manager's site
    with services.db.session() as session:
        before = session.get(Device, "LW-ROTATE").broker_password_hash
    client, csrf = session_client(url, "manager")
    r = client.post(
        "/api/v1/devices/lone-workers/LW-ROTATE/broker-password",
        headers={"X-CSRF-Token": csrf, "Origin": url},
    )
    assert r.status_code == 200, r.text
    password = r.json()["mqtt_password"]
    with services.db.session() as session:
        after = session.get(Device, "LW-ROTATE").broker_password_hash
        entry = session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.action == "device_changed")
            .order_by(CustodyEntry.seq.desc())
        ).first()
    assert after != before and verify_password(password, after) and password not in after
    assert entry is not None and "LW-ROTATE" in entry.details and password not in entry.details
    r = client.post(
        "/api/v1/devices/lone-workers/NO-SUCH/broker-password", headers={"X-CSRF-Token": csrf, "Origin": url}
    )
    assert r.status_code == 404


def test_routes_without_a_session_never_reach_the_api_as_someone(sqlite_site: tuple[str, Any]) -> None:
    """A forged or stale cookie is nobody: the API answers 401, the pages send to sign-in."""
    url, _ = sqlite_site
    client = httpx.Client(base_url=url, timeout=15, cookies={"evidence_session": "x" * 43})
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/alarms/stream", params={"follow": "false"}).status_code == 401
    assert client.get("/board").status_code == 303


def test_app_routes_other_than_the_console_are_in_the_api_matrix(sqlite_site: tuple[str, Any]) -> None:
    from ingest.app import create_app

    _, services = sqlite_site
    app = create_app(services.settings, services)
    paths = {str(r.path) for r in iter_route_contexts(app.routes)}
    assert {"/docs", "/redoc", "/board", "/sign-in"} <= paths
    assert "/docs/oauth2-redirect" not in paths


def test_an_open_stream_ends_when_its_session_does(
    sqlite_site: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board left open must not go on receiving alarms once its person signed out (or was
    disabled): the live stream checks its caller again while it runs."""
    import threading

    from alarms import api as alarm_api

    monkeypatch.setattr(alarm_api, "RECHECK_S", 0.3)
    url, _ = sqlite_site
    client, csrf = session_client(url, "operator")
    cookies = dict(client.cookies)
    ended = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=url, cookies=cookies, timeout=30) as reader:
            with reader.stream("GET", "/api/v1/alarms/stream", headers={"Accept": "text/event-stream"}) as r:
                assert r.status_code == 200
                for _ in r.iter_lines():
                    pass
        ended.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert not ended.wait(1.5), "the stream ended while its session was live"
    assert client.post("/sign-out", data={"csrf": csrf}).status_code == 303
    assert ended.wait(10), "the stream outlived its session"


def test_a_security_manager_sees_only_their_sites_alarms_in_the_api_and_on_every_page(
    site: tuple[str, Any],
) -> None:
    """One rule for both doors (``accounts.access.site_scope``): the manager of NORTH sees NORTH's
    alarm and device, and SOUTH's neither through the API (list, one alarm, its record, acting on it,
    the live stream, the lone workers, the figures) nor on the board, the map or the alarm's page;
    an operator, who answers for every site, sees both."""
    url, services = site
    north = raise_test_alarm(services, "LW-NORTH", site="NORTH")
    south = raise_test_alarm(services, "LW-SOUTH", site="SOUTH")
    manager, csrf = session_client(url, "manager")
    operator, _ = session_client(url, "operator")

    def ids(client: httpx.Client) -> set[str]:
        return {a["id"] for a in client.get("/api/v1/alarms", params={"open": "true"}).json()}

    assert ids(manager) == {north} and ids(operator) == {north, south}
    assert manager.get(f"/api/v1/alarms/{north}").status_code == 200
    for path in (f"/api/v1/alarms/{south}", f"/api/v1/alarms/{south}/record", f"/alarms/{south}"):
        r = manager.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "LW-SOUTH" not in r.text  # nothing of the alarm itself
    r = manager.post(
        f"/api/v1/alarms/{south}/acknowledge",
        headers={CSRF_HEADER: csrf, "Origin": url, "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 404 and r.json()["reason"] == "unknown_alarm", r.text
    assert services.alarms.get(south)["status"] == "raised"  # nothing done to it
    assert {d["id"] for d in manager.get("/api/v1/lone-workers").json()} == {"LW-NORTH"}
    stream = manager.get("/api/v1/alarms/stream", params={"after": 0, "follow": "false"}).text
    assert north in stream and south not in stream
    assert south in operator.get("/api/v1/alarms/stream", params={"after": 0, "follow": "false"}).text

    def day(client: httpx.Client) -> int:
        periods = client.get("/api/v1/alarms/performance").json()["periods"]
        first = periods[0]
        return int(first["red_alarms"]) + int(first["pending"])

    assert (day(manager), day(operator)) == (1, 2)
    # The console's pages and their data: the same rule.
    board = manager.get("/board").text
    assert north in board and south not in board and "LW-SOUTH" not in board
    assert south in operator.get("/board").text
    data = manager.get("/map/data.json").json()
    assert [a["id"] for a in data["alarms"]] == [north]
    assert {p["device_id"] for p in data["positions"]} <= {"LW-NORTH"}
    assert set(data["trails"]) == {north}
    assert manager.get("/board/directory.json", params={"device": "LW-SOUTH"}).json()["devices"] == {}
    assert manager.get(f"/alarms/{north}").status_code == 200


def test_a_refused_action_says_in_its_detail_who_already_has_the_alarm(sqlite_site: tuple[str, Any]) -> None:
    """The one error envelope, with what this route has to add: the alarm as it now stands."""
    url, services = sqlite_site
    alarm = raise_test_alarm(services)
    same_site = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
    first, first_csrf = session_client(url, "operator")
    second, second_csrf = session_client(url, "operator2")
    r = first.post(f"/api/v1/alarms/{alarm}/acknowledge", headers={CSRF_HEADER: first_csrf, **same_site})
    assert r.status_code == 200, r.text
    r = second.post(f"/api/v1/alarms/{alarm}/acknowledge", headers={CSRF_HEADER: second_csrf, **same_site})
    assert r.status_code == 409
    body = r.json()
    assert set(body) == {"error", "reason", "detail"} and body["reason"] == "not_applicable"
    assert body["detail"]["reason"] == "not_applicable" and body["detail"]["error"] == body["error"]
    assert body["detail"]["alarm"]["acknowledged_by"] == "user:operator"
    assert body["detail"]["alarm"]["status"] == "acknowledged"
