"""An incident's seal is bound to the latest ``incident_changed`` entry on its keyed subject, on both
databases: a copy of the row taken before a later change, put back with the seal that fitted then
(an incident moved from NORTH to SOUTH, put back at NORTH), reaches none of NORTH's managers, links
nothing, is not laundered by a later window edit, an alarm joining it or the upgrade, and ``evidence
verify`` names it; a window the audit withdraws is recorded on custody; incidents under the seal
made before seals were bound await ``evidence upgrade-seals``, which adopts those custody bears out."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.backfill import backfill
from chain_of_custody.incident_seals import incident_seal_v1, incident_subject
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.window_replay import window_record, window_replay
from incidents.models import Incident
from incidents.service import (
    auto_link_clip,
    link_overlapping_clips,
    update_incident,
)
from incidents.window_audit import AUDITOR_ACTOR, WindowFinding, withdraw
from tests.test_incident_seals import T0, WINDOW, _cli, _incident, _links, _sql, alarm_for
from tests.test_incidents_kit import bearer, plant_incident, staff, store_item, user

SEALED = ("site", "wearer", "window_start", "window_end", "seal")


def _row(services: Any, incident_id: str) -> dict[str, Any]:
    """The columns an incident's seal covers, and its seal, as they stand."""
    with services.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        return {name: getattr(row, name) for name in SEALED}


def _put_back(services: Any, incident_id: str, copy: dict[str, Any]) -> None:
    _sql(services, update(Incident).where(Incident.id == incident_id).values(**copy))


def _moved_and_put_back(services: Any, **fields: Any) -> str:
    """A NORTH incident moved to SOUTH through the service, its NORTH row (and seal) put back by SQL."""
    incident = _incident(services, **fields)
    copy = _row(services, incident)
    with services.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        update_incident(session, services.ledger, row, {"site": "SOUTH"}, "user:admin")
    _put_back(services, incident, copy)
    return incident


def _listed(live: Any, username: str) -> set[str]:
    r = httpx.get(f"{live.url}/api/v1/incidents", headers=bearer(live.services, username))
    assert r.status_code == 200, r.text
    return {i["id"] for i in r.json()}


def test_a_row_put_back_with_its_old_seal_reaches_none_of_the_old_sites_managers(live: Any) -> None:
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    kept = _incident(s)  # the control: a NORTH incident as the service left it
    incident = _moved_and_put_back(s)
    assert kept in _listed(live, "north_mgr")
    assert incident not in _listed(live, "north_mgr")
    one = httpx.get(f"{live.url}/api/v1/incidents/{incident}", headers=bearer(s, "north_mgr"))
    assert one.status_code == 404, one.text
    r = _cli(s, "verify", "--json")
    assert r.exit_code != 0
    assert "incident_seal_broken" in r.output and f"incident {incident}" in r.output, r.output
    assert f"incident {kept}" not in r.output


def test_a_window_edit_of_a_row_put_back_is_refused_and_seals_nothing(live: Any) -> None:
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    incident = _moved_and_put_back(s)
    body = {"window_start": T0.isoformat(), "window_end": (T0 + timedelta(hours=1)).isoformat()}
    r = httpx.patch(f"{live.url}/api/v1/incidents/{incident}", json=body, headers=live.admin())
    assert r.status_code == 409 and r.json()["reason"] == "incident_seal_broken", r.text
    assert incident not in _listed(live, "north_mgr")


def test_a_window_put_back_links_nothing_and_no_alarm_joins_it(services: Any) -> None:
    """The window the incident had before an administrator cleared it, put back with its seal."""
    staff(services, "S-N", "nurse", "NORTH")
    incident = _incident(services, "NORTH", **WINDOW)
    copy = _row(services, incident)
    with services.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        cleared = {"wearer": None, "window_start": None, "window_end": None}
        update_incident(session, services.ledger, row, cleared, "user:admin")
    _put_back(services, incident, copy)
    clip = store_item(services, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=2))
    assert _links(services, incident) == set()
    with services.db.session() as session:
        item = session.get(EvidenceItem, clip.id)
        row = session.get(Incident, incident)
        assert item is not None and row is not None
        assert auto_link_clip(session, services.ledger, item) == []
        assert link_overlapping_clips(session, services.ledger, row, "service:test") == []
    before = _row(services, incident)
    joined_id, opened = alarm_for(services, "S-N")
    assert opened and joined_id != incident
    assert _row(services, incident) == before  # not sealed again by the join
    assert _links(services, incident) == set()


def test_the_window_audit_records_the_withdrawn_window_on_custody(services: Any) -> None:
    staff(services, "S-N", "nurse", "NORTH")
    incident = _incident(services, "NORTH", **WINDOW)
    with services.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        finding = WindowFinding(incident, row.reference, "NORTH", "S-N", "user:gone", ["set by user:gone"])
        withdraw(session, services.ledger, finding)
    with services.db.session() as session:
        entries = services.ledger.all_entries(session)
        assert window_replay(entries)[incident][1] == window_record(None, None, None)
        subject = incident_subject(reach_secret(services.key), incident)
        last = session.scalar(
            select(CustodyEntry).where(CustodyEntry.item_id == subject).order_by(CustodyEntry.seq.desc())
        )
        assert last is not None and last.actor == AUDITOR_ACTOR and last.action == "incident_changed"
    r = _cli(services, "verify", "--json")
    assert "incident_window_altered" not in r.output and f"incident {incident}" not in r.output, r.output


def _v1(services: Any, incident_id: str) -> str:
    """The seal the row would have had before seals were bound to custody."""
    row = _row(services, incident_id)
    secret = reach_secret(services.key)
    return incident_seal_v1(
        secret, incident_id, row["site"], row["wearer"], row["window_start"], row["window_end"]
    )


def test_incidents_under_the_unbound_seal_await_the_upgrade_which_adopts_those_custody_bears_out(
    live: Any,
) -> None:
    """Incidents sealed before seals were bound to custody (their ``incident_changed`` entries on no
    subject) reach nobody and are counted as awaiting; the upgrade seals the one custody bears out,
    bound to a new entry, and refuses one moved in the database."""
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    agreed, moved = plant_incident(s), plant_incident(s)
    with s.db.session() as session:  # their sites recorded on no subject, as before seals were bound
        backfill(session, s.ledger, apply=True)
    _sql(s, update(Incident).where(Incident.id == moved).values(site="SOUTH"))
    for incident in (agreed, moved):
        _put_back(s, incident, {"seal": _v1(s, incident)})
    assert not {agreed, moved} & _listed(live, "north_mgr")
    with s.db.session() as session:
        assert awaiting_upgrade(session, s.key).counts["incidents"] == 2
    done = _cli(s, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output  # the moved one is refused
    assert f"incident {moved}" in done.output and "REFUSED" in done.output, done.output
    assert agreed in _listed(live, "north_mgr")
    with s.db.session() as session:
        assert awaiting_upgrade(session, s.key).counts["incidents"] == 1  # the refused one
        subject = incident_subject(reach_secret(s.key), agreed)
        details = session.scalar(select(CustodyEntry.details).where(CustodyEntry.item_id == subject))
        assert details is not None and json.loads(details)["site"] == "NORTH"


def test_the_upgrade_does_not_adopt_an_unbound_copy_put_back_from_before_a_move(live: Any) -> None:
    """A copy of the row from before the move, put back under the seal made before seals were bound
    (as a deployment before this version had it), is not adopted: custody records the move."""
    s = live.services
    user(s, "north_mgr", "security_manager", "NORTH")
    incident = _incident(s)
    copy = {**_row(s, incident), "seal": _v1(s, incident)}
    with s.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        update_incident(session, s.ledger, row, {"site": "SOUTH"}, "user:admin")
    _put_back(s, incident, copy)
    assert incident not in _listed(live, "north_mgr")
    r = _cli(s, "upgrade-seals", "--yes")
    assert f"incident {incident}" in r.output and "REFUSED" in r.output, r.output
    assert incident not in _listed(live, "north_mgr")
    assert "incident_site_altered" in _cli(s, "verify", "--json").output
