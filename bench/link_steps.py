"""What checking an incident's links against custody costs, on a case with many link steps: an
incident with hundreds of linked clips and a hundred linked alarms, each linked and unlinked again
several times (to it and to other incidents), in a ledger holding other incidents' alarm link steps
too. Timed in this process on a scratch SQLite file and a scratch PostgreSQL database, filled once:

- the incident's links as custody holds them (``incidents.access.link_holds``, what its view and
  export list), beside the same list without the rule (the baseline, same run);
- its alarm links alone as custody holds them, beside its alarm links without the rule;
- building the statements (no database): the links' statement with the rule, and an investigator's
  evidence scope (``evidence_scope``, what ``GET /evidence`` asks), beside the plain statement.

The same databases are read by the code of whichever checkout runs this (``PYTHONPATH``), so a
baseline checkout and a change are timed on the same rows. Fill once, time each checkout in turn,
drop::

    python -m bench.link_steps fill > fill.json
    flock -x /tmp/bench.lock env PYTHONPATH=<checkout> python bench/link_steps.py time --fill fill.json --out f.json
    python -m bench.link_steps drop --fill fill.json
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Investigator:
    """An investigator of nothing, as the access rules read a viewer (building statements only)."""

    def __init__(self) -> None:
        from chain_of_custody.reach_seals import SiteReach

        self.user_id, self.role, self.site, self.actor = 1, "investigator", None, "user:bench_inv"
        self.assignments: frozenset[int] = frozenset({1, 2, 3})
        self.reach = SiteReach()


def fill(url: str, work: Path, items: int, alarms: int, cycles: int, other_alarms: int) -> str:
    """The case: one incident with ``items`` clips and ``alarms`` alarms linked, each linked to it and
    unlinked again ``cycles`` times first (clips also to and from ten other incidents), and
    ``other_alarms`` alarms linked to and unlinked from the other incidents. Its id."""
    from bench.link_reads import bench_clip
    from chain_of_custody.keys import ServiceKey
    from chain_of_custody.ledger import Ledger
    from incidents.service import (
        IncidentDraft,
        create_incident,
        link_alarm,
        link_evidence,
        unlink_evidence,
        unlink_target,
    )
    from ingest.migrations_runner import upgrade_database
    from storage.db import Database

    upgrade_database(url)
    db, ledger = Database(url), Ledger(ServiceKey.load_or_create(work / "service.key"))
    now = datetime.now(UTC)

    def incident(title: str) -> str:
        draft = IncidentDraft(category="theft", occurred_at=now, site="SOUTH", title=title)
        return create_incident(session, draft, "user:bench", ledger=ledger).id

    with db.session() as session:
        case = incident("bench case")
        others = [incident(f"bench other {n}") for n in range(10)]
    for start in range(0, items, 50):
        with db.session() as session:
            for n in range(start, min(items, start + 50)):
                item = bench_clip(session, ledger, n, now, "bench/steps", 30)
                for c in range(cycles):
                    other = others[(n + c) % len(others)]
                    for target in (case, other):
                        link_evidence(session, ledger, target, item.id, "user:bench", "bench")
                        unlink_evidence(session, ledger, target, item.id, "user:bench", "bench, undone")
                link_evidence(session, ledger, case, item.id, "user:bench", "bench")
    with db.session() as session:
        for n in range(alarms):
            for _ in range(cycles):
                link_alarm(session, ledger, case, f"AL-{n:05d}", "user:bench", "bench")
                unlink_target(session, ledger, case, "alarm", f"AL-{n:05d}", "user:bench", "bench, undone")
            link_alarm(session, ledger, case, f"AL-{n:05d}", "user:bench", "bench")
        for n in range(other_alarms):
            other, alarm = others[n % len(others)], f"AL-OTHER-{n:05d}"
            link_alarm(session, ledger, other, alarm, "user:bench", "bench")
            unlink_target(session, ledger, other, "alarm", alarm, "user:bench", "bench, undone")
    db.dispose()
    return case


def _timed(fn: Any, repeat: int) -> dict[str, float]:
    """``link_reads``' timing of ``fn``, once first to warm (its statement's compiled form is cached)."""
    from bench.link_reads import _timed as timed_each

    fn()
    return timed_each(lambda _: fn(), [None], repeat)


def measure(url: str, case: str, repeat: int) -> dict[str, Any]:
    from sqlalchemy import select

    from incidents.access import alarm_link_on_custody, link_holds
    from incidents.models import IncidentLink
    from storage.db import Database

    db = Database(url)
    links = select(IncidentLink).where(IncidentLink.incident_id == case, IncidentLink.unlinked_at.is_(None))
    alarm_links = links.where(IncidentLink.target_kind == "alarm")
    with db.reading() as session:
        held = len(list(session.scalars(links.where(link_holds()))))
        if held != len(list(session.scalars(links))):
            raise RuntimeError("a link of the case does not hold on custody")
        cases = {
            "links, plain (baseline)": _timed(
                lambda: list(session.scalars(links.order_by(IncidentLink.id))), repeat
            ),
            "links as custody holds them": _timed(
                lambda: list(session.scalars(links.where(link_holds()).order_by(IncidentLink.id))), repeat
            ),
            "alarm links, plain (baseline)": _timed(
                lambda: list(session.scalars(alarm_links.order_by(IncidentLink.id))), repeat
            ),
            "alarm links as custody holds them": _timed(
                lambda: list(
                    session.scalars(alarm_links.where(alarm_link_on_custody()).order_by(IncidentLink.id))
                ),
                repeat,
            ),
        }
    db.dispose()
    cases["links"] = {"rows": held}
    return cases


def construction(repeat: int) -> dict[str, Any]:
    """Building the statements, no database."""
    from sqlalchemy import select

    from chain_of_custody.models import EvidenceItem
    from incidents.access import evidence_scope, link_holds
    from incidents.models import IncidentLink

    viewer = Investigator()
    return {
        "plain statement (baseline)": _timed(
            lambda: select(IncidentLink).where(IncidentLink.incident_id == "x"), repeat
        ),
        "links statement with the rule": _timed(
            lambda: select(IncidentLink).where(IncidentLink.incident_id == "x", link_holds()), repeat
        ),
        "investigator's evidence scope": _timed(
            lambda: select(EvidenceItem).where(evidence_scope(viewer)), repeat
        ),
    }


def _ratio(cases: dict[str, Any], of: str, to: str) -> float:
    return round(cases[of]["p50_ms"] / cases[to]["p50_ms"], 2)


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--alarms", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=4, help="link and unlink rounds before the link kept")
    ap.add_argument("--other-alarms", type=int, default=400)
    ap.add_argument("-n", type=int, default=40, help="reads of each kind")


def _fill(args: argparse.Namespace, work: Path, urls: dict[str, str]) -> dict[str, Any]:
    filled = {
        db: {"url": url, "case": fill(url, work, args.items, args.alarms, args.cycles, args.other_alarms)}
        for db, url in urls.items()
    }
    sizes = {
        "items": args.items,
        "alarms": args.alarms,
        "cycles": args.cycles,
        "other_alarms": args.other_alarms,
    }
    return {"sizes": sizes, **filled}


def _time(args: argparse.Namespace, filled: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    results: dict[str, Any] = {
        db: measure(filled[db]["url"], filled[db]["case"], args.n) for db in ("sqlite", "postgres")
    }
    results["construction"] = construction(args.n * 5)
    ratios = {
        f"{db}: {what} / baseline": _ratio(
            results[db], f"{what} as custody holds them", f"{what}, plain (baseline)"
        )
        for db in ("sqlite", "postgres")
        for what in ("links", "alarm links")
    }
    for what in ("links statement with the rule", "investigator's evidence scope"):
        ratios[f"construction: {what} / baseline"] = _ratio(
            results["construction"], what, "plain statement (baseline)"
        )
    lines = [
        f"| {args.label} | {group} | {name} | {figures['n']} | {figures['p50_ms']} | {figures['mean_ms']} |"
        for group in ("sqlite", "postgres", "construction")
        for name, figures in results[group].items()
        if "p50_ms" in figures
    ]
    lines += [f"{args.label} {name}: {ratio}" for name, ratio in ratios.items()]
    return {"sizes": filled["sizes"], "results": results, "ratios_p50": ratios}, lines


def main() -> None:
    from bench.common import paired_runs

    paired_runs(__doc__.splitlines()[0], "link-steps", _options, _fill, _time, code="incidents.access")


if __name__ == "__main__":
    main()
