"""An alarm or a visit a device delivers late is its holder's when it happened, on both databases.

A lone-worker device keeps what it could not send and sends it, signed with the time it happened,
when it has signal again. Before, an SOS pressed by one member of staff and delivered after the
device was handed to another (or re-enrolled at another site) was raised in the new holder's name,
at the new holder's site: the other site's control room saw it and called the wrong person, and
the payload's evidence item was stored in the wrong name. A visit begun before the handover and
reported after was the new holder's, and its missed check-in raised for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alarms.models import AlarmRecord, LoneWorkerVisit
from chain_of_custody.models import EvidenceItem
from devices.service import add_staff, assign, enrol_lone_worker
from tests.test_alarms_kit import DeviceKit, enrol


def _hand_over(services: Any, device_id: str, staff_id: str, site: str) -> None:
    """The device handed to ``staff_id`` (a member of staff of ``site``)."""
    with services.db.session() as session:
        add_staff(session, services.ledger, staff_id, f"Staff {staff_id}", "nurse", site, actor="test")
        assign(session, services.ledger, device_id, staff_id, "test")


def _re_enrol(services: Any, kit: DeviceKit, staff_id: str, site: str) -> None:
    """The device re-enrolled, with the same key, for ``staff_id`` at ``site``."""
    with services.db.session() as session:
        add_staff(session, services.ledger, staff_id, f"Staff {staff_id}", "nurse", site, actor="test")
        enrol_lone_worker(
            session, services.ledger, kit.device_id, kit.public_b64, "test", staff_id=staff_id, site=site
        )
    kit.seq = 0  # an enrolment starts the device's sequence afresh


def _alarm(services: Any, alarm_id: str) -> AlarmRecord:
    services.alarms.lifecycle.make_whole_if_provisional(alarm_id)
    with services.db.session() as session:
        row = session.get(AlarmRecord, alarm_id)
        assert row is not None
        session.expunge(row)
        return row


def _item(services: Any, item_id: str | None) -> EvidenceItem:
    assert item_id is not None
    with services.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None
        session.expunge(item)
        return item


def _late_sos(services: Any, kit: DeviceKit, pressed: datetime) -> AlarmRecord:
    """An SOS pressed at ``pressed``, delivered (sent again) now."""
    now = datetime.now(UTC) + timedelta(seconds=5)
    raised = services.alarms.handle(*kit.sos(occurred_at=pressed, sent_at=now), now=now)
    assert raised.outcome == "accepted" and raised.alarm_id, raised
    return _alarm(services, raised.alarm_id)


def test_an_sos_delivered_after_its_device_was_handed_over_is_the_former_holders(services: Any) -> None:
    kit = enrol(services, "LW-LH", staff_id="S-LA", site="NORTH")
    pressed = datetime.now(UTC)
    _hand_over(services, "LW-LH", "S-LB", "NORTH")
    row = _late_sos(services, kit, pressed)
    assert (row.wearer, row.site) == ("S-LA", "NORTH")
    item = _item(services, row.evidence_item_id)
    assert (item.wearer, item.site) == ("S-LA", "NORTH")


def test_an_sos_delivered_after_its_device_was_re_enrolled_elsewhere_is_the_former_sites(
    services: Any,
) -> None:
    kit = enrol(services, "LW-LR", staff_id="S-RA", site="NORTH")
    pressed = datetime.now(UTC)
    _re_enrol(services, kit, "S-RB", "SOUTH")
    row = _late_sos(services, kit, pressed)
    assert (row.wearer, row.site) == ("S-RA", "NORTH")


def test_an_sos_sent_as_it_happens_after_a_handover_is_the_new_holders(services: Any) -> None:
    kit = enrol(services, "LW-LN", staff_id="S-NA", site="NORTH")
    _hand_over(services, "LW-LN", "S-NB", "NORTH")
    now = datetime.now(UTC)
    raised = services.alarms.handle(*kit.sos(sent_at=now), now=now)
    assert raised.alarm_id is not None, raised
    row = _alarm(services, raised.alarm_id)
    assert (row.wearer, row.site) == ("S-NB", "NORTH")


def test_an_sos_dated_before_its_device_was_enrolled_is_the_holders_at_receipt(services: Any) -> None:
    """The device's word on the time goes back no further than its key's enrolment: the holder now
    cannot date an SOS into a time the record does not give the device at all."""
    kit = enrol(services, "LW-LE", staff_id="S-EA", site="NORTH")
    _hand_over(services, "LW-LE", "S-EB", "NORTH")
    row = _late_sos(services, kit, datetime.now(UTC) - timedelta(days=2))
    assert (row.wearer, row.site) == ("S-EB", "NORTH")


def test_a_visit_begun_before_a_handover_and_reported_after_is_the_former_holders(services: Any) -> None:
    """Its missed check-in is raised for the member of staff who went, at their site."""
    kit = enrol(services, "LW-LV", staff_id="S-VA", site="NORTH")
    began = datetime.now(UTC)
    _re_enrol(services, kit, "S-VB", "SOUTH")
    now = datetime.now(UTC) + timedelta(seconds=5)
    started = services.alarms.handle(
        *kit.checkin_start("V-LV", now + timedelta(minutes=1), occurred_at=began, sent_at=now), now=now
    )
    assert started.outcome == "accepted", started
    with services.db.session() as session:
        visit = session.query(LoneWorkerVisit).filter_by(device_id="LW-LV", visit_id="V-LV").one()
        assert (visit.wearer, visit.site) == ("S-VA", "NORTH")
    services.alarms.raise_missed_checkins(now + timedelta(hours=1))
    with services.db.session() as session:
        missed = session.query(AlarmRecord).filter_by(device_id="LW-LV", kind="missed_checkin").one()
        assert (missed.wearer, missed.site) == ("S-VA", "NORTH")
