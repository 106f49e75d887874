"""Where a custody commit's tree head spends its time: each step of producing and storing one, timed
in the real path (the service's ledger, PostgreSQL or SQLite, the embedded SeaweedFS with object
lock), one writer, beside the same steps done alone and a raw S3 put of the same bytes.

The step timers wrap the real methods for the run only; what is timed is what a commit pays.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_services, write_results  # noqa: E402
from chain_of_custody import tree_heads as th  # noqa: E402
from chain_of_custody.ledger import Ledger  # noqa: E402
from chain_of_custody.signed_tree_head import sign_tree_head  # noqa: E402

Timings = dict[str, list[float]]


@contextmanager
def timed(into: Timings, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[name].append((time.perf_counter() - t0) * 1000)


def wrap(into: Timings, obj: Any, attr: str, name: str) -> Callable[[], None]:
    """Time every call of ``obj.attr`` under ``name``; returns the undo."""
    original = getattr(obj, attr)

    def timed_call(*a: Any, **kw: Any) -> Any:
        with timed(into, name):
            return original(*a, **kw)

    setattr(obj, attr, timed_call)
    return lambda: setattr(obj, attr, original)


def connections_made(log: Any) -> int:
    """Connections the object store's pool has opened so far (a kept connection is reused)."""
    return sum(pool.num_connections for pool in log.store.client._http.pools._container.values())  # noqa: SLF001


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100) if len(values) > 1 else [values[0]] * 99
    return {
        "n": len(values),
        "mean_ms": round(statistics.fmean(values), 3),
        "p50_ms": round(statistics.median(values), 3),
        "p95_ms": round(q[94], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--name", default="tree-head-steps")
    args = ap.parse_args()

    with bench_services("bench-tree-head-steps-", args.database) as s:
        log = s.ledger.tree_heads
        assert log is not None
        old = Ledger(s.key)
        t: Timings = defaultdict(list)
        undo: list[Callable[[], None]] = []

        def commit(ledger: Ledger, name: str) -> None:
            with timed(t, name), s.db.session() as session:
                ledger.append(session, "viewed", "user:bench", details={"purpose": "bench"})

        for _ in range(20):  # warm: connections, the tree caught up, the first put
            commit(s.ledger, "warm")
        t.clear()

        # The real path, each step timed where it runs.
        undo.append(wrap(t, log, "catch_up", "catch_up (db read of new entries)"))
        undo.append(wrap(t, log.tree, "root", "root"))
        undo.append(wrap(t, th, "sign_tree_head", "sign"))
        undo.append(wrap(t, log.store, "put_bytes", "S3 put (put_bytes)"))
        undo.append(wrap(t, log.store.client, "_url_open", "  of which HTTP request (_url_open)"))
        undo.append(wrap(t, log, "cover", "cover (the whole after-commit duty)"))
        lock_wait: list[float] = []
        original_lock = log._lock  # noqa: SLF001

        class TimedLock:
            def __enter__(self) -> None:
                t0 = time.perf_counter()
                original_lock.acquire()
                lock_wait.append((time.perf_counter() - t0) * 1000)

            def __exit__(self, *exc: object) -> None:
                original_lock.release()

        log._lock = TimedLock()  # type: ignore[assignment]  # noqa: SLF001
        # Alternating blocks (as bench/custody.py alternates rounds): the Merkle log reads the hash
        # chain's entries of the block before back from the database once, as another process's.
        reads_before, connections_before = getattr(log, "ledger_reads", None), connections_made(log)
        block = max(1, args.commits // 4)
        for start in range(0, args.commits, block):
            for _ in range(start, min(start + block, args.commits)):
                commit(old, "commit, hash chain alone")
            for _ in range(start, min(start + block, args.commits)):
                commit(s.ledger, "commit, Merkle log")
        one_writer = {
            "merkle_commits": args.commits,
            "ledger_reads": None if reads_before is None else log.ledger_reads - reads_before,
            "s3_connections_opened": connections_made(log) - connections_before,
        }
        log._lock = original_lock  # noqa: SLF001
        t["tree-head lock wait"] = lock_wait
        for u in reversed(undo):
            u()

        # The same steps alone, to separate them from each other's interference.
        head = sign_tree_head(s.key, log.tree.size, log.tree.root())
        body = json.dumps(head.to_json()).encode()
        retain = datetime.now(UTC) + timedelta(days=1)
        engine = s.db.engine
        for i in range(args.commits):
            with timed(t, "alone: catch_up with nothing new"):
                log.catch_up(engine)
            with timed(t, "alone: root"):
                log.tree.root()
            with timed(t, "alone: sign"):
                sign_tree_head(s.key, log.tree.size, log.tree.root())
            with timed(t, "alone: json"):
                json.dumps(head.to_json()).encode()
            with timed(t, "alone: md5 + sha256 of the body"):
                hashlib.md5(body).digest()
                hashlib.sha256(body).digest()
            with timed(t, "alone: put_bytes, locked bucket, retention"):
                log.store.put_bytes(
                    f"bench/{i}-a.json", body, retain_until=retain, content_type="application/json"
                )
            with timed(t, "alone: put, locked bucket, no retention header"):
                log.store.client.put_object(
                    log.store.bucket, f"bench/{i}-b.json", io.BytesIO(body), len(body)
                )
            with timed(t, "alone: put, staging bucket (no lock)"):
                log.store.client.put_object(
                    log.store.staging_bucket, f"bench/{i}-c.json", io.BytesIO(body), len(body)
                )
            with timed(t, "alone: HEAD bucket (round trip floor)"):
                log.store.client.bucket_exists(log.store.bucket)
            with timed(t, "alone: db pool checkout + SELECT 1"), engine.connect() as c:
                c.exec_driver_sql("SELECT 1")

        # Eight writers through the real path: how many heads, how long the lock is waited for.
        threads_n, per = 8, max(20, args.commits // 4)
        before, reads_before = log.written, getattr(log, "ledger_reads", None)
        lat: list[float] = []
        guard = threading.Lock()

        def writer() -> None:
            own = []
            for _ in range(per):
                t0 = time.perf_counter()
                with s.db.session() as session:
                    s.ledger.append(session, "viewed", "user:bench", details={"purpose": "bench"})
                own.append((time.perf_counter() - t0) * 1000)
            with guard:
                lat.extend(own)

        ws = [threading.Thread(target=writer) for _ in range(threads_n)]
        t0 = time.perf_counter()
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        eight = {
            "commits": threads_n * per,
            "appends_per_s": round(threads_n * per / (time.perf_counter() - t0), 1),
            "tree_heads": log.written - before,
            "ledger_reads": None if reads_before is None else log.ledger_reads - reads_before,
            "commit": summary(lat),
        }

        steps = {k: summary(v) for k, v in t.items()}
        width = max(map(len, steps))
        for k, v in steps.items():
            print(
                f"{k:<{width}}  n={v.get('n')}  mean {v.get('mean_ms')} ms  p50 {v.get('p50_ms')}  p95 {v.get('p95_ms')}"
            )
        print(f"1 writer: {one_writer}")
        print(f"8 writers: {eight}")
        out = write_results(
            args.name,
            {"database": args.database, "steps": steps, "one_writer": one_writer, "eight_writers": eight},
        )
        print(f"results: {out}")


if __name__ == "__main__":
    main()
