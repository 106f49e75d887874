"""What a security manager's reach costs: a list of 500 as the manager of a site with 500 rows of it
(among as many of another site's), through the real service (its own process, SeaweedFS, a scratch
PostgreSQL database or SQLite). Two lists, one harness:

- ``--of evidence`` (the default): ``GET /api/v1/evidence?limit=500``, the site's staff wearing 500
  clips. A manager's list is scoped by the staff and devices of their site and by links on custody
  (``incidents.access``); their sign-in reads what their reach rests on, and the rows a list returns
  have their seals checked (``chain_of_custody.reach_seals``).
- ``--of incidents``: ``GET /api/v1/incidents?limit=500``, 500 incidents at the site. A manager reads
  the incidents of their site whose seal holds (``chain_of_custody.incident_seals``: one HMAC a
  row), read the first time a request asks (``chain_of_custody.site_incidents``), and the list's
  scope names those ids (``bench/incident_list.py`` runs this).

Every request signs its caller in afresh. Baselines, same run: the same page as an administrator
(no scope, no seal checks), and ``GET /api/v1/me`` for each (what signing in costs the one and the
other). Prints a table with both ratios and writes bench/results/reach_list[-sqlite][-label].json
(evidence) or incident_list[-sqlite][-label].json (incidents).
Run it alone: ``flock -x /tmp/bench.lock .venv/bin/python -m bench.reach_list [--of incidents] [--sqlite]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alarms import PG_ADMIN_URL  # noqa: E402
from bench.common import (  # noqa: E402
    BenchService,
    ScratchPostgres,
    latency_summary,
    load_average,
    scratch,
    write_results,
)
from bench.sign_in import timed  # noqa: E402
from chain_of_custody.evidence import Provenance, record_evidence  # noqa: E402
from devices.service import add_staff  # noqa: E402
from incidents.service import IncidentDraft, create_incident  # noqa: E402

MANAGER, PASSWORD = "bench_south_manager", "bench manager password"
# What each list is of: its route, what a row is called, the results file's name.
LISTS = {
    "evidence": ("/api/v1/evidence", "items", "reach_list"),
    "incidents": ("/api/v1/incidents", "incidents", "incident_list"),
}


def populate_items(services: object, items: int, staff: int) -> None:
    """``staff`` members of staff at SOUTH and at NORTH, and ``items`` clips worn at each site."""
    now = datetime.now(UTC)
    with services.db.session() as session:  # type: ignore[attr-defined]
        for site in ("SOUTH", "NORTH"):
            for n in range(staff):
                add_staff(
                    session, services.ledger, f"{site[0]}-{n:04d}", "Bench", "porter", site, actor="bench"
                )  # type: ignore[attr-defined]
    for n in range(2 * items):
        site = "SOUTH" if n % 2 else "NORTH"
        stored = services.store.put_bytes(  # type: ignore[attr-defined]
            f"bench/reach/{n:05d}",
            n.to_bytes(4, "big") * 64,
            retain_until=now + timedelta(days=1),
            content_type="video/mp4",
        )
        start = now - timedelta(hours=6) + timedelta(seconds=30 * n)
        with services.db.session() as session:  # type: ignore[attr-defined]
            record_evidence(
                session,
                services.ledger,  # type: ignore[attr-defined]
                stored,
                Provenance(
                    kind="clip",
                    actor="bench",
                    wearer=f"{site[0]}-{n % staff:04d}",
                    captured_start=start,
                    captured_stop=start + timedelta(seconds=25),
                    content_type="video/mp4",
                    retain_until=now + timedelta(days=1),
                ),
                received={"by": "bench"},
                verified={"ok": True},
            )


def populate_incidents(services: object, incidents: int) -> None:
    """``incidents`` incidents at SOUTH and as many at NORTH, opened as the service opens them."""
    now = datetime.now(UTC)
    with services.db.session() as session:  # type: ignore[attr-defined]
        for n in range(2 * incidents):
            site = "SOUTH" if n % 2 else "NORTH"
            draft = IncidentDraft(
                category="verbal_abuse",
                occurred_at=now - timedelta(minutes=n),
                site=site,
                title=f"Bench incident {n}",
            )
            create_incident(session, draft, "user:bench", ledger=services.ledger)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None, default_of: str = "evidence") -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--of", choices=sorted(LISTS), default=default_of, help="which list")
    ap.add_argument("--sqlite", action="store_true", help="SQLite instead of a scratch PostgreSQL")
    ap.add_argument("--items", type=int, default=500, help="clips (or incidents) at each of the two sites")
    ap.add_argument("--incidents", type=int, dest="items", help="the same as --items")
    ap.add_argument("--staff", type=int, default=200, help="members of staff at each site (evidence)")
    ap.add_argument("-n", type=int, default=60, help="requests of each kind")
    ap.add_argument("--label", default="", help="added to the results file's name (e.g. main, branch)")
    args = ap.parse_args(argv)
    route, rows, results = LISTS[args.of]
    work = scratch(f"bench-{args.of}-")
    pg = None if args.sqlite else ScratchPostgres(PG_ADMIN_URL, f"evidence_bench_{args.of}")
    database_url = pg.create() if pg else f"sqlite:///{work / 'bench.db'}"
    load_before = load_average()
    svc = BenchService(work, EVIDENCE_DATABASE_URL=database_url)
    try:
        svc.start()
        admin = svc.admin_headers()
        svc.add_user(MANAGER, PASSWORD, "security_manager", site="SOUTH")
        services = svc.services(database_url)
        try:
            if args.of == "incidents":
                populate_incidents(services, args.items)
            else:
                populate_items(services, args.items, args.staff)
        finally:
            services.close()
        manager = svc.headers_for(MANAGER, PASSWORD)
        page = {"limit": args.items}
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            seen = client.get(route, params=page, headers=manager).json()
            elsewhere = args.of == "incidents" and any(r["site"] != "SOUTH" for r in seen)
            if len(seen) != args.items or elsewhere:
                raise RuntimeError(f"the manager sees {len(seen)} {rows}, not their site's {args.items}")
            timed(client, route, 5, params=page, headers=admin)  # warm up
            runs = {
                "admin /me": timed(client, "/api/v1/me", args.n, headers=admin),
                "manager /me": timed(client, "/api/v1/me", args.n, headers=manager),
                "admin list": timed(client, route, args.n, params=page, headers=admin),
                "manager list": timed(client, route, args.n, params=page, headers=manager),
            }
    finally:
        svc.stop()
        if pg is not None:
            pg.drop()
    load_after = load_average()
    figures = {name: latency_summary(xs) for name, xs in runs.items()}
    db = "sqlite" if args.sqlite else "postgres"
    print(f"| {db}, {args.items} of {2 * args.items} {rows} | n | p50 ms | p95 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['n']} | {f['p50_ms']} | {f['p95_ms']} | {f['mean_ms']} |")
    ratio = figures["manager list"]["p50_ms"] / figures["admin list"]["p50_ms"]
    me_ratio = figures["manager /me"]["p50_ms"] / figures["admin /me"]["p50_ms"]
    print(
        f"manager list / admin list (p50): {ratio:.2f}; manager /me / admin /me (p50): {me_ratio:.2f}; "
        f"load before {load_before}, after {load_after}"
    )
    name = results + ("-sqlite" if args.sqlite else "") + (f"-{args.label}" if args.label else "")
    write_results(
        name,
        {
            "db": db,
            "of": args.of,
            "figures": figures,
            "ratio_p50": ratio,
            "me_ratio_p50": me_ratio,
            "load": [load_before, load_after],
        },
    )


if __name__ == "__main__":
    main()
