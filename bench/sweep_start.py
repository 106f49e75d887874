"""What the clock sweep's first pass in a new process costs on a long alarm history: the cursor that
finds the alarms custody holds open (``OpenByCustody``) reading a ledger of many alarms raised and
resolved and one still open. Timed in this process on a scratch SQLite file and a scratch
PostgreSQL database, filled once, by the code of whichever checkout runs this (``PYTHONPATH``):

- ``first pass, whole ledger``: a new cursor that reads every alarm entry (on a checkout whose cursor
  checks each entry's hash and signature, that is its cost with no checkpoint, or a refused one);
- ``first pass, from the checkpoint``: a new cursor as a new process starts it, from the sealed
  checkpoint (a checkout without checkpoints has no such case);
- ``next pass, after N reads``: the pass after one that stood on the open alarm's entry, with the
  ``--reads`` evidence-read entries (``viewed``) appended since, as a busy service appends them
  between two sweeps (a cursor that follows the chain reads them; one that does not skips them).

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


def fill(url: str, work: Path, alarms: int, reads: int) -> None:
    """``alarms`` alarms raised and resolved (two entries each), then one raised and left open, then
    ``reads`` evidence-read entries."""
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
    for start in range(0, reads, 500):
        with db.session() as session:
            for n in range(start, min(reads, start + 500)):
                details = {"reason": "bench", "range": [0, 1 << 20], "viewer": f"user:{n % 20}"}
                ledger.append(session, CustodyAction.VIEWED, "user:bench", details=details, at=now)
    db.dispose()


def _cursor(key: Any) -> Any:
    """A new cursor, as a new process makes it, whichever checkout this is."""
    try:
        from chain_of_custody.sweep_cursor import OpenByCustody
    except ImportError:  # a checkout whose cursor checks nothing and keeps no checkpoint
        from chain_of_custody.lifecycle_seals import OpenByCustody  # type: ignore[attr-defined,no-redef]
    return OpenByCustody(key) if inspect.signature(OpenByCustody).parameters else OpenByCustody()


def _held_open(db: Any, key: Any) -> dict[str, Any]:
    """What a whole read holds open (the one alarm left open), as a cursor that read it holds it."""
    cursor = _cursor(key)
    if hasattr(cursor, "started"):
        cursor.started = True
    with db.session() as session:
        cursor.advance(session)
    return dict(cursor.open)


def measure(url: str, key: Any, repeat: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from bench.common import latency_summary
    from chain_of_custody.models import CustodyEntry
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

    def next_pass(last_alarm: Any) -> tuple[float, int, int]:
        """The pass after one that stood on the last alarm entry (the open alarm's raise)."""
        cursor = _cursor(key)
        cursor.started = True
        cursor.seq, cursor.entry_hash = int(last_alarm.seq), last_alarm.entry_hash
        cursor.open = dict(held)
        t = time.perf_counter()
        with db.session() as session:
            cursor.advance(session)
        return time.perf_counter() - t, cursor.read, len(cursor.open)

    first_pass(False)  # warm; on a checkout that keeps one, this writes the checkpoint
    checkpoints = hasattr(_cursor(key), "started")
    held = _held_open(db, key)
    with db.session() as session:
        last_alarm = session.execute(
            select(CustodyEntry.seq, CustodyEntry.entry_hash)
            .where(CustodyEntry.action.in_(("alarm_raised", "alarm_changed")))
            .order_by(CustodyEntry.seq.desc())
            .limit(1)
        ).one()
        reads = session.scalar(
            select(func.count()).select_from(CustodyEntry).where(CustodyEntry.seq > last_alarm.seq)
        )
    cases: dict[str, Any] = {}
    timings: dict[str, list[float]] = {"whole": [], "checkpoint": [], "next": []}
    for _ in range(repeat):  # the cases alternate
        for case in ("whole", "checkpoint", "next") if checkpoints else ("whole", "next"):
            if case == "next":
                took, read, still_open = next_pass(last_alarm)
            else:
                took, read, still_open = first_pass(case == "checkpoint")
            if still_open != 1:
                raise RuntimeError(f"the cursor holds {still_open} alarms open, not 1")
            timings[case].append(took)
            cases[f"entries read, {case}"] = read
    cases["first pass, whole ledger"] = latency_summary(timings["whole"])
    if checkpoints:
        cases["first pass, from the checkpoint"] = latency_summary(timings["checkpoint"])
    cases[f"next pass, after {reads} reads"] = latency_summary(timings["next"])
    db.dispose()
    return cases


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--alarms", type=int, default=10_000, help="alarms raised and resolved (2 entries each)")
    ap.add_argument("--reads", type=int, default=2_000, help="evidence-read entries after the alarms")
    ap.add_argument("-n", type=int, default=5, help="first passes of each kind")


def _fill(args: argparse.Namespace, work: Path, urls: dict[str, str]) -> dict[str, Any]:
    for url in urls.values():
        fill(url, work, args.alarms, args.reads)
    return {"alarms": args.alarms, "reads": args.reads, **urls}


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
