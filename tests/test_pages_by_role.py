"""Every console page, top-level and detail, by every kind of person, over HTTP against the running
service, on data at two sites: what each page answers, what it must show and what it must never show.

What each person may see is taken from the documented rules (``incidents.access``, the README's
roles), not from what the pages happen to do:

- an admin sees everything;
- a security manager sees the incidents of their own site, the evidence linked to them and the
  footage of their site; nothing of another site's incidents, not even through a clip of their own
  site that is linked to one;
- an investigator sees the incidents they are assigned to and the evidence linked to them;
- an auditor sees every item's metadata and custody trail and the statistics, never media, never
  incident records (incident pages, exports, subject access requests);
- a control-room operator sees alarms only: no incidents, no evidence.

A page outside a person's role answers 403; an incident, request, clip or alarm outside their scope
is "not found" (404), as the API answers. The workspace pages also carry the security headers and no
inline script.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from devices.service import add_staff
from incidents.models import ExhibitReference
from ingest.services import build_services
from tests.conftest import make_settings, migrated_sqlite, start_server
from tests.test_alarms_kit import raise_test_alarm
from tests.test_console_access import assert_headers_and_no_inline_script
from tests.test_console_kit import session_client
from tests.test_incidents_kit import PASSWORD, login, store_item, user

PEOPLE = {
    # username: (role, site, full name)
    "admin": ("admin", None, "Ada Admin"),
    "manager_a": ("security_manager", "NORTH", "Nadia North"),
    "manager_b": ("security_manager", "SOUTH", "Sol South"),
    "assigned": ("investigator", None, "Ivy Hart"),
    "unassigned": ("investigator", None, "Ian Brook"),  # assigned to site B's incident only
    "operator": ("operator", None, "Otto Room"),
    "auditor": ("auditor", None, "Audrey Check"),
}
STAFF = [
    ("S-NORTH", "Norah Beth Tranter", "nurse", "NORTH"),
    ("S-SOUTH", "Sally Ann Oakes", "porter", "SOUTH"),
    ("S-SOUTH-2", "Percy Glen Holm", "porter", "SOUTH"),
]
REQUESTER_A = "Rhiannon Quellbury"
REQUESTER_B = "Bartholomew Yelverton"


@dataclass
class Site:
    """What was built at one site, and the text that names it on a page."""

    incident: str = ""  # id
    reference: str = ""
    clip: str = ""
    request: str = ""
    alarm: str = ""
    export: str = ""
    marks: dict[str, str] = field(default_factory=dict)  # what -> text only its viewers may see


@dataclass
class World:
    url: str
    services: Any
    a: Site
    b: Site
    redacted_a: str  # site A's clip's redacted copy
    cross_clip: str  # a clip of site B's staff, linked only to site A's incident
    cross_alarm: str  # an alarm of site B, linked only to site A's incident
    clients: dict[str, httpx.Client]


def _api(url: str, username: str) -> httpx.Client:
    return httpx.Client(base_url=f"{url}/api/v1", headers=login(url, username), timeout=30)


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201, 202), r.text
    found: dict[str, Any] = r.json()
    return found


def _incident(
    api: httpx.Client, site: str, title: str, links: list[tuple[str, str, str]], investigators: list[int]
) -> dict[str, Any]:
    incident = _ok(
        api.post(
            "/incidents",
            json={
                "category": "physical_assault",
                "occurred_at": (datetime.now(UTC) - timedelta(hours=3)).isoformat(),
                "site": site,
                "title": title,
            },
        )
    )
    for kind, target, reason in links:
        _ok(
            api.post(
                f"/incidents/{incident['id']}/links",
                json={"kind": kind, "target_id": target, "reason": reason},
            )
        )
    for who in investigators:
        _ok(api.put(f"/incidents/{incident['id']}/investigators/{who}"))
    return incident


def _request(api: httpx.Client, site: str, requester: str, investigator: int) -> dict[str, Any]:
    sar = _ok(
        api.post(
            "/subject-access-requests",
            json={
                "requester": requester,
                "contact": "by post to the ward office",
                "received_on": datetime.now(UTC).date().isoformat(),
                "site": site,
                "description": "filmed at the main entrance",
            },
        )
    )
    _ok(api.put(f"/incidents/{sar['incident_id']}/investigators/{investigator}"))
    return sar


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, seaweed: Any, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pages-by-role")
    services = build_services(
        make_settings(tmp, migrated_sqlite(sqlite_template, tmp / "evidence.db"), seaweed)
    )
    ids = {name: user(services, name, role, site, full) for name, (role, site, full) in PEOPLE.items()}
    with services.db.session() as session:  # their initials make the clips' exhibit references
        for staff_id, name, group, site in STAFF:
            add_staff(session, services.ledger, staff_id, name, group, site, actor="test")
    now = datetime.now(UTC)
    window = {"start": now - timedelta(hours=3), "stop": now - timedelta(hours=2, minutes=58)}
    clip_a = store_item(services, wearer="S-NORTH", **window)
    redacted_a = store_item(services, kind="redacted_clip", derived_from=clip_a.id)
    clip_b = store_item(services, wearer="S-SOUTH", **window)
    cross_clip = store_item(services, wearer="S-SOUTH-2", **window)
    alarm_a = raise_test_alarm(services, "LW-NORTH", site="NORTH")
    alarm_b = raise_test_alarm(services, "LW-SOUTH", site="SOUTH")
    cross_alarm = raise_test_alarm(services, "LW-SOUTH")
    server, thread, url = start_server(services)
    admin = _api(url, "admin")
    a, b = Site(clip=clip_a.id, alarm=alarm_a), Site(clip=clip_b.id, alarm=alarm_b)
    made_a = _incident(
        admin,
        "NORTH",
        "Kicked at the Larkspur entrance",
        [
            ("evidence", clip_a.id, "shows the Larkspur kick"),
            ("evidence", cross_clip.id, "porter's camera caught the Larkspur kick"),
            ("alarm", alarm_a, "raised for the Larkspur kick"),
            ("alarm", cross_alarm, "porter pressed for the Larkspur kick"),
        ],
        [ids["assigned"]],
    )
    made_b = _incident(
        admin,
        "SOUTH",
        "Wallet taken in Quince ward",
        [
            ("evidence", clip_b.id, "shows the Quince wallet"),
            ("alarm", alarm_b, "raised for the Quince wallet"),
        ],
        [ids["unassigned"]],
    )
    _ok(
        admin.put(
            f"/incidents/{made_a['id']}/legal-hold", json={"hold": True, "reason": "Larkspur hold for court"}
        )
    )
    for site, made, manager in ((a, made_a, "manager_a"), (b, made_b, "manager_b")):
        site.incident, site.reference = made["id"], made["reference"]
        site.export = _ok(_api(url, manager).post(f"/incidents/{made['id']}/exports", json={}))["id"]
    sar_a = _request(_api(url, "manager_a"), "NORTH", REQUESTER_A, ids["assigned"])
    sar_b = _request(_api(url, "manager_b"), "SOUTH", REQUESTER_B, ids["unassigned"])
    a.request, b.request = sar_a["id"], sar_b["id"]
    with services.db.reading() as session:
        exhibits = {
            (row.incident_id, row.item_id): row.reference for row in session.scalars(select(ExhibitReference))
        }
    a.marks = {
        "incident id": a.incident,
        "incident reference": a.reference,
        "incident title": "Larkspur entrance",
        "link reason": "Larkspur kick",
        "hold reason": "Larkspur hold",
        "exhibit reference of its clip": exhibits[(a.incident, clip_a.id)],
        "exhibit reference of the other site's clip": exhibits[(a.incident, cross_clip.id)],
        "export": a.export,
        "requester": REQUESTER_A,
        "request's incident": sar_a["incident_reference"],
    }
    b.marks = {
        "incident id": b.incident,
        "incident reference": b.reference,
        "incident title": "Quince ward",
        "link reason": "Quince wallet",
        "exhibit reference of its clip": exhibits[(b.incident, clip_b.id)],
        "export": b.export,
        "requester": REQUESTER_B,
        "request's incident": sar_b["incident_reference"],
    }
    clients = {name: session_client(url, name, PASSWORD)[0] for name in PEOPLE}
    yield World(url, services, a, b, redacted_a.id, cross_clip.id, cross_alarm, clients)
    for client in clients.values():
        client.close()
    server.should_exit = True
    thread.join(15)
    services.close()


# Who sees which site's incidents and the evidence linked to them (``incidents.access``).
SITES_SEEN = {
    "admin": "ab",
    "manager_a": "a",
    "manager_b": "b",
    "assigned": "a",
    "unassigned": "b",
    "operator": "",
    "auditor": "",
}
# The role sets of ``incidents.access`` and ``alarms``, by the people above.
READERS = {"admin", "manager_a", "manager_b", "assigned", "unassigned"}  # INCIDENT_READERS
MEDIA = READERS  # EVIDENCE_MEDIA, and so EXPORTERS
METADATA = READERS | {"auditor"}  # EVIDENCE_METADATA
STATISTICS = {"admin", "manager_a", "manager_b", "auditor"}
ALARMS = {"admin", "manager_a", "manager_b", "operator", "auditor"}
EVERY_ITEM = {"admin", "auditor"}  # every item's metadata and whole custody trail


@dataclass
class Page:
    """One page as one person gets it: the status, the site marks it must show, and those it must not."""

    path: str
    status: dict[str, int]
    shows: dict[str, list[str]] = field(default_factory=dict)  # person -> marks it must show


def _never(world: World, person: str) -> dict[str, str]:
    """What ``person`` may see on no page at all: every mark of a site whose incidents they may not
    see; for the auditor, the incident records themselves (titles, requesters), never their custody."""
    sites = {"a": world.a, "b": world.b}
    hidden = {
        f"site {key.upper()}'s {what}": text
        for key, site in sites.items()
        if key not in SITES_SEEN[person]
        for what, text in site.marks.items()
    }
    if person == "auditor":
        kept = ("incident title", "requester")
        hidden = {k: v for k, v in hidden.items() if any(k.endswith(w) for w in kept)}
    return hidden


def _status(people: set[str], *, seen: set[str] | None = None, found: int = 200) -> dict[str, int]:
    """``found`` for those ``seen``, 404 for the others of ``people``, 403 for everyone else."""
    seen = people if seen is None else seen
    return {p: (found if p in seen else 404) if p in people else 403 for p in PEOPLE}


def _of(world: World, key: str, *whats: str) -> list[str]:
    return [getattr(world, key).marks[w] for w in whats]


def pages(world: World) -> list[Page]:
    a, b = world.a, world.b
    of_site = {p: {k for k in "ab" if k in SITES_SEEN[p]} for p in PEOPLE}
    out: list[Page] = []

    def per_site(path: str, people: set[str], whats: tuple[str, ...]) -> Page:
        """A list page: 200 for ``people``, showing the given marks of each site they see."""
        shows = {p: [m for k in sorted(of_site[p]) for m in _of(world, k, *whats)] for p in people}
        return Page(path, _status(people), shows)

    out.append(
        per_site("/incidents", READERS, ("incident reference", "incident title", "request's incident"))
    )
    for query in ("q=Larkspur", "q=Quince", "site=NORTH", "site=SOUTH", "wearer=S-SOUTH-2", "status=open"):
        out.append(per_site(f"/incidents?{query}", READERS, ()))
    out.append(per_site("/exports", MEDIA, ("incident reference",)))
    out.append(per_site("/subject-access", READERS, ("requester",)))
    out.append(
        Page(
            "/retention",
            _status(METADATA),
            {p: [a.marks["hold reason"]] for p in {"admin", "manager_a", "assigned", "auditor"}},
        )
    )
    out.append(Page("/statistics", _status(STATISTICS)))
    for key, site in (("a", a), ("b", b)):
        seen = {p for p in READERS if key in of_site[p]}
        exhibits = [m for w, m in site.marks.items() if w.startswith("exhibit reference")]
        detail = {
            p: _of(world, key, "incident reference", "incident title", "link reason") + exhibits for p in seen
        }
        out.append(Page(f"/incidents/{site.reference}", _status(READERS, seen=seen), detail))
        out.append(Page(f"/incidents/{site.incident}", _status(READERS, seen=seen), detail))
        timeline = {p: _of(world, key, "incident reference", "link reason") for p in seen}
        out.append(Page(f"/incidents/{site.reference}/timeline", _status(READERS, seen=seen), timeline))
        exports = {p: _of(world, key, "incident reference", "export") for p in seen}
        out.append(Page(f"/incidents/{site.incident}/exports", _status(MEDIA, seen=seen), exports))
        requests = {p: _of(world, key, "requester") for p in seen}
        out.append(Page(f"/subject-access/{site.request}", _status(READERS, seen=seen), requests))
        clip_seen = seen | ({"manager_a"} if key == "a" else {"manager_b"})
        # The item's incidents as its exhibit line names them: an auditor reads both, or neither.
        incidents_row = f"<dt>Incidents</dt><dd>{site.reference}"
        footage = {
            p: [*_of(world, key, "exhibit reference of its clip"), incidents_row]
            for p in clip_seen | EVERY_ITEM
        }
        out.append(Page(f"/footage/{site.clip}", _status(METADATA, seen=clip_seen | EVERY_ITEM), footage))
        out.append(Page(f"/footage/{site.clip}/review", _status(MEDIA, seen=clip_seen)))
        trail = {p: _of(world, key, "link reason") for p in clip_seen | EVERY_ITEM}
        # An item outside the person's scope is "not found" on the custody page itself (200).
        out.append(Page(f"/custody?item={site.clip}", _status(METADATA), trail))
        alarm_seen = {"admin", "operator", "auditor", f"manager_{key}"}
        out.append(Page(f"/alarms/{site.alarm}", _status(ALARMS, seen=alarm_seen)))
    # Site A's redacted copy: seen by whoever sees its original.
    copy_seen = {"admin", "manager_a", "assigned", "auditor"}
    # (its page is its original's, where the versions are: a redirect)
    out.append(Page(f"/footage/{world.redacted_a}", _status(METADATA, seen=copy_seen, found=303)))
    out.append(Page(f"/custody?item={world.redacted_a}", _status(METADATA)))
    # A clip of site B's staff linked only to site A's incident: site B's manager sees it as footage of
    # their site, and nothing of the incident it is linked to.
    cross_seen = {"admin", "manager_a", "manager_b", "assigned", "auditor"}
    cross = {p: [a.marks["exhibit reference of the other site's clip"]] for p in cross_seen - {"manager_b"}}
    out.append(Page(f"/footage/{world.cross_clip}", _status(METADATA, seen=cross_seen), cross))
    out.append(Page(f"/footage/{world.cross_clip}/review", _status(MEDIA, seen=cross_seen - {"auditor"})))
    cross_trail = {p: [a.marks["link reason"]] for p in cross_seen - {"manager_b"}}
    out.append(Page(f"/custody?item={world.cross_clip}", _status(METADATA), cross_trail))
    # An alarm of site B linked only to site A's incident.
    out.append(
        Page(
            f"/alarms/{world.cross_alarm}",
            _status(ALARMS, seen={"admin", "manager_b", "operator", "auditor"}),
        )
    )
    return out


def test_every_page_by_every_role_shows_only_what_the_role_may_see(world: World) -> None:
    wrong: list[str] = []
    for page in pages(world):
        for person, client in world.clients.items():
            r = client.get(page.path)
            expected = page.status[person]
            if r.status_code != expected:
                wrong.append(f"{person} {page.path}: {r.status_code}, expected {expected}")
                continue
            for mark in page.shows.get(person, []):
                if mark not in r.text:
                    wrong.append(f"{person} {page.path}: does not show {mark!r}")
            for what, mark in _never(world, person).items():
                if mark in r.text:
                    wrong.append(f"{person} {page.path}: shows {what} ({mark!r})")
            if person == "auditor" and page.path.startswith("/footage/") and "<video" in r.text:
                wrong.append(f"auditor {page.path}: offers the footage to play")
    assert not wrong, "\n".join(wrong)


WORKSPACE_PAGES = [
    "/incidents",
    "/incidents/{a.reference}",
    "/incidents/{a.reference}/timeline",
    "/incidents/{a.incident}/exports",
    "/exports",
    "/subject-access",
    "/subject-access/{a.request}",
    "/footage/{a.clip}",
    "/footage/{a.clip}/review",
    "/custody?item={a.clip}",
    "/retention",
    "/statistics",
]


def test_workspace_pages_send_the_security_headers_and_no_inline_script(world: World) -> None:
    for template in WORKSPACE_PAGES:
        assert_headers_and_no_inline_script(world.clients["admin"], template.format(a=world.a))
