"""Disclosure control of incident statistics and the retention decision, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from incidents.retention import RetentionFacts, RetentionRules, decide
from incidents.statistics import Disclosure, IncidentFacts, count, publish, to_csv


def test_small_counts_are_suppressed_and_the_rest_rounded() -> None:
    d = Disclosure(min_count=5, rounding=5)
    assert [d.publish(n) for n in range(0, 14)] == [0] + [None] * 4 + [5, 5, 5, 10, 10, 10, 10, 10, 15]
    assert d.label(3) == "<5" and d.label(8) == "10"


def test_a_suppressed_cell_cannot_be_recovered_from_the_total() -> None:
    facts = [IncidentFacts("2026-11", "NORTH", "theft", ("nurse",))] * 21 + [
        IncidentFacts("2026-11", "SOUTH", "theft", ("porter",))
    ] * 3
    cells, total = count(facts, ["site"])
    table = publish(cells, total, ["site"], Disclosure())
    # SOUTH's 3 is not listed; NORTH's 21 beside the total of 24 would give it away (24 - 21 = 3),
    # so NORTH is withdrawn too (secondary suppression) and only the rounded total remains.
    assert table["rows"] == [] and table["total"] == 25


def test_staff_groups_count_each_group_once_per_incident() -> None:
    facts = [IncidentFacts("2026-11", "NORTH", "physical_assault", ("nurse", "porter"))] * 6
    cells, total = count(facts, ["staff_group"])
    assert dict(cells) == {("nurse",): 6, ("porter",): 6} and total == 6
    with pytest.raises(ValueError):
        count(facts, ["name"])


def test_csv_cells_cannot_become_formulas() -> None:
    facts = [IncidentFacts("2026-11", "=HYPERLINK(1)", "theft", ())] * 5
    cells, total = count(facts, ["site"])
    text = to_csv(publish(cells, total, ["site"], Disclosure()))
    assert "'=HYPERLINK(1)" in text and "\n=HYPERLINK" not in text


RULES = RetentionRules(unlinked=timedelta(days=31), after_closure=timedelta(days=90))
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_retention_classes() -> None:
    day = timedelta(days=1)
    plain = RetentionFacts(captured=T0, received=T0, locked_until=T0 + day)
    assert not decide(plain, RULES, T0 + 30 * day).expired
    d = decide(plain, RULES, T0 + 31 * day)
    assert d.klass == "unlinked" and d.expired and d.extend_lock_to is None
    # A lock longer than the class (say, after an unlink) still wins.
    assert not decide(
        RetentionFacts(captured=T0, received=T0, locked_until=T0 + 40 * day), RULES, T0 + 31 * day
    ).expired
    opened = RetentionFacts(
        captured=T0, received=T0, locked_until=T0 + day, open_incidents=("INC-2026-000001",)
    )
    d = decide(opened, RULES, T0 + 365 * day)
    assert d.klass == "open_incident" and not d.expired and d.extend_lock_to == T0 + 455 * day
    renewed = RetentionFacts(
        captured=T0, received=T0, locked_until=T0 + 80 * day, open_incidents=("INC-2026-000001",)
    )
    assert decide(renewed, RULES, T0 + 10 * day).extend_lock_to is None  # more than half the period ahead
    closed = RetentionFacts(
        captured=T0, received=T0, locked_until=T0 + day, closed_incidents=(("INC-2026-000001", T0 + 5 * day),)
    )
    d = decide(closed, RULES, T0 + 94 * day)
    assert d.klass == "closed_incident" and not d.expired and d.extend_lock_to == T0 + 95 * day
    assert decide(closed, RULES, T0 + 95 * day).expired
    held = RetentionFacts(captured=T0, received=T0, locked_until=T0 + day, holds=(1,))
    d = decide(held, RULES, T0 + 10000 * day)
    assert d.klass == "legal_hold" and d.hold and not d.expired
