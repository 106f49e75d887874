"""Exports and subject access requests in a real browser (Debian's chromium through Playwright) against
the real service, PostgreSQL, the object store, ffmpeg and the face detector.

An investigator builds a package of the items they choose, gives a named officer a download link,
the package downloaded through it verifies with ``evidence verify`` and the fingerprint shown on the
page, the link is revoked and then refused, and the disclosure log says all of it. A security
manager takes a subject access request from the request to a package in which only the requester's
face is left visible, marking the requester's track in the redaction review ("this is the
requester") and by its number on the request's page. The tests also take the README's screenshots.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from accounts.models import User
from chain_of_custody.evidence import Provenance
from chain_of_custody.models import EvidenceItem
from chain_of_custody.reach_seals import reach_secret, staff_seal
from devices.models import StaffMember
from firmware_simulators.scene import render_clip
from incidents.export.models import ExportJob
from redaction.jobs import enqueue
from redaction.media import ffmpeg_exe
from redaction.models import RedactionJob
from tests import test_disclosure_api
from tests.conftest import wait_for
from tests.media import make_test_clip
from tests.test_console_kit import chromium, new_page, screenshot_dir, sign_in
from tests.test_export_api import PASSWORD, Server, custody_of
from tests.test_export_package import put_evidence

pytestmark = pytest.mark.e2e

server = test_disclosure_api.server  # the running service with its users and their tokens


# Patient answers: these tests run beside others on a busy machine.
http = httpx.Client(timeout=120)


@pytest.fixture
def database_url(pg_url: str) -> Iterator[str]:
    yield pg_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _assign(server: Server, incident_id: str, username: str) -> None:
    with server.services.db.session() as session:  # type: ignore[attr-defined]
        user_id = session.scalar(select(User.id).where(User.username == username))
    r = http.put(
        f"{server.url}/api/v1/incidents/{incident_id}/investigators/{user_id}", headers=server.as_("admin")
    )
    assert r.status_code == 200, r.text


def link_download_verify(
    page: Any, job_id: str, package_sha: str, shown_fingerprint: str, package: Path, shot: Path
) -> str:
    """On an exports page: give DC Jones a 48-hour link to the package ``job_id`` (shown with the
    package's hash and the key's fingerprint, pictured in ``shot``), download it through the link to
    ``package`` and check it with ``evidence verify`` and the fingerprint shown (a wrong one fails).
    The link's address."""
    form = page.locator(f"form.link-form[data-export='{job_id}']")
    form.locator("input[name=recipient]").fill("DC Jones, Metropolitan Police")
    form.locator("input[name=purpose]").fill("charging decision, Op Kestrel")
    form.locator("input[name=expires_in_hours]").fill("48")
    form.locator("button[type=submit]").click()
    page.wait_for_selector(".link-url")
    url = page.locator(".link-url").inner_text().strip()
    assert page.locator(".link-fingerprint").inner_text().strip() == shown_fingerprint
    assert page.locator(".link-sha256").inner_text().strip() == package_sha
    page.screenshot(path=str(shot), full_page=True)

    # The recipient downloads it and checks it with the fingerprint passed on apart from it.
    with http.stream("GET", url) as resp:
        assert resp.status_code == 200
        with open(package, "wb") as f:
            for chunk in resp.iter_bytes():
                f.write(chunk)
    evidence = Path(sys.executable).parent / "evidence"
    ok = subprocess.run(
        [str(evidence), "verify", str(package), "--key-fingerprint", shown_fingerprint],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = subprocess.run(
        [str(evidence), "verify", str(package), "--key-fingerprint", "0" * 64],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode != 0
    return url


def test_export_link_download_verify_and_revoke_in_the_browser(
    server: Server, browser: Any, tmp_path: Path
) -> None:
    s = server.services
    shots = screenshot_dir(tmp_path)
    start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    clip_file = make_test_clip(tmp_path / "clip.mp4", seconds=1, size="320x180")
    clip = put_evidence(
        s,
        clip_file,
        Provenance(
            kind="clip",
            actor="dock:DOCK-1",
            wearer="S-1",
            captured_start=start,
            filename="ward7-cam1.mp4",
            content_type="video/mp4",
        ),
    )
    put_evidence(
        s,
        clip_file,  # stands in for its redacted copy: the package takes the latest one
        Provenance(
            kind="redacted_clip", actor="service:redaction", derived_from_id=clip.id, content_type="video/mp4"
        ),
    )
    memo = put_evidence(
        s,
        b'{"alarm":"sos","by":"S-1"}',
        Provenance(kind="alarm", actor="device:LW-1", filename="sos.json", content_type="application/json"),
    )
    r = http.post(
        f"{server.url}/api/v1/incidents",
        json={
            "category": "physical_assault",
            "occurred_at": start.isoformat(),
            "site": "QEH",
            "title": "Ward 7 assault",
        },
        headers=server.as_("admin"),
    )
    incident = r.json()
    _assign(server, incident["id"], "inv")
    for target in (clip.id, memo.id):
        r = http.post(
            f"{server.url}/api/v1/incidents/{incident['id']}/links",
            json={"kind": "evidence", "target_id": target, "reason": "seen on the footage"},
            headers=server.as_("admin"),
        )
        assert r.status_code in (200, 201), r.text

    page = new_page(browser)
    page.set_default_timeout(60_000)
    sign_in(page, server.url, "inv", PASSWORD, next_path="/exports")
    page.click(f"text={incident['reference']}")
    page.wait_for_selector("#build-form")
    assert page.locator("#include-originals").count() == 0  # an investigator may not add originals
    shown_fingerprint = page.locator("#key-fingerprint").inner_text().strip()
    trusted = http.get(f"{server.url}/.well-known/evidence-signing-key").json()["fingerprint_sha256"]
    assert shown_fingerprint == trusted

    # Only the clip: the alarm record is left out.
    page.uncheck(f"#item-{memo.id}")
    page.click("#build")
    page.wait_for_selector("article.package[data-status=ready]", timeout=60_000)
    [job_id] = page.locator("article.package").evaluate_all("(a) => a.map((x) => x.dataset.export)")
    with s.db.session() as session:  # type: ignore[attr-defined]
        job = session.get(ExportJob, job_id)
        assert job is not None and memo.id not in (job.result or "")
        package_sha = job.package_sha256

    url = link_download_verify(
        page, job_id, package_sha, shown_fingerprint, tmp_path / "package.zip", shots / "export-link.png"
    )

    # Revoked from the list (a second press confirms): the link is refused from then on.
    page.goto(f"{server.url}/incidents/{incident['reference']}/exports")
    revoke = page.locator("button.revoke")
    revoke.click()
    assert "Confirm" in revoke.inner_text()
    revoke.click()
    page.wait_for_selector("text=revoked")
    assert http.get(url).status_code == 410
    log = page.locator("#disclosure-log tbody tr")
    assert log.evaluate_all("(rows) => rows.map((r) => r.dataset.event)") == [
        "package_built",
        "link_issued",
        "downloaded",
        "link_revoked",
    ]
    assert "DC Jones, Metropolitan Police" in page.locator("#disclosure-log").inner_text()
    assert "charging decision" in page.locator("#disclosure-log").inner_text()
    csv_file = page.request.get(server.url + page.locator("a[href$='format=csv']").get_attribute("href"))
    assert csv_file.status == 200 and "DC Jones, Metropolitan Police" in csv_file.text()
    page.locator("#log-title").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "export-disclosure-log.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]

    # An investigator of other incidents gets neither the page nor the log.
    other = new_page(browser)
    sign_in(other, server.url, "other_inv", PASSWORD, next_path="/exports")
    assert other.locator(f"text={incident['reference']}").count() == 0
    r = other.goto(f"{server.url}/incidents/{incident['reference']}/exports")
    assert r is not None and r.status == 404


def _record(s: Any, item_id: str) -> dict[str, Any]:
    with s.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        key, version = item.object_key, item.version_id
    return json.loads(b"".join(s.store.read(key, version)))  # type: ignore[no-any-return]


def _rms(s: Any, item_id: str, start: float, end: float) -> float:
    """The loudness of an item's sound from ``start`` to ``end`` seconds."""
    with s.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        key, version = item.object_key, item.version_id
    done = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", "pipe:0", "-ss", str(start), "-t", str(end - start),
         "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", "-"],
        input=b"".join(s.store.read(key, version)), capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    samples = np.frombuffer(done.stdout, dtype="<i2").astype(np.float64) / 32768
    assert len(samples) > 1000
    return float(np.sqrt(np.mean(samples**2)))


def test_subject_access_request_from_request_to_package(server: Server, browser: Any, tmp_path: Path) -> None:
    s = server.services
    shots = screenshot_dir(tmp_path)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=3)
    with s.db.session() as session:  # type: ignore[attr-defined]
        reach = reach_secret(s.key)  # type: ignore[attr-defined]
        # sealed as the service seals them (``chain_of_custody.reach_seals``)
        session.add(
            StaffMember(id="S-QEH-7", name="Sam Porter", site="QEH", seal=staff_seal(reach, "S-QEH-7", "QEH"))
        )
    render_clip(
        tmp_path / "faces.mp4",
        seconds=1.2,
        width=320,
        height=240,
        fps=25,
        faces=2,
        seed=11,
        min_face=40,
        max_face=70,
    )
    clip = put_evidence(
        s,
        tmp_path / "faces.mp4",
        Provenance(
            kind="clip",
            actor="dock:DOCK-1",
            wearer="S-QEH-7",
            captured_start=start,
            captured_stop=start + timedelta(seconds=2),
            filename="ae-waiting-room.mp4",
            content_type="video/mp4",
        ),
    )
    # The automatic redaction that every clip gets on arrival: it hides both faces (two tracks).
    worker = s.redaction_worker()  # type: ignore[attr-defined]
    with s.db.session() as session:  # type: ignore[attr-defined]
        first = enqueue(session, clip.id, "service", {}, max_attempts=3).id
    assert worker.run_once() == first
    with s.db.session() as session:  # type: ignore[attr-defined]
        auto = session.get(RedactionJob, first)
        record_id = auto.record_item_id
    tracks = sorted(
        {n["track"] for frame in _record(s, record_id)["record"] for n in frame if n.get("source") == "auto"}
    )
    assert len(tracks) >= 2, tracks
    requester_track = tracks[0]

    page = new_page(browser, height=900)
    page.set_default_timeout(60_000)
    sign_in(page, server.url, "boss", PASSWORD, next_path="/subject-access")
    page.fill("#sar-requester", "Alex Smith")
    page.fill("#sar-contact", "alex.smith@example.org, 07700 900123")
    page.fill("#sar-received", (datetime.now(UTC).date() - timedelta(days=1)).isoformat())
    page.fill("#sar-description", "Grey coat, A&E waiting room, mid-afternoon")
    page.click("#new-request button[type=submit]")
    page.wait_for_selector("#requests a:has-text('Alex Smith')")
    page.screenshot(path=str(shots / "subject-access-requests.png"), full_page=True)
    page.click("#requests a:has-text('Alex Smith')")
    page.wait_for_selector("#search-form")
    assert "days left" in page.locator("#days-left").inner_text()

    # Footage found by site and time window, among what the manager may see; the clip added.
    page.fill("#search-start", (start - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#search-end", (start + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#search-form button[type=submit]")
    page.wait_for_selector(f"#candidates tr[data-candidate='{clip.id}']")
    page.screenshot(path=str(shots / "subject-access-search.png"), full_page=True)
    page.click(f"button.add-clip[data-clip='{clip.id}']")
    page.wait_for_selector(f"article.clip[data-clip='{clip.id}']")
    request_url = page.url
    sar_id = request_url.rsplit("/", 1)[1]
    reference = page.locator("form.version-form").first.get_attribute("data-reference")

    def made(number: int) -> tuple[dict[str, Any], str, str]:
        """Version ``number`` of the clip, once the page has asked for it, made by the worker: its
        spec, its redacted copy and its record."""

        def asked() -> str | None:
            with s.db.session() as session:  # type: ignore[attr-defined]
                return session.scalar(  # type: ignore[no-any-return]
                    select(RedactionJob.id).where(
                        RedactionJob.source_item_id == clip.id, RedactionJob.version == number
                    )
                )

        queued = wait_for(asked, 15, 0.1, f"version {number} to be asked for")
        assert worker.run_once() == queued
        with s.db.session() as session:  # type: ignore[attr-defined]
            version = session.get(RedactionJob, queued)
            return json.loads(version.spec), version.result_item_id, version.record_item_id

    # In the redaction review, opened from the request: "this is the requester" on their track leaves
    # them visible and masks every other face (one turned off before is masked again), the request
    # the reason; other people's speech muted on the waveform's range.
    page.click(f"article.clip[data-clip='{clip.id}'] a.review-link")
    page.wait_for_url(f"**/footage/{clip.id}/review?subject-access={sar_id}")
    page.wait_for_selector("#overlay[data-ready='1']")
    assert "Alex Smith" in page.inner_text("#subject-access")
    others = [t for t in tracks if t != requester_track]
    page.uncheck(f"#track-{others[0]}")
    page.click(f"#requester-{requester_track}")
    assert page.inner_text(f"label[for='track-{requester_track}']") == (
        f"Track {requester_track}: left visible (the requester)"
    )
    assert not page.is_checked(f"#track-{requester_track}")
    assert all(page.is_checked(f"#track-{t}") for t in others)
    assert page.inner_text(f"#requester-{requester_track}") == "Not the requester"
    assert page.evaluate("document.activeElement.id") == f"requester-{requester_track}"
    assert page.input_value("#audio-mode") == "mute"
    page.fill("#audio-start", "0.6")
    page.fill("#audio-end", "1")
    page.click("#audio-add")
    page.wait_for_selector("#audio-edits li[data-audio='0']")
    assert reference and reference in page.input_value("#note")
    page.screenshot(path=str(shots / "subject-access-review.png"), full_page=True)
    page.click("#save")
    spec, reviewed_copy, reviewed_record = made(2)
    page.wait_for_selector("#job-state[data-status='done']", timeout=30_000)
    reason = f"the person who asked for this footage (subject access request, {reference})"
    assert spec["exclusions"] == [{"track": requester_track, "start": None, "end": None, "reason": reason}]
    assert spec["audio_edits"] == [{"start": 0.6, "end": 1.0, "mode": "mute", "tone_hz": 1000.0}]
    notes = [n for frame in _record(s, reviewed_record)["record"] for n in frame if n.get("source") == "auto"]
    assert all(n.get("excluded") is True for n in notes if n["track"] == requester_track)
    assert notes and not [n for n in notes if n["track"] != requester_track and n.get("excluded")]
    assert _rms(s, reviewed_copy, 0.65, 0.95) < 0.001 < _rms(s, clip.id, 0.65, 0.95)
    # The reason is recorded with the copy, in its custody.
    [entry] = [e for e in custody_of(s, reviewed_copy) if e.action == "redacted"]
    assert json.loads(entry.details)["edits"]["exclusions"][0]["reason"] == reason
    page.click("a:text-is('Back to the request')")
    page.wait_for_selector("tr[data-version='2'][data-status='done']")
    assert page.locator("tr[data-version='2'] td").nth(2).inner_text() == str(requester_track)

    # A version that leaves only the requester visible, their track excluded, a second of speech muted.
    form = page.locator(f"form.version-form[data-clip='{clip.id}']")
    form.locator("input[name=tracks]").fill(str(requester_track))
    form.locator("input[name=mute]").fill("0-0.6")
    form.locator("button[type=submit]").click()

    spec, redacted_id, record2 = made(3)
    page.wait_for_selector("tr[data-version='3'][data-status='done']", timeout=30_000)
    assert [e["track"] for e in spec["exclusions"]] == [requester_track]
    assert spec["audio_edits"] == [{"start": 0.0, "end": 0.6, "mode": "mute", "tone_hz": 1000.0}]
    notes = [n for frame in _record(s, record2)["record"] for n in frame if n.get("source") == "auto"]
    assert notes and all(n.get("excluded") is True for n in notes if n["track"] == requester_track)
    assert any(n["track"] != requester_track and not n.get("excluded") for n in notes)

    # The package: the requester's version in, the original out; the request names it.
    page.click("#package-form button[type=submit]")
    page.wait_for_selector("#package-state", timeout=60_000)
    assert "ready" in page.locator("#package-state").inner_text()
    page.screenshot(path=str(shots / "subject-access-package.png"), full_page=True)
    with s.db.session() as session:  # type: ignore[attr-defined]
        job = session.scalars(select(ExportJob).order_by(ExportJob.created_at.desc())).first()
        result = json.loads(job.result or "{}")
    assert redacted_id in result["included"] and clip.id in result["withheld"]
    assert reviewed_copy not in result["included"]  # the newest version only
    sar = http.get(f"{server.url}/api/v1/subject-access-requests", headers=server.as_("boss")).json()[0]
    assert sar["export_id"] == job.id
    assert page.errors == []  # type: ignore[attr-defined]

    # Once the request is answered, the review no longer acts for it.
    http.patch(
        f"{server.url}/api/v1/subject-access-requests/{sar_id}",
        json={"status": "answered"},
        headers=server.as_("boss"),
    ).raise_for_status()
    page.goto(f"{server.url}/footage/{clip.id}/review?subject-access={sar_id}")
    page.wait_for_selector("#overlay[data-ready='1']")
    assert page.locator("#subject-access, button.requester").count() == 0

    # An investigator not assigned to it sees no request.
    other = new_page(browser)
    sign_in(other, server.url, "inv", PASSWORD, next_path="/subject-access")
    assert other.locator("#requests").count() == 0
    r = other.goto(f"{server.url}/subject-access/{sar['id']}")
    assert r is not None and r.status == 404
    # Given the clip through an incident of theirs, they review it, but never for the request.
    theirs = http.post(
        f"{server.url}/api/v1/incidents",
        json={"category": "other", "occurred_at": start.isoformat(), "site": "QEH", "title": "Waiting room"},
        headers=server.as_("admin"),
    ).json()
    _assign(server, theirs["id"], "inv")
    http.post(
        f"{server.url}/api/v1/incidents/{theirs['id']}/links",
        json={"kind": "evidence", "target_id": clip.id, "reason": "the same waiting room"},
        headers=server.as_("admin"),
    ).raise_for_status()
    http.patch(
        f"{server.url}/api/v1/subject-access-requests/{sar_id}",
        json={"status": "open"},
        headers=server.as_("boss"),
    ).raise_for_status()
    r = other.goto(f"{server.url}/footage/{clip.id}/review?subject-access={sar_id}")
    assert r is not None and r.status == 200
    other.wait_for_selector("#overlay[data-ready='1']")
    assert other.locator("#subject-access, button.requester").count() == 0
    assert "Alex Smith" not in other.content()
