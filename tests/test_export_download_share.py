"""A package link streams a few downloads at once, never more: each range of a media member reads
the member whole to check it, so a link's holder asking for many ranges at once would otherwise make
the store read the footage over and over. One more is refused before anything is recorded."""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

import httpx
from sqlalchemy import func, select

from chain_of_custody.evidence import Provenance
from chain_of_custody.models import CustodyEntry
from incidents.export.downloads import download_slots
from tests.conftest import start_server, wait_for
from tests.test_export_api import package_with_link
from tests.test_export_package import put_evidence

MEMO_BYTES = (
    64 * 1024 * 1024
)  # more than loopback sockets buffer (up to 36 MB here): a download left unread stays open


def _downloads_recorded(s: Any, export_id: str) -> int:
    with s.db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(CustodyEntry)
                .where(CustodyEntry.item_id == export_id, CustodyEntry.action == "viewed")
            )
            or 0
        )


def test_a_link_streams_its_share_at_once_and_one_more_is_refused_unrecorded(services: Any) -> None:
    s = services
    per_link = s.settings.max_download_streams_per_link
    memo = put_evidence(s, os.urandom(MEMO_BYTES), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    _, other_token = package_with_link(s, [memo.id])
    server, thread, url = start_server(s)
    slots = download_slots(s.settings)
    try:
        target = f"{url}/api/v1/exports/download/{token}"
        with ExitStack() as open_downloads:
            readers = []  # kept: a reader dropped would close its connection
            for n in range(per_link):  # ranges that start in the media member: each reads it whole
                resp = open_downloads.enter_context(
                    httpx.stream("GET", target, headers={"Range": f"bytes={1000 + n}-"}, timeout=30)
                )
                assert resp.status_code == 206
                readers.append(resp.iter_raw(65536))
                next(readers[-1])  # streaming, and left unread
            recorded = _downloads_recorded(s, result.export_id)
            refused = httpx.get(target, headers={"Range": "bytes=5000-5100"}, timeout=30)
            assert refused.status_code == 429, refused.text
            assert refused.json()["reason"] == "downloads_busy"
            assert int(refused.headers["retry-after"]) >= 1
            assert _downloads_recorded(s, result.export_id) == recorded, "a refused download was recorded"
            # Another link is not held back by this one's share.
            other = httpx.get(f"{url}/api/v1/exports/download/{other_token}", headers={"Range": "bytes=0-99"})
            assert other.status_code == 206 and len(other.content) == 100
        # The downloads went away: their slots come back and the link serves again.
        wait_for(lambda: slots.held(f"link:{token.split('.')[0]}") == 0, 20, what="the slots to come back")
        again = httpx.get(target, headers={"Range": "bytes=5000-5100"}, timeout=30)
        assert again.status_code == 206 and len(again.content) == 101
        whole = httpx.get(target, timeout=60)
        assert whole.status_code == 200 and len(whole.content) == result.package_size
        assert slots.held() == 0
    finally:
        server.should_exit = True
        thread.join(15)
