"""A caller's item-level authority is what holds where their write is made, not what their sign-in
read: an investigator taken off the incident that showed them a clip, or a security manager whose
member of staff moved to another site, between the request's sign-in and its write gets no further
action on that clip (a read recorded, a waveform, a redaction queued, a read grant, a link, a legal
hold, a continuity report): the write transaction reads the caller's assignments and reach again,
in itself (``accounts.held_reach``), and a route that looked the item up in a transaction before
its write asks again in the write's. Both databases; the change is made deterministically by the
hook of ``tests.test_authority_race`` on the service's ``Database.session``, after the sign-in (and
any early look-up) and before the write's transaction. On PostgreSQL the rows that still grant are
held for share: an unassignment made while an action already checked is still to commit waits for it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents import continuity_record
from incidents.models import IncidentLink
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from redaction.models import RedactionJob
from tests.conftest import backends_waiting_on_a_lock, start_server, wait_for
from tests.test_authority_race import _armed_session
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
REASON = {"X-Evidence-Reason": "checking the assault on ward 7"}


def _setting(s: Any) -> dict[str, Any]:
    """``inv``, an investigator assigned to incidents A and B of NORTH, sees clip ``x`` through its
    link to A; ``mgr``, NORTH's security manager, sees clip ``y`` (not linked anywhere) as footage
    worn by S-N, a member of staff of NORTH; ``boss`` (an administrator) unassigns and moves."""
    staff(s, "S-N", "nurse", "NORTH")
    inv, _ = user(s, "inv", "investigator"), user(s, "mgr", "security_manager", "NORTH")
    user(s, "boss", "admin")
    x = store_item(s, start=T0, stop=T0 + timedelta(minutes=1)).id
    y = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1)).id
    incidents = []
    with s.db.session() as session:
        for title in ("A", "B"):
            draft = IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH", title=title)
            incident = create_incident(session, draft, "user:seed", ledger=s.ledger)
            assign_investigator(session, s.ledger, incident, inv, "user:seed")
            incidents.append(incident.id)
        link_evidence(session, s.ledger, incidents[0], x, "user:seed", "the clip of the assault")
    return {
        "inv_id": inv,
        "a": incidents[0],
        "b": incidents[1],
        "inv": {"item": x, "headers": bearer(s, "inv")},
        "mgr": {"item": y, "headers": bearer(s, "mgr")},
        "boss": bearer(s, "boss"),
    }


# Each action on the caller's item: its request, and the function the hook waits for on the stack
# (the one whose transaction writes; a route's early look-up, if any, has been made by then).
ACTIONS: dict[str, Any] = {
    "read": lambda c, item: ("GET", f"/api/v1/evidence/{item}/content", None, "_look_up_and_record"),
    # ...and between the read's look-up and the transaction that records it (a whole read's).
    "read_after_look_up": lambda c, item: ("GET", f"/api/v1/evidence/{item}/content", None, "start"),
    "waveform": lambda c, item: ("GET", f"/api/v1/evidence/{item}/waveform", None, "compute"),
    "redaction": lambda c, item: ("POST", f"/api/v1/evidence/{item}/redactions", {}, "request_redaction"),
    "read_grant": lambda c, item: (
        "POST",
        f"/api/v1/evidence/{item}/read-grants",
        {"reason": "checking the assault on ward 7", "use": "download"},
        "grant_read",
    ),
    "link": lambda c, item: (
        "POST",
        f"/api/v1/incidents/{c['b']}/links",
        {"kind": "evidence", "target_id": item, "reason": "the same assault"},
        "link",
    ),
    "continuity": lambda c, item: ("GET", f"/api/v1/evidence/{item}/continuity", None, "item_continuity"),
    "legal_hold": lambda c, item: (
        "PUT",
        f"/api/v1/evidence/{item}/legal-hold",
        {"hold": True, "reason": "kept for the tribunal"},
        "legal_hold",
    ),
}
# What narrows each caller's reach, made by ``boss`` through the API as an administrator would.
CHANGES: dict[str, Any] = {
    "inv": lambda c: ("DELETE", f"/api/v1/incidents/{c['a']}/investigators/{c['inv_id']}", None),
    "mgr": lambda c: (
        "POST",
        "/api/v1/staff",
        {"id": "S-N", "name": "Staff S-N", "group": "nurse", "site": "SOUTH"},
    ),
}
CASES = [
    (who, action)
    for who in ("inv", "mgr")
    for action in sorted(ACTIONS)
    if not (who == "inv" and action == "legal_hold")  # investigators place no holds
]


def _written(s: Any, item: str, actor: str) -> tuple[int, int, int, bool]:
    """What a write on the item by ``actor`` would leave: their custody entries (any item: a
    grant or a link), the item's redaction jobs and links, and its legal hold."""
    with s.db.reading() as session:
        entries = session.scalar(select(func.count()).where(CustodyEntry.actor == actor))
        jobs = session.scalar(select(func.count()).where(RedactionJob.source_item_id == item))
        links = session.scalar(select(func.count()).where(IncidentLink.target_id == item))
        held = session.scalar(select(EvidenceItem.legal_hold).where(EvidenceItem.id == item))
    return int(entries or 0), int(jobs or 0), int(links or 0), bool(held)


@pytest.mark.parametrize(("who", "action"), CASES)
def test_an_item_out_of_reach_after_the_sign_in_and_before_the_write_is_not_touched(
    services: Any, monkeypatch: pytest.MonkeyPatch, who: str, action: str
) -> None:
    s = services
    c = _setting(s)
    item, headers = c[who]["item"], {**c[who]["headers"], **REASON}
    server, thread, url = start_server(s)
    changed: list[int] = []

    def meanwhile() -> None:
        method, path, body = CHANGES[who](c)
        changed.append(
            httpx.request(method, url + path, json=body, headers=c["boss"], timeout=60).status_code
        )

    try:
        # The caller sees the item at first (their lists name it), as their sign-in found it.
        listed = httpx.get(f"{url}/api/v1/evidence", headers=headers, params={"limit": 100}, timeout=60)
        assert item in {i["id"] for i in listed.json()}, listed.text[:300]
        method, path, body, function = ACTIONS[action](c, item)
        hooked = _armed_session(s, monkeypatch, function, meanwhile)
        before = _written(s, item, f"user:{who}")
        hooked.append("armed")
        got = httpx.request(method, url + path, json=body, headers=headers, timeout=60)
        assert hooked == ["armed", "done"] and changed in ([200], [201], [204]), (hooked, changed)
        assert got.status_code == 404, (who, action, got.status_code, got.text[:300])
        after = _written(s, item, f"user:{who}")
        assert after == before, f"a refused {action} by {who} wrote something: {before} -> {after}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_an_unassignment_waits_for_a_report_checked_before_it(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL runs write transactions side by side: inv's continuity report of clip x is
    checked (x seen, through A) and held inside the transaction that records the read, before the
    ledger is taken; ``boss`` unassigns inv from A meanwhile. The unassignment waits for that
    commit (the assignments that granted it are held for share) rather than committing between the
    check and it, so the read comes first on the custody record, then the unassignment. (A
    manager's members of staff are read again, not held: ``accounts.held_reach`` says why.)"""
    s = services
    c = _setting(s)
    checked, go = threading.Event(), threading.Event()
    bounds = continuity_record.check_bounds

    def held(*args: Any) -> Any:
        checked.set()
        assert go.wait(60)
        return bounds(*args)

    monkeypatch.setattr(continuity_record, "check_bounds", held)
    server, thread, url = start_server(s)
    answers: dict[str, int] = {}

    def ask(name: str, method: str, path: str, body: Any, headers: dict[str, str]) -> None:
        answers[name] = httpx.request(method, url + path, json=body, headers=headers, timeout=60).status_code

    method, path, body, _ = ACTIONS["continuity"](c, c["inv"]["item"])
    read = threading.Thread(target=ask, args=("read", method, path, body, {**c["inv"]["headers"], **REASON}))
    change = threading.Thread(target=ask, args=("change", *CHANGES["inv"](c), c["boss"]))
    try:
        read.start()
        assert checked.wait(60)
        change.start()
        wait_for(
            lambda: backends_waiting_on_a_lock(s.db.engine, "incident_assignments") or "change" in answers,
            30,
            what="the unassignment to wait or end",
        )
        assert "change" not in answers, "inv was unassigned between the report's check and its commit"
        go.set()
        read.join(60)
        change.join(60)
        assert answers == {"read": 200, "change": 204}, answers
        with s.db.reading() as session:
            viewed = session.scalar(
                select(CustodyEntry.seq).where(
                    CustodyEntry.action == "viewed", CustodyEntry.actor == "user:inv"
                )
            )
            unassigned = session.scalar(
                select(func.max(CustodyEntry.seq)).where(CustodyEntry.actor == "user:boss")
            )
        assert viewed is not None and unassigned is not None and viewed < unassigned, (viewed, unassigned)
    finally:
        go.set()
        server.should_exit = True
        thread.join(15)
