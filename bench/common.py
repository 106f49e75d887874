"""Shared benchmark plumbing: a private SeaweedFS, a service subprocess, memory sampling, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.embedded import EmbeddedSeaweed  # noqa: E402
from tests.conftest import (  # noqa: E402
    PG_ADMIN_URL,
    drop_pg_database,
    ensure_postgres,
    free_base_port,
    free_port,
    fresh_pg_database,
)

ADMIN_PASSWORD = "benchmark password 1234"


class PeakRSS:
    """Samples a process's resident memory (with its children) every few milliseconds."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 1e6


class BenchService:
    """The real service as its own process, on a private SeaweedFS and SQLite (or EVIDENCE_BENCH_DB)."""

    def __init__(self, workdir: Path, **env_overrides: str) -> None:
        self.workdir = workdir
        self.seaweed = EmbeddedSeaweed(workdir / "s3", free_base_port(), "1GiB")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env_overrides = env_overrides
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EVIDENCE_DATA_DIR=str(self.workdir / "var"),
            EVIDENCE_DATABASE_URL=os.environ.get(
                "EVIDENCE_BENCH_DB", f"sqlite:///{self.workdir / 'bench.db'}"
            ),
            EVIDENCE_S3_ENDPOINT=self.seaweed.endpoint,
            EVIDENCE_S3_ACCESS_KEY=self.seaweed.credentials.access_key,
            EVIDENCE_S3_SECRET_KEY=self.seaweed.credentials.secret_key,
            EVIDENCE_MIN_FREE_BYTES="0",
            EVIDENCE_LOG_LEVEL="WARNING",
            EVIDENCE_REDACTION_ENABLED="false",
        )
        env.update(self.env_overrides)
        return env

    def start(self) -> None:
        self.seaweed.start()
        env = self.env()
        subprocess.run(
            [sys.executable, "-m", "ingest.cli", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [sys.executable, "-m", "ingest.cli", "user", "add", "admin", "--role", "admin"],
            env={**env, "EVIDENCE_NEW_USER_PASSWORD": ADMIN_PASSWORD},
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=open(self.workdir / "serve.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(self.url)

    def services(self, database_url: str) -> Any:
        """The service's parts in this process, on the same database and store as the running
        service (already migrated): for filling it with rows faster than its API would."""
        from ingest.services import build_services
        from storage.settings import Settings

        settings = Settings(
            data_dir=self.workdir / "var",
            database_url=database_url,
            s3_endpoint=self.seaweed.endpoint,
            s3_access_key=self.seaweed.credentials.access_key,
            s3_secret_key=self.seaweed.credentials.secret_key,
            min_free_bytes=0,
            redaction_enabled=False,
        )
        return build_services(settings, migrate=False)

    def admin_headers(self) -> dict[str, str]:
        return self.headers_for("admin", ADMIN_PASSWORD)

    def headers_for(self, username: str, password: str) -> dict[str, str]:
        """A bearer token for the user, from the service's token route."""
        r = httpx.post(f"{self.url}/api/v1/auth/token", data={"username": username, "password": password})
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def add_user(self, username: str, password: str, role: str, site: str | None = None) -> dict[str, Any]:
        """A user made by the admin through the service's own route (of ``site``, when named): the
        route's answer."""
        user = {"username": username, "password": password, "role": role}
        if site is not None:
            user["site"] = site
        r = httpx.post(f"{self.url}/api/v1/users", json=user, headers=self.admin_headers())
        r.raise_for_status()
        return dict(r.json())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.seaweed.stop()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    out.write_text(json.dumps(data, indent=2))
    return out


def scratch(prefix: str) -> Path:
    base = os.environ.get("EVIDENCE_BENCH_TMP")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    """Count, p50/p95/p99/max and mean of latencies given in seconds, in milliseconds.

    Percentiles interpolate linearly between the nearest ranks (as numpy's default does).
    """
    if not seconds:
        return {"n": 0}
    xs = sorted(seconds)

    def q(p: float) -> float:
        pos = (len(xs) - 1) * p
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def ms(v: float) -> float:
        return round(v * 1000, 2)

    return {
        "n": len(xs),
        "p50_ms": ms(q(0.50)),
        "p95_ms": ms(q(0.95)),
        "p99_ms": ms(q(0.99)),
        "max_ms": ms(xs[-1]),
        "mean_ms": ms(sum(xs) / len(xs)),
    }


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (other work may share the machine)."""
    return [round(v, 2) for v in os.getloadavg()]


class ScratchPostgres:
    """A throwaway database on a PostgreSQL server (trust auth), dropped again by :meth:`drop`."""

    def __init__(self, admin_url: str, prefix: str = "evidence_bench") -> None:
        import uuid

        self.admin_url = admin_url
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name

    def create(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def wait_healthy(url: str, seconds: float = 60) -> None:
    """Wait until the service at ``url`` answers ``/healthz`` (RuntimeError after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("service did not start")


def private_store_settings(work: Path, seaweed: EmbeddedSeaweed, database_url: str) -> Any:
    """Settings for the service's parts in this process, on ``seaweed`` (a store of the benchmark's
    own) and ``database_url``, with its data under ``work``: a day's retention, no free-space floor."""
    from storage.settings import Settings

    return Settings(
        data_dir=work / "var",
        database_url=database_url,
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.credentials.access_key,
        s3_secret_key=seaweed.credentials.secret_key,
        retention_days=1,
        min_free_bytes=0,
    )


@contextlib.contextmanager
def bench_services(prefix: str, database: str) -> Iterator[Any]:
    """The service's parts in this process on a store of their own (under a scratch directory named
    ``prefix``) and a fresh database (``postgres``: a database of its own on the test server, dropped
    on the way out; ``sqlite``: a file beside the store). Closed and stopped however it is left."""
    from ingest.services import build_services

    work = scratch(prefix)
    seaweed = EmbeddedSeaweed(work / "s3", free_base_port(), "1GiB")
    seaweed.start()
    pg_name = None
    if database == "postgres":
        ensure_postgres()
        url, pg_name = fresh_pg_database(PG_ADMIN_URL)
    else:
        url = f"sqlite:///{work / 'bench.db'}"
    s = build_services(private_store_settings(work, seaweed, url))
    try:
        yield s
    finally:
        s.close()
        seaweed.stop()
        if pg_name:
            drop_pg_database(PG_ADMIN_URL, pg_name)


# A benchmark's fill: (its arguments, its scratch directory, the scratch databases' URLs by name)
# -> what the fill prints besides ``work`` and ``fill_s`` (each database's URL, or an object
# holding it as ``url``, under its name).
Fill = Callable[[argparse.Namespace, Path, dict[str, str]], dict[str, Any]]
# A benchmark's timing: (its arguments, what the fill printed) -> (its result JSON's own fields, the
# lines it prints).
Timing = Callable[[argparse.Namespace, dict[str, Any]], tuple[dict[str, Any], list[str]]]


def paired_runs(
    description: str,
    name: str,
    options: Callable[[argparse.ArgumentParser], None],
    fill: Fill,
    timing: Timing,
    code: str,
) -> None:
    """The command of a benchmark timed on a scratch SQLite file and a scratch PostgreSQL database,
    filled once and read by the code of each checkout in turn (``PYTHONPATH``): ``fill`` prints what
    it made as JSON, ``time --fill <that file>`` times the running checkout (the machine's load before
    and after, ``--out`` for the result JSON, ``--label`` for which checkout), ``drop`` drops the
    PostgreSQL database. ``name`` names the scratch directory (``bench-<name>-``) and database;
    ``options`` adds the benchmark's own (sizes, ``-n``); ``code``, a module of the product timed, names
    the checkout in the result JSON."""
    from bench.alarms import PG_ADMIN_URL

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("step", choices=("fill", "time", "drop"))
    ap.add_argument("--fill", help="what the fill printed, as a file (time, drop)")
    options(ap)
    ap.add_argument("--out", help="result JSON (time)")
    ap.add_argument("--label", default="", help="which checkout was timed")
    args = ap.parse_args()
    if args.step == "fill":
        work = scratch(f"bench-{name}-")
        pg = ScratchPostgres(PG_ADMIN_URL, f"evidence_bench_{name.replace('-', '_')}")
        urls = {"sqlite": f"sqlite:///{work / 'bench.db'}", "postgres": pg.create()}
        t = time.perf_counter()
        made = fill(args, work, urls)
        print(json.dumps({"work": str(work), "fill_s": round(time.perf_counter() - t, 1), **made}))
        return
    filled = json.loads(Path(args.fill).read_text())
    if args.step == "drop":
        made = filled["postgres"]
        pg = ScratchPostgres(PG_ADMIN_URL)
        pg.url = made if isinstance(made, str) else made["url"]
        pg.name = pg.url.rsplit("/", 1)[1]
        pg.drop()
        return
    load_before = load_average()
    data, lines = timing(args, filled)
    load_after = load_average()
    for line in lines:
        print(line)
    print(f"load before {load_before}, after {load_after}")
    if args.out:
        out = {
            "label": args.label,
            "code": str(Path(importlib.import_module(code).__file__ or "").resolve().parents[1]),
            **data,
            "load": [load_before, load_after],
            "machine": machine(),
        }
        Path(args.out).write_text(json.dumps(out, indent=2))
