"""Summarise a timeline recorded by ``bench/site/bench_ingest_timeline.py`` over the timed round
of ``bench/ingest.py`` (the last ``--uploads`` dock PATCHes): per step, calls, wall and CPU seconds,
thread-pool queueing, write transactions, event-loop busy time and its slow callbacks, and each
completion's steps from the end of its body to its answer.

Run: ``python bench/ingest_timeline_report.py TIMELINE.jsonl [--uploads 16] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def load(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(rows: list[list[Any]], uploads: int) -> dict[str, Any]:
    patches = sorted((r for r in rows if r[0] == "step" and r[1] == "UploadEngine.patch"), key=lambda r: r[3])
    timed = patches[-uploads:]
    t0 = min(r[3] for r in timed)
    t1 = max(r[4] for r in timed)

    def inside(r: list[Any]) -> bool:
        start = r[3]
        return t0 <= start <= t1

    steps: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r[0] == "step" and inside(r):
            steps[r[1]].append((r[4] - r[3], r[5] or 0.0))
    pools: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        if r[0] == "pool" and t0 <= r[4] <= t1:
            pools[r[1]].append((r[4] - r[3], r[5] - r[4], r[6]))
    tx: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r[0] == "tx" and inside(r):
            tx[r[1]].append((r[4] - r[3], r[5]))
    lags = [r[4] - r[3] for r in rows if r[0] == "lag" and inside(r)]
    cpu = [r for r in rows if r[0] == "loopcpu" and inside(r)]
    loop_cpu = (cpu[-1][5] - cpu[0][5]) if len(cpu) > 1 else None
    loop = [r for r in rows if r[0] == "loop" and inside(r)]
    samples = [r for r in rows if r[0] == "cpu" and inside(r)]
    cpu_use: dict[str, Any] = {}
    if len(samples) > 1:
        first, last = samples[0], samples[-1]
        span = last[3] - first[3]
        cpu_use["span_s"] = round(span, 3)
        cpu_use["service_s"] = round(last[5] - first[5], 3)
        if first[2] is not None and last[2] is not None:
            cpu_use["weed_s"] = round(last[2] - first[2], 3)
        groups: dict[str, float] = defaultdict(float)
        for name, after in last[1].items():
            before = first[1].get(name, 0.0)
            group = name.rstrip("0123456789_").removesuffix("_")
            groups[group] += after - before
        cpu_use["threads_s"] = {
            k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v > 0.001
        }
    slow = sorted((r for r in loop if r[1] is not None), key=lambda r: r[3] - r[4])
    completes = sorted(
        (r for r in rows if r[0] == "step" and r[1] == "complete_upload" and inside(r)), key=lambda r: r[4]
    )
    ends = sorted(r[4] for r in timed)

    def table(d: dict[str, list[tuple[float, ...]]]) -> dict[str, dict[str, float]]:
        out = {}
        for k, v in sorted(d.items(), key=lambda kv: -sum(x[0] for x in kv[1])):
            out[k] = {
                "n": len(v),
                "wall_s": round(sum(x[0] for x in v), 4),
                "median_ms": round(statistics.median(x[0] for x in v) * 1000, 2),
                "max_ms": round(max(x[0] for x in v) * 1000, 2),
                "cpu_s": round(sum(x[-1] or 0.0 for x in v), 4),
            }
        return out

    pool_table = {}
    for k, v in sorted(pools.items(), key=lambda kv: -sum(x[1] for x in kv[1])):
        pool_table[k] = {
            "n": len(v),
            "queued_s": round(sum(x[0] for x in v), 4),
            "queued_max_ms": round(max(x[0] for x in v) * 1000, 2),
            "run_s": round(sum(x[1] for x in v), 4),
            "cpu_s": round(sum(x[2] for x in v), 4),
        }
    return {
        "window_s": round(t1 - t0, 3),
        "answers_s": [round(e - t0, 3) for e in ends],
        "completions": [
            {
                "start_s": round(r[3] - t0, 3),
                "end_s": round(r[4] - t0, 3),
                "cpu_ms": round((r[5] or 0) * 1000, 1),
            }
            for r in completes
        ],
        "steps": table(steps),
        "pools": pool_table,
        "transactions": table(tx),
        "loop_lag": {
            "probes": len(lags),
            "median_ms": round(statistics.median(lags) * 1000, 2) if lags else None,
            "p95_ms": round(sorted(lags)[int(len(lags) * 0.95)] * 1000, 2) if lags else None,
            "max_ms": round(max(lags) * 1000, 2) if lags else None,
            "over_10ms": sum(1 for x in lags if x > 0.010),
        },
        "cpu": cpu_use,
        "loop_thread_cpu_s": round(loop_cpu, 4) if loop_cpu is not None else None,
        "loop": {
            "callbacks": len(loop),
            "busy_s": round(sum(r[4] - r[3] for r in loop), 4),
            "cpu_s": round(sum(r[5] for r in loop), 4),
            "slow": len(slow),
            "slow_s": round(sum(r[4] - r[3] for r in slow), 4),
            "slowest": [[round((r[4] - r[3]) * 1000, 1), r[1]] for r in slow[:8]],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("timeline", type=Path)
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    summary = summarise(load(args.timeline), args.uploads)
    text = json.dumps(summary, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
