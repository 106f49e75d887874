"""The export API end to end: a clip uploaded by a dock, an incident, a package built in the
background, a download link for an outside recipient, offline verification of what was downloaded,
and the refusals (roles, scope, originals without a reason, tampered, revoked and expired links)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from blake3 import blake3
from sqlalchemy import select, update

import incidents.export.media as export_module
from accounts.models import User
from accounts.seals import seal_user
from accounts.service import create_user
from chain_of_custody.evidence import Provenance
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.package_verify import verify_package
from incidents.export.build import build_package
from incidents.export.links import LinkRefused, check_link_token, link_secret, make_link_token
from incidents.export.models import ExportLink
from incidents.export.plan import ExportRequest, gather_items
from incidents.service import IncidentDraft, create_incident
from storage.embedded import EmbeddedSeaweed
from tests.clipkit import enrol
from tests.conftest import (
    ADMIN_PASSWORD,
    SIGN_IN_TIMEOUT,
    free_base_port,
    free_port,
    make_settings,
    start_server,
    wait_for,
)
from tests.media import make_test_clip
from tests.test_altered_evidence import flip_on_disk
from tests.test_dock_upload_e2e import tus_upload
from tests.test_export_package import ffmpeg, put_evidence, put_mismatched
from tests.test_incidents_kit import sealed_export_job

PASSWORD = "export test password 123"


@dataclass
class Server:
    url: str
    services: object
    tokens: dict[str, str]

    def as_(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[username]}"}


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@pytest.fixture
def server(services) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    from ingest.app import create_app

    with services.db.session() as session:
        create_user(session, "admin", ADMIN_PASSWORD, "admin", key=services.key)
        create_user(session, "inv", PASSWORD, "investigator", key=services.key)
        create_user(session, "other_inv", PASSWORD, "investigator", key=services.key)
        create_user(session, "boss", PASSWORD, "security_manager", site="QEH", key=services.key)
        create_user(session, "audit", PASSWORD, "auditor", key=services.key)
    app = create_app(services.settings, services)
    port = free_port()
    srv = _ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: srv.started, 20, what="HTTP server to start")
    tokens = {}
    for name in ("admin", "inv", "other_inv", "boss", "audit"):
        r = httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": name, "password": ADMIN_PASSWORD if name == "admin" else PASSWORD},
            timeout=SIGN_IN_TIMEOUT,
        )
        r.raise_for_status()
        tokens[name] = r.json()["access_token"]
    yield Server(url, services, tokens)
    srv.should_exit = True
    thread.join(15)


def wait_ready(server: Server, export_id: str, who: str = "inv") -> dict[str, object]:
    def ready() -> dict[str, object] | None:
        r = httpx.get(f"{server.url}/api/v1/exports/{export_id}", headers=server.as_(who))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] != "failed", body
        return body if body["status"] == "ready" else None

    return wait_for(ready, 60, 0.1, "the export to be ready")  # type: ignore[no-any-return]


def custody_of(services, item_id: str) -> list[CustodyEntry]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        return list(
            session.scalars(
                select(CustodyEntry).where(CustodyEntry.item_id == item_id).order_by(CustodyEntry.item_seq)
            )
        )


def last_entry(services, item_id: str) -> CustodyEntry:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        return session.scalars(
            select(CustodyEntry).where(CustodyEntry.item_id == item_id).order_by(CustodyEntry.item_seq.desc())
        ).first()


def test_export_download_and_verify(server: Server, tmp_path: Path) -> None:
    s = server.services
    admin = server.as_("admin")
    # A real clip through the dock protocol, a real blurred copy of it, an alarm record and a voice memo.
    fleet = enrol(server.url, admin)
    clip_file = make_test_clip(tmp_path / "clip.mp4", seconds=2)
    r = tus_upload(fleet, clip_file.read_bytes())
    clip_id = r.headers["evidence-item-id"]
    blurred = tmp_path / "blurred.mp4"
    ffmpeg(
        "-i", str(clip_file), "-vf", "boxblur=10:1", "-c:v", "libx264", "-preset", "ultrafast", str(blurred)
    )
    redacted = put_evidence(
        s,
        blurred,
        Provenance(
            kind="redacted_clip", actor="service:redaction", content_type="video/mp4", derived_from_id=clip_id
        ),
    )
    alarm = put_evidence(
        s, b'{"alarm":"sos"}', Provenance(kind="alarm", actor="device:LW-1", content_type="application/json")
    )

    # An incident at QEH, the investigator assigned, the clip and the alarm record linked.
    r = httpx.post(
        f"{server.url}/api/v1/incidents",
        json={
            "category": "physical_assault",
            "occurred_at": "2026-11-22T10:00:00Z",
            "site": "QEH",
            "title": "A&E",
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    incident = r.json()
    with s.db.session() as session:  # type: ignore[attr-defined]
        from accounts.models import User

        inv_id = session.scalar(select(User.id).where(User.username == "inv"))
    assert (
        httpx.put(
            f"{server.url}/api/v1/incidents/{incident['id']}/investigators/{inv_id}", headers=admin
        ).status_code
        == 200
    )
    exports = f"{server.url}/api/v1/incidents/{incident['id']}/exports"
    r = httpx.post(exports, json={}, headers=server.as_("inv"))
    assert r.status_code == 409 and "nothing is linked" in r.text
    assert (
        httpx.post(f"{server.url}/api/v1/incidents/nope/exports", json={}, headers=admin).status_code == 404
    )
    for target in (clip_id, alarm.id):
        r = httpx.post(
            f"{server.url}/api/v1/incidents/{incident['id']}/links",
            json={"kind": "evidence", "target_id": target, "reason": "seen on the footage"},
            headers=admin,
        )
        assert r.status_code in (200, 201), r.text

    # Who may not: an auditor (role), an unassigned investigator (scope), an investigator asking for originals.
    assert httpx.post(exports, json={}, headers=server.as_("audit")).status_code == 403
    assert httpx.post(exports, json={}, headers=server.as_("other_inv")).status_code == 404
    r = httpx.post(
        exports, json={"include_originals": True, "reason": "CPS asked"}, headers=server.as_("inv")
    )
    assert r.status_code == 403 and "original" in r.text
    r = httpx.post(exports, json={"include_originals": True}, headers=server.as_("boss"))
    assert r.status_code == 422 and "reason" in r.text

    # The investigator's package: built in the background, redacted video in, original withheld.
    r = httpx.post(exports, json={}, headers=server.as_("inv"))
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/v1/exports/{r.json()['id']}"
    # The key that will sign it is named from the start, and published to anyone at the trust's address.
    published = httpx.get(f"{server.url}/.well-known/evidence-signing-key")
    assert published.status_code == 200, published.text
    trusted = published.json()["fingerprint_sha256"]
    assert r.json()["key_fingerprint"] == trusted == s.key.fingerprint  # type: ignore[attr-defined]
    assert r.json()["signing_key_url"] == "/.well-known/evidence-signing-key"
    assert r.json()["media_bytes_total"] == redacted.size + alarm.size
    job = wait_ready(server, r.json()["id"])
    assert set(job["included"]) == {redacted.id, alarm.id}  # type: ignore[arg-type]
    assert "redacted copy" in job["withheld"][clip_id]  # type: ignore[index]
    assert job["media_bytes_done"] == redacted.size + alarm.size
    listed = httpx.get(exports, headers=server.as_("inv")).json()
    assert [e["id"] for e in listed] == [job["id"]]
    assert (
        httpx.get(f"{server.url}/api/v1/exports/{job['id']}", headers=server.as_("other_inv")).status_code
        == 404
    )

    # A link for an officer: downloadable without an account, logged as a view of the package.
    r = httpx.post(
        f"{server.url}/api/v1/exports/{job['id']}/links",
        json={"recipient": "DC Jones, Metropolitan Police", "expires_in_hours": 24},
        headers=server.as_("inv"),
    )
    assert r.status_code == 201, r.text
    link = r.json()
    assert link["key_fingerprint"] == trusted and link["package_sha256"] == job["package_sha256"]
    # The link's page, read with the link alone, names what to check the file and its key against.
    page = httpx.get(link["about_url"])
    assert page.status_code == 200, page.text
    about = page.json()
    assert about["key_fingerprint"] == trusted and about["package_sha256"] == job["package_sha256"]
    assert about["package_size"] == job["package_size"] and about["recipient"] == link["recipient"]
    assert httpx.get(link["about_url"].replace("/about", "x/about")).status_code == 404
    package = tmp_path / "package.zip"
    with httpx.stream("GET", link["url"]) as resp:
        assert resp.status_code == 200
        assert resp.headers["etag"] == f'"{job["package_sha256"]}"'
        assert resp.headers["x-evidence-sha256"] == job["package_sha256"]
        with open(package, "wb") as f:
            for block in resp.iter_bytes():
                f.write(block)
    key = httpx.get(f"{server.url}/api/v1/custody/public-key", headers=admin).json()
    assert key["fingerprint_sha256"] == trusted
    report = verify_package(package, trusted)
    assert report.ok, [str(p) for p in report.problems]
    viewed = last_entry(s, job["id"])  # type: ignore[arg-type]
    details = json.loads(viewed.details)
    assert viewed.action == "viewed" and viewed.actor == f"link:{link['id']}"
    assert (
        details["recipient"] == "DC Jones, Metropolitan Police" and details["link_created_by"] == "user:inv"
    )

    whole = package.read_bytes()
    assert job["package_size"] == len(whole) and job["layout_sha256"]
    # The file as received is the file as published, and the signed custody record says so too.
    assert job["package_sha256"] == hashlib.sha256(whole).hexdigest()
    exported = json.loads(
        next(e for e in custody_of(s, job["id"]) if e.action == "exported").details  # type: ignore[arg-type]
    )
    assert exported["package_sha256"] == job["package_sha256"]
    assert details["items_read"] == [redacted.id, alarm.id]
    assert details["manifest_sha256"] == job["manifest_sha256"]
    assert details["layout_sha256"] == job["layout_sha256"]

    # The same bytes on every download, with the headers a resuming client relies on.
    again = httpx.get(link["url"])
    assert again.status_code == 200 and again.content == whole
    assert again.headers["content-length"] == str(len(whole))
    assert again.headers["etag"] == f'"{job["package_sha256"]}"'
    assert again.headers["x-evidence-manifest-sha256"] == job["manifest_sha256"]

    # Resuming with a range is served and logged too; ranges across headers and media stitch together.
    r = httpx.get(link["url"], headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.content == whole[:100]
    assert r.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    ranged = json.loads(last_entry(s, job["id"]).details)  # type: ignore[arg-type]
    assert ranged["range"] == [0, 99] and ranged["items_read"] == [redacted.id]
    r = httpx.get(link["url"], headers={"Range": "bytes=0-29"})  # the first local header's fixed part
    assert r.status_code == 206 and r.content == whole[:30]
    assert json.loads(last_entry(s, job["id"]).details)["items_read"] == []  # type: ignore[arg-type]
    cuts = [0, 100, 4097, len(whole) // 2, len(whole) - 30, len(whole)]
    stitched = b""
    for a, b in zip(cuts, cuts[1:], strict=False):
        r = httpx.get(link["url"], headers={"Range": f"bytes={a}-{b - 1}"})
        assert r.status_code == 206 and len(r.content) == b - a, (a, b, r.status_code)
        stitched += r.content
    assert stitched == whole
    r = httpx.get(link["url"], headers={"Range": "bytes=-30"})
    assert r.status_code == 206 and r.content == whole[-30:]
    r = httpx.get(link["url"], headers={"Range": f"bytes={len(whole)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(whole)}"
    assert r.json()["reason"] == "range_not_satisfiable"  # the one error envelope

    # Every packaged item records the export.
    for item_id in (clip_id, redacted.id, alarm.id):
        entry = last_entry(s, item_id)
        assert entry.action == "exported" and json.loads(entry.details)["export_id"] == job["id"]

    # A forged token, a revoked link and an expired link are refused; none of them is logged (issuing
    # and revoking a link are: ``link_issued``, ``link_revoked``).
    forged = link["url"][:-2] + ("AA" if not link["url"].endswith("AA") else "BB")
    assert httpx.get(forged).status_code == 404
    assert httpx.get(f"{server.url}/api/v1/exports/download/not-a-token").status_code == 404
    second = httpx.post(
        f"{server.url}/api/v1/exports/{job['id']}/links",
        json={"recipient": "CPS reviewer"},
        headers=server.as_("inv"),
    ).json()
    assert (
        httpx.delete(
            f"{server.url}/api/v1/exports/{job['id']}/links/{second['id']}", headers=server.as_("inv")
        ).status_code
        == 204
    )
    assert last_entry(s, job["id"]).action == "link_revoked"  # type: ignore[arg-type]
    before = last_entry(s, job["id"]).seq  # type: ignore[arg-type]
    assert httpx.get(forged).status_code == 404
    r = httpx.get(second["url"])
    assert r.status_code == 410 and "revoked" in r.text
    with s.db.session() as session:  # type: ignore[attr-defined]
        session.execute(
            update(ExportLink)
            .where(ExportLink.id == link["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = httpx.get(link["url"])
    assert r.status_code == 410 and "expired" in r.text
    assert last_entry(s, job["id"]).seq == before  # type: ignore[arg-type]

    # A security manager of the site includes the originals, with a reason that custody keeps.
    r = httpx.post(
        exports,
        json={"include_originals": True, "reason": "Police request ref MPS-2026-1187"},
        headers=server.as_("boss"),
    )
    assert r.status_code == 202, r.text
    full = wait_ready(server, r.json()["id"], "boss")
    assert clip_id in full["included"]  # type: ignore[operator]
    details = json.loads(last_entry(s, clip_id).details)
    assert details["original_footage"] is True and details["reason"] == "Police request ref MPS-2026-1187"
    assert details["authorised_by"] == "user:boss"


def test_link_tokens_expire_and_bind_to_their_export(sqlite_services) -> None:  # type: ignore[no-untyped-def]
    secret = link_secret(sqlite_services.key)
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    link_id, export_id = "6f1c2a7e-1111-4222-8333-444455556666", "0b7e1a4f-aaaa-4bbb-8ccc-ddddeeeeffff"
    token = make_link_token(secret, link_id, export_id, now + timedelta(hours=1))
    check_link_token(secret, token, export_id, now)
    with pytest.raises(LinkRefused) as refused:
        check_link_token(secret, token, export_id, now + timedelta(hours=1))
    assert refused.value.status == 410
    with pytest.raises(LinkRefused) as refused:
        check_link_token(secret, token, "another-export", now)
    assert refused.value.status == 404
    link, expires, mac = token.split(".")
    with pytest.raises(LinkRefused) as refused:  # a later expiry written into the token breaks its MAC
        check_link_token(secret, f"{link}.{int(expires) + 86400}.{mac}", export_id, now)
    assert refused.value.status == 404


@pytest.fixture
def private_services(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Services on a store of their own: damaging a volume on disk must not touch the shared store."""
    from ingest.services import build_services

    seaweed = EmbeddedSeaweed(tmp_path / "own-s3", free_base_port(), "512MiB")
    seaweed.start()
    s = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", seaweed))
    yield s, seaweed
    s.db.dispose()
    seaweed.kill()  # thrown away with tmp_path: no graceful stop (about 2 s)


def link_issuer(s, username: str) -> str:  # type: ignore[no-untyped-def]
    """An administrator ``username`` (made once) and an incident of theirs, for a link issued as the
    API issues it: a link serves only while its issuer may still hand the package out; the incident's id."""
    with s.db.session() as session:
        if session.scalar(select(User).where(User.username == username)) is None:
            issuer = User(username=username, password_hash="-", role="admin")
            session.add(issuer)
            session.flush()
            seal_user(issuer, s.key)
        draft = IncidentDraft(category="physical_assault", occurred_at=datetime.now(UTC), site="NORTH")
        return create_incident(session, draft, f"user:{username}", ledger=s.ledger).id


def package_with_link(s, item_ids: list[str], **kw: Any) -> tuple[Any, str]:  # type: ignore[no-untyped-def]
    """A package of the items, its job row and a download link, as the API would make them; (result, token)."""
    with s.db.session() as session:
        items = gather_items(session, item_ids)
    export_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    result = build_package(
        s.db,
        s.store,
        s.ledger,
        s.key,
        items,
        ExportRequest(export_id, {"reference": "INC-1"}, "user:inv", now + timedelta(days=1)),
        **kw,
    )
    return result, link_to(s, export_id)


def link_to(s, export_id: str) -> str:  # type: ignore[no-untyped-def]
    """A download link for package ``export_id`` with its job row, as the API would make them; its token."""
    now = datetime.now(UTC)
    incident_id = link_issuer(s, "inv")
    with s.db.session() as session:
        sealed_export_job(s, session, export_id, incident_id, "user:inv", "investigator")
        session.flush()
        link = ExportLink(
            id=str(uuid.uuid4()),
            export_id=export_id,
            recipient="DC Jones",
            created_by="user:inv",
            expires_at=now + timedelta(hours=1),
        )
        session.add(link)
        s.ledger.append(  # as the route that issues links records it
            session,
            "link_issued",
            "user:inv",
            item_id=export_id,
            details={"link": link.id, "recipient": "DC Jones"},
        )
    return make_link_token(link_secret(s.key), link.id, export_id, link.expires_at)


def test_download_of_a_package_over_altered_media_fails_loudly(private_services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A packaged item's bytes changed on the storage server's disk: the download breaks off short of
    its Content-Length, so no recipient holds a zip that looks whole; intact ranges still serve."""
    s, seaweed = private_services
    marker = b"EVIDENCE-UNDER-LINK-" + uuid.uuid4().hex.encode()
    memo = put_evidence(s, marker + os.urandom(3 * 1024 * 1024), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id], package_hash=True)
    server, thread, url = start_server(s)
    try:
        target = f"{url}/api/v1/exports/download/{token}"
        whole = httpx.get(target)
        assert whole.status_code == 200 and len(whole.content) == result.package_size
        # Built with the zip's own hash: the recipient can compare what arrived with it.
        assert whole.headers["x-evidence-sha256"] == hashlib.sha256(whole.content).hexdigest()
        assert whole.headers["etag"] == f'"{result.package_sha256}"'
        flip_on_disk(seaweed, marker)
        got = bytearray()
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("GET", target) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-length"] == str(result.package_size)
                for block in resp.iter_bytes():
                    got += block
        assert len(got) < result.package_size
        # The zip's last bytes (no media in them) still serve: a range reads only what it covers.
        tail = httpx.get(target, headers={"Range": "bytes=-22"})
        assert tail.status_code == 206 and tail.content == whole.content[-22:]
    finally:
        server.should_exit = True
        thread.join(15)


def test_download_stops_where_media_no_longer_match_the_package(private_services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The download's own check (BLAKE3, recorded with the item) on the service's streaming thread:
    an object that no longer matches breaks the download off short, and the item is quarantined
    with the digest named. (SeaweedFS never serves it here: the store holds other bytes than the
    record from the start, as if the object had been swapped after the package was built.)"""
    s, _seaweed = private_services
    recorded = os.urandom(3 * 1024 * 1024)
    held = bytes([recorded[0] ^ 1]) + recorded[1:]
    memo = put_mismatched(s, held, recorded)
    # The build's check would refuse the item (test_altered_stored_object_is_never_exported...):
    # leave it out, so that the package is made as it would have been before the swap.
    monkeypatch.setattr(
        export_module, "_scan_parallel", lambda store, items, counter: {memo.id: zlib.crc32(held)}
    )
    result, token = package_with_link(s, [memo.id])
    readers: list[str] = []
    media_blocks = export_module._media_blocks

    def noted(*args: Any, **kw: Any) -> Any:
        readers.append(threading.current_thread().name)
        return media_blocks(*args, **kw)

    monkeypatch.setattr(export_module, "_media_blocks", noted)
    server, thread, url = start_server(s)
    try:
        got = bytearray()
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("GET", f"{url}/api/v1/exports/download/{token}") as resp:
                assert resp.status_code == 200
                assert resp.headers["content-length"] == str(result.package_size)
                for block in resp.iter_bytes():
                    got += block
        assert len(got) < result.package_size
        assert readers == ["download-blocks"]  # the body streams from its own thread, not the worker pool
        with s.db.session() as session:
            item = session.get(EvidenceItem, memo.id)
            assert item is not None and item.status == "quarantined"
            assert item.quarantine_reason.startswith(
                f"stored object hashes to BLAKE3 {blake3(held).hexdigest()} "
            )
            last = session.scalars(
                select(CustodyEntry)
                .where(CustodyEntry.item_id == memo.id)
                .order_by(CustodyEntry.item_seq.desc())
            ).first()
            assert last is not None and last.action == "quarantined"
            assert json.loads(last.details)["export_id"] == result.export_id
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_package_row_pointed_at_another_layout_is_not_served(private_services, caplog) -> None:  # type: ignore[no-untyped-def]
    """The package's row is how its layout is found and checked: pointed at another package's
    layout (whose bytes match the edited row), the download refuses; the service's log names the
    custody record it disagrees with, and the answer to the link's holder (who has no account)
    names no item or object of the service's."""
    s, _seaweed = private_services
    mine = put_evidence(s, os.urandom(100_000), Provenance(kind="voice_memo", actor="t"))
    other = put_evidence(s, os.urandom(100_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [mine.id])
    decoy, _ = package_with_link(s, [other.id])
    server, thread, url = start_server(s)
    try:
        target = f"{url}/api/v1/exports/download/{token}"
        assert httpx.get(target).status_code == 200
        with s.db.session() as session:
            forged = session.get(EvidenceItem, decoy.export_id)
            session.execute(
                update(EvidenceItem)
                .where(EvidenceItem.id == result.export_id)
                .values(
                    object_key=forged.object_key,
                    version_id=forged.version_id,
                    sha256=forged.sha256,
                    blake3=forged.blake3,
                    size=forged.size,
                )
            )
        with caplog.at_level(logging.ERROR):
            refused = httpx.get(target)
        assert refused.status_code == 409, refused.text[:300]
        assert (
            refused.json()["detail"]
            == "the package cannot be served: evidence it holds no longer matches its record"
        )
        logged = [
            str(getattr(r, "problem", ""))
            for r in caplog.records
            if getattr(r, "export", None) == result.export_id
        ]
        assert any(f"evidence item {result.export_id}: object_key is" in p for p in logged), logged
        assert any("in the custody record" in p for p in logged), logged
        for internal in (result.export_id, forged.object_key, forged.sha256):
            assert internal not in refused.text
    finally:
        server.should_exit = True
        thread.join(15)
