"""What one SOS costs in statements: every SQL statement, transaction and object-store request the
service makes for an SOS, by thread, for a given source tree.

The same harness as ``bench/alarm_path.py`` (scratch PostgreSQL database, private Mosquitto, the
tree's own service process and enrolment), with ``bench/site/bench_sql_trace.py`` on the
service's path instead of the thread namer: it records each statement with its thread. After a
warm-up, an idle window (what the service does with no SOS: its pollers) and then ``--sos`` SOS, one
at a time, each followed by ``--settle-s`` for what it sets going after its ack (the provisional
alarm made whole, its tree head, the outbox). Each SOS's window is listed apart, the idle window's
rate beside it.

Run: ``env PYTHONPATH=$PWD .venv/bin/python -m bench.sos_statements --label main [--tree /path]``.
Writes ``bench/results/sos-statements-<label>.json`` and prints each statement of the last SOS
(``--print all`` for every SOS), one line each, in order, with its thread, for ``diff`` between trees.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alarm_path import Run, _git_commit, _sos_round, harness_arguments, start  # noqa: E402
from bench.common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path, since: float, until: float, pids: set[int]) -> list[dict[str, Any]]:
    out = []
    with path.open() as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if since <= rec["t"] < until and rec["pid"] in pids:
                out.append(rec)
    return out


_THREAD_NUMBER = re.compile(r"_\d+$|-\d+(?= \(|$)")


def _thread(name: str) -> str:
    """A thread's name without its pool number (``ThreadPoolExecutor-0_3`` → ``ThreadPoolExecutor-0``)."""
    return _THREAD_NUMBER.sub("", name)


def _what(rec: dict[str, Any]) -> str:
    if rec["kind"] == "sql" and rec.get("many"):
        return f"{rec['text']}  [executemany x{rec['sets']}]"
    return rec["text"]


def summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    sql = [r for r in recs if r["kind"] == "sql" and r.get("dialect") == "postgresql"]
    tx = Counter(r["text"] for r in recs if r["kind"] == "tx" and r.get("dialect") == "postgresql")
    custody = [r for r in sql if r["text"].startswith("INSERT INTO custody_entries")]
    verbs = Counter(r["text"].split(" ", 1)[0] for r in sql)
    tables = Counter(
        m.group(1)
        for r in sql
        if (m := re.search(r"(?:INSERT INTO|UPDATE|FROM|DELETE FROM) (\w+)", r["text"])) is not None
    )
    s3 = Counter(r["text"] for r in recs if r["kind"] == "s3")
    by_thread = Counter(_thread(r["thread"]) for r in sql)
    return {
        "statements": len(sql),
        "transactions": dict(tx),
        # each statement and each BEGIN / COMMIT / ROLLBACK is a round trip to PostgreSQL
        "round_trips": len(sql) + sum(tx.values()),
        "by_verb": dict(verbs),
        "by_table": dict(tables.most_common()),
        "by_thread": dict(by_thread),
        "custody_insert_statements": len(custody),
        "custody_rows": sum(
            r.get("sets", 1) if r.get("many") else max(1, r["text"].count("), (") + 1) for r in custody
        ),
        "object_store_requests": dict(s3),
    }


def listing(recs: list[dict[str, Any]]) -> list[str]:
    return [f"{_thread(r['thread']):28} {r['kind']:3} {_what(r)}" for r in recs]


def main() -> None:
    parser = harness_arguments(
        __doc__.split("\n\n")[0],
        "sos-statements-<label>.json",
        sos=3,
        warmup=10,
        devices=5,
        settle_s=3.0,
        idle_s=10.0,
    )
    parser.add_argument("--print", default="last", choices=["last", "all", "none"], help="SOS listed")
    args = parser.parse_args()
    run = Run(args, hooks={})
    trace = run.work / "sql-trace.jsonl"
    run.env["BENCH_SQL_TRACE"] = str(trace)  # the one hook of bench/site this bench loads
    results: dict[str, Any] = {}
    try:
        start(run)
        assert run.svc is not None and run.svc.proc is not None
        import psutil

        pids = {run.svc.proc.pid} | {c.pid for c in psutil.Process(run.svc.proc.pid).children(recursive=True)}
        for n in range(args.warmup):
            _sos_round(run, run.devices[n % len(run.devices)], args.gap_s)
        time.sleep(args.settle_s)
        t0 = time.time()
        time.sleep(args.idle_s)
        idle = _read(trace, t0, time.time(), pids)
        windows = []
        for n in range(args.sos):
            since = time.time()
            r = _sos_round(run, run.devices[(args.warmup + n) % len(run.devices)], args.gap_s)
            time.sleep(args.settle_s)
            recs = _read(trace, since, time.time(), pids)
            windows.append({"round": r, "summary": summary(recs), "listing": listing(recs)})
        results = {
            "label": args.label,
            "tree": str(Path(args.tree).resolve()),
            "commit": _git_commit(Path(args.tree).resolve()),
            "idle": {"seconds": args.idle_s, "summary": summary(idle), "listing": listing(idle)},
            "settle_s": args.settle_s,
            "sos": windows,
        }
    finally:
        run.close()
    path = write_results(f"sos-statements-{args.label}", {"benchmark": "sos_statements", **results})
    print(f"{results['label']}: {results['commit'][:12]} ({results['tree']})")
    print(f"idle {args.idle_s} s: {json.dumps(results['idle']['summary'])}")
    for n, w in enumerate(results["sos"]):
        print(f"SOS {n + 1}: {json.dumps(w['summary'])}")
    chosen = results["sos"] if args.print == "all" else results["sos"][-1:] if args.print == "last" else []
    for w in chosen:
        print("---- SOS", w["round"]["event_id"])
        print("\n".join(w["listing"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
