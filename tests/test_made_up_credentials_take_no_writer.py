"""A request with a made-up credential is refused without beginning a write transaction: on SQLite a
write transaction is the one writer lock, so whoever could send junk could otherwise queue behind a
long write (an export's recording) and hold every writer after them off in turn (both databases,
the real routes). Measured two ways: while another transaction holds the writer, each such request
is refused promptly (on SQLite it waited for the writer before: the busy timeout, 30 s); and the
transactions each such request begins are counted: none of them writes.

The routes whose credential is checked in their own body rather than a dependency that reads:
evidence content (a bearer token or a console cookie, signed in within the read's look-up), a
package's download link and its page (the link's token), and a device's voice memo (the device's
signature). A person's next reads a moment after one that signed in still sign in within their
look-up's one transaction (``tests/test_range_sign_in.py``)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from accounts.service import revoke_tokens
from tests.test_alarms_kit import DeviceKit, enrol
from tests.test_control_room_reads import writer_held
from tests.test_cross_site_reads import OUR_PAGE
from tests.test_incidents_kit import bearer, store_item, user
from tests.test_range_sign_in import REASON, Begun

PROMPTLY_S = 5.0  # a refusal reads a row or two; one queued behind the held writer waits 30 s
JUNK_TOKEN = {"Authorization": "Bearer not-a-token-of-ours"}
JUNK_COOKIE = {"Cookie": "evidence_session=not-a-session-of-ours", **OUR_PAGE}
MEMO = b"OggS" + bytes(60)


def junk_link() -> str:
    """A download link's token of the right shape (link id, expiry, MAC) that no link of ours has."""
    return f"{uuid.uuid4()}.{int(time.time()) + 3600}.{'A' * 43}"


def junk_requests(s: Any, route: str) -> list[tuple[str, str, dict[str, str], int]]:
    """(method, path, headers, status) of requests to ``route`` carrying made-up credentials, and
    what each is answered: a clip's content (token, cookie; whole and a range), a link's package and
    page, a voice memo signed by another key (an enrolled device's id) or for no device of ours."""
    if route == "content":
        clip = store_item(s, data=b"\x00" * 4096)
        content = f"/api/v1/evidence/{clip.id}/content?reason={REASON.replace(' ', '+')}"
        return [
            ("GET", content, JUNK_TOKEN, 401),
            ("GET", content, {**JUNK_TOKEN, "Range": "bytes=0-99"}, 401),
            ("GET", content, JUNK_COOKIE, 401),
            ("GET", content, {**JUNK_COOKIE, "Range": "bytes=0-99"}, 401),
        ]
    if route == "link":
        link = junk_link()
        return [
            ("GET", f"/api/v1/exports/download/{link}", {}, 404),
            ("GET", f"/api/v1/exports/download/{link}/about", {}, 404),
        ]
    kit = enrol(s, f"LW-J{uuid.uuid4().hex[:4]}")
    forger, stranger = DeviceKit(kit.device_id), DeviceKit("LW-NONE")
    event_id = str(uuid.uuid4())

    def memo(kit: DeviceKit) -> tuple[str, str, dict[str, str], int]:
        path = f"/api/v1/lone-worker/devices/{kit.device_id}/alarms/{event_id}/voice-memo"
        return ("PUT", path, kit.voice_memo_headers(event_id, MEMO), 401)

    return [memo(forger), memo(stranger)]


ROUTES = ["content", "link", "memo"]


@pytest.mark.parametrize("route", ROUTES)
def test_made_up_credentials_are_refused_promptly_while_another_holds_the_writer(
    live: Any, route: str
) -> None:
    s = live.services
    asked = junk_requests(s, route)
    took: list[float] = []
    with writer_held(s), httpx.Client(base_url=live.url) as c:
        for method, path, headers, status in asked:
            started = time.monotonic()
            try:
                got = c.request(method, path, headers=headers, content=MEMO, timeout=PROMPTLY_S)
            except httpx.TimeoutException:
                raise AssertionError(
                    f"{method} {path.split('?')[0]} with a made-up credential: no answer within "
                    f"{PROMPTLY_S} s while another transaction held the writer"
                ) from None
            took.append(time.monotonic() - started)
            assert got.status_code == status, (path, got.status_code, got.text[:300])
    assert max(took) < PROMPTLY_S, took


@pytest.fixture
def client(services: Any) -> Iterator[tuple[TestClient, Any]]:
    from ingest.app import create_app

    with TestClient(create_app(services.settings, services)) as c:
        yield c, services


# Where each route's own work runs (its worker thread's frames), to tell the transactions a request
# begins from those the application's background work begins meanwhile (export builds, housekeeping).
HANDLED_IN = {
    "content": {("reads.py", "_look_up_and_record")},
    "link": {("downloads.py", "download"), ("downloads.py", "link_page")},
    "memo": {("voice_memos.py", "admit")},
}


class BegunFor(Begun):
    """:class:`Begun`, counting only the transactions begun within the given functions."""

    def __init__(self, engine: Any, within: set[tuple[str, str]]) -> None:
        self.within = within
        super().__init__(engine)

    def _begin(self, conn: Any) -> None:
        frame: Any = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            if (code.co_filename.rsplit("/", 1)[-1], code.co_name) in self.within:
                super()._begin(conn)
                return
            frame = frame.f_back


@pytest.mark.parametrize("route", ROUTES)
def test_made_up_credentials_begin_no_write_transaction(client: Any, route: str) -> None:
    c, s = client
    asked = junk_requests(s, route)
    begun = BegunFor(s.db.engine, HANDLED_IN[route])
    try:
        for method, path, headers, status in asked:
            begun.take()
            got = c.request(method, path, headers=headers, content=MEMO)
            assert got.status_code == status, (path, got.status_code, got.text[:300])
            kinds = [kind for _, kind in begun.take()]
            assert kinds and "write" not in kinds, (method, path.split("?")[0], kinds)
    finally:
        begun.remove()


def test_a_revoked_token_takes_the_writer_at_most_once_more(client: Any) -> None:
    """A token that signed in a moment ago is let straight into the read's one transaction; once it
    is refused there (revoked since), it is refused before any write transaction again, and the
    first read by a token not yet seen signs in apart from its look-up, in a read."""
    c, s = client
    boss = user(s, "boss", "admin")
    clip = store_item(s, data=b"\x00" * 4096)
    address = f"/api/v1/evidence/{clip.id}/content"
    token = bearer(s, "boss")
    begun = BegunFor(s.db.engine, HANDLED_IN["content"])
    try:

        def read() -> tuple[int, list[str]]:
            begun.take()
            got = c.get(address, params={"reason": REASON}, headers={**token, "Range": "bytes=0-99"})
            return got.status_code, [kind for _, kind in begun.take()]

        status, kinds = read()
        assert status == 206 and kinds[0] == "read" and "write" in kinds, kinds
        with s.db.session() as session:
            revoke_tokens(session, boss)
        assert read()[0] == 401
        assert read() == (401, ["read"])
    finally:
        begun.remove()
