"""A release from quarantine beside the service's own work on the same item, on both databases.

A release took the ledger's head and then the item's row; an integrity quarantine (bytes found
altered by a read, an export or a fixity check) took the row and then the head. At the same moment
on PostgreSQL the two deadlocked and one was aborted: when it was the quarantine, the item was
served again as released. And a release reason naming an incident the reader may not see was
withheld from the item's custody trail but shown whole in the item's own view."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from chain_of_custody.evidence import Provenance, quarantine, record_evidence
from chain_of_custody.ledger import hold_head
from chain_of_custody.quarantines import INTEGRITY, quarantine_standing, release
from tests.conftest import wait_for
from tests.test_quarantine_release import REASON, _held_clip, _incident, _person, _release


def _released_naming_south(live: Any) -> tuple[str, str, dict[str, str]]:
    """A SOUTH clip linked to a SOUTH incident and a NORTH one, released with a reason naming the
    SOUTH incident's reference: (item, reference, NORTH's manager, who sees the item by the link)."""
    item = _held_clip(live)
    south = _incident(live, "SOUTH", item.id)
    reference = httpx.get(f"{live.url}/api/v1/incidents/{south}", headers=live.admin()).json()["reference"]
    _incident(live, "NORTH", item.id)
    north_boss = _person(live, "north_boss", "security_manager", "NORTH")
    said = f"Reviewed for {reference}: the camera was re-keyed after it, the footage is genuine"
    assert _release(live, live.admin(), item.id, said).status_code == 200
    return item.id, reference, north_boss


def test_a_release_reason_withheld_from_a_trail_is_not_shown_in_the_item(live: Any) -> None:
    item_id, reference, north_boss = _released_naming_south(live)
    trail = httpx.get(f"{live.url}/api/v1/evidence/{item_id}/custody", headers=north_boss).json()
    assert "withheld" in next(e for e in trail if e["action"] == "quarantine_released")
    shown = httpx.get(f"{live.url}/api/v1/evidence/{item_id}", headers=north_boss)
    assert shown.status_code == 200, shown.text
    assert reference not in json.dumps(shown.json()), shown.json()["quarantine_releases"]
    listed = httpx.get(f"{live.url}/api/v1/evidence", headers=north_boss).json()
    assert reference not in json.dumps(listed)


def _waiting_on_locks(services: Any) -> int:
    with services.db.engine.connect() as c:
        found = c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return int(found.scalar_one())


def test_a_release_and_an_integrity_quarantine_at_once_both_land(services: Any) -> None:
    """release() takes the ledger head, then the row; quarantine() took the row, then the head. Two
    at once deadlocked on PostgreSQL and one was aborted: when it was the quarantine, it was lost,
    and the item served again. On SQLite one writer waits for the other, and the same holds."""
    stored = services.store.put_bytes(
        "test/held", b"h" * 1000, retain_until=datetime.now(UTC) + timedelta(days=1), content_type="video/mp4"
    )
    with services.db.session() as session:
        item = record_evidence(
            session,
            services.ledger,
            stored,
            Provenance(kind="voice_memo", actor="test"),
            quarantine_reason="device LW-9 was disabled when it sent the memo",
            for_review=True,
        )
    holding = threading.Event()
    failures: list[BaseException] = []

    def releasing() -> None:
        try:
            with services.db.session() as session:
                hold_head(session)  # release() takes this first; the quarantine comes meanwhile
                holding.set()
                if services.db.is_postgres:  # SQLite: the quarantine waits to begin (one writer)
                    wait_for(lambda: _waiting_on_locks(services) >= 1, 30, 0.05, "the quarantine to wait")
                release(session, services.ledger, item.id, "user:admin", REASON)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    thread = threading.Thread(target=releasing)
    thread.start()
    assert holding.wait(30)
    try:
        with services.db.session() as session:
            quarantine(session, services.ledger, item.id, "stored object hashes to something else", {})
    except BaseException as exc:  # noqa: BLE001 - reported below
        failures.append(exc)
    thread.join(60)
    assert not failures, [repr(f) for f in failures]
    with services.db.reading() as session:
        standing = quarantine_standing(session, services.ledger.verifier, item.id)
    assert [q.kind for q in standing.open] == [INTEGRITY]
