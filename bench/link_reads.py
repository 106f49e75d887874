"""What reading incident links as custody holds them costs, on a ledger with many links: the search
by evidence item, a clip's incident references, an item's retention facts, the items an incident's
hold covers, and the markers that withhold other incidents' entries (reader and package), each
timed in this process against a scratch PostgreSQL database filled once.

The same database is read by the code of whichever checkout runs this (``PYTHONPATH``), so a
baseline and a change are timed on the same rows. Fill once, time each checkout in turn, drop::

    python -m bench.link_reads fill > url.txt
    flock -x /tmp/bench.lock env PYTHONPATH=<checkout> python bench/link_reads.py time --url ... --out f.json
    python -m bench.link_reads drop --url ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SITES = ("NORTH", "SOUTH")


class Reader:
    """An administrator or an investigator of nothing, as the access rules read a viewer."""

    def __init__(self, role: str) -> None:
        from chain_of_custody.reach_seals import SiteReach

        self.user_id, self.role, self.site, self.actor = 1, role, None, f"user:bench_{role}"
        self.assignments: frozenset[int] = frozenset()
        self.reach = SiteReach()


def bench_clip(session: Any, ledger: Any, n: int, now: datetime, prefix: str, wearers: int) -> Any:
    """Clip ``n`` of a fill (its object named under ``prefix``, worn by one of ``wearers``), recorded
    as the service records one, without its bytes in storage."""
    from chain_of_custody.evidence import Provenance, record_evidence
    from storage.objects import StoredObject

    sha = hashlib.sha256(n.to_bytes(4, "big")).hexdigest()
    return record_evidence(
        session,
        ledger,
        StoredObject("evidence", f"{prefix}/{n:06d}", "v1", 1024, sha),
        Provenance(
            kind="clip",
            actor="bench",
            wearer=f"W-{n % wearers:03d}",
            captured_start=now - timedelta(seconds=n),
            captured_stop=now - timedelta(seconds=n - 30),
            content_type="video/mp4",
        ),
        block_list=False,
    )


def fill(url: str, incidents: int, items: int, work: Path) -> None:
    """``incidents`` incidents and ``items`` clips, each clip linked to one incident, every fifth
    also linked to a second and unlinked from it again (the ledger's link steps and rows both)."""
    from chain_of_custody.keys import ServiceKey
    from chain_of_custody.ledger import Ledger
    from incidents.service import IncidentDraft, create_incident, link_evidence, unlink_evidence
    from ingest.migrations_runner import upgrade_database
    from storage.db import Database

    upgrade_database(url)
    db, ledger = Database(url), Ledger(ServiceKey.load_or_create(work / "service.key"))
    now = datetime.now(UTC)
    with db.session() as session:
        ids = [
            create_incident(
                session,
                IncidentDraft(category="theft", occurred_at=now, site=SITES[n % 2], title=f"bench {n}"),
                "user:bench",
                ledger=ledger,
            ).id
            for n in range(incidents)
        ]
    for start in range(0, items, 500):
        with db.session() as session:
            for n in range(start, min(items, start + 500)):
                item = bench_clip(session, ledger, n, now, "bench", 300)
                link_evidence(session, ledger, ids[n % incidents], item.id, "user:bench", "bench")
                if n % 5 == 0:
                    other = ids[(n + 1) % incidents]
                    link_evidence(session, ledger, other, item.id, "user:bench", "bench")
                    unlink_evidence(session, ledger, other, item.id, "user:bench", "bench, undone")
    db.dispose()


def _timed(fn: Any, args: list[Any], repeat: int) -> dict[str, float]:
    seconds = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(args[i % len(args)])
        seconds.append(time.perf_counter() - t)
    return {
        "n": repeat,
        "p50_ms": round(median(seconds) * 1000, 3),
        "mean_ms": round(sum(seconds) / repeat * 1000, 3),
    }


def measure(url: str, repeat: int, work: Path) -> dict[str, Any]:
    from sqlalchemy import select

    from chain_of_custody.keys import ServiceKey
    from chain_of_custody.models import EvidenceItem
    from incidents import retention
    from incidents.access import hidden_incident_markers
    from incidents.export.plan import foreign_markers
    from incidents.footage import incident_refs
    from incidents.models import Incident
    from incidents.queries import IncidentFilter, search_incidents
    from storage.db import Database

    db, key = Database(url), ServiceKey.load_or_create(work / "service.key")
    admin, investigator = Reader("admin"), Reader("investigator")
    rules = retention.RetentionRules(unlinked=timedelta(days=31), after_closure=timedelta(days=90))
    now = datetime.now(UTC)
    rng = random.Random(7)
    with db.session() as session:
        items = rng.sample(list(session.scalars(select(EvidenceItem))), 50)
        incidents = rng.sample(list(session.scalars(select(Incident.id))), 20)
        cases = {
            "search by evidence item": _timed(
                lambda i: search_incidents(session, admin, IncidentFilter(evidence_id=i.id), key),
                items,
                repeat,
            ),
            "clip's incident references": _timed(lambda i: incident_refs(session, admin, i), items, repeat),
            "retention facts (describe)": _timed(
                lambda i: retention.describe(session, i, rules, now), items, repeat
            ),
            "incident hold's items": _timed(
                lambda inc: retention._hold_items(session, "incident", inc), incidents, max(repeat // 4, 3)
            ),
            "reader's hidden markers": _timed(
                lambda i: hidden_incident_markers(session, investigator, [i.id]), items, repeat
            ),
            "package's foreign markers": _timed(
                lambda i: foreign_markers(session, [i.id], None), items, repeat
            ),
        }
    db.dispose()
    return cases


def main() -> None:
    from bench.alarms import PG_ADMIN_URL
    from bench.common import ScratchPostgres, load_average, machine, scratch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("fill", "time", "drop"))
    ap.add_argument("--url", help="the scratch database (time, drop)")
    ap.add_argument("--work", help="where the fill kept its service key (time)")
    ap.add_argument("--incidents", type=int, default=400)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("-n", type=int, default=200, help="reads of each kind")
    ap.add_argument("--out", help="result JSON (time)")
    ap.add_argument("--label", default="", help="which checkout was timed")
    args = ap.parse_args()
    if args.step == "fill":
        pg, work = ScratchPostgres(PG_ADMIN_URL, "evidence_bench_links"), scratch("bench-links-")
        url = pg.create()
        t = time.perf_counter()
        fill(url, args.incidents, args.items, work)
        print(json.dumps({"url": url, "work": str(work), "fill_s": round(time.perf_counter() - t, 1)}))
        return
    if args.step == "drop":
        pg = ScratchPostgres(PG_ADMIN_URL)
        pg.name, pg.url = args.url.rsplit("/", 1)[1], args.url
        pg.drop()
        return
    load_before = load_average()
    cases = measure(args.url, args.n, Path(args.work))
    load_after = load_average()
    for name, figures in cases.items():
        print(f"| {args.label} | {name} | {figures['n']} | {figures['p50_ms']} | {figures['mean_ms']} |")
    print(f"load before {load_before}, after {load_after}")
    if args.out:
        data = {"label": args.label, "cases": cases, "load": [load_before, load_after], "machine": machine()}
        Path(args.out).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
