"""Custody appends per second: the Merkle log (a signed tree head in write-once storage before each
commit returns, shared by concurrent commits) beside the old ledger path (the hash chain alone), in
the same run, on the same database and object store.

Each case runs ``--threads`` writers, each committing ``--commits`` transactions of one custody
entry (as a route, an upload or an alarm does), and reports appends per second and the commit
latency percentiles; the ratio is the Merkle log's rate over the old path's, measured alternately
over ``--rounds`` so that drift in the machine's load hits both.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from bench.common import bench_services, latency_summary, write_results  # noqa: E402
from chain_of_custody.ledger import Ledger  # noqa: E402
from ingest.services import Services  # noqa: E402


def run_case(s: Services, ledger: Ledger, threads: int, commits: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer() -> None:
        own: list[float] = []
        try:
            for _ in range(commits):
                t0 = time.perf_counter()
                with s.db.session() as session:
                    ledger.append(session, "viewed", "user:bench", details={"purpose": "bench"})
                own.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - reported in the results
            errors.append(exc)
        with lock:
            latencies.extend(own)

    before = ledger.tree_heads.written if ledger.tree_heads else 0
    workers = [threading.Thread(target=writer) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} writers failed: {errors[0]!r}")
    n = threads * commits
    return {
        "appends": n,
        "seconds": round(elapsed, 3),
        "appends_per_s": round(n / elapsed, 1),
        "commit_latency_ms": latency_summary(latencies),
        "tree_heads_written": (ledger.tree_heads.written - before) if ledger.tree_heads else 0,
    }


def statements_per_append(s: Services, ledger: Ledger, commits: int = 20) -> dict[str, float]:
    """The statements one writer's commit of one entry sends, by their first words (``before_cursor_
    execute``; a commit is not a statement), averaged over ``commits``: what the database pays per
    append, apart from time. Run alone, before or after the timed rounds, never during them."""
    counted: dict[str, int] = {}

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = " ".join(statement.split()[:3])
        counted[words] = counted.get(words, 0) + 1

    run_case(s, ledger, 1, 1)  # the tree caught up with the other ledger's entries
    event.listen(s.db.engine, "before_cursor_execute", note)
    try:
        run_case(s, ledger, 1, commits)
    finally:
        event.remove(s.db.engine, "before_cursor_execute", note)
    return {k: round(v / commits, 2) for k, v in sorted(counted.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--commits", type=int, default=200, help="commits per writer per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="custody")
    args = ap.parse_args()

    with bench_services("bench-custody-", args.database) as s:
        merkle = s.ledger  # with the tree-head log, as the service runs
        old = Ledger(s.key)  # the hash chain alone, as before
        cases = []
        run_case(s, merkle, 2, 20)  # warm: connections, the tree caught up, the first put
        statements = {
            "old_ledger": statements_per_append(s, old),
            "merkle_log": statements_per_append(s, merkle),
        }
        print(f"statements per append: {statements}")
        for threads in args.threads:
            rounds: dict[str, list[dict[str, Any]]] = {"old_ledger": [], "merkle_log": []}
            for _ in range(args.rounds):
                rounds["old_ledger"].append(run_case(s, old, threads, args.commits))
                rounds["merkle_log"].append(run_case(s, merkle, threads, args.commits))
            best = {k: max(v, key=lambda r: r["appends_per_s"]) for k, v in rounds.items()}
            ratios = [
                round(m["appends_per_s"] / o["appends_per_s"], 3)
                for o, m in zip(rounds["old_ledger"], rounds["merkle_log"], strict=True)
            ]
            case = {
                "threads": threads,
                "best": best,
                "ratio_merkle_over_old_per_round": ratios,
                "ratio_merkle_over_old_best": round(
                    best["merkle_log"]["appends_per_s"] / best["old_ledger"]["appends_per_s"], 3
                ),
                "rounds": rounds,
            }
            cases.append(case)
            print(
                f"{threads} writers: old {best['old_ledger']['appends_per_s']}/s "
                f"p99 {best['old_ledger']['commit_latency_ms'].get('p99_ms')} ms; merkle "
                f"{best['merkle_log']['appends_per_s']}/s p99 {best['merkle_log']['commit_latency_ms'].get('p99_ms')} ms "
                f"({best['merkle_log']['tree_heads_written']} tree heads for {best['merkle_log']['appends']} commits); "
                f"ratio per round {ratios}"
            )
        out = write_results(
            args.name,
            {
                "database": args.database,
                "commits_per_writer": args.commits,
                "rounds": args.rounds,
                "statements_per_append": statements,
                "cases": cases,
            },
        )
        print(f"results: {out}")


if __name__ == "__main__":
    main()
