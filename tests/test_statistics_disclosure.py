"""Statistics disclose nothing about a person, on both databases.

The attack reported: with windows of one minute and site x category x staff group combined, a
security manager of another site learned of a Ward 7 assault on a nurse and a porter between 23:04
and 23:06 (a suppressed row still named its combination, and narrow windows singled it out)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from incidents.statistics import Disclosure, IncidentFacts, count, margins_of, publish
from tests.test_incidents_kit import bearer, staff, user

ASSAULT = datetime(2026, 3, 4, 23, 5, tzinfo=UTC)
BY = ["site", "category", "staff_group"]


def _incident(live: Any, **fields: object) -> None:
    r = httpx.post(f"{live.url}/api/v1/incidents", headers=live.admin(), json=fields)
    assert r.status_code == 201, r.text


def test_the_one_minute_attack_learns_nothing(live: Any) -> None:
    s = live.services
    staff(s, "N-1", "nurse", "NORTH")
    staff(s, "P-1", "porter", "NORTH")
    staff(s, "S-1", "nurse", "SOUTH")
    for i in range(12):  # a month's ordinary business at NORTH
        _incident(
            live,
            category="verbal_abuse",
            occurred_at=(datetime(2026, 3, 2, tzinfo=UTC) + timedelta(days=i)).isoformat(),
            site="NORTH",
            staff=[{"staff_id": "N-1"}],
        )
    _incident(
        live,
        category="physical_assault",
        occurred_at=ASSAULT.isoformat(),
        site="NORTH",
        ward="Ward 7",
        staff=[{"staff_id": "N-1"}, {"staff_id": "P-1"}],
    )
    user(s, "south_mgr", "security_manager", "SOUTH")
    user(s, "aud", "auditor")
    api = f"{live.url}/api/v1/statistics"
    minute = {
        "by": BY,
        "since": (ASSAULT - timedelta(minutes=1)).isoformat(),
        "until": (ASSAULT + timedelta(minutes=1)).isoformat(),
    }
    south = bearer(s, "south_mgr")
    # Another site's manager may not ask about NORTH at all, and nobody may ask about a minute.
    r = httpx.get(api, headers=south, params={**minute, "site": "NORTH"})
    assert r.status_code == 403, r.text
    for who in (south, bearer(s, "aud")):
        r = httpx.get(api, headers=who, params=minute)
        assert r.status_code == 422 and r.json()["reason"] == "period_not_whole_months", r.text
    # Over the month the assault is not visible to anyone: no row names it, and no margin betrays it.
    month = {"by": BY, "since": "2026-03-01T00:00:00+00:00", "until": "2026-04-01T00:00:00+01:00"}
    table = httpx.get(api, headers=bearer(s, "aud"), params=month).json()
    assert all(row["category"] != "physical_assault" for row in table["rows"]), table
    assert all(row["staff_group"] != "porter" for row in table["rows"]), table
    # The nurse line: 13 incidents with a nurse, 12 of them verbal abuse; publishing the abuse cell
    # beside that margin (by site x staff group) would leave one assault to be worked out.
    margin = httpx.get(api, headers=bearer(s, "aud"), params={**month, "by": ["site", "staff_group"]}).json()
    nurse_margin = [r for r in margin["rows"] if r["staff_group"] == "nurse"]
    abuse = [r for r in table["rows"] if r["staff_group"] == "nurse"]
    assert not (nurse_margin and abuse), (margin, table)
    # The manager of SOUTH asking without a site gets SOUTH only: nothing (NORTH is not theirs).
    own = httpx.get(api, headers=south, params={"by": ["site"], **{k: month[k] for k in ("since", "until")}})
    assert own.status_code == 200 and own.json()["rows"] == [] and own.json()["total"] == 0


def test_small_cells_are_not_listed_at_all() -> None:
    facts = [IncidentFacts("2026-03", "NORTH", "verbal_abuse", ("nurse",))] * 10 + [
        IncidentFacts("2026-03", "NORTH", "physical_assault", ("nurse", "porter"))
    ]
    cells, total = count(facts, BY)
    table = publish(cells, total, BY, Disclosure(), margins_of(facts, BY))
    assert "physical_assault" not in str(table["rows"]) and "porter" not in str(table["rows"])


def _listed(table: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["site"], r["category"]) for r in table["rows"]}


def test_a_cell_is_withdrawn_when_a_margin_would_reveal_a_small_one() -> None:
    """Secondary suppression: theft 3 is not listed, but abuse 20 beside NORTH's margin of 23 (a query by site)
    would give it away; so abuse is withdrawn too, while a line whose remainder is 0 or 5+ stays."""
    cells = Counter({("NORTH", "verbal_abuse"): 20, ("NORTH", "theft"): 3, ("SOUTH", "verbal_abuse"): 30})
    by = ["site", "category"]
    facts = [IncidentFacts("2026-03", site, cat, ()) for (site, cat), n in cells.items() for _ in range(n)]
    table = publish(cells, 53, by, Disclosure(), margins_of(facts, by))
    listed = _listed(table)
    assert ("NORTH", "theft") not in listed and ("NORTH", "verbal_abuse") not in listed
    assert ("SOUTH", "verbal_abuse") in listed
    # And without margins given, the line's own sum counts as its margin.
    assert _listed(publish(cells, 53, by, Disclosure())) == listed
