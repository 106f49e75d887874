"""The console's pure parts and the data behind its screens: control-room performance arithmetic, the
position trail of an alarm, the layering of the console package."""

from __future__ import annotations

import ast
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from alarms.performance import Answer, as_json, summaries, summarise, to_csv
from tests.test_alarms_kit import enrol

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


def _answers(*seconds: float | None, ago: timedelta = timedelta(hours=1)) -> list[Answer]:
    start = NOW - ago
    return [Answer(start, None if s is None else start + timedelta(seconds=s)) for s in seconds]


def test_shares_within_10_and_40_seconds_median_and_p95() -> None:
    # 20 alarms: 16 within 10 s, 3 more within 40 s, 1 never answered.
    answers = _answers(*([2.0] * 8 + [9.0] * 8 + [12.0, 30.0, 40.0] + [None]))
    s = summarise("day", answers, NOW)
    assert s.alarms == 20 and s.pending == 0
    assert s.within_10s == 0.8 and s.within_40s == 0.95
    assert s.meets(10.0) is True and s.meets(40.0) is False  # 98.5 % is the 40 s target
    assert s.median_s == 9.0  # nearest rank: the 10th of 20
    assert s.p95_s == 40.0  # nearest rank: the 19th of 20 (the 20th, never answered, is the 100th)
    assert summarise("day", _answers(*([1.0] * 19 + [50.0])), NOW).p95_s == 1.0


def test_an_alarm_still_waiting_counts_only_once_it_is_late() -> None:
    fresh = [Answer(NOW - timedelta(seconds=20), None)]
    late = [Answer(NOW - timedelta(seconds=41), None)]
    assert summarise("day", fresh, NOW).alarms == 0 and summarise("day", fresh, NOW).pending == 1
    s = summarise("day", late, NOW)
    assert s.alarms == 1 and s.within_40s == 0.0 and math.isinf(s.median_s or 0)
    empty = summarise("day", [], NOW)
    assert empty.within_10s is None and empty.meets(10.0) is None


def test_day_week_and_month_and_the_csv() -> None:
    answers = (
        _answers(5.0, ago=timedelta(hours=2))
        + _answers(20.0, ago=timedelta(days=3))
        + _answers(None, ago=timedelta(days=20))
    )
    day, week, month = summaries(answers, NOW)
    assert (day.alarms, week.alarms, month.alarms) == (1, 2, 3)
    assert week.within_10s == 0.5 and month.within_40s == 2 / 3
    lines = to_csv([day, week, month], NOW).splitlines()
    assert lines[0].startswith("period,period_end,red_alarms")
    assert lines[1].split(",")[:3] == ["day", NOW.isoformat(), "1"]
    assert lines[3].split(",")[-1] == "inf"  # the month's p95 alarm was never answered
    assert as_json(month)["p95_s"] is None and as_json(month)["p95_missed"] is True
    assert as_json(day)["median_s"] == 5.0 and as_json(day)["meets_10s_target"] is True


def test_answer_times_take_red_alarms_from_when_they_needed_someone(sqlite_services: Any) -> None:
    from alarms.rules import Acknowledge, Outcome, Resolve
    from chain_of_custody.reach_seals import reach_secret
    from console.sources import answer_times

    s = sqlite_services
    kit = enrol(s, "LW-PERF", staff_id=None)
    svc = s.alarms
    sos = svc.handle(*kit.sos()).alarm_id
    amber = svc.handle(*kit.amber(3600)).alarm_id
    low = svc.handle(*kit.message("alarm", {"kind": "low_battery", "action": "raise"})).alarm_id
    later = datetime.fromisoformat(svc.get(sos)["red_at"]) + timedelta(seconds=7)
    svc.act(sos, Acknowledge(by="user:olivia", at=later))
    svc.act(low, Resolve(by="user:olivia", at=later, outcome=Outcome.TEST, note=""))
    with s.db.session() as session:
        answers = answer_times(session, datetime.now(UTC) - timedelta(days=1), None, reach_secret(s.key))
    assert len(answers) == 1  # the amber alert has not turned red; low battery is never red
    assert (answers[0].answered_at - answers[0].needed_from).total_seconds() == 7.0  # type: ignore[operator]
    assert amber


def test_the_trail_is_sampled_while_an_alarm_is_open_once_per_fix(sqlite_services: Any) -> None:
    from alarms.models import LoneWorkerPosition
    from alarms.rules import Outcome, Resolve
    from alarms.trails import trail
    from devices.models import LoneWorkerState

    s = sqlite_services
    kit = enrol(s, "LW-TRAIL", staff_id=None)
    svc = s.alarms
    svc.handle(*kit.heartbeat())
    assert svc.sample_trails() == 0  # nothing open: no trail kept

    def moved(dlat: float) -> None:
        with s.db.session() as session:
            state = session.get(LoneWorkerState, "LW-TRAIL")
            state.lat += dlat
            state.position_at = (state.position_at or datetime.now(UTC)) + timedelta(seconds=5)

    alarm_id = svc.handle(*kit.sos()).alarm_id
    assert svc.sample_trails() == 1
    assert svc.sample_trails() == 0  # the same fix again: nothing new
    moved(0.001)
    assert svc.sample_trails() == 1
    moved(0.001)
    assert svc.sample_trails() == 1
    with s.db.session() as session:
        view = svc.queries.get(alarm_id)  # the service's own read
        points = trail(session, view, datetime.now(UTC) + timedelta(minutes=1))
        assert len(list(session.scalars(select(LoneWorkerPosition)))) == 3
    # The alarm's own fix once (sampled again from the state, not repeated), then two moves.
    assert [round(p["lat"], 4) for p in points] == [51.5072, 51.5082, 51.5092]
    svc.act(alarm_id, Resolve(by="user:olivia", at=datetime.now(UTC), outcome=Outcome.GENUINE, note=""))
    moved(0.001)
    assert svc.sample_trails() == 0  # resolved: the trail ends


def test_each_new_trail_point_is_on_the_live_stream_as_the_alarm_having_moved(services: Any) -> None:
    """The map follows a moving alarm from the live stream: each sampled point is a ``moved`` change
    carrying the point (and nothing for the alarm's own fix, a fix already sampled or a device with
    no alarm open)."""
    import json

    from alarms.feed import changes_after
    from devices.models import LoneWorkerState

    s = services
    kit = enrol(s, "LW-MOVES", staff_id=None)
    svc = s.alarms
    svc.handle(*kit.heartbeat())
    svc.sample_trails()
    alarm_id = svc.handle(*kit.sos()).alarm_id
    start = max([i for i, _ in changes_after(s.db, 0, 10000)] or [0])
    svc.sample_trails()
    with s.db.session() as session:
        state = session.get(LoneWorkerState, "LW-MOVES")
        state.lat += 0.002
        state.position_at = (state.position_at or datetime.now(UTC)) + timedelta(seconds=5)
    svc.sample_trails()
    svc.sample_trails()  # the same fix: nothing more
    bodies = [json.loads(body) for _, body in changes_after(s.db, start, 100)]
    moves = [b for b in bodies if b["change"] == "moved"]
    assert [b["alarm"]["id"] for b in moves] == [alarm_id]
    assert [round(b["position"]["lat"], 4) for b in moves] == [51.5092]
    assert all(b["position"]["at"] for b in moves)


def test_the_console_never_reaches_into_the_application() -> None:
    """console/ sits above the domains and below ingest/: no module of the console imports ingest
    (the import-linter layers contract says the same for the whole package)."""
    modules = list((ROOT / "console").rglob("*.py"))
    assert any(path.name == "sources.py" for path in modules)
    for path in modules:
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            elif isinstance(node, ast.Import):
                names += [a.name for a in node.names]
        reached = {n for n in names if n and (n == "ingest" or n.startswith("ingest."))}
        assert not reached, f"{path.relative_to(ROOT)} imports {reached}"
