"""A seek's baseline straight from storage: the same bytes the player took, asked of the store alone.

``bench/workspace.py --phase seek`` breaks each seek down into the ranges chromium sent between
setting ``currentTime`` and the frame, and the bytes each range had delivered by the frame
(``seek_breakdown``). Here each seek is replayed against the store with no service, no sign-in,
no custody and no browser: one plain S3 ranged GET per range the seek sent, from the range's start
for the bytes it had before the frame, one after another as the player asked them. The time of all
of a seek's GETs is what the store alone takes to hand over what that seek needed, so a seek's
time over it says what the service, the browser and decoding add on top of the store.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import latency_summary

CHUNK = 1024 * 1024


def range_start(header: str) -> int:
    """The first byte a ``Range: bytes=N-`` or ``bytes=N-M`` header asks for."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError(f"not one byte range: {header!r}")
    return int(spec.split("-", 1)[0])


def raw_gets(store: Any, key: str, version_id: str | None, breakdown: list[dict[str, Any]]) -> dict[str, Any]:
    """Each seek's bytes read straight from the store, as plain ranged GETs one after another.

    A seek whose ranges had no byte before the frame (the frame came from bytes already held) has no
    GET and no time here; ``seeks_without_bytes`` counts them. Returns the summary of the seeks'
    times (seconds in, milliseconds out, as ``latency_summary``), each seek's time in order, and the
    GETs and bytes asked."""
    times: list[float | None] = []
    gets = asked = 0
    for seek in breakdown:
        wanted = [
            (range_start(r["range"]), r["bytes_before_frame"])
            for r in seek["requests"]
            if r.get("range") and r["bytes_before_frame"] > 0
        ]
        if not wanted:
            times.append(None)
            continue
        t = time.perf_counter()
        for start, n in wanted:
            got = sum(len(b) for b in store.read(key, version_id, start, n, chunk=CHUNK))
            if got != n:
                raise AssertionError(f"the store gave {got} bytes of {n} at {start}")
        times.append(time.perf_counter() - t)
        gets += len(wanted)
        asked += sum(n for _, n in wanted)
    kept = [t for t in times if t is not None]
    return {
        "summary": latency_summary(kept),
        "seeks_ms": [None if t is None else round(t * 1000, 1) for t in times],
        "seeks_without_bytes": len(times) - len(kept),
        "gets": gets,
        "mib": round(asked / 2**20, 1),
    }


def over(seeks_ms: list[float | None], raw_ms: list[float | None]) -> dict[str, Any]:
    """The seeks' times beside the store's for the same seeks (only seeks that have both): each
    percentile of one over the same percentile of the other, so each figure has its ratio."""
    pairs = [(s, r) for s, r in zip(seeks_ms, raw_ms, strict=False) if s is not None and r is not None]
    seek = latency_summary([s / 1000 for s, _ in pairs])
    raw = latency_summary([r / 1000 for _, r in pairs])
    out: dict[str, Any] = {"seeks": len(pairs), "seek_to_frame": seek, "raw_same_bytes": raw}
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        if seek.get(key) and raw.get(key):
            out[key.replace("_ms", "_ratio")] = round(seek[key] / raw[key], 2)
    return out
