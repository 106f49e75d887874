"""Helpers shared by the console tests (no tests here): Debian's chromium through Playwright, signing in,
users of every role, and where screenshots go."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import recorded_user

CHROMIUM = os.environ.get("EVIDENCE_TEST_CHROMIUM", "/usr/bin/chromium")
# Flags that work on these machines (no sandbox inside the container, no GPU, nothing phoned home).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
PASSWORD = "console password 1"
ROLE_USERS = {
    "admin": "admin",
    "manager": "security_manager",
    "operator": "operator",
    "operator2": "operator",
    "investigator": "investigator",
    "auditor": "auditor",
}
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def add_users(services: Any) -> None:
    with services.db.session() as session:
        for name, role in ROLE_USERS.items():
            recorded_user(
                session, services.ledger, name, PASSWORD, role, full_name=name.title(), site="NORTH"
            )


def screenshot_dir(tmp: Path) -> Path:
    """``docs/screenshots`` when ``EVIDENCE_SCREENSHOTS=docs`` (how the README's pictures are made),
    else a temporary directory: every run takes the pictures, only that one keeps them."""
    if os.environ.get("EVIDENCE_SCREENSHOTS") == "docs":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp


@contextmanager
def chromium() -> Iterator[Any]:
    """Playwright driving the system chromium (never a browser download of its own); Playwright gives
    each launch a fresh profile directory (``--user-data-dir``) of its own."""
    if not Path(CHROMIUM).exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: scripts/ensure-services.sh installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, width: int = 1366, height: int = 768, timezone: str | None = None) -> Any:
    """A page of its own context (en-GB; the machine's time zone unless ``timezone`` names another)."""
    zone = {"timezone_id": timezone} if timezone else {}
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-GB", **zone)
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda d: (page.errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.set_default_timeout(15000)
    return page


def sign_in(page: Any, base: str, user: str, password: str = PASSWORD, next_path: str = "") -> None:
    page.goto(f"{base}/sign-in" + (f"?next={next_path}" if next_path else ""))
    page.fill("#username", user)
    page.fill("#password", password)
    page.press("#password", "Enter")
    page.wait_for_url(re.compile(r"^(?!.*sign-in).*$"))


def session_client(base: str, user: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
    """A plain HTTP client signed in through the console's form, and the session's CSRF token."""
    client = httpx.Client(base_url=base, timeout=15, follow_redirects=False)
    form = client.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    r = client.post("/sign-in", data={"csrf": token.group(1), "username": user, "password": password})
    assert r.status_code == 303, r.text
    page = client.get("/welcome")
    csrf = re.search(r'data-csrf="([^"]*)"', page.text)
    assert csrf and csrf.group(1), page.text
    return client, csrf.group(1)
