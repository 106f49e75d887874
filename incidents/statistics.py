"""Anonymised incident counts for trust board reports, by month, site, category and staff group.

Disclosure control (the choice made here): a count from 1 to ``min_count - 1`` (default 1-4) is
suppressed and shown as ``"<5"``; every other non-zero count, totals included, is rounded to the
nearest multiple of ``rounding`` (default 5, halves round up). Rounding the published figures as well as
suppressing the small ones stops a suppressed cell being recovered by subtracting the others from a
total, or one breakdown from another. Zero cells are not listed. Nothing but counts leaves this
module: no names, staff numbers, references or free text.

Counting by staff group counts an incident once for every distinct group of the staff involved (an
incident with a nurse and a porter counts once for each); incidents with nobody recorded count
under ``unrecorded``.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from devices.models import StaffMember

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


def load_facts(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    site: str | None = None,
    tz: str = "Europe/London",
) -> list[IncidentFacts]:
    zone = ZoneInfo(tz)
    q = select(Incident.id, Incident.occurred_at, Incident.site, Incident.category)
    if since:
        q = q.where(Incident.occurred_at >= since)
    if until:
        q = q.where(Incident.occurred_at < until)
    if site:
        q = q.where(Incident.site == site)
    rows = session.execute(q).all()
    groups: dict[str, set[str]] = {}
    ids = [r[0] for r in rows]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for incident_id, group in session.execute(
            select(IncidentStaff.incident_id, StaffMember.staff_group)
            .join(StaffMember, StaffMember.id == IncidentStaff.staff_id)
            .where(IncidentStaff.incident_id.in_(chunk))
        ):
            groups.setdefault(incident_id, set()).add(group or "other")
    return [
        IncidentFacts(
            month=occurred.astimezone(zone).strftime("%Y-%m"),
            site=site_name,
            category=category,
            staff_groups=tuple(sorted(groups.get(incident_id, {"unrecorded"}))),
        )
        for incident_id, occurred, site_name, category in rows
    ]


def count(facts: Iterable[IncidentFacts], by: Sequence[str]) -> tuple[Counter[tuple[str, ...]], int]:
    """Raw counts per combination of the chosen dimensions, and the number of incidents."""
    for d in by:
        if d not in DIMENSIONS:
            raise ValueError(f"unknown dimension {d!r}; one of {', '.join(DIMENSIONS)}")
    cells: Counter[tuple[str, ...]] = Counter()
    total = 0
    for f in facts:
        total += 1
        keys: list[tuple[str, ...]] = [()]
        for d in by:
            values: tuple[str, ...] = f.staff_groups if d == "staff_group" else (getattr(f, d),)
            keys = [k + (v,) for k in keys for v in values]
        for k in keys:
            cells[k] += 1
    return cells, total


def publish(
    cells: Counter[tuple[str, ...]], total: int, by: Sequence[str], disclosure: Disclosure
) -> dict[str, object]:
    """The publishable table: every non-zero cell with its count or its suppression, and the total."""
    rows = []
    for key in sorted(cells):
        n = cells[key]
        value = disclosure.publish(n)
        rows.append({**dict(zip(by, key, strict=True)), "count": value, "suppressed": value is None})
    return {
        "dimensions": list(by),
        "rows": rows,
        "total": disclosure.publish(total),
        "total_suppressed": disclosure.publish(total) is None,
        "disclosure": {
            "suppressed_below": disclosure.min_count,
            "rounded_to": disclosure.rounding,
            "note": (
                f"counts below {disclosure.min_count} are shown as <{disclosure.min_count}; "
                f"all other counts are rounded to the nearest {disclosure.rounding}"
            ),
        },
    }


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
