"""A clip through the dock protocol becomes locked, hashed, signed evidence (both databases, real SeaweedFS)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from blake3 import blake3

from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import verify_service
from storage.objects import ObjectLocked
from tests.clipkit import clip_metadata, enrol, sha256
from tests.media import make_test_clip


def tus_upload(fleet, data: bytes, metadata: str | None = None, split: int | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    h = fleet.dock_headers()
    r = httpx.post(
        f"{fleet.url}/api/v1/dock/uploads",
        headers={
            **h,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata or clip_metadata(fleet, sha256(data), len(data)),
        },
    )
    assert r.status_code == 201, r.text
    loc = fleet.url + r.headers["location"]
    offset = 0
    for end in ([split] if split else []) + [len(data)]:
        r = httpx.patch(
            loc,
            content=data[offset:end],
            timeout=60,
            headers={**h, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        )
        assert r.status_code == 204, r.text
        offset = end
    return r


def test_clip_becomes_locked_verified_evidence(live, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = enrol(live.url, live.admin())
    clip = make_test_clip(tmp_path / "clip.mp4", seconds=4)
    data = clip.read_bytes()
    r = tus_upload(fleet, data, split=len(data) // 3)
    assert r.headers["evidence-status"] == "stored"
    item_id = r.headers["evidence-item-id"]

    s = live.services
    with s.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None
        assert item.sha256 == hashlib.sha256(data).hexdigest() and item.size == len(data)
        assert item.blake3 == blake3(data).hexdigest()  # taken in the same pass, for fast re-checks
    # The stored bytes are exactly the clip, and storage refuses to delete them.
    assert s.store.sha256_of(item.object_key, item.version_id) == (sha256(data), len(data))
    info = s.store.info(item.object_key, item.version_id)
    assert info.retention_mode == "COMPLIANCE" and info.retain_until is not None
    with pytest.raises(ObjectLocked):
        s.store.delete_version(item.object_key, item.version_id)

    trail = httpx.get(f"{live.url}/api/v1/evidence/{item_id}/custody", headers=live.admin()).json()
    assert [e["action"] for e in trail] == ["captured", "received", "stored", "verified"]
    assert trail[0]["details"]["camera_signature"] and trail[2]["details"]["sha256"] == sha256(data)
    assert trail[2]["details"]["blake3"] == blake3(data).hexdigest()

    # Reading is a custody entry; ranges work.
    r = httpx.get(
        f"{live.url}/api/v1/evidence/{item_id}/content",
        headers={**live.admin(), "Range": "bytes=0-99"},
        params={"reason": "checking the upload"},
    )
    assert r.status_code == 206 and r.content == data[:100]
    trail = httpx.get(f"{live.url}/api/v1/evidence/{item_id}/custody", headers=live.admin()).json()
    assert trail[-1]["action"] == "viewed" and trail[-1]["actor"] == "user:admin"

    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    assert report.ok, report.problems
    assert report.entries_checked == 9  # the admin made + the wearer added + 2 enrolments + 4 intake + 1 read


def test_every_read_endpoint_needs_a_token(live) -> None:  # type: ignore[no-untyped-def]
    for path in (
        "/api/v1/evidence",
        "/api/v1/evidence/x",
        "/api/v1/evidence/x/custody",
        "/api/v1/evidence/x/content",
        "/api/v1/custody/public-key",
        "/api/v1/devices",
        "/metrics",
    ):
        assert httpx.get(live.url + path).status_code == 401, path
        assert httpx.get(live.url + path, headers={"Authorization": "Bearer evt_nope"}).status_code == 401, (
            path
        )
    for path in ("/api/v1/dock/uploads",):
        assert httpx.post(live.url + path).status_code == 401
