"""``evidence upgrade-seals``: the six commands an installation upgraded to sealed rows needs, run in
their order (users before the grants made to them) from one command; it lists what each would do,
does it only with ``--yes``, and exits 1 when a step refused rows, each listed under its step."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, update

from accounts.ends import unrecorded_ends
from accounts.models import ApiToken, User
from accounts.seals import SignInSeals, unsealed_users
from accounts.service import resolve_token, token_digest
from chain_of_custody.row_seals import CREDENTIAL_SEALS, device_seal_v1
from devices.ends import unrecorded_disables
from devices.models import Device, StaffMember
from devices.seals import device_seal_key, sealed_values, unsealed_devices
from incidents.grants import unsealed_grants
from incidents.models import Incident, IncidentAssignment
from incidents.service import IncidentDraft, assign_investigator, create_incident
from tests.conftest import ADMIN_PASSWORD, make_settings, recorded_user
from tests.test_alarms_kit import enrol

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
STEPS = (
    "seal-tokens",
    "seal-devices",
    "seal-users",
    "seal-grants",
    "record-credential-ends",
    "record-access-ends",
    "seal-receipts",
    "seal-reach",
    "seal-capture-sites",
    "seal-incidents",
    "seal-visits",
    "seal-last-heard",
    "seal-lifecycle",
    "seal-outbox",
    "seal-watched",
    "seal-replay",
    "seal-raise",
)


def _token(user_id: int, *, revoked: bool) -> tuple[str, dict[str, Any]]:
    """A token row as issued before tokens were sealed: no seal."""
    token = "evt_" + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    row = {
        "token_hash": token_digest(token),
        "user_id": user_id,
        "expires_at": now + timedelta(hours=1),
        "revoked": revoked,
        "created_at": now,
    }
    return token, row


def _under(output: str, step: str) -> str:
    """What ``upgrade-seals`` printed under one step's heading."""
    after = output.split(f"== evidence {step}\n", 1)[1]
    return after.split("== evidence ", 1)[0]


def test_upgrade_seals_runs_every_step_in_order_and_refuses_what_the_ledger_does_not_bear_out(
    tmp_path: Any, seaweed: Any, monkeypatch: Any
) -> None:
    from typer.testing import CliRunner

    from ingest.cli import app
    from ingest.services import build_services
    from ingest.settings import get_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'evidence.db'}", seaweed)
    s = build_services(settings)
    try:
        enrol(s, "LW-OLD", staff_id="S-1")
        with s.db.session() as session:
            admin = recorded_user(session, s.ledger, "old-admin", ADMIN_PASSWORD, "admin")
            inv = recorded_user(session, s.ledger, "inv1", ADMIN_PASSWORD, "investigator")
            session.execute(  # planted: no custody entry creates it
                insert(User.__table__).values(
                    username="mallory", password_hash="planted", role="admin", full_name="", active=True
                )
            )
            token, live_row = _token(admin, revoked=False)
            revoked, revoked_row = _token(admin, revoked=True)
            session.execute(insert(ApiToken.__table__).values([live_row, revoked_row]))
            incident = create_incident(
                session,
                IncidentDraft(category="physical_assault", occurred_at=T0, site="NORTH"),
                "user:seed",
                ledger=s.ledger,
            )
            genuine = assign_investigator(session, s.ledger, incident, inv, "user:seed").id
            incident_id = incident.id
            session.execute(  # planted: no custody entry assigns it
                insert(IncidentAssignment.__table__).values(
                    incident_id=incident.id, user_id=admin, assigned_by="user:admin", assigned_at=T0
                )
            )
            # As every row was before its table carried a seal.
            for table in (User, Device, IncidentAssignment, StaffMember, Incident):
                session.execute(update(table.__table__).values(seal=None))
        enrol(s, "LW-OFF", staff_id="S-2")
        with s.db.session() as session:  # disabled as the service did before disables were recorded
            off = session.get_one(Device, "LW-OFF")
            off.status = "disabled"
            off.seal = device_seal_v1(device_seal_key(s.key), sealed_values(off))
        key = SignInSeals.of(s.key)
        for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
            monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
        monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
        get_settings.cache_clear()
        runner = CliRunner()

        listed = runner.invoke(app, ["upgrade-seals"])
        assert listed.exit_code == 0, listed.output
        headings = [
            line[len("== evidence ") :] for line in listed.output.splitlines() if line.startswith("== ")
        ]
        assert tuple(headings) == STEPS
        assert "token of old-admin" in _under(listed.output, "seal-tokens")
        assert "1 tokens would be sealed" in listed.output and token not in listed.output
        devices = _under(listed.output, "seal-devices")
        assert "LW-OLD" in devices and "LW-OFF" in devices and "2 devices would be sealed" in devices, devices
        users = _under(listed.output, "seal-users")
        assert "2 users would be sealed" in users and "1 users refused" in users, users
        assert "REFUSED" in next(line for line in users.splitlines() if line.startswith("user mallory"))
        grants = _under(listed.output, "seal-grants")
        assert "1 grants would be sealed" in grants and "1 grants refused" in grants, grants
        assert "1 ends would be recorded" in _under(listed.output, "record-credential-ends")
        disables = _under(listed.output, "record-access-ends")
        assert "lone_worker LW-OFF, disabled" in disables and "1 ends would be recorded" in disables
        assert "steps with refused rows: seal-users, seal-grants" in listed.output
        with s.db.session() as session:  # listing did nothing
            assert resolve_token(session, token, key) is None
            assert len(unsealed_devices(session, s.ledger)) == 2
            assert len(unsealed_users(session, s.ledger)) == 3
            assert len(unsealed_grants(session, s.ledger)) == 2
            assert len(unrecorded_ends(session, s.key.derived_secret(CREDENTIAL_SEALS))) == 1
            assert len(unrecorded_disables(session, device_seal_key(s.key))) == 1

        done = runner.invoke(app, ["upgrade-seals", "--yes"])
        assert done.exit_code == 1, done.output
        for said in (
            "1 tokens sealed",
            "2 devices sealed",
            "2 users sealed",
            "1 grants sealed",
            "1 ends recorded",
            "1 members of staff, evidence items and alarms sealed",
            "1 incidents sealed",
        ):
            assert said in done.output, (said, done.output)
        assert "steps with refused rows: seal-users, seal-grants" in done.output
        assert "1 ends recorded" in _under(done.output, "record-access-ends")
        with s.db.session() as session:
            found = resolve_token(session, token, key)  # its token and its user both sealed
            assert found is not None and found.username == "old-admin"
            assert resolve_token(session, revoked, key) is None
            assert unsealed_devices(session, s.ledger) == []
            assert [u.username for u in unsealed_users(session, s.ledger)] == ["mallory"]
            assert [g.row_id for g in unsealed_grants(session, s.ledger)] == [str(genuine + 1)]
            assert session.get_one(IncidentAssignment, genuine).seal
            assert session.get_one(Incident, incident_id).seal
            assert unrecorded_ends(session, s.key.derived_secret(CREDENTIAL_SEALS)) == []
            assert unrecorded_disables(session, device_seal_key(s.key)) == []
    finally:
        get_settings.cache_clear()
        s.db.dispose()
