"""A search's words may name a patient or a member of staff: the incident list's ``q`` travels in
the console's address (a GET form, so a search can be bookmarked and paged), so it is never written
to the log, access lines and sign-in redirects included, and no page hands its address to another
site (``Referrer-Policy`` and the page's own ``<meta name="referrer">``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import start_server
from tests.test_console_kit import add_users, session_client
from tests.test_error_logging import _Buffer, captured  # noqa: F401 - the log capture fixture
from tests.test_incidents_kit import bearer

NAME = "Zebedee Quarrington-Abara"
SAFE = ("same-origin", "no-referrer", "strict-origin", "same-origin, strict-origin-when-cross-origin")


@pytest.fixture
def site(sqlite_services: Any) -> Iterator[tuple[str, Any]]:
    add_users(sqlite_services)
    server, thread, url = start_server(sqlite_services)
    yield url, sqlite_services
    server.should_exit = True
    thread.join(15)


def test_search_words_reach_neither_the_log_nor_another_site(
    site: tuple[str, Any],
    captured: _Buffer,  # noqa: F811
) -> None:
    url, services = site
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel("INFO")  # as a deployment that keeps access lines would have it
    try:
        client, _ = session_client(url, "investigator")
        for params in ({"q": NAME}, {"status": "open", "q": NAME, "page": "2"}):
            page = client.get("/incidents", params=params)
            assert page.status_code == 200
            assert page.headers["referrer-policy"] in SAFE
            assert '<meta name="referrer" content="same-origin">' in page.text
        # Too long for the filter: refused, and the refusal logs no words either.
        assert client.get("/incidents", params={"q": NAME * 20}).status_code == 422
        # Signed out: the way back to the search goes through the sign-in page's address.
        away = httpx.get(f"{url}/incidents", params={"q": NAME})
        assert away.status_code == 303 and "next=" in away.headers["location"]
        assert httpx.get(f"{url}{away.headers['location']}").status_code == 200
        # The API's search too.
        api = httpx.get(f"{url}/api/v1/incidents", params={"q": NAME}, headers=bearer(services, "admin"))
        assert api.status_code == 200 and api.headers["referrer-policy"] in SAFE
        text = captured.text()
    finally:
        access.setLevel(level)
    assert "/incidents?q=[redacted]" in text  # the access lines are there
    for part in ("Zebedee", "Quarrington", "Abara"):
        assert part not in text, text
