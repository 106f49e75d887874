"""What an incident reaches besides what its caller links by hand, on both databases:

- a manual alarm link is refused, like a missing alarm, for an alarm of a site the caller does not
  see, and for an id that is no alarm at all (an evidence item linked "as an alarm" would be packed
  into the incident's exports);
- a footage window stops following a wearer who moves to another site: their footage there is not
  linked to the old site's incident, neither as it arrives nor when the window is changed;
- ``evidence incident-windows`` lists the windows set before the rule (by someone who may not see
  all of the wearer's footage) or following a wearer to another site, and the links they made
  beyond their reach; with ``--apply`` it withdraws them, each step on the custody ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents.identity import incident_sealed
from incidents.models import Incident, IncidentLink
from incidents.service import (
    IncidentDraft,
    assign_investigator,
    auto_link_clip,
    create_incident,
    link_evidence,
    link_overlapping_clips,
)
from ingest.cli import app
from ingest.settings import get_settings
from tests.conftest import settings_env, wait_for
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import actions, bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _links(services: Any, incident_id: str) -> set[tuple[str, str]]:
    with services.db.session() as session:
        return {
            (k, t)
            for k, t in session.execute(
                select(IncidentLink.target_kind, IncidentLink.target_id).where(
                    IncidentLink.incident_id == incident_id, IncidentLink.unlinked_at.is_(None)
                )
            )
        }


def _json(output: str) -> Any:
    """The command's JSON document, past any log lines the runner mixed in."""
    start = output.index("{") if output.startswith("{") else output.index("\n{") + 1
    return json.loads(output[start : output.rindex("}") + 1])


def _incident(services: Any, site: str, actor: str = "user:seed", **window: Any) -> str:
    with services.db.session() as session:
        return create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site=site, title="Ward 7", **window),
            actor,
            ledger=services.ledger,
        ).id


def test_a_manager_links_only_an_alarm_of_their_own_site(live: Any) -> None:
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    headers = bearer(s, "north_mgr")
    north = raise_test_alarm(s, "LW-NORTH", site="NORTH")
    south = raise_test_alarm(s, "LW-SOUTH", site="SOUTH")
    staff(s, "S-S", "porter", "SOUTH")
    south_clip = store_item(s, wearer="S-S", start=T0, stop=T0 + timedelta(minutes=2))
    incident = _incident(s, "NORTH")
    url = f"{live.url}/api/v1/incidents/{incident}/links"

    def link(target: str) -> httpx.Response:
        return httpx.post(
            url, json={"kind": "alarm", "target_id": target, "reason": "raised nearby"}, headers=headers
        )

    for target in (south, south_clip.id, "no-such-alarm"):
        r = link(target)
        assert r.status_code == 404 and r.json()["reason"] == "unknown_alarm", (target, r.text)
    assert link(north).status_code == 201
    assert _links(s, incident) == {("alarm", north)}


def test_a_window_does_not_follow_a_wearer_to_another_site(live: Any) -> None:
    s = live.services
    staff(s, "S-M", "nurse", "NORTH")
    user(s, "north_mgr", "security_manager", "NORTH")
    manager, admin = bearer(s, "north_mgr"), live.admin()
    api = f"{live.url}/api/v1"
    before = store_item(s, wearer="S-M", start=T0, stop=T0 + timedelta(minutes=2))
    window = {
        "wearer": "S-M",
        "window_start": (T0 - timedelta(hours=1)).isoformat(),
        "window_end": (T0 + timedelta(days=30)).isoformat(),
    }
    body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "NORTH", **window}
    r = httpx.post(f"{api}/incidents", json=body, headers=manager)
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    assert _links(s, incident) == {("evidence", before.id)}
    # The wearer moves to SOUTH; their footage there arrives, still inside the window.
    moved = {"id": "S-M", "name": "Staff S-M", "group": "nurse", "site": "SOUTH"}
    assert httpx.post(f"{api}/staff", json=moved, headers=admin).status_code == 201
    after = store_item(s, wearer="S-M", start=T0 + timedelta(days=2), stop=T0 + timedelta(days=2, minutes=1))
    with s.db.session() as session:
        item = session.get(EvidenceItem, after.id)
        assert item is not None
        assert auto_link_clip(session, s.ledger, item) == []
    # Nor when an administrator widens the window afterwards.
    wider = {"window_end": (T0 + timedelta(days=60)).isoformat()}
    assert httpx.patch(f"{api}/incidents/{incident}", json=wider, headers=admin).status_code == 200
    assert _links(s, incident) == {("evidence", before.id)}
    assert httpx.get(f"{api}/evidence/{after.id}", headers=manager).status_code == 404
    assert "linked" not in actions(s, after.id)
    # The footage of the site where it was recorded stays there.
    user(s, "south_mgr", "security_manager", "SOUTH")
    assert httpx.get(f"{api}/evidence/{after.id}", headers=bearer(s, "south_mgr")).status_code == 200


def test_the_window_audit_lists_and_withdraws_windows_set_before_the_rule(
    services: Any, tmp_path: Any
) -> None:
    s = services
    staff(s, "S-N", "nurse", "NORTH")
    owner, snoop = user(s, "owner_inv", "investigator"), user(s, "snoop_inv", "investigator")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=2))
    # The owner's incident holds the clip; the other investigator's window (set before the rule, as
    # the service itself would: no caller checked) linked it to theirs too.
    owned = _incident(s, "NORTH")
    window = {"wearer": "S-N", "window_start": T0 - timedelta(hours=1), "window_end": T0 + timedelta(hours=1)}
    user(s, "north_admin", "admin")
    old = _incident(s, "NORTH", "user:snoop_inv", **window)
    fine = _incident(s, "NORTH", "user:north_admin", **window)
    with s.db.session() as session:
        for incident_id, investigator in ((owned, owner), (old, snoop)):
            row = session.get(Incident, incident_id)
            assert row is not None
            assign_investigator(session, s.ledger, row, investigator, "user:seed")
        link_evidence(session, s.ledger, owned, clip.id, "user:seed", "the owner's clip")
        snooped = session.get(Incident, old)
        assert snooped is not None
        link_overlapping_clips(session, s.ledger, snooped, snooped.opened_by)
        reference = session.get(Incident, old).reference  # type: ignore[union-attr]
    assert ("evidence", clip.id) in _links(s, old)
    env = settings_env(s.settings)
    runner = CliRunner()
    get_settings.cache_clear()  # the command reads this test's settings, not an earlier test's
    listed = runner.invoke(app, ["incident-windows", "--json"], env=env)
    assert listed.exit_code == 1, listed.output
    found = _json(listed.output)["windows"]
    assert [f["incident"] for f in found] == [reference], found
    assert found[0]["set_by"] == "user:snoop_inv" and found[0]["links_beyond_reach"] == [clip.id]
    assert ("evidence", clip.id) in _links(s, old)  # listing changes nothing
    applied = runner.invoke(app, ["incident-windows", "--apply", "--json"], env=env)
    assert applied.exit_code == 0, applied.output
    assert _links(s, old) == set()
    with s.db.session() as session:
        row = session.get(Incident, old)
        assert row is not None and row.wearer is None and row.window_start is None
        assert incident_sealed(
            session, row, s.key
        )  # the service's own write: its site's managers still read it
        kept = session.get(Incident, fine)
        assert kept is not None and kept.wearer == "S-N"  # an administrator's window stands
        withdrawn = session.scalars(
            select(CustodyEntry.details).where(
                CustodyEntry.action == "unlinked", CustodyEntry.actor == "service:window-audit"
            )
        ).all()
    assert "unlinked" in actions(s, clip.id)
    assert ("evidence", clip.id) in _links(s, owned)  # the owner's own link stands
    assert any(reference in d and "window_withdrawn" in d for d in withdrawn), withdrawn
    again = runner.invoke(app, ["incident-windows", "--json"], env=env)
    assert again.exit_code == 0 and _json(again.output)["windows"] == []


def test_a_package_is_handed_out_only_by_someone_who_may_see_all_it_holds(live: Any) -> None:
    """An administrator's package of a NORTH incident holds the original of a linked redacted copy;
    the incident's investigator sees the copy only (and may not export originals): they may not issue
    a download link for it, which would hand them (and anyone) the original."""
    s = live.services
    api = f"{live.url}/api/v1"
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv", "investigator")
    marker = b"THE-ORIGINAL-" + b"x" * 4096
    original = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1), data=marker)
    redacted = store_item(s, kind="redacted_clip", derived_from=original.id)
    incident = _incident(s, "NORTH")
    with s.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        assign_investigator(session, s.ledger, row, inv, "user:seed")
    admin, investigator = live.admin(), bearer(s, "inv")
    link = {"kind": "evidence", "target_id": redacted.id, "reason": "the copy we were given"}
    assert httpx.post(f"{api}/incidents/{incident}/links", json=link, headers=admin).status_code == 201
    assert httpx.get(f"{api}/evidence/{original.id}", headers=investigator).status_code == 404
    body = {"include_originals": True, "reason": "the court asked for the originals"}
    r = httpx.post(f"{api}/incidents/{incident}/exports", json=body, headers=admin)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]

    def ready() -> bool:
        got = httpx.get(f"{api}/exports/{export_id}", headers=admin).json()
        assert got["status"] != "failed", got
        return bool(got["status"] == "ready")

    wait_for(ready, 60, 0.1, "the export to be ready")
    about = httpx.get(f"{api}/exports/{export_id}", headers=investigator)
    assert about.status_code == 200 and original.id not in about.text  # nor is it named to them
    refused = httpx.post(
        f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=investigator
    )
    assert refused.status_code == 403, refused.text
    handed = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=admin)
    assert handed.status_code == 201
    assert marker in httpx.get(f"{live.url}{handed.json()['path']}").content  # it does hold the original
