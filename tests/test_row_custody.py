"""Rows that widen access or keep evidence (incident links, legal holds, users' roles and sites,
download links) are checked against the custody ledger, on both databases and the real store.

Someone with write access to the database can plant a link to another investigator's footage,
delete a legal hold so footage expires, or give themselves a role: ``evidence verify`` names each,
and a planted link grants nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
from argon2 import PasswordHasher
from sqlalchemy import delete, insert, select, update

from accounts.models import User
from chain_of_custody.entries import EntryBody, SignedEntry
from chain_of_custody.incident_seals import seal_incidents
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.reach_seals import SiteReach, reach_secret, site_reach
from chain_of_custody.row_replay import (
    AssignmentRow,
    DownloadLinkRow,
    ExportJobRow,
    HoldRow,
    LinkRow,
    UserRow,
    assignment_findings,
    assignment_replay,
    download_link_findings,
    download_link_replay,
    export_job_findings,
    export_replay,
    export_request_details,
    export_request_findings,
    export_request_replay,
    hold_findings,
    hold_replay,
    incident_site_findings,
    incident_site_replay,
    incidents_unchecked,
    link_findings,
    link_replay,
    password_digest,
    passwords_unchecked,
    user_findings,
    user_replay,
)
from chain_of_custody.verify import verify_service
from incidents.export.jobs import ExportBuilds, record_request
from incidents.export.models import ExportJob, ExportLink
from incidents.grants import sealed_assignment_ids
from incidents.models import Incident, IncidentAssignment, IncidentLink, LegalHold
from incidents.retention import RetentionRules, set_legal_hold
from incidents.service import (
    IncidentDraft,
    assign_investigator,
    create_incident,
    link_evidence,
    link_target,
    unlink_evidence,
    unlink_target,
    update_incident,
)
from tests.conftest import SIGN_IN_TIMEOUT, wait_for
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import bearer, plant_incident, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


# -- the comparison alone -------------------------------------------------------------------------


def _entry(
    seq: int, action: str, details: dict[str, Any], item_id: str | None = None, actor: str = "a"
) -> SignedEntry:
    body = EntryBody(seq, f"id{seq}", "t", action, actor, item_id, None, json.dumps(details), "p", None, "k")
    return SignedEntry(body, body.digest(), "sig")


def _kinds(problems: list[Any]) -> list[str]:
    return sorted(p.kind for p in problems)


def test_links_are_compared_with_the_latest_step_of_each_pair() -> None:
    entries = [
        _entry(1, "linked", {"incident_id": "I1", "link": 1}, "X"),
        _entry(2, "linked", {"incident_id": "I1", "link": 2}, "Y"),
        _entry(3, "unlinked", {"incident_id": "I1", "link": 2}, "Y"),
        _entry(4, "linked", {"incident_id": "I2", "link": 3}, "X"),
        _entry(5, "linked", {"incident_id": "I1", "alarm": "A", "link": 4}),
        _entry(6, "unlinked", {"incident_id": "I1", "window_withdrawn": {}}),  # names no target
    ]
    replay = link_replay(entries)
    rows = [
        LinkRow(1, "I1", "evidence", "X"),
        LinkRow(3, "I2", "evidence", "X"),
        LinkRow(4, "I1", "alarm", "A"),
    ]
    assert link_findings(replay, rows) == []
    planted = LinkRow(9, "I3", "evidence", "X")
    revived = LinkRow(2, "I1", "evidence", "Y")
    moved = LinkRow(7, "I2", "evidence", "X")
    assert _kinds(link_findings(replay, [*rows, planted, revived])) == [
        "link_unlinked_in_custody",
        "link_unrecorded",
    ]
    assert _kinds(link_findings(replay, [rows[0], moved, rows[2]])) == ["link_row_altered"]
    gone = link_findings(replay, rows[1:])
    assert _kinds(gone) == ["link_row_missing"] and "incident I1 / evidence item X" in gone[0].where


def test_holds_are_compared_with_the_entries_that_place_and_release_them() -> None:
    entries = [
        _entry(1, "legal_hold", {"on": True, "holds": [1], "target": {"kind": "evidence", "id": "X"}}, "X"),
        _entry(2, "legal_hold", {"on": True, "holds": [2], "target": {"kind": "incident", "id": "I"}}),
        _entry(3, "legal_hold", {"on": False, "holds": [2], "target": {"kind": "incident", "id": "I"}}),
        _entry(4, "legal_hold", {"on": True, "holds": ["H"], "cause": "linked"}, "X"),  # an item's class
    ]
    replay = hold_replay(entries)
    rows = [HoldRow(1, "evidence", "X", True), HoldRow(2, "incident", "I", False)]
    assert hold_findings(replay, rows) == []
    assert _kinds(hold_findings(replay, rows[1:])) == ["hold_row_missing"]
    assert _kinds(hold_findings(replay, [HoldRow(1, "evidence", "X", False), rows[1]])) == [
        "hold_released_unrecorded"
    ]
    assert _kinds(hold_findings(replay, [rows[0], HoldRow(2, "incident", "I", True)])) == ["hold_row_altered"]
    assert _kinds(hold_findings(replay, [*rows, HoldRow(5, "evidence", "Y", True)])) == ["hold_unrecorded"]
    assert _kinds(hold_findings(replay, [HoldRow(1, "evidence", "Z", True), rows[1]])) == ["hold_row_altered"]


def test_users_are_compared_with_what_created_and_changed_them() -> None:
    entries = [
        _entry(1, "user_changed", {"user": "ann", "created": True, "role": "investigator", "site": None}),
        _entry(2, "user_changed", {"user": "bob", "created": True, "role": "operator"}),  # site not recorded
        _entry(3, "user_changed", {"user": "ann", "changes": {"site": "NORTH", "tokens_revoked": 0}}),
        _entry(4, "user_changed", {"user": "eve", "changes": {"role": "admin"}}),  # never created
    ]
    replay = user_replay(entries)
    rows = [UserRow("ann", "investigator", "NORTH", True), UserRow("bob", "operator", "SOUTH", True)]
    assert user_findings(replay, rows) == []
    assert _kinds(user_findings(replay, [UserRow("ann", "admin", "SOUTH", False)])) == [
        "user_active_altered",
        "user_role_altered",
        "user_site_altered",
    ]
    assert _kinds(user_findings(replay, [UserRow("eve", "admin", None, True)])) == ["user_unrecorded"]


def test_passwords_are_compared_with_the_digest_their_last_change_recorded() -> None:
    secret = b"k" * 32
    first, second, planted = (password_digest(secret, h) for h in ("$argon2$one", "$argon2$two", "$x"))
    entries = [
        _entry(
            1, "user_changed", {"user": "ann", "created": True, "role": "admin", "password_digest": first}
        ),
        _entry(2, "user_changed", {"user": "bob", "created": True, "role": "admin"}),  # before digests
        _entry(
            3,
            "user_changed",
            {"user": "ann", "changes": {"password": "(changed)", "password_digest": second}},
        ),
        _entry(
            4, "user_changed", {"user": "cat", "created": True, "role": "admin", "password_digest": first}
        ),
        _entry(5, "user_changed", {"user": "cat", "changes": {"password": "(changed)"}}),  # before digests
    ]
    replay = user_replay(entries)
    rows = [UserRow(n, "admin", None, True, second) for n in ("ann", "bob", "cat")]
    assert user_findings(replay, rows) == []
    assert passwords_unchecked(replay, rows) == ["bob", "cat"]
    found = user_findings(replay, [UserRow("ann", "admin", None, True, planted)])
    assert _kinds(found) == ["user_password_altered"] and "#3" in found[0].detail
    assert planted not in found[0].detail and second not in found[0].detail  # names no digest
    assert user_findings(replay, [UserRow("ann", "admin", None, True, None)]) == []  # not computed


def test_incident_sites_are_compared_with_the_entry_that_last_set_them() -> None:
    entries = [
        _entry(1, "incident_changed", {"incident_id": "I1", "site": "NORTH", "created": True}),
        _entry(2, "incident_changed", {"incident_id": "I2", "site": "NORTH", "created": True}),
        _entry(3, "incident_changed", {"incident_id": "I1", "site": "SOUTH"}),
    ]
    replay = incident_site_replay(entries)
    sites = {"I1": "SOUTH", "I2": "NORTH", "I3": "EAST"}
    assert incident_site_findings(replay, sites) == []
    assert incidents_unchecked(replay, sites) == ["I3"]
    moved = incident_site_findings(replay, {**sites, "I2": "SOUTH"})
    assert _kinds(moved) == ["incident_site_altered"] and "#2" in moved[0].detail


def test_assignments_are_compared_with_the_latest_step_of_each_incident_and_user() -> None:
    entries = [
        _entry(1, "user_changed", {"user": "ann", "incident_id": "I1", "assignment": 1, "assigned": True}),
        _entry(2, "user_changed", {"user": "bob", "incident_id": "I1", "assignment": 2, "assigned": True}),
        _entry(3, "user_changed", {"user": "bob", "incident_id": "I1", "assignment": 2, "assigned": False}),
        _entry(4, "user_changed", {"user": "ann", "changes": {"role": "admin"}}),  # no incident named
    ]
    replay = assignment_replay(entries)
    rows = [AssignmentRow(1, "I1", "ann")]
    assert assignment_findings(replay, rows) == []
    assert _kinds(assignment_findings(replay, [*rows, AssignmentRow(2, "I1", "bob")])) == [
        "assignment_ended_in_custody"
    ]
    assert _kinds(assignment_findings(replay, [*rows, AssignmentRow(5, "I2", "eve")])) == [
        "assignment_unrecorded"
    ]
    assert _kinds(assignment_findings(replay, [AssignmentRow(6, "I1", "ann")])) == ["assignment_row_altered"]
    assert _kinds(assignment_findings(replay, [])) == ["assignment_row_missing"]


def test_ready_export_jobs_are_compared_with_their_packages_entry() -> None:
    package = {"incident": {"id": "I1"}, "package_sha256": "ab", "package_size": 10}
    entries = [
        _entry(1, "exported", package, "E1", actor="user:m"),
        _entry(2, "exported", {"export_id": "E1", "media_included": True}, "X", actor="user:m"),  # an item's
    ]
    replay = export_replay(entries)
    rows = [
        ExportJobRow("E1", "I1", "user:m", "ready", "ab", 10),
        ExportJobRow("E2", "I1", "user:m", "building", None, None),
    ]
    assert export_job_findings(replay, rows) == []
    moved = ExportJobRow("E1", "I2", "user:x", "ready", "cd", 10)
    assert _kinds(export_job_findings(replay, [moved])) == ["export_job_altered"] * 3
    assert _kinds(
        export_job_findings(replay, [*rows, ExportJobRow("E3", "I1", "user:m", "ready", "ef", 1)])
    ) == ["export_job_unrecorded"]
    assert _kinds(export_job_findings(replay, rows[1:])) == ["export_job_row_missing"]


def test_export_jobs_not_ready_are_compared_with_their_request() -> None:
    asked = ExportJobRow("E1", "I1", "user:m", "building", None, None, "investigator", False, None, "s1")
    entries = [_entry(1, "export_requested", export_request_details(asked), actor="user:m")]
    replay = export_request_replay(entries)
    ready = ExportJobRow("E2", "I1", "user:m", "ready", "ab", 10)  # answers to its 'exported' entry
    assert export_request_findings(replay, [asked, ready]) == []
    planted = ExportJobRow("E3", "I2", "user:x", "building", None, None, "admin", True, "x" * 10, "s2")
    assert _kinds(export_request_findings(replay, [planted])) == ["export_job_unrequested"]
    grown = ExportJobRow("E1", "I1", "user:m", "failed", None, None, "investigator", True, "why" * 4, "s2")
    assert _kinds(export_request_findings(replay, [grown])) == ["export_job_altered"] * 3


def test_download_links_are_compared_with_their_issue_and_revocation() -> None:
    entries = [
        _entry(1, "link_issued", {"link": "L1", "recipient": "DC Jones"}, "E", actor="user:m"),
        _entry(2, "link_issued", {"link": "L2", "recipient": "CPS"}, "E", actor="user:m"),
        _entry(3, "link_revoked", {"link": "L2", "recipient": "CPS"}, "E", actor="user:m"),
    ]
    replay = download_link_replay(entries)
    rows = [
        DownloadLinkRow("L1", "E", "user:m", "DC Jones", False),
        DownloadLinkRow("L2", "E", "user:m", "CPS", True),
    ]
    assert download_link_findings(replay, rows) == []
    assert _kinds(
        download_link_findings(replay, [rows[0], DownloadLinkRow("L2", "E", "user:m", "CPS", False)])
    ) == ["download_link_altered"]
    assert _kinds(
        download_link_findings(replay, [*rows, DownloadLinkRow("L3", "E", "user:x", "me", False)])
    ) == ["download_link_unrecorded"]
    assert _kinds(download_link_findings(replay, rows[1:])) == ["download_link_row_missing"]
    assert _kinds(
        download_link_findings(replay, [DownloadLinkRow("L1", "E", "user:x", "me", False), rows[1]])
    ) == ["download_link_altered"]


# -- on the databases --------------------------------------------------------------------------


def _problems(s: Any) -> list[Any]:
    with s.db.session() as session:
        return verify_service(session, s.store, s.key).problems


def _world(s: Any) -> tuple[dict[str, int], Any, str, str]:
    """A NORTH clip linked to an incident its investigator ``inv`` is assigned to, and a second
    incident assigned to ``other_inv`` with nothing linked."""
    staff(s, "S-N", "nurse", "NORTH")
    ids = {name: user(s, name, "investigator") for name in ("inv", "other_inv")}
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=5))
    with s.db.session() as session:
        first = create_incident(
            session,
            IncidentDraft(category="theft", occurred_at=T0, site="NORTH", title="one"),
            "user:admin",
            ledger=s.ledger,
        )
        second = create_incident(
            session,
            IncidentDraft(category="theft", occurred_at=T0, site="NORTH", title="two"),
            "user:admin",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, first, ids["inv"], "user:admin")
        assign_investigator(session, s.ledger, second, ids["other_inv"], "user:admin")
        link_evidence(session, s.ledger, first.id, clip.id, "user:admin", "the theft")
        first_id, second_id = first.id, second.id
    return ids, clip, first_id, second_id


def test_a_planted_link_is_named_and_grants_nothing(live: Any) -> None:
    s = live.services
    ids, clip, _, second_id = _world(s)
    api = f"{live.url}/api/v1"
    h = bearer(s, "other_inv")
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(
            insert(IncidentLink).values(
                incident_id=second_id,
                target_kind="evidence",
                target_id=clip.id,
                linked_by="user:other_inv",
                reason="planted",
                linked_at=datetime.now(UTC),
            )
        )
    found = [p for p in _problems(s) if p.kind == "link_unrecorded"]
    assert len(found) == 1 and clip.id in found[0].where and second_id in found[0].where, found
    # The second investigator sees nothing of it: not listed, not streamed, not exported.
    listed = httpx.get(f"{api}/evidence", headers=h)
    assert listed.status_code == 200 and clip.id not in listed.text
    for suffix in ("", "/content", "/custody"):
        assert httpx.get(f"{api}/evidence/{clip.id}{suffix}", headers=h).status_code == 404, suffix
    # A planted link is no link: the incident has nothing to export until something is linked.
    r = httpx.post(f"{api}/incidents/{second_id}/exports", json={}, headers=h)
    assert r.status_code == 409 and "nothing is linked" in r.text, r.text
    own = store_item(s, wearer="S-N", start=T0 + timedelta(hours=1))
    with s.db.session() as session:
        link_evidence(session, s.ledger, second_id, own.id, "user:admin", "the second theft")
    r = httpx.post(f"{api}/incidents/{second_id}/exports", json={}, headers=h)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]

    def finished() -> dict[str, Any] | None:
        body = httpx.get(f"{api}/exports/{export_id}", headers=h).json()
        return body if body["status"] in ("ready", "failed") else None

    job = wait_for(finished, 60, 0.1, "the export to finish")
    assert clip.id not in (job.get("included") or []), job
    assert clip.id not in json.dumps(job), job  # nor withheld, listed or hashed: not the incident's
    # The investigator the clip was linked for still sees it.
    assert httpx.get(f"{api}/evidence/{clip.id}", headers=bearer(s, "inv")).status_code == 200


def test_an_export_moved_or_a_download_link_revived_in_the_database_is_named(live: Any) -> None:
    s = live.services
    ids, clip, first_id, second_id = _world(s)
    api = f"{live.url}/api/v1"
    h = bearer(s, "inv")
    r = httpx.post(f"{api}/incidents/{first_id}/exports", json={}, headers=h)
    assert r.status_code == 202, r.text
    export_id = r.json()["id"]

    def ready() -> dict[str, Any] | None:
        body = httpx.get(f"{api}/exports/{export_id}", headers=h).json()
        assert body["status"] != "failed", body
        return body if body["status"] == "ready" else None

    wait_for(ready, 60, 0.1, "the export to be ready")
    link = httpx.post(f"{api}/exports/{export_id}/links", json={"recipient": "DC Jones"}, headers=h)
    assert link.status_code in (200, 201), link.text
    r = httpx.delete(f"{api}/exports/{export_id}/links/{link.json()['id']}", headers=h)
    assert r.status_code == 204, r.text
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(update(ExportLink).values(revoked_at=None, revoked_by=None))
        session.execute(update(ExportJob).values(incident_id=second_id))
    found = {(p.kind, p.where.split(" of ")[0]) for p in _problems(s)}
    assert found == {
        ("download_link_altered", f"download link {link.json()['id']}"),
        ("export_job_altered", f"export {export_id}"),
        ("export_job_seal_broken", f"export {export_id}"),
    }, found


def test_a_link_revived_or_moved_in_the_database_grants_nothing(services: Any) -> None:
    s = services
    ids, clip, first_id, second_id = _world(s)
    with s.db.session() as session:
        unlink_evidence(session, s.ledger, first_id, clip.id, "user:admin", "not this one")
    with s.db.session() as session:  # the unlinked row made active again, then moved to the second
        session.execute(update(IncidentLink).values(unlinked_at=None, unlinked_by=None, unlink_reason=None))
    assert "link_unlinked_in_custody" in {p.kind for p in _problems(s)}
    with s.db.session() as session:
        session.execute(update(IncidentLink).values(incident_id=second_id))
    kinds = {p.kind for p in _problems(s)}
    assert {"link_unrecorded"} <= kinds, kinds
    from incidents.access import visible_evidence_ids

    class Who:
        def __init__(self, user_id: int) -> None:
            self.user_id, self.role, self.site, self.actor = user_id, "investigator", None, "x"
            self.reach = SiteReach(secret=reach_secret(s.key))
            with s.db.reading() as session:  # as the sign-in resolves them (``accounts.seals``)
                self.assignments = sealed_assignment_ids(session, s.key, user_id)

    with s.db.session() as session:
        assert visible_evidence_ids(session, Who(ids["other_inv"]), [clip.id]) == set()
        assert visible_evidence_ids(session, Who(ids["inv"]), [clip.id]) == set()


def test_a_deleted_legal_hold_is_named(services: Any) -> None:
    s = services
    _, clip, first_id, _ = _world(s)
    rules = RetentionRules.from_settings(s.settings)
    now = datetime.now(UTC)
    with s.db.session() as session:
        set_legal_hold(session, s.ledger, s.store, rules, "evidence", clip.id, True, "police", "user:m", now)
        set_legal_hold(session, s.ledger, s.store, rules, "incident", first_id, True, "court", "user:m", now)
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(delete(LegalHold).where(LegalHold.target_kind == "evidence"))
    found = _problems(s)
    assert [p.kind for p in found] == ["hold_row_missing"] and clip.id in found[0].where, found
    with s.db.session() as session:  # the incident's hold released in the database alone
        session.execute(update(LegalHold).values(released_at=now, released_by="x", release_reason="x"))
    assert sorted(p.kind for p in _problems(s)) == ["hold_released_unrecorded", "hold_row_missing"]


def test_a_hold_on_an_incident_with_nothing_linked_is_recorded(services: Any) -> None:
    s = services
    _, _, _, second_id = _world(s)
    with s.db.session() as session:
        set_legal_hold(
            session,
            s.ledger,
            s.store,
            RetentionRules.from_settings(s.settings),
            "incident",
            second_id,
            True,
            "before anything is linked",
            "user:m",
            datetime.now(UTC),
        )
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(delete(LegalHold))
    assert [p.kind for p in _problems(s)] == ["hold_row_missing"]


def test_a_role_or_a_user_given_by_sql_is_named(services: Any) -> None:
    s = services
    ids, _, _, _ = _world(s)
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(update(User).where(User.username == "other_inv").values(role="admin", site="NORTH"))
        session.execute(insert(User).values(username="mallory", password_hash="-", role="admin", active=True))
    found = {(p.kind, p.where) for p in _problems(s)}
    other_id = ids["other_inv"]
    assert found == {
        ("user_role_altered", "user other_inv"),
        ("user_site_altered", "user other_inv"),
        ("user_unrecorded", "user mallory"),
        ("user_seal_broken", f"user id {other_id} (other_inv)"),  # (mallory has no seal: a note)
    }, found


def test_an_assignment_given_or_ended_by_sql_is_named(services: Any) -> None:
    s = services
    ids, _, first_id, second_id = _world(s)
    with s.db.session() as session:
        session.execute(
            insert(IncidentAssignment).values(
                incident_id=first_id,
                user_id=ids["other_inv"],
                assigned_by="user:x",
                assigned_at=datetime.now(UTC),
            )
        )
        session.execute(
            update(IncidentAssignment)
            .where(IncidentAssignment.incident_id == second_id)
            .values(unassigned_at=datetime.now(UTC), unassigned_by="user:x")
        )
    found = {(p.kind, p.where) for p in _problems(s)}
    assert found == {
        ("assignment_unrecorded", f"incident {first_id} / investigator other_inv"),
        ("assignment_row_missing", f"incident {second_id} / investigator other_inv"),
        ("assignment_seal_broken", f"incident {first_id} / user id {ids['other_inv']}"),
    }, found


def test_links_holds_and_roles_changed_through_the_service_verify_clean(live: Any) -> None:
    s = live.services
    api = f"{live.url}/api/v1"
    ids, clip, first_id, second_id = _world(s)
    alarm = raise_test_alarm(s, "LW-ROWS", site="NORTH")
    admin = live.admin()
    with s.db.session() as session:
        link_evidence(session, s.ledger, second_id, clip.id, "user:admin", "also this")
        link_target(session, s.ledger, second_id, "alarm", alarm, "user:admin", "the alarm")
    with s.db.session() as session:
        unlink_evidence(session, s.ledger, second_id, clip.id, "user:admin", "not this one")
        unlink_target(session, s.ledger, second_id, "alarm", alarm, "user:admin", "not this one")
    with s.db.session() as session:
        link_evidence(session, s.ledger, second_id, clip.id, "user:admin", "after all")
        link_target(session, s.ledger, first_id, "alarm", alarm, "user:admin", "the alarm, here")
    # Linked to both incidents now: each one's investigator sees it.
    for who in ("inv", "other_inv"):
        assert httpx.get(f"{api}/evidence/{clip.id}", headers=bearer(s, who)).status_code == 200, who
    for hold in (True, False, True):
        r = httpx.put(
            f"{api}/incidents/{first_id}/legal-hold", json={"hold": hold, "reason": "court"}, headers=admin
        )
        assert r.status_code == 200, r.text
    r = httpx.put(f"{api}/incidents/{second_id}/investigators/{ids['inv']}", headers=admin)
    assert r.status_code == 200, r.text
    r = httpx.delete(f"{api}/incidents/{first_id}/investigators/{ids['inv']}", headers=admin)
    assert r.status_code == 204, r.text
    r = httpx.post(
        f"{api}/incidents",
        json={"category": "theft", "occurred_at": T0.isoformat(), "site": "NORTH"},
        headers=bearer(s, "other_inv"),
    )
    assert r.status_code == 201, r.text  # its investigator is assigned to it
    r = httpx.patch(
        f"{api}/users/{ids['inv']}", json={"role": "security_manager", "site": "NORTH"}, headers=admin
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{api}/users",
        json={"username": "sam", "password": "a long enough password", "role": "operator", "site": "SOUTH"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    assert _problems(s) == []
    with s.db.session() as session:
        held = session.scalar(select(LegalHold.id).where(LegalHold.released_at.is_(None)))
        assert held is not None
    # The relinked clip is the second investigator's to see, as before.
    assert httpx.get(f"{api}/evidence/{clip.id}", headers=bearer(s, "other_inv")).status_code == 200


def _job_status(s: Any, job_id: str) -> tuple[str, str]:
    with s.db.session() as session:
        job = session.get(ExportJob, job_id)
        assert job is not None
        return job.status, job.error or ""


def test_a_planted_or_edited_export_job_is_not_built_and_is_named(services: Any) -> None:
    s = services
    _, clip, _, second_id = _world(s)
    scope = json.dumps({"incident": {"id": second_id, "reference": "planted"}, "item_ids": [clip.id]})
    planted, asked = str(uuid.uuid4()), str(uuid.uuid4())
    with s.db.session() as session:  # a job nobody asked for, for an incident the clip is not linked to
        session.add(
            ExportJob(
                id=planted,
                incident_id=second_id,
                requested_by="user:other_inv",
                requester_role="investigator",
                scope=scope,
                status="building",
                created_at=datetime.now(UTC) - timedelta(seconds=1),
            )
        )
    assert {(p.kind, p.where) for p in _problems(s)} == {("export_job_unrequested", f"export {planted}")}
    builds = ExportBuilds(s, name="rows:1:exports")
    assert builds.claim() == planted
    builds.run(planted)
    status, error = _job_status(s, planted)
    assert status == "failed" and "not built" in error, error
    with s.db.session() as session:  # no package: neither its item nor any 'exported' entry
        assert session.get(EvidenceItem, planted) is None
        assert session.scalar(select(CustodyEntry.seq).where(CustodyEntry.action == "exported")) is None
    # A job asked for properly, then given the clip and originals in the database.
    with s.db.session() as session:
        job = ExportJob(
            id=asked,
            incident_id=second_id,
            requested_by="user:other_inv",
            requester_role="investigator",
            scope=json.dumps({"incident": {"id": second_id}, "item_ids": []}),
            status="building",
        )
        session.add(job)
        session.flush()
        record_request(session, s.ledger, job)
    assert {p.where for p in _problems(s)} == {f"export {planted}"}
    with s.db.session() as session:
        session.execute(
            update(ExportJob).where(ExportJob.id == asked).values(scope=scope, include_originals=True)
        )
    edited = sorted(p.detail.split(" is ")[0] for p in _problems(s) if p.where == f"export {asked}")
    assert edited == ["its include_originals", "its scope_sha256"], edited
    assert builds.claim() == asked
    builds.run(asked)
    status, error = _job_status(s, asked)
    assert status == "failed" and "not what was asked for" in error, error


def test_a_password_set_by_sql_is_named_and_no_entry_carries_a_secret(live: Any) -> None:
    s = live.services
    ids, _, _, _ = _world(s)
    api = f"{live.url}/api/v1"
    new_password = "another long enough password"
    r = httpx.patch(f"{api}/users/{ids['inv']}", json={"password": new_password}, headers=live.admin())
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{api}/auth/token", data={"username": "inv", "password": new_password}, timeout=SIGN_IN_TIMEOUT
    )
    assert r.status_code == 200, r.text
    assert _problems(s) == []
    with s.db.session() as session:
        hashes = list(session.scalars(select(User.password_hash)))
        text = "\n".join(session.scalars(select(CustodyEntry.details)))
    assert new_password not in text and not any(h in text for h in hashes)
    # Someone with write access to the database gives themselves the investigator's account.
    taken = PasswordHasher().hash("the attacker's own password")
    with s.db.session() as session:
        session.execute(update(User).where(User.username == "other_inv").values(password_hash=taken))
    found = [(p.kind, p.where) for p in _problems(s)]
    other_id = ids["other_inv"]
    assert found == [
        ("user_password_altered", "user other_inv"),
        ("user_seal_broken", f"user id {other_id} (other_inv)"),
    ], found


def test_a_wearer_or_device_changed_by_sql_is_named(services: Any) -> None:
    """An item's wearer and recording device decide which site's managers see it: moving a NORTH
    clip to a SOUTH wearer shows it to SOUTH's managers."""
    s = services
    _, clip, _, _ = _world(s)
    staff(s, "S-S", "porter", "SOUTH")
    with s.db.session() as session:
        stored = s.ledger.stored_entry(session, clip.id)
        assert stored is not None and "S-N" not in stored.body.details  # a keyed digest, not the name
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == clip.id).values(wearer="S-S"))
    found = [(p.kind, p.where) for p in _problems(s)]
    assert found == [
        ("item_seal_broken", f"evidence item {clip.id}"),  # what the service sealed was changed too
        ("item_scope_altered", f"evidence item {clip.id}"),
    ], found
    with s.db.session() as session:
        session.execute(
            update(EvidenceItem)
            .where(EvidenceItem.id == clip.id)
            .values(wearer="S-N", source_device_id="CAM-S")
        )
    assert [p.kind for p in _problems(s)] == ["item_seal_broken", "item_scope_altered"]


def test_an_incident_moved_to_another_site_by_sql_is_named(services: Any) -> None:
    """A security manager sees the incidents of their site and everything linked to them."""
    s = services
    with s.db.session() as session:
        draft = IncidentDraft(category="theft", occurred_at=T0, site="NORTH", title="recorded")
        incident = create_incident(session, draft, "user:admin", ledger=s.ledger)
        incident_id = incident.id
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        update_incident(session, s.ledger, row, {"site": "EAST"}, "user:admin")
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(update(Incident).where(Incident.id == incident_id).values(site="SOUTH"))
    found = _problems(s)
    assert [(p.kind, p.where) for p in found] == [
        ("incident_site_altered", f"incident {incident_id}"),
        ("incident_seal_broken", f"incident {incident_id}"),  # what the service sealed was changed too
    ]
    assert "'SOUTH'" in found[0].detail and "'EAST'" in found[0].detail


def test_rows_made_before_the_ledger_recorded_them_are_adopted_once(services: Any) -> None:
    """An old link grants nothing and old rows are named until an administrator adopts them; once
    adopted they verify, the link grants what it granted, and later changes are named as any."""
    from chain_of_custody.backfill import backfill
    from incidents.access import visible_evidence_ids

    s = services
    ids, clip, _, second_id = _world(s)
    old_incident = plant_incident(s)  # opened before incidents' sites were recorded
    with s.db.session() as session:  # made before links, assignments and users were recorded
        session.execute(
            insert(IncidentLink).values(
                incident_id=second_id,
                target_kind="evidence",
                target_id=clip.id,
                linked_by="user:admin",
                reason="old",
                linked_at=T0,
            )
        )
        session.execute(
            insert(User).values(
                username="old_admin", password_hash="$argon2id$old", role="admin", active=True
            )
        )

    class Who:
        user_id, role, site, actor = ids["other_inv"], "investigator", None, "user:other_inv"
        reach = SiteReach(secret=reach_secret(s.key))
        with s.db.reading() as session:  # as the sign-in resolves them (``accounts.seals``)
            assignments = sealed_assignment_ids(session, s.key, ids["other_inv"])

    with s.db.session() as session:
        assert visible_evidence_ids(session, Who(), [clip.id]) == set()
    assert {p.kind for p in _problems(s)} == {"link_unrecorded", "user_unrecorded"}
    with s.db.session() as session:
        listed = backfill(session, s.ledger, apply=False)
    assert {(a, d.get("user") or d.get("incident_id")) for a, _, d in listed.entries} >= {
        ("linked", second_id),
        ("user_changed", "old_admin"),
        ("incident_changed", old_incident),
    }
    assert not any("$argon2id$old" in line for line in listed.lines())
    assert {p.kind for p in _problems(s)} == {"link_unrecorded", "user_unrecorded"}  # nothing appended
    with s.db.session() as session:
        backfill(session, s.ledger, apply=True)
    with s.db.session() as session:  # recorded now; its seal is the upgrade's next step
        notes = verify_service(session, s.store, s.key).notes
        assert [n for n in notes if "incident" in n] == [
            "1 incident(s) have no seal yet (opened before seals), so no site's managers read them and "
            "their windows link nothing: `evidence upgrade-seals` seals those the custody record bears out"
        ], notes
        seal_incidents(session, s.ledger)
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
        assert report.problems == [] and not [n for n in report.notes if "incident" in n or "password" in n]
        assert visible_evidence_ids(session, Who(), [clip.id]) == {clip.id}
        assert backfill(session, s.ledger, apply=False).entries == []  # once
    with s.db.session() as session:
        session.execute(update(Incident).where(Incident.id == second_id).values(site="SOUTH"))
        session.execute(
            update(User).where(User.username == "old_admin").values(password_hash="$argon2id$new")
        )
    assert sorted(p.kind for p in _problems(s)) == [
        "incident_seal_broken",
        "incident_site_altered",
        "user_password_altered",
    ]


def test_the_backfill_command_lists_before_it_appends(tmp_path: Any, seaweed: Any, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from ingest.cli import app
    from ingest.services import build_services
    from ingest.settings import get_settings
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'evidence.db'}", seaweed)
    s = build_services(settings)
    try:
        with s.db.session() as session:
            session.execute(
                insert(User).values(username="old", password_hash="$argon2id$old", role="auditor")
            )
        for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
            monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
        monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
        get_settings.cache_clear()
        runner = CliRunner()
        listed = runner.invoke(app, ["backfill-custody"])
        assert listed.exit_code == 0 and "'user': 'old'" in listed.output, listed.output
        assert "$argon2id$old" not in listed.output and "would be appended" in listed.output
        assert [p.kind for p in _problems(s)] == ["user_unrecorded"]
        done = runner.invoke(app, ["backfill-custody", "--yes"])
        assert done.exit_code == 0 and "1 entries appended" in done.output, done.output
        assert _problems(s) == []
        # A member of staff added on the command line is recorded as the route records one.
        added = runner.invoke(app, ["device", "staff", "S-CLI", "Cli Nurse", "--site", "NORTH"])
        assert added.exit_code == 0, added.output
        assert _problems(s) == []
        with s.db.session() as session:
            entry = session.scalars(select(CustodyEntry).where(CustodyEntry.action == "staff_changed")).one()
            assert json.loads(entry.details) == {"staff": "S-CLI", "created": True, "site": "NORTH"}
    finally:
        get_settings.cache_clear()
        s.db.dispose()


def _public_key() -> str:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


def test_a_member_of_staff_or_a_device_moved_to_another_site_by_sql_is_named(services: Any) -> None:
    """A security manager sees the footage worn by the staff of their site and recorded by its
    cameras, and the alarms of its lone-worker devices: moving a member of staff or a device to
    another site in the database puts their footage in that site's reach, and reassigning a camera
    lets it deliver another wearer's clips."""
    from devices.models import Device, StaffMember
    from devices.service import enrol_dock, enrol_keyed_device
    from incidents.access import visible_evidence_ids

    s = services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-E", "porter", "EAST")
    with s.db.session() as session:
        enrol_keyed_device(
            session, s.ledger, "camera", "CAM-N", _public_key(), "user:admin", staff_id="S-N", site="NORTH"
        )
        enrol_dock(session, s.ledger, "DOCK-N", "user:admin", site="NORTH")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=5))

    class SouthManager:
        user_id, role, site, actor = 99, "security_manager", "SOUTH", "user:south"

        def __init__(self) -> None:
            with s.db.reading() as session:  # as the sign-in resolves it (``accounts.seals.reach_of``)
                self.reach = site_reach(session, s.key, "SOUTH")

    with s.db.session() as session:
        assert visible_evidence_ids(session, SouthManager(), [clip.id]) == set()
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(update(StaffMember).where(StaffMember.id == "S-N").values(site="SOUTH"))
        session.execute(update(Device).where(Device.id.in_(["CAM-N", "DOCK-N"])).values(site="SOUTH"))
        session.execute(update(Device).where(Device.id == "CAM-N").values(assigned_staff_id="S-E"))
    with s.db.session() as session:  # the rows' seals no longer hold: the reach did not widen
        assert visible_evidence_ids(session, SouthManager(), [clip.id]) == set()
    found = sorted((p.kind, p.where) for p in _problems(s))
    assert found == [
        ("device_seal_broken", "device CAM-N"),  # what the service sealed was changed too
        ("device_seal_broken", "device DOCK-N"),
        ("device_site_altered", "device CAM-N"),
        ("device_site_altered", "device DOCK-N"),
        ("device_staff_altered", "device CAM-N"),
        ("staff_seal_broken", "member of staff S-N"),
        ("staff_site_altered", "member of staff S-N"),
    ], found


def test_staff_and_devices_are_compared_with_what_added_enrolled_and_changed_them() -> None:
    from chain_of_custody.registry_replay import (
        DeviceRow,
        StaffRow,
        device_findings,
        device_replay,
        devices_unchecked,
        staff_findings,
        staff_replay,
    )

    entries = [
        _entry(1, "staff_changed", {"staff": "S-1", "created": True, "site": "NORTH"}),
        _entry(2, "staff_changed", {"staff": "S-1", "changes": {"site": "EAST"}}),
        _entry(3, "staff_changed", {"staff": "S-2", "created": True, "site": None}),
        _entry(4, "device_enrolled", {"device": "C1", "kind": "camera", "staff": "S-1", "site": "EAST"}),
        _entry(5, "device_changed", {"device": "C1", "assigned_from": "S-1", "assigned_to": "S-2"}),
        _entry(6, "device_changed", {"device": "C1", "status": "disabled"}),
        _entry(7, "device_enrolled", {"device": "D1", "kind": "dock", "site": "NORTH"}),  # older: no staff
        _entry(8, "device_enrolled", {"device": "C2", "kind": "camera", "staff": None}),  # older: no site
    ]
    staff = staff_replay(entries)
    members = [StaffRow("S-1", "EAST"), StaffRow("S-2", None)]
    assert staff_findings(staff, members) == []
    assert _kinds(staff_findings(staff, [StaffRow("S-1", "NORTH"), members[1]])) == ["staff_site_altered"]
    assert _kinds(staff_findings(staff, [*members, StaffRow("S-9", "SOUTH")])) == ["staff_unrecorded"]
    assert _kinds(staff_findings(staff, members[:1])) == ["staff_row_missing"]
    devices = device_replay(entries)
    rows = [DeviceRow("C1", "camera", "EAST", "S-2"), DeviceRow("D1", "dock", "NORTH", None)]
    rows.append(DeviceRow("C2", "camera", "ANY", None))
    assert device_findings(devices, rows) == []
    assert devices_unchecked(devices, rows) == ["C2", "D1"]
    moved = [DeviceRow("C1", "camera", "SOUTH", "S-1"), DeviceRow("D1", "dock", "EAST", None), rows[2]]
    assert _kinds(device_findings(devices, moved)) == [
        "device_site_altered",
        "device_site_altered",
        "device_staff_altered",
    ]
    assert _kinds(device_findings(devices, [*rows, DeviceRow("X", "dock", None, None)])) == [
        "device_unrecorded"
    ]
    assert _kinds(device_findings(devices, rows[1:])) == ["device_row_missing"]


def test_staff_and_devices_made_before_the_ledger_recorded_them_are_adopted_once(services: Any) -> None:
    """A member of staff or a device put in the database is named, and a device enrolled before its
    site (or a dock's assigned staff) was recorded is noted as not checked, until an administrator
    adopts them; then later changes are named as any."""
    from alarms.models import AlarmRecord
    from chain_of_custody.backfill import backfill
    from devices.models import Device, StaffMember

    s = services
    with s.db.session() as session:
        session.execute(insert(StaffMember).values(id="S-OLD", name="Old Porter", site="NORTH"))
        for device, kind, site in (("CAM-OLD", "camera", "NORTH"), ("DOCK-OLD", "dock", "EAST")):
            session.execute(insert(Device).values(id=device, kind=kind, site=site, status="active"))
        session.execute(insert(Device).values(id="CAM-OLD2", kind="camera", site="EAST", status="active"))
        # Enrolments as they were recorded before: a dock's without its staff, a camera's without its site.
        s.ledger.append(
            session, "device_enrolled", "cli", details={"device": "DOCK-OLD", "kind": "dock", "site": "EAST"}
        )
        s.ledger.append(
            session, "device_enrolled", "cli", details={"device": "CAM-OLD2", "kind": "camera", "staff": None}
        )
        # An alarm raised before alarms' sites were recorded (its entry as it was then).
        session.execute(
            insert(AlarmRecord).values(
                id="ALARM-OLD",
                device_id="CAM-OLD2",
                kind="sos",
                severity="red",
                status="resolved",
                site="EAST",
                raised_at=T0,
                occurred_at=T0,
            )
        )
        s.ledger.append(session, "alarm_raised", "device:CAM-OLD2", details={"alarm_id": "ALARM-OLD"})
    with s.db.session() as session:
        session.execute(update(Device).where(Device.id == "CAM-OLD").values(assigned_staff_id="S-OLD"))
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    found = sorted((p.kind, p.where) for p in report.problems)
    assert found == [
        ("device_unrecorded", "device CAM-OLD"),
        ("staff_unrecorded", "member of staff S-OLD"),
    ], found
    unchecked = "the site or assigned staff of 2 device(s) is not in their custody record, so not checked"
    unsealed = (  # rows written outside the service carry no seal either
        "3 device(s) have no seal yet (enrolled before seals), so not checked: "
        "`evidence upgrade-seals` lists them and seals those the custody record bears out"
    )
    assert [n for n in report.notes if "device" in n] == [f"{unchecked}: CAM-OLD2, DOCK-OLD", unsealed]
    alarm_unsealed = (  # an alarm written outside the service carries no seal either
        "1 alarm(s) have no seal yet (raised before seals), so they reach no site's readers by their "
        "row: `evidence upgrade-seals` seals those the custody record bears out"
    )
    lifecycle_unsealed = (  # nor a seal on its lifecycle (``chain_of_custody.lifecycle_seals``)
        "1 alarm(s) have no seal on their lifecycle yet (raised before it was sealed): "
        "`evidence upgrade-seals` seals those the custody record bears out"
    )
    raise_unsealed = (  # nor on what it was raised with (``chain_of_custody.raise_seals``)
        "1 alarm(s) have no seal on their note, position and payload yet (raised before they were "
        "sealed): `evidence upgrade-seals` seals those the custody record bears out"
    )
    assert [n for n in report.notes if "alarm" in n] == [
        "the site of 1 alarm(s) is not in their custody record, so not checked: ALARM-OLD",
        alarm_unsealed,
        lifecycle_unsealed,
        raise_unsealed,
    ]
    with s.db.session() as session:
        listed = backfill(session, s.ledger, apply=False)
    named = (
        (a, d.get("device") or d.get("staff") or d.get("alarm_id"), d.get("site", "-"))
        for a, _, d in listed.entries
    )
    assert sorted(named) == [
        ("alarm_changed", "ALARM-OLD", "EAST"),
        ("device_changed", "CAM-OLD2", "EAST"),
        ("device_changed", "DOCK-OLD", "-"),
        ("device_enrolled", "CAM-OLD", "NORTH"),
        ("staff_changed", "S-OLD", "NORTH"),
    ]
    assert len(_problems(s)) == 2  # nothing appended
    with s.db.session() as session:
        backfill(session, s.ledger, apply=True)
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
        assert report.problems == [] and [n for n in report.notes if "device" in n or "alarm" in n] == [
            unsealed,
            alarm_unsealed,
            lifecycle_unsealed,
            raise_unsealed,
        ]
        assert backfill(session, s.ledger, apply=False).entries == []  # once
    with s.db.session() as session:
        session.execute(update(StaffMember).where(StaffMember.id == "S-OLD").values(site="SOUTH"))
        session.execute(update(Device).where(Device.id == "CAM-OLD").values(assigned_staff_id=None))
        session.execute(update(Device).where(Device.id == "DOCK-OLD").values(assigned_staff_id="S-OLD"))
        session.execute(update(AlarmRecord).where(AlarmRecord.id == "ALARM-OLD").values(site="NORTH"))
    assert sorted(p.kind for p in _problems(s)) == [
        "alarm_site_altered",
        "device_staff_altered",
        "device_staff_altered",
        "staff_site_altered",
    ]


def test_an_alarm_moved_to_another_site_or_given_another_memo_by_sql_is_named(services: Any) -> None:
    """The control room of an alarm's site reads it and streams its voice memo: moving an alarm to
    another site, or pointing its memo at another item, hands that item to another site's readers."""
    from alarms.models import AlarmRecord
    from alarms.records import voice_memo_item

    s = services
    staff(s, "S-N", "nurse", "NORTH")
    clip = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=5))
    alarm = raise_test_alarm(s, "LW-MOVED", site="NORTH")

    class SouthManager:
        role, site = "security_manager", "SOUTH"

    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(
            update(AlarmRecord)
            .where(AlarmRecord.id == alarm)
            .values(site="SOUTH", voice_memo_item_id=clip.id)
        )
    with s.db.session() as session:
        # The row's seal no longer holds: the other site's clip is nobody's memo, SOUTH's least of all.
        memo = voice_memo_item(session, alarm, SouthManager(), reach_secret(s.key))
        assert memo is None
        assert voice_memo_item(session, alarm, None, reach_secret(s.key)) is None
    found = sorted((p.kind, p.where) for p in _problems(s))
    assert found == [
        ("alarm_memo_altered", f"alarm {alarm}"),
        ("alarm_seal_broken", f"alarm {alarm}"),
        ("alarm_site_altered", f"alarm {alarm}"),
    ], found


def test_an_incident_footage_window_set_by_sql_is_named(services: Any) -> None:
    """An incident's footage window (a wearer and a time span) has the service link that wearer's
    clips to the incident, with signed entries, as they arrive: a window set in the database would
    show an investigator of the incident footage nobody linked for them."""
    s = services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-W", "porter", "NORTH")
    with s.db.session() as session:
        draft = IncidentDraft(
            category="theft",
            occurred_at=T0,
            site="NORTH",
            title="window",
            wearer="S-N",
            window_start=T0,
            window_end=T0 + timedelta(minutes=10),
        )
        incident_id = create_incident(session, draft, "user:admin", ledger=s.ledger).id
    with s.db.session() as session:
        row = session.get(Incident, incident_id)
        assert row is not None
        later = (T0 + timedelta(minutes=20)).astimezone(timezone(timedelta(hours=1)))  # given as BST
        update_incident(session, s.ledger, row, {"window_end": later}, "user:admin")
    with s.db.session() as session:
        other = create_incident(
            session,
            IncidentDraft(category="theft", occurred_at=T0, site="NORTH", title="none"),
            "user:admin",
            ledger=s.ledger,
        ).id
    assert _problems(s) == []
    with s.db.session() as session:
        session.execute(update(Incident).where(Incident.id == incident_id).values(wearer="S-W"))
        session.execute(
            update(Incident)
            .where(Incident.id == other)
            .values(wearer="S-W", window_start=T0, window_end=T0 + timedelta(days=365))
        )
    found = sorted((p.kind, p.where) for p in _problems(s))
    assert found == sorted(
        (kind, f"incident {i}")
        for i in (incident_id, other)
        for kind in ("incident_window_altered", "incident_seal_broken")  # the seal covers the window
    ), found
    # An incident whose window was set before windows were recorded is noted, then adopted once.
    from chain_of_custody.backfill import backfill

    with s.db.session() as session:
        session.execute(update(Incident).where(Incident.id == incident_id).values(wearer="S-N"))
        session.execute(
            update(Incident)
            .where(Incident.id == other)
            .values(wearer=None, window_start=None, window_end=None)
        )
    old = plant_incident(s, wearer="S-N", window_start=T0, window_end=T0 + timedelta(hours=1))
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
        assert report.problems == [], report.problems  # the two windows put back as recorded
        assert (
            f"the footage window of 1 incident(s) is not in the custody record, so not checked: {old}"
            in report.notes
        )
    with s.db.session() as session:
        listed = backfill(session, s.ledger, apply=True)
        assert [d["incident_id"] for a, _, d in listed.entries if "window" in d] == [old]
    with s.db.session() as session:  # recorded now, and sealed by the upgrade's step as recorded
        assert [found.refused for found in seal_incidents(session, s.ledger)] == [None]
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
        assert report.problems == [] and not [n for n in report.notes if "window" in n], report
