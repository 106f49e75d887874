"""A custody trail as a reader may read it, over the item's family (both databases): a redacted copy
and its original share their incidents, so an entry on a copy that names an incident of its original
(an exhibit reference given there, a package of it) is withheld from a reader of the copy who may
not see that incident, exactly as the same entry on the original would be."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from incidents.exhibits import assign
from incidents.export.models import ExportJob
from incidents.models import Incident
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _incident(session: Any, ledger: Any, site: str) -> Incident:
    return create_incident(
        session,
        IncidentDraft(category="physical_assault", occurred_at=T0, site=site),
        "user:seed",
        ledger=ledger,
    )


def test_a_copys_trail_names_no_incident_of_its_family_the_reader_may_not_see(live: Any) -> None:
    s = live.services
    staff(s, "S-N", "nurse", "NORTH")
    inv = user(s, "inv", "investigator")
    original = store_item(s, wearer="S-N", start=T0, stop=T0 + timedelta(minutes=1))
    copy = store_item(s, kind="redacted_clip", derived_from=original.id)
    record = store_item(s, kind="redaction_record", derived_from=copy.id)
    export_id = str(uuid.uuid4())
    with s.db.session() as session:
        theirs = _incident(session, s.ledger, "SOUTH")  # the original's incident, not the investigator's
        mine = _incident(session, s.ledger, "NORTH")
        assign_investigator(session, s.ledger, mine, inv, "user:seed")
        link_evidence(session, s.ledger, theirs.id, original.id, "user:seed", "filmed at the scene")
        link_evidence(session, s.ledger, mine.id, copy.id, "user:seed", "the copy we were given")
        # The other incident's own business with the copy: an exhibit reference there, a package.
        assign(session, s.ledger, theirs, copy, "user:seed")
        session.add(
            ExportJob(
                id=export_id,
                incident_id=theirs.id,
                requested_by="user:seed",
                requester_role="admin",
                scope="{}",
                status="ready",
            )
        )
        s.ledger.append(
            session,
            "exported",
            "user:seed",
            item_id=record.id,
            details={"export_id": export_id, "media_included": True},
        )
        hidden = {theirs.id, theirs.reference, export_id}
        own = mine.reference
    investigator, admin = bearer(s, "inv"), live.admin()
    api = f"{live.url}/api/v1/evidence"
    assert httpx.get(f"{api}/{original.id}", headers=investigator).status_code == 404
    for item in (copy.id, record.id):
        whole = httpx.get(f"{api}/{item}/custody", headers=admin).json()
        seen = httpx.get(f"{api}/{item}/custody", headers=investigator)
        assert seen.status_code == 200
        text = seen.text
        assert not [m for m in hidden if m in text], (item, text)
        # Every entry keeps its place and hash; those of the other incident say why they are withheld.
        assert [e["entry_hash"] for e in seen.json()] == [e["entry_hash"] for e in whole]
        assert any(e["withheld"] for e in seen.json())
        assert any(m in json.dumps(whole) for m in hidden)  # the admin reads the trail whole
    # The reader's own incident is still named on the copy they were given.
    trail = httpx.get(f"{api}/{copy.id}/custody", headers=investigator).json()
    assert any(e["action"] == "linked" and own in json.dumps(e["details"]) for e in trail)
