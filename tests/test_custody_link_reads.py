"""Readers of incident links take the ledger's word, on both databases and the real store.

What tells someone which incidents a clip belongs to (the search by evidence item, a clip's
incident references, the window audit's "seen elsewhere") counts a link only as custody holds it:
a link row planted or revived by SQL names no incident. What keeps evidence (retention classes,
legal holds on an incident, deleting by hand) counts a link if either the row or the ledger says
so: a link row deleted or ended by SQL lets nothing expire. A subject access search by site takes
in the staff and cameras of that site whose seals hold, not rows moved there by SQL.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, insert, update

from accounts.service import principal_of
from chain_of_custody.models import EvidenceItem
from devices.models import Device, StaffMember
from devices.service import enrol_dock
from incidents.access import hidden_incident_markers
from incidents.export.plan import foreign_markers
from incidents.footage import incident_refs
from incidents.history import history_page
from incidents.models import Incident, IncidentEvent, IncidentLink
from incidents.queries import IncidentFilter, search_incidents
from incidents.retention import (
    RetentionRefused,
    RetentionRules,
    delete_by_hand,
    describe,
    set_legal_hold,
    sweep,
)
from incidents.service import (
    IncidentDraft,
    Retention,
    create_incident,
    link_evidence,
    unlink_evidence,
    update_incident,
)
from incidents.subject_access.service import RequestDraft, Search, candidates, receive_request
from incidents.window_audit import _seen_elsewhere, audit_windows
from tests.conftest import wait_for
from tests.test_incidents_kit import actions, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
DAY = timedelta(days=1)
RULES = RetentionRules(unlinked=31 * DAY, after_closure=90 * DAY)


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


def _incident(services: Any, site: str = "NORTH") -> tuple[str, str]:
    """An incident opened as the service opens one: its id and reference."""
    with services.db.session() as session:
        draft = IncidentDraft(category="theft", occurred_at=T0, site=site, title="Ward 7")
        incident = create_incident(session, draft, "user:seed", ledger=services.ledger)
        return incident.id, incident.reference


def _link(services: Any, incident_id: str, item_id: str) -> None:
    with services.db.session() as session:
        link_evidence(session, services.ledger, incident_id, item_id, "user:seed", "seen on the ward")


def _plant(services: Any, incident_id: str, item_id: str) -> None:
    """A link row written by SQL, with no custody entry."""
    row = {"incident_id": incident_id, "target_kind": "evidence", "target_id": item_id}
    _sql(services, insert(IncidentLink).values(**row, linked_by="user:seed", reason="planted", linked_at=T0))


def _who(services: Any, username: str) -> Any:
    with services.db.session() as session:
        return principal_of(session, f"user:{username}", services.key)


def test_a_link_planted_or_revived_by_sql_names_no_incident_for_the_clip(services: Any) -> None:
    """The clip is linked through the service to one incident; a row planted at another and a row
    revived at a third (unlinked through the service) are not found by the search by evidence item,
    nor listed as the clip's incidents, for an administrator or the service itself."""
    s = services
    staff(s, "N-1", "nurse", "NORTH")
    user(s, "boss", "admin")
    clip = store_item(s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=1))
    (linked, linked_ref), (planted, _), (revived, _) = (_incident(s) for _ in range(3))
    _link(s, linked, clip.id)
    _link(s, revived, clip.id)
    with s.db.session() as session:
        unlink_evidence(session, s.ledger, revived, clip.id, "user:seed", "not this one")
    _plant(s, planted, clip.id)
    _sql(s, update(IncidentLink).where(IncidentLink.incident_id == revived).values(unlinked_at=None))
    admin = _who(s, "boss")
    with s.db.session() as session:
        found = search_incidents(session, admin, IncidentFilter(evidence_id=clip.id), s.key)
        assert [i.id for i in found] == [linked]
        item = session.get(EvidenceItem, clip.id)
        assert item is not None
        assert incident_refs(session, admin, item) == [linked_ref]
        assert incident_refs(session, None, item) == [linked_ref]


def test_a_link_planted_by_sql_is_no_other_way_to_a_windows_clip(services: Any) -> None:
    """The window audit asks whether the window's setter sees a clip without the window's incident:
    a link planted by SQL at another of their incidents is no such way, one made through the
    service is."""
    s = services
    staff(s, "N-1", "nurse", "NORTH")
    user(s, "south_mgr", "security_manager", "SOUTH")
    windowed, other = _incident(s, "SOUTH")[0], _incident(s, "SOUTH")[0]
    planted = store_item(s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=1))
    linked = store_item(s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=1))
    _plant(s, other, planted.id)
    _link(s, other, linked.id)
    manager = _who(s, "south_mgr")
    with s.db.session() as session:
        incident = session.get(Incident, windowed)
        assert incident is not None
        assert _seen_elsewhere(session, manager, incident, [planted.id, linked.id]) == {linked.id}


def _stored(services: Any, item_id: str) -> bool:
    with services.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        return item is not None and item.status == "stored"


def test_a_link_deleted_or_ended_by_sql_lets_nothing_expire(services: Any) -> None:
    """Two clips linked through the service to an open incident, one's link row deleted by SQL and
    the other's marked unlinked: both stay of the ``open_incident`` class, the sweeper keeps them
    past their class's date and their short object lock, and neither may be deleted by hand."""
    s = services
    t0 = datetime.now(UTC)
    deleted, ended = (store_item(s, wearer="S-1", start=t0, stop=t0, lock=timedelta(seconds=4)) for _ in "ab")
    incident, _ = _incident(s)
    _link(s, incident, deleted.id)
    _link(s, incident, ended.id)
    _sql(s, delete(IncidentLink).where(IncidentLink.target_id == deleted.id))
    _sql(s, update(IncidentLink).where(IncidentLink.target_id == ended.id).values(unlinked_at=t0))
    day31 = t0 + 31 * DAY + timedelta(seconds=1)
    with s.db.session() as session:
        for clip in (deleted, ended):
            item = session.get(EvidenceItem, clip.id)
            assert item is not None
            assert describe(session, item, RULES, day31)["class"] == "open_incident", clip.id
    lock_ends = max(c.retain_until for c in (deleted, ended) if c.retain_until)
    wait_for(lambda: datetime.now(UTC) > lock_ends + timedelta(seconds=1), 30, 0.2, "the short lock to pass")
    report = sweep(s.db, s.ledger, s.store, RULES, lambda: day31)
    assert report.deleted == [], report
    for clip in (deleted, ended):
        assert _stored(s, clip.id) and "deleted" not in actions(s, clip.id)
        with s.db.session() as session, pytest.raises(RetentionRefused, match="linked"):
            delete_by_hand(session, s.ledger, s.store, clip.id, "user:admin", "recorded by mistake", day31)


def _row_deleted(services: Any) -> tuple[EvidenceItem, str]:
    """A clip linked through the service to an open incident, its link row then deleted by SQL."""
    clip = store_item(services, wearer="S-1", start=datetime.now(UTC), stop=datetime.now(UTC))
    incident, _ = _incident(services)
    _link(services, incident, clip.id)
    _sql(services, delete(IncidentLink).where(IncidentLink.target_id == clip.id))
    return clip, incident


def test_a_hold_on_an_incident_holds_a_clip_whose_link_row_was_deleted(services: Any) -> None:
    """The hold covers every item the ledger links to the incident, not only those with a row."""
    s, t0 = services, datetime.now(UTC)
    clip, incident = _row_deleted(s)
    with s.db.session() as session:
        set_legal_hold(session, s.ledger, s.store, RULES, "incident", incident, True, "court", "user:m", t0)
    assert s.store.info(clip.object_key, clip.version_id).legal_hold
    assert actions(s, clip.id)[-1] == "legal_hold"


def test_a_link_planted_by_sql_keeps_the_clip_and_shows_it_to_nobody(services: Any) -> None:
    """The other direction: a planted row keeps a clip longer (losing no evidence), but neither
    the search by evidence item nor the clip's references name the incident it was planted at."""
    s = services
    user(s, "boss", "admin")
    t0 = datetime.now(UTC)
    clip = store_item(s, wearer="S-1", start=t0, stop=t0)
    incident, _ = _incident(s)
    _plant(s, incident, clip.id)
    admin = _who(s, "boss")
    with s.db.session() as session:
        item = session.get(EvidenceItem, clip.id)
        assert item is not None
        assert describe(session, item, RULES, t0 + 31 * DAY)["class"] == "open_incident"
        assert search_incidents(session, admin, IncidentFilter(evidence_id=clip.id), s.key) == []
        assert incident_refs(session, admin, item) == []


def test_a_subject_access_search_by_site_takes_in_no_row_moved_there_by_sql(services: Any) -> None:
    """A NORTH nurse's clip and a NORTH dock's clip: with the nurse and the dock moved to SOUTH by
    SQL, an administrator's search of SOUTH's footage finds neither (their rows' seals do not hold
    there); SOUTH's own nurse's clip is found."""
    s = services
    staff(s, "N-1", "nurse", "NORTH")
    staff(s, "S-1", "nurse", "SOUTH")
    user(s, "boss", "admin")
    with s.db.session() as session:
        enrol_dock(session, s.ledger, "DOCK-N", "user:admin", site="NORTH")
    worn = store_item(s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=1))
    docked = store_item(s, start=T0, stop=T0 + timedelta(minutes=1), device="DOCK-N")
    own = store_item(s, wearer="S-1", start=T0, stop=T0 + timedelta(minutes=1))
    _sql(s, update(StaffMember).where(StaffMember.id == "N-1").values(site="SOUTH"))
    _sql(s, update(Device).where(Device.id == "DOCK-N").values(site="SOUTH"))
    admin = _who(s, "boss")
    everywhere = Search(T0 - timedelta(minutes=5), T0 + timedelta(minutes=5))
    window = Search(everywhere.start, everywhere.end, site="SOUTH")
    with s.db.session() as session:
        draft = RequestDraft("Alex Smith", "alex@example.org", date(2026, 3, 5), "SOUTH")
        sar = receive_request(session, s.ledger, admin, draft)
        assert [i.id for i in candidates(session, s.ledger, admin, sar, window)] == [own.id]
        assert {worn.id, docked.id} <= {i.id for i in candidates(session, s.ledger, admin, sar, everywhere)}


def test_a_link_row_deleted_by_sql_still_marks_the_other_incidents_entries(services: Any) -> None:
    """A NORTH nurse's clip linked to a SOUTH incident and a NORTH one, the NORTH link's row deleted
    by SQL: the NORTH incident's id and reference still mark its entries as not the SOUTH manager's
    to read, and as another incident's in the SOUTH incident's export package."""
    s = services
    staff(s, "N-1", "nurse", "NORTH")
    user(s, "south_mgr", "security_manager", "SOUTH")
    (own, _), (other, other_ref) = _incident(s, "SOUTH"), _incident(s, "NORTH")
    clip = store_item(s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=1))
    _link(s, own, clip.id)
    _link(s, other, clip.id)
    _sql(s, delete(IncidentLink).where(IncidentLink.incident_id == other))
    manager = _who(s, "south_mgr")
    with s.db.session() as session:
        assert {other, other_ref} <= hidden_incident_markers(session, manager, [clip.id])
        assert {other, other_ref} <= foreign_markers(session, [clip.id], own)


def test_closing_an_incident_extends_the_lock_of_a_clip_whose_link_row_was_deleted(services: Any) -> None:
    """Closing re-applies retention to every clip the incident keeps: one whose link row was deleted
    by SQL gets its lock extended to the period after closure as well."""
    s, t0 = services, datetime.now(UTC)
    clip, incident = _row_deleted(s)
    closed = t0 + 10 * DAY
    with s.db.session() as session:
        row = session.get(Incident, incident)
        assert row is not None
        change = {"status": "closed", "outcome": "no further action"}
        update_incident(
            session, s.ledger, row, change, "user:m", retention=Retention(s.store, RULES), now=closed
        )
    lock = s.store.info(clip.object_key, clip.version_id).retain_until
    assert lock is not None and lock >= closed + RULES.after_closure
    assert actions(s, clip.id)[-1] == "retention_changed"


def test_linking_over_a_row_planted_by_sql_is_refused_not_reported_linked(live: Any) -> None:
    """An administrator links a clip to an incident at which a link row was planted by SQL: the
    service does not answer the planted row (its author and reason) as the link, it says the row
    is on no custody entry."""
    s = live.services
    clip = store_item(s, wearer="S-1", start=T0, stop=T0 + timedelta(minutes=1))
    incident, _ = _incident(s)
    _plant(s, incident, clip.id)
    body = {"kind": "evidence", "target_id": clip.id, "reason": "seen on the ward, linked by hand"}
    r = httpx.post(f"{live.url}/api/v1/incidents/{incident}/links", json=body, headers=live.admin())
    assert r.status_code == 409 and r.json()["reason"] == "link_unrecorded", r.text


def test_a_history_event_planted_by_sql_does_not_pass_a_window_off_as_an_administrators(
    services: Any,
) -> None:
    """A window set by someone who no longer signs in is listed by the window audit; an ``updated``
    event planted in its history naming an administrator as its setter does not hide it."""
    s = services
    staff(s, "S-N", "nurse", "NORTH")
    user(s, "boss", "admin")
    window = {"wearer": "S-N", "window_start": T0 - timedelta(hours=1), "window_end": T0 + timedelta(hours=1)}
    with s.db.session() as session:
        draft = IncidentDraft(category="theft", occurred_at=T0, site="NORTH", title="Ward 7", **window)
        incident = create_incident(session, draft, "user:gone", ledger=s.ledger).id
    with s.db.session() as session:
        assert [f.incident_id for f in audit_windows(session, s.key)] == [incident]
    event = {"kind": "updated", "actor": "user:boss", "at": T0 + timedelta(days=1)}
    details = '{"changes": {"wearer": "S-N"}}'
    _sql(s, insert(IncidentEvent).values(incident_id=incident, details=details, **event))
    with s.db.session() as session:
        found = audit_windows(session, s.key)
        assert [(f.incident_id, f.set_by) for f in found] == [(incident, "user:gone")], found


def test_a_link_row_planted_by_sql_brings_no_custody_into_an_incidents_history(services: Any) -> None:
    """A clip linked through the service to one incident, a row planted for it at another: the
    other's history (an administrator's) carries none of the clip's custody lines."""
    s = services
    user(s, "boss", "admin")
    clip = store_item(s, wearer="S-1", start=T0, stop=T0 + timedelta(minutes=1))
    (linked, _), (planted, _) = _incident(s), _incident(s)
    _link(s, linked, clip.id)
    _plant(s, planted, clip.id)
    admin = _who(s, "boss")
    with s.db.session() as session:
        for incident_id, shown in ((linked, True), (planted, False)):
            incident = session.get(Incident, incident_id)
            assert incident is not None
            page = history_page(session, admin, incident, "", 200, key=s.key)
            custody = [
                r for r in page.rows if r.get("item_id") == clip.id or clip.id in json.dumps(r, default=str)
            ]
            assert bool(custody) is shown, (incident_id, page.rows)
