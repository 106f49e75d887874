"""A console form sent again after its answer was lost makes one thing (Debian's chromium through
Playwright against the running service): the page's second POST carries the first one's
``Idempotency-Key``, and the service answers it with the incident the first one opened."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from incidents.models import Incident
from tests.conftest import recorded_user, start_server
from tests.test_console_kit import PASSWORD, chromium, new_page, sign_in


@pytest.fixture
def console(sqlite_services: Any) -> Iterator[tuple[str, Any]]:
    s = sqlite_services
    with s.db.session() as session:
        recorded_user(session, s.ledger, "manager", PASSWORD, "security_manager", site="NORTH")
    server, thread, url = start_server(s)
    yield url, s
    server.should_exit = True
    thread.join(15)


def incidents(services: Any) -> int:
    with services.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Incident)) or 0)


def test_an_incident_form_sent_again_after_a_lost_answer_opens_one(console: tuple[str, Any]) -> None:
    url, s = console
    with chromium() as browser:
        page = new_page(browser)
        sign_in(page, url, "manager", next_path="/incidents")
        keys: list[str | None] = []

        def lose_the_first_answer(route: Any) -> None:
            keys.append(route.request.headers.get("idempotency-key"))
            if len(keys) == 1:
                route.fetch()  # the service opens the incident; its answer is lost on the way back
                route.abort("connectionreset")
            else:
                route.continue_()

        page.route("**/api/v1/incidents", lose_the_first_answer)
        page.fill("#n-title", "Assault in A&E")
        page.fill("#n-occurred", "2026-11-30T10:00")
        page.click("#new-incident button[type=submit]")
        page.wait_for_selector("#new-incident .form-status.error")
        assert incidents(s) == 1  # made, though the page was not told
        page.click("#new-incident button[type=submit]")
        page.wait_for_url("**/incidents/*-*")
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
    assert incidents(s) == 1
