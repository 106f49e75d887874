"""A player's ranges use one look-up for a moment (``ingest.viewing_admissions``), on both databases
and the real store: the next ranges of the same read by the same sign-in are not looked up afresh
for ``viewing_admission_seconds``, while every range is still signed in, recorded on custody and
checked; an unlinked item stops playing once the window has passed, and a withdrawn assignment, a
changed role, a quarantine or another reason take effect on the very next range."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from accounts.models import User
from chain_of_custody.evidence import quarantine
from chain_of_custody.viewings import kept_ranges
from incidents.models import Incident
from incidents.service import (
    IncidentDraft,
    assign_investigator,
    create_incident,
    link_evidence,
    unassign_investigator,
    unlink_evidence,
)
from storage.digests import BLOCK
from tests.conftest import wait_for
from tests.test_incidents_kit import bearer, staff, store_item, user

REASON = "checking the assault at the front desk"
DATA = bytes(range(256)) * 4096  # 1 MiB: four blocks


def _range(url: str, item_id: str, headers: dict[str, str], n: int, reason: str = REASON) -> httpx.Response:
    """The ``n``-th of a player's ranges: one block a time, as a seek asks them one after another."""
    first = (n % 4) * BLOCK
    return httpx.get(
        f"{url}/api/v1/evidence/{item_id}/content",
        headers={**headers, "Range": f"bytes={first}-{first + BLOCK - 1}"},
        params={"reason": reason},
        timeout=60,
    )


def _playing(
    live: Any, seconds: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, int, dict[str, str], str, str]:
    """An investigator assigned to an incident its clip is linked to (their id and bearer headers);
    the window set to ``seconds``."""
    s = live.services
    monkeypatch.setattr(s.settings, "viewing_admission_seconds", seconds)
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv", "investigator")
    clip = store_item(s, wearer="S-N", data=DATA)
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=datetime.now(UTC), site="NORTH"),
            "user:admin",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, inv, "user:admin")
        link_evidence(session, s.ledger, incident.id, clip.id, "user:admin", "shows the assault")
        incident_id = incident.id
    return s, inv, bearer(s, "inv"), incident_id, clip.id


def test_an_unlinked_clip_plays_on_for_the_window_at_most_and_every_range_is_recorded(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _, h, incident_id, clip = _playing(live, 3.0, monkeypatch)
    first = _range(live.url, clip, h, 0)
    assert first.status_code == 206 and first.content == DATA[:BLOCK], first.text[:200]
    viewing = first.headers["x-custody-viewing"]
    with s.db.session() as session:
        unlink_evidence(session, s.ledger, incident_id, clip, "user:admin", "linked by mistake")
    # The player's next range, at once: admitted by the look-up its first range made, and recorded.
    nxt = _range(live.url, clip, h, 1)
    assert nxt.status_code == 206 and nxt.content == DATA[BLOCK : 2 * BLOCK], nxt.text[:200]
    assert nxt.headers["x-custody-viewing"] == viewing
    assert nxt.headers["x-custody-viewing-state"] == "joined"
    # Once the window has passed the next range is looked up afresh: not found, and not recorded.
    asked = [1]  # the last range asked for (0 and 1 so far)
    unlinked_at = time.monotonic()

    def refused() -> bool:
        asked[0] += 1
        r = _range(live.url, clip, h, asked[0])
        assert r.status_code in (206, 404), r.text[:200]
        return r.status_code == 404

    wait_for(refused, 15, what="the unlinked clip to be refused")
    assert time.monotonic() - unlinked_at < 15
    with s.db.session() as session:
        ranges = kept_ranges(session, viewing)
    # Every range served is a row of the viewing: the first two and every one the polling was
    # served, and not the refused one (ranges 0..asked were asked for, the last refused).
    assert len(ranges) == asked[0], ranges
    assert [(first, last) for _, first, last, _ in ranges][:2] == [(0, BLOCK - 1), (BLOCK, 2 * BLOCK - 1)]


def test_a_withdrawn_assignment_a_changed_role_or_a_quarantine_refuses_the_very_next_range(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, inv, h, incident_id, clip = _playing(live, 10.0, monkeypatch)
    assert _range(live.url, clip, h, 0).status_code == 206
    with s.db.session() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
        unassign_investigator(session, s.ledger, incident, inv, "user:admin")
    assert _range(live.url, clip, h, 1).status_code == 404  # the assignment is part of the sign-in
    with s.db.session() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
        assign_investigator(session, s.ledger, incident, inv, "user:admin")
    assert _range(live.url, clip, h, 2).status_code == 206
    with s.db.session() as session:
        session.execute(update(User).where(User.id == inv).values(role="auditor"))
    assert _range(live.url, clip, h, 3).status_code in (401, 403)  # the role is read with the sign-in
    with s.db.session() as session:
        session.execute(update(User).where(User.id == inv).values(role="investigator"))
    if _range(live.url, clip, h, 3).status_code != 206:
        pytest.skip("a changed role ends the sign-in here: nothing kept could outlive it")
    with s.db.session() as session:
        quarantine(session, s.ledger, clip, "found altered by verification", {})
    refused = _range(live.url, clip, h, 0)
    assert refused.status_code == 409 and refused.json()["reason"] == "quarantined", refused.text[:200]


def test_another_reason_is_looked_up_and_recorded_as_its_own(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, h, _, clip = _playing(live, 10.0, monkeypatch)
    one = _range(live.url, clip, h, 0)
    other = _range(live.url, clip, h, 1, reason="another question about the same night")
    assert one.status_code == other.status_code == 206
    assert other.headers["x-custody-viewing-state"] == "opened"
    assert other.headers["x-custody-viewing"] != one.headers["x-custody-viewing"]
