"""No indirect path to evidence, on both databases: a write (a footage window, a link, an alarm link,
an export) never reaches an item its caller could not already see, nor extends that item's retention.

The attack reported: a second investigator (and a security manager of another site) opened an
incident naming another investigator's wearer and a time window; the wearer's clips were linked to
it, so they could stream the original, read its redactions, export it and extend its lock."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import httpx

from chain_of_custody.models import EvidenceItem
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.conftest import wait_for
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import actions, bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _world(live: Any) -> tuple[Any, dict[str, int], dict[str, dict[str, str]], str, Any]:
    s = live.services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-S", "porter", "SOUTH")
    ids = {
        name: user(s, name, role, site)
        for name, role, site in (
            ("north_mgr", "security_manager", "NORTH"),
            ("south_mgr", "security_manager", "SOUTH"),
            ("inv", "investigator", None),
            ("other_inv", "investigator", None),
        )
    }
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=5))
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH", title="Ward 7"),
            "user:north_mgr",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, ids["inv"], "user:north_mgr")
        link_evidence(session, s.ledger, incident.id, clip.id, "user:north_mgr", "the assault")
        ref = incident.reference
    return s, ids, {n: bearer(s, n) for n in ids}, ref, clip


def _window(site: str, **extra: object) -> dict[str, object]:
    return {
        "category": "physical_assault",
        "occurred_at": T0.isoformat(),
        "site": site,
        "wearer": "S-N",
        "window_start": (T0 - timedelta(hours=1)).isoformat(),
        "window_end": (T0 + timedelta(hours=1)).isoformat(),
        **extra,
    }


def _retain_until(s: Any, item_id: str) -> datetime | None:
    with s.db.session() as session:
        row = session.get(EvidenceItem, item_id)
        assert row is not None
        return row.retain_until


def test_a_footage_window_reaches_only_what_its_caller_may_see(live: Any) -> None:
    s, ids, h, ref, clip = _world(live)
    api = f"{live.url}/api/v1"
    before_actions, before_lock = actions(s, clip.id), _retain_until(s, clip.id)
    # Creating an incident that follows someone else's wearer is refused, for both attackers.
    for who, site in (("other_inv", "NORTH"), ("south_mgr", "SOUTH")):
        r = httpx.post(f"{api}/incidents", json=_window(site), headers=h[who])
        assert r.status_code == 403, (who, r.text)
        assert r.json()["reason"] == "wearer_out_of_scope"
    # Nor can an incident of their own be changed to follow it (wearer, or the window of one set).
    own = httpx.post(
        f"{api}/incidents",
        json={"category": "theft", "occurred_at": T0.isoformat(), "site": "NORTH"},
        headers=h["other_inv"],
    ).json()
    for change in (
        {"wearer": "S-N"},
        {k: v for k, v in _window("NORTH").items() if k in ("wearer", "window_start", "window_end")},
    ):
        r = httpx.patch(f"{api}/incidents/{own['id']}", json=change, headers=h["other_inv"])
        assert r.status_code == 403 and r.json()["reason"] == "wearer_out_of_scope", r.text
    # Nothing reached the clip: no link, no new lock, no stream, no redactions, no export.
    assert actions(s, clip.id) == before_actions
    assert _retain_until(s, clip.id) == before_lock
    for who in ("other_inv", "south_mgr"):
        for suffix in ("", "/content", "/custody", "/redactions"):
            assert httpx.get(f"{api}/evidence/{clip.id}{suffix}", headers=h[who]).status_code == 404
    got = httpx.get(f"{api}/incidents/{own['id']}", headers=h["other_inv"]).json()
    assert got["wearer"] is None and got["links"] == []
    # The wearer's own site's manager may follow the wearer: the clip is linked for them.
    r = httpx.post(f"{api}/incidents", json=_window("NORTH"), headers=h["north_mgr"])
    assert r.status_code == 201, r.text
    assert [link["target_id"] for link in r.json()["links"]] == [clip.id]


def test_an_alarm_link_needs_a_role_that_reads_alarms(live: Any) -> None:
    s, ids, h, ref, clip = _world(live)
    api = f"{live.url}/api/v1"
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        json={"kind": "alarm", "target_id": clip.id, "reason": "the alarm of it"},
        headers=h["inv"],
    )
    assert r.status_code == 403 and r.json()["reason"] == "alarm_out_of_scope", r.text
    # A real alarm of the manager's site (an id that names no alarm of theirs is refused as unknown).
    alarm = raise_test_alarm(s, "LW-NORTH", site="NORTH")
    r = httpx.post(
        f"{api}/incidents/{ref}/links",
        json={"kind": "alarm", "target_id": alarm, "reason": "the alarm of it"},
        headers=h["north_mgr"],
    )
    assert r.status_code == 201, r.text


def test_an_export_packs_only_what_its_requester_may_see(live: Any) -> None:
    """A redacted copy linked to a NORTH incident is the north manager's to see; its original (worn at
    SOUTH) is not: exported with originals, the original's bytes stay out and so does its custody."""
    s, ids, h, ref, clip = _world(live)
    api = f"{live.url}/api/v1"
    marker = b"SOUTH-ORIGINAL-" + b"x" * 4096
    original = store_item(s, wearer="S-S", start=T0, stop=T0 + timedelta(minutes=1), data=marker)
    redacted = store_item(s, kind="redacted_clip", derived_from=original.id)
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH", title="copy"),
            "user:admin",
            ledger=s.ledger,
        )
        link_evidence(session, s.ledger, incident.id, redacted.id, "user:admin", "the copy we were given")
        incident_id = incident.id
    assert httpx.get(f"{api}/evidence/{original.id}", headers=h["north_mgr"]).status_code == 404
    before = _retain_until(s, original.id)
    r = httpx.post(
        f"{api}/incidents/{incident_id}/exports",
        json={"include_originals": True, "reason": "the court asked for the originals"},
        headers=h["north_mgr"],
    )
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]

    def ready() -> dict[str, object] | None:
        body = httpx.get(f"{api}/exports/{export_id}", headers=h["north_mgr"]).json()
        assert body["status"] != "failed", body
        return body if body["status"] == "ready" else None

    job = wait_for(ready, 60, 0.1, "the export to be ready")
    assert redacted.id in job["included"] and original.id not in job["included"]
    assert "outside" in job["withheld"][original.id]
    link = httpx.post(
        f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=h["north_mgr"]
    ).json()
    package = httpx.get(f"{live.url}{link['path']}").content
    assert marker not in package
    with zipfile.ZipFile(BytesIO(package)) as z:
        custody = z.read(f"custody/{original.id}.json").decode()
        assert "S-S" not in custody
    assert _retain_until(s, original.id) == before


def test_a_custody_trail_and_retention_name_only_incidents_the_caller_may_see(live: Any) -> None:
    """The clip is linked to a second incident with a free-text reason the investigator of the first
    may not read: their view of its custody keeps that entry's place and hash, not its content."""
    s, ids, h, ref, clip = _world(live)
    api = f"{live.url}/api/v1"
    secret = "informant in bay 4 names the porter"
    with s.db.session() as session:
        other = create_incident(
            session,
            IncidentDraft(category="theft", occurred_at=T0, site="SOUTH", title="other"),
            "user:admin",
            ledger=s.ledger,
        )
        link_evidence(session, s.ledger, other.id, clip.id, "user:admin", secret)
        other_ref, other_id = other.reference, other.id
    for path in ("custody", "retention"):
        seen = httpx.get(f"{api}/evidence/{clip.id}/{path}", headers=h["inv"])
        assert seen.status_code == 200, seen.text
        for needle in (secret, other_ref, other_id):
            assert needle not in seen.text, (path, needle)
        assert ref in seen.text  # their own incident is named
        whole = httpx.get(f"{api}/evidence/{clip.id}/{path}", headers=live.admin())
        assert other_ref in whole.text
    trail = httpx.get(f"{api}/evidence/{clip.id}/custody", headers=h["inv"]).json()
    full = httpx.get(f"{api}/evidence/{clip.id}/custody", headers=live.admin()).json()
    assert [e["entry_hash"] for e in trail] == [e["entry_hash"] for e in full]
    assert any(e["withheld"] for e in trail)


def test_an_alarm_records_custody_names_no_incident_to_the_control_room(live: Any) -> None:
    """The alarm record (the control room's view) shows its items' custody: operators see no incident
    at all, so a link's entry keeps its place and hash there but not the incident or its reason."""
    from accounts.service import Principal
    from alarms.records import item_record

    s, ids, h, ref, clip = _world(live)
    operator = Principal(user_id=0, username="op", role="operator", site=None)
    with s.db.session() as session:
        seen = item_record(session, clip.id, operator)
        whole = item_record(session, clip.id)
    assert seen is not None and whole is not None
    assert ref not in str(seen.custody) and "the assault" not in str(seen.custody)
    assert ref in str(whole.custody)
    assert [e["entry_hash"] for e in seen.custody] == [e["entry_hash"] for e in whole.custody]
