"""CPU per heartbeat: signed heartbeats through the real handling code against the real PostgreSQL.

The 2,000-device fleet beats every 10 s (200 heartbeats a second), and on a small machine the CPU
each one costs decides how long an SOS waits for a core. This measures that cost where it is paid,
without a broker in the way:

- ``baseline``: what no implementation can skip, for the same messages: parse the JSON and verify
  the Ed25519 signature over the canonical bytes (cached public keys).
- ``one_by_one``: the consumer's path for a heartbeat that arrives alone (the usual case at 200 a
  second: the worker keeps up): ``first_look`` (the network thread's cheap checks), then
  ``AlarmService.handle``, one transaction each.
- ``batched``: the same with the worker's batches (``handle_many``, ``--batch`` messages).

CPU is this process's (``time.process_time``, all threads) plus the PostgreSQL backends serving this
benchmark's database (from ``/proc`` through psutil), in seconds per 1,000 heartbeats. Every round
gives each device one heartbeat (a new sequence number, a fresh ``sent_at``), in a shuffled order.
Prometheus counts go to multiprocess files, as in the telemetry process.

    python bench/telemetry.py --devices 2000 --rounds 3 --out telemetry-1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# As in the telemetry process: counters in multiprocess files (chosen before the first import).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-telemetry-metrics-"))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import json  # noqa: E402

import psutil  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.common import scratch, write_results  # noqa: E402
from devices.lone_worker_wire import first_look  # noqa: E402
from storage.embedded import EmbeddedSeaweed  # noqa: E402
from tests.conftest import (  # noqa: E402
    PG_ADMIN_URL,
    drop_pg_database,
    ensure_postgres,
    free_base_port,
    fresh_pg_database,
    make_settings,
)
from tests.test_alarms_kit import DeviceKit, enrol, raw_public  # noqa: E402


def _backend_cpu(services: Any, dbname: str) -> float:
    """CPU seconds so far of the PostgreSQL backends connected to this benchmark's database."""
    with services.db.engine.connect() as conn:
        pids = [
            r[0]
            for r in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": dbname})
        ]
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


class _Cpu:
    """CPU of this process and of the database's backends across a block."""

    def __init__(self, services: Any, dbname: str) -> None:
        self.services, self.dbname = services, dbname

    def __enter__(self) -> _Cpu:
        self.pg0 = _backend_cpu(self.services, self.dbname)
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0
        self.pg = _backend_cpu(self.services, self.dbname) - self.pg0


def _per_1000(seconds: float, n: int) -> float:
    return round(seconds * 1000 / n, 4)


def _round(kits: list[DeviceKit], rng: random.Random) -> list[tuple[str, bytes]]:
    messages = [kit.heartbeat(battery=rng.randint(40, 100)) for kit in kits]
    rng.shuffle(messages)
    return messages


def baseline(messages: list[tuple[str, bytes]], keys: dict[str, Ed25519PublicKey]) -> None:
    """Parse and verify, nothing else (the signature is over the canonical JSON without ``sig``)."""
    import base64

    for _, raw in messages:
        payload = json.loads(raw)
        sig = base64.b64decode(payload.pop("sig"))
        signed = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        keys[payload["device_id"]].verify(sig, signed)


def one_by_one(services: Any, messages: list[tuple[str, bytes]], max_bytes: int) -> int:
    accepted = 0
    for topic, raw in messages:
        if first_look(raw, topic, max_bytes).refused is not None:
            continue
        accepted += services.alarms.handle(topic, raw).outcome == "accepted"
    return accepted


def batched(services: Any, messages: list[tuple[str, bytes]], max_bytes: int, size: int) -> int:
    accepted = 0
    for start in range(0, len(messages), size):
        chunk = [
            (t, r, False)
            for t, r in messages[start : start + size]
            if first_look(r, t, max_bytes).refused is None
        ]
        accepted += sum(r.outcome == "accepted" for r in services.alarms.handle_many(chunk))
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="heartbeats per device in each measured mode")
    parser.add_argument(
        "--batch", type=int, default=10, help="the consumer lingers 50 ms: ten at 200 a second"
    )
    parser.add_argument("--out", default="telemetry")
    parser.add_argument("--profile", help="write a pyinstrument profile of one_by_one here (.html or .txt)")
    args = parser.parse_args()

    ensure_postgres()
    work = scratch("bench-telemetry-")
    seaweed = EmbeddedSeaweed(work / "s3", free_base_port(), "1GiB")
    seaweed.start()
    url, dbname = fresh_pg_database(PG_ADMIN_URL)
    services = None
    try:
        from ingest.services import build_services

        settings = make_settings(work, url, seaweed)
        services = build_services(settings)
        print(f"enrolling {args.devices} devices", flush=True)
        kits = [enrol(services, f"LW-HB-{i:05d}", staff_id=f"S-{i:05d}") for i in range(args.devices)]
        keys = {k.device_id: Ed25519PublicKey.from_public_bytes(raw_public(k.key)) for k in kits}
        rng = random.Random(7)
        max_bytes = settings.max_payload_bytes
        one_by_one(services, _round(kits, rng), max_bytes)  # the first heartbeat creates each state row
        modes: dict[str, dict[str, Any]] = {}
        plan = [("baseline", None), ("one_by_one", None), ("batched", args.batch)]
        for name, size in plan:
            rounds = [_round(kits, rng) for _ in range(args.rounds)]  # signed before measuring
            n = sum(len(r) for r in rounds)
            profiler = None
            if name == "one_by_one" and args.profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0005)
                profiler.start()
            with _Cpu(services, dbname) as cpu:
                accepted = 0
                for messages in rounds:
                    if name == "baseline":
                        baseline(messages, keys)
                        accepted += len(messages)
                    elif name == "one_by_one":
                        accepted += one_by_one(services, messages, max_bytes)
                    else:
                        accepted += batched(services, messages, max_bytes, size or 1)
            if profiler is not None:
                profiler.stop()
                out = Path(args.profile)
                out.write_text(
                    profiler.output_html()
                    if out.suffix == ".html"
                    else profiler.output_text(unicode=True, show_all=False)
                )
            modes[name] = {
                "heartbeats": n,
                "accepted": accepted,
                "batch": size,
                "service_cpu_s_per_1000": _per_1000(cpu.cpu, n),
                "postgres_cpu_s_per_1000": _per_1000(cpu.pg, n),
                "total_cpu_s_per_1000": _per_1000(cpu.cpu + cpu.pg, n),
                "wall_s_per_1000": _per_1000(cpu.wall, n),
            }
            print(name, modes[name], flush=True)
            if accepted != n:
                raise SystemExit(f"{name}: {n - accepted} heartbeats not accepted")
        base = modes["baseline"]["service_cpu_s_per_1000"]
        for name in ("one_by_one", "batched"):
            modes[name]["service_cpu_x_baseline"] = round(modes[name]["service_cpu_s_per_1000"] / base, 1)
        path = write_results(
            args.out,
            {
                "devices": args.devices,
                "rounds": args.rounds,
                "database": "postgresql",
                "at_200_per_s": {
                    name: f"{round(m['total_cpu_s_per_1000'] * 0.2 * 100)} % of a core"
                    for name, m in modes.items()
                },
                "modes": modes,
            },
        )
        print(f"wrote {path}")
    finally:
        if services is not None:
            services.db.dispose()
        drop_pg_database(PG_ADMIN_URL, dbname)
        seaweed.stop()


if __name__ == "__main__":
    main()
