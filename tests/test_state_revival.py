"""A state that ends access stays ended when a copy of the row from before is put back by SQL.

A disabled device's row is sealed as disabled, but the row as it was while active, with its seal,
still fits: put back, the device's alarms, uploads and clips would be taken again. Each disable
(and each enable again) is therefore a custody entry, and every use asks the latest. A download's
read grant, once used, is ended on custody the same way. On both databases; ``evidence verify``
names each.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from alarms.models import AlarmRecord
from alarms.service import AlarmService
from alarms.voice_memos import VoiceMemoRefused
from chain_of_custody.verify import VerifyOptions, verify_service
from devices.models import Device
from devices.seals import device_seal_key
from devices.service import (
    DeviceRefused,
    add_staff,
    broker_accounts,
    camera_for_clip,
    enrol_dock,
    enrol_keyed_device,
    set_status,
)
from tests.test_alarms_kit import DeviceKit, enrol
from tests.test_incidents_kit import store_item

REASON = "Complaint about the night shift, ward 7"


def _copy(services: Any, device_id: str) -> dict[str, Any]:
    """The device's row as it stands (a copy an attacker with database access keeps)."""
    with services.db.session() as session:
        row = session.execute(select(Device.__table__).where(Device.__table__.c.id == device_id)).one()
    return dict(row._mapping)


def _put_back(services: Any, copy: dict[str, Any]) -> None:
    table = Device.__table__
    with services.db.session() as session:
        session.execute(update(table).where(table.c.id == copy["id"]).values(**copy))


def _disable(services: Any, device_id: str, status: str = "disabled") -> None:
    with services.db.session() as session:
        set_status(session, services.ledger, device_id, status, "user:admin")


def _problems(services: Any, kind: str) -> list[str]:
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    return sorted(p.where for p in report.problems if p.kind == kind)


def _alarms(services: Any, device_id: str) -> list[AlarmRecord]:
    with services.db.session() as session:
        return list(session.scalars(select(AlarmRecord).where(AlarmRecord.device_id == device_id)))


def test_a_disabled_lone_worker_put_back_active_from_a_copy_of_its_row_raises_nothing(services: Any) -> None:
    alarms = AlarmService(services)
    device = enrol(services, "LW-1", staff_id="S-1")
    other = enrol(services, "LW-2", staff_id="S-2")
    assert alarms.handle(*device.heartbeat()).outcome == "accepted"  # its verdict is now known
    copy = _copy(services, "LW-1")
    assert copy["status"] == "active" and copy["seal"]
    _disable(services, "LW-1")
    assert alarms.handle(*device.sos()).reason == "disabled_device"
    _put_back(services, copy)  # active, with the seal that fitted then
    result = alarms.handle(*device.sos())
    assert (result.outcome, result.reason) == ("rejected", "unknown_device")
    # A batch (a burst of several devices' messages, one transaction) asks custody too.
    batch = alarms.handle_many([(*device.sos(), False), (*other.heartbeat(), False)])
    assert [(r.outcome, r.reason) for r in batch] == [("rejected", "unknown_device"), ("accepted", None)]
    assert _alarms(services, "LW-1") == []
    secret = device_seal_key(services.key)
    with services.db.session() as session:  # the broker's password file leaves it out
        assert [a.username for a in broker_accounts(session, secret)] == ["LW-2"]
    assert _problems(services, "device_disable_undone") == ["device LW-1"]
    # The seal is bound to the latest custody entry (the disable): the copy's is over an older one.
    assert _problems(services, "device_seal_broken") == ["device LW-1"]

    # Enabling the put-back row would seal what SQL wrote (its old key, password, site and wearer):
    # refused; enrolled again by the service (a new key), it speaks again, and only with the new key.
    with pytest.raises(DeviceRefused) as refused:
        _disable(services, "LW-1", "active")
    assert refused.value.reason == "device_seal_broken"
    assert alarms.handle(*device.sos()).reason == "unknown_device"
    device = enrol(services, "LW-1", staff_id="S-1")
    assert alarms.handle(*device.sos()).outcome == "accepted"
    assert _problems(services, "device_disable_undone") == []
    with services.db.session() as session:
        assert [a.username for a in broker_accounts(session, secret)] == ["LW-1", "LW-2"]


def test_a_voice_memo_of_a_device_put_back_active_is_refused(services: Any) -> None:
    alarms = AlarmService(services)
    device = enrol(services, "LW-1", staff_id="S-1")
    raised = alarms.handle(*device.sos())
    assert raised.outcome == "accepted" and raised.event_id
    copy = _copy(services, "LW-1")
    _disable(services, "LW-1")
    _put_back(services, copy)
    with pytest.raises(VoiceMemoRefused) as refused:
        device.admit_voice_memo(alarms, raised.event_id)
    assert refused.value.reason == "unknown_device"


def test_a_disabled_camera_put_back_active_delivers_no_clip(services: Any) -> None:
    kit = DeviceKit("CAM-1")
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-1", "Staff S-1", "nurse", "NORTH", actor="test")
        enrol_keyed_device(
            session, services.ledger, "camera", "CAM-1", kit.public_b64, "test", staff_id="S-1"
        )
    secret = device_seal_key(services.key)
    copy = _copy(services, "CAM-1")
    _disable(services, "CAM-1")
    _put_back(services, copy)
    with services.db.session() as session, pytest.raises(DeviceRefused) as refused:
        camera_for_clip(session, "CAM-1", "S-1", secret)
    assert refused.value.reason == "unknown_camera"
    # Enrolled again by the service (a new key): enabled again, and recorded so.
    with services.db.session() as session:
        enrol_keyed_device(
            session, services.ledger, "camera", "CAM-1", kit.public_b64, "test", staff_id="S-1"
        )
    with services.db.session() as session:
        assert camera_for_clip(session, "CAM-1", "S-1", secret).id == "CAM-1"
    assert _problems(services, "device_disable_undone") == []


def test_a_disabled_dock_put_back_active_uploads_nothing(live: Any) -> None:
    services = live.services
    with services.db.session() as session:
        token = enrol_dock(session, services.ledger, "DOCK-1", "test", site="NORTH").token

    def head() -> int:
        return httpx.head(
            f"{live.url}/api/v1/dock/uploads/no-such-upload",
            headers={"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"},
            timeout=15,
        ).status_code

    assert head() == 404  # signed in: no such upload
    copy = _copy(services, "DOCK-1")
    r = httpx.patch(f"{live.url}/api/v1/devices/DOCK-1", json={"status": "disabled"}, headers=live.admin())
    assert r.status_code == 200, r.text
    assert head() == 403
    _put_back(services, copy)
    assert head() == 401
    assert _problems(services, "device_disable_undone") == ["device DOCK-1"]
    # Enabling the put-back row would seal what SQL wrote: refused; enrolled again (a new token), it
    # signs in with the new token only.
    r = httpx.patch(f"{live.url}/api/v1/devices/DOCK-1", json={"status": "active"}, headers=live.admin())
    assert r.status_code == 409 and r.json()["reason"] == "device_seal_broken", r.text
    assert head() == 401
    with services.db.session() as session:
        token = enrol_dock(session, services.ledger, "DOCK-1", "test", site="NORTH").token
    assert head() == 404


def test_devices_disabled_before_disables_were_recorded_are_recorded_once(services: Any) -> None:
    from chain_of_custody.row_seals import device_seal_v1
    from devices.ends import record_unrecorded_disables, unrecorded_disables
    from devices.seals import sealed_values

    alarms = AlarmService(services)
    device = enrol(services, "LW-OLD", staff_id="S-1")
    enrol(services, "LW-ON", staff_id="S-2")
    copy = _copy(services, "LW-OLD")
    with services.db.session() as session:  # disabled as the service did before (no status entry)
        row = session.get(Device, "LW-OLD")
        assert row is not None
        row.status = "disabled"
        row.seal = device_seal_v1(device_seal_key(services.key), sealed_values(row))
    secret = device_seal_key(services.key)
    with services.db.session() as session:
        assert [(d.device_id, d.line()) for d in unrecorded_disables(session, secret)] == [
            ("LW-OLD", "lone_worker LW-OLD, disabled")
        ]
        assert record_unrecorded_disables(session, services.ledger, secret, "service") == 1
    with services.db.session() as session:
        assert unrecorded_disables(session, secret) == []
    _put_back(services, copy)
    assert alarms.handle(*device.sos()).reason == "unknown_device"


def test_a_used_download_grant_put_back_unused_reads_nothing_more(live: Any) -> None:
    from ingest.models import ReadGrant

    s = live.services
    clip = store_item(s)
    admin = live.admin()
    r = httpx.post(
        f"{live.url}/api/v1/evidence/{clip.id}/read-grants",
        headers=admin,
        json={"reason": REASON, "use": "download"},
    )
    assert r.status_code == 201, r.text
    token = str(r.json()["url"]).split("grant=", 1)[1]

    def read() -> int:
        return httpx.get(
            f"{live.url}/api/v1/evidence/{clip.id}/content",
            params={"grant": token},
            headers=admin,
            timeout=15,
        ).status_code

    assert read() == 200
    assert read() == 403  # used
    table = ReadGrant.__table__
    digest = hashlib.sha256(token.encode()).hexdigest()
    with s.db.session() as session:
        session.execute(update(table).where(table.c.token_hash == digest).values(used_at=None))
    assert read() == 403
    with s.db.session() as session:
        admin_id = session.scalar(select(ReadGrant.user_id).where(ReadGrant.token_hash == digest))
    assert _problems(s, "read_grant_use_undone") == [f"read grant of user id {admin_id}"]
    assert _problems(s, "read_grant_seal_broken") == []


def test_a_waiting_sign_in_whose_rows_are_removed_or_put_back_older_still_waits(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A guesser's wait is not ended by deleting its row or putting back a copy from before it was
    made to wait: the process that counted it knows (a warning says so). A success and an
    administrator's unlock, on this replica or another, still end it."""
    import logging

    from sqlalchemy import delete, insert

    from accounts.models import SignInFailures
    from accounts.throttle import SignInThrottle, ThrottlePolicy, digest
    from ingest.migrations_runner import upgrade_database
    from storage.db import Database

    upgrade_database(database_url)
    db = Database(database_url)
    now = [1000.0]
    policy = ThrottlePolicy(free=3, base_delay=60.0, max_delay=900.0)
    replica, other = SignInThrottle(db, policy, lambda: now[0]), SignInThrottle(db, policy, lambda: now[0])
    pair = ("admin", "10.6.0.1")
    table = SignInFailures.__table__
    where = (table.c.username_key == digest("username", pair[0])) & (
        table.c.client_key == digest("client", pair[1])
    )
    try:
        assert replica.allowed(*pair)
        with db.session() as session:  # the row after one failure: no wait yet
            copy = dict(session.execute(select(table).where(where)).one()._mapping)
        for _ in range(2):
            assert replica.allowed(*pair)
        now[0] += 1
        assert not replica.allowed(*pair)  # waiting
        with db.session() as session:
            session.execute(delete(table).where(where))
        with caplog.at_level(logging.WARNING, logger="accounts.throttle"):
            assert not replica.allowed(*pair)
        assert any("removed or put back" in r.getMessage() for r in caplog.records)
        with db.session() as session:
            session.execute(delete(table).where(where))
            session.execute(insert(table).values(**copy))
        assert not replica.allowed(*pair)
        # An administrator's unlock on another replica ends the wait here too.
        other.forgive(pair[0])
        assert replica.allowed(*pair)
        # A right password from another address: let through and given back, and nothing stays.
        assert replica.allowed(pair[0], "10.6.0.2")
        replica.succeeded(pair[0], "10.6.0.2")
        assert replica.allowed(pair[0], "10.6.0.2")
    finally:
        db.dispose()


def _assigned(s: Any) -> tuple[int, str, int, dict[str, Any]]:
    """An investigator assigned to a new incident: their user id, the incident, the assignment row's
    id, and a copy of that row while active (as an attacker with database access keeps it)."""
    from datetime import UTC, datetime

    from incidents.models import IncidentAssignment
    from incidents.service import IncidentDraft, assign_investigator, create_incident
    from tests.conftest import ADMIN_PASSWORD, recorded_user

    with s.db.session() as session:
        inv = recorded_user(session, s.ledger, "inv1", ADMIN_PASSWORD, "investigator")
        draft = IncidentDraft(category="theft", occurred_at=datetime(2026, 3, 4, tzinfo=UTC), site="N")
        incident = create_incident(session, draft, "user:admin", ledger=s.ledger)
        row_id = assign_investigator(session, s.ledger, incident, inv, "user:admin").id
        incident_id = incident.id
    table = IncidentAssignment.__table__
    with s.db.session() as session:
        copy = dict(session.execute(select(table).where(table.c.id == row_id)).one()._mapping)
    return inv, incident_id, row_id, copy


def _put_back_assignment(s: Any, copy: dict[str, Any]) -> None:
    from incidents.models import IncidentAssignment

    table = IncidentAssignment.__table__
    with s.db.session() as session:
        session.execute(update(table).where(table.c.id == copy["id"]).values(**copy))


def test_an_ended_assignment_put_back_active_from_a_copy_of_its_row_opens_nothing(services: Any) -> None:
    from incidents.grants import sealed_assignment_ids, sealed_assignment_ids_on
    from incidents.models import Incident
    from incidents.service import assign_investigator, unassign_investigator

    s = services
    inv, incident_id, row_id, copy = _assigned(s)
    with s.db.session() as session:
        assert sealed_assignment_ids(session, s.key, inv) == {row_id}
        unassign_investigator(session, s.ledger, session.get_one(Incident, incident_id), inv, "user:admin")
    with s.db.session() as session:
        assert sealed_assignment_ids(session, s.key, inv) == frozenset()
    _put_back_assignment(s, copy)  # active again, with the seal that fitted then
    with s.db.session() as session:
        assert sealed_assignment_ids(session, s.key, inv) == frozenset()
        assert sealed_assignment_ids_on(session, s.key, [incident_id]) == frozenset()
    assert _problems(s, "assignment_end_undone") == [f"incident {incident_id} / user id {inv}"]
    # Assigned again by the service: a new row (the one put back is ended), which opens the incident.
    with s.db.session() as session:
        again = assign_investigator(
            session, s.ledger, session.get_one(Incident, incident_id), inv, "user:admin"
        ).id
        assert again != row_id
    with s.db.session() as session:
        assert sealed_assignment_ids(session, s.key, inv) == {again}


def test_assignments_ended_before_their_ends_were_recorded_are_recorded_once(services: Any) -> None:
    from datetime import UTC, datetime

    from chain_of_custody.row_seals import GRANT_SEALS
    from incidents.grants import (
        record_unrecorded_assignment_ends,
        seal_assignment,
        sealed_assignment_ids,
        unrecorded_assignment_ends,
    )
    from incidents.models import IncidentAssignment

    s = services
    inv, incident_id, row_id, copy = _assigned(s)
    with s.db.session() as session:
        row = session.get_one(IncidentAssignment, row_id)  # ended as the service did before
        row.unassigned_at, row.unassigned_by = datetime.now(UTC), "user:admin"
        session.flush()
        seal_assignment(row, s.key)
    secret = s.key.derived_secret(GRANT_SEALS)
    with s.db.session() as session:
        assert [e.line() for e in unrecorded_assignment_ends(session, secret)] == [
            f"assignment {row_id} of incident {incident_id} to user id {inv}, ended"
        ]
        assert record_unrecorded_assignment_ends(session, s.ledger, secret, "service") == 1
    with s.db.session() as session:
        assert unrecorded_assignment_ends(session, secret) == []
    _put_back_assignment(s, copy)
    with s.db.session() as session:
        assert sealed_assignment_ids(session, s.key, inv) == frozenset()
