"""The investigator's and the auditor's pages in a real browser (Debian's chromium through Playwright)
against the real service, SeaweedFS and database.

An investigator finds incidents with the filters, opens one, a security manager assigns a colleague
by name, the investigator links a clip with a reason, sees it in the timeline with the clip's
custody, and unlinks it with a reason. Each role sees only what the API gives it (a manager of
another site and an investigator not assigned find nothing, on the page and through the API; a
link through the page to what they may not see is refused). State changes without the CSRF token
are refused; a title that looks like a script is shown as text. The auditor's statistics charts,
retention and holds, and a custody trail with the verification's answer. The tests take the
README's screenshots (kept when ``EVIDENCE_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from ingest.services import build_services
from tests.conftest import make_settings, start_server
from tests.test_console_kit import chromium, new_page, screenshot_dir, session_client, sign_in
from tests.test_incidents_kit import PASSWORD, login, staff, store_item, user

pytestmark = pytest.mark.e2e

HOSTILE = '<img src=x onerror="window.__pwned=1">'
PEOPLE = {
    # username: (role, site, full name)
    "admin": ("admin", None, "Ada Admin"),
    "north_manager": ("security_manager", "NORTH", "Nadia North"),
    "south_manager": ("security_manager", "SOUTH", "Sol South"),
    "ivy": ("investigator", None, "Ivy Hart"),
    "ian": ("investigator", None, "Ian Brook"),
    "auditor": ("auditor", None, "Audrey Check"),
    "operator": ("operator", None, "Otto Room"),
}


@dataclass
class World:
    url: str
    services: Any
    browser: Any
    tmp: Path
    ids: dict[str, int]
    clip: str  # a NORTH clip, linked to an earlier incident of Ivy's
    other_clip: str  # a NORTH clip also linked to a SOUTH incident Ivy may not see
    south_incident: str  # reference

    def api(self, username: str) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=login(self.url, username), timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, seaweed: Any) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("workspace")
    services = build_services(make_settings(tmp, f"sqlite:///{tmp / 'evidence.db'}", seaweed))
    ids = {}
    for name, (role, site, full) in PEOPLE.items():
        ids[name] = user(services, name, role, site, full)  # the name is sealed with the row
    staff(services, "S-100", "nurse", "NORTH")
    staff(services, "S-200", "porter", "SOUTH")
    now = datetime.now(UTC)
    clip = store_item(
        services, wearer="S-100", start=now - timedelta(hours=3), stop=now - timedelta(hours=2, minutes=55)
    )
    other = store_item(
        services, wearer="S-100", start=now - timedelta(hours=5), stop=now - timedelta(hours=4, minutes=58)
    )
    store_item(
        services, wearer="S-200", start=now - timedelta(hours=4), stop=now - timedelta(hours=3, minutes=58)
    )
    with services.db.session() as session:
        earlier = create_incident(
            session,
            IncidentDraft("verbal_abuse", now - timedelta(days=2), "NORTH", title="Shouting at reception"),
            "user:north_manager",
            now=now - timedelta(days=2),
            ledger=services.ledger,
        )
        assign_investigator(session, services.ledger, earlier, ids["ivy"], "user:north_manager")
        for item in (clip.id, other.id):
            link_evidence(
                session, services.ledger, earlier.id, item, "user:north_manager", "seen at reception"
            )
        south = create_incident(
            session,
            IncidentDraft("theft", now - timedelta(days=1), "SOUTH", title="Wallet taken on ward 9"),
            "user:admin",
            ledger=services.ledger,
        )
        link_evidence(session, services.ledger, south.id, other.id, "user:admin", "SECRET-south-reason")
        south_ref = south.reference
        # enough incidents for the anonymised statistics to publish something
        for n in range(60):
            create_incident(
                session,
                IncidentDraft(
                    ("physical_assault", "verbal_abuse", "theft")[n % 3],
                    now - timedelta(days=35 * (n % 2)),
                    ("NORTH", "SOUTH")[n % 2],
                    title=f"Background incident {n}",
                    staff=(("S-100" if n % 2 == 0 else "S-200", "victim"),),
                ),
                "user:admin",
                ledger=services.ledger,
            )
    server, thread, url = start_server(services)
    with chromium() as browser:
        yield World(url, services, browser, tmp, ids, clip.id, other.id, south_ref)
    server.should_exit = True
    thread.join(15)
    services.db.dispose()


def page_as(world: World, username: str, path: str, width: int = 1366) -> Any:
    page = new_page(world.browser, width, 900)
    sign_in(page, world.url, username, PASSWORD, next_path=path)
    return page


def test_an_investigation_from_search_to_unlink(world: World, tmp_path: Path) -> None:
    out = screenshot_dir(tmp_path)
    page = page_as(world, "ivy", "/incidents")
    assert page.locator("header nav a", has_text="Incidents").count() == 1
    # her incident is listed; the SOUTH one and others' are not
    assert page.locator("#incident-rows tr[data-reference]").count() == 1
    assert world.south_incident not in page.content()
    page.fill("#f-q", "reception")
    page.select_option("#f-category", "verbal_abuse")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/incidents?*")
    assert page.locator("#incident-rows tr", has_text="Shouting at reception").count() == 1
    page.select_option("#f-status", "closed")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("#found-title:has-text('No incidents')")

    # open an incident from the list page
    page.goto(world.url + "/incidents")
    page.fill("#n-title", "Punch thrown in A&E waiting room")
    page.select_option("#n-category", "physical_assault")
    page.fill("#n-occurred", (datetime.now() - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#n-site", "NORTH")
    page.fill("#n-ward", "A&E")
    page.fill("#n-description", "A visitor struck a nurse; the nurse's camera was recording.")
    page.click("#new-incident button[type=submit]")
    page.wait_for_url(re.compile(r".*/incidents/INC-\d{4}-\d{6}$"))
    reference = page.url.rsplit("/", 1)[1]
    assert "Punch thrown" in page.inner_text("#incident-title")
    assert "Ivy Hart" in page.inner_text("#investigators")  # opened by an investigator: hers

    # a security manager of the site assigns a colleague, chosen by name
    manager = page_as(world, "north_manager", f"/incidents/{reference}")
    options = manager.locator("#assign-user option").all_inner_texts()
    assert any("Ian Brook (ian)" in o for o in options), options
    manager.select_option("#assign-user", label="Ian Brook (ian)")
    manager.click("#assign-form button[type=submit]")
    manager.wait_for_selector("#investigators:has-text('Ian Brook')")
    manager.context.close()

    # link the clip she may see (through her other incident), with a reason
    page.reload()
    choices = page.locator("#link-target option[data-kind]").evaluate_all("os => os.map(o => o.value)")
    assert set(choices) == {world.clip, world.other_clip}, choices  # nothing she may not see
    page.select_option("#link-target", world.clip)
    page.fill("#link-reason", "Nurse's camera recorded the punch")
    page.click("#link-form button[type=submit]")
    page.wait_for_selector(f"#linked tr[data-target='{world.clip}']")
    assert "Nurse's camera recorded the punch" in page.inner_text("#linked")
    page.select_option("#e-status", "under_investigation")
    page.click("#status-form button[type=submit]")
    page.wait_for_selector("#incident-status:has-text('under investigation')")
    page.screenshot(path=str(out / "incident.png"), full_page=True)

    # the timeline: the link with its reason and the clip's custody
    page.click("#timeline-link")
    page.wait_for_selector("#timeline")
    text = page.inner_text("#timeline")
    assert "Nurse's camera recorded the punch" in text
    assert "investigator assigned" in text and "ian" in text
    # the clip's custody: its arrival, and its link to her earlier incident
    assert page.locator(f"#timeline tr[data-kind^='custody:'][data-item='{world.clip}']").count() >= 2
    assert "seen at reception" in text  # the clip's earlier link, an incident she sees

    # unlink with a reason; the timeline keeps both
    page.goto(f"{world.url}/incidents/{reference}")
    row = page.locator(f"#linked tr[data-target='{world.clip}']")
    row.locator("summary").click()
    row.locator("input[name=reason]").fill("Wrong camera: this was the 14:02 clip")
    row.locator("button[type=submit]").click()
    page.wait_for_selector(f"#linked tr[data-target='{world.clip}']", state="detached")
    page.goto(f"{world.url}/incidents/{reference}/timeline")
    text = page.inner_text("#timeline")
    assert "Wrong camera: this was the 14:02 clip" in text
    page.screenshot(path=str(out / "incident-timeline.png"), full_page=True)

    # the same lines through the API, for the same person
    with world.api("ivy") as api:
        history = api.get(f"/incidents/{reference}/history").json()
    kinds = [h["kind"] for h in history]
    assert "unlinked" in kinds and "linked" in kinds
    clip_lines = [h for h in history if h.get("item_id") == world.clip]
    assert {h["kind"] for h in clip_lines} >= {"custody:stored", "custody:linked"}
    assert all(h["details"].get("incident") != reference for h in clip_lines)  # told once, as "linked"
    page.goto(world.url + "/incidents")
    page.screenshot(path=str(out / "incidents.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()


def test_each_role_sees_only_what_it_may(world: World) -> None:
    ref = world.south_incident
    # a manager of another site: not in the list, "not found" on the page and through the API
    north = page_as(world, "north_manager", "/incidents")
    assert ref not in north.content()
    r = north.goto(f"{world.url}/incidents/{ref}")
    assert r is not None and r.status == 404
    r = north.goto(f"{world.url}/incidents/{ref}/timeline")
    assert r is not None and r.status == 404
    north.context.close()
    with world.api("north_manager") as api:
        assert api.get(f"/incidents/{ref}").status_code == 404
        assert api.get(f"/incidents/{ref}/history").status_code == 404
        assert all(i["reference"] != ref for i in api.get("/incidents").json())
        # by effect: linking to it or changing it is refused as missing
        r = api.post(
            f"/incidents/{ref}/links", json={"kind": "evidence", "target_id": world.clip, "reason": "try"}
        )
        assert r.status_code == 404
        assert api.patch(f"/incidents/{ref}", json={"title": "renamed"}).status_code == 404
    # the site's own manager sees it, and is offered only evidence of their site to link
    south = page_as(world, "south_manager", f"/incidents/{ref}")
    assert "Wallet taken" in south.inner_text("#incident-title")
    offered = south.locator("#link-target option[data-kind=evidence]").evaluate_all(
        "os => os.map(o => o.value)"
    )
    assert world.clip not in offered
    south.context.close()
    with world.api("south_manager") as api:
        r = api.post(
            f"/incidents/{ref}/links", json={"kind": "evidence", "target_id": world.clip, "reason": "try"}
        )
        assert r.status_code == 404  # the page's rule and the API's: the same
    # Ivy's timeline of her incident shows the shared clip's link to the SOUTH incident withheld
    ivy = page_as(world, "ivy", "/incidents?q=reception")
    ivy.locator("#incident-rows a").first.click()
    ivy.click("#timeline-link")
    text = ivy.inner_text("#timeline")
    assert "SECRET-south-reason" not in text and ref not in text
    assert "withheld" in text
    ivy.goto(f"{world.url}/incidents/{ref}")
    assert ivy.locator("h1", has_text="Not found").count() == 1
    ivy.context.close()
    # roles without incidents: a refusal page, no menu entry
    for name in ("operator", "auditor"):
        page = page_as(world, name, "/welcome")
        assert page.locator("header nav a", has_text="Incidents").count() == 0
        r = page.goto(f"{world.url}/incidents")
        assert r is not None and r.status == 403
        page.context.close()


def test_csrf_and_escaping(world: World) -> None:
    client, csrf = session_client(world.url, "ivy", PASSWORD)
    body = {
        "category": "other",
        "occurred_at": datetime.now(UTC).isoformat(),
        "site": "NORTH",
        "title": HOSTILE,
    }
    try:
        refused = client.post("/api/v1/incidents", json=body)
        assert refused.status_code == 403 and refused.json()["reason"] == "csrf"
        wrong = client.post("/api/v1/incidents", json=body, headers={"X-CSRF-Token": "x" * 40})
        assert wrong.status_code == 403
        made = client.post("/api/v1/incidents", json=body, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        reference = made.json()["reference"]
        unlink = client.post(
            f"/api/v1/incidents/{reference}/unlink",
            json={"kind": "evidence", "target_id": world.clip, "reason": "no token"},
        )
        assert unlink.status_code == 403
    finally:
        client.close()
    page = page_as(world, "ivy", f"/incidents/{reference}")
    assert HOSTILE in page.inner_text("#incident-title")  # shown as text
    assert page.locator("#incident-title img").count() == 0
    page.goto(f"{world.url}/incidents?q=onerror")
    assert HOSTILE in page.inner_text("#incident-rows")
    page.goto(f"{world.url}/incidents/{reference}/timeline")
    assert page.evaluate("window.__pwned") is None
    assert not page.errors, page.errors
    page.context.close()


def test_oversight_statistics_retention_custody_and_verify(world: World, tmp_path: Path) -> None:
    out = screenshot_dir(tmp_path)
    with world.api("north_manager") as api:
        r = api.put(
            f"/evidence/{world.clip}/legal-hold", json={"hold": True, "reason": "Police request ref 4471"}
        )
        assert r.status_code == 200, r.text
    page = page_as(world, "auditor", "/statistics", 1440)
    page.wait_for_selector("body[data-stats-ready=yes]")
    assert page.locator(".chart[data-ready=yes] svg rect").count() >= 3
    csv = page.evaluate(
        "fetch(document.querySelector('.chart a.csv').href, {credentials: 'same-origin'}).then(r => r.text())"
    )
    assert csv.startswith("month,category,count")
    page.screenshot(path=str(out / "statistics.png"), full_page=True)
    page.goto(world.url + "/retention")
    holds = page.inner_text("#holds")
    assert "Police request ref 4471" in holds
    assert page.locator(f"#expiry tr[data-item='{world.clip}']").count() == 1
    page.screenshot(path=str(out / "retention.png"), full_page=True)
    page.goto(f"{world.url}/custody?item={world.other_clip}")
    trail = page.inner_text("#custody-trail")
    assert "SECRET-south-reason" in trail  # auditors read trails whole, as the API gives them
    page.click("#verify-item")
    page.wait_for_selector("#verify-result[data-state=ok]", timeout=60000)
    assert "Intact" in page.inner_text("#verify-result")
    page.screenshot(path=str(out / "custody.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()
    # a manager sees the page but not what another site's incident says; cannot run verify
    north = page_as(world, "north_manager", f"/custody?item={world.other_clip}")
    trail = north.inner_text("#custody-trail")
    assert "SECRET-south-reason" not in trail and "withheld" in trail
    assert north.locator("#verify-item").count() == 0
    north.context.close()
    with world.api("north_manager") as api:
        assert api.post("/custody/verify", json={"check_objects": False}).status_code == 403
    with world.api("south_manager") as api:  # the other site's manager: nothing of NORTH's
        assert api.get(f"/evidence/{world.clip}/custody").status_code == 404
    south = page_as(world, "south_manager", f"/custody?item={world.clip}")
    assert south.locator("#not-found").count() == 1
    south.goto(world.url + "/retention")
    assert "Police request ref 4471" not in south.content()
    south.context.close()


def _focus_by_tab(page: Any, start: str, target: str, most: int = 20) -> None:
    """Tab from ``start`` until ``target`` (an element id) has the focus, as a keyboard user would
    (a date field takes four stops in chromium: day, month, year and its calendar button)."""
    page.focus(f"#{start}")
    for _ in range(most):
        if page.evaluate("document.activeElement.id") == target:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"#{target} was not reached by Tab from #{start}")


def test_the_incident_list_by_role_and_its_investigator_filter_by_keyboard(
    world: World, tmp_path: Path
) -> None:
    """The incident list as an investigator, a security manager and an auditor (screenshots), and
    the investigator filter used with the keyboard alone: Tab to it, choose with the arrows, Tab to
    Search and press Enter; the list is then the incidents of the one chosen."""
    out = screenshot_dir(tmp_path)
    ivy = page_as(world, "ivy", "/incidents")
    offered = ivy.locator("#f-investigator option").all_inner_texts()
    assert offered[0] == "anyone" and "Ivy Hart (ivy)" in offered, offered
    assert set(offered) <= {"anyone", "Ivy Hart (ivy)", "Ian Brook (ian)"}, offered  # investigators only
    assert world.south_incident not in ivy.content()
    _focus_by_tab(ivy, "f-q", "f-investigator")
    ivy.keyboard.press("ArrowDown")
    chosen = ivy.input_value("#f-investigator")
    assert chosen == ivy.locator("#f-investigator option").nth(1).get_attribute("value")
    ivy.screenshot(path=str(out / "incidents-filter-focus.png"), full_page=True)
    for _ in range(4):  # on to the Search button
        ivy.keyboard.press("Tab")
        if ivy.evaluate("document.activeElement.type") == "submit":
            break
    ivy.keyboard.press("Enter")
    ivy.wait_for_url(f"**/incidents?*investigator={chosen}*")
    shown = set(
        ivy.locator("#incident-rows tr[data-reference]").evaluate_all(
            "rs => rs.map(r => r.dataset.reference)"
        )
    )
    with world.api("ivy") as api:
        theirs = {i["reference"] for i in api.get("/incidents", params={"assigned_to": chosen}).json()}
    assert shown == theirs and shown, (shown, theirs)
    ivy.goto(world.url + "/incidents")
    ivy.screenshot(path=str(out / "incidents-investigator.png"), full_page=True)
    assert not ivy.errors, ivy.errors
    ivy.context.close()

    manager = page_as(world, "north_manager", "/incidents")
    offered = manager.locator("#f-investigator option").all_inner_texts()
    assert {"Ivy Hart (ivy)", "Ian Brook (ian)"} <= set(offered) and not any("North" in o for o in offered)
    assert world.south_incident not in manager.content()
    manager.screenshot(path=str(out / "incidents-security-manager.png"), full_page=True)
    manager.context.close()

    auditor = page_as(world, "auditor", "/welcome")
    r = auditor.goto(f"{world.url}/incidents")
    assert r is not None and r.status == 403
    auditor.screenshot(path=str(out / "incidents-auditor.png"), full_page=True)
    auditor.context.close()


def test_an_item_held_for_review_is_released_from_its_custody_page_with_a_reason(
    world: World, tmp_path: Path
) -> None:
    """A clip of NORTH held for review (signed by a retired key of its camera): its custody page
    says why; an investigator and the manager of another site are offered no release; NORTH's
    manager releases it with a reason typed over two lines (kept as one) and the page shows it
    stored, its trail the release. An item quarantined for integrity offers no release to anyone."""
    out = screenshot_dir(tmp_path)
    why = (
        "signed by a retired key of the device (its key from 2026-11-01T09:00:00Z until "
        "2026-12-01T09:00:00Z), not its current one"
    )
    held = store_item(world.services, wearer="S-100", site="NORTH", quarantine_reason=why, for_review=True)
    broken = store_item(world.services, wearer="S-100", site="NORTH", quarantine_reason="sha256 mismatch")
    for name in ("ivy", "south_manager"):
        page = page_as(world, name, f"/custody?item={held.id}")
        if page.locator("#item-title").count():  # an investigator not assigned may not see it at all
            assert page.locator("#release-form").count() == 0
        page.context.close()
    page = page_as(world, "north_manager", f"/custody?item={broken.id}")
    assert page.locator("#held[data-integrity=yes]").count() == 1
    assert page.locator("#release-form").count() == 0
    page.goto(f"{world.url}/custody?item={held.id}")
    assert "retired key" in page.inner_text("#held-reasons")
    assert page.locator("#held[data-integrity=no]").count() == 1
    page.fill("#release-reason", "Reviewed with the camera's issue log:\nworn by S-100 on that shift.")
    page.screenshot(path=str(out / "custody-held-for-review.png"), full_page=True)
    page.click("#release-item")
    page.wait_for_selector("#custody-trail tr[data-action=quarantine_released]", timeout=30000)
    assert page.locator("#held").count() == 0
    facts = page.inner_text("dl.facts")
    assert "stored" in facts and "quarantined" not in facts.split("SHA-256")[0], facts
    trail = page.inner_text("#custody-trail")
    assert "Reviewed with the camera's issue log: worn by S-100 on that shift." in trail, trail
    page.screenshot(path=str(out / "custody-released.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()
