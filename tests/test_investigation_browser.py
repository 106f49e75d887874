"""An investigation from end to end in one browser (Debian's chromium through Playwright) against one
running service, its store, ffmpeg and redaction worker, with the simulator's clip of two faces.

An investigator signs in, opens the incident, opens its clip, plays and seeks it, corrects the
automatic redaction (a track turned off, a box over a time range, a range of sound muted), saves it
and follows the new version to the end; its per-frame record shows the changes took effect. That
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
from pathlib import Path
from typing import Any

import httpx
import pytest

from chain_of_custody import manifest as mf
from tests import test_footage_browser
from tests.test_console_kit import chromium, new_page, screenshot_dir, sign_in
from tests.test_exports_browser import link_download_verify
from tests.test_footage_browser import (
    Footage,
    _longest_track,
    _record,
    check_correction,
    correct_in_review,
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
        job_id, start, end = correct_in_review(page, f, v1_record, track, shots)
        corrected = check_correction(f, job_id, track, start, end)

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
