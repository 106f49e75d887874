"""A device's messages received under a key since replaced, as the receipt seals of migration 0045
judge them, on both databases: what a key replaced at re-enrolment still vouches for.

A device may be enrolled with its key written in base64 other than the way the service writes it
(the same 32 bytes: base64 leaves two bits of the last character unused). The receipt of each of
its messages was sealed over the key as the service writes it, and the key its enrolment recorded
was compared as it was written: once the device was enrolled again with a new key, none of its
earlier messages held, its genuine SOS shown to the control room as written in the database.

Messages stored before migration 0045 have no receipt seal: a key replaced since vouched for none
of them, so the genuine SOS of a device re-enrolled since was shown as not the device's word. The
upgrade's ``seal-receipts`` step seals, once, the receipt of each such row under the key in force
at its date, as the rule before 0045 chose it; a row written without a receipt seal after it has
run is still nobody's word."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import inspect, select, update

from alarms.models import LoneWorkerEvent
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.receipt_upgrade import seal_receipts, unsealed_receipts
from devices.service import add_staff, enrol_lone_worker
from tests.test_alarms_kit import DeviceKit, later
from tests.test_lifecycle_seals import _row
from tests.test_raise_seals import _record, _sos_with_note
from tests.test_retired_keys import _planted, _reenrol
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


def _upgraded(services: Any) -> list[Any]:
    """``evidence upgrade-seals --yes``'s ``seal-receipts`` step; what it listed."""
    with services.db.session() as session:
        return list(seal_receipts(session, services.key, services.ledger))


def _receipt(services: Any, event_id: str) -> str | None:
    with services.db.session() as session:
        found = session.scalar(
            select(LoneWorkerEvent.receipt_seal).where(LoneWorkerEvent.event_id == event_id)
        )
    return None if found is None else str(found)


def _sos_stored_before(
    services: Any, device_id: str, staff_id: str, whole: bool = True
) -> tuple[DeviceKit, datetime, str, str]:
    """An SOS of a new device stored as before receipt seals, the device then enrolled again with a
    new key: the old kit, when the SOS was sent, the alarm and the SOS's event id."""
    device = _enrolled_as(services, device_id, staff_id, lambda kit: kit.public_b64)
    now = datetime.now(UTC) - timedelta(minutes=5)
    alarm_id = _sos_with_note(services, device, now, whole=whole)
    source = str(_row(services, alarm_id).source_event_id)
    _stored_before_receipt_seals(services, source)
    _reenrol(services, device_id, staff_id)
    return device, now, alarm_id, source


def test_an_sos_stored_before_receipt_seals_still_holds_once_its_device_is_enrolled_again(
    services: Any,
) -> None:
    """An SOS received before the upgrade to 0045 (its row has no receipt seal), its device enrolled
    again with a new key after: the SOS is as the device signed it, with the key then in force."""
    _, now, alarm_id, source = _sos_stored_before(services, "LW-PRE", "S-PRE")
    with services.db.session() as session:
        waiting = awaiting_upgrade(session, services.key)
    assert waiting.counts["device_receipts"] == 1, waiting
    assert "1 device message stored before receipt seals" in waiting.summary()
    listed = _upgraded(services)
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["device_receipts"] == 0
    assert [(r.event_id, r.refused) for r in listed if r.event_id == source] == [(source, None)], listed
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(120, now))["messages"]}
    assert shown[source]["holds"] is True, shown[source]


def test_a_provisional_sos_stored_before_receipt_seals_is_made_whole_with_its_payload(services: Any) -> None:
    """A provisional SOS (object storage was down) received before the upgrade to 0045, its device
    enrolled again with a new key before it is made whole: its genuine message becomes its payload's
    evidence, rather than custody recording its bytes as not the device's (``payload_refused``)."""
    _, now, alarm_id, _ = _sos_stored_before(services, "LW-PRV", "S-PRV", whole=False)
    _upgraded(services)
    services.alarms.make_whole(alarm_id, later(2, now))
    assert _row(services, alarm_id).evidence_item_id is not None


def test_a_message_written_without_a_receipt_seal_after_the_upgrade_is_still_not_the_devices_word(
    services: Any,
) -> None:
    """The upgrade sealed the receipts of the messages stored before receipt seals; then a cancel of
    the device's SOS, signed with its replaced key and dated before the replacement (as the rule
    before 0045 would have taken it), is written into the event table with no receipt seal. It is
    not the device's word, and running the step again seals nothing: it is listed as refused."""
    device, now, alarm_id, source = _sos_stored_before(services, "LW-AFT", "S-AFT")
    _upgraded(services)
    cancel = _planted(
        services, device, "alarm", {"kind": "sos", "action": "cancel", "ref_event_id": source}, later(60, now)
    )
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(120, now))["messages"]}
    assert shown[source]["holds"] is True, shown[source]
    assert (shown[cancel]["holds"], shown[cancel]["payload"]) == (False, None), shown[cancel]
    with services.db.session() as session:
        listed = {r.event_id: r for r in unsealed_receipts(session, services.key)}
    assert listed[cancel].refused and "upgrade" in listed[cancel].refused, listed
    again = {r.event_id: r for r in _upgraded(services)}
    assert again[cancel].refused, again
    assert _receipt(services, cancel) is None
    shown = {m["event_id"]: m for m in _record(services, alarm_id, later(120, now))["messages"]}
    assert (shown[cancel]["holds"], shown[cancel]["payload"]) == (False, None), shown[cancel]


def test_the_upgrade_refuses_a_message_no_key_of_the_device_signed_at_its_date(services: Any) -> None:
    """Before the upgrade has run, a row with no receipt seal signed with the device's replaced key
    but dated after its replacement is refused (the rule before 0045 took it as nobody's word
    either), and stays unsealed; the device's genuine message from before is sealed."""
    device, _, _, source = _sos_stored_before(services, "LW-LATE", "S-LATE")
    late = _planted(
        services,
        device,
        "alarm",
        {"kind": "sos", "action": "cancel", "ref_event_id": source},
        datetime.now(UTC) + timedelta(minutes=1),
    )
    listed = {r.event_id: r for r in _upgraded(services)}
    assert listed[source].refused is None and listed[late].refused, listed
    assert _receipt(services, source) is not None and _receipt(services, late) is None
