"""One person cannot take every share of what is costly: redaction versions queued and live alarm
streams are bounded per person (429 with Retry-After, another person still served, room again once
one ends), through the running service on the real SeaweedFS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounts.service import create_user
from chain_of_custody.evidence import Provenance, record_evidence
from storage.embedded import EmbeddedSeaweed
from tests.conftest import SIGN_IN_TIMEOUT, make_settings, start_server, wait_for

PASSWORD = "shares test password 123"


@pytest.fixture
def shared(tmp_path: Path, seaweed: EmbeddedSeaweed) -> Iterator[tuple[str, Any, dict[str, dict[str, str]]]]:
    from ingest.services import build_services

    s = build_services(
        make_settings(
            tmp_path,
            f"sqlite:///{tmp_path / 'evidence.db'}",
            seaweed,
            max_redactions_queued_per_user=2,
            max_alarm_streams_per_user=2,
            retry_after_seconds=6,
        )
    )
    with s.db.session() as session:
        for name in ("ann", "bob"):
            create_user(session, name, PASSWORD, "admin", key=s.key)
    server, thread, url = start_server(s)
    tokens = {}
    for name in ("ann", "bob"):
        r = httpx.post(
            f"{url}/api/v1/auth/token", data={"username": name, "password": PASSWORD}, timeout=SIGN_IN_TIMEOUT
        )
        r.raise_for_status()
        tokens[name] = {"Authorization": f"Bearer {r.json()['access_token']}"}
    yield url, s, tokens
    server.should_exit = True
    thread.join(15)
    s.db.dispose()


def test_redaction_versions_queued_are_bounded_per_person(shared) -> None:  # type: ignore[no-untyped-def]
    url, s, tokens = shared
    stored = s.store.put_bytes(
        "clips/test/share.mp4",
        os.urandom(4096),
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
    )
    with s.db.session() as session:
        item = record_evidence(session, s.ledger, stored, Provenance(kind="clip", actor="test"))
        item_id = item.id
    post = f"{url}/api/v1/evidence/{item_id}/redactions"
    # A generous timeout: each queued version is a signed custody commit, slow on a loaded machine.
    with httpx.Client(timeout=60) as client:
        for _ in range(2):
            assert client.post(post, json={}, headers=tokens["ann"]).status_code == 202
        r = client.post(post, json={}, headers=tokens["ann"])
        assert (r.status_code, r.json()["reason"], r.headers["retry-after"]) == (
            429,
            "too_many_redactions",
            "6",
        )
        assert (
            client.post(post, json={}, headers=tokens["bob"]).status_code == 202
        )  # another person is served


def test_live_alarm_streams_are_bounded_per_person(shared) -> None:  # type: ignore[no-untyped-def]
    url, s, tokens = shared
    stream = f"{url}/api/v1/alarms/stream"
    with httpx.Client(timeout=10) as client:
        first = client.send(client.build_request("GET", stream, headers=tokens["ann"]), stream=True)
        second = client.send(client.build_request("GET", stream, headers=tokens["ann"]), stream=True)
        assert (first.status_code, second.status_code) == (200, 200)
        r = client.get(stream, headers=tokens["ann"])
        assert (r.status_code, r.json()["reason"]) == (429, "too_many_streams") and "retry-after" in r.headers
        other = client.send(client.build_request("GET", stream, headers=tokens["bob"]), stream=True)
        assert other.status_code == 200  # another person is served
        other.close()
        first.close()
        # A closed stream gives its place back.
        wait_for(lambda: s.alarms.streams.held("user:ann") < 2, 10, what="the closed stream's slot")
        again = client.send(client.build_request("GET", stream, headers=tokens["ann"]), stream=True)
        assert again.status_code == 200
        again.close()
        second.close()
    wait_for(lambda: s.alarms.streams.held() == 0, 10, what="every slot back")
