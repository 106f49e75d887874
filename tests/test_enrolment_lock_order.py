"""A lone-worker device enrolled again (a new key, a new broker password) while one of its messages
is being handled, on PostgreSQL: the intake locks the device's state row and then the ledger, so the
enrolment takes them in the same order. Taken the other way round, each waits for the other and the
database kills one (a deadlock): the admin's enrolment or the device's alarm fails."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chain_of_custody.entries import CustodyAction
from devices.models import LoneWorkerState
from devices.service import enrol_lone_worker
from ingest.services import build_services
from tests.conftest import backends_waiting_on_a_lock, make_settings, wait_for
from tests.test_alarms_kit import DeviceKit, enrol


def test_an_enrolment_beside_the_intake_takes_its_locks_in_the_intakes_order(
    tmp_path: Path, pg_url: str, seaweed: Any
) -> None:
    services = build_services(make_settings(tmp_path, pg_url, seaweed))
    try:
        kit = enrol(services, "LW-LOCK", staff_id="S-L", site="NORTH")
        assert services.alarms.handle(*kit.heartbeat()).outcome == "accepted"  # its state row exists
        errors: list[BaseException] = []

        def enrol_again() -> None:
            try:
                with services.db.session() as session:
                    enrol_lone_worker(
                        session,
                        services.ledger,
                        "LW-LOCK",
                        DeviceKit("LW-LOCK").public_b64,
                        "admin",
                        staff_id="S-L",
                        site="NORTH",
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        def enrolment_waits() -> bool:
            return bool(backends_waiting_on_a_lock(services.db.engine, "lone_worker_states"))

        again = threading.Thread(target=enrol_again)
        with services.db.session() as intake:  # a message of the device, as the intake handles it
            intake.execute(
                select(LoneWorkerState.device_id)
                .where(LoneWorkerState.device_id == "LW-LOCK")
                .with_for_update()
            )
            again.start()
            wait_for(enrolment_waits, 30, 0.05, "the enrolment to wait for the device's state row")
            services.ledger.append(intake, CustodyAction.VIEWED, "device:LW-LOCK", details={"n": 1})
        again.join(30)
        assert not again.is_alive() and not errors, errors
    finally:
        services.db.dispose()
