"""The control room's screen under load: from a device's SOS to the alarm drawn on the operator's board.

The real service runs as its own process on a scratch PostgreSQL database and a private SeaweedFS,
with its telemetry companion, against a private Mosquitto from the project's generated
configuration. 2,000 simulated devices (enrolled with the service's own enrolment, logged in with
the passwords it issued) send a signed heartbeat every 10 s, spread over the period. A real browser
(Debian's chromium through Playwright) is signed in as an operator with the alarm board open.

- **steady**: SOS from distinct random devices, 2 a second. For each: publish → the device holding
  the service's signed ``received`` ack (timed by the device: the baseline, same run, same SOS) and
  publish → the alarm's row drawn on the board (timed in the page: the board's script notes the
  wall-clock time it first drew each alarm; same machine, same clock as the publisher).
- **500 open**: more SOS until 500 alarms are open; then the board is loaded afresh several times
  (navigation start → the board drawn, and the server's answer time for the page alone), and
  single SOS arrive one a second: publish → drawn, and the time the page took to apply the event
  (parse, place the row, recount) timed in the page.

Target: publish → drawn p99 ≤ 250 ms at 2,000 devices. Writes bench/results/console.json (or
``--out NAME``) and prints a markdown table. Run it alone: ``flock /tmp/bench.lock .venv/bin/python
bench/console.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alarms import (  # noqa: E402
    PG_ADMIN_URL,
    SERVICE_USER,
    BenchFleet,
    SosRecord,
    collect_acks,
    enrol,
    fd_headroom,
    send_sos,
    wait_login,
    wait_online,
)
from bench.common import (  # noqa: E402
    BenchService,
    ScratchPostgres,
    latency_summary,
    load_average,
    scratch,
    write_results,
)
from devices.broker_access import BrokerAccount, generate_password, hash_password, start_private_broker  # noqa: E402
from devices.service import broker_accounts  # noqa: E402
from tests.test_console_kit import chromium, new_page, sign_in  # noqa: E402

OPERATOR = "bench-operator"
OPERATOR_PASSWORD = "bench operator password"


def cpu_by_part(service_pid: int) -> dict[str, float]:
    """CPU seconds so far of the benchmark's parts: the service, its telemetry companion, the
    board's chromium renderers, the rest of chromium, and this process (the devices and the broker
    client side)."""
    import psutil

    out = {"service": 0.0, "telemetry_companion": 0.0, "board_renderer": 0.0, "chromium_other": 0.0}

    def seconds(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    try:
        service = psutil.Process(service_pid)
        out["service"] = seconds(service)
        for child in service.children(recursive=True):
            if "alarm-worker" in " ".join(child.cmdline()):
                out["telemetry_companion"] += seconds(child)
    except psutil.Error:
        pass
    me = psutil.Process()
    out["bench_process"] = seconds(me)
    for child in me.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
            if "chrom" in line:
                out["board_renderer" if "--type=renderer" in line else "chromium_other"] += seconds(child)
        except psutil.Error:
            continue
    return out


def cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Percent of one core each part used between two :func:`cpu_by_part` readings."""
    return {k: round(100 * (after[k] - before.get(k, 0.0)) / wall, 1) for k in after}


def drawn_times(page: Any) -> dict[str, float]:
    """Event id → when the board first drew its alarm (seconds since the epoch, the page's clock)."""
    rows = page.evaluate("window.boardTimings.drawn")
    return {r["event_id"]: r["at"] / 1000 for r in rows if r.get("event_id")}


def wait_drawn(page: Any, records: list[SosRecord], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    wanted = {r.event_id for r in records}
    while True:
        drawn = drawn_times(page)
        if wanted <= drawn.keys() or time.monotonic() > deadline:
            return drawn
        time.sleep(0.25)


def phase_figures(records: list[SosRecord], drawn: dict[str, float]) -> dict[str, Any]:
    to_board = [drawn[r.event_id] - r.wall_sent for r in records if r.event_id in drawn]
    to_ack = [r.ack_s for r in records if r.ack_s is not None]
    board, ack = latency_summary(to_board), latency_summary(to_ack)
    out = {
        "sos": len(records),
        "drawn": len(to_board),
        "not_drawn": len(records) - len(to_board),
        "unacknowledged": len(records) - len(to_ack),
        "publish_to_drawn": board,
        "publish_to_device_ack": ack,
    }
    if board.get("n") and ack.get("n"):
        out["drawn_minus_ack_p50_ms"] = round(board["p50_ms"] - ack["p50_ms"], 2)
        out["drawn_minus_ack_p99_ms"] = round(board["p99_ms"] - ack["p99_ms"], 2)
    return out


def first_render(page: Any, url: str, loads: int) -> dict[str, Any]:
    """Load the board afresh ``loads`` times: navigation start → the board drawn (its script's mark),
    and the server's share (request sent → last byte of the page)."""
    drawn_ms, server_ms, rows = [], [], 0
    for _ in range(loads):
        page.goto(f"{url}/board")
        page.wait_for_selector("#connection[data-state=live]", timeout=60000)
        timing = page.evaluate(
            """() => {
              const nav = performance.getEntriesByType('navigation')[0];
              const mark = performance.getEntriesByName('board-drawn')[0];
              return {drawn: mark.startTime, server: nav.responseEnd - nav.requestStart,
                      rows: document.querySelectorAll('#alarm-rows tr').length};
            }"""
        )
        drawn_ms.append(timing["drawn"] / 1000)
        server_ms.append(timing["server"] / 1000)
        rows = timing["rows"]
    return {
        "loads": loads,
        "rows": rows,
        "to_drawn": latency_summary(drawn_ms),
        "server_page": latency_summary(server_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    parser.add_argument("--steady", type=int, default=200, help="SOS in the steady phase")
    parser.add_argument("--rate", type=float, default=2.0, help="SOS a second in the steady phase")
    parser.add_argument("--open", type=int, default=500, help="open alarms for the large-board phase")
    parser.add_argument("--singles", type=int, default=30, help="single SOS on the large board")
    parser.add_argument("--loads", type=int, default=5, help="fresh loads of the large board")
    parser.add_argument("--out", default="console")
    args = parser.parse_args()
    if args.open < args.steady:
        parser.error("--open must be at least --steady")
    work = scratch("bench-console-")
    pg = ScratchPostgres(PG_ADMIN_URL, "evidence_bench_console")
    database_url = pg.create()
    load_at_start = load_average()
    broker = svc = fleet = services = None
    try:
        service_pw = generate_password()
        service = BrokerAccount(SERVICE_USER, hash_password(service_pw))
        broker = start_private_broker(work / "mosquitto", devices=[], service=service)
        client_id = f"evidence-bench-{uuid.uuid4().hex[:8]}"
        svc = BenchService(
            work,
            EVIDENCE_DATABASE_URL=database_url,
            EVIDENCE_MQTT_HOST="127.0.0.1",
            EVIDENCE_MQTT_PORT=str(broker.port),
            EVIDENCE_MQTT_USERNAME=SERVICE_USER,
            EVIDENCE_MQTT_PASSWORD=service_pw,
            EVIDENCE_MQTT_CLIENT_ID=client_id,
            EVIDENCE_ALARM_ACK_TIMEOUT_SECONDS="3600",  # nobody plays the operator: no escalations mid-run
            EVIDENCE_DEVICE_OFFLINE_AFTER_SECONDS="86400",
            EVIDENCE_MQTT_TELEMETRY_PROCESS="true",
        )
        svc.start()
        svc.add_user(OPERATOR, OPERATOR_PASSWORD, "operator")
        services = svc.services(database_url)
        assert args.devices <= fd_headroom(), "raise the open-files limit"
        run = SimpleNamespace(services=services, creds=[])
        t = time.perf_counter()
        enrol(run, args.devices)  # type: ignore[arg-type]
        print(f"enrolled {len(run.creds)} devices in {time.perf_counter() - t:.1f} s", flush=True)
        with services.db.session() as session:
            broker.update_accounts(devices=broker_accounts(session), service=service)
        wait_login(broker.port, run.creds[-1].device_id, run.creds[-1].password)
        fleet = BenchFleet(broker.port, services.key.public_raw)
        fleet.activate(fleet.add(run.creds))
        wait_online(services, args.devices, 180)
        fleet.resume(args.heartbeat_s)
        print(f"{args.devices} devices connected and beating", flush=True)
        time.sleep(args.heartbeat_s)  # one full heartbeat period before anything is measured

        with chromium() as browser:
            page = new_page(browser)
            page.set_default_timeout(60000)
            sign_in(page, svc.url, OPERATOR, OPERATOR_PASSWORD, next_path="/board")
            page.wait_for_selector("#connection[data-state=live]")
            devices = random.Random(15).sample(fleet.active, args.open + args.singles + 10)
            warm = send_sos(fleet, devices[:10], "warm-up", args.rate)
            collect_acks(fleet, warm, 30)
            wait_drawn(page, warm, 30)

            assert svc.proc is not None
            cpu_before, cpu_started = cpu_by_part(svc.proc.pid), time.perf_counter()
            steady = send_sos(fleet, devices[10 : 10 + args.steady], "steady", args.rate)
            cpu_share_steady = cpu_share(
                cpu_before, cpu_by_part(svc.proc.pid), time.perf_counter() - cpu_started
            )
            collect_acks(fleet, steady, 30)
            steady_figures = phase_figures(steady, wait_drawn(page, steady, 30))
            steady_figures["cpu_percent_of_a_core"] = cpu_share_steady
            print(f"steady: {steady_figures}", flush=True)

            more = send_sos(fleet, devices[10 + args.steady : 10 + args.open], "fill", 10.0)
            collect_acks(fleet, more, 60)
            wait_drawn(page, more, 60)
            big = first_render(page, svc.url, args.loads)
            print(f"500 open, fresh loads: {big}", flush=True)
            page.evaluate("window.boardTimings.applyMs.length = 0")
            singles = send_sos(fleet, devices[10 + args.open : 10 + args.open + args.singles], "single", 1.0)
            collect_acks(fleet, singles, 30)
            single_figures = phase_figures(singles, wait_drawn(page, singles, 30))
            apply_ms = page.evaluate("window.boardTimings.applyMs")
            single_figures["apply_in_page"] = latency_summary([v / 1000 for v in apply_ms])
            single_figures["open_alarms"] = page.locator("#alarm-rows tr").count()
            print(f"500 open, single SOS: {single_figures}", flush=True)
            assert not page.errors, page.errors
        results = {
            "devices": args.devices,
            "heartbeat_s": args.heartbeat_s,
            "stream_poll_s": svc.env().get("EVIDENCE_ALARM_STREAM_POLL_SECONDS", "0.1 (default)"),
            "load_average": {"start": load_at_start, "end": load_average()},
            "steady": {"rate_per_s": args.rate, **steady_figures},
            "large_board": {"open_alarms": args.open, "fresh_load": big, "single_sos": single_figures},
            "target": "publish -> drawn p99 <= 250 ms",
        }
        path = write_results(args.out, results)
        report(results)
        print(f"wrote {path}")
    finally:
        if fleet is not None:
            fleet.close()
        if services is not None:
            services.db.dispose()
        if svc is not None:
            svc.stop()
        if broker is not None:
            broker.stop()
        pg.drop()


def report(results: dict[str, Any]) -> None:
    s = results["steady"]
    b = results["large_board"]
    one = b["single_sos"]

    def pair(summary: dict[str, Any]) -> str:
        return f"{summary.get('p50_ms', '–')} / {summary.get('p99_ms', '–')} ms"

    print()
    print("| phase | SOS | publish→drawn p50 / p99 | publish→device ack p50 / p99 | not drawn |")
    print("|---|---|---|---|---|")
    print(
        f"| steady, {s['rate_per_s']:g}/s, {results['devices']:,} devices | {s['sos']} | "
        f"**{pair(s['publish_to_drawn'])}** | {pair(s['publish_to_device_ack'])} | {s['not_drawn']} |"
    )
    print(
        f"| one a second, {b['open_alarms']} open | {one['sos']} | **{pair(one['publish_to_drawn'])}** | "
        f"{pair(one['publish_to_device_ack'])} | {one['not_drawn']} |"
    )
    fresh = b["fresh_load"]
    print()
    print(
        f"Board with {fresh['rows']} open alarms, {fresh['loads']} fresh loads: navigation → drawn "
        f"p50 {fresh['to_drawn']['p50_ms']} ms (max {fresh['to_drawn']['max_ms']} ms); the page from the "
        f"server p50 {fresh['server_page']['p50_ms']} ms. Applying one new alarm in the page: p50 "
        f"{one['apply_in_page'].get('p50_ms')} ms, max {one['apply_in_page'].get('max_ms')} ms."
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
