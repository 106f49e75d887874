"""What the service does on its own account with a device's row, against a row changed in the
database behind its back, on both databases, by its effects.

A device's own message is refused when its row's seal does not hold (``devices.seals``); an alarm
the service raises on a timer (the device fell silent, a visit ran over), the payload item it
records later, and the end of a clip upload read the same row with no message to refuse. A NORTH
lone worker's unit moved to SOUTH and to a SOUTH porter by SQL must not put its timer alarms before
SOUTH's control room, naming the porter: the alarm is raised all the same (a lone worker's alarm is
never silenced), at no site and nobody's, with a note and a warning naming the device, so the
readers of every site see it and no site's control room does. A camera's key swapped by SQL
after an upload began vouches for no clip. A device's state row (not sealed) naming another
device's offline alarm by SQL neither clears that alarm nor silences its own."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from alarms.lifecycle import DEVICE_UNVOUCHED_NOTE
from alarms.models import AlarmRecord, LoneWorkerEvent
from chain_of_custody.models import CustodyEntry, EvidenceItem
from devices.models import Device
from storage.objects import ObjectStore
from tests.clipkit import enrol as enrol_fleet
from tests.test_alarm_seals import NOWHERE, SouthReader
from tests.test_alarms_kit import DeviceKit, enrol, later
from tests.test_incidents_kit import staff
from tests.test_upload_completion import PART, _upload
from tests.test_visit_seals import set_state_row

EVERYWHERE = {"list": True, "alarm": True, "record": True, "stream": True}


@pytest.fixture
def south(live: Any) -> SouthReader:
    return SouthReader(live)


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


def _move_to_south(services: Any, device_id: str) -> None:
    """The attacker's write: the unit moved to SOUTH and to a SOUTH porter."""
    _sql(services, update(Device).where(Device.id == device_id).values(site="SOUTH", assigned_staff_id="P-9"))


def _alarm(services: Any, device_id: str, kind: str) -> AlarmRecord:
    with services.db.session() as session:
        q = select(AlarmRecord).where(AlarmRecord.device_id == device_id, AlarmRecord.kind == kind)
        return session.scalars(q).one()


def _on_a_visit(services: Any, device: DeviceKit, visit_id: str, now: datetime) -> None:
    start = device.checkin_start(visit_id, now + timedelta(minutes=30), sent_at=now)
    assert services.alarms.handle(*start, now=now).outcome == "accepted"


def _admin_lists(south: SouthReader, alarm_id: str) -> bool:
    listed = httpx.get(f"{south.api}/alarms", params={"limit": 200}, headers=south.admin)
    assert listed.status_code == 200, listed.text
    return alarm_id in {a["id"] for a in listed.json()}


def _warned_of(caplog: pytest.LogCaptureFixture, device_id: str) -> bool:
    return any(
        r.levelno == logging.WARNING and getattr(r, "device", None) == device_id and "seal" in r.getMessage()
        for r in caplog.records
    )


def test_an_offline_alarm_takes_no_site_or_wearer_from_a_device_moved_in_the_database(
    south: SouthReader, caplog: pytest.LogCaptureFixture
) -> None:
    s = south.s
    staff(s, "P-9", "porter", "SOUTH")
    genuine = enrol(s, "LW-T0", staff_id="S-0", site="SOUTH")  # the control: a SOUTH unit as enrolled
    moved = enrol(s, "LW-T1", staff_id="S-1", site="NORTH")
    now = datetime.now(UTC)
    for device, visit in ((genuine, "V-T0"), (moved, "V-T1")):
        _on_a_visit(s, device, visit, now)
        assert (
            s.alarms.handle(*device.heartbeat(sent_at=later(10, now)), now=later(10, now)).outcome
            == "accepted"
        )
    _move_to_south(s, "LW-T1")
    with caplog.at_level(logging.WARNING):
        assert s.alarms.raise_offline(later(200, now)) == 2  # raised all the same

    control = _alarm(s, "LW-T0", "device_offline")
    assert (control.site, control.wearer, control.note) == ("SOUTH", "S-0", None)
    south.acknowledge_as_admin(control.id)
    assert south.reads(control.id) == EVERYWHERE

    offline = _alarm(s, "LW-T1", "device_offline")
    south.acknowledge_as_admin(offline.id)  # the live stream carries the row as it stands
    assert south.reads(offline.id) == NOWHERE  # not on SOUTH's board, not naming the porter
    assert _admin_lists(south, offline.id)  # the readers of every site see it
    assert (offline.site, offline.wearer, offline.note) == (None, None, DEVICE_UNVOUCHED_NOTE)
    assert _warned_of(caplog, "LW-T1") and not _warned_of(caplog, "LW-T0")


def test_a_missed_checkin_takes_no_site_or_wearer_from_a_device_moved_in_the_database(
    south: SouthReader, caplog: pytest.LogCaptureFixture
) -> None:
    """The visit's own sealed wearer still names the missed check-in; the moved device lends it
    neither its site nor (for a visit opened by a unit nobody carried) its wearer."""
    s = south.s
    staff(s, "P-9", "porter", "SOUTH")
    carried = enrol(s, "LW-T2", staff_id="S-2", site="NORTH")
    uncarried = enrol(s, "LW-T3", staff_id=None, site="NORTH")
    now = datetime.now(UTC)
    _on_a_visit(s, carried, "V-T2", now)
    _on_a_visit(s, uncarried, "V-T3", now)
    _move_to_south(s, "LW-T2")
    _move_to_south(s, "LW-T3")
    with caplog.at_level(logging.WARNING):
        assert s.alarms.raise_missed_checkins(later(36 * 60, now)) == 2
    missed = _alarm(s, "LW-T2", "missed_checkin")
    nobodys = _alarm(s, "LW-T3", "missed_checkin")
    for row in (missed, nobodys):
        south.acknowledge_as_admin(row.id)
        assert south.reads(row.id) == NOWHERE
        assert _admin_lists(south, row.id)
    assert (missed.site, missed.wearer, missed.note) == (None, "S-2", DEVICE_UNVOUCHED_NOTE)
    assert (nobodys.site, nobodys.wearer, nobodys.note) == (None, None, DEVICE_UNVOUCHED_NOTE)
    assert _warned_of(caplog, "LW-T2") and _warned_of(caplog, "LW-T3")


def test_a_payload_stored_later_takes_no_wearer_from_a_device_moved_in_the_database(
    south: SouthReader, caplog: pytest.LogCaptureFixture
) -> None:
    """An SOS from a unit nobody carries, while object storage is down: its payload becomes evidence
    later, and would take the wearer the device row names then (a SOUTH porter's, put there by
    SQL), so SOUTH's managers would be shown the NORTH alarm's payload."""
    s = south.s
    staff(s, "P-9", "porter", "SOUTH")
    device = enrol(s, "LW-T4", staff_id=None, site="NORTH")
    real = s.store
    s.store = ObjectStore("127.0.0.1:9", "x", "y", bucket=real.bucket, staging_bucket="s", timeout_seconds=1)
    try:
        result = s.alarms.handle(*device.sos())
        assert result.outcome == "accepted", result
    finally:
        s.store = real
    _move_to_south(s, "LW-T4")
    with caplog.at_level(logging.WARNING):
        s.alarms.store_deferred_evidence(later(5))
        s.alarms.make_provisional_alarms_whole(later(5))
    with s.db.session() as session:
        event = session.scalars(
            select(LoneWorkerEvent).where(LoneWorkerEvent.alarm_id == result.alarm_id)
        ).one()
        item = session.get(EvidenceItem, event.evidence_item_id)
    assert item is not None
    r = httpx.get(f"{south.api}/evidence/{item.id}", headers=south.headers)
    assert r.status_code == 404, r.text  # not SOUTH's to see
    assert item.wearer is None, item.wearer
    assert _warned_of(caplog, "LW-T4")


def test_a_camera_key_swapped_in_the_database_after_an_upload_began_vouches_for_no_clip(
    live: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A dock uploads a clip for CAM-1 signed by a key that is not the camera's: it is taken (to be
    quarantined at its end), and the attacker then swaps the camera's key for theirs in the
    database. The end of the upload must not check the signature with that key and store the clip
    as the camera's, signature valid."""
    fleet = enrol_fleet(live.url, live.admin())
    s = live.services
    attacker = Ed25519PrivateKey.generate()
    public = attacker.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    attacker_b64 = base64.b64encode(public).decode()
    info = s.store.info
    swapped: list[bool] = []

    def swap_once(key: str, version_id: str | None = None) -> Any:
        if not swapped:
            _sql(s, update(Device).where(Device.id == fleet.camera_serial).values(public_key=attacker_b64))
            swapped.append(True)
        return info(key, version_id)

    monkeypatch.setattr(s.store, "info", swap_once)
    with caplog.at_level(logging.WARNING):
        r = _upload(dataclasses.replace(fleet, camera_key=attacker), os.urandom(PART + 4096))
    monkeypatch.undo()
    assert swapped and r.headers["evidence-status"] == "quarantined", r.headers
    with s.db.session() as session:
        captured = session.scalar(
            select(CustodyEntry).where(
                CustodyEntry.item_id == r.headers["evidence-item-id"], CustodyEntry.action == "captured"
            )
        )
        assert captured is not None and attacker_b64 not in captured.details
    assert _warned_of(caplog, fleet.camera_serial)


def _state_names(services: Any, device_id: str, alarm_id: str) -> None:
    """The attacker's write: the device's (unsealed) state row names another alarm as its offline one."""
    set_state_row(services, device_id, offline_alarm_id=alarm_id)


def test_an_offline_alarm_named_in_another_devices_state_is_neither_cleared_nor_silencing(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone worker's unit falls silent and is alarmed offline. Another unit's state row, pointed at
    that alarm by SQL, would have the other unit's next heartbeat clear it (the worker still
    silent), and, once that unit falls silent itself, have the clock take the alarm for its own and
    raise none."""
    silent = enrol(services, "LW-T5", staff_id="S-5", site="NORTH")
    talking = enrol(services, "LW-T6", staff_id="S-6", site="NORTH")
    now = datetime.now(UTC)
    for device, visit in ((silent, "V-T5"), (talking, "V-T6")):
        _on_a_visit(services, device, visit, now)
    services.alarms.handle(*silent.heartbeat(sent_at=later(10, now)), now=later(10, now))
    services.alarms.handle(*talking.heartbeat(sent_at=later(190, now)), now=later(190, now))
    assert services.alarms.raise_offline(later(200, now)) >= 1
    offline = _alarm(services, "LW-T5", "device_offline")

    _state_names(services, "LW-T6", offline.id)
    with caplog.at_level(logging.WARNING):
        heard = services.alarms.handle(*talking.heartbeat(sent_at=later(210, now)), now=later(210, now))
    assert heard.outcome == "accepted"
    with services.db.session() as session:
        row = session.get(AlarmRecord, offline.id)
        assert row is not None and row.status != "resolved" and row.condition_cleared_at is None, row.status
    assert any(getattr(r, "device", None) == "LW-T6" for r in caplog.records if r.levelno == logging.WARNING)

    _state_names(services, "LW-T6", offline.id)  # and again, before the unit falls silent
    services.alarms.raise_offline(later(600, now))
    assert _alarm(services, "LW-T6", "device_offline").wearer == "S-6"
