"""The role matrix extended from routes to effects, on both databases: random callers (role, site,
assignments) take random actions (open or change an incident with a footage window, link evidence
or an alarm (by an alarm's id or an item's), place a legal hold, ask for an export, ask for a
redaction, move a member of staff to a site, change or reassign a device), and nothing any of them
does ever puts an item the caller could not see before the action in front of them:

- no response names such an item;
- the evidence the caller can list, read or stream afterwards is what they could before (plus
  items the action itself made);
- such an item's custody gains no entry by the caller, and its retention lock and legal hold do
  not move (a write may not keep what its caller may not see);
- an export asked for packs no bytes of such an item (what its job will read);
- no list of alarms, devices or staff gains a row, no alarm the caller could not list is linked by
  them, and no write succeeds on a member of staff or a device the caller could not list.

Bounded: a dozen examples per database, well under a minute each.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents.export.models import ExportJob
from incidents.export.plan import gather_items, plan_package
from incidents.models import Incident, IncidentLink
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
SITES = ("NORTH", "SOUTH")
WEARERS = ("S-N", "S-S")
# Weighted toward the roles that write: the ones an indirect path would serve.
ROLES = (
    "admin",
    "security_manager",
    "security_manager",
    "investigator",
    "investigator",
    "auditor",
    "operator",
)
MEDIA_ROLES = ("admin", "security_manager", "investigator")
_names = itertools.count()


@dataclass
class World:
    live: Any
    items: list[str]
    incidents: list[str]
    alarms: list[str]


def _world(live: Any) -> World:
    s = live.services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-S", "porter", "SOUTH")
    items: list[str] = []
    for wearer in ("S-N", "S-N", "S-S", "S-S", None):
        clip = store_item(s, wearer=wearer, start=T0, stop=T0 + timedelta(minutes=3))
        copy = store_item(s, kind="redacted_clip", derived_from=clip.id)
        items += [clip.id, copy.id]
    inv = user(s, "seed_inv", "investigator")
    incidents = []
    with s.db.session() as session:
        for n, site in enumerate(SITES):
            incident = create_incident(
                session,
                IncidentDraft(category="physical_assault", occurred_at=T0, site=site),
                "user:seed",
                ledger=s.ledger,
            )
            link_evidence(session, s.ledger, incident.id, items[4 * n], "user:seed", "seen")
            link_evidence(session, s.ledger, incident.id, items[4 * n + 3], "user:seed", "its copy only")
            assign_investigator(session, s.ledger, incident, inv, "user:seed")
            incidents.append(incident.id)
    alarms = [raise_test_alarm(s, f"LW-{site}", site=site) for site in SITES]
    return World(live, items, incidents, alarms)


def _visible(world: World, headers: dict[str, str]) -> set[str]:
    r = httpx.get(f"{world.live.url}/api/v1/evidence", headers=headers, params={"limit": 1000})
    return {i["id"] for i in r.json()} if r.status_code == 200 else set()


def _listed(world: World, headers: dict[str, str]) -> set[str]:
    """What the caller's lists name besides evidence: alarms, devices and staff."""
    out: set[str] = set()
    for path in ("alarms", "devices", "staff"):
        r = httpx.get(
            f"{world.live.url}/api/v1/{path}",
            headers=headers,
            params={"limit": 1000} if path == "alarms" else None,
        )
        if r.status_code == 200:
            out |= {f"{path}:{row['id']}" for row in r.json()}
    return out


def _alarm_links(world: World, actor: str) -> set[str]:
    """The alarms the caller has linked to incidents."""
    with world.live.services.db.session() as session:
        return set(
            session.scalars(
                select(IncidentLink.target_id).where(
                    IncidentLink.target_kind == "alarm", IncidentLink.linked_by == actor
                )
            )
        )


def _snapshot(world: World, hidden: set[str], actor: str) -> dict[str, Any]:
    """What a write could change of the items the caller may not see."""
    s = world.live.services
    with s.db.session() as session:
        rows = session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(hidden))).all()
        # A package lists an item it withholds by hash, and says so on that item's custody
        # ("exported", no media): a record of the listing, not a reach. Everything else counts.
        rows_by_actor = session.execute(
            select(CustodyEntry.action, CustodyEntry.details).where(
                CustodyEntry.item_id.in_(hidden), CustodyEntry.actor == actor
            )
        ).all()
        entries = sum(
            1
            for action, details in rows_by_actor
            if not (action == "exported" and json.loads(details).get("media_included") is False)
        )
        return {"rows": {r.id: (r.retain_until, r.legal_hold, r.status) for r in rows}, "entries": entries}


def _all_items(world: World) -> set[str]:
    with world.live.services.db.session() as session:
        return set(session.scalars(select(EvidenceItem.id)))


def _window(wearer: str | None, wide: bool) -> dict[str, Any]:
    if wearer is None:
        return {}
    span = timedelta(days=3650 if wide else 1)
    return {"wearer": wearer, "window_start": (T0 - span).isoformat(), "window_end": (T0 + span).isoformat()}


action = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(SITES), st.sampled_from((None, *WEARERS)), st.booleans()),
    st.tuples(st.just("patch"), st.integers(0, 9), st.sampled_from(WEARERS), st.booleans()),
    st.tuples(st.just("link"), st.integers(0, 9), st.integers(0, 21), st.sampled_from(("evidence", "alarm"))),
    # The registry: a member of staff (and their footage) moved to a site, a device taken over.
    st.tuples(st.just("staff"), st.sampled_from(WEARERS), st.sampled_from(SITES), st.none()),
    st.tuples(st.just("device"), st.sampled_from(SITES), st.sampled_from(WEARERS), st.booleans()),
    st.tuples(st.just("hold"), st.integers(0, 9), st.integers(0, 19), st.booleans()),
    st.tuples(st.just("export"), st.integers(0, 9), st.booleans(), st.none()),
    st.tuples(st.just("redact"), st.integers(0, 19), st.none(), st.none()),
)
caller = st.tuples(
    st.sampled_from(ROLES), st.sampled_from((*SITES, None)), st.lists(st.integers(0, 9), max_size=2)
)


def _act(
    world: World, headers: dict[str, str], step: tuple[Any, ...], incidents: list[str]
) -> httpx.Response:
    api = f"{world.live.url}/api/v1"
    kind, a, b, c = step
    pick_incident = incidents[a % len(incidents)] if kind in ("patch", "link", "hold", "export") else None
    pick_item = (
        world.items[(b if kind in ("link", "hold") else a) % len(world.items)]
        if kind not in ("create", "staff", "device")
        else ""
    )
    if kind == "export":
        pick_item = ""
    if kind == "create":
        body = {"category": "theft", "occurred_at": T0.isoformat(), "site": a, **_window(b, c)}
        return httpx.post(f"{api}/incidents", json=body, headers=headers)
    if kind == "patch":
        return httpx.patch(f"{api}/incidents/{pick_incident}", json=_window(b, c), headers=headers)
    if kind == "staff":
        body = {"id": a, "name": f"Staff {a}", "group": "nurse", "site": b}
        return httpx.post(f"{api}/staff", json=body, headers=headers)
    if kind == "device":
        change = {"status": "disabled"} if c else {"staff_id": b}
        return httpx.patch(f"{api}/devices/LW-{a}", json=change, headers=headers)
    if kind == "link":
        # An alarm by its id (either site's), or an evidence item's id given as an alarm.
        targets = world.alarms + world.items
        target = pick_item if c == "evidence" else targets[b % len(targets)]
        body = {"kind": c, "target_id": target, "reason": "random link"}
        return httpx.post(f"{api}/incidents/{pick_incident}/links", json=body, headers=headers)
    if kind == "hold":
        url = f"{api}/incidents/{pick_incident}/legal-hold" if c else f"{api}/evidence/{pick_item}/legal-hold"
        return httpx.put(url, json={"hold": True, "reason": "random hold"}, headers=headers)
    if kind == "export":
        body = {"include_originals": b, "reason": "the court asked for everything" if b else None}
        return httpx.post(f"{api}/incidents/{pick_incident}/exports", json=body, headers=headers)
    return httpx.post(f"{api}/evidence/{pick_item}/redactions", json={}, headers=headers)


def _export_media(world: World, export_id: str) -> set[str]:
    """The items whose bytes the export's build will read, as its job fixed them."""
    s = world.live.services
    with s.db.session() as session:
        job = session.get(ExportJob, export_id)
        assert job is not None
        scope = json.loads(job.scope)
        items = gather_items(session, scope["item_ids"])
        permission = None
        if job.include_originals:
            from incidents.export.plan import OriginalsPermission

            permission = OriginalsPermission(job.requested_by, job.requester_role, job.reason or "")
        withheld = {"outside": scope["outside"]} if "outside" in scope else {}
        plan = plan_package(items, permission, **withheld)
    return {p.item.id for p in plan if p.include_media}


def test_no_action_reaches_what_its_caller_could_not_see(live: Any) -> None:
    world = _world(live)
    s = live.services

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # the world keeps what each example did: no shrinking
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(who=caller, steps=st.lists(action, min_size=1, max_size=2))
    # The attacks reported, always tried: a second investigator, and another site's manager, opening
    # an incident that follows a wearer they may not see; a manager exporting originals of a copy.
    @example(
        who=("investigator", None, []), steps=[("create", "NORTH", "S-N", True), ("export", 9, False, None)]
    )
    @example(who=("security_manager", "SOUTH", []), steps=[("create", "SOUTH", "S-N", False)])
    @example(who=("investigator", None, [0]), steps=[("patch", 0, "S-S", True), ("link", 0, 1, "alarm")])
    @example(who=("security_manager", "NORTH", []), steps=[("export", 0, True, None)])
    # Another site's alarm linked by a manager; a manager taking another site's wearer (and their
    # footage) into their own site, or another site's device.
    @example(who=("security_manager", "NORTH", []), steps=[("link", 0, 1, "alarm")])
    @example(who=("security_manager", "NORTH", []), steps=[("staff", "S-S", "NORTH", None)])
    @example(who=("security_manager", "SOUTH", []), steps=[("device", "NORTH", "S-S", False)])
    def check(who: tuple[str, str | None, list[int]], steps: list[tuple[Any, ...]]) -> None:
        role, site, assigned = who
        name = f"u{next(_names)}"
        uid = user(s, name, role, site if role == "security_manager" else None)
        with s.db.session() as session:
            incidents = list(session.scalars(select(Incident.id).order_by(Incident.created_at, Incident.id)))
            if role == "investigator":
                for n in assigned:
                    row = session.get(Incident, incidents[n % len(incidents)])
                    assert row is not None
                    assign_investigator(session, s.ledger, row, uid, "user:seed")
        headers = bearer(s, name)
        actor = f"user:{name}"
        for step in steps:
            # Every item stored is read before what the caller sees, so an item a background build
            # or redaction stores between the two reads (the caller's own package from the step
            # before) is not taken for one hidden from them.
            known = _all_items(world)
            before = _visible(world, headers)
            listed = _listed(world, headers)
            hidden = known - before
            snap = _snapshot(world, hidden, actor)
            r = _act(world, headers, step, incidents)
            # No response names an item the caller could not see.
            leaked = {i for i in hidden if i in r.text}
            assert not leaked, (role, site, step, r.status_code, r.text)
            # Nothing new to list, read or stream.
            # (Items made meanwhile, by this action or a background build or redaction, are not
            # items the caller could not see before: only those that existed and were hidden count.)
            after = _visible(world, headers)
            assert not (after & hidden), (role, site, step, after & hidden)
            # No list (alarms, devices, staff) gains a row of another site; no alarm the caller could
            # not see is linked by them.
            gained = _listed(world, headers) - listed
            assert not gained, (role, site, step, gained)
            # No write succeeds on a registry row the caller could not list.
            if step[0] == "device" and f"devices:LW-{step[1]}" not in listed:
                assert r.status_code >= 400, (role, site, step, r.status_code)
            if step[0] == "staff" and f"staff:{step[1]}" not in listed:
                assert r.status_code >= 400, (role, site, step, r.status_code)
            seen_alarms = {x.removeprefix("alarms:") for x in listed if x.startswith("alarms:")}
            unseen = _alarm_links(world, actor) - seen_alarms
            assert not unseen, (role, site, step, unseen)
            if role in MEDIA_ROLES:
                for item in sorted(hidden)[:2]:
                    got = httpx.get(f"{live.url}/api/v1/evidence/{item}/content", headers=headers)
                    assert got.status_code == 404, (role, site, step, item)
            # Nothing of theirs touched: no custody entry by the caller, no lock or hold moved.
            assert _snapshot(world, hidden, actor) == snap, (role, site, step, r.status_code)
            # An export packs no bytes of theirs.
            if step[0] == "export" and r.status_code == 202:
                packed = _export_media(world, r.json()["id"])
                assert not (packed & hidden), (role, site, step, packed & hidden)
            if step[0] == "create" and r.status_code == 201:
                incidents.append(r.json()["id"])

    check()
