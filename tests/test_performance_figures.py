"""The control room's answer figures (``GET /api/v1/alarms/performance``, the console's board and
performance page) are figured in the database, never from every red alarm of 30 days held at once:
on a known set of alarms they are what ``alarms.performance`` makes of the answer times, to the
microsecond at the targets' edges, on SQLite and on PostgreSQL; and reading them is a handful of
statements of a row each, however many alarms there were."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from alarms.models import AlarmRecord
from alarms.performance import summaries
from alarms.records import answer_summaries, answer_times
from chain_of_custody.alarm_seals import alarm_seal
from chain_of_custody.reach_seals import reach_secret
from devices.models import Device

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seen:
    role: str
    site: str | None


EVERYONE = Seen("admin", None)
NORTH = Seen("security_manager", "NORTH")


def _alarm(
    n: int,
    red: timedelta | None,
    *,
    acked: timedelta | None = None,
    resolved: timedelta | None = None,
    by: str | None = None,
    site: str = "NORTH",
) -> AlarmRecord:
    """An alarm turned red ``red`` before NOW, taken ``acked`` (or resolved ``resolved``) after that."""
    red_at = NOW - red if red is not None else None
    at = red_at or NOW - timedelta(days=1)
    return AlarmRecord(
        id=f"alarm-{n:04d}",
        device_id=f"LW-{site}",
        site=site,
        kind="sos",
        severity="red",
        status="resolved" if resolved is not None else "raised",
        raised_at=at,
        occurred_at=at,
        red_at=red_at,
        acknowledged_at=red_at + acked if red_at is not None and acked is not None else None,
        resolved_at=at + resolved if resolved is not None else None,
        resolved_by=by,
    )


def known_alarms() -> list[AlarmRecord]:
    s, ms, us = (lambda v: timedelta(seconds=v)), (lambda v: timedelta(milliseconds=v)), timedelta
    hour, day = timedelta(hours=1), timedelta(days=1)
    rows = [
        # The day: the targets' edges to the microsecond, a clock that had the answer first, a
        # resolution by a person and one by the device (which is no answer), one still waiting.
        _alarm(1, hour, acked=s(10)),
        _alarm(2, hour, acked=s(10) + us(microseconds=1)),
        _alarm(3, hour, acked=s(40)),
        _alarm(4, hour, acked=s(40) + us(microseconds=1)),
        _alarm(5, hour, acked=-s(2)),
        _alarm(6, hour, acked=ms(2500)),
        _alarm(7, hour, resolved=s(7), by="user:olivia"),
        _alarm(8, hour, resolved=s(3), by="device:LW-NORTH"),  # nobody took it: missed
        _alarm(9, hour, resolved=s(3), by="USER:shouting"),  # not a person's: missed
        _alarm(10, s(20)),  # still waiting, not yet late
        _alarm(11, s(41)),  # late: missed
        _alarm(12, hour, acked=us(microseconds=999_999)),
        # The week and the month, and beyond them.
        _alarm(13, 3 * day, acked=s(12)),
        _alarm(14, 3 * day, acked=s(12), site="SOUTH"),
        _alarm(15, 6 * day, acked=ms(9999)),
        _alarm(16, 20 * day),
        _alarm(17, 29 * day, acked=s(55), site="SOUTH"),
        _alarm(18, 31 * day, acked=s(1)),  # older than 30 days
        _alarm(19, None),  # never turned red (an amber alarm cancelled in time)
    ]
    # Enough in the month for the ranks to fall between the answered ones.
    rows += [_alarm(100 + n, 10 * day + n * s(1), acked=ms(300 * n)) for n in range(40)]
    return rows


@pytest.fixture
def alarms(services: Any) -> Iterator[Any]:
    secret = reach_secret(services.key)
    with services.db.session() as session:
        for site in ("NORTH", "SOUTH"):
            session.add(Device(id=f"LW-{site}", kind="lone_worker", site=site))
        session.flush()
        rows = known_alarms()
        for a in rows:  # sealed as the service seals an alarm it raises
            a.seal = alarm_seal(secret, a.id, a.site, a.wearer, a.device_id, a.voice_memo_item_id)
        session.add_all(rows)
    yield services


def test_the_figures_from_the_database_are_the_figures_of_the_answer_times(alarms: Any) -> None:
    secret = reach_secret(alarms.key)
    with alarms.db.session() as session:
        for viewer in (EVERYONE, NORTH, Seen("security_manager", "EAST")):
            expected = summaries(answer_times(session, NOW - timedelta(days=30), viewer, secret), NOW)
            assert answer_summaries(session, NOW, viewer, secret) == expected, viewer
        assert answer_summaries(session, NOW, NORTH, secret)[2].alarms == 16 + 40 - 2  # all but SOUTH's
        day, week, month = answer_summaries(session, NOW, EVERYONE, secret)
    # The day by hand: 11 decided (8 answered, 3 missed: 8, 9 and 11) and one pending (10).
    assert (day.alarms, day.pending) == (11, 1)
    assert day.within_10s == 5 / 11  # 1, 5, 6, 7, 12 (within 10 s to the microsecond; 5 early)
    assert day.within_40s == 7 / 11  # and 2, 3
    assert day.median_s == 10.000001  # the 6th of 11: 0, 0.999999, 2.5, 7, 10, 10.000001
    assert day.p95_s is not None and math.isinf(day.p95_s)  # the 11th: never answered
    assert week.alarms == 14 and month.alarms == 16 + 40
    # The 28th of 56: below it, 24 of the forty (0 to 6.9 s, 0.3 s apart) and 3 of the day's.
    assert month.median_s == 7.0


def test_the_figures_are_a_few_rows_however_many_alarms(alarms: Any) -> None:
    engine = alarms.db.engine
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with alarms.db.session() as session:
            answer_summaries(session, NOW, NORTH, reach_secret(alarms.key))
            by_site, statements[:] = list(statements), []
            answer_summaries(session, NOW, EVERYONE, reach_secret(alarms.key))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    # One row of counts, then each period's median and 95th percentile: one row each, at most; for
    # a reader by site, one read of the seals of their site's red alarms of the month before those.
    assert 1 <= len(statements) <= 1 + 2 * 3, statements
    assert len(by_site) <= 1 + 1 + 2 * 3 and "seal" in by_site[0].lower(), by_site
    counts, *ranks = statements
    assert "sum(" in counts.lower()
    assert all("LIMIT" in r.upper() for r in ranks), ranks
