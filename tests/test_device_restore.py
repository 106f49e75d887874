"""A device row put back by SQL as it was before a change speaks for nobody.

A device row's seal covers its credentials (a dock's token digest, a lone-worker unit's broker
password hash, a camera's or unit's public key), its status, site and assigned member of staff, so
a row altered in the database is refused; but a copy of the whole row taken before a rotation or a
move carries the seal that fitted then, and the old (perhaps leaked) credential would work again.
The seal is therefore also bound to the latest custody entry on the device's keyed subject, read in
the statement that loads the row: an older copy's seal is over an older entry, and every use of the
device refuses it (a dock's upload, a unit's alarm and broker login, a camera's clip, a site's
reach). On both databases; ``evidence verify`` names each.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from alarms.service import AlarmService
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.reach_seals import site_reach
from chain_of_custody.row_seals import device_seal_v1
from chain_of_custody.verify import VerifyOptions, verify_service
from devices.broker_access import verify_password
from devices.models import Device
from devices.seals import device_seal_key, seal_devices, sealed_values, unsealed_devices
from devices.service import (
    DeviceRefused,
    add_staff,
    broker_accounts,
    camera_for_clip,
    enrol_dock,
    enrol_keyed_device,
    regenerate_broker_password,
    set_status,
)
from tests.test_alarms_kit import DeviceKit, enrol


def _copy(services: Any, device_id: str) -> dict[str, Any]:
    """The device's row as it stands (a copy an attacker with database access keeps)."""
    table = Device.__table__
    with services.db.session() as session:
        return dict(session.execute(select(table).where(table.c.id == device_id)).one()._mapping)


def _put_back(services: Any, copy: dict[str, Any]) -> None:
    table = Device.__table__
    with services.db.session() as session:
        session.execute(update(table).where(table.c.id == copy["id"]).values(**copy))


def _broken(services: Any) -> list[str]:
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    return sorted(p.where for p in report.problems if p.kind == "device_seal_broken")


def _head(live: Any, token: str) -> int:
    return httpx.head(
        f"{live.url}/api/v1/dock/uploads/no-such-upload",
        headers={"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"},
        timeout=15,
    ).status_code


def _camera(services: Any, kit: DeviceKit, site: str = "NORTH") -> None:
    with services.db.session() as session:
        enrol_keyed_device(
            session,
            services.ledger,
            "camera",
            kit.device_id,
            kit.public_b64,
            "test",
            staff_id="S-1",
            site=site,
        )


def test_a_dock_token_rotated_then_put_back_uploads_nothing(live: Any) -> None:
    services = live.services
    r = httpx.post(
        f"{live.url}/api/v1/devices/docks", json={"id": "DOCK-1", "site": "NORTH"}, headers=live.admin()
    )
    assert r.status_code == 201, r.text
    old = r.json()["token"]
    assert _head(live, old) == 404  # signed in: no such upload
    copy = _copy(services, "DOCK-1")
    r = httpx.post(  # enrolled again: the token rotated (the old one leaked)
        f"{live.url}/api/v1/devices/docks", json={"id": "DOCK-1", "site": "NORTH"}, headers=live.admin()
    )
    assert r.status_code == 201, r.text
    new = r.json()["token"]
    assert (_head(live, old), _head(live, new)) == (401, 404)
    _put_back(services, copy)  # the old token's digest, with the seal that fitted then
    assert _head(live, old) == 401
    assert _head(live, new) == 401  # the row in doubt speaks for nobody
    assert _broken(services) == ["device DOCK-1"]


def test_a_lone_worker_key_rotated_then_put_back_raises_no_alarm_with_the_old_key(services: Any) -> None:
    alarms = AlarmService(services)
    old = enrol(services, "LW-1", staff_id="S-1")
    other = enrol(services, "LW-2", staff_id="S-2")
    assert alarms.handle(*old.sos()).outcome == "accepted"  # its verdict is now known
    copy = _copy(services, "LW-1")
    new = enrol(services, "LW-1", staff_id="S-1")  # a new key (the old one leaked)
    assert alarms.handle(*old.sos()).reason == "bad_signature"
    _put_back(services, copy)
    result = alarms.handle(*old.sos())
    assert (result.outcome, result.reason) == ("rejected", "unknown_device")
    batch = alarms.handle_many([(*old.sos(), False), (*other.heartbeat(), False)])
    assert [(r.outcome, r.reason) for r in batch] == [("rejected", "unknown_device"), ("accepted", None)]
    assert alarms.handle(*new.sos()).reason == "unknown_device"
    assert _broken(services) == ["device LW-1"]


def test_an_administrators_change_of_a_put_back_row_does_not_seal_it_again(services: Any) -> None:
    """A change seals the row as it then stands: made to a row put back from before a key rotation,
    it would seal the leaked key (and the old site and wearer) bound to a new entry. Assigning,
    enabling and a new broker password are refused (409); disabling is recorded and leaves the row
    refused."""
    alarms = AlarmService(services)
    old = enrol(services, "LW-1", staff_id="S-1")
    copy = _copy(services, "LW-1")
    enrol(services, "LW-1", staff_id="S-1")  # a new key (the old one leaked)
    _put_back(services, copy)
    for change in (
        lambda session: set_status(session, services.ledger, "LW-1", "active", "user:admin"),
        lambda session: regenerate_broker_password(session, services.ledger, "LW-1", "user:admin"),
    ):
        with pytest.raises(DeviceRefused) as refused, services.db.session() as session:
            change(session)
        assert (refused.value.reason, refused.value.status) == ("device_seal_broken", 409)
        assert alarms.handle(*old.sos()).reason == "unknown_device"
    with services.db.session() as session:
        set_status(session, services.ledger, "LW-1", "disabled", "user:admin")
    with services.db.session() as session:
        row = session.get(Device, "LW-1")
        assert row is not None and row.status == "disabled"
    assert alarms.handle(*old.sos()).reason == "unknown_device"
    assert _broken(services) == ["device LW-1"]


def test_a_broker_password_regenerated_then_put_back_is_left_out_of_the_broker_files(services: Any) -> None:
    kit = enrol(services, "LW-1", staff_id="S-1")
    enrol(services, "LW-2", staff_id="S-2")
    assert kit.password is not None
    copy = _copy(services, "LW-1")
    with services.db.session() as session:
        regenerate_broker_password(session, services.ledger, "LW-1", "user:admin")
    secret = device_seal_key(services.key)
    with services.db.session() as session:
        (account,) = [a for a in broker_accounts(session, secret) if a.username == "LW-1"]
    assert not verify_password(kit.password, account.password_hash)
    _put_back(services, copy)  # the old password's hash, with the seal that fitted then
    with services.db.session() as session:
        assert [a.username for a in broker_accounts(session, secret)] == ["LW-2"]
    assert _broken(services) == ["device LW-1"]


def test_a_camera_key_rotated_then_put_back_delivers_no_clip(services: Any) -> None:
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-1", "Staff S-1", "nurse", "NORTH", actor="test")
    _camera(services, DeviceKit("CAM-1"))
    secret = device_seal_key(services.key)
    copy = _copy(services, "CAM-1")
    _camera(services, DeviceKit("CAM-1"))  # a new key
    with services.db.session() as session:
        assert camera_for_clip(session, "CAM-1", "S-1", secret).id == "CAM-1"
    _put_back(services, copy)
    with services.db.session() as session, pytest.raises(DeviceRefused) as refused:
        camera_for_clip(session, "CAM-1", "S-1", secret)
    assert refused.value.reason == "unknown_camera"
    assert _broken(services) == ["device CAM-1"]


def test_a_camera_moved_to_another_site_then_put_back_reaches_its_old_site_no_more(services: Any) -> None:
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-1", "Staff S-1", "nurse", "NORTH", actor="test")
    kit = DeviceKit("CAM-1")
    _camera(services, kit, "NORTH")
    with services.db.session() as session:
        assert "CAM-1" in site_reach(session, services.key, "NORTH").devices
    copy = _copy(services, "CAM-1")
    _camera(services, kit, "SOUTH")  # moved by the service
    with services.db.session() as session:
        assert "CAM-1" not in site_reach(session, services.key, "NORTH").devices
        assert "CAM-1" in site_reach(session, services.key, "SOUTH").devices
    _put_back(services, copy)  # NORTH again, with the seal that fitted then
    with services.db.session() as session:
        assert "CAM-1" not in site_reach(session, services.key, "NORTH").devices
    assert _broken(services) == ["device CAM-1"]


def test_a_device_changed_by_the_service_still_speaks(services: Any) -> None:
    """Every change the service makes seals the row again bound to its own entry."""
    alarms = AlarmService(services)
    kit = enrol(services, "LW-1", staff_id="S-1")
    with services.db.session() as session:
        regenerate_broker_password(session, services.ledger, "LW-1", "user:admin")
    assert alarms.handle(*kit.sos()).outcome == "accepted"
    with services.db.session() as session:
        assert [a.username for a in broker_accounts(session, device_seal_key(services.key))] == ["LW-1"]
    with services.db.session() as session:
        token = enrol_dock(session, services.ledger, "DOCK-1", "test", site="NORTH").token
        assert token
    assert _broken(services) == []


def _sealed_v1(services: Any, device_id: str, **values: Any) -> None:
    """The row as the service sealed it before seals were bound to custody (``values`` written first)."""
    with services.db.session() as session:
        row = session.get_one(Device, device_id)
        for name, value in values.items():
            setattr(row, name, value)
        row.seal = device_seal_v1(device_seal_key(services.key), sealed_values(row))


def test_devices_sealed_before_seals_were_bound_are_adopted_only_as_custody_records_them(
    services: Any,
) -> None:
    alarms = AlarmService(services)
    kept = enrol(services, "LW-KEPT", staff_id="S-1", site="NORTH")
    moved = enrol(services, "LW-MOVED", staff_id="S-2", site="NORTH")
    old_key = enrol(services, "LW-KEY", staff_id="S-3", site="NORTH")
    enrol(services, "LW-KEY", staff_id="S-3", site="NORTH")  # a new key since
    enrol(services, "LW-OFF", staff_id="S-4", site="NORTH")
    with services.db.session() as session:
        set_status(session, services.ledger, "LW-OFF", "disabled", "user:admin")
    _sealed_v1(services, "LW-KEPT")
    _sealed_v1(services, "LW-MOVED", site="SOUTH")  # an older copy: custody says NORTH
    _sealed_v1(services, "LW-KEY", public_key=old_key.public_b64)  # an older copy: the old key
    _sealed_v1(services, "LW-OFF", status="active")  # an older copy: custody disabled it since
    assert alarms.handle(*kept.sos()).reason == "unknown_device"  # version 1: nobody until adopted
    with services.db.session() as session:  # the service says they await the upgrade
        assert awaiting_upgrade(session, services.key).counts["devices"] == 4
    assert _broken(services) == []
    assert any("sealed without their latest custody entry" in n for n in _notes(services))
    with services.db.session() as session:
        listed = {d.device_id: d for d in unsealed_devices(session, services.ledger)}
    assert sorted(listed) == ["LW-KEPT", "LW-KEY", "LW-MOVED", "LW-OFF"]
    assert listed["LW-KEPT"].refused is None and "matches its custody record" in listed["LW-KEPT"].line()
    assert "site is 'SOUTH' in the database but 'NORTH'" in (listed["LW-MOVED"].refused or "")
    assert "public key" in (listed["LW-KEY"].refused or "")
    assert "active but custody entry" in (listed["LW-OFF"].refused or "")
    assert old_key.public_b64 not in listed["LW-KEY"].line()
    with services.db.session() as session:
        sealed = seal_devices(session, services.ledger)
    assert [d.device_id for d in sealed if d.refused is None] == ["LW-KEPT"]
    assert alarms.handle(*kept.sos()).outcome == "accepted"
    for refused in (moved, old_key):
        assert alarms.handle(*refused.sos()).reason == "unknown_device"
    with services.db.session() as session:
        assert sorted(d.device_id for d in unsealed_devices(session, services.ledger)) == [
            "LW-KEY",
            "LW-MOVED",
            "LW-OFF",
        ]


def _notes(services: Any) -> list[str]:
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    return report.notes
