"""One large clip through an export, beside one plain S3 GET of the same bytes in the same run.

A body-worn clip of ``--clip-mb`` (default 1,100 MiB): an ffmpeg ``testsrc2`` clip of a few tens of
MB, its bytes repeated to the size asked (the export neither decodes nor parses media, so what the
bytes are does not change what it does), stored and recorded as evidence. Then, in one process
against a private SeaweedFS, each phase timed and its peak resident memory sampled:

- ``raw_get``: the object in one plain S3 GET through the service's own store client, discarded
  (the floor: no check, no zip), first and again last (``raw_get_after``); ratios are to the
  faster of the two;
- ``build``: ``build_package``, the real thing (every media byte read and checked against its
  record, its CRC-32, the layout stored and recorded);
- ``download``: the whole zip through the service's HTTP route (uvicorn in this process, ``curl``
  as the client), every media byte checked again as it streams.

While each phase runs, a prober in a thread of its own asks the store for 256 KiB of the same
object every 100 ms (as a player's seek would) and times each GET to its last byte: a GET naming the
whole object held such GETs up in SeaweedFS (docs/benchmarks.md, "Seeking"). ``idle`` is the same
prober with nothing else running.

Run: ``flock -x /tmp/bench.lock .venv/bin/python bench/export_window.py --name s18-exportwin-br-1``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import PeakRSS, write_results  # noqa: E402
from bench.export import build, download_link, http_download, served_privately  # noqa: E402
from chain_of_custody.evidence import Provenance, record_evidence  # noqa: E402
from chain_of_custody.models import EvidenceItem  # noqa: E402
from ingest.services import Services  # noqa: E402
from tests.media import make_test_clip  # noqa: E402

MiB = 1024 * 1024
PROBE = 256 * 1024
CLIP_CACHE = Path("/tmp/s18-exportwin-testsrc.mp4")


def source_clip() -> bytes:
    """A real H.264/AAC clip (ffmpeg ``testsrc2``, 720p, 20 s at a body-worn camera's rate), made once."""
    if not CLIP_CACHE.exists():
        part = make_test_clip(CLIP_CACHE.with_suffix(".part.mp4"), seconds=20.0, size="1280x720", rate=30)
        part.rename(CLIP_CACHE)
    return CLIP_CACHE.read_bytes()


class _Repeated:
    """``data`` repeated to ``size`` bytes, handed out as read (never held whole)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.left, self.at = data, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self.data) - self.at)
            out += self.data[self.at : self.at + take]
            self.at = (self.at + take) % len(self.data)
        self.left -= n
        return bytes(out)


def store_clip(s: Services, size: int) -> EvidenceItem:
    stored = s.store.put_stream(
        f"bench/{uuid.uuid4()}.mp4",
        _Repeated(source_clip(), size),  # type: ignore[arg-type]
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="video/mp4",
        length=size,
    )
    with s.db.session() as session:
        item = record_evidence(
            session,
            s.ledger,
            stored,
            Provenance(kind="clip", actor="bench", filename="bodyworn.mp4", content_type="video/mp4"),
            received={"by": "bench"},
        )
        session.expunge(item)
    return item


def raw_get(s: Services, item: EvidenceItem) -> int:
    """The object in one plain GET (the store client's own read, 4 MiB chunks), discarded."""
    n = 0
    for block in s.store.read(item.object_key, item.version_id, chunk=4 * MiB):
        n += len(block)
    return n


class Prober:
    """256 KiB GETs of the object at spread offsets every 100 ms, each timed to its last byte."""

    def __init__(self, s: Services, item: EvidenceItem) -> None:
        self.s, self.item = s, item
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            at = (i * 37 * MiB + 1234) % (self.item.size - PROBE)
            t = time.perf_counter()
            got = sum(
                len(b) for b in self.s.store.read(self.item.object_key, self.item.version_id, at, PROBE)
            )
            self.times.append(time.perf_counter() - t)
            assert got == PROBE
            i += 1
            self._stop.wait(0.1)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        ms = sorted(t * 1000 for t in self.times)
        if not ms:
            return {"n": 0}
        return {
            "n": len(ms),
            "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
            "max_ms": round(ms[-1], 1),
        }


def phase(s: Services, item: EvidenceItem, fn: Callable[[], Any]) -> dict[str, Any]:
    """``fn`` timed, with this process's peak RSS over its RSS before, and the prober beside it."""
    before = psutil.Process().memory_info().rss / 1e6
    with Prober(s, item) as probe, PeakRSS(os.getpid(), every=0.005) as rss:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return {
        "seconds": round(seconds, 3),
        "mb_s": round(item.size / MiB / seconds, 1),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(rss.peak_mb, 1),
        "peak_over_before_mb": round(rss.peak_mb - before, 1),
        "probe_256k": probe.summary(),
        "result": out if isinstance(out, int | str) else None,
    }


def idle(s: Services, item: EvidenceItem, seconds: float) -> dict[str, Any]:
    with Prober(s, item) as probe:
        time.sleep(seconds)
    return probe.summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip-mb", type=int, default=1100)
    ap.add_argument("--name", required=True, help="result file name (bench/results/NAME.json)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with served_privately("bench-export-window-", "4GiB") as (s, base_url):
        warm = store_clip(s, 48 * MiB)  # one-time allocations (pools, the first request) out of the way
        raw_get(s, warm)
        http_download(base_url + download_link(s, build(s, [warm.id], False)))
        item = store_clip(s, args.clip_mb * MiB)
        phases: dict[str, Any] = {"idle": idle(s, item, 3.0)}
        phases["raw_get"] = phase(s, item, lambda: raw_get(s, item))
        built: list[Any] = []
        phases["build"] = phase(s, item, lambda: built.append(build(s, [item.id], False)) or item.id)
        url = base_url + download_link(s, built[0])
        phases["download"] = phase(s, item, lambda: http_download(url))
        phases["raw_get_after"] = phase(s, item, lambda: raw_get(s, item))
        assert phases["download"]["result"] == built[0].package_size, "the download is short"
        assert phases["raw_get"]["result"] == phases["raw_get_after"]["result"] == item.size
        raw = min(phases["raw_get"]["seconds"], phases["raw_get_after"]["seconds"])
        for name in ("build", "download"):
            p = phases[name]
            p["seconds_over_raw_get"] = round(p["seconds"] / raw, 3)
            p["peak_over_before_over_raw_get_mb"] = round(
                p["peak_over_before_mb"] - phases["raw_get"]["peak_over_before_mb"], 1
            )
        out = write_results(
            args.name,
            {
                "clip_bytes": item.size,
                "source_clip_bytes": CLIP_CACHE.stat().st_size,
                "phases": phases,
                "uptime_start": uptime_start,
                "load_start": list(load_start),
                "load_end": list(os.getloadavg()),
                "note": "one process; seconds and peak RSS of each phase; raw_get is one plain S3 GET of "
                "the same object in the same run; probe_256k: 256 KiB GETs of the same object every "
                "100 ms during the phase, ms to their last byte",
            },
        )
        for name, p in phases.items():
            print(name, p, flush=True)
        print(f"results: {out}")


if __name__ == "__main__":
    main()
