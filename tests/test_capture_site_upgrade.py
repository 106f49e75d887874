"""Items recorded before capture sites (migration 0047) are given theirs by ``evidence upgrade-seals``,
on both databases and the real store.

Such an item has no site, and its reach by device follows its device's site now: a SOUTH camera's
clip (and its redacted copy) and a SOUTH lone worker's SOS payload, recorded so, were NORTH's to
read once an administrator re-enrolled the camera and the device at NORTH. The upgrade's
``seal-capture-sites`` step gives each the site the custody ledger bears out (its device's as its
'stored' entry was written, the alarm's for a payload, the original's for a copy) and seals the row
again over it: then NORTH reads none of them and SOUTH keeps them. An item whose seal does not
hold, whose 'stored' entry cannot be read, or whose device's site then the ledger never recorded is
refused, with why, and left as it is."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.entries import CustodyAction
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.reach_seals import item_seal, reach_secret
from chain_of_custody.row_seals import device_subject
from devices.seals import device_seal_key
from tests.test_alarms_kit import enrol
from tests.test_awaiting_upgrade import _cli
from tests.test_incidents_kit import store_item
from tests.test_item_capture_site import _enrol_camera, _managers, _reads
from tests.test_lifecycle_seals import _row
from tests.test_reach_seals import _camera
from tests.test_visit_site import _re_enrol_at_north

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
READ = {"item": 200, "listed": True, "page": 200}
NONE = {"item": 404, "listed": False, "page": 404}
COPY = {**READ, "page": 303}  # a redacted copy's page opens its original's


def _as_before_sites(services: Any, item_id: str) -> None:
    """The item's row as the service recorded it before 0047: no site, its seal over none."""
    with services.db.session() as session:
        item = session.get_one(EvidenceItem, item_id)
        item.site = None
        item.reach_seal = item_seal(
            reach_secret(services.key), item.id, item.wearer, item.source_device_id, item.derived_from_id
        )


def _site(services: Any, item_id: str) -> str | None:
    with services.db.session() as session:
        return session.get_one(EvidenceItem, item_id).site


def _awaiting(services: Any) -> int:
    with services.db.session() as session:
        return awaiting_upgrade(session, services.key).counts["item_capture_sites"]


def test_the_upgrade_keeps_older_items_with_the_site_they_were_captured_under(live: Any) -> None:
    s = live.services
    h = _managers(s)
    _enrol_camera(live, "CAM-S", "S-C", "SOUTH")
    clip = store_item(s, device="CAM-S", start=T0).id  # as recorded before 0047: no site
    copy = store_item(s, device="CAM-S", start=T0, kind="redacted_clip", derived_from=clip).id
    kit = enrol(s, "LW-Z", staff_id="S-Z", site="SOUTH")
    topic, raw = kit.sos()
    result = s.alarms.handle(topic, raw)
    event_id = json.loads(raw)["event_id"]
    assert result.outcome == "accepted" and result.alarm_id, result
    payload = _row(s, result.alarm_id).evidence_item_id
    assert payload is not None
    memo_bytes = b"OggS" + bytes(range(256)) * 4
    headers = kit.voice_memo_headers(event_id, memo_bytes)
    admitted = s.alarms.voice_memos.admit(
        "LW-Z",
        event_id,
        sha256=headers["X-Device-Content-SHA256"],
        size=len(memo_bytes),
        content_type="audio/ogg",
        sent_at=headers["X-Device-Sent-At"],
        signature=headers["X-Device-Signature"],
    )
    memo, _, _ = s.alarms.voice_memos.store(admitted, memo_bytes)
    items = (clip, copy, payload, memo)
    for item in (payload, memo):
        _as_before_sites(s, item)
    assert {_site(s, i) for i in items} == {None}

    _enrol_camera(live, "CAM-S", "N-C", "NORTH")
    _re_enrol_at_north(live, "LW-Z", "N-1")
    # Before the upgrade: NORTH reads SOUTH's older items through the devices' site now.
    reads = {clip: READ, copy: COPY, payload: READ, memo: READ}
    for item, read in reads.items():
        assert _reads(live, "north_mgr", h["north_mgr"], item) == read, item
    assert _awaiting(s) == 4

    listed = _cli(s, "upgrade-seals")
    assert listed.exit_code == 0, listed.output
    assert "4 evidence items recorded before capture sites may reach" in " ".join(listed.output.split())
    assert {_site(s, i) for i in items} == {None}  # listing wrote nothing
    done = _cli(s, "upgrade-seals", "--yes")
    assert done.exit_code == 0, done.output
    step = done.output.split("== evidence seal-capture-sites\n", 1)[1].split("== evidence ", 1)[0]
    assert "4 evidence items' capture sites recorded" in step, step
    assert (
        f"evidence item {copy} (redacted_clip, device CAM-S): captured at SOUTH (its original {clip}'s"
        in step
    )
    said = {line.split(" ", 3)[2]: line for line in step.splitlines() if line.startswith("evidence item ")}
    for item in (payload, memo):  # the alarm's recorded site
        assert f"captured at SOUTH (its alarm {result.alarm_id}'s site by custody entry #" in said[item], step

    assert [_site(s, i) for i in items] == ["SOUTH"] * 4
    for item, read in reads.items():
        assert _reads(live, "north_mgr", h["north_mgr"], item) == NONE, item
        assert _reads(live, "south_mgr", h["south_mgr"], item) == read, item
    assert _awaiting(s) == 0
    verified = _cli(s, "verify", "--skip-objects", "--json")
    assert "item_seal_broken" not in verified.output, verified.output


def test_the_step_refuses_what_the_ledger_does_not_bear_out(services: Any) -> None:
    s = services
    _camera(s, "CAM-S", "SOUTH")
    _camera(s, "CAM-NOWHERE", None)  # enrolled at no site: its items follow it, as new ones do
    with s.db.session() as session:  # enrolled as the service recorded it before sites were recorded
        subject = device_subject(device_seal_key(s.key), "CAM-OLD")
        details = {"device": "CAM-OLD", "kind": "camera", "public_key": "", "staff": None}
        s.ledger.append(session, CustodyAction.DEVICE_ENROLLED, "test", item_id=subject, details=details)
    good = store_item(s, device="CAM-S", start=T0).id
    moved = store_item(s, device="CAM-S", start=T0).id
    unreadable = store_item(s, device="CAM-S", start=T0).id
    old = store_item(s, device="CAM-OLD", start=T0).id
    unknown = store_item(s, device="CAM-NEVER", start=T0).id
    nowhere = store_item(s, device="CAM-NOWHERE", start=T0).id
    with s.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == moved).values(wearer="S-PLANTED"))
        session.execute(
            update(CustodyEntry)
            .where(CustodyEntry.item_id == unreadable, CustodyEntry.action == CustodyAction.STORED)
            .values(details="not json")
        )
    assert _awaiting(s) == 6

    listed = _cli(s, "seal-capture-sites")
    assert listed.exit_code == 0, listed.output
    lines = {
        i: line
        for line in listed.output.splitlines()
        for i in (good, moved, unreadable, old, unknown, nowhere)
        if i in line
    }
    assert lines[good].endswith(
        "captured at SOUTH (its device's site by custody entry #" + lines[good].rsplit("#", 1)[1]
    )
    assert "REFUSED: its reach seal does not hold" in lines[moved]
    assert "REFUSED: its 'stored' custody entry cannot be read" in lines[unreadable]
    assert "REFUSED: device CAM-OLD's enrolment" in lines[old] and "records no site" in lines[old]
    assert "REFUSED: no custody entry enrols device CAM-NEVER" in lines[unknown]
    assert nowhere not in lines  # captured at no site: nothing to record
    assert "1 evidence items' capture sites would be recorded" in listed.output
    assert "4 evidence items' capture sites refused" in listed.output
    assert _site(s, good) is None

    done = _cli(s, "seal-capture-sites", "--yes")
    assert done.exit_code == 1, done.output  # it refused rows
    assert _site(s, good) == "SOUTH"
    assert [_site(s, i) for i in (moved, unreadable, old, unknown, nowhere)] == [None] * 5
    # The step has run: the refused items are its to list, not the banner's for good.
    assert _awaiting(s) == 0
    again = _cli(s, "seal-capture-sites", "--yes")
    assert "4 evidence items' capture sites refused" in again.output, again.output
    with s.db.session() as session:
        q = select(func.count()).where(CustodyEntry.action == CustodyAction.CAPTURE_SITES_RECORDED)
        assert session.scalar(q) == 1


def test_a_row_changed_after_it_was_judged_is_left_as_it_is(services: Any, monkeypatch: Any) -> None:
    """The site is written only where the row is still as it was judged: a wearer written in between
    (by SQL, say) keeps the row without a site, and its seal as it was."""
    import chain_of_custody.capture_sites as capture_sites

    s = services
    _camera(s, "CAM-S", "SOUTH")
    item = store_item(s, device="CAM-S", start=T0).id
    judged = capture_sites.unsited_items

    def then_moved(session: Any, key: Any, entries: Any) -> list[capture_sites.UnsitedItem]:
        listed = judged(session, key, entries)
        session.execute(update(EvidenceItem).where(EvidenceItem.id == item).values(wearer="S-LATER"))
        return listed

    monkeypatch.setattr(capture_sites, "unsited_items", then_moved)
    with s.db.session() as session:
        entries = s.ledger.all_entries(session)
        listed = capture_sites.record_capture_sites(session, s.key, s.ledger, entries)
    assert [(found.item_id, found.site, found.refused) for found in listed] == [(item, "SOUTH", None)]
    assert _site(s, item) is None
