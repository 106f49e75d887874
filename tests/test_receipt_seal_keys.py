"""A device's messages received under a key since replaced, as the receipt seals of migration 0045
judge them, on both databases: what a key replaced at re-enrolment still vouches for.

A device may be enrolled with its key written in base64 other than the way the service writes it
(the same 32 bytes: base64 leaves two bits of the last character unused). The receipt of each of
its messages was sealed over the key as the service writes it, and the key its enrolment recorded
was compared as it was written: once the device was enrolled again with a new key, none of its
earlier messages held, its genuine SOS shown to the control room as written in the database.

Messages stored before migration 0045 have no receipt seal: a key replaced since vouches for none
of them, so the genuine SOS of a device re-enrolled since is shown as not the device's word (a
strict xfail: the finding, left for a decision on how rows stored before are to be vouched for)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, update

from alarms.models import LoneWorkerEvent
from devices.service import add_staff, enrol_lone_worker
from tests.test_alarms_kit import DeviceKit, later
from tests.test_lifecycle_seals import _row
from tests.test_raise_seals import _record, _sos_with_note
from tests.test_retired_keys import _reenrol
from tests.test_visit_seals import _sql

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _written_otherwise(b64: str) -> str:
    """The same 32-byte key in base64 with one of the last character's unused bits set."""
    assert len(b64) == 44 and b64.endswith("=")
    last = _ALPHABET.index(b64[42])
    other = b64[:42] + _ALPHABET[last ^ 1] + "="
    assert other != b64 and base64.b64decode(other, validate=True) == base64.b64decode(b64)
    return other


def _enrolled_as(
    services: Any, device_id: str, staff_id: str, public_b64: Callable[[DeviceKit], str]
) -> DeviceKit:
    kit = DeviceKit(device_id)
    with services.db.session() as session:
        add_staff(session, services.ledger, staff_id, f"Staff {staff_id}", "nurse", "NORTH", actor="test")
        enrolled = enrol_lone_worker(
            session, services.ledger, device_id, public_b64(kit), "test", staff_id=staff_id, site="NORTH"
        )
        kit.password = enrolled.mqtt_password
    return kit


def test_a_key_enrolled_in_other_base64_still_vouches_for_what_it_sealed_once_replaced(services: Any) -> None:
    """The device enrolled with its key's base64 written otherwise, an SOS received, then the device
    enrolled again with a new key: the SOS, received while the old key was in force, still holds."""
    device = _enrolled_as(services, "LW-B64", "S-B64", lambda kit: _written_otherwise(kit.public_b64))
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now)
    source = str(_row(services, alarm_id).source_event_id)
    _reenrol(services, "LW-B64", "S-B64")
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(120, now))["messages"]}
    assert shown[source]["holds"] is True, shown[source]


def _stored_before_receipt_seals(services: Any, event_id: str) -> None:
    """The event's row as a database migrated from 0044 holds it: no receipt seal."""
    with services.db.session() as session:
        columns = {c["name"] for c in inspect(session.connection()).get_columns("lone_worker_events")}
    if "receipt_seal" in columns:
        _sql(
            services,
            update(LoneWorkerEvent).where(LoneWorkerEvent.event_id == event_id).values(receipt_seal=None),
        )


@pytest.mark.xfail(
    strict=True,
    reason="a message stored before migration 0045 (no receipt seal) is vouched for by no key replaced since",
)
def test_an_sos_stored_before_receipt_seals_still_holds_once_its_device_is_enrolled_again(
    services: Any,
) -> None:
    """An SOS received before the upgrade to 0045 (its row has no receipt seal), its device enrolled
    again with a new key after: the SOS is as the device signed it, with the key then in force."""
    device = _enrolled_as(services, "LW-PRE", "S-PRE", lambda kit: kit.public_b64)
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now)
    source = str(_row(services, alarm_id).source_event_id)
    _stored_before_receipt_seals(services, source)
    _reenrol(services, "LW-PRE", "S-PRE")
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(120, now))["messages"]}
    assert shown[source]["holds"] is True, shown[source]


@pytest.mark.xfail(
    strict=True,
    reason="a message stored before migration 0045 (no receipt seal) is vouched for by no key replaced since",
)
def test_a_provisional_sos_stored_before_receipt_seals_is_made_whole_with_its_payload(services: Any) -> None:
    """A provisional SOS (object storage was down) received before the upgrade to 0045, its device
    enrolled again with a new key before it is made whole: its genuine message becomes its payload's
    evidence, rather than custody recording its bytes as not the device's (``payload_refused``)."""
    device = _enrolled_as(services, "LW-PRV", "S-PRV", lambda kit: kit.public_b64)
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now, whole=False)
    _stored_before_receipt_seals(services, str(_row(services, alarm_id).source_event_id))
    _reenrol(services, "LW-PRV", "S-PRV")
    services.alarms.make_whole(alarm_id, later(2, now))
    assert _row(services, alarm_id).evidence_item_id is not None
