"""A custody row whose columns a database editor changed into what no entry of the service holds
(``details`` that are not JSON, or JSON but not an object; on SQLite an ``item_seq`` that is not a
whole number) is named by ``evidence verify`` (the entry's number and what is wrong), which goes on
verifying the rest and exits 1; neither it nor ``evidence upgrade-seals`` ends in a traceback. A
ledger of every kind of entry the service writes (items, viewings, an incident, a device's
enrolment, alarms, a cancel, visits, a package and its link), one entry of each kind edited at a
time, on both databases."""

from __future__ import annotations

import json
import os
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from alarms.models import LoneWorkerEvent
from chain_of_custody.evidence import ByteRange, Provenance
from chain_of_custody.models import CustodyEntry
from chain_of_custody.verify import verify_service
from chain_of_custody.viewing import ViewingKey, ViewingPolicy
from chain_of_custody.viewings import record_range, seal_served
from tests.test_alarms_kit import enrol, later
from tests.test_export_api import package_with_link
from tests.test_export_package import put_evidence
from tests.test_incidents_kit import assigned_incident, store_item, user
from tests.test_visit_seals import _cli, _sql


def _ledger(s: Any) -> dict[str, int]:
    """Every kind of entry the service writes, on the ledger; the number of the last of each kind."""
    now = datetime.now(UTC)
    user(s, "inv", "investigator", site="NORTH")
    clip = store_item(s, data=os.urandom(5000))
    policy = ViewingPolicy.from_settings(s.settings)
    for viewer in ("user:a", "user:b"):  # the first sealed, the second left open
        key = ViewingKey(clip.id, viewer, "sign-in", "view", "a reason")
        record_range(s.db, s.ledger, key, clip, ByteRange(0, 9), policy)
        if viewer == "user:a":
            seal_served(s.db, s.ledger)
    assigned_incident(s, now)
    device = enrol(s, "LW-U1", staff_id="S-U1", site="NORTH")
    assert s.alarms.handle(*device.sos(sent_at=now), now=now).outcome == "accepted"
    amber = device.amber(600, sent_at=now)
    assert s.alarms.handle(*amber, now=now).outcome == "accepted"
    s.alarms.handle(*device.cancel(json.loads(amber[1])["event_id"], sent_at=now), now=now)
    s.alarms.handle(*device.checkin_start("V-U1", now + timedelta(minutes=30), sent_at=now), now=now)
    s.alarms.handle(*device.checkin_end("V-U1", sent_at=now), now=now)
    s.alarms.handle(*device.checkin_start("V-U2", now + timedelta(minutes=30), sent_at=now), now=now)
    s.alarms.raise_missed_checkins(later(3600, now))
    memo = put_evidence(s, os.urandom(5000), Provenance(kind="voice_memo", actor="t"))
    package_with_link(s, [memo.id])
    with s.db.session() as session:
        rows = session.execute(select(CustodyEntry.seq, CustodyEntry.action).order_by(CustodyEntry.seq))
        return {action: seq for seq, action in rows}


def _set(s: Any, seq: int, column: str, value: Any) -> tuple[bool, Any]:
    """Set one column of entry #seq by SQL (``seq`` itself to ``<seq>z``); whether the database took
    it (an index on what an alarm's link step names reads its details as JSON: neither database
    takes text that is not JSON there) and what the column held."""
    with s.db.session() as session:
        held = session.execute(text(f"SELECT {column} FROM custody_entries WHERE seq = {seq}")).scalar()
    try:
        with s.db.session() as session:
            session.execute(text(f"UPDATE custody_entries SET {column} = :v WHERE seq = {seq}"), {"v": value})
    except DBAPIError:
        return False, held
    return True, held


def _put_back(s: Any, seq: int, column: str, held: Any) -> None:
    where = f"seq = '{seq}z'" if column == "seq" else f"seq = {seq}"
    with s.db.session() as session:
        session.execute(text(f"UPDATE custody_entries SET {column} = :v WHERE {where}"), {"v": held})


def _verified(s: Any) -> list[Any]:
    with s.db.reading() as session:
        return list(verify_service(session, s.store, s.key).problems)


def _crashes(s: Any, label: str) -> list[str]:
    """What ``evidence verify`` and ``evidence upgrade-seals`` ended in other than an exit code."""
    out = []
    for args in (("upgrade-seals",),):
        r = _cli(s, *args)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            out.append(
                f"{label}: evidence {args[0]}: " + "".join(traceback.format_exception(r.exception)[-2:])
            )
    return out


@pytest.mark.parametrize("value", ["not json {", "[1, 2]"])
def test_an_entry_whose_details_are_not_a_json_object_is_named_and_verification_goes_on(
    services: Any, value: str
) -> None:
    s = services
    last_of = _ledger(s)
    # (What the tests' own rows make verify say, kept through each edit: it goes on verifying.)
    before = {str(p) for p in _verified(s)}
    crashed: list[str] = []
    for action, seq in sorted(last_of.items()):
        taken, held = _set(s, seq, "details", value)
        if not taken:
            assert action == "linked", action  # an alarm's link step: the database refuses it
            continue
        try:
            problems = _verified(s)
        except Exception:  # noqa: BLE001 - the finding is the crash itself
            crashed.append(f"verify on #{seq} ({action}): {traceback.format_exc().splitlines()[-1]}")
        else:
            named = [p for p in problems if p.where == f"custody entry #{seq}" and p.kind == "entry_altered"]
            assert len(named) == 1, (action, [str(p) for p in problems])
            assert "its details are not a JSON object" in named[0].detail, (action, named[0].detail)
            assert before <= {str(p) for p in problems}, (action, [str(p) for p in problems])
        crashed += _crashes(s, f"#{seq} ({action})")
        _put_back(s, seq, "details", held)
    assert crashed == [], "\n".join(crashed)


def test_verify_exits_1_naming_the_entry_and_checks_the_rest(services: Any) -> None:
    """The command: a finding that names the entry and what is wrong, the rest still checked (an
    item row altered besides is named too), exit 1, no traceback."""
    s = services
    last_of = _ledger(s)
    seq = last_of["stored"]
    _set(s, seq, "details", "not json {")
    other = store_item(s, data=os.urandom(3000))
    _sql(s, text(f"UPDATE evidence_items SET size = 1 WHERE id = '{other.id}'"))
    r = _cli(s, "verify", "--json", "--skip-objects")
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == 1, r.output
    report = json.loads(r.stdout)
    found = {(p["kind"], p["where"]) for p in report["problems"]}
    assert ("entry_altered", f"custody entry #{seq}") in found, report["problems"]
    assert ("item_row_altered", f"evidence item {other.id}") in found, report["problems"]
    assert any(
        p["kind"] == "item_unrecorded" and f"#{seq} cannot be read" in p["detail"] for p in report["problems"]
    ), report["problems"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("column", "value"), [("item_seq", "x"), ("seq", None)])
def test_an_entry_numbered_by_sql_ends_neither_verify_nor_the_upgrade_in_a_traceback(
    services: Any, column: str, value: Any
) -> None:
    """SQLite keeps an ``item_seq`` of ``'x'`` or a ``seq`` of ``'17z'``: the device's enrolments were
    read with ``int()`` to find the keys it had (``raise_seals.recorded_device_keys``), which
    ``evidence upgrade-seals`` does for a message stored before receipt seals, and the latest entry
    of a device, user or incident, which its row's seal is bound to. Each kind of entry, one at a
    time: verify names the entry, the upgrade lists and refuses what it cannot vouch for."""
    s = services
    last_of = _ledger(s)
    _sql(s, update(LoneWorkerEvent).values(receipt_seal=None))  # as stored before receipt seals
    crashed: list[str] = []
    for action, seq in sorted(last_of.items()):
        taken, held = _set(s, seq, column, f"{seq}z" if value is None else value)
        assert taken, action
        try:
            problems = _verified(s)
        except Exception:  # noqa: BLE001
            crashed.append(f"verify on #{seq} ({action}): {traceback.format_exc().splitlines()[-1]}")
        else:
            kinds = {p.kind for p in problems}
            assert "entry_number_not_integer" in kinds, (action, [str(p) for p in problems])
        crashed += _crashes(s, f"#{seq} ({action})")
        _put_back(s, seq, column, held)
    assert crashed == [], "\n".join(crashed)
