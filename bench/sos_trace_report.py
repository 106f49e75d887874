"""Where the slowest SOS of a steady phase spent their time (``bench/alarms.py --trace``).

Reads the service's trace (``bench/site/bench_sos_trace.py``: wall-clock events of its network
thread, alarm worker, the worker making alarms whole, tree heads, payload puts, telemetry batches and
garbage collections) and the bench's own per-SOS times, and splits each SOS's publish → ack into:

- ``to_network_thread``: publish → the service's network thread has the message (the broker hop);
- ``to_worker``: → the alarm worker starts handling it (the hand-over between threads);
- ``transaction``: → its transaction has committed (with the worker thread's CPU time and its time
  waiting on a run queue for a CPU over that span, from its schedstat);
- ``to_publish``: → the ack is handed to paho;
- ``ack_out``: → the device has read the ack (paho's write, the broker hop back, the device's read);

and, over the whole publish → ack span, how much of it overlapped a provisional alarm being made
whole, a tree head's put, a payload's put, a telemetry batch, a garbage collection (any process of
the service), a pass of the clock, one of its 30 s sweeps or a housekeeping pass, and the worst raw
broker round trip of the probe pings sent meanwhile. The slowest also name what else began or ended
meanwhile (``meanwhile``: event counts by kind).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEGMENTS = ("to_network_thread", "to_worker", "transaction", "to_publish", "ack_out")
OVERLAPS = {
    "making_whole": ("whole", "wholed"),
    "tree_head_put": ("head", "headed"),
    "tree_head_gather": ("gather", "gathered"),
    "payload_put": ("payload", "payloaded"),
    "telemetry_batch": ("batch", "batched"),
    "gc": ("gc", "gced"),
    "clock_pass": ("pass", "passed"),
    "clock_sweep": ("sweep", "swept"),
    "housekeeping": ("house", "housed"),
}


@dataclass
class Event:
    at: float
    pid: str
    thread: str
    what: str
    detail: str
    on_cpu_ns: int | None
    waiting_ns: int | None


def read_trace(path: Path) -> list[Event]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) != 7:
            continue
        at, pid, thread, what, detail, on_cpu, waiting = parts
        events.append(
            Event(
                float(at),
                pid,
                thread,
                what,
                detail,
                int(on_cpu) if on_cpu != "-" else None,
                int(waiting) if waiting != "-" else None,
            )
        )
    events.sort(key=lambda e: e.at)
    return events


def _intervals(events: list[Event], start: str, end: str) -> list[tuple[float, float, str]]:
    """Start/end pairs, matched per process and thread (a gc callback's start and stop are adjacent)."""
    open_: dict[tuple[str, str], Event] = {}
    out = []
    for e in events:
        if e.what == start:
            open_[(e.pid, e.thread)] = e
        elif e.what == end and (s := open_.pop((e.pid, e.thread), None)) is not None:
            out.append((s.at, e.at, s.detail))
    return out


def _overlap(intervals: list[tuple[float, float, str]], a: float, b: float) -> float:
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e, _ in intervals)


def _meanwhile(events: list[Event], a: float, b: float) -> dict[str, int]:
    """How many of each kind of event (other than the SOS path's own) fell in ``[a, b]``."""
    out: dict[str, int] = {}
    for e in events:
        if a <= e.at <= b and e.what not in ("recv", "handle", "handled", "publish"):
            key = f"{e.what}:{e.detail}" if e.what in ("gc", "sweep") else e.what
            out[key] = out.get(key, 0) + 1
    return out


def breakdown(
    sos: list[dict[str, Any]], trace: Path, pings: list[tuple[float, float]], slowest_share: float = 0.02
) -> dict[str, Any]:
    """``sos``: the steady phase's SOS (device, sent wall time, ack seconds, received, committed);
    ``pings``: the probe's (sent wall time, round trip seconds)."""
    events = read_trace(trace)
    by_device: dict[str, list[Event]] = {}
    for e in events:
        if e.what in ("recv", "handle", "handled", "publish"):
            by_device.setdefault(e.detail, []).append(e)
    intervals = {name: _intervals(events, *pair) for name, pair in OVERLAPS.items()}
    rows = []
    for s in sos:
        if s.get("ack_s") is None:
            continue
        sent, ack_at = s["sent"], s["sent"] + s["ack_s"]
        mine = [e for e in by_device.get(s["device"], []) if sent - 0.01 <= e.at <= ack_at + 0.01]
        first = {}
        for e in mine:
            first.setdefault(e.what, e)
        if not all(k in first for k in ("recv", "handle", "handled", "publish")):
            continue
        recv, handle, handled, publish = (first[k] for k in ("recv", "handle", "handled", "publish"))
        row: dict[str, Any] = {
            "device": s["device"],
            "sent": round(sent, 6),
            "ack_ms": round(1000 * s["ack_s"], 2),
            "to_network_thread": round(1000 * (recv.at - sent), 2),
            "to_worker": round(1000 * (handle.at - recv.at), 2),
            "transaction": round(1000 * (handled.at - handle.at), 2),
            "to_publish": round(1000 * (publish.at - handled.at), 2),
            "ack_out": round(1000 * (ack_at - publish.at), 2),
        }
        if handle.on_cpu_ns is not None and handled.on_cpu_ns is not None:
            row["transaction_on_cpu"] = round((handled.on_cpu_ns - handle.on_cpu_ns) / 1e6, 2)
        if handle.waiting_ns is not None and handled.waiting_ns is not None:
            row["transaction_waiting_for_cpu"] = round((handled.waiting_ns - handle.waiting_ns) / 1e6, 2)
        if "committed" in s:
            row["commit_stamp_after_handle"] = round(1000 * (s["committed"] - handle.at), 2)
        for name, spans in intervals.items():
            row[f"overlap_{name}"] = round(1000 * _overlap(spans, sent, ack_at), 2)
        near = [rtt for t, rtt in pings if sent - 0.05 <= t <= ack_at]
        row["raw_round_trip_max_meanwhile"] = round(1000 * max(near), 2) if near else None
        rows.append(row)
    rows.sort(key=lambda r: r["ack_ms"], reverse=True)
    slow = rows[: max(1, round(slowest_share * len(rows)))]
    for r in slow:
        r["meanwhile"] = _meanwhile(events, r["sent"], r["sent"] + r["ack_ms"] / 1000)
    rest = rows[len(slow) :]
    keys = [*SEGMENTS, "transaction_on_cpu", "transaction_waiting_for_cpu"]
    keys += [f"overlap_{n}" for n in OVERLAPS]

    def medians(rs: list[dict[str, Any]]) -> dict[str, float]:
        return {k: round(statistics.median(r[k] for r in rs if r.get(k) is not None), 2) for k in keys if rs}

    heads = intervals["tree_head_put"]
    return {
        "sos_traced": len(rows),
        "ack_ms_by_overlap": _by_overlap(rows),
        "slowest": slow,
        "slowest_median": medians(slow),
        "others_median": medians(rest),
        "tree_head_puts": len(heads),
        "tree_head_put_ms_p50_max": [
            round(1000 * statistics.median(e - s for s, e, _ in heads), 2) if heads else None,
            round(1000 * max((e - s for s, e, _ in heads), default=0.0), 2),
        ],
        "gc_longest_ms": round(1000 * max((e - s for s, e, _ in intervals["gc"]), default=0.0), 2),
        "clock_sweeps_ms": [
            [round(s, 3), d, round(1000 * (e - s), 2)] for s, e, d in intervals["clock_sweep"]
        ],
        "clock_pass_ms_p50_max": _p50_max(intervals["clock_pass"]),
        "housekeeping_ms_p50_max": _p50_max(intervals["housekeeping"]),
        "making_whole_ms_p50_max": [
            round(1000 * statistics.median(e - s for s, e, _ in intervals["making_whole"]), 2)
            if intervals["making_whole"]
            else None,
            round(1000 * max((e - s for s, e, _ in intervals["making_whole"]), default=0.0), 2),
        ],
    }


def _p50_max(spans: list[tuple[float, float, str]]) -> list[float | None]:
    if not spans:
        return [None, 0.0]
    lengths = [e - s for s, e, _ in spans]
    return [round(1000 * statistics.median(lengths), 2), round(1000 * max(lengths), 2)]


def _by_overlap(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each kind of other work: the SOS whose publish → ack overlapped it and those that did
    not, how many and their ack p50 and worst (milliseconds)."""

    def summary(acks: list[float]) -> dict[str, Any]:
        return {"sos": len(acks), "p50": round(statistics.median(acks), 2) if acks else None,
                "max": max(acks, default=None)}  # fmt: skip

    out = {}
    for name in OVERLAPS:
        key = f"overlap_{name}"
        out[name] = {
            "overlapping": summary([r["ack_ms"] for r in rows if r[key] > 0]),
            "not": summary([r["ack_ms"] for r in rows if r[key] == 0]),
        }
    return out
