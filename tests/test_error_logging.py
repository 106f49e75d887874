"""An error costs one request: logged in one short line, off the request path, with no secret in any line.

The service runs for real (uvicorn, the application, the project's logging set up as ``evidence
serve`` sets it up, writing into a buffer); a route added here raises with secrets in its local
variables, and every other error path (bad sign-ins, bad tokens, refused and invalid requests, a
console sign-in and a refused CSRF check) is taken too. The captured log is then searched for each
secret used.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import Request

from accounts.models import User
from accounts.service import create_user
from ingest.logging_setup import configure_logging, flush_logging
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, start_server, wait_for
from tests.test_console_kit import session_client

BIG = "x" * 200_000  # a large local variable: rendering locals would write and cost this much per frame


class _Buffer(io.StringIO):
    """A thread-safe text sink for the log handler."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            return super().write(s)

    def text(self) -> str:
        flush_logging()
        with self.lock:
            return self.getvalue()


@pytest.fixture
def captured() -> Iterator[_Buffer]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = _Buffer()
    configure_logging("INFO", json_lines=False, stream=buffer)
    yield buffer
    flush_logging()
    root.handlers[:], root.level = saved[0], saved[1]


def _recurse(depth: int, secret: str, blob: str) -> None:
    token_in_a_local = secret  # noqa: F841 - a secret held in a frame, as real code holds them
    if depth == 0:
        raise RuntimeError("deliberate failure")
    _recurse(depth - 1, secret, blob)


def _serve_with_failing_route(services):  # type: ignore[no-untyped-def]
    from ingest.app import create_app

    app = create_app(services.settings, services)

    @app.get("/api/v1/test-failure", include_in_schema=False)
    def fail(request: Request) -> None:
        authorization = request.headers.get("authorization", "")  # noqa: F841 - in the frame's locals
        _recurse(20, request.headers.get("x-secret", ""), BIG)

    return start_server(services, app=app)


def test_every_error_path_logs_briefly_and_no_secret_reaches_the_log(services, captured) -> None:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=services.key)
        create_user(session, "nurse", "a long enough test password", "operator", key=services.key)
    server, thread, url = _serve_with_failing_route(services)
    secrets: list[str] = [ADMIN_PASSWORD, "a long enough test password"]
    try:
        r = httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": "admin", "password": ADMIN_PASSWORD},
            timeout=SIGN_IN_TIMEOUT,
        )
        token = r.json()["access_token"]
        secrets.append(token)
        admin = {"Authorization": f"Bearer {token}"}
        with services.db.session() as session:
            secrets.append(session.query(User).filter_by(username="admin").one().password_hash)
        # wrong passwords (each is a secret someone typed), unknown users, a wrong token
        for guess in ("wrong password one", "second wrong guess!"):
            secrets.append(guess)
            httpx.post(
                f"{url}/api/v1/auth/token",
                data={"username": "admin", "password": guess},
                timeout=SIGN_IN_TIMEOUT,
            )
            httpx.post(
                f"{url}/api/v1/auth/token",
                data={"username": "nobody", "password": guess},
                timeout=SIGN_IN_TIMEOUT,
            )
        # a password typed into the username field is a secret too
        secrets.append("my-Password-in-the-name-box")
        httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": "my-Password-in-the-name-box", "password": "x"},
            timeout=SIGN_IN_TIMEOUT,
        )
        bogus = "evt_" + "Q" * 43
        secrets.append(bogus)
        assert httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {bogus}"}).status_code == 401
        # the deliberate failure, with the token in a header and in the frames' locals
        for _ in range(3):
            r = httpx.get(f"{url}/api/v1/test-failure", headers={**admin, "X-Secret": token})
            assert r.status_code == 500
            assert r.json()["reason"] == "internal_error" and token not in r.text
        # invalid and refused requests
        httpx.post(f"{url}/api/v1/users", headers=admin, json={"username": "x", "password": "short"})
        httpx.patch(f"{url}/api/v1/users/1", headers=admin, json={"password": ADMIN_PASSWORD[:5]})
        r = httpx.post(
            f"{url}/api/v1/devices/docks", headers=admin, json={"id": "dock-secret-1", "name": "d"}
        )
        if r.status_code == 201:
            secrets.append(r.json()["token"])
            dock = {"Authorization": f"Bearer {r.json()['token']}"}
            httpx.post(f"{url}/api/v1/dock/uploads", headers={**dock, "Tus-Resumable": "1.0.0"})
        # the console: a session cookie and its CSRF token, then a request refused for a wrong token
        client, csrf = session_client(url, "nurse", "a long enough test password")
        secrets.extend([csrf, *client.cookies.values()])
        client.post("/api/v1/incidents", json={}, headers={"X-CSRF-Token": "not-the-token"})
        client.post("/sign-in", data={"csrf": "wrong", "username": "nurse", "password": "console guess!!"})
        secrets.append("console guess!!")
        client.close()
    finally:
        server.should_exit = True
        thread.join(15)
    text = wait_for(
        lambda: (t := captured.text()) and "deliberate failure" in t and t, 10, what="the failure's log line"
    )
    for secret in secrets:
        assert secret not in text, f"a secret reached the log: {secret[:6]}..."
    failures = [line for line in text.splitlines() if "deliberate failure" in line]
    assert len(failures) == 3, text[-3000:]  # one line for each failed request
    assert "token_in_a_local" not in text and BIG[:1000] not in text  # no locals
    assert len(text) < 64 * 1024, len(text)


def test_a_failing_request_does_not_delay_healthz(services, captured) -> None:  # type: ignore[no-untyped-def]
    server, thread, url = _serve_with_failing_route(services)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            done = threading.Event()
            worst = 0.0

            def probe() -> None:
                nonlocal worst
                while not done.is_set():
                    t0 = time.perf_counter()
                    assert client.get("/healthz").status_code == 200
                    worst = max(worst, time.perf_counter() - t0)

            with ThreadPoolExecutor(5) as pool:
                watcher = pool.submit(probe)
                fails = [pool.submit(client.get, "/api/v1/test-failure") for _ in range(8)]
                assert all(f.result().status_code == 500 for f in fails)
                done.set()
                watcher.result()
    finally:
        server.should_exit = True
        thread.join(15)
    print(f"worst /healthz while requests failed: {worst:.3f}s")
    assert worst < 1.5, f"/healthz took {worst:.2f}s while requests failed"  # (before: 7 s and more)


def test_a_download_links_token_never_reaches_the_log() -> None:
    """The token is the link's whole credential and rides in the path, which refusals log: it is
    replaced whatever its shape (the generic rule catches only long mixed-case runs)."""
    from ingest.logging_setup import scrub

    lowercase_mac = "e0a80691-18cb-450b-85cc-74f8e89d8a9c.1796391095." + "abcdef" * 7
    for path in (
        f"/api/v1/exports/download/{lowercase_mac}",
        f"/api/v1/exports/download/{lowercase_mac}/about",
    ):
        line = scrub(f"request refused path={path} status=416")
        assert lowercase_mac not in line and "/exports/download/[redacted]" in line, line


def test_the_log_follows_stderr_when_it_is_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set up on one stderr, which is then closed and replaced (a daemon's redirect, a test runner's
    capture): the next records reach the new stderr, not an error about the closed one."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    first, second = _Buffer(), _Buffer()
    monkeypatch.setattr("sys.stderr", first)
    try:
        configure_logging("INFO")
        logging.getLogger("evidence.test").info("written before the swap")
        assert "written before the swap" in first.text()
        monkeypatch.setattr("sys.stderr", second)
        first.close()
        logging.getLogger("evidence.test").info("written after the swap")
        after = second.text()
        assert "written after the swap" in after and "Logging error" not in after, after
    finally:
        flush_logging()
        root.handlers[:], root.level = saved[0], saved[1]
