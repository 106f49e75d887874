"""The investigator's workspace under a large incident: one incident with 500 linked clips.

The real service runs as its own process on a scratch PostgreSQL database and a private SeaweedFS.
500 clips (small real objects under object lock, recorded as evidence with their custody) are linked
to one incident, as an investigator assigned to it would see them. A real browser (Debian's chromium
through Playwright), signed in as that investigator, loads the incident's page and its timeline
afresh several times:

- **page**: navigation start → first contentful paint (the first render) and → ``load``, and the
  server's share (request sent → last byte of the page), from the browser's own timings;
- **timeline**: the same for ``/incidents/{ref}/timeline`` (every link and the custody of every
  linked clip: some 2,000 lines);
- **baseline, same run**: the API's answer for the same data to the same person
  (``GET /api/v1/incidents/{ref}`` and ``.../history``, timed by an HTTP client), so the figures
  say what the page adds on top of the data.

- **seek** (``--phase seek``): a 2 GB H.264 clip (``--seek-gb``, made with ffmpeg), stored and
  linked to the incident, played in a plain ``<video>`` on ``GET /api/v1/evidence/{id}/content``
  (HTTP Range; every read is on custody, the player's ranges as one viewing (``chain_of_custody.viewings``):
  the first opens it with a ``viewed`` entry covered by a tree head, the rest are rows sealed later; and
  every read is checked against the recorded digest as it streams): from setting ``currentTime`` to the frame shown (``requestVideoFrameCallback``). Baselines,
  same run: the same clip, the same seeks in the same browser, from a plain file server on the same
  machine (HTTP Range, no sign-in, no custody: what the browser and the machine alone take); the
  same bytes each seek took (its ranges, each from its start for the bytes it had by the frame) as
  plain S3 ranged GETs straight from storage, one after another (``bench/raw_seeks.py``: what the
  store alone takes, so each of p50/p95/p99 has a ratio); and 1 MiB range reads at random offsets
  straight from storage and through the route. The ``<video>``
  has ``preload="metadata"`` (``--preload auto`` for the workspace player's own setting); ``--trace
  DIR`` writes chromium's network timing of every range beside each seek's wall time.

Targets: the incident's page under 1 s to first render; seek p95 under 300 ms. Phases are separate
functions keyed by name (``PHASES``): the footage player's own page can be measured by a phase of
its own beside them. Writes bench/results/workspace.json (or ``--out NAME``) and prints a markdown table.
Run it alone: ``flock /tmp/bench.lock .venv/bin/python bench/workspace.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alarms import PG_ADMIN_URL  # noqa: E402
from bench.common import (  # noqa: E402
    BenchService,
    ScratchPostgres,
    latency_summary,
    load_average,
    scratch,
    write_results,
)
from bench.raw_seeks import over, raw_gets  # noqa: E402
from chain_of_custody.evidence import Provenance, record_evidence  # noqa: E402
from chain_of_custody.models import ViewingRange, ViewingSession  # noqa: E402
from devices.service import add_staff  # noqa: E402
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_target  # noqa: E402
from tests.test_console_kit import chromium, new_page, sign_in  # noqa: E402

INVESTIGATOR = "bench_investigator"
PASSWORD = "bench investigator password"
TARGET_FIRST_RENDER_S = 1.0
TARGET_SEEK_P95_MS = 300.0


def populate(services: Any, items: int, investigator_id: int) -> tuple[str, str]:
    """An incident at site NORTH with ``items`` clips linked to it; its id and reference."""
    now = datetime.now(UTC)
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-BENCH", "Bench Wearer", "nurse", "NORTH", actor="bench")
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", now - timedelta(hours=6), "NORTH", title="Large incident"),
            "user:admin",
            ledger=services.ledger,
        )
        assign_investigator(session, services.ledger, incident, investigator_id, "user:admin")
        incident_id, reference = incident.id, incident.reference
    for n in range(items):
        start = now - timedelta(hours=6) + timedelta(seconds=30 * n)
        stored = services.store.put_bytes(
            f"bench/workspace/{n:05d}",
            n.to_bytes(4, "big") * 256,
            retain_until=now + timedelta(days=1),
            content_type="video/mp4",
        )
        with services.db.session() as session:
            item = record_evidence(
                session,
                services.ledger,
                stored,
                Provenance(
                    kind="clip",
                    actor="bench",
                    wearer="S-BENCH",
                    captured_start=start,
                    captured_stop=start + timedelta(seconds=25),
                    content_type="video/mp4",
                    retain_until=now + timedelta(days=1),
                ),
                received={"by": "bench"},
                verified={"ok": True},
            )
            link_target(
                session,
                services.ledger,
                incident_id,
                "evidence",
                item.id,
                "user:admin",
                f"clip {n} of the scene",
            )
    return incident_id, reference


def browser_loads(page: Any, url: str, ready: str, loads: int) -> dict[str, Any]:
    """Load ``url`` afresh ``loads`` times: first contentful paint, load, and the server's share."""
    fcp, loaded, server, rows = [], [], [], 0
    for _ in range(loads):
        page.goto(url, wait_until="load")
        page.wait_for_selector(ready)
        t = page.evaluate(
            """(sel) => {
              const nav = performance.getEntriesByType('navigation')[0];
              const paint = performance.getEntriesByName('first-contentful-paint')[0];
              return {fcp: paint ? paint.startTime : null, load: nav.loadEventEnd,
                      server: nav.responseEnd - nav.requestStart, bytes: nav.transferSize,
                      rows: document.querySelectorAll(sel).length};
            }""",
            ready + " tr",
        )
        if t["fcp"] is not None:
            fcp.append(t["fcp"] / 1000)
        loaded.append(t["load"] / 1000)
        server.append(t["server"] / 1000)
        rows = t["rows"]
    return {
        "loads": loads,
        "rows": rows,
        "first_render": latency_summary(fcp),
        "load_event": latency_summary(loaded),
        "server_page": latency_summary(server),
    }


def api_times(client: httpx.Client, path: str, runs: int) -> dict[str, Any]:
    seconds = []
    for _ in range(runs):
        t = time.perf_counter()
        r = client.get(path)
        seconds.append(time.perf_counter() - t)
        r.raise_for_status()
    return latency_summary(seconds)


def phase_pages(ctx: dict[str, Any], loads: int) -> dict[str, Any]:
    page, base, ref = ctx["page"], ctx["url"], ctx["reference"]
    page.goto(f"{base}/incidents/{ref}")  # one warm-up load (templates compiled, caches filled)
    out = {
        "page": browser_loads(page, f"{base}/incidents/{ref}", "#linked", loads),
        "timeline": browser_loads(page, f"{base}/incidents/{ref}/timeline", "#timeline", loads),
    }
    with httpx.Client(base_url=f"{base}/api/v1", headers=ctx["token"], timeout=60) as api:
        out["baseline_api_incident"] = api_times(api, f"/incidents/{ref}", loads)
        out["baseline_api_history"] = api_times(api, f"/incidents/{ref}/history", loads)
    return out


# --------------------------------------------------------------------------- seeking in a large clip

SEEK_SCRIPT = """async ({src, seeks, seed, preload}) => {
  const v = document.createElement('video');
  v.muted = true; v.preload = preload; v.src = src;
  document.body.append(v);
  await new Promise((ok, bad) => {
    v.addEventListener('loadeddata', ok, {once: true});
    v.addEventListener('error', () => bad(new Error('video error ' + (v.error && v.error.code))), {once: true});
  });
  const out = [];
  let x = seed;
  for (let i = 0; i < seeks; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const target = 1 + (x / 2147483648) * (v.duration - 3);
    const t0 = performance.now();
    const frame = new Promise((ok) => v.requestVideoFrameCallback((now, meta) => ok({now, media: meta.mediaTime})));
    const seeked = new Promise((ok) => v.addEventListener('seeked', () => ok(performance.now()), {once: true}));
    v.currentTime = target;
    const s = await seeked;
    const f = await Promise.race([frame, new Promise((ok) => setTimeout(() => ok(null), 10000))]);
    out.push({target, wall: performance.timeOrigin + t0, seeked_ms: s - t0, frame_ms: f ? f.now - t0 : null, media: f ? f.media : null});
  }
  return {duration: v.duration, seeks: out};
}"""


CLIP_RATE = 30


def clip_keyframes(placed: str) -> list[str]:
    """The x264 keyframe options of the seek phase's clip: ``1s`` a keyframe every second (a camera's
    original as the bench has always made it); ``redaction`` where the redaction's writer places
    them in a redacted copy, the copy the player shows first (``redaction.media.keyframe_args``;
    a checkout whose writer has none passes x264 no option, as its writer did: 250 frames)."""
    if placed == "1s":
        return ["-g", str(CLIP_RATE)]
    from redaction import media

    args = getattr(media, "keyframe_args", None)
    return [] if args is None else list(args(CLIP_RATE, media.EncodeOptions().keyframe_seconds))


def make_big_clip(path: Path, target_bytes: int, keyframes: list[str] | None = None) -> Path:
    """An H.264 MP4 of at least ``target_bytes``: a minute of noisy 720p at 20 Mbit/s with a keyframe
    every second (or as ``keyframes`` says), repeated by stream copy (no re-encoding) and written with
    its index first."""
    from redaction.media import ffmpeg_exe

    ffmpeg = ffmpeg_exe()
    keyframes = ["-g", str(CLIP_RATE)] if keyframes is None else keyframes
    segment = path.with_suffix(".segment.mp4")
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1280x720:rate={CLIP_RATE},noise=alls=30:allf=t",
            "-t",
            "60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "20M",
            "-maxrate",
            "20M",
            "-bufsize",
            "40M",
            *keyframes,
            "-pix_fmt",
            "yuv420p",
            str(segment),
        ],
        check=True,
    )
    loops = max(0, -(-target_bytes // segment.stat().st_size) - 1)
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-stream_loop",
            str(loops),
            "-i",
            str(segment),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
    )
    segment.unlink()
    return path


def phase_seek(ctx: dict[str, Any], loads: int) -> dict[str, Any]:
    """Seek latency in a plain ``<video>`` on the evidence content route (HTTP Range, every read on
    custody as a range of a viewing, bytes checked as they stream) on a clip of ``--seek-gb``: time from setting
    ``currentTime`` to the frame shown (``requestVideoFrameCallback``) and to ``seeked``. Baseline,
    same run: a 1 MiB range read at random offsets straight from storage, and through the route."""
    import random

    services, page, base = ctx["services"], ctx["page"], ctx["url"]
    keyframes = clip_keyframes(ctx.get("keyframes", "1s"))
    clip = make_big_clip(ctx["work"] / "big.mp4", int(ctx["seek_gb"] * 1e9), keyframes)
    size = clip.stat().st_size
    now = datetime.now(UTC)
    t = time.perf_counter()
    with clip.open("rb") as f:
        stored = services.store.put_stream(
            "bench/workspace/big.mp4",
            f,
            retain_until=now + timedelta(days=1),
            content_type="video/mp4",
            length=size,
        )
    stored_s = time.perf_counter() - t
    with services.db.session() as session:
        item = record_evidence(
            session,
            services.ledger,
            stored,
            Provenance(
                kind="clip",
                actor="bench",
                wearer="S-BENCH",
                captured_start=now - timedelta(hours=5),
                content_type="video/mp4",
                retain_until=now + timedelta(days=1),
            ),
            received={"by": "bench"},
            verified={"ok": True},
            block_list=ctx.get("block_list", True),
        )
        incident_id = ctx["incident_id"]
        link_target(
            session, services.ledger, incident_id, "evidence", item.id, "user:admin", "the long recording"
        )
    kept_later: dict[str, Any] = {}
    if ctx.get("lists_kept_later"):  # as ``evidence keep-block-lists --yes`` does after an upgrade
        from chain_of_custody.later_lists import keep_lists

        t = time.perf_counter()
        lines = keep_lists(services.db, services.ledger, services.store, yes=True)
        kept_later = {
            "keep_block_lists_s": round(time.perf_counter() - t, 2),
            "kept": [x.line() for x in lines],
        }
    page.goto(f"{base}/incidents")
    net = _network_log(page)
    found = page.evaluate(
        SEEK_SCRIPT,
        {
            "src": f"/api/v1/evidence/{item.id}/content?reason=benchmark+of+seeking",
            "seeks": ctx["seeks"],
            "seed": 20261202,
            "preload": ctx["preload"],
        },
    )
    net["cdp"].detach()
    breakdown = seek_breakdown(net["events"], found["seeks"])
    if ctx["trace"] is not None:  # chromium's own timing of each range, beside each seek's wall time
        ctx["trace"].mkdir(exist_ok=True, parents=True)
        (ctx["trace"] / "network.json").write_text(json.dumps(net["events"]))
        (ctx["trace"] / "seeks.json").write_text(json.dumps(found["seeks"]))
    frames = [s["frame_ms"] / 1000 for s in found["seeks"] if s["frame_ms"] is not None]
    seeked = [s["seeked_ms"] / 1000 for s in found["seeks"]]
    with services.db.session() as session:  # every range the player asked for, kept in its viewings
        player_ranges = session.scalar(
            select(func.count(ViewingRange.n))
            .join(ViewingSession, ViewingSession.id == ViewingRange.viewing_id)
            .where(ViewingSession.item_id == item.id)
        )
    plain = plain_seeks(page, clip, ctx["seeks"], ctx["preload"])
    plain_breakdown = seek_breakdown(plain["events"], plain["seeks"])
    clip.unlink()
    plain_frames = [s["frame_ms"] / 1000 for s in plain["seeks"] if s["frame_ms"] is not None]
    # The same bytes each seek took, asked of the store alone (plain ranged GETs, bench/raw_seeks.py).
    raw_same = raw_gets(services.store, stored.key, stored.version_id, breakdown)
    rng = random.Random(7)
    raw, routed = [], []
    with httpx.Client(base_url=base, headers=ctx["token"], timeout=60) as client:
        for _ in range(ctx["seeks"]):
            offset = rng.randrange(0, size - 2**20)
            t = time.perf_counter()
            got = b"".join(services.store.read(stored.key, stored.version_id, offset, 2**20))
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = client.get(
                f"/api/v1/evidence/{item.id}/content",
                headers={"Range": f"bytes={offset}-{offset + 2**20 - 1}"},
                params={"reason": "benchmark of seeking"},
            )
            routed.append(time.perf_counter() - t)
            assert r.status_code == 206 and r.content == got
    return {
        "clip_bytes": size,
        "clip_keyframes": {"placed": ctx.get("keyframes", "1s"), "x264": keyframes},
        "block_list": ctx.get("block_list", True),
        "lists_kept_later": kept_later or None,
        "preload": ctx["preload"],
        "clip_seconds": found["duration"],
        "store_put_s": round(stored_s, 1),
        "seek_to_frame": latency_summary(frames),
        "frames_missed": len(seeked) - len(frames),
        "player_ranges": player_ranges,
        "player_ranges_per_seek": round((player_ranges or 0) / max(1, len(seeked)), 2),
        "seek_to_seeked": latency_summary(seeked),
        "baseline_plain_server_seek_to_frame": latency_summary(plain_frames),
        "plain_server_frames_missed": len(plain["seeks"]) - len(plain_frames),
        "baseline_raw_range_1mib": latency_summary(raw),
        "baseline_raw_same_bytes": raw_same["summary"],
        "raw_same_bytes": {k: v for k, v in raw_same.items() if k != "summary"},
        "seek_over_raw_same_bytes": over(
            [_round_ms(s["frame_ms"]) for s in found["seeks"]], raw_same["seeks_ms"]
        ),
        "route_range_1mib": latency_summary(routed),
        # Each seek in order (the first waits for the whole check the first range starts), both servers.
        "seeks_ms": [_round_ms(s["frame_ms"]) for s in found["seeks"]],
        "plain_server_seeks_ms": [_round_ms(s["frame_ms"]) for s in plain["seeks"]],
        # Where each seek's time went, from chromium's network timing and the service's Server-Timing.
        "seek_breakdown_summary": breakdown_summary(breakdown),
        "plain_server_breakdown_summary": breakdown_summary(plain_breakdown),
        "seek_breakdown": breakdown,
        "plain_server_breakdown": plain_breakdown,
    }


def _network_log(page: Any) -> dict[str, Any]:
    """Chromium's own network timing of the page's requests (DevTools protocol): each request's
    ``Range`` and wall time sent, its response, every chunk received, and how it ended (a range the
    player dropped ends ``canceled``)."""
    cdp = page.context.new_cdp_session(page)
    events: list[dict[str, Any]] = []
    for name in (
        "Network.requestWillBeSent",
        "Network.responseReceived",
        "Network.dataReceived",
        "Network.loadingFinished",
        "Network.loadingFailed",
    ):
        cdp.on(name, lambda params, name=name: events.append({"event": name, **params}))
    cdp.send("Network.enable")
    return {"cdp": cdp, "events": events}


def _requests(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each request of the network log on the wall clock (ms since the epoch): when it was sent, its
    ``Range``, when its headers came (and its ``Server-Timing``), every chunk and how it ended."""
    offset: float | None = None  # wall time minus chromium's monotonic timestamps, seconds
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        rid = e.get("requestId")
        if e["event"] == "Network.requestWillBeSent":
            if offset is None:
                offset = e["wallTime"] - e["timestamp"]
            headers = {k.lower(): v for k, v in e["request"]["headers"].items()}
            by_id[rid] = {
                "url": e["request"]["url"],
                "range": headers.get("range"),
                "sent": (e["timestamp"] + offset) * 1000,
                "chunks": [],
            }
            continue
        if rid not in by_id or offset is None:
            continue
        at = (e["timestamp"] + offset) * 1000
        r = by_id[rid]
        if e["event"] == "Network.responseReceived":
            headers = {k.lower(): v for k, v in e["response"]["headers"].items()}
            timing = e["response"].get("timing") or {}
            r["headers_at"] = (
                (timing["requestTime"] + offset) * 1000 + timing["receiveHeadersEnd"]
                if timing.get("receiveHeadersEnd", -1) >= 0
                else at
            )
            if timing.get("sendStart", -1) >= 0:  # before it: waiting for a connection, connecting
                r["send_at"] = (timing["requestTime"] + offset) * 1000 + timing["sendStart"]
            r["status"] = e["response"]["status"]
            r["server"] = _server_timing(headers.get("server-timing", ""))
        elif e["event"] == "Network.dataReceived":
            r["chunks"].append((at, e["dataLength"]))
        elif e["event"] in ("Network.loadingFinished", "Network.loadingFailed"):
            r["ended"] = at
            r["end"] = "canceled" if e.get("canceled") else e.get("errorText", "finished")
    return sorted(by_id.values(), key=lambda r: r["sent"])


def _server_timing(value: str) -> dict[str, float]:
    spans = {}
    for part in value.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name and rest:
            spans[name] = float(rest)
    return spans


def seek_breakdown(events: list[dict[str, Any]], seeks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each seek's ranges (those chromium sent between setting ``currentTime`` and the frame shown):
    their ``Range``, when each was sent and its headers came (time to first byte, and the service's
    own spans), the bytes each had before the frame; bytes still arriving then on ranges of earlier
    seeks; and the time from the seek's last byte before the frame to the frame (decoding)."""
    requests = [r for r in _requests(events) if r["range"] is not None]
    out = []
    for i, seek in enumerate(seeks):
        t0 = seek["wall"]
        until = t0 + (seek["frame_ms"] if seek["frame_ms"] is not None else seek["seeked_ms"])
        mine = [r for r in requests if t0 <= r["sent"] <= until]
        earlier = [r for r in requests if r["sent"] < t0]
        ranges, last = [], None
        for r in mine:
            before = [(at, n) for at, n in r["chunks"] if at <= until]
            if before:
                last = max(last or 0.0, before[-1][0])
            ranges.append(
                {
                    "range": r["range"],
                    "sent_ms": round(r["sent"] - t0, 1),
                    "ttfb_ms": round(r["headers_at"] - r["sent"], 1) if "headers_at" in r else None,
                    "before_send_ms": round(r["send_at"] - r["sent"], 1) if "send_at" in r else None,
                    "server_ms": r.get("server") or None,
                    "first_byte_ms": round(before[0][0] - t0, 1) if before else None,
                    "bytes_before_frame": sum(n for _, n in before),
                    "end": r.get("end"),
                }
            )
        out.append(
            {
                "seek": i,
                "frame_ms": _round_ms(seek["frame_ms"]),
                "ranges": len(mine),
                "requests": ranges,
                "decode_ms": round(until - last, 1) if last is not None else None,
                "earlier_ranges_bytes_in_seek": sum(
                    n for r in earlier for at, n in r["chunks"] if t0 <= at <= until
                ),
            }
        )
    return out


def breakdown_summary(breakdown: list[dict[str, Any]], first: int = 6) -> dict[str, Any]:
    """The breakdown in short, for the first ``first`` seeks and the rest apart: ranges a seek, time
    to first byte of a range, the service's spans (medians), decoding, and seeks by ranges asked."""

    def part(seeks: list[dict[str, Any]]) -> dict[str, Any]:
        reqs = [r for s in seeks for r in s["requests"]]
        spans: dict[str, list[float]] = {}
        for r in reqs:
            for name, ms in (r["server_ms"] or {}).items():
                spans.setdefault(name, []).append(ms)
        ttfb = [r["ttfb_ms"] for r in reqs if r["ttfb_ms"] is not None]
        before_send = [r["before_send_ms"] for r in reqs if r.get("before_send_ms") is not None]
        decode = [s["decode_ms"] for s in seeks if s["decode_ms"] is not None]
        return {
            "seeks": len(seeks),
            "frame_ms": latency_summary([s["frame_ms"] / 1000 for s in seeks if s["frame_ms"] is not None]),
            "ranges_per_seek": round(sum(s["ranges"] for s in seeks) / max(1, len(seeks)), 2),
            "range_ttfb_ms": latency_summary([t / 1000 for t in ttfb]),
            "range_before_send_ms": latency_summary([t / 1000 for t in before_send]),
            "server_span_p50_ms": {k: round(_median(v), 1) for k, v in sorted(spans.items())},
            "server_span_counts": {k: len(v) for k, v in sorted(spans.items())},
            "decode_ms": latency_summary([d / 1000 for d in decode]),
            "kib_kept_per_range_p50": round(_median([r["bytes_before_frame"] / 1024 for r in reqs]), 1)
            if reqs
            else None,
            "earlier_ranges_kib_in_seek": round(
                sum(s["earlier_ranges_bytes_in_seek"] for s in seeks) / 1024, 1
            ),
        }

    return {f"first_{first}": part(breakdown[:first]), "rest": part(breakdown[first:])}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _round_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def plain_seeks(page: Any, clip: Path, seeks: int, preload: str = "metadata") -> dict[str, Any]:
    """The same seeks on the same clip from a plain file server (Starlette's ``FileResponse``, which
    answers HTTP Range) in a thread of this process: the browser's decoding and the machine's load
    without anything of the service."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse
    from starlette.routing import Route

    from tests.conftest import free_port

    async def blank(_: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>plain</title><body></body>")

    async def video(_: Any) -> FileResponse:
        return FileResponse(clip, media_type="video/mp4")

    app = Starlette(routes=[Route("/", blank), Route("/clip.mp4", video)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the plain file server did not start")
            time.sleep(0.05)
        page.goto(f"http://127.0.0.1:{port}/")
        net = _network_log(page)
        found: dict[str, Any] = page.evaluate(
            SEEK_SCRIPT, {"src": "/clip.mp4", "seeks": seeks, "seed": 20261202, "preload": preload}
        )
        net["cdp"].detach()
        found["events"] = net["events"]
        return found
    finally:
        server.should_exit = True
        thread.join(15)


PHASES: dict[str, Callable[[dict[str, Any], int], dict[str, Any]]] = {
    "pages": phase_pages,
    "seek": phase_seek,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument(
        "--phase", action="append", choices=sorted(PHASES), help="phases to run (default all)"
    )
    parser.add_argument("--seek-gb", type=float, default=2.0, help="size of the clip the seek phase plays")
    parser.add_argument("--seeks", type=int, default=40)
    parser.add_argument(
        "--keyframes",
        choices=["1s", "redaction"],
        default="1s",
        help="the seek clip's keyframes: every second (a camera's original), or where the redaction's "
        "writer places them in a redacted copy (the copy the workspace's player shows first)",
    )
    parser.add_argument(
        "--preload",
        choices=["metadata", "auto"],
        default="metadata",
        help="the <video> element's preload (the workspace's player uses auto)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        help="write chromium's network timing of the player's ranges and each seek's wall time here",
    )
    parser.add_argument(
        "--service-trace",
        type=Path,
        help="have the service write what its threads do and its store reads' steps to this file "
        "(bench/site/bench_seek_trace.py)",
    )
    parser.add_argument(
        "--no-block-list",
        action="store_true",
        help="record the seek phase's clip without its block list, as an item stored before lists "
        "were kept: its first range waits for the whole check of the object (the seek path's fallback)",
    )
    parser.add_argument(
        "--lists-kept-later",
        action="store_true",
        help="with --no-block-list: give the clip its block list as `evidence keep-block-lists --yes` "
        "does for items stored before lists were kept (a whole check, the list kept on custody) "
        "before the player opens it",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of a scratch PostgreSQL")
    parser.add_argument("--out", default="workspace")
    args = parser.parse_args()
    work = scratch("bench-workspace-")
    pg = None if args.sqlite else ScratchPostgres(PG_ADMIN_URL, "evidence_bench_workspace")
    database_url = pg.create() if pg else f"sqlite:///{work / 'bench.db'}"
    load_at_start = load_average()
    svc = services = None
    try:
        traced = {}
        if args.service_trace is not None:  # bench-only: on the service's PYTHONPATH alone
            tracer = Path(__file__).resolve().parent / "site"
            traced = {
                "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}{os.pathsep}{tracer}",
                "BENCH_SEEK_TRACE": str(args.service_trace.resolve()),
            }
        svc = BenchService(work, EVIDENCE_DATABASE_URL=database_url, **traced)
        svc.start()
        investigator_id = svc.add_user(INVESTIGATOR, PASSWORD, "investigator")["id"]
        services = svc.services(database_url)
        t = time.perf_counter()
        incident_id, reference = populate(services, args.items, investigator_id)
        print(
            f"{args.items} clips stored and linked to {reference} in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        investigator = svc.headers_for(INVESTIGATOR, PASSWORD)
        results: dict[str, Any] = {}
        with chromium() as browser:
            page = new_page(browser, 1366, 900)
            page.set_default_timeout(120000)
            sign_in(page, svc.url, INVESTIGATOR, PASSWORD, next_path="/incidents")
            ctx = {
                "page": page,
                "url": svc.url,
                "reference": reference,
                "incident_id": incident_id,
                "services": services,
                "work": work,
                "seek_gb": args.seek_gb,
                "block_list": not args.no_block_list,
                "lists_kept_later": args.lists_kept_later,
                "seeks": args.seeks,
                "keyframes": args.keyframes,
                "preload": args.preload,
                "trace": args.trace,
                "token": investigator,
            }
            for name in args.phase or list(PHASES):
                print(f"phase {name}", flush=True)
                try:
                    results[name] = PHASES[name](ctx, args.loads)
                except Exception as exc:  # noqa: BLE001 - a failed phase is a result too, said plainly
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    print(f"phase {name} failed: {results[name]['error']}", flush=True)
        pages = results.get("pages")
        summary: dict[str, Any] = {}
        if pages and "error" not in pages:
            p95 = pages["page"]["first_render"].get("p95_ms", 0) / 1000
            summary = {
                "target_first_render_s": TARGET_FIRST_RENDER_S,
                "page_first_render_p95_s": round(p95, 3),
                "met": p95 < TARGET_FIRST_RENDER_S,
                "page_server_over_api": _ratio(pages["page"]["server_page"], pages["baseline_api_incident"]),
                "timeline_server_over_api": _ratio(
                    pages["timeline"]["server_page"], pages["baseline_api_history"]
                ),
            }
        seek = results.get("seek")
        if seek and "error" not in seek:
            p95 = seek["seek_to_frame"].get("p95_ms", 0)
            summary.update(
                {
                    "target_seek_p95_ms": TARGET_SEEK_P95_MS,
                    "seek_p95_ms": p95,
                    "seek_met": p95 < TARGET_SEEK_P95_MS,
                    "seek_p50_over_plain_server": _ratio(
                        seek["seek_to_frame"], seek["baseline_plain_server_seek_to_frame"]
                    ),
                    "seek_p95_over_plain_server": _ratio(
                        seek["seek_to_frame"], seek["baseline_plain_server_seek_to_frame"], "p95_ms"
                    ),
                    **{
                        f"seek_{q}_over_raw_same_bytes": _ratio(
                            seek["seek_to_frame"], seek["baseline_raw_same_bytes"], f"{q}_ms"
                        )
                        for q in ("p50", "p95", "p99")
                    },
                    "route_over_raw_range_p50": _ratio(
                        seek["route_range_1mib"], seek["baseline_raw_range_1mib"]
                    ),
                }
            )
        data = {
            "items": args.items,
            "database": "sqlite" if args.sqlite else "postgresql",
            "load_average_start": load_at_start,
            "load_average_end": load_average(),
            "phases": results,
            "summary": summary,
        }
        out = write_results(args.out, data)
        print(_table(data))
        print(f"written to {out}")
    finally:
        if services is not None:
            services.close()
        if svc is not None:
            svc.stop()
        if pg is not None:
            pg.drop()


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str = "p50_ms") -> float | None:
    if not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 2)


def _table(data: dict[str, Any]) -> str:
    lines = ["| what | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    for phase, figures in data["phases"].items():
        for name, block in figures.items():
            if not isinstance(block, dict):
                continue
            parts = block.items() if "loads" in block else [("", block)]
            for sub, s in parts:
                if isinstance(s, dict) and "n" in s:
                    label = re.sub(r"_+", " ", f"{phase} {name} {sub}").strip()
                    lines.append(
                        f"| {label} | {s['n']} | {s.get('p50_ms')} | {s.get('p95_ms')} | {s.get('max_ms')} |"
                    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
