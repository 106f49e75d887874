"""A dock's termination of an upload, and the expiry of an abandoned one, never run beside a request
writing or completing it.

A termination that read the upload as open while a completion was recording the clip would mark it
terminated after the completion had made it evidence (the dock told "terminated", the record
"stored"), and would abort the store's multipart upload under a writer still sending parts. It now
takes the upload's writer lease as a PATCH does: while another request holds it the dock is told
busy, with Retry-After, and nothing changes. The expiry pass leaves an upload past its expiry alone
while a request still holds its lease (one that began before the expiry); a later pass takes it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from ingest.models import Upload
from tests.clipkit import Fleet, clip_metadata, enrol, sha256
from tests.conftest import LiveServer


def _held_upload(live: LiveServer, fleet: Fleet, **values: object) -> tuple[str, str]:
    """An open upload whose writer lease another request (a PATCH or its completion) holds."""
    data = os.urandom(4096)
    r = httpx.post(
        f"{fleet.url}/api/v1/dock/uploads",
        headers={
            **fleet.dock_headers(),
            "Upload-Length": str(len(data)),
            "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data)),
        },
    )
    assert r.status_code == 201, r.text
    location = fleet.url + r.headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    with live.services.db.session() as session:  # type: ignore[attr-defined]
        held = {"lease_id": "another-request", "lease_until": datetime.now(UTC) + timedelta(minutes=5)}
        session.execute(update(Upload).where(Upload.id == upload_id).values(**held, **values))
    return location, upload_id


def test_a_termination_waits_for_the_request_writing_the_upload(live: LiveServer) -> None:
    fleet = enrol(live.url, live.admin())
    headers = fleet.dock_headers()
    location, upload_id = _held_upload(live, fleet)
    db = live.services.db  # type: ignore[attr-defined]

    busy = httpx.delete(location, headers=headers)
    assert busy.status_code == 503, busy.text
    assert busy.json()["reason"] == "busy" and busy.headers.get("retry-after")
    with db.session() as session:
        row = session.get(Upload, upload_id)
        assert row is not None and row.status == "open" and row.lease_id == "another-request"
    assert httpx.head(location, headers=headers).status_code == 200

    with db.session() as session:  # that request is over
        session.execute(update(Upload).where(Upload.id == upload_id).values(lease_id=None, lease_until=None))
    assert httpx.delete(location, headers=headers).status_code == 204
    assert httpx.head(location, headers=headers).status_code == 404


def test_the_expiry_leaves_an_upload_being_written(live: LiveServer) -> None:
    fleet = enrol(live.url, live.admin())
    _, upload_id = _held_upload(live, fleet, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    services = live.services  # type: ignore[attr-defined]
    assert services.uploads.expire() == 0
    with services.db.session() as session:
        row = session.get(Upload, upload_id)
        assert row is not None and row.status == "open"
        row.lease_id, row.lease_until = None, None  # that request is over
    assert services.uploads.expire() == 1
    with services.db.session() as session:
        row = session.get(Upload, upload_id)
        assert row is not None and row.status == "expired"
