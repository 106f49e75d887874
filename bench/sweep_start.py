"""What the clock sweep's first pass in a new process costs on a long alarm history: the cursor that
finds the alarms custody holds open (``OpenByCustody``) reading a ledger of many alarms raised and
resolved and one still open. Timed in this process on a scratch SQLite file and a scratch
PostgreSQL database, filled once, by the code of whichever checkout runs this (``PYTHONPATH``):

- ``first pass, whole ledger``: a new cursor that reads every alarm entry (on a checkout whose cursor
  checks each entry's hash and signature, that is its cost with no checkpoint, or a refused one);
- ``first pass, from the checkpoint``: a new cursor as a new process starts it, from the sealed
  checkpoint (a checkout without checkpoints has no such case).

Fill once, time each checkout in turn (run the script by its path so ``PYTHONPATH`` decides the
code), drop::

    python -m bench.sweep_start fill > fill.json
    flock -x /tmp/bench.lock env PYTHONPATH=<checkout> python <this file> time --fill fill.json --out f.json
    python -m bench.sweep_start drop --fill fill.json
"""

from __future__ import annotations

import argparse
import inspect
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def fill(url: str, work: Path, alarms: int) -> None:
    """``alarms`` alarms raised and resolved (two entries each), then one raised and left open."""
    from chain_of_custody.canonical import rfc3339
    from chain_of_custody.entries import CustodyAction
    from chain_of_custody.keys import ServiceKey
    from chain_of_custody.ledger import Ledger
    from ingest.migrations_runner import upgrade_database
    from storage.db import Database

    upgrade_database(url)
    db, ledger = Database(url), Ledger(ServiceKey.load_or_create(work / "service.key"))
    now = datetime.now(UTC)

    def entry(session: Any, n: int, action: CustodyAction, status: str) -> None:
        due = None if status == "resolved" else rfc3339(now + timedelta(seconds=60 + n))
        details = {
            "alarm_id": f"AL-{n:06d}",
            "deadline": due,
            "device": f"LW-{n % 50:03d}",
            "kind": "sos",
            "severity": "red",
            "status": status,
            "outcome": "test" if status == "resolved" else None,
            "changes": [status],
        }
        ledger.append(session, action, "user:bench", details=details, at=now)

    for start in range(0, alarms, 500):
        with db.session() as session:
            for n in range(start, min(alarms, start + 500)):
                entry(session, n, CustodyAction.ALARM_RAISED, "raised")
                entry(session, n, CustodyAction.ALARM_CHANGED, "resolved")
    with db.session() as session:
        entry(session, alarms, CustodyAction.ALARM_RAISED, "raised")
    db.dispose()


def _cursor(key: Any) -> Any:
    """A new cursor, as a new process makes it, whichever checkout this is."""
    try:
        from chain_of_custody.sweep_cursor import OpenByCustody
    except ImportError:  # a checkout whose cursor checks nothing and keeps no checkpoint
        from chain_of_custody.lifecycle_seals import OpenByCustody  # type: ignore[attr-defined,no-redef]
    return OpenByCustody(key) if inspect.signature(OpenByCustody).parameters else OpenByCustody()


def measure(url: str, key: Any, repeat: int) -> dict[str, Any]:
    from bench.common import latency_summary
    from storage.db import Database

    db = Database(url)

    def first_pass(from_checkpoint: bool) -> tuple[float, int, int]:
        cursor = _cursor(key)
        if not from_checkpoint and hasattr(cursor, "started"):
            cursor.started = True  # as with no checkpoint kept
        t = time.perf_counter()
        with db.session() as session:
            cursor.advance(session)
        return time.perf_counter() - t, cursor.read, len(cursor.open)

    first_pass(False)  # warm; on a checkout that keeps one, this writes the checkpoint
    checkpoints = hasattr(_cursor(key), "started")
    cases: dict[str, Any] = {}
    timings: dict[str, list[float]] = {"whole": [], "checkpoint": []}
    for _ in range(repeat):  # the two cases alternate
        for case in ("whole", "checkpoint") if checkpoints else ("whole",):
            took, read, still_open = first_pass(case == "checkpoint")
            if still_open != 1:
                raise RuntimeError(f"the cursor holds {still_open} alarms open, not 1")
            timings[case].append(took)
            cases[f"entries read, {case}"] = read
    cases["first pass, whole ledger"] = latency_summary(timings["whole"])
    if checkpoints:
        cases["first pass, from the checkpoint"] = latency_summary(timings["checkpoint"])
    db.dispose()
    return cases


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--alarms", type=int, default=10_000, help="alarms raised and resolved (2 entries each)")
    ap.add_argument("-n", type=int, default=5, help="first passes of each kind")


def _fill(args: argparse.Namespace, work: Path, urls: dict[str, str]) -> dict[str, Any]:
    for url in urls.values():
        fill(url, work, args.alarms)
    return {"alarms": args.alarms, **urls}


def _summary(figures: dict[str, Any]) -> str:
    return f"p50 {figures['p50_ms']} ms, n {figures['n']}"


def _time(args: argparse.Namespace, filled: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    from chain_of_custody.keys import ServiceKey

    key = ServiceKey.load_or_create(Path(filled["work"]) / "service.key")
    results = {db: measure(filled[db], key, args.n) for db in ("sqlite", "postgres")}
    lines = [
        f"{args.label} {db} {name}: {figures if isinstance(figures, int) else _summary(figures)}"
        for db, cases in results.items()
        for name, figures in cases.items()
    ]
    return {"alarm_entries": 2 * filled["alarms"] + 1, "results": results}, lines


def main() -> None:
    from bench.common import paired_runs

    description = (__doc__ or "").splitlines()[0]
    paired_runs(description, "sweep-start", _options, _fill, _time, code="chain_of_custody.lifecycle_seals")


if __name__ == "__main__":
    main()
