"""A dock's termination of an upload never runs beside a request writing or completing it.

A termination that read the upload as open while a completion was recording the clip would mark it
terminated after the completion had made it evidence (the dock told "terminated", the record
"stored"), and would abort the store's multipart upload under a writer still sending parts. It now
takes the upload's writer lease as a PATCH does: while another request holds it the dock is told
busy, with Retry-After, and nothing changes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from ingest.models import Upload
from tests.clipkit import clip_metadata, enrol, sha256
from tests.conftest import LiveServer


def test_a_termination_waits_for_the_request_writing_the_upload(live: LiveServer) -> None:
    fleet = enrol(live.url, live.admin())
    headers = fleet.dock_headers()
    data = os.urandom(4096)
    r = httpx.post(
        f"{fleet.url}/api/v1/dock/uploads",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": clip_metadata(fleet, sha256(data), len(data)),
        },
    )
    assert r.status_code == 201, r.text
    location = fleet.url + r.headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    db = live.services.db  # type: ignore[attr-defined]
    with db.session() as session:  # a PATCH (or its completion) of another request holds the lease
        session.execute(
            update(Upload)
            .where(Upload.id == upload_id)
            .values(lease_id="another-request", lease_until=datetime.now(UTC) + timedelta(minutes=5))
        )

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
