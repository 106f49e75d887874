"""What recording an item and giving it an exhibit reference send to the database (both databases).

A new item's row goes in with its reach seal in one INSERT (no UPDATE of the row after), and its
first custody entry is not looked for: its id is new in this transaction. An exhibit reference
looked for under the ledger lock is looked for once. Every alarm made whole does both, so each
statement saved is one round trip less for every SOS; nothing checked is given up: the chain is
whole, the seal holds, and a reference given before is found."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import EvidenceItem
from chain_of_custody.reach_seals import SiteReach, reach_secret
from incidents.exhibits import assign
from incidents.models import Incident
from incidents.retention import lock_ledger
from incidents.service import IncidentDraft, create_incident
from tests.test_incidents_kit import store_item
from tests.test_ledger_round_trips import last_entry_reads, statements, whole_chain

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _record(services: Any, session: Any, item_id: str | None = None) -> EvidenceItem:
    data = uuid.uuid4().bytes * 8
    stored = services.store.put_bytes(
        f"test/{uuid.uuid4()}",
        data,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="application/json",
    )
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    return record_evidence(
        session,
        services.ledger,
        stored,
        Provenance(kind="alarm", actor="device:LW-1", source_device_id="LW-1", wearer="S-1"),
        captured={"device": "LW-1"},
        received={"via": "mqtt"},
        verified={"ok": True},
        item_id=item_id,
    )


def _item_writes(sent: list[str]) -> tuple[int, int]:
    inserts = sum(1 for s in sent if s.startswith("INSERT INTO evidence_items"))
    updates = sum(1 for s in sent if s.startswith("UPDATE evidence_items"))
    return inserts, updates


def test_a_new_item_is_written_once_with_its_seal_and_its_first_entry_is_not_looked_for(
    services: Any,
) -> None:
    with services.db.session() as session, statements(services) as sent:
        item = _record(services, session)
        item_id = item.id
    # Before: INSERT, then UPDATE evidence_items SET reach_seal; and one read of the new item's last entry.
    assert _item_writes(sent) == (1, 0)
    assert last_entry_reads(sent) == 0
    chain = whole_chain(services)
    mine = [e for e in chain if e.body.item_id == item_id]
    assert [e.body.action for e in mine] == ["captured", "received", "stored", "verified"]
    assert [e.body.item_seq for e in mine] == [1, 2, 3, 4]
    with services.db.session() as session:
        row = session.get(EvidenceItem, item_id)
        assert row is not None and row.reach_seal
        assert SiteReach(secret=reach_secret(services.ledger.key)).holds(row)


def test_an_item_recorded_under_an_id_given_to_it_chains_to_what_custody_holds_of_it(services: Any) -> None:
    item_id = str(uuid.uuid4())
    with services.db.session() as session:
        services.ledger.append(session, "viewed", "user:a", item_id=item_id, details={"before": True})
    with services.db.session() as session, statements(services) as sent:
        _record(services, session, item_id=item_id)
    assert last_entry_reads(sent) == 1  # an id from outside may have entries: looked for, as before
    mine = [e for e in whole_chain(services) if e.body.item_id == item_id]
    assert [e.body.item_seq for e in mine] == [1, 2, 3, 4, 5]


def _assign(services: Any, incident_id: str, item_id: str, *, locked: bool) -> tuple[str, int]:
    """The item's exhibit reference in the incident (the ledger lock taken first when ``locked``, as
    a link holds it), and how many times the reference was looked for."""
    with services.db.session() as session, statements(services) as sent:
        incident = session.get(Incident, incident_id)
        item = session.get(EvidenceItem, item_id)
        if locked:
            lock_ledger(session)
        reference = assign(session, services.ledger, incident, item, "user:seed").reference
    return reference, sum(1 for s in sent if s.startswith("SELECT exhibit_references.id"))


def test_an_exhibit_reference_looked_for_under_the_ledger_lock_is_looked_for_once(services: Any) -> None:
    clip = store_item(services, wearer="S-1", start=T0, stop=T0 + timedelta(minutes=1))
    with services.db.session() as session:
        draft = IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH")
        incident_id = create_incident(session, draft, "user:seed", ledger=services.ledger).id
    given, reads = _assign(services, incident_id, clip.id, locked=True)
    # Before: looked for before the lock and again under it (2).
    assert reads == 1
    assert _assign(services, incident_id, clip.id, locked=True) == (given, 1)
    # Without the lock held it is found at the first look; one not found would be looked for again
    # under the lock (another may have given it meanwhile).
    assert _assign(services, incident_id, clip.id, locked=False) == (given, 1)
    whole_chain(services)
