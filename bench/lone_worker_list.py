"""What ``GET /api/v1/lone-workers`` costs a security manager, split into building its statements,
compiling them and running them, beside the plain list of the same devices without the rule.

A manager reads the lone-worker devices of their site whose seal holds, each with its count of open
alarms they read (``alarms.queries.AlarmQueries.lone_workers``): one statement joins the devices
and their states, then the open alarms of the page's devices are read and each counted as the
service vouches it stands (``alarms.standing.Standing.counts``: its seals checked, the custody
record's open alarms followed from the sweep's checkpoint). Timed in this process on a scratch SQLite file,
filled once per run (``--devices`` lone-worker units at each of two sites, ``--alarms`` alarms at
each, a third of them open, every row sealed as the service seals it):

- ``lone_workers``: the whole call, as the route makes it (its own transaction);
- ``plain``: the same devices and states by one plain statement (the site, no seals, no counts),
  in a transaction of its own: the baseline, same run;
- ``build``: building the call's statements (no database);
- ``compile``: compiling the listing statement afresh (no cache), as on a cache miss;
- ``cache_misses``: statements the engine compiled afresh during the timed calls (0: every
  statement came from SQLAlchemy's compiled cache).

Prints a table and writes bench/results/<--name>.json. Run it alone:
``flock -x /tmp/bench.gate flock -x /tmp/bench.lock env PYTHONPATH=<checkout> python -m bench.lone_worker_list``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load_average, scratch, write_results  # noqa: E402

SITES = ("SOUTH", "NORTH")


def fill(db: Any, devices: int, alarms: int, secret: bytes) -> None:
    """``devices`` sealed lone-worker units with states and ``alarms`` sealed alarms at each site."""
    from sqlalchemy import insert

    from alarms.models import AlarmRecord
    from chain_of_custody.alarm_seals import alarm_seal
    from devices.models import Device, LoneWorkerState

    now = datetime.now(UTC)
    with db.session() as session:
        for site in SITES:
            ids = [f"LW-{site}-{n:05d}" for n in range(devices)]
            session.execute(
                insert(Device),
                [
                    {"id": d, "kind": "lone_worker", "site": site, "created_at": now, "updated_at": now}
                    for d in ids
                ],
            )
            session.execute(
                insert(LoneWorkerState),
                [{"device_id": d, "presence": "online", "last_seen_at": now, "battery": 80} for d in ids],
            )
            rows = []
            for n in range(alarms):
                alarm_id, device = f"AL-{site}-{n:06d}", ids[n % devices]
                rows.append(
                    {
                        "id": alarm_id,
                        "device_id": device,
                        "site": site,
                        "kind": "sos",
                        "severity": "red",
                        "status": "raised" if n % 3 == 0 else "resolved",
                        "raised_at": now - timedelta(seconds=n),
                        "occurred_at": now - timedelta(seconds=n),
                        "seal": alarm_seal(secret, alarm_id, site, None, device, None),
                    }
                )
            session.execute(insert(AlarmRecord), rows)


def manager(db: Any) -> Any:
    """A security manager of SOUTH whose reach holds every device of the site (as signed in)."""
    from sqlalchemy import select

    from accounts.service import Principal
    from chain_of_custody.reach_seals import SiteReach
    from devices.models import Device

    with db.session() as session:
        devices = frozenset(session.scalars(select(Device.id).where(Device.site == "SOUTH")))
    return Principal(
        1, "bench_manager", "security_manager", "SOUTH", signed_in_reach=SiteReach(devices=devices)
    )


def timed(call: Callable[[], Any], runs: int) -> dict[str, float]:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(took) * 1000, "min_ms": min(took) * 1000, "runs": runs}


def listing_statement(db: Any, viewer: Any) -> Any:
    """The listing statement as ``lone_workers`` builds it (the counts are read after it)."""
    from sqlalchemy import select

    from accounts.access import device_scope
    from devices.models import Device, LoneWorkerState

    return (
        select(Device, LoneWorkerState)
        .outerjoin(LoneWorkerState, LoneWorkerState.device_id == Device.id)
        .where(Device.kind == "lone_worker")
        .where(device_scope(viewer, Device))
        .order_by(Device.id)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--alarms", type=int, default=3000)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--name", default="lone_worker_list")
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    from sqlalchemy import event, select

    from alarms.queries import AlarmQueries
    from chain_of_custody.keys import ServiceKey
    from chain_of_custody.reach_seals import reach_secret
    from devices.models import Device, LoneWorkerState
    from ingest.migrations_runner import upgrade_database
    from storage.db import Database

    work = scratch("bench-lone-workers-")
    url = f"sqlite:///{work / 'evidence.db'}"
    upgrade_database(url)
    db = Database(url)
    key = ServiceKey.load_or_create(work / "service.key")
    fill(db, args.devices, args.alarms, reach_secret(key))
    viewer = manager(db)
    queries = AlarmQueries(db, key)

    def plain() -> list[Any]:
        with db.session() as session:
            return list(
                session.execute(
                    select(Device, LoneWorkerState)
                    .outerjoin(LoneWorkerState, LoneWorkerState.device_id == Device.id)
                    .where(Device.kind == "lone_worker", Device.site == "SOUTH")
                    .order_by(Device.id)
                )
            )

    assert len(queries.lone_workers(viewer)) == len(plain()) == args.devices
    misses: list[str] = []

    def count_miss(_conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _many: bool) -> None:
        if context is not None and "generated" in context._get_cache_stats():
            misses.append(statement[:60])

    loads = load_average()
    event.listen(db.engine, "after_cursor_execute", count_miss)
    figures = {
        "lone_workers": timed(lambda: queries.lone_workers(viewer), args.calls),
        "plain": timed(plain, args.calls),
    }
    event.remove(db.engine, "after_cursor_execute", count_miss)
    statement = listing_statement(db, viewer)
    figures["build"] = timed(lambda: listing_statement(db, viewer), args.calls)
    figures["compile"] = timed(lambda: statement.compile(dialect=db.engine.dialect), args.calls)
    ratio = figures["lone_workers"]["median_ms"] / figures["plain"]["median_ms"]
    print(f"{args.devices} devices and {args.alarms} alarms a site; load {loads}")
    for name, f in figures.items():
        print(f"{name:>14}: median {f['median_ms']:8.2f} ms  min {f['min_ms']:8.2f} ms")
    print(f"lone_workers / plain: {ratio:.2f}; statements compiled afresh in the timed calls: {len(misses)}")
    out = write_results(
        args.name,
        {
            "label": args.label,
            "database": "sqlite",
            "devices_per_site": args.devices,
            "alarms_per_site": args.alarms,
            "load_average_before": loads,
            "figures": figures,
            "lone_workers_over_plain": ratio,
            "cache_misses": len(misses),
            "missed": misses[:5],
        },
    )
    print(f"wrote {out}")
    db.dispose()


if __name__ == "__main__":
    main()
