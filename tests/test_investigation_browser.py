"""An investigation from end to end in one browser (Debian's chromium through Playwright) against one
running service, its store, ffmpeg and redaction worker, with the simulator's clip of two faces.

An investigator signs in, opens the incident, opens its clip, plays and seeks it, corrects the
automatic redaction (a track turned off, another turned off and back on, a box over a time range,
a box followed by the tracker, a range of sound muted and another toned), reads the timeline of
where each track is masked and where its detection is uncertain, previews the changes, saves them
and follows the new version to the end; its per-frame record and its sound show the changes took
effect, and the two versions side by side differ where the face was left visible. That
corrected version leaves someone visible (a track turned off), which hands out their face as original
footage would: the investigator is told so on the exports page, and a security manager, in the same
browser, chooses that version, gives the reason, builds the package and hands it to a recipient by
a download link; it is downloaded through the link and checked with ``evidence verify`` and the
fingerprint the page shows, and it names the corrected version, not the automatic one.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from accounts.models import User
from chain_of_custody import manifest as mf
from tests import test_footage_browser
from tests.test_console_kit import chromium, new_page, screenshot_dir, sign_in
from tests.test_exports_browser import link_download_verify
from tests.test_footage_browser import (
    SOUND_RATE,
    START,
    Footage,
    _longest_track,
    _record,
    check_correction,
    correct_in_review,
    sound,
    until,
)

pytestmark = pytest.mark.e2e

footage = test_footage_browser.footage  # one service for this module, its clip linked to an incident


def tab_to(page: Any, selector: str, most: int = 80) -> None:
    """Press Tab (and nothing else) until ``selector`` has the focus, shown by a focus ring."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement.matches({json.dumps(selector)})"):
            ring = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert ring != "none", f"{selector} has the focus but shows no focus ring"
            return
    raise AssertionError(f"{most} presses of Tab never reached {selector}")


def packages(page: Any) -> list[str]:
    """The export ids of the packages an exports page lists."""
    return page.locator("article.package").evaluate_all(  # type: ignore[no-any-return]
        "(a) => a.map((x) => x.dataset.export)"
    )


def choose_by_keyboard(page: Any, select: str, value: str) -> None:
    """With the select focused, press the arrow keys (and nothing else) until it holds ``value``."""
    assert page.evaluate(f"document.activeElement.matches({json.dumps(select)})")
    options = page.locator(f"{select} option").evaluate_all("(o) => o.map((x) => x.value)")
    assert value in options, options
    for _ in range(len(options)):
        now = page.input_value(select)
        if now == value:
            return
        page.keyboard.press("ArrowDown" if options.index(now) < options.index(value) else "ArrowUp")
    assert page.input_value(select) == value


FPS = 25  # the simulator's clip
# The colours review.js draws each track in, and its timeline's for what is not a track's.
COLOURS = ["#4cc3ff", "#ff9f43", "#7bed9f", "#ff6b81", "#a29bfe", "#ffd32a", "#1dd1a1", "#f368e0"]
LEFT_VISIBLE, BOXES, MUTED, TONED = "#5c6670", "#ffd32a", "#ff6b81", "#4cc3ff"
TONE = (0.2, 0.7)  # seconds of sound replaced by a tone
FOLLOWED_FRAMES = 16  # how long the followed box is asked for, from just after the first box ends


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _uncertain(note: dict[str, Any]) -> bool:
    """As the review page reads a note: not a detection of its own, or one scored under 0.5."""
    return note.get("kind") != "detected" or ("score" in note and note["score"] < 0.5)


def _states(record: dict[str, Any]) -> dict[int, list[int]]:
    """Track -> per frame 0 (not there), 1 (masked, detected) or 2 (masked, uncertain)."""
    out: dict[int, list[int]] = {}
    for i, notes in enumerate(record["record"]):
        for n in notes:
            if n["source"] == "auto":
                out.setdefault(n["track"], [0] * len(record["record"]))[i] = 2 if _uncertain(n) else 1
    return out


def _box(record: dict[str, Any], frame: int, track: int) -> list[float]:
    return next(n["box"] for n in record["record"][frame] if n.get("track") == track)


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _pixels(page: Any, canvas: str, points: list[tuple[float, float]]) -> list[list[int]]:
    """The RGBA of each point of a canvas, as it is drawn."""
    return page.evaluate(  # type: ignore[no-any-return]
        """([id, points]) => { const c = document.getElementById(id); const x = c.getContext('2d');
        return points.map(([px, py]) => Array.from(x.getImageData(Math.floor(px), Math.floor(py), 1, 1).data)); }""",
        [canvas, points],
    )


def _seek(page: Any, frame: int) -> None:
    page.evaluate(f"(() => {{ document.getElementById('video').currentTime = {(frame + 0.5) / FPS}; }})()")
    until(page, f"document.getElementById('overlay').dataset.frame === '{frame}'")


@dataclass
class More:
    """What the investigation asks for besides ``correct_in_review``'s corrections."""

    other: int  # a track turned off and back on (masked again)
    shown: int  # a frame (before the first box) showing both faces: previewed, and compared
    followed: int  # the first frame of the box followed by the tracker


def _choose(record: dict[str, Any], track: int) -> More:
    states = _states(record)
    early = [
        i
        for i in range(int(0.4 * FPS) - 1)
        if states[track][i] and any(s[i] == 1 for t, s in states.items() if t != track)
    ]
    assert early, "no frame before the first box shows both faces"
    shown = early[-1]
    other = next(t for t, s in states.items() if t != track and s[shown] == 1)
    start = int(1.2 * FPS) + 1
    assert all(states[track][start : start + FOLLOWED_FRAMES]), "the face leaves before the followed box ends"
    # A box that stays where it was drawn would lose the face: the check of the tracker can fail.
    assert _overlap(_box(record, start, track), _box(record, start + FOLLOWED_FRAMES - 1, track)) < 0.3
    return More(other, shown, start)


def more_corrections(page: Any, v1_record: dict[str, Any], track: int, more: More) -> None:
    """Turn ``more.other`` off and back on; draw a box over ``track``'s face followed by the tracker;
    tone a range of sound; check the timeline draws each track masked, uncertain or left visible
    frame by frame as the record says, and each edit; check the preview covers what the version will
    hide (and not the face left visible) and silences the edited sound."""
    other, width = more.other, v1_record["width"]
    page.uncheck(f"#track-{other}")
    assert page.inner_text(f"label[for='track-{other}']") == f"Track {other}: left visible"
    page.check(f"#track-{other}")  # turned back on: masked in the version
    assert page.inner_text(f"label[for='track-{other}']") == f"Track {other}: masked"

    # A box over the moving face, followed by the tracker from where it is drawn.
    _seek(page, more.followed)
    x, y, w, h = _box(v1_record, more.followed, track)
    x, y = max(0.0, x), max(0.0, y)
    page.click("#draw")
    stage = page.locator("#overlay").bounding_box()
    k = stage["width"] / width
    page.mouse.move(stage["x"] + (x + 2) * k, stage["y"] + (y + 2) * k)
    page.mouse.down()
    page.mouse.move(stage["x"] + (x + w - 2) * k, stage["y"] + (y + h - 2) * k, steps=5)
    page.mouse.up()
    page.wait_for_selector("#box-form:not([hidden])")
    page.fill("#box-start", f"{more.followed / FPS:.2f}")
    page.fill("#box-end", f"{(more.followed + FOLLOWED_FRAMES - 1) / FPS:.2f}")  # a step of the field
    page.check("#box-follow")
    page.click("#box-add")
    page.wait_for_selector("#regions li[data-region='1']")
    assert "followed" in page.inner_text("#regions li[data-region='1']")

    # A range of sound toned rather than muted.
    page.fill("#audio-start", str(TONE[0]))
    page.fill("#audio-end", str(TONE[1]))
    page.select_option("#audio-mode", "tone")
    page.click("#audio-add")
    page.wait_for_selector("#audio-edits li[data-audio='1']")
    assert page.inner_text("#audio-edits li[data-audio='1']").startswith("Sound toned: 0.20–0.70 s")

    # The timeline, frame by frame: each track's row as the record says (grey where left visible,
    # its colour where masked, pale where the detection is uncertain), then the boxes and the sound.
    _seek(page, len(v1_record["record"]) - 1)  # the playhead out of the way, at the end
    states = _states(v1_record)
    frames = len(v1_record["record"])
    canvas_width = page.evaluate("document.getElementById('timeline').width")

    def at(frame: float, row: int) -> tuple[float, float]:
        return 70 + (canvas_width - 70) * frame / frames, 2 + row * 16 + 6

    points, expected = [], []
    for row, t in enumerate(sorted(states)):
        for i, state in enumerate(states[t][:-1]):
            points.append(at(i + 0.5, row))
            colour = _rgb(LEFT_VISIBLE if t == track else COLOURS[t % len(COLOURS)])
            expected.append((t, i, state, colour))
    drawn = _pixels(page, "timeline", points)
    wrong = []
    for (t, i, state, colour), (r, g, b, a) in zip(expected, drawn, strict=True):
        if state == 0:
            ok = a == 0
        else:
            ok = (a == 255 if state == 1 else 85 <= a <= 120) and max(
                abs(r - colour[0]), abs(g - colour[1]), abs(b - colour[2])
            ) <= 8
        if not ok:
            wrong.append((t, i, state, [r, g, b, a]))
    assert not wrong, wrong[:10]
    assert {s for t in states for s in states[t]} >= {1, 2}, "the clip has no uncertain frames to draw"
    rows = len(states)
    boxes, sound_row = rows, rows + 1
    checks = [
        (at(0.8 * FPS, boxes), BOXES),
        (at(more.followed + 5, boxes), BOXES),
        (at(1.3 * FPS, sound_row), MUTED),
        (at(0.45 * FPS, sound_row), TONED),
    ]
    drawn = _pixels(page, "timeline", [p for p, _ in checks])
    assert [tuple(d[:3]) for d in drawn] == [_rgb(c) for _, c in checks], drawn
    assert _pixels(page, "timeline", [at(1.8 * FPS, sound_row)])[0][3] == 0  # no sound edit there

    # The preview: at a frame showing both faces, the masked one is covered (black) and the face left
    # visible is not; without it, only their outlines are drawn. The edited sound is silent in it.
    _seek(page, more.shown)
    ow = page.evaluate("document.getElementById('overlay').width")
    s = ow / width

    def centre(t: int) -> tuple[float, float]:
        bx, by, bw, bh = _box(v1_record, more.shown, t)
        return max(0.0, bx + bw / 2) * s, max(0.0, by + bh / 2) * s

    assert _pixels(page, "overlay", [centre(other), centre(track)]) == [[0, 0, 0, 0], [0, 0, 0, 0]]
    page.check("#preview")
    until(page, f"document.getElementById('overlay').dataset.frame === '{more.shown}'")
    covered, left = _pixels(page, "overlay", [centre(other), centre(track)])
    assert covered == [0, 0, 0, 255] and left[3] == 0, (covered, left)
    for t, silent in ((0.3, True), (1.3, True), (1.8, False)):
        page.evaluate(f"(() => {{ document.getElementById('video').currentTime = {t}; }})()")
        until(page, f"document.getElementById('video').muted === {json.dumps(silent)}")
    page.uncheck("#preview")
    assert page.evaluate("document.getElementById('video').muted") is False


def check_more(f: Footage, job: dict[str, Any], v1_record: dict[str, Any], track: int, more: More) -> None:
    """In the saved version: the followed box stays on the moving face frame by frame (where a box
    left where it was drawn would not), the track turned back on is masked wherever it is, and the
    toned range is a tone (as version 1's sound there is not)."""
    record = _record(f, job)
    for i in range(more.followed, more.followed + FOLLOWED_FRAMES):
        [followed] = [n for n in record["record"][i] if n["source"] == "manual" and n["region"] == 1]
        assert _overlap(followed["box"], _box(record, i, track)) > 0.3, (i, followed, _box(record, i, track))
    # Nowhere else (a range's ends in decimal seconds may take in the frame just before it).
    elsewhere = [
        i
        for i, notes in enumerate(record["record"])
        if any(n.get("region") == 1 for n in notes)
        and not more.followed - 1 <= i < more.followed + FOLLOWED_FRAMES
    ]
    assert not elsewhere, elsewhere
    seen = [n for notes in record["record"] for n in notes if n.get("track") == more.other]
    assert seen and not [n for n in seen if n.get("excluded")], seen

    def tone_share(item_id: str) -> float:
        samples = sound(f, item_id, TONE[0] + 0.05, TONE[1] - 0.05)
        power = np.abs(np.fft.rfft(samples)) ** 2
        hz = np.fft.rfftfreq(len(samples), 1 / SOUND_RATE)
        return float(power[(hz > 900) & (hz < 1100)].sum() / power.sum())

    toned, before = tone_share(job["result_item_id"]), tone_share(f.v1["result_item_id"])
    assert toned > 0.8 and before < 0.3, (toned, before)


def compare_side_by_side(page: Any, v1_record: dict[str, Any], track: int, more: More) -> None:
    """The new version beside version 1, the right following the left to the same moment: they
    differ over the face the new version leaves visible, and not over the face both mask."""
    page.click("#compare")
    assert page.inner_text("#caption-a") == "Version 1" and page.inner_text("#caption-b") == "Version 2"
    until(page, "['video-a', 'video-b'].every((id) => document.getElementById(id).readyState >= 2)", 30)
    page.evaluate(
        f"(() => {{ document.getElementById('video-a').currentTime = {(more.shown + 0.5) / FPS}; }})()"
    )
    until(
        page,
        """(() => { const a = document.getElementById('video-a'), b = document.getElementById('video-b');
        return !a.seeking && !b.seeking && b.readyState >= 2 && Math.abs(a.currentTime - b.currentTime) < 0.01
          && Math.abs(a.currentTime - %f) < 0.01; })()"""
        % ((more.shown + 0.5) / FPS),
    )
    boxes = [_box(v1_record, more.shown, t) for t in (track, more.other)]
    differ = page.evaluate(
        """([w, h, boxes]) => { const grab = (id) => { const c = document.createElement('canvas');
            c.width = w; c.height = h; const x = c.getContext('2d');
            x.drawImage(document.getElementById(id), 0, 0, w, h); return x.getImageData(0, 0, w, h).data; };
          const a = grab('video-a'), b = grab('video-b');
          return boxes.map(([bx, by, bw, bh]) => { let sum = 0, n = 0;
            for (let y = Math.max(0, Math.round(by)); y < Math.min(h, by + bh); y++)
              for (let x = Math.max(0, Math.round(bx)); x < Math.min(w, bx + bw); x++)
                for (let k = 0; k < 3; k++) { const i = (y * w + x) * 4 + k; sum += Math.abs(a[i] - b[i]); n++; }
            return sum / n; }); }""",
        [v1_record["width"], v1_record["height"], boxes],
    )
    left_visible, both_masked = differ
    assert left_visible > 8 and left_visible > 3 * both_masked, differ


def test_an_investigator_reaches_the_incident_its_clip_and_its_export_by_keyboard(footage: Footage) -> None:
    """From the menu, with Tab and Enter only, each stop showing its focus ring: the incident, its clip,
    the incident's exports and a package built, of the automatic redaction chosen with the arrow keys
    in its version's list (whichever versions the clip has by then: the correction below makes one
    that leaves someone visible, which only a security manager may hand out)."""
    f = footage
    with chromium() as browser:
        page = new_page(browser)
        sign_in(page, f.url, "investigator")
        steps = [
            ("nav[aria-label=Main] a[href='/incidents']", "**/incidents"),
            (f"a[href='/incidents/{f.incident_ref}']", f"**/incidents/{f.incident_ref}"),
            (f"#linked tr[data-target='{f.clip_id}'] th a", f"**/footage/{f.clip_id}"),
            ("nav[aria-label=Main] a[href='/exports']", "**/exports"),
            (f"a[href='/incidents/{f.incident_ref}/exports']", f"**/incidents/{f.incident_ref}/exports"),
        ]
        for selector, address in steps:
            tab_to(page, selector)
            with page.expect_navigation(url=address):
                page.keyboard.press("Enter")
        automatic = f.v1["result_item_id"]
        tab_to(page, f"#version-{f.clip_id}")
        choose_by_keyboard(page, f"#version-{f.clip_id}", automatic)
        earlier = packages(page)
        tab_to(page, "#build")
        page.keyboard.press("Enter")
        new = "article.package[data-status=ready]" + "".join(f":not([data-export='{e}'])" for e in earlier)
        page.wait_for_selector(new, timeout=60_000)  # the page is drawn again once it is ready
        assert page.errors == []  # type: ignore[attr-defined]
        export_id = page.locator(new).get_attribute("data-export")
        # The package's card says which redaction of the clip it holds, as its manifest does.
        held = page.locator(new).locator(".package-versions li")
        assert held.count() == 1 and held.get_attribute("data-item") == automatic
        assert "version 1, no track left visible" in held.inner_text(), held.inner_text()
    built = httpx.get(f"{f.url}/api/v1/exports/{export_id}", headers=f.admin).json()
    assert built["status"] == "ready" and automatic in built["included"], built
    versions = httpx.get(f"{f.url}/api/v1/evidence/{f.clip_id}/redactions", headers=f.admin).json()
    others = {v["result_item_id"] for v in versions if v["id"] != f.v1["id"]}
    assert not others & set(built["included"]), built  # the automatic version, and no other


def test_an_investigator_corrects_a_clip_and_exports_that_version_verified(
    footage: Footage, tmp_path: Path
) -> None:
    f = footage
    v1_record = _record(f, f.v1)
    track = _longest_track(v1_record)  # the face whose track the investigator turns off
    more = _choose(v1_record, track)
    shots = screenshot_dir(tmp_path)
    with chromium() as browser:
        page = new_page(browser, 1400, 1000)
        sign_in(page, f.url, "investigator", next_path="/incidents")
        # The incident from the list, the clip from the incident.
        page.click(f"a:text-is('{f.incident_ref}')")
        page.wait_for_url(f"**/incidents/{f.incident_ref}")
        page.screenshot(path=str(shots / "investigation-incident.png"), full_page=True)
        page.locator(f"#linked tr[data-target='{f.clip_id}'] th a").click()
        page.wait_for_url(f"**/footage/{f.clip_id}")
        page.wait_for_selector("#video[data-showing='redacted']")
        page.click("a:text-is('Review redaction')")
        page.wait_for_url(f"**/footage/{f.clip_id}/review")
        job_id, start, end = correct_in_review(
            page, f, v1_record, track, shots, lambda: more_corrections(page, v1_record, track, more)
        )
        compare_side_by_side(page, v1_record, track, more)
        page.screenshot(path=str(shots / "redaction-compare.png"), full_page=True)
        corrected = check_correction(f, job_id, track, start, end)
        check_more(f, corrected, v1_record, track, more)

        # The exports of the incident, from the menu. The corrected version leaves someone visible (a
        # track turned off): it hands out their face, as original footage would, so the investigator
        # is told so, and a security manager hands it out, with a reason.
        page.click("nav[aria-label=Main] a:text-is('Exports')")
        page.click(f"a:text-is('{f.incident_ref}')")
        page.wait_for_selector("#build-form")
        copy = corrected["result_item_id"]
        assert "leaves someone visible" in page.locator(f"option[value='{copy}']").inner_text()
        page.click("#build")
        until(page, "document.getElementById('build-status').textContent.includes('leaves a person visible')")
        page.screenshot(path=str(shots / "investigation-export-refused.png"), full_page=True)
        assert page.errors == []  # type: ignore[attr-defined]

        manager = new_page(browser, 1400, 1000)
        sign_in(manager, f.url, "manager", next_path="/exports")
        manager.click(f"a:text-is('{f.incident_ref}')")
        manager.wait_for_selector("#build-form")
        fingerprint = manager.locator("#key-fingerprint").inner_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", fingerprint), fingerprint
        manager.select_option(f"#version-{f.clip_id}", copy)
        reason = "the complainant asked for their own face to be left in"
        manager.fill("#originals-reason", reason)
        earlier = packages(manager)
        manager.click("#build")
        new = "article.package[data-status=ready]" + "".join(f":not([data-export='{e}'])" for e in earlier)
        manager.wait_for_selector(new, timeout=60_000)  # the page is drawn again once it is ready
        article = manager.locator(new)
        export_id = article.get_attribute("data-export") or ""
        package_sha = article.locator(".package-sha256").inner_text().strip()
        assert article.locator(".release-reason").inner_text() == reason
        # Its card says which redaction of the clip it holds, as its manifest does (below).
        held = article.locator(".package-versions li")
        assert held.count() == 1 and held.get_attribute("data-item") == copy
        assert f"version 2, leaves track {track} visible" in held.inner_text(), held.inner_text()
        article.screenshot(path=str(shots / "investigation-package-card.png"))
        package = tmp_path / "package.zip"
        link_download_verify(
            manager, export_id, package_sha, fingerprint, package, shots / "investigation-link.png"
        )
        assert manager.errors == []  # type: ignore[attr-defined]

    # The package holds the corrected version and its record, not the automatic one.
    with zipfile.ZipFile(package) as z:
        manifest = json.loads(z.read(mf.MANIFEST))
    items = {i["item_id"]: i for i in manifest["items"]}
    chosen = items[copy]
    assert chosen["path"] is not None and chosen["selection"]["redaction_version"] == 2
    assert chosen["selection"]["redaction_job"] == job_id
    assert chosen["selection"]["why"] == "chosen by the exporter when the export was asked for"
    assert [e["track"] for e in chosen["selection"]["left_visible"]] == [track]
    assert items[corrected["record_item_id"]]["path"] is not None
    assert items[f.v1["result_item_id"]]["path"] is None


# Taps what the page plays through Web Audio: every node connected to the speakers is also connected
# to an analyser the test reads (and the analyser, silenced, to the speakers, so it is pulled).
HEAR_WEB_AUDIO = """
(() => {
  const connect = AudioNode.prototype.connect;
  window.__heard = [];
  AudioNode.prototype.connect = function (target, ...rest) {
    if (target instanceof AudioDestinationNode) {
      const analyser = this.context.createAnalyser();
      analyser.fftSize = 4096;
      const quiet = this.context.createGain();
      quiet.gain.value = 0;
      connect.call(this, analyser);
      connect.call(analyser, quiet);
      connect.call(quiet, target);
      window.__heard.push(analyser);
    }
    return connect.call(this, target, ...rest);
  };
})();
"""
# What the page plays through Web Audio now: its level (RMS) and its loudest frequency (Hz).
HEARD = """(() => { const a = (window.__heard || [])[0]; if (!a) return [0, 0];
  const wave = new Float32Array(a.fftSize); a.getFloatTimeDomainData(wave);
  const rms = Math.sqrt(wave.reduce((s, v) => s + v * v, 0) / wave.length);
  const bins = new Float32Array(a.frequencyBinCount); a.getFloatFrequencyData(bins);
  let top = 0; bins.forEach((v, i) => { if (v > bins[top]) top = i; });
  return [rms, top * a.context.sampleRate / a.fftSize]; })()"""
SAR_TONE = (1.65, 1.95)  # seconds of speech toned in the request's version (clear of the correction's)


def _focused(page: Any) -> str:
    """The focused element as the track list names it: its id, else its text."""
    return page.evaluate(  # type: ignore[no-any-return]
        "document.activeElement.id || document.activeElement.textContent.trim()"
    )


def test_the_requester_is_marked_by_keyboard_and_a_toned_range_is_previewed_as_a_tone(
    footage: Footage, tmp_path: Path
) -> None:
    """Opened from an open subject access request, the review's "This is the requester" buttons are
    reached with Tab in the track list's order (each track's box, its "go to", its button), each
    showing its focus ring; Enter marks the requester (left visible, every other face masked), Space
    on the same button ("Not the requester") masks them again and Space marks them once more. A range
    of speech toned by keyboard is previewed as the tone the saved version plays (1 kHz at a fifth of
    full scale), not as silence; saved by keyboard, the version records the requester's track alone
    left visible, the request its reason, every other face masked, and the tone in its sound."""
    f = footage
    requester_of = {"requester": "Morgan Reed", "contact": "by post to the ward office"}
    sar = httpx.post(
        f"{f.url}/api/v1/subject-access-requests",
        json={**requester_of, "received_on": START.date().isoformat(), "site": "NORTH"},
        headers=f.admin,
    )
    sar.raise_for_status()
    request = sar.json()
    with f.services.db.session() as session:
        investigator = session.query(User).filter_by(username="investigator").one().id
    httpx.put(
        f"{f.url}/api/v1/incidents/{request['incident_id']}/investigators/{investigator}", headers=f.admin
    ).raise_for_status()
    httpx.post(
        f"{f.url}/api/v1/incidents/{request['incident_id']}/links",
        json={"target_id": f.clip_id, "reason": "footage of the person who made this request"},
        headers=f.admin,
    ).raise_for_status()
    v1_record = _record(f, f.v1)
    tracks = sorted(_states(v1_record))
    assert len(tracks) >= 2, tracks
    requester, others = tracks[-1], tracks[:-1]  # the last in the list: reached after the others
    shots = screenshot_dir(tmp_path)
    with chromium() as browser:
        page = new_page(browser, 1400, 1000)
        page.add_init_script(HEAR_WEB_AUDIO)
        sign_in(page, f.url, "investigator", next_path=f"/subject-access/{request['id']}")
        tab_to(page, f"article.clip[data-clip='{f.clip_id}'] a.review-link")
        with page.expect_navigation(url=f"**/footage/{f.clip_id}/review?subject-access={request['id']}"):
            page.keyboard.press("Enter")
        page.wait_for_selector("#overlay[data-ready='1']")

        # The preview on, and other people's speech toned: the range typed, "tone" chosen by arrows.
        tab_to(page, "#preview")
        page.keyboard.press("Space")
        assert page.is_checked("#preview")
        tab_to(page, "#audio-start")
        page.keyboard.type(str(SAR_TONE[0]))
        page.keyboard.press("Tab")
        assert _focused(page) == "audio-end"
        page.keyboard.type(str(SAR_TONE[1]))
        tab_to(page, "#audio-mode")
        choose_by_keyboard(page, "#audio-mode", "tone")
        tab_to(page, "#audio-add")
        earlier = page.locator("#audio-edits li[data-audio]").count()  # the version reviewed may have some
        page.keyboard.press("Enter")
        added = f"#audio-edits li[data-audio='{earlier}']"
        page.wait_for_selector(added)
        assert page.inner_text(added).startswith("Sound toned: 1.65–1.95 s"), page.inner_text(added)

        # The preview plays the tone there (and not the clip's own sound), as the saved version will;
        # paused, nothing.
        page.evaluate(
            f"(() => {{ const v = document.getElementById('video'); v.playbackRate = 0.25;"
            f" v.currentTime = {SAR_TONE[0] + 0.05}; v.play(); }})()"
        )
        until(page, "document.getElementById('video').dataset.previewSound === 'tone 1000 Hz'")
        assert page.evaluate("document.getElementById('video').muted") is True
        # The analyser's window must lie wholly in the tone: one that straddles its start (the first
        # reading above silence, on a loaded machine) reads a part of its level. So the page is asked
        # until a window holds the tone's level and pitch (1.2 s of it at a quarter speed); a tone of
        # another level or pitch never does, and the wait fails.
        level = 0.2 / np.sqrt(2)
        heard = until(
            page,
            f"(() => {{ const [rms, hz] = {HEARD};"
            f" return Math.abs(rms - {level}) < 0.02 && Math.abs(hz - 1000) < 20 ? [rms, hz] : null; }})()",
        )
        rms, hz = heard
        assert abs(rms - level) < 0.02 and abs(hz - 1000) < 20, heard
        page.evaluate("document.getElementById('video').pause()")
        until(page, f"{HEARD}[0] < 0.001")

        # The track list in focus order: each track's box, its "go to", its requester button. The
        # first track's box turned over on the way (Space); the requester's mark masks it whatever it was.
        tab_to(page, f"#track-{tracks[0]}")
        was = page.is_checked(f"#track-{tracks[0]}")
        page.keyboard.press("Space")
        assert page.is_checked(f"#track-{tracks[0]}") is not was
        order = [_focused(page)]
        for _ in range(3 * len(tracks) - 1):
            page.keyboard.press("Tab")
            order.append(_focused(page))
        assert order == [x for t in tracks for x in (f"track-{t}", "go to", f"requester-{t}")], order

        def says(masked: list[int], marked: bool) -> None:
            button = f"#requester-{requester}"
            assert _focused(page) == f"requester-{requester}"  # the list drawn again keeps the focus
            ring = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert ring != "none", "the requester's button shows no focus ring"
            assert page.inner_text(button) == ("Not the requester" if marked else "This is the requester")
            assert page.get_attribute(button, "aria-pressed") == ("true" if marked else "false")
            visible = f"Track {requester}: left visible (the requester)"
            assert page.inner_text(f"label[for='track-{requester}']") == (
                visible if marked else f"Track {requester}: masked"
            )
            assert [t for t in tracks if page.is_checked(f"#track-{t}")] == masked

        page.keyboard.press("Enter")
        says(others, True)
        assert page.input_value("#audio-mode") == "tone"  # marking keeps what the reviewer chose to do
        page.keyboard.press("Space")
        says(tracks, False)
        page.keyboard.press("Space")
        says(others, True)
        page.screenshot(path=str(shots / "subject-access-review-keyboard.png"), full_page=True)

        tab_to(page, "#save")
        page.keyboard.press("Enter")
        page.wait_for_selector("#job-state[data-status='done']", timeout=90_000)
        job_id = page.get_attribute("#job-state", "data-job")
        assert page.errors == []  # type: ignore[attr-defined]

    job = httpx.get(f"{f.url}/api/v1/redaction-jobs/{job_id}", headers=f.admin).json()
    reason = (
        f"the person who asked for this footage (subject access request, {request['incident_reference']})"
    )
    assert [(e["track"], e["reason"]) for e in job["spec"]["exclusions"]] == [(requester, reason)], job[
        "spec"
    ]
    assert {"start": SAR_TONE[0], "end": SAR_TONE[1], "mode": "tone", "tone_hz": 1000.0} in job["spec"][
        "audio_edits"
    ]
    notes = [n for frame in _record(f, job)["record"] for n in frame if n.get("source") == "auto"]
    assert notes and all(n.get("excluded") is True for n in notes if n["track"] == requester)
    assert not [n for n in notes if n["track"] != requester and n.get("excluded")]
    samples = sound(f, job["result_item_id"], SAR_TONE[0] + 0.05, SAR_TONE[1] - 0.05)
    power = np.abs(np.fft.rfft(samples)) ** 2
    hz_of = np.fft.rfftfreq(len(samples), 1 / SOUND_RATE)
    assert power[(hz_of > 900) & (hz_of < 1100)].sum() / power.sum() > 0.8
