"""What sealed incidents cost a security manager: ``GET /api/v1/incidents?limit=500`` as the manager
of a site with 500 incidents (among as many of another site's), through the real service (its own
process, SeaweedFS, a scratch PostgreSQL database or SQLite).

Every request signs its caller in afresh, and a manager's sign-in reads the incidents of their site
whose seal holds (``chain_of_custody.incident_seals``, ``SiteReach.incidents``): one HMAC a row,
and the list's scope names those ids. Baselines, same run: the same page as an administrator (no
scope, no incidents read at sign-in), and ``GET /api/v1/me`` for each (what signing in costs the
one and the other). Prints a table and writes bench/results/incident_list[-sqlite].json.
Run it alone: ``flock -x /tmp/bench.lock .venv/bin/python -m bench.incident_list [--sqlite]``.
"""

from __future__ import annotations

import argparse
import sys
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
from incidents.service import IncidentDraft, create_incident  # noqa: E402

MANAGER, PASSWORD = "bench_south_manager", "bench manager password"


def populate(services: object, incidents: int) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sqlite", action="store_true", help="SQLite instead of a scratch PostgreSQL")
    ap.add_argument("--incidents", type=int, default=500, help="incidents at each of the two sites")
    ap.add_argument("-n", type=int, default=60, help="lists of each kind")
    ap.add_argument("--label", default="", help="added to the results file's name (e.g. main, branch)")
    args = ap.parse_args()
    work = scratch("bench-incidents-")
    pg = None if args.sqlite else ScratchPostgres(PG_ADMIN_URL, "evidence_bench_incidents")
    database_url = pg.create() if pg else f"sqlite:///{work / 'bench.db'}"
    load_before = load_average()
    svc = BenchService(work, EVIDENCE_DATABASE_URL=database_url)
    try:
        svc.start()
        admin = svc.admin_headers()
        user = {"username": MANAGER, "password": PASSWORD, "role": "security_manager", "site": "SOUTH"}
        httpx.post(f"{svc.url}/api/v1/users", json=user, headers=admin).raise_for_status()
        services = svc.services(database_url)
        try:
            populate(services, args.incidents)
        finally:
            services.close()
        token = httpx.post(
            f"{svc.url}/api/v1/auth/token", data={"username": MANAGER, "password": PASSWORD}
        ).json()["access_token"]
        manager = {"Authorization": f"Bearer {token}"}
        page = {"limit": args.incidents}
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            seen = client.get("/api/v1/incidents", params=page, headers=manager).json()
            if len(seen) != args.incidents or any(i["site"] != "SOUTH" for i in seen):
                raise RuntimeError(
                    f"the manager sees {len(seen)} incidents, not their site's {args.incidents}"
                )
            timed(client, "/api/v1/incidents", 5, params=page, headers=admin)  # warm up
            runs = {
                "admin /me": timed(client, "/api/v1/me", args.n, headers=admin),
                "manager /me": timed(client, "/api/v1/me", args.n, headers=manager),
                "admin list": timed(client, "/api/v1/incidents", args.n, params=page, headers=admin),
                "manager list": timed(client, "/api/v1/incidents", args.n, params=page, headers=manager),
            }
    finally:
        svc.stop()
        if pg is not None:
            pg.drop()
    load_after = load_average()
    figures = {name: latency_summary(xs) for name, xs in runs.items()}
    db = "sqlite" if args.sqlite else "postgres"
    print(f"| {db}, {args.incidents} of {2 * args.incidents} incidents | n | p50 ms | p95 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['n']} | {f['p50_ms']} | {f['p95_ms']} | {f['mean_ms']} |")
    ratio = figures["manager list"]["p50_ms"] / figures["admin list"]["p50_ms"]
    me_ratio = figures["manager /me"]["p50_ms"] / figures["admin /me"]["p50_ms"]
    print(
        f"manager list / admin list (p50): {ratio:.2f}; manager /me / admin /me (p50): {me_ratio:.2f}; "
        f"load before {load_before}, after {load_after}"
    )
    name = "incident_list" + ("-sqlite" if args.sqlite else "") + (f"-{args.label}" if args.label else "")
    write_results(
        name,
        {
            "db": db,
            "figures": figures,
            "ratio_p50": ratio,
            "me_ratio_p50": me_ratio,
            "load": [load_before, load_after],
        },
    )


if __name__ == "__main__":
    main()
