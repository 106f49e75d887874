"""Device rows altered or planted in the database speak for nobody.

Each row of ``devices`` carries a seal (``devices.seals``): an HMAC, under a secret derived from the
service key (which the database does not hold), over its id, kind, status, credentials, site and
assigned staff. On both databases: a lone-worker unit whose public key is swapped by SQL for an
attacker's raises nothing with the attacker's signature; a dock token planted by SQL uploads
nothing; a disabled device enabled again by SQL stays refused; a camera moved to another wearer by
SQL delivers no clip; genuine devices work as before, and devices enrolled before seals are
listed, then sealed, by ``evidence seal-devices``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from alarms.models import AlarmRecord
from alarms.service import AlarmService
from alarms.voice_memos import VoiceMemoRefused
from chain_of_custody.verify import VerifyOptions, verify_service
from devices.models import Device
from devices.seals import device_seal_key, seal_devices, unsealed_devices
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


def _alarms(services: Any, device_id: str) -> list[AlarmRecord]:
    with services.db.session() as session:
        return list(session.scalars(select(AlarmRecord).where(AlarmRecord.device_id == device_id)))


def _set(services: Any, device_id: str, **values: Any) -> None:
    with services.db.session() as session:
        session.execute(update(Device).where(Device.id == device_id).values(**values))


def _head(url: str, token: str) -> httpx.Response:
    return httpx.head(
        f"{url}/api/v1/dock/uploads/no-such-upload",
        headers={"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"},
        timeout=15,
    )


def test_a_lone_worker_whose_key_is_swapped_by_sql_raises_nothing_for_the_attacker(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    alarms = AlarmService(services)
    genuine = enrol(services, "LW-1", staff_id="S-1")
    other = enrol(services, "LW-2", staff_id="S-2")
    assert alarms.handle(*genuine.heartbeat()).outcome == "accepted"  # its verdict is now known

    attacker = DeviceKit("LW-1", seq=genuine.seq)
    _set(services, "LW-1", public_key=attacker.public_b64)
    with caplog.at_level(logging.WARNING, logger="devices"):
        result = alarms.handle(*attacker.sos())
    assert (result.outcome, result.reason) == ("rejected", "unknown_device")
    assert _alarms(services, "LW-1") == []
    refused = [r for r in caplog.records if "seal" in r.getMessage()]
    assert refused and all(getattr(r, "device", None) == "LW-1" for r in refused)
    for r in refused:  # the warning names the device, never its keys
        text = r.getMessage() + repr(r.__dict__)
        assert attacker.public_b64 not in text and genuine.public_b64 not in text
    # The genuine key is refused too while the row is altered: the row, not the signature, is in doubt.
    assert alarms.handle(*genuine.sos()).outcome == "rejected"

    # A device whose row nobody touched raises its alarm as before.
    result = alarms.handle(*other.sos())
    assert result.outcome == "accepted" and result.alarm_id
    assert len(_alarms(services, "LW-2")) == 1


def test_a_disabled_device_enabled_again_by_sql_stays_refused(services: Any) -> None:
    alarms = AlarmService(services)
    device = enrol(services, "LW-1", staff_id="S-1")
    with services.db.session() as session:
        set_status(session, services.ledger, "LW-1", "disabled", "test")
    assert alarms.handle(*device.sos()).reason == "disabled_device"
    _set(services, "LW-1", status="active")
    assert alarms.handle(*device.sos()).reason == "unknown_device"
    assert _alarms(services, "LW-1") == []

    with services.db.session() as session:  # enabled again by the service: it speaks again
        set_status(session, services.ledger, "LW-1", "active", "test")
    assert alarms.handle(*device.sos()).outcome == "accepted"


def test_a_lone_worker_moved_to_another_member_of_staff_by_sql_is_refused(services: Any) -> None:
    alarms = AlarmService(services)
    device = enrol(services, "LW-1", staff_id="S-1")
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-9", "Staff S-9", "nurse", "Ward 7", actor="test")
    _set(services, "LW-1", assigned_staff_id="S-9")
    assert alarms.handle(*device.sos()).reason == "unknown_device"


def test_a_dock_token_planted_by_sql_does_not_authenticate(live) -> None:  # type: ignore[no-untyped-def]
    services = live.services
    with services.db.session() as session:
        genuine = enrol_dock(session, services.ledger, "DOCK-1", "test", site="NORTH").token
        enrol_dock(session, services.ledger, "DOCK-2", "test", site="NORTH")
    assert _head(live.url, genuine).status_code == 404  # signed in: no such upload

    # A dock row inserted by SQL with a secret the inserter knows.
    secret = secrets.token_urlsafe(32)
    with services.db.session() as session:
        session.execute(
            insert(Device.__table__).values(
                id="DOCK-X",
                kind="dock",
                name="",
                site="NORTH",
                status="active",
                token_hash=hashlib.sha256(secret.encode()).hexdigest(),
            )
        )
    assert _head(live.url, f"DOCK-X.{secret}").status_code == 401

    # A genuine dock's token digest swapped for one the attacker knows.
    _set(services, "DOCK-2", token_hash=hashlib.sha256(secret.encode()).hexdigest())
    assert _head(live.url, f"DOCK-2.{secret}").status_code == 401

    # A disabled dock enabled again by SQL.
    with services.db.session() as session:
        set_status(session, services.ledger, "DOCK-1", "disabled", "test")
    assert _head(live.url, genuine).status_code == 403
    _set(services, "DOCK-1", status="active")
    assert _head(live.url, genuine).status_code == 401


def test_a_dock_moved_to_another_site_by_sql_is_not_sealed_there_by_its_re_enrolment(services: Any) -> None:
    """Re-enrolling a dock (a new token) seals its row: one moved to SOUTH by SQL would be sealed at
    SOUTH, and SOUTH's managers would list it and could issue themselves its token. The re-enrolment
    restates the site it is given instead."""
    with services.db.session() as session:
        enrol_dock(session, services.ledger, "DOCK-7", "test", site="NORTH")
    _set(services, "DOCK-7", site="SOUTH")
    with services.db.session() as session:
        enrol_dock(session, services.ledger, "DOCK-7", "test", site="NORTH")
    with services.db.session() as session:
        dock = session.get(Device, "DOCK-7")
        assert dock is not None and dock.site == "NORTH", dock and dock.site
    with services.db.session() as session:  # its row as the service sealed it: at NORTH
        assert not unsealed_devices(session, services.ledger)
        enrol_dock(session, services.ledger, "DOCK-7", "test")  # a sealed row keeps its site
    with services.db.session() as session:
        dock = session.get(Device, "DOCK-7")
        assert dock is not None and dock.site == "NORTH"


def test_a_camera_moved_to_another_wearer_by_sql_delivers_no_clip(services: Any) -> None:
    kit = DeviceKit("CAM-1")
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-1", "Staff S-1", "nurse", "NORTH", actor="test")
        add_staff(session, services.ledger, "S-2", "Staff S-2", "nurse", "NORTH", actor="test")
        enrol_keyed_device(
            session, services.ledger, "camera", "CAM-1", kit.public_b64, "test", staff_id="S-1"
        )
    secret = device_seal_key(services.key)
    with services.db.session() as session:
        assert camera_for_clip(session, "CAM-1", "S-1", secret).id == "CAM-1"
    _set(services, "CAM-1", assigned_staff_id="S-2")
    with services.db.session() as session, pytest.raises(DeviceRefused) as refused:
        camera_for_clip(session, "CAM-1", "S-2", secret)
    assert refused.value.reason == "unknown_camera"


def test_devices_enrolled_before_seals_are_listed_then_sealed(services: Any) -> None:
    alarms = AlarmService(services)
    device = enrol(services, "LW-1", staff_id="S-1")
    _set(services, "LW-1", seal=None)  # as enrolled before seals
    secret = device_seal_key(services.key)
    with services.db.session() as session:
        assert [d.device_id for d in unsealed_devices(session, services.ledger)] == ["LW-1"]
        assert broker_accounts(session, secret) == []  # the broker's files leave it out
        assert [a.username for a in broker_accounts(session)] == ["LW-1"]
    assert alarms.handle(*device.sos()).reason == "unknown_device"

    with services.db.session() as session:
        assert [(d.device_id, d.refused) for d in seal_devices(session, services.ledger)] == [("LW-1", None)]
    with services.db.session() as session:
        assert unsealed_devices(session, services.ledger) == []
        assert [a.username for a in broker_accounts(session, secret)] == ["LW-1"]
    assert alarms.handle(*device.sos()).outcome == "accepted"


def test_the_seal_devices_command_lists_before_it_seals(
    tmp_path: Any, seaweed: Any, monkeypatch: Any
) -> None:
    from typer.testing import CliRunner

    from ingest.cli import app
    from ingest.services import build_services
    from ingest.settings import get_settings
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'evidence.db'}", seaweed)
    s = build_services(settings)
    try:
        kit = enrol(s, "LW-OLD", staff_id="S-1")
        _set(s, "LW-OLD", seal=None)  # as enrolled before seals
        for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
            monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
        monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
        get_settings.cache_clear()
        runner = CliRunner()
        listed = runner.invoke(app, ["seal-devices"])
        assert listed.exit_code == 0 and "lone_worker LW-OLD (active)" in listed.output, listed.output
        assert kit.public_b64 not in listed.output and "1 devices would be sealed" in listed.output
        with s.db.session() as session:
            assert [d.device_id for d in unsealed_devices(session, s.ledger)] == [
                "LW-OLD"
            ]  # listing sealed nothing
        done = runner.invoke(app, ["seal-devices", "--yes"])
        assert done.exit_code == 0 and "1 devices sealed" in done.output, done.output
        with s.db.session() as session:
            assert unsealed_devices(session, s.ledger) == []
        assert AlarmService(s).handle(*kit.sos()).outcome == "accepted"
        again = runner.invoke(app, ["seal-devices"])
        assert again.exit_code == 0 and "0 devices would be sealed" in again.output, again.output
    finally:
        get_settings.cache_clear()
        s.db.dispose()


def test_a_voice_memo_signed_by_a_key_swapped_in_by_sql_is_refused(services: Any) -> None:
    alarms = AlarmService(services)
    genuine = enrol(services, "LW-1", staff_id="S-1")
    raised = alarms.handle(*genuine.sos())
    assert raised.outcome == "accepted" and raised.event_id
    attacker = DeviceKit("LW-1")
    _set(services, "LW-1", public_key=attacker.public_b64)
    with pytest.raises(VoiceMemoRefused) as refused:
        attacker.admit_voice_memo(alarms, raised.event_id)
    assert refused.value.reason == "unknown_device"


def test_verify_names_a_device_row_altered_by_sql_and_counts_those_not_sealed(services: Any) -> None:
    genuine = enrol(services, "LW-1", staff_id="S-1")
    enrol(services, "LW-2", staff_id="S-2")
    enrol(services, "LW-3", staff_id="S-3")
    attacker = DeviceKit("LW-1", seq=genuine.seq)
    _set(services, "LW-1", public_key=attacker.public_b64)
    _set(services, "LW-3", seal=None)  # as enrolled before seals
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    broken = [p for p in report.problems if p.kind == "device_seal_broken"]
    assert [p.where for p in broken] == ["device LW-1"]
    assert [n for n in report.notes if "upgrade-seals" in n] == [
        "1 device(s) have no seal yet (enrolled before seals), so not checked: "
        "`evidence upgrade-seals` lists them and seals those the custody record bears out"
    ]
    text = repr(report.problems) + repr(report.notes)  # names the device, never its keys
    assert attacker.public_b64 not in text and genuine.public_b64 not in text
