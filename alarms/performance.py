"""How well the control room answers red alarms: pure arithmetic over (needed from, answered at) pairs.

BS 8484 asks an alarm receiving centre to answer 80 % of alarms within 10 s and 98.5 % within
40 s. "Answered" here is the operator's acknowledgement (or a resolution by a person, when nobody
acknowledged first); an amber alarm counts from the moment it turned red. An alarm still waiting
counts as missed once it is older than the longer target, and is left out until then (it may yet
be answered in time). Percentiles are nearest-rank over the decided alarms, an unanswered alarm
counting as slower than any answered one.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

TARGETS = ((10.0, 0.80), (40.0, 0.985))  # (seconds, share) from BS 8484
PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}


@dataclass(frozen=True)
class Answer:
    needed_from: datetime
    answered_at: datetime | None


@dataclass(frozen=True)
class Summary:
    period: str
    alarms: int  # decided: answered, or unanswered beyond the longest target
    pending: int  # still waiting, and not yet late
    within_10s: float | None  # share, 0..1
    within_40s: float | None
    median_s: float | None  # inf: the median alarm was never answered
    p95_s: float | None

    def meets(self, seconds: float) -> bool | None:
        share = self.within_10s if seconds == 10.0 else self.within_40s
        target = dict(TARGETS)[seconds]
        return None if share is None else share >= target


def _rank(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending list."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index]


def summarise(period: str, answers: list[Answer], now: datetime) -> Summary:
    longest = timedelta(seconds=max(s for s, _ in TARGETS))
    times: list[float] = []
    pending = 0
    for a in answers:
        if a.answered_at is not None:
            times.append(max(0.0, (a.answered_at - a.needed_from).total_seconds()))
        elif now - a.needed_from > longest:
            times.append(math.inf)
        else:
            pending += 1
    times.sort()
    if not times:
        return Summary(period, 0, pending, None, None, None, None)
    n = len(times)
    return Summary(
        period,
        n,
        pending,
        sum(1 for t in times if t <= 10.0) / n,
        sum(1 for t in times if t <= 40.0) / n,
        _rank(times, 0.5),
        _rank(times, 0.95),
    )


def summaries(answers: list[Answer], now: datetime) -> list[Summary]:
    """Day, week and month (30 days) ending now."""
    return [
        summarise(name, [a for a in answers if a.needed_from >= now - span], now)
        for name, span in PERIODS.items()
    ]


def as_json(summary: Summary) -> dict[str, object]:
    """A summary for JSON, which has no infinity: a time that is a missed alarm is null, flagged."""

    def finite(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else round(value, 3)

    return {
        "period": summary.period,
        "red_alarms": summary.alarms,
        "pending": summary.pending,
        "within_10s": summary.within_10s,
        "within_40s": summary.within_40s,
        "meets_10s_target": summary.meets(10.0),
        "meets_40s_target": summary.meets(40.0),
        "median_s": finite(summary.median_s),
        "median_missed": summary.median_s is not None and math.isinf(summary.median_s),
        "p95_s": finite(summary.p95_s),
        "p95_missed": summary.p95_s is not None and math.isinf(summary.p95_s),
    }


def seconds_text(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "missed"
    return f"{value:.1f} s"


def share_text(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def to_csv(rows: list[Summary], now: datetime) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            "period",
            "period_end",
            "red_alarms",
            "still_pending",
            "share_acknowledged_within_10s",
            "target_10s",
            "share_acknowledged_within_40s",
            "target_40s",
            "median_seconds_to_acknowledge",
            "p95_seconds_to_acknowledge",
        ]
    )
    for r in rows:

        def num(v: float | None) -> str:
            return "" if v is None else ("inf" if math.isinf(v) else f"{v:.3f}")

        writer.writerow(
            [
                r.period,
                now.isoformat(),
                r.alarms,
                r.pending,
                num(r.within_10s),
                TARGETS[0][1],
                num(r.within_40s),
                TARGETS[1][1],
                num(r.median_s),
                num(r.p95_s),
            ]
        )
    return out.getvalue()
