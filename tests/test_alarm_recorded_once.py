"""A provisional SOS is made whole once, however many times it is asked to be, on both databases and
the real store: the device's message delivered again by the broker while the alarm is still
provisional, a worker that listed it before another made it whole, and a second worker that comes
for it while the first is storing its payload. One payload item, one ``alarm_raised`` entry, one
incident, one ``raised`` and one ``incident_linked`` on the feed, one ``received`` ack. And a voice
memo uploaded twice at once is one item, linked once, with one ``alarm_changed`` entry."""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import func, select

from alarms.models import AlarmChange, AlarmRecord
from alarms.service import AlarmService
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.verify import verify_service
from incidents.models import Incident, IncidentLink
from tests.test_alarms_kit import acks, enrol


def _count(services: Any, model: Any, *where: Any) -> int:
    with services.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _made_whole_once(services: Any, alarm_id: str, device_id: str) -> None:
    with services.db.session() as session:
        alarm = session.get(AlarmRecord, alarm_id)
        assert alarm is not None and not alarm.provisional
        assert alarm.evidence_item_id is not None and alarm.incident_id is not None
        items = list(session.scalars(select(EvidenceItem.id).where(EvidenceItem.kind == "alarm")))
        raised = session.scalar(
            select(func.count()).select_from(CustodyEntry).where(CustodyEntry.action == "alarm_raised")
        )
        links = session.scalar(
            select(func.count())
            .select_from(IncidentLink)
            .where(IncidentLink.target_kind == "alarm", IncidentLink.target_id == alarm_id)
        )
        changes = list(
            session.scalars(
                select(AlarmChange.change).where(AlarmChange.alarm_id == alarm_id).order_by(AlarmChange.id)
            )
        )
        report = verify_service(session, services.store, services.key)
    assert items == [alarm.evidence_item_id]
    assert raised == 1 and links == 1
    assert _count(services, Incident) == 1
    assert changes == ["raised", "incident_linked"]
    assert [a["status"] for a in acks(services, device_id) if a["status"] == "received"] == ["received"]
    assert report.ok, report.problems


def test_an_sos_delivered_again_while_provisional_is_made_whole_once(services: Any) -> None:
    """The broker delivers the same SOS again (QoS 1, its PUBACK lost) before any worker made the
    alarm whole, then two passes run: the second delivery is absorbed as a duplicate."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False  # as under the MQTT consumer (a worker makes them whole)
    device = enrol(services, "LW-W1", staff_id="S-W1")
    topic, raw = device.sos()
    first = alarms.handle(topic, raw)
    assert first.provisional and first.alarm_id
    again = alarms.handle(topic, raw)
    assert again.outcome == "duplicate" and again.alarm_id == first.alarm_id and not again.provisional

    assert alarms.make_provisional_alarms_whole() == 1
    assert alarms.make_provisional_alarms_whole() == 0
    assert alarms.make_whole(first.alarm_id) is False
    _made_whole_once(services, first.alarm_id, "LW-W1")


def test_a_worker_that_listed_an_alarm_before_another_made_it_whole_does_nothing(services: Any) -> None:
    """Two workers list the provisional alarms; the first makes it whole, the second then comes for
    the alarm it listed: the check inside its transaction finds it whole."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False
    device = enrol(services, "LW-W2", staff_id="S-W2")
    alarm_id = alarms.handle(*device.sos()).alarm_id
    assert alarm_id is not None
    listed_by_second = alarms.lifecycle.provisional_alarms()
    assert listed_by_second == [alarm_id]

    assert alarms.lifecycle.make_whole_if_provisional(alarm_id) is True
    assert alarms.lifecycle.make_whole_if_provisional(listed_by_second[0]) is False
    _made_whole_once(services, alarm_id, "LW-W2")


def test_a_second_worker_while_the_first_stores_the_payload_does_nothing(services: Any) -> None:
    """The second worker comes for the alarm while the first holds it (storing its payload): on
    PostgreSQL it skips the locked row at once, on SQLite it waits for the first's commit and finds
    the alarm whole. Either way it records nothing."""
    alarms = AlarmService(services)
    alarms.make_whole_inline = False
    device = enrol(services, "LW-W3", staff_id="S-W3")
    alarm_id = alarms.handle(*device.sos()).alarm_id
    assert alarm_id is not None
    put = alarms.lifecycle.payloads.put
    second: list[bool] = []
    errors: list[BaseException] = []

    def second_worker() -> None:
        try:
            second.append(alarms.lifecycle.make_whole_if_provisional(alarm_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    other = threading.Thread(target=second_worker, name="second-worker")

    def put_while_the_second_comes(event: Any) -> Any:
        other.start()
        if services.db.is_postgres:  # the row is locked by this transaction: it is skipped, not waited for
            other.join(20)
            assert second == [False], "the second worker did not skip the alarm the first holds"
        return put(event)

    alarms.lifecycle.payloads.put = put_while_the_second_comes  # type: ignore[method-assign]
    try:
        assert alarms.lifecycle.make_whole_if_provisional(alarm_id) is True
    finally:
        alarms.lifecycle.payloads.put = put  # type: ignore[method-assign]
    other.join(40)
    assert not other.is_alive() and not errors, errors
    assert second == [False]
    _made_whole_once(services, alarm_id, "LW-W3")


def test_a_voice_memo_uploaded_twice_at_once_is_recorded_once(services: Any) -> None:
    """The device sends its memo again before the first upload answered (its connection dropped):
    both uploads are admitted (neither saw a memo on the alarm) and both store their bytes; the
    second's recording transaction finds the first's memo and answers with it."""
    alarms = AlarmService(services)
    device = enrol(services, "LW-W4", staff_id="S-W4")
    topic, raw = device.sos()
    alarm_id = alarms.handle(topic, raw).alarm_id
    event_id = json.loads(raw)["event_id"]
    memo = b"OggS" + bytes(range(256)) * 40
    headers = device.voice_memo_headers(event_id, memo)
    claims = {
        "sha256": headers["X-Device-Content-SHA256"],
        "size": len(memo),
        "content_type": "audio/ogg",
        "sent_at": headers["X-Device-Sent-At"],
        "signature": headers["X-Device-Signature"],
    }
    first = alarms.voice_memos.admit("LW-W4", event_id, **claims)
    second = alarms.voice_memos.admit("LW-W4", event_id, **claims)
    assert first.stored_item is None and second.stored_item is None

    item_id, created, status = alarms.voice_memos.store(first, memo)
    assert created and status == "stored"
    assert alarms.voice_memos.store(second, memo) == (item_id, False, "stored")

    with services.db.session() as session:
        alarm = session.get(AlarmRecord, alarm_id)
        assert alarm is not None and alarm.voice_memo_item_id == item_id
        memos = list(session.scalars(select(EvidenceItem.id).where(EvidenceItem.kind == "voice_memo")))
        memo_entries = [
            json.loads(d)
            for d in session.scalars(
                select(CustodyEntry.details).where(CustodyEntry.action == "alarm_changed")
            )
        ]
        linked = session.scalar(
            select(func.count())
            .select_from(IncidentLink)
            .where(IncidentLink.target_kind == "evidence", IncidentLink.target_id == item_id)
        )
        changes = list(session.scalars(select(AlarmChange.change).where(AlarmChange.change == "voice_memo")))
    assert memos == [item_id]
    assert [d.get("voice_memo") for d in memo_entries] == [item_id]
    assert linked == 1 and changes == ["voice_memo"]
