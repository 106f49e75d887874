"""What signing in costs each request: ``GET /api/v1/me`` with a bearer token and with a console
session cookie, many times, through the real service (its own process, SeaweedFS, SQLite or a
scratch PostgreSQL database).

Every authenticated request finds its token's or session's row, checks its seal and asks the
custody ledger whether the credential was ended (``accounts.ends``). Before the requests, a second
user signs in ``--ended`` times and has their password changed, so the ledger holds that many ends
(on code that records them). Baseline, same run: ``GET /healthz``, the same server and client
without a sign-in. Prints a table and writes bench/results/sign_in[-postgres].json.
Run it alone: ``flock -x /tmp/bench.lock .venv/bin/python bench/sign_in.py [--db postgres]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alarms import PG_ADMIN_URL  # noqa: E402
from bench.common import (  # noqa: E402
    ADMIN_PASSWORD,
    BenchService,
    ScratchPostgres,
    latency_summary,
    load_average,
    scratch,
    write_results,
)


def timed(client: httpx.Client, path: str, n: int, **kwargs: Any) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, **kwargs)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:200]}")
    return out


def console_cookie(url: str, username: str, password: str) -> str:
    client = httpx.Client(base_url=url, timeout=15, follow_redirects=False)
    form = client.get("/sign-in")
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = client.post("/sign-in", data={"csrf": csrf, "username": username, "password": password})
    if r.status_code != 303:
        raise RuntimeError(f"console sign-in answered {r.status_code}")
    return str(client.cookies["evidence_session"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("-n", type=int, default=2000, help="requests of each kind")
    ap.add_argument("--ended", type=int, default=100, help="credentials ended before the requests")
    args = ap.parse_args()
    pg = ScratchPostgres(PG_ADMIN_URL) if args.db == "postgres" else None
    if pg is not None:
        os.environ["EVIDENCE_BENCH_DB"] = pg.create()
    svc = BenchService(scratch("bench-sign-in-"))
    load_before = load_average()
    try:
        svc.start()
        admin = svc.admin_headers()
        other_password = "another bench password 1"
        other_id = svc.add_user("other", other_password, "operator")["id"]
        for _ in range(args.ended):
            svc.headers_for("other", other_password)
        httpx.patch(
            f"{svc.url}/api/v1/users/{other_id}", json={"password": "a third bench password"}, headers=admin
        ).raise_for_status()
        cookie = console_cookie(svc.url, "admin", ADMIN_PASSWORD)
        with httpx.Client(base_url=svc.url, timeout=15) as client:
            timed(client, "/api/v1/me", 200, headers=admin)  # warm up
            runs = {
                "healthz": timed(client, "/healthz", args.n),
                "bearer": timed(client, "/api/v1/me", args.n, headers=admin),
                "cookie": timed(client, "/api/v1/me", args.n, cookies={"evidence_session": cookie}),
            }
    finally:
        svc.stop()
        if pg is not None:
            pg.drop()
    load_after = load_average()
    figures = {name: latency_summary(xs) for name, xs in runs.items()}
    base = figures["healthz"]["mean_ms"]
    print(f"| {args.db} | n | p50 ms | p95 ms | mean ms | mean - healthz ms |")
    print("|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['n']} | {f['p50_ms']} | {f['p95_ms']} | {f['mean_ms']} | "
            f"{round(f['mean_ms'] - base, 3)} |"
        )
    print(f"load before {load_before}, after {load_after}")
    name = "sign_in" if args.db == "sqlite" else "sign_in-postgres"
    write_results(name, {"db": args.db, "figures": figures, "load": [load_before, load_after]})


if __name__ == "__main__":
    main()
