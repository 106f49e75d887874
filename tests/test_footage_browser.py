"""The investigator's footage and redaction review screens in a real browser (Debian's chromium through
Playwright) against the real service, store, ffmpeg and redaction worker, with a simulator clip that
has faces and sound.

An investigator opens a clip linked to their incident, plays and seeks it (the redacted copy), sees
what the redaction hid drawn over each frame, turns a track off, draws a box over a time range, mutes
a range of sound, saves a new version and follows it to the end; the NEW version's per-frame record
and its sound show each change took effect. The original plays only after a stated reason, which is
on its custody trail; an auditor gets neither the pictures nor the original, on the page or by URL.
The tests also take the README's screenshots (kept when ``EVIDENCE_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from accounts.models import User
from accounts.service import create_user
from firmware_simulators.camera import CameraIdentity, record_clip
from firmware_simulators.dock import Dock
from firmware_simulators.scene import render_clip
from ingest.services import build_services
from redaction.media import ffmpeg_exe
from tests.conftest import SIGN_IN_TIMEOUT, make_settings, start_server, wait_for
from tests.test_console_kit import (
    PASSWORD,
    ROLE_USERS,
    add_users,
    chromium,
    new_page,
    screenshot_dir,
    session_client,
    sign_in,
)
from tests.test_error_logging import _Buffer, captured  # noqa: F401 - the log capture fixture

pytestmark = pytest.mark.e2e

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SECONDS = 2


@dataclass
class Footage:
    url: str
    services: Any
    admin: dict[str, str]
    clip_id: str
    incident_ref: str
    v1: dict[str, Any]


def _token(url: str, user: str) -> dict[str, str]:
    r = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": user, "password": PASSWORD}, timeout=SIGN_IN_TIMEOUT
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory, seaweed: Any) -> Iterator[Footage]:
    tmp = tmp_path_factory.mktemp("footage")
    s = build_services(make_settings(tmp, f"sqlite:///{tmp / 'evidence.db'}", seaweed))
    add_users(s)
    server, thread, url = start_server(s)
    stop = threading.Event()
    worker = threading.Thread(
        target=s.redaction_worker().run_forever,
        kwargs={"idle_sleep": 0.2, "stop": stop},
        daemon=True,
    )
    worker.start()
    try:
        admin = _token(url, "admin")
        cam = CameraIdentity.generate("CAM-F")
        httpx.post(
            f"{url}/api/v1/staff", json={"id": "S-F", "name": "Fran Wearer"}, headers=admin
        ).raise_for_status()
        httpx.post(
            f"{url}/api/v1/devices/cameras",
            json={"id": "CAM-F", "public_key": cam.public_key_b64(), "staff_id": "S-F"},
            headers=admin,
        ).raise_for_status()
        dock = httpx.post(f"{url}/api/v1/devices/docks", json={"id": "D-F"}, headers=admin).json()["token"]
        path = tmp / "ward.mp4"
        render_clip(
            path, seconds=SECONDS, width=480, height=270, fps=25, faces=2, seed=7, min_face=45, max_face=80
        )
        clip = record_clip(cam, path, "S-F", START, START + timedelta(seconds=SECONDS), write_sidecar=False)
        with Dock(url, dock) as d:
            clip_id = d.upload(clip).evidence_item_id
        incident = httpx.post(
            f"{url}/api/v1/incidents",
            json={
                "category": "verbal_abuse",
                "occurred_at": START.isoformat(),
                "site": "NORTH",
                "title": "Ward 4",
            },
            headers=admin,
        )
        incident.raise_for_status()
        inc = incident.json()
        with s.db.session() as session:
            investigator = session.query(User).filter_by(username="investigator").one().id
        httpx.put(
            f"{url}/api/v1/incidents/{inc['id']}/investigators/{investigator}", headers=admin
        ).raise_for_status()
        httpx.post(
            f"{url}/api/v1/incidents/{inc['id']}/links",
            json={"target_id": clip_id, "reason": "the corridor camera of the incident"},
            headers=admin,
        ).raise_for_status()

        def first_done() -> dict[str, Any] | None:
            jobs = httpx.get(f"{url}/api/v1/evidence/{clip_id}/redactions", headers=admin).json()
            return jobs[0] if jobs and jobs[0]["status"] == "done" else None

        v1 = wait_for(first_done, 90, interval=0.3, what="the automatic redaction")
        yield Footage(url, s, admin, clip_id, inc["reference"], v1)
    finally:
        stop.set()
        worker.join(30)
        server.should_exit = True
        thread.join(15)
        s.db.dispose()


def until(page: Any, script: str, timeout: float = 15.0) -> Any:
    """Wait for a script to be true in the page, evaluated from outside (the page's CSP forbids the
    eval that Playwright's own wait_for_function needs)."""
    return wait_for(lambda: page.evaluate(script), timeout, 0.1, script)


def _record(f: Footage, job: dict[str, Any]) -> dict[str, Any]:
    r = httpx.get(f"{f.url}/api/v1/evidence/{job['record_item_id']}/content", headers=f.admin)
    r.raise_for_status()
    return r.json()


SOUND_RATE = 16000  # the rate the sound is checked at


def sound(f: Footage, item_id: str, start: float, end: float) -> Any:
    """The item's sound from ``start`` to ``end`` seconds, mono at SOUND_RATE, as floats in [-1, 1]."""
    data = httpx.get(
        f"{f.url}/api/v1/evidence/{item_id}/content", headers=f.admin, params={"reason": "checking the sound"}
    ).content
    done = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", "pipe:0", "-ss", str(start), "-t", str(end - start),
         "-vn", "-ac", "1", "-ar", str(SOUND_RATE), "-f", "s16le", "-"],
        input=data, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    samples = np.frombuffer(done.stdout, dtype="<i2").astype(np.float64) / 32768
    assert len(samples) > 1000
    return samples


def _rms(f: Footage, item_id: str, start: float, end: float) -> float:
    return float(np.sqrt(np.mean(sound(f, item_id, start, end) ** 2)))


def _longest_track(record: dict[str, Any]) -> int:
    counts: dict[int, int] = {}
    for notes in record["record"]:
        for n in notes:
            if n["source"] == "auto":
                counts[n["track"]] = counts.get(n["track"], 0) + 1
    assert counts, "the automatic redaction found no face in the simulator's clip"
    return max(counts, key=lambda t: counts[t])


def correct_in_review(
    page: Any,
    f: Footage,
    v1_record: dict[str, Any],
    track: int,
    shots: Path,
    more: Callable[[], None] | None = None,
) -> tuple[str, float, float]:
    """On the review page of the clip: play and seek (the overlay draws the frame it lands on), turn
    ``track`` off with a reason, draw a box over 0.4 s .. 1.2 s, mute a range chosen on the waveform,
    (``more``: further corrections and checks, before the preview) save as a new version and follow
    it to the end. The new job's id and the muted range."""
    page.wait_for_selector("#overlay[data-ready='1']")
    until(page, "document.getElementById('video').readyState >= 2")
    # Play, then seek: the time moves and the overlay draws the frame it lands on.
    page.evaluate("document.getElementById('video').play()")
    until(page, "document.getElementById('video').currentTime > 0.3", 10)
    page.evaluate("document.getElementById('video').pause()")
    first = next(
        i for i, notes in enumerate(v1_record["record"]) if any(n.get("track") == track for n in notes)
    )
    target = (first + 10) / 25
    page.evaluate(f"(() => {{ const v = document.getElementById('video'); v.currentTime = {target}; }})()")
    until(page, f"document.getElementById('overlay').dataset.frame === '{first + 10}'", 10)
    assert abs(page.evaluate("document.getElementById('video').currentTime") - target) < 0.05
    drew = page.evaluate(
        """(() => { const v = document.getElementById('video'); const c = document.createElement('canvas');
            c.width = 64; c.height = 36; const x = c.getContext('2d'); x.drawImage(v, 0, 0, 64, 36);
            const d = x.getImageData(0, 0, 64, 36).data; let lo = 255, hi = 0;
            for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
            return hi - lo; })()"""
    )
    assert drew > 40, "no picture was drawn at the seek position"
    overlay_pixels = page.evaluate(
        """(() => { const c = document.getElementById('overlay'); const d = c.getContext('2d')
            .getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()"""
    )
    assert overlay_pixels > 100, "the overlay drew no box over a frame with a face"
    assert page.is_visible(f"#track-{track}")

    # Turn the longest track off, with a reason: the panel says what the version will do.
    page.uncheck(f"#track-{track}")
    assert page.inner_text(f"label[for='track-{track}']") == f"Track {track}: left visible"
    page.fill("#exclusion-reason", "the patient is the complainant")
    # The reason reads whole: its field spans its panel, and what was typed is not cut off.
    fits = page.evaluate(
        """(() => { const i = document.getElementById('exclusion-reason');
        const p = i.closest('.panel'); const pad = parseFloat(getComputedStyle(p).paddingLeft) * 2;
        return [i.scrollWidth <= i.clientWidth, i.offsetWidth >= 0.9 * (p.clientWidth - pad)]; })()"""
    )
    assert fits == [True, True], fits
    # Draw a box over 0.4 s .. 1.2 s (dragged over the picture, then the range typed).
    page.click("#draw")
    box = page.locator("#overlay").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.6)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.85, steps=5)
    page.mouse.up()
    page.wait_for_selector("#box-form:not([hidden])")
    page.fill("#box-start", "0.4")
    page.fill("#box-end", "1.2")
    page.click("#box-add")
    page.wait_for_selector("#regions li[data-region='0']")
    # Mute a range chosen on the waveform.
    page.wait_for_selector("#waveform[data-ready='1']")
    page.locator("#waveform").scroll_into_view_if_needed()
    wave = page.locator("#waveform").bounding_box()
    assert wave is not None
    page.mouse.move(wave["x"] + wave["width"] * 0.5, wave["y"] + wave["height"] / 2)
    page.mouse.down()
    page.mouse.move(wave["x"] + wave["width"] * 0.8, wave["y"] + wave["height"] / 2, steps=5)
    page.mouse.up()
    start, end = float(page.input_value("#audio-start")), float(page.input_value("#audio-end"))
    assert 0.9 < start < 1.1 and 1.5 < end < 1.7
    page.select_option("#audio-mode", "mute")
    page.click("#audio-add")
    page.wait_for_selector("#audio-edits li[data-audio='0']")
    if more is not None:
        more()
    page.check("#preview")
    page.evaluate("(() => { const v = document.getElementById('video'); v.currentTime = 0.8; })()")
    until(page, "document.getElementById('overlay').dataset.frame === '20'")
    page.screenshot(path=str(shots / "redaction-review.png"), full_page=True)

    page.fill("#note", "leave the complainant visible; hide the badge; mute the phone number")
    page.click("#save")
    page.wait_for_selector("#job-state[data-status='done']", timeout=90000)
    job_id = page.get_attribute("#job-state", "data-job")
    return str(job_id), start, end


def check_correction(f: Footage, job_id: str, track: int, start: float, end: float) -> dict[str, Any]:
    """The new version's per-frame record and sound: its first box over 0.4 s .. 1.2 s only, ``track``
    excluded wherever it is, the range muted (as version 1 is not). The job, as the API gives it."""
    job = httpx.get(f"{f.url}/api/v1/redaction-jobs/{job_id}", headers=f.admin).json()
    assert job["version"] == 2 and job["based_on_job_id"] == f.v1["id"]
    assert job["result_item_id"] != f.v1["result_item_id"]  # a new version; version 1 is untouched
    record = _record(f, job)
    fps = 25
    for i, notes in enumerate(record["record"]):
        manual = [n for n in notes if n["source"] == "manual" and n["region"] == 0]
        inside = 0.4 * fps <= i < 1.2 * fps
        assert bool(manual) == inside or (i in (int(0.4 * fps) - 1, int(1.2 * fps))), (i, manual)
        for n in notes:
            if n.get("track") == track:
                assert n.get("excluded") is True, (i, n)
    assert any(n.get("track") == track for notes in record["record"] for n in notes)
    muted = _rms(f, job["result_item_id"], start + 0.05, end - 0.05)
    before = _rms(f, f.v1["result_item_id"], start + 0.05, end - 0.05)
    assert before > 0.01 and muted < 0.001, (before, muted)
    return job  # type: ignore[no-any-return]


def test_an_investigator_corrects_a_redaction_in_the_browser(footage: Footage, tmp_path: Path) -> None:
    f = footage
    shots = screenshot_dir(tmp_path)
    v1_record = _record(f, f.v1)
    track = _longest_track(v1_record)
    with chromium() as browser:
        page = new_page(browser, 1400, 1000)
        refused: list[str] = []  # anything the Content-Security-Policy stopped
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        sign_in(page, f.url, "investigator", next_path=f"/footage/{f.clip_id}")
        # The clip's page: the redacted copy plays first; hashes, custody and the incident beside it.
        page.wait_for_selector("#video[data-showing='redacted']")
        assert f.incident_ref in page.inner_text("h1")
        assert page.inner_text("#sha256").strip() and "stored" in page.inner_text("#custody")
        assert f"/1 ({f.incident_ref})" in page.inner_text("#exhibit")  # its exhibit reference, e.g. AB/1
        until(page, "document.getElementById('video').readyState >= 2")
        assert "redacted-clip-v1.mp4" in page.inner_text(".list")
        assert page.inner_text(".list").count(f.incident_ref + "_20261122-100000Z") >= 1
        page.screenshot(path=str(shots / "footage.png"), full_page=True)

        page.goto(f"{f.url}/footage/{f.clip_id}/review")
        job_id, start, end = correct_in_review(page, f, v1_record, track, shots)
        # Compare the two versions side by side.
        page.click("#compare")
        until(page, "document.getElementById('video-b').readyState >= 2")
        assert page.errors == [] and refused == []  # type: ignore[attr-defined]

    check_correction(f, job_id, track, start, end)


def test_the_original_needs_a_reason_and_a_role_allowed_pictures(footage: Footage, tmp_path: Path) -> None:
    f = footage
    shots = screenshot_dir(tmp_path)
    reason = "checking the unredacted faces for the complaint"
    with chromium() as browser:
        page = new_page(browser)
        sign_in(page, f.url, "investigator", next_path=f"/footage/{f.clip_id}")
        page.wait_for_selector("#video[data-showing='redacted']")
        page.select_option("#source", "original")
        page.wait_for_selector("#reason-form:not([hidden])")
        assert page.get_attribute("#video", "data-showing") == "redacted"
        page.fill("#reason", reason)
        page.click("#reason-form button[type=submit]")
        page.wait_for_selector("#video[data-showing='original']")
        until(page, "document.getElementById('video').readyState >= 2")
        assert page.errors == []  # type: ignore[attr-defined]

        auditor = new_page(browser)
        sign_in(auditor, f.url, "auditor", next_path=f"/footage/{f.clip_id}")
        auditor.wait_for_selector("#custody")
        assert auditor.locator("video").count() == 0 and auditor.locator("#source").count() == 0
        assert "not its pictures" in auditor.inner_text("main")
        # An auditor has no incidents in the menu: the clip's record sits under Custody.
        assert auditor.get_attribute("nav[aria-label=Main] [aria-current=page]", "href") == "/custody"
        auditor.screenshot(path=str(shots / "footage-auditor.png"), full_page=True)
        review = auditor.goto(f"{f.url}/footage/{f.clip_id}/review")
        assert review is not None and review.status == 403
        direct = auditor.goto(f"{f.url}/api/v1/evidence/{f.clip_id}/content?reason=" + "x" * 12)
        assert direct is not None and direct.status == 403

    # Each page as each role: what the API would give them, no more.
    pages = {f"/footage/{f.clip_id}": ("admin", "manager", "investigator", "auditor")}
    pages[f"/footage/{f.clip_id}/review"] = ("admin", "manager", "investigator")
    clients = {user: session_client(f.url, user)[0] for user in ROLE_USERS}
    wrong = []
    for path, allowed in pages.items():
        for user, client in clients.items():
            status = client.get(path).status_code
            if status != (200 if user in allowed else 403):
                wrong.append(f"{user} {path}: {status}")
        anonymous = httpx.get(f"{f.url}{path}")
        assert anonymous.status_code == 303 and "/sign-in" in anonymous.headers["location"]
    assert not wrong, wrong
    # A redacted copy's address opens its clip's page; an investigator of another incident sees nothing.
    copy = clients["investigator"].get(f"/footage/{f.v1['result_item_id']}")
    assert copy.status_code == 303 and copy.headers["location"] == f"/footage/{f.clip_id}"
    with f.services.db.session() as session:
        create_user(
            session,
            "outsider",
            PASSWORD,
            "investigator",
            full_name="Outsider",
            site="NORTH",
            key=f.services.key,
        )
    outsider = session_client(f.url, "outsider")[0]
    assert outsider.get(f"/footage/{f.clip_id}").status_code == 404
    assert (
        outsider.get(
            f"/api/v1/evidence/{f.clip_id}/content", headers={"Sec-Fetch-Site": "same-origin"}
        ).status_code
        == 404
    )

    trail = httpx.get(f"{f.url}/api/v1/evidence/{f.clip_id}/custody", headers=f.admin).json()
    reads = [e for e in trail if e["action"] == "viewed" and (e["details"] or {}).get("reason") == reason]
    assert reads and all(e["actor"].endswith("investigator") for e in reads)
    # The download is named for the incident, the capture time and what it is.
    r = httpx.get(
        f"{f.url}/api/v1/evidence/{f.clip_id}/content",
        headers={**f.admin, "Range": "bytes=0-9"},
        params={"reason": "checking the download name"},
    )
    assert r.status_code == 206
    assert (
        r.headers["content-disposition"]
        == f'attachment; filename="{f.incident_ref}_20261122-100000Z_clip.mp4"'
    )
    other = httpx.get(f"{f.url}/api/v1/evidence/{f.clip_id}/waveform", headers=_token(f.url, "operator"))
    assert other.status_code == 403
    # One waveform at a time per person: a second while one is drawn is refused, not queued.
    from ingest.footage_api import WAVEFORMS

    WAVEFORMS.take("user:admin")
    try:
        busy = httpx.get(f"{f.url}/api/v1/evidence/{f.v1['result_item_id']}/waveform", headers=f.admin)
        assert busy.status_code == 429 and busy.headers.get("retry-after"), busy.text
    finally:
        WAVEFORMS.give_back("user:admin")
    wave = httpx.get(f"{f.url}/api/v1/evidence/{f.v1['result_item_id']}/waveform?buckets=30", headers=f.admin)
    assert wave.status_code == 200 and wave.json()["has_audio"] and len(wave.json()["peaks"]) == 30
    assert any(
        e["details"] and e["details"].get("purpose") == "waveform"
        for e in httpx.get(
            f"{f.url}/api/v1/evidence/{f.v1['result_item_id']}/custody", headers=f.admin
        ).json()
    )


def test_the_original_is_played_and_downloaded_without_its_reason_in_any_address(
    footage: Footage,
    tmp_path: Path,
    captured: _Buffer,  # noqa: F811
) -> None:
    """The reason for the original may name a patient: the page posts it (with its CSRF token) for a
    grant, and no address the browser asks for, nor the page's links, nor the log, holds it. The
    download's address works once, for this sign-in only."""
    f = footage
    shots = screenshot_dir(tmp_path)
    patient = "Ophelia Grantchester-Nwosu"
    reason = f"complaint by {patient} about bed 9"
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel("INFO")
    try:
        with chromium() as browser:
            page = new_page(browser)
            asked: list[str] = []
            referrers: list[str] = []
            page.on(
                "request", lambda r: (asked.append(r.url), referrers.append(r.headers.get("referer", "")))
            )
            sign_in(page, f.url, "investigator", next_path=f"/footage/{f.clip_id}")
            page.wait_for_selector("#video[data-showing='redacted']")
            response = page.goto(f"{f.url}/footage/{f.clip_id}")
            assert response is not None and response.headers["referrer-policy"] in (
                "same-origin",
                "no-referrer",
            )
            page.wait_for_selector("#video[data-showing='redacted']")
            page.click("#original-download")  # without a reason: the form asks for one
            page.wait_for_selector("#reason-form:not([hidden])")
            page.fill("#reason", reason)
            page.click("#reason-form button[type=submit]")
            page.wait_for_selector("#video[data-showing='original']")
            until(page, "document.getElementById('video').readyState >= 2")
            assert "grant=" in (page.get_attribute("#video", "src") or "")
            with page.expect_download() as waiting:
                page.click("#original-download")
            download = waiting.value
            assert download.failure() is None
            assert download.suggested_filename == f"{f.incident_ref}_20261122-100000Z_clip.mp4"
            assert "grant=" in download.url
            until(page, "document.getElementById('player-note').textContent.includes('Downloading')")
            page.screenshot(path=str(shots / "footage-original.png"), full_page=True)
            assert page.errors == []  # type: ignore[attr-defined]
            for text in (*asked, *referrers, page.content()):
                assert "reason=" not in text and "Grantchester" not in text, text
            # The download's address again, in this session: used up. In another session: refused.
            again = page.request.get(download.url, headers={"Sec-Fetch-Site": "same-origin"})
            assert again.status == 403 and again.json()["reason"] == "grant_refused"
            play = page.evaluate("document.getElementById('video').src")
            other = new_page(browser)
            sign_in(other, f.url, "investigator")
            elsewhere = other.request.get(play, headers={"Sec-Fetch-Site": "same-origin"})
            assert elsewhere.status == 403 and elsewhere.json()["reason"] == "grant_refused"
            # A grant is asked for with the session's CSRF token, as every change is.
            client, _ = session_client(f.url, "investigator")
            r = client.post(f"/api/v1/evidence/{f.clip_id}/read-grants", json={"reason": reason})
            assert r.status_code == 403 and r.json()["reason"] == "csrf"
        text = captured.text()
    finally:
        access.setLevel(level)
    assert "content?grant=[redacted]" in text
    assert patient not in text and "Grantchester" not in text
    trail = httpx.get(f"{f.url}/api/v1/evidence/{f.clip_id}/custody", headers=f.admin).json()
    reads = [e for e in trail if e["action"] == "viewed" and (e["details"] or {}).get("reason") == reason]
    assert reads and all(e["actor"] == "user:investigator" for e in reads)


RAW_ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}"  # a time as the API writes it, not as a page shows it


def test_an_investigator_reaches_a_clip_from_its_incident_and_reads_every_time_one_way(
    footage: Footage,
) -> None:
    """The incident lists the clip by its exhibit reference and opens its page; the clip's page, its
    record and its trail write every moment as ``22 Nov 2026 10:00:00 UTC`` (the exact time kept in
    the ``<time>`` element), and an incident's exports page is under Exports in the menu."""
    f = footage
    with chromium() as browser:
        page = new_page(browser)
        sign_in(page, f.url, "investigator", next_path=f"/incidents/{f.incident_ref}")
        row = page.locator(f"#linked tr[data-target='{f.clip_id}']")
        label = row.locator("th a").inner_text()
        assert re.search(r"/1\b", label) and "clip" in label, label  # its exhibit reference, e.g. AB/1
        assert "22 Nov 2026 10:00:00 UTC" in row.inner_text()
        assert page.get_attribute("nav[aria-label=Main] [aria-current=page]", "href") == "/incidents"
        row.locator("th a").click()
        page.wait_for_url(f"**/footage/{f.clip_id}")
        page.wait_for_selector("#custody")
        # The clip's page is under Incidents in the menu, where it was reached from; so is its review.
        assert page.get_attribute("nav[aria-label=Main] [aria-current=page]", "href") == "/incidents"
        shown = page.inner_text("main")
        assert re.search(RAW_ISO, shown) is None, re.search(RAW_ISO, shown)
        assert "22 Nov 2026 10:00:00 UTC to 22 Nov 2026 10:00:02 UTC" in page.inner_text(".facts")
        first = page.locator("#custody time").first
        assert re.fullmatch(r"\d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} UTC", first.inner_text())
        assert re.match(RAW_ISO, first.get_attribute("datetime") or "")
        page.goto(f"{f.url}/incidents/{f.incident_ref}/exports")
        assert page.get_attribute("nav[aria-label=Main] [aria-current=page]", "href") == "/exports"
        assert page.errors == []  # type: ignore[attr-defined]


def test_a_box_at_the_top_edge_keeps_its_label_inside_the_picture(footage: Footage, tmp_path: Path) -> None:
    """A box touching the top of the picture has no room above it for its label: the label goes just
    inside the box, whole and clear of the box's edge, not cut off by the top of the picture."""
    f = footage
    with chromium() as browser:
        page = new_page(browser, 1400, 1000)
        sign_in(page, f.url, "investigator", next_path=f"/footage/{f.clip_id}/review")
        page.wait_for_selector("#overlay[data-ready='1']")
        assert page.get_attribute("nav[aria-label=Main] [aria-current=page]", "href") == "/incidents"
        page.evaluate("(() => { const v = document.getElementById('video'); v.currentTime = 0.2; })()")
        until(page, "document.getElementById('overlay').dataset.frame === '5'")
        page.click("#draw")
        box = page.locator("#overlay").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + 1)  # on the top edge
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.3, steps=5)
        page.mouse.up()
        page.wait_for_selector("#box-form:not([hidden])")
        page.fill("#box-start", "0")
        page.fill("#box-end", "1.92")  # the field's step is a frame, 0.04 s
        held = page.locator("#regions li[data-region]").count()  # the version's own boxes
        page.click("#box-add")
        page.wait_for_selector(f"#regions li[data-region='{held}']")
        page.evaluate("(() => { const v = document.getElementById('video'); v.currentTime = 0.4; })()")
        until(page, "document.getElementById('overlay').dataset.frame === '10'")
        labels = page.evaluate("JSON.parse(document.getElementById('overlay').dataset.labels || 'null')")
        width = page.evaluate("document.getElementById('overlay').width")
        page.locator("#stage").screenshot(path=str(tmp_path / "review-label-top-edge.png"))
        assert labels, "the overlay placed no label"
        # The box just drawn (the clip's latest version may hold boxes of its own).
        edge = [label for label in labels if label["text"].startswith("box ") and label["box_top"] < 4]
        assert len(edge) == 1, labels
        for label in labels:  # every label whole in the picture, and clear of its box's top edge
            assert label["top"] >= 0 and label["left"] >= 0 and label["left"] + label["width"] <= width, label
            below, above = (
                label["top"] >= label["box_top"],
                label["top"] + label["height"] <= label["box_top"],
            )
            assert below or above, label
        assert edge[0]["top"] >= edge[0]["box_top"]  # inside the box, under its edge
        assert page.errors == []  # type: ignore[attr-defined]


def test_the_tracks_panel_says_what_the_version_will_do_with_each_track(
    footage: Footage, tmp_path: Path
) -> None:
    """A track unticked is left visible: its line in the panel says so at once, as the overlay's label
    over that face does, and says "masked" again once it is ticked again. (Whichever version the page
    opens: a track its spec already leaves visible reads so from the start.)"""
    f = footage
    shots = screenshot_dir(tmp_path)
    v1_record = _record(f, f.v1)
    track = _longest_track(v1_record)
    seen = [i for i, notes in enumerate(v1_record["record"]) if any(n.get("track") == track for n in notes)]
    frame = seen[len(seen) // 2]  # a frame that shows the face
    label = f"label[for='track-{track}']"

    def overlay_says() -> list[str]:
        placed = page.evaluate("JSON.parse(document.getElementById('overlay').dataset.labels || '[]')")
        return [x["text"] for x in placed if x["text"].startswith(f"track {track}")]

    with chromium() as browser:
        page = new_page(browser, 1400, 1000)
        sign_in(page, f.url, "investigator", next_path=f"/footage/{f.clip_id}/review")
        page.wait_for_selector("#overlay[data-ready='1']")
        for box in page.locator("#tracks input[type=checkbox]").all():
            n = box.get_attribute("data-track")
            said = page.inner_text(f"label[for='track-{n}']")
            assert said == f"Track {n}: {'masked' if box.is_checked() else 'left visible'}", said
        page.evaluate(f"(() => {{ document.getElementById('video').currentTime = {frame / 25}; }})()")
        until(page, f"document.getElementById('overlay').dataset.frame === '{frame}'")
        page.check(f"#track-{track}")
        assert page.inner_text(label) == f"Track {track}: masked"
        assert wait_for(overlay_says, 10, 0.1, f"the overlay's label of track {track}")
        assert not [text for text in overlay_says() if "left visible" in text], overlay_says()

        page.uncheck(f"#track-{track}")
        assert page.inner_text(label) == f"Track {track}: left visible"
        assert [text for text in overlay_says() if "(left visible)" in text], overlay_says()
        panel = page.locator("section[aria-labelledby='tracks-title']")
        panel.screenshot(path=str(shots / "review-tracks.png"))
        page.locator("#stage").screenshot(path=str(shots / "review-tracks-overlay.png"))

        page.check(f"#track-{track}")
        assert page.inner_text(label) == f"Track {track}: masked"
        assert page.errors == []  # type: ignore[attr-defined]
