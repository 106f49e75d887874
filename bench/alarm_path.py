"""One SOS at a time, from a signed simulated device through the real Mosquitto and PostgreSQL to its
ack, beside a raw broker round trip measured in the same run, with the CPU each thread spends per SOS.

The real service runs as its own process (``ingest.cli serve``, with the telemetry companion it
starts unless ``--single-process``) from the source tree given by ``--tree`` (default: this one), so
two commits can be measured by the same harness in one series: ``git worktree add /work/wt-before
<commit>`` and ``--tree /work/wt-before``. Its database is a scratch PostgreSQL database migrated by
that tree, its broker a private Mosquitto started from this tree's generated configuration (per-device
logins and rules), and its devices are enrolled by that tree's own enrolment function.

Each round, strictly one thing in flight at a time:

1. **raw round trip**: a plain paho client publishes a QoS 1 message of an SOS's size on a bench-only
   topic; a plain paho echo client in its own process, subscribed the way the service subscribes
   (MQTT v5 shared subscription, QoS 1, TCP_NODELAY), publishes it back; publish → echo received;
2. **SOS**: the next of ``--devices`` enrolled devices (in turn, so none nears its rate) publishes a
   signed SOS; publish → the device receiving the service's signed ``received`` ack (measured by the
   device), publish → the service starting to handle it (``lone_worker_events.received_at``) and →
   the alarm row's commit (a deferred constraint trigger added to the scratch database only stamps
   ``clock_timestamp()`` at COMMIT).

CPU by thread: each Python thread of the service's processes names itself to the operating system
(``bench/site/bench_thread_names.py``, ``bench/site`` on the service's ``PYTHONPATH`` only), and the harness reads
``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on a CPU) before and after an idle phase (no SOS,
same length as the SOS phase) and the SOS phase. CPU per SOS is (SOS phase − idle phase) ÷ SOS, per
thread name; the PostgreSQL backends of the scratch database and the broker are counted the same
way. Load averages are recorded at each phase's start and end (other work may share the machine).

Run: ``flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python -m bench.alarm_path --label after-1
[--tree /path/to/other/worktree]``. Writes ``bench/results/alarm-path-<label>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alarms import (  # noqa: E402
    COMMIT_TRIGGER_SQL,
    PG_ADMIN_URL,
    PROBE_USER,
    SERVICE_USER,
    BrokerAccess,
    EchoProcess,
    RoundTripProbe,
    wait_login,
)
from bench.common import (  # noqa: E402
    BenchService,
    ScratchPostgres,
    latency_summary,
    load_average,
    scratch,
    wait_healthy,
    write_results,
)
from devices.broker_access import (  # noqa: E402
    BrokerAccount,
    BrokerProcess,
    generate_password,
    hash_password,
    start_private_broker,
)
from firmware_simulators.lone_worker import IoLoop, LoneWorkerDevice  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "bench" / "site"  # the benchmarks' sitecustomize, on the service's path
THREAD_NAMES = {"BENCH_THREAD_NAMES": "1"}  # the hook it loads by default

# Run inside the tree under test (its own enrolment function, whichever package holds it).
ENROL = r"""
import base64, inspect, json, sys
from ingest import cli
try:
    services = cli._services(existing=True)
except TypeError:  # before the restructure
    services = cli._services()
from devices.service import add_staff
try:
    from devices.service import enrol_lone_worker
    context = services.ledger
except ImportError:  # before the restructure: the alarm module enrolled, given the services
    from ingest.alarms import enrol_lone_worker
    context = services
wanted = json.loads(sys.stdin.read())
out = {"service_key": base64.b64encode(services.key.public_raw).decode(), "devices": {}}
with services.db.session() as session:
    for n, (device_id, public_key) in enumerate(wanted):
        named = (f"S-{n:05d}", f"Nurse {n}", "nurse", "Community")
        if "ledger" in inspect.signature(add_staff).parameters:  # staff recorded on custody
            staff = add_staff(session, services.ledger, *named, actor="bench")
        else:
            staff = add_staff(session, *named)
        enrolled = enrol_lone_worker(
            session, context, device_id, public_key, "bench", staff_id=staff.id, site="Community"
        )
        out["devices"][device_id] = enrolled.mqtt_password
print("BENCH-ENROLLED " + json.dumps(out), flush=True)
"""


class TreeService(BenchService):
    """The service of another source tree (or this one), its threads named for the CPU meter."""

    def __init__(self, tree: Path, workdir: Path, hooks: dict[str, str] = THREAD_NAMES, **env: str) -> None:
        super().__init__(workdir, **hooks, **env)
        self.tree = tree

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": f"{self.tree}{os.pathsep}{SITE}"}

    def _cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            env=self.env(),
            cwd=self.tree,
            input=stdin,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"{args[:3]} failed in {self.tree}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def prepare(self, devices: list[tuple[str, str]]) -> dict[str, Any]:
        """Storage up, the database migrated by the tree under test, the devices enrolled by it."""
        self.seaweed.start()
        self._cli("-m", "ingest.cli", "migrate")
        out = self._cli("-c", ENROL, stdin=json.dumps(devices))
        line = next(x for x in out.splitlines() if x.startswith("BENCH-ENROLLED "))
        return dict(json.loads(line.removeprefix("BENCH-ENROLLED ")))

    def serve(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "serve", "--port", str(self.port)],
            env=self.env(),
            cwd=self.tree,
            stdout=open(self.workdir / "serve.log", "ab"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        wait_healthy(self.url)


class Probe(RoundTripProbe):
    """The raw round trip, one ping at a time on demand (no pinging thread)."""

    def __init__(self, loop: IoLoop, port: int, password: str) -> None:
        super().__init__(loop, port, password, hz=1.0)
        self._answered = threading.Condition()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        super()._on_message(c, u, msg)
        with self._answered:
            self._answered.notify_all()

    def start(self, timeout: float = 20.0) -> None:
        self.loop.attach(self.client)
        self.loop.call_soon(partial(self.client.connect, "127.0.0.1", self.port, 30))
        if not self._ready.wait(timeout):
            raise RuntimeError("the round-trip probe did not connect and subscribe")

    def ping_wait(self, timeout: float = 5.0) -> float | None:
        self.ping()
        seq = self._seq
        with self._answered:
            if not self._answered.wait_for(lambda: seq in self._received, timeout):
                return None
        with self._lock:
            return self._received[seq] - self._sent[seq][1]


# --------------------------------------------------------------------------- CPU by thread


def _threads(pid: int) -> dict[tuple[int, str], int]:
    """Nanoseconds on a CPU of each thread of ``pid``, by (tid, name)."""
    out: dict[tuple[int, str], int] = {}
    base = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            name = (base / tid / "comm").read_text().strip()
            ns = int((base / tid / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[(int(tid), name)] = ns
    return out


class ThreadCpu:
    """Per-thread CPU of the service and its companion; PostgreSQL's backends of the scratch
    database and the broker as wholes."""

    def __init__(self, service_pid: int, broker_pid: int, pg_database: str) -> None:
        self.service_pid = service_pid
        self.broker_pid = broker_pid
        self.pg_database = pg_database

    def _processes(self) -> dict[str, int]:
        procs = {"service": self.service_pid}
        try:
            for child in psutil.Process(self.service_pid).children(recursive=True):
                if "python" in " ".join(child.cmdline()[:1]).lower() or child.name() == "main":
                    procs[f"companion-{child.pid}"] = child.pid
        except psutil.Error:
            pass
        return procs

    def _pg(self) -> int:
        total = 0
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.info["name"] == "postgres" and f" {self.pg_database} " in f" {cmd} ":
                    t = proc.cpu_times()
                    total += int((t.user + t.system) * 1e9)
            except psutil.Error:
                continue
        return total

    def snapshot(self) -> dict[str, Any]:
        threads: dict[str, dict[tuple[int, str], int]] = {}
        for label, pid in self._processes().items():
            threads["companion" if label.startswith("companion") else label] = _threads(pid)
        broker = sum(_threads(self.broker_pid).values())
        return {"at": time.monotonic(), "threads": threads, "postgres": self._pg(), "broker": broker}

    @staticmethod
    def used(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        """Milliseconds of CPU between two snapshots, by ``process/thread name`` (threads of one
        name summed; a thread born in between counts from zero)."""
        out: dict[str, float] = defaultdict(float)
        for process, threads in b["threads"].items():
            before = a["threads"].get(process, {})
            for key, ns in threads.items():
                out[f"{process}/{key[1]}"] += (ns - before.get(key, 0)) / 1e6
        out["postgres backends"] = (b["postgres"] - a["postgres"]) / 1e6
        out["broker"] = (b["broker"] - a["broker"]) / 1e6
        return dict(out)


# --------------------------------------------------------------------------- the run


def _git_commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _event_times(database_url: str, event_ids: list[str]) -> dict[str, dict[str, float]]:
    import psycopg

    out: dict[str, dict[str, float]] = {}
    with psycopg.connect(database_url) as conn:
        for event_id, received_at in conn.execute(
            "SELECT event_id, received_at FROM lone_worker_events WHERE event_id = ANY(%s)", (event_ids,)
        ):
            out.setdefault(event_id, {})["received"] = received_at.timestamp()
        for event_id, committed_at in conn.execute(
            "SELECT source_event_id, committed_at FROM bench_alarm_commits WHERE source_event_id = ANY(%s)",
            (event_ids,),
        ):
            out.setdefault(event_id, {})["committed"] = committed_at.timestamp()
    return out


class Run:
    def __init__(self, args: argparse.Namespace, hooks: dict[str, str] = THREAD_NAMES, **env: str) -> None:
        self.args = args
        self.hooks = hooks  # the bench/site hooks the service loads (bench/site/sitecustomize.py)
        self.env = env  # more of the service's environment
        self.tree = Path(args.tree).resolve()
        self.work = scratch("bench-alarm-path-")
        self.pg: ScratchPostgres | None = None
        self.broker: BrokerProcess | None = None
        self.svc: TreeService | None = None
        self.echo: EchoProcess | None = None
        self.loop: IoLoop | None = None
        self.probe: Probe | None = None
        self.devices: list[LoneWorkerDevice] = []

    def close(self) -> None:
        for device in self.devices:
            try:
                device.close()
            except Exception:  # noqa: BLE001, S110 - tearing down
                pass
        if self.svc is not None:
            try:
                self.svc.stop()
            except subprocess.TimeoutExpired:
                if self.svc.proc is not None:
                    self.svc.proc.kill()
                self.svc.seaweed.stop()
        if self.echo is not None:
            self.echo.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            try:
                self.pg.drop()
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop scratch database {self.pg.name}: {exc}", file=sys.stderr)
        if self.args.keep:
            print(f"scratch directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _sos_round(run: Run, device: LoneWorkerDevice, gap_s: float) -> dict[str, Any]:
    assert run.probe is not None
    rtt = run.probe.ping_wait()
    time.sleep(gap_s)
    wall = time.time()
    event_id = device.sos()
    try:
        ack = device.wait_ack(event_id, timeout=run.args.ack_timeout_s)
    except TimeoutError:
        ack = None
    time.sleep(gap_s)
    return {"device": device.device_id, "event_id": event_id, "published": wall, "ack_s": ack, "rtt_s": rtt}


def start(run: Run) -> str:
    """The scratch database, broker, service, echo, probe and devices up and connected; the
    database's URL."""
    args, work = run.args, run.work
    run.pg = ScratchPostgres(PG_ADMIN_URL, "evidence_bench_path")
    database_url = run.pg.create()
    service_pw, probe_pw, echo_pw = generate_password(), generate_password(), generate_password()
    service = BrokerAccount(SERVICE_USER, hash_password(service_pw))
    run.broker = start_private_broker(work / "mosquitto", devices=[], service=service)
    access = BrokerAccess(run.broker, service, probe_pw, echo_pw)
    access.write([])
    wait_login(run.broker.port, PROBE_USER, probe_pw)
    client_id = f"evidence-bench-{uuid.uuid4().hex[:8]}"
    run.svc = TreeService(
        run.tree,
        work,
        run.hooks,
        **run.env,
        EVIDENCE_DATABASE_URL=database_url,
        EVIDENCE_MQTT_HOST="127.0.0.1",
        EVIDENCE_MQTT_PORT=str(run.broker.port),
        EVIDENCE_MQTT_USERNAME=SERVICE_USER,
        EVIDENCE_MQTT_PASSWORD=service_pw,
        EVIDENCE_MQTT_CLIENT_ID=client_id,
        EVIDENCE_ALARM_ACK_TIMEOUT_SECONDS="3600",  # nobody plays the operator: no escalations
        EVIDENCE_MQTT_TELEMETRY_PROCESS="false" if args.single_process else "true",
    )
    keys = {f"LW-{i:05d}": Ed25519PrivateKey.generate() for i in range(args.devices)}
    wanted = [
        (d, base64.b64encode(k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode())
        for d, k in keys.items()
    ]  # fmt: skip
    enrolled = run.svc.prepare(wanted)
    passwords: dict[str, str] = enrolled["devices"]
    access.write([BrokerAccount(d, hash_password(p)) for d, p in passwords.items()])
    wait_login(run.broker.port, wanted[0][0], passwords[wanted[0][0]])
    run.svc.serve()
    assert run.svc.proc is not None
    consumers = [client_id] if args.single_process else [client_id, f"{client_id}-telemetry"]
    deadline = time.monotonic() + 30
    while not all(f" as {c} " in run.broker.log_path.read_text(errors="replace") for c in consumers):
        if time.monotonic() > deadline:
            raise RuntimeError("the service's consumers did not connect to the broker")
        time.sleep(0.1)
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in COMMIT_TRIGGER_SQL:
            conn.execute(statement)
    run.echo = EchoProcess(run.broker.port, echo_pw, work / "echo.log")
    run.echo.start()
    run.loop = IoLoop("bench-path")
    run.probe = Probe(run.loop, run.broker.port, probe_pw)
    run.probe.start()
    service_key = base64.b64decode(enrolled["service_key"])
    for device_id, key in keys.items():
        device = LoneWorkerDevice(
            device_id,
            passwords[device_id],
            port=run.broker.port,
            private_key=key,
            service_public_key=service_key,
            battery=90,
            io_loop=run.loop,
            ack_retry_s=None,
        )
        device.connect(timeout=20)
        run.devices.append(device)
    for _ in range(50):  # the echo's subscription
        if run.probe.ping_wait(timeout=0.5) is not None:
            break
    return database_url


def execute(run: Run) -> dict[str, Any]:
    args = run.args
    loads: dict[str, list[float]] = {"start": load_average()}
    database_url = start(run)
    assert run.svc is not None and run.svc.proc is not None and run.pg is not None
    turn = 0

    def next_device() -> LoneWorkerDevice:
        nonlocal turn
        turn += 1
        return run.devices[turn % len(run.devices)]

    print(f"tree {run.tree} at {_git_commit(run.tree)[:12]}; warming up ({args.warmup} SOS)", flush=True)
    for _ in range(args.warmup):
        _sos_round(run, next_device(), args.gap_s)
    time.sleep(args.settle_s)  # provisional alarms made whole, outbox rows marked sent

    cpu = ThreadCpu(run.svc.proc.pid, run.broker.pid or 0, run.pg.name)
    phases: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    for phase in args.order.split(","):
        loads[f"{phase}_start"] = load_average()
        a = cpu.snapshot()
        if phase == "sos":
            for _ in range(args.sos):
                rounds.append(_sos_round(run, next_device(), args.gap_s))
            time.sleep(args.settle_s)  # what each SOS sets going after its ack is counted too
        else:
            time.sleep(args.idle_s or phases.get("sos", {}).get("seconds", 30.0))
        b = cpu.snapshot()
        loads[f"{phase}_end"] = load_average()
        phases[phase] = {"seconds": round(b["at"] - a["at"], 3), "cpu_ms": ThreadCpu.used(a, b)}
    loads["end"] = load_average()

    times = _event_times(database_url, [r["event_id"] for r in rounds])
    acks = [r["ack_s"] for r in rounds if r["ack_s"] is not None]
    rtts = [r["rtt_s"] for r in rounds if r["rtt_s"] is not None]
    to_received, to_commit, handling = [], [], []
    for r in rounds:
        t = times.get(r["event_id"], {})
        if "received" in t:
            to_received.append(t["received"] - r["published"])
        if "committed" in t:
            to_commit.append(t["committed"] - r["published"])
        if "received" in t and "committed" in t:
            handling.append(t["committed"] - t["received"])
    ack = latency_summary(acks)
    raw = latency_summary(rtts)
    sos_s, idle_s = phases["sos"]["seconds"], phases["idle"]["seconds"]
    names = sorted(set(phases["sos"]["cpu_ms"]) | set(phases["idle"]["cpu_ms"]))
    per_sos = {}
    for name in names:
        in_sos = phases["sos"]["cpu_ms"].get(name, 0.0)
        idle_rate = phases["idle"]["cpu_ms"].get(name, 0.0) / idle_s
        per_sos[name] = {
            "ms_per_sos": round((in_sos - idle_rate * sos_s) / max(1, len(rounds)), 3),
            "ms_per_sos_gross": round(in_sos / max(1, len(rounds)), 3),
            "idle_ms_per_s": round(idle_rate, 3),
        }
    service_threads = [n for n in names if n.startswith("service/")]
    return {
        "label": args.label,
        "tree": str(run.tree),
        "commit": _git_commit(run.tree),
        "load_average": loads,
        "settings": {
            "sos": args.sos,
            "warmup": args.warmup,
            "devices": args.devices,
            "gap_s": args.gap_s,
            "settle_s": args.settle_s,
            "order": args.order,
            "service_processes": "alarms only" if args.single_process else "alarms + telemetry companion",
        },
        "sos": {
            "sent": len(rounds),
            "acknowledged": len(acks),
            "ack": ack,
            "publish_to_handling": latency_summary(to_received),
            "publish_to_commit": latency_summary(to_commit),
            "handling_to_commit": latency_summary(handling),
        },
        "raw_round_trip": raw,
        "ratio_to_raw": {
            "p50": round(ack["p50_ms"] / raw["p50_ms"], 2) if acks and rtts else None,
            "p99": round(ack["p99_ms"] / raw["p99_ms"], 2) if acks and rtts else None,
        },
        "cpu_per_sos_ms": per_sos,
        "service_process_cpu_ms_per_sos": round(sum(per_sos[n]["ms_per_sos"] for n in service_threads), 3),
        "phases": phases,
    }


def report(results: dict[str, Any]) -> None:
    s, raw = results["sos"], results["raw_round_trip"]
    print(
        f"\n{results['label']}: {results['commit'][:12]} ({results['tree']}), load {results['load_average']}"
    )
    print(
        f"ack p50 {s['ack'].get('p50_ms')} / p99 {s['ack'].get('p99_ms')} ms "
        f"(raw round trip p50 {raw.get('p50_ms')} / p99 {raw.get('p99_ms')} ms; "
        f"ratio p50 {results['ratio_to_raw']['p50']}, p99 {results['ratio_to_raw']['p99']}); "
        f"publish → handling p50 {s['publish_to_handling'].get('p50_ms')}, handling → commit p50 "
        f"{s['handling_to_commit'].get('p50_ms')} ms; {s['acknowledged']}/{s['sent']} acknowledged"
    )
    print(f"service process CPU per SOS: {results['service_process_cpu_ms_per_sos']} ms")
    print("| thread | CPU ms per SOS (net of idle) | gross | idle ms/s |\n|---|---|---|---|")
    rows = sorted(results["cpu_per_sos_ms"].items(), key=lambda kv: -kv[1]["ms_per_sos_gross"])
    for name, v in rows:
        if v["ms_per_sos_gross"] >= 0.01 or v["idle_ms_per_s"] >= 0.01:
            print(f"| {name} | {v['ms_per_sos']} | {v['ms_per_sos_gross']} | {v['idle_ms_per_s']} |")


def harness_arguments(description: str, results: str, **defaults: Any) -> argparse.ArgumentParser:
    """The arguments of this harness, shared by the benchmarks built on it; ``results`` names their
    results file, ``defaults`` overrides what differs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tree", default=str(ROOT), help="source tree whose service is measured")
    parser.add_argument("--label", default="run", help=f"names the results file: {results}")
    parser.add_argument("--sos", type=int, default=300, help="measured SOS, one at a time")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured SOS first")
    parser.add_argument("--devices", type=int, default=20, help="devices taking turns")
    parser.add_argument("--gap-s", type=float, default=0.2, help="pause after each ping and each ack")
    parser.add_argument("--settle-s", type=float, default=2.0, help="pause after the warm-up and each SOS")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle phase length (0: the SOS phase's)")
    parser.add_argument("--ack-timeout-s", type=float, default=10.0)
    parser.add_argument("--single-process", action="store_true", help="no telemetry companion")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    parser.set_defaults(**defaults)
    return parser


def main() -> None:
    parser = harness_arguments(__doc__.split("\n\n")[0], "alarm-path-<label>.json")
    parser.add_argument("--order", default="sos,idle", help="phases in order (sos, idle)")
    args = parser.parse_args()
    run = Run(args)
    results: dict[str, Any] = {}
    try:
        results = execute(run)
    finally:
        run.close()
    path = write_results(f"alarm-path-{args.label}", {"benchmark": "alarm_path", **results})
    report(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
