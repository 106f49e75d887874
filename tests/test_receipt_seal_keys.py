"""A device's messages received under a key since replaced, as the receipt seals of migration 0045
judge them, on both databases: what a key replaced at re-enrolment still vouches for.

A device may be enrolled with its key written in base64 other than the way the service writes it
(the same 32 bytes: base64 leaves two bits of the last character unused). The receipt of each of
its messages was sealed over the key as the service writes it, and the key its enrolment recorded
was compared as it was written: once the device was enrolled again with a new key, none of its
earlier messages held, its genuine SOS shown to the control room as written in the database."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from devices.service import add_staff, enrol_lone_worker
from tests.test_alarms_kit import DeviceKit, later
from tests.test_lifecycle_seals import _row
from tests.test_raise_seals import _record, _sos_with_note
from tests.test_retired_keys import _reenrol

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
