"""Anonymised incident counts for trust board reports, by month, site, category and staff group.

Disclosure control (the choice made here):

- Periods are whole calendar months (``check_period``): a window of minutes would single out one
  incident, and differences between overlapping windows would too.
- A cell below ``min_count`` (default 5), zero included, is not listed at all: the table lists only
  the cells it publishes, so a row never says that some combination (a ward, a category, a staff
  group) happened at all. Every published count is rounded to the nearest multiple of ``rounding``
  (default 5, halves round up).
- Secondary suppression (``_secondary``): a published cell is withdrawn when, with the margins another
  query publishes (the same table with one dimension fewer) or the total, it would let the unlisted
  cells of its line be worked out as a small number (1 to ``min_count - 1``).
- The total is published only when it is not small itself.

Nothing but counts leaves this module: no names, staff numbers, references or free text.

Counting by staff group counts an incident once for every distinct group of the staff involved (an
incident with a nurse and a porter counts once for each); incidents with nobody recorded count
under ``unrecorded``.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from devices.models import StaffMember
from storage.errors import Refused

from .models import Incident, IncidentStaff

DIMENSIONS = ("month", "site", "category", "staff_group")


@dataclass(frozen=True)
class Disclosure:
    min_count: int = 5
    rounding: int = 5

    def publish(self, count: int) -> int | None:
        """The figure that may be published, or None when the count is suppressed (zero discloses no one)."""
        if count == 0:
            return 0
        if count < self.min_count:
            return None
        step = max(1, self.rounding)
        return ((count + step // 2) // step) * step

    def label(self, count: int) -> str:
        value = self.publish(count)
        return f"<{self.min_count}" if value is None else str(value)


@dataclass(frozen=True)
class IncidentFacts:
    """The few attributes statistics may use: no identifiers beyond what grouping needs."""

    month: str
    site: str
    category: str
    staff_groups: tuple[str, ...]


def load_fact_counts(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    site: str | None = None,
    tz: str = "Europe/London",
    chunk: int = 500,
    within: ColumnElement[bool] | None = None,
) -> Counter[IncidentFacts]:
    """How many incidents have each combination of facts: read a ``chunk`` at a time, so memory
    grows with the table's combinations (months, sites, categories, groups), not with incidents.

    ``within`` (a WHERE clause on ``Incident``) counts only the incidents it selects: for a reader by
    site, ``access.incident_scope``, so an incident moved to their site by SQL (its site no longer
    the one the service sealed) is not counted there; ``site`` alone reads the column as it stands."""
    zone = ZoneInfo(tz)
    q = select(Incident.id, Incident.occurred_at, Incident.site, Incident.category)
    if since:
        q = q.where(Incident.occurred_at >= since)
    if until:
        q = q.where(Incident.occurred_at < until)
    if site:
        q = q.where(Incident.site == site)
    if within is not None:
        q = q.where(within)
    out: Counter[IncidentFacts] = Counter()
    for rows in session.execute(q.order_by(Incident.id).execution_options(yield_per=chunk)).partitions():
        groups: dict[str, set[str]] = {}
        for incident_id, group in session.execute(
            select(IncidentStaff.incident_id, StaffMember.staff_group)
            .join(StaffMember, StaffMember.id == IncidentStaff.staff_id)
            .where(IncidentStaff.incident_id.in_([r[0] for r in rows]))
        ):
            groups.setdefault(incident_id, set()).add(group or "other")
        for incident_id, occurred, site_name, category in rows:
            out[
                IncidentFacts(
                    month=occurred.astimezone(zone).strftime("%Y-%m"),
                    site=site_name,
                    category=category,
                    staff_groups=tuple(sorted(groups.get(incident_id, {"unrecorded"}))),
                )
            ] += 1
    return out


Facts = Iterable[IncidentFacts] | Mapping[IncidentFacts, int]


def count(facts: Facts, by: Sequence[str]) -> tuple[Counter[tuple[str, ...]], int]:
    """Raw counts per combination of the chosen dimensions, and the number of incidents (``facts``
    one per incident, or how many incidents have each, as :func:`load_fact_counts` gives them)."""
    for d in by:
        if d not in DIMENSIONS:
            raise ValueError(f"unknown dimension {d!r}; one of {', '.join(DIMENSIONS)}")
    cells: Counter[tuple[str, ...]] = Counter()
    total = 0
    weighted = facts.items() if isinstance(facts, Mapping) else ((f, 1) for f in facts)
    for f, n in weighted:
        total += n
        keys: list[tuple[str, ...]] = [()]
        for d in by:
            values: tuple[str, ...] = f.staff_groups if d == "staff_group" else (getattr(f, d),)
            keys = [k + (v,) for k in keys for v in values]
        for k in keys:
            cells[k] += n
    return cells, total


class PeriodRefused(Refused):
    """A statistics period that could single people out."""

    status = 422
    structured = True


def check_period(since: datetime | None, until: datetime | None, tz: str) -> None:
    """Periods start and end at midnight on the first of a month (in ``tz``), a month or more apart."""
    zone = ZoneInfo(tz)
    for name, at in (("since", since), ("until", until)):
        if at is None:
            continue
        local = at.astimezone(zone)
        if (local.day, local.hour, local.minute, local.second, local.microsecond) != (1, 0, 0, 0, 0):
            raise PeriodRefused(
                "period_not_whole_months",
                f"{name} must be the start of a calendar month ({tz}): statistics cover whole months",
            )
    if since is not None and until is not None and until <= since:
        raise PeriodRefused("period_too_short", "until must be at least a month after since")


MAX_MONTHS = 60  # the longest period one table covers: five years of whole months


def _month_start(at: datetime, zone: ZoneInfo, months_later: int = 0) -> datetime:
    local = at.astimezone(zone)
    index = local.year * 12 + local.month - 1 + months_later
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=zone)


def bounded_period(
    since: datetime | None, until: datetime | None, tz: str, now: datetime, max_months: int = MAX_MONTHS
) -> tuple[datetime, datetime]:
    """The period a table covers, at most ``max_months`` whole months (checked by ``check_period``
    first): ``until`` by default the end of this month, ``since`` by default ``max_months`` before
    ``until``. A longer period is refused (422): the work and the answer grow with it."""
    zone = ZoneInfo(tz)
    end = until if until is not None else _month_start(now, zone, 1)
    start = since if since is not None else _month_start(end, zone, -max_months)
    if _month_start(start, zone, max_months) < end:
        raise PeriodRefused(
            "period_too_long",
            f"a table covers at most {max_months} months: ask for a longer span in parts",
        )
    return start, end


def _without(i: int) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """A cell's line along dimension ``i``: its key without that dimension."""
    return lambda k: k[:i] + k[i + 1 :]


def _secondary(
    cells: Counter[tuple[str, ...]],
    margins: Sequence[Counter[tuple[str, ...]]],
    total: int,
    min_count: int,
) -> set[tuple[str, ...]]:
    """The cells that may be published: those of ``min_count`` or more, less any that would, with a
    margin, reveal a small remainder in its line. ``margins[i]`` counts incidents by every dimension
    but the i-th (the table another query publishes); the whole table is a line under the total."""
    listed = {k for k, n in cells.items() if n >= min_count}
    lines = [(margins[i], _without(i)) for i in range(len(margins))]
    lines.append((Counter({(): total}), lambda k: ()))
    changed = True
    while changed:
        changed = False
        for margin, line_of in lines:
            groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
            for k in cells:
                groups.setdefault(line_of(k), []).append(k)
            for line, keys in groups.items():
                shown = [k for k in keys if k in listed]
                if not shown:
                    continue
                # What the line's margin leaves for its unlisted cells, as a reader could work it out.
                rest = margin[line] - sum(cells[k] for k in shown)
                if 0 < rest < min_count:
                    listed.discard(min(shown, key=lambda k: (cells[k], k)))
                    changed = True
    return listed


def publish(
    cells: Counter[tuple[str, ...]],
    total: int,
    by: Sequence[str],
    disclosure: Disclosure,
    margins: Sequence[Counter[tuple[str, ...]]] | None = None,
) -> dict[str, object]:
    """The publishable table: the cells that may be published, rounded, and the total.

    ``margins`` (``margins_of``) are the tables with one dimension fewer; without them each line is
    checked against the sum of its own cells only."""
    if margins is None:
        margins = [Counter() for _ in by]
        for k, n in cells.items():
            for i, m in enumerate(margins):
                m[k[:i] + k[i + 1 :]] += n
    listed = _secondary(cells, margins, total, disclosure.min_count)
    rows = []
    for key in sorted(listed):
        value = disclosure.publish(cells[key])
        rows.append({**dict(zip(by, key, strict=True)), "count": value, "suppressed": False})
    return {
        "dimensions": list(by),
        "rows": rows,
        "total": disclosure.publish(total),
        "total_suppressed": disclosure.publish(total) is None,
        "disclosure": {
            "suppressed_below": disclosure.min_count,
            "rounded_to": disclosure.rounding,
            "note": (
                f"only counts of {disclosure.min_count} or more are listed, rounded to the nearest "
                f"{disclosure.rounding}; a combination not listed had fewer (or none), or is withheld "
                "because the totals would reveal a smaller one"
            ),
        },
    }


def margins_of(facts: Facts, by: Sequence[str]) -> list[Counter[tuple[str, ...]]]:
    """For each dimension, the incident counts by all the others (what a query without it publishes)."""
    return [count(facts, [d for j, d in enumerate(by) if j != i])[0] for i in range(len(by))]


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(table: dict[str, object]) -> str:
    """The published table as CSV: one row per cell, then a ``total`` row."""
    by: list[str] = table["dimensions"]  # type: ignore[assignment]
    below = table["disclosure"]["suppressed_below"]  # type: ignore[index]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*by, "count"])
    for row in table["rows"]:  # type: ignore[attr-defined]
        label = f"<{below}" if row["suppressed"] else str(row["count"])
        writer.writerow([*(_cell(row[d]) for d in by), label])
    total = table["total"]
    label = f"<{below}" if total is None else str(total)
    writer.writerow((["total"] + [""] * (len(by) - 1) + [label]) if by else [label])
    return out.getvalue()
