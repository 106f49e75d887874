"""A lone visit whose seal does not hold, and whose custody record of its start is gone, against a
change made in the database behind the service's back, on both databases, by its effects (the
clock driven by an explicit "now"): a visit is due by what its custody entries record when its
seal does not hold, and one whose start they no longer record (its entry deleted, or edited so it
does not hold) was taken at its row's expected end, which SQL had moved a day on: the missed
check-in was silenced. It is now due at once, a warning names it and ``evidence verify`` names it.
A visit opened before seals (no seal, and no custody entry ever recorded it) is not raised at once
for want of a record: it is due by the expected end of its device's own signed start check-in."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, update

from alarms.models import AlarmRecord, LoneWorkerEvent
from alarms.visits import UNVOUCHED_NOTE
from chain_of_custody.models import CustodyEntry
from tests.test_alarms_kit import enrol, later
from tests.test_deadline_seals import _alarms, _start, _visit
from tests.test_visit_seals import _cli, _sql


def _missed(services: Any, device_id: str) -> list[AlarmRecord]:
    return _alarms(services, device_id, "missed_checkin")


def _visit_entries(services: Any, visit_id: str) -> Any:
    """The visit's ``visit_changed`` entries."""
    return (CustodyEntry.action == "visit_changed") & CustodyEntry.details.like(f'%"visit":"{visit_id}"%')


def _gone(services: Any, visit_id: str, how: str) -> None:
    """The visit's custody record of its start deleted, or edited so that it does not hold."""
    where = _visit_entries(services, visit_id)
    if how == "deleted":
        _sql(services, delete(CustodyEntry).where(where))
    else:
        _sql(services, update(CustodyEntry).where(where).values(at="2020-01-01T00:00:00Z"))


def _warned_of(caplog: pytest.LogCaptureFixture, visit_id: str) -> bool:
    return any(r.levelno == logging.WARNING and getattr(r, "visit", None) == visit_id for r in caplog.records)


@pytest.mark.parametrize("how", ["deleted", "edited"])
def test_a_visit_moved_on_whose_start_entry_is_gone_silences_no_missed_checkin(
    services: Any, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Its expected end (and due time) moved a day on by SQL, which breaks its seal, and its start's
    custody entry deleted or edited: it was due by its row, a day on. Nothing the service can go by
    says when it ends: it is due at once, nobody's, with a warning naming it."""
    device = enrol(services, f"LW-G{how}", staff_id=f"S-G{how}", site="NORTH")
    now = datetime.now(UTC)
    visit_id = f"V-G{how}"
    _start(services, device, visit_id, now)
    _sql(services, _visit(visit_id, due_at=later(86400, now), expected_end=later(86400, now)))
    _gone(services, visit_id, how)
    with caplog.at_level(logging.WARNING):
        services.alarms.raise_missed_checkins(later(60, now))
    missed = _missed(services, device.device_id)
    assert [(m.visit_id, m.wearer, m.note) for m in missed] == [(visit_id, None, UNVOUCHED_NOTE)]
    assert _warned_of(caplog, visit_id)
    services.alarms.raise_missed_checkins(later(120, now))
    assert len(_missed(services, device.device_id)) == 1  # raised once


@pytest.mark.parametrize("how", ["deleted", "edited"])
def test_verify_names_a_visit_whose_start_entry_is_gone(services: Any, how: str) -> None:
    device = enrol(services, "LW-GV", staff_id="S-GV", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-GV", now)
    _sql(services, _visit("V-GV", expected_end=later(86400, now)))
    _gone(services, "V-GV", how)
    r = _cli(services, "verify", "--json")
    assert r.exit_code != 0
    assert "visit V-GV of device LW-GV" in r.output and "visit_deadline_altered" in r.output, r.output


def _opened_before_seals(services: Any, visit_id: str) -> None:
    """The visit as a service before seals left it: no seal, and no custody entry of it."""
    _sql(services, _visit(visit_id, seal=None))
    _sql(services, delete(CustodyEntry).where(_visit_entries(services, visit_id)))


def test_a_visit_opened_before_seals_is_due_by_its_devices_signed_start(services: Any) -> None:
    """A visit opened before seals has none, and no custody entry records it: it is not raised at
    once for that, but when the expected end its device signed runs over, as before."""
    device = enrol(services, "LW-GL", staff_id="S-GL", site="NORTH")
    now = datetime.now(UTC)
    _start(services, device, "V-GL", now)
    _opened_before_seals(services, "V-GL")
    assert services.alarms.raise_missed_checkins(later(60, now)) == 0
    assert _missed(services, "LW-GL") == []
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [m.visit_id for m in _missed(services, "LW-GL")] == ["V-GL"]


def test_a_visit_opened_before_seals_moved_on_in_the_database_silences_no_missed_checkin(
    services: Any,
) -> None:
    """A visit with no seal and no custody entry (opened before seals, or made to look so by SQL)
    was taken at its row: its expected end moved a day on silenced its missed check-in. It is due by
    its device's own signed start check-in; with that gone too, at once."""
    now = datetime.now(UTC)
    for n in ("M", "N"):  # N's signed start check-in is deleted too
        _start(services, enrol(services, f"LW-G{n}", staff_id=f"S-G{n}", site="NORTH"), f"V-G{n}", now)
        _opened_before_seals(services, f"V-G{n}")
        _sql(services, _visit(f"V-G{n}", due_at=later(86400, now), expected_end=later(86400, now)))
    _sql(services, delete(LoneWorkerEvent).where(LoneWorkerEvent.visit_id == "V-GN"))
    services.alarms.raise_missed_checkins(later(60, now))
    assert [m.visit_id for m in _missed(services, "LW-GN")] == ["V-GN"]
    assert _missed(services, "LW-GM") == []
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [m.visit_id for m in _missed(services, "LW-GM")] == ["V-GM"]


def test_a_visit_opened_before_seals_is_due_by_the_start_its_device_sent_last_not_by_received_at(
    services: Any,
) -> None:
    """A visit's later start check-in moves its expected end (here, a worker who said three hours
    and then thirty minutes). Opened before seals, it is due by its device's own signed start
    check-in: the one the device sent last, by the sequence number it signed, not the one the
    service received last by its ``received_at``, a column SQL can change. Set the three hours' to
    look received last, with the row moved a day on, and its missed check-in was silenced for
    hours past the thirty minutes the device said."""
    device = enrol(services, "LW-GR", staff_id="S-GR", site="NORTH")
    now = datetime.now(UTC)
    first = device.checkin_start("V-GR", later(3 * 3600, now), sent_at=now)
    assert services.alarms.handle(*first, now=now).outcome == "accepted"
    second = device.checkin_start("V-GR", later(30 * 60, now), sent_at=later(1, now))
    assert services.alarms.handle(*second, now=later(1, now)).outcome == "accepted"
    _opened_before_seals(services, "V-GR")
    _sql(services, _visit("V-GR", due_at=later(86400, now), expected_end=later(86400, now)))
    first_id = json.loads(first[1])["event_id"]
    _sql(
        services,
        update(LoneWorkerEvent)
        .where(LoneWorkerEvent.event_id == first_id)
        .values(received_at=later(60, now)),
    )
    services.alarms.raise_missed_checkins(later(36 * 60, now))
    assert [m.visit_id for m in _missed(services, "LW-GR")] == ["V-GR"]
