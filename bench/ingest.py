"""Dock ingest throughput and service memory, beside a direct ``minio`` put of the same bytes.

For each case, N docks upload N clips at once through the tus API (the dock simulator, one PATCH a
clip); then the same files are put straight into the same SeaweedFS with the ``minio`` client at the
same concurrency. Throughput is total bytes over wall time; the ratio is service / direct. The
service's peak resident memory is sampled throughout.

Run: ``make bench`` or ``.venv/bin/python bench/ingest.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchService, PeakRSS, scratch, write_results  # noqa: E402
from firmware_simulators.camera import CameraIdentity, record_clip  # noqa: E402
from firmware_simulators.dock import Dock  # noqa: E402
from storage.objects import ObjectStore  # noqa: E402

MB = 1024 * 1024
CASES_FULL = [(1, 100 * MB), (1, 2048 * MB), (4, 500 * MB), (16, 100 * MB)]
CASES_QUICK = [(1, 100 * MB), (4, 50 * MB), (16, 20 * MB)]


def make_file(path: Path, size: int) -> None:
    block = os.urandom(8 * MB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            block = block[1:] + block[:1]  # keep blocks distinct


def run_case(
    svc: BenchService,
    store: ObjectStore,
    tokens: list[str],
    clips: list,
    files: list[Path],
    size: int,
    n: int,
) -> tuple[float, float, float]:
    """Upload the clips through the service, then put the same files directly; returns both times and peak RSS."""
    docks = len(clips)

    def upload(i: int) -> None:
        with Dock(svc.url, tokens[i], timeout_s=600) as dock:
            result = dock.upload(clips[i])
            assert result.evidence_status == "stored", result

    def direct(i: int) -> None:
        with open(files[i], "rb") as f:
            store.put_stream(
                f"bench/direct/{n}-{i}",
                f,
                retain_until=datetime.now(UTC) + timedelta(days=1),
                length=size,
                part_size=16 * MB,
            )

    assert svc.proc is not None
    with PeakRSS(svc.proc.pid) as mem, ThreadPoolExecutor(docks) as pool:
        t = time.perf_counter()
        list(pool.map(upload, range(docks)))
        service_s = time.perf_counter() - t
    with ThreadPoolExecutor(docks) as pool:
        t = time.perf_counter()
        list(pool.map(direct, range(docks)))
        direct_s = time.perf_counter() - t
    return service_s, direct_s, mem.peak_mb


def save(rows: list[dict], quick: bool) -> Path:
    return write_results("ingest" + ("-quick" if quick else ""), {
        "target": {"ratio_min": 0.85, "peak_rss_mb_max_2gb": 250},
        "baseline": "minio put_object of the same files to the same SeaweedFS, same concurrency, 16 MiB parts",
        "rows": rows,
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", help="run only cases DOCKSxMB, e.g. 16x100,1x2048")
    args = parser.parse_args()
    cases = CASES_QUICK if args.quick else CASES_FULL
    if args.only:
        wanted = {tuple(int(v) for v in c.split("x")) for c in args.only.split(",")}
        cases = [(d, size) for d, size in cases if (d, size // MB) in wanted]
    work = scratch("bench-ingest-")
    svc = BenchService(work)
    svc.start()
    rows = []
    try:
        admin = svc.admin_headers()
        httpx.post(
            f"{svc.url}/api/v1/staff", json={"id": "S-B", "name": "Bench"}, headers=admin
        ).raise_for_status()
        cam = CameraIdentity.generate("CAM-B")
        httpx.post(
            f"{svc.url}/api/v1/devices/cameras",
            json={"id": "CAM-B", "public_key": cam.public_key_b64(), "staff_id": "S-B"},
            headers=admin,
        ).raise_for_status()
        tokens = []
        for i in range(16):
            r = httpx.post(f"{svc.url}/api/v1/devices/docks", json={"id": f"DOCK-{i}"}, headers=admin)
            r.raise_for_status()
            tokens.append(r.json()["token"])
        store = ObjectStore(
            svc.seaweed.endpoint,
            svc.seaweed.credentials.access_key,
            svc.seaweed.credentials.secret_key,
            bucket="evidence",
            staging_bucket="evidence-staging",
            timeout_seconds=600,
        )
        start = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
        n = 0
        for docks, size in cases:
            files = []
            for i in range(docks):
                p = work / f"clip-{docks}-{size}-{i}.mp4"
                make_file(p, size)
                files.append(p)
            clips = []
            for p in files:
                n += 1
                t0 = start + timedelta(minutes=n)
                clips.append(record_clip(cam, p, "S-B", t0, t0 + timedelta(minutes=1), write_sidecar=False))

            service_s, direct_s, peak_mb = run_case(svc, store, tokens, clips, files, size, n)
            total = docks * size
            row = {
                "docks": docks,
                "clip_mb": size // MB,
                "total_mb": total // MB,
                "service_mb_s": round(total / MB / service_s, 1),
                "direct_put_mb_s": round(total / MB / direct_s, 1),
                "ratio": round(direct_s / service_s, 3),
                "service_peak_rss_mb": round(peak_mb, 1),
            }
            rows.append(row)
            print(row, flush=True)
            save(rows, args.quick or bool(args.only))
            for p in files:
                p.unlink()
    finally:
        svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = write_results(
        "ingest" + ("-quick" if args.quick else ""),
        {
            "target": {"ratio_min": 0.85, "peak_rss_mb_max_2gb": 250},
            "rows": rows,
        },
    )
    print("\n| docks | clip MB | service MB/s | direct put MB/s | ratio | service peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['docks']} | {r['clip_mb']} | {r['service_mb_s']} | {r['direct_put_mb_s']} | {r['ratio']} | "
            f"{r['service_peak_rss_mb']} |"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
