"""Export package throughput and memory, beside reading the same objects straight from storage.

For each incident size (0.5 GB and 2 GB of video by default), in one run against a private SeaweedFS:

- raw read: every object of the incident read through the ``minio`` client and discarded;
- raw copy: the same objects read and put back as one object of unknown length (the floor for any
  export that is itself stored, since the package must be written as well as read);
- export: ``incidents.export.build_package``, the real thing (zip writer thread, pipe, streaming
  multipart upload, hashing, custody entries).

Throughput is media bytes over wall time. Peak resident memory of this process is sampled during
each phase; it must not grow with the package size.

Run: ``.venv/bin/python bench/export.py [--sizes-mb 512 2048] [--object-mb 128]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import PeakRSS, scratch, write_results  # noqa: E402
from chain_of_custody.evidence import Provenance, record_evidence  # noqa: E402
from incidents.export import ExportRequest, OriginalsPermission, build_package, gather_items  # noqa: E402
from ingest.services import Services, build_services  # noqa: E402
from storage.embedded import EmbeddedSeaweed  # noqa: E402
from storage.settings import Settings  # noqa: E402
from tests.conftest import free_base_port  # noqa: E402

MB = 1024 * 1024


class _Synthetic:
    """An incompressible stream of ``size`` bytes, produced block by block (never held whole)."""

    def __init__(self, size: int, seed: bytes) -> None:
        import os

        self.left = size
        self.block = seed + os.urandom(8 * MB - len(seed))

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self.block))
            out += self.block[:take]
            self.block = self.block[take:] + self.block[:take]
        self.left -= n
        return bytes(out)


class _Blocks:
    """File-like view of an iterator of blocks (for the raw copy baseline)."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks = blocks
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.blocks)
            except StopIteration:
                break
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def make_incident(s: Services, total: int, object_size: int) -> list[str]:
    """Clips of ``object_size`` bytes adding up to ``total``, stored and recorded as evidence."""
    retain = datetime.now(UTC) + timedelta(days=1)
    ids = []
    for i in range(max(1, total // object_size)):
        size = min(object_size, total - i * object_size)
        stored = s.store.put_stream(
            f"bench/{uuid.uuid4()}.mp4",
            _Synthetic(size, f"clip-{i}".encode()),  # type: ignore[arg-type]
            retain_until=retain,
            content_type="video/mp4",
            length=size,
        )
        with s.db.session() as session:
            item = record_evidence(
                session,
                s.ledger,
                stored,
                Provenance(
                    kind="clip", actor="bench", filename=f"clip-{i:03d}.mp4", content_type="video/mp4"
                ),
                received={"by": "bench"},
            )
            ids.append(item.id)
    return ids


def raw_read(s: Services, ids: list[str]) -> int:
    with s.db.session() as session:
        items = gather_items(session, ids)
    n = 0
    for it in items:
        for block in s.store.read(it.object_key, it.version_id):
            n += len(block)
    return n


def raw_copy(s: Services, ids: list[str]) -> int:
    with s.db.session() as session:
        items = gather_items(session, ids)

    def blocks() -> Iterator[bytes]:
        for it in items:
            yield from s.store.read(it.object_key, it.version_id)

    stored = s.store.put_stream(
        f"bench-copy/{uuid.uuid4()}",
        _Blocks(blocks()),  # type: ignore[arg-type]
        retain_until=datetime.now(UTC) + timedelta(days=1),
        length=-1,
        part_size=16 * MB,
    )
    return stored.size


def export(s: Services, ids: list[str]) -> tuple[int, int]:
    with s.db.session() as session:
        items = gather_items(session, ids)
    result = build_package(
        s.db,
        s.store,
        s.ledger,
        s.key,
        items,
        ExportRequest(
            export_id=str(uuid.uuid4()),
            incident={"reference": "INC-BENCH"},
            actor="bench",
            retain_until=datetime.now(UTC) + timedelta(days=1),
            originals=OriginalsPermission("bench", "admin", "benchmark of original footage"),
        ),
    )
    return result.media_bytes, result.stored.size


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """Result, seconds, and peak RSS (MB) of this process while ``fn`` ran."""
    with PeakRSS(psutil.Process().pid, every=0.01) as rss:
        t = time.perf_counter()
        out = fn(*args)
        elapsed = time.perf_counter() - t
    return out, elapsed, rss.peak_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--object-mb", type=int, default=128)
    args = ap.parse_args()

    work = scratch("bench-export-")
    seaweed = EmbeddedSeaweed(work / "s3", free_base_port(), "1GiB")
    seaweed.start()
    settings = Settings(
        data_dir=work / "var",
        database_url=f"sqlite:///{work / 'bench.db'}",
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.credentials.access_key,
        s3_secret_key=seaweed.credentials.secret_key,  # type: ignore[arg-type]
        retention_days=1,
        min_free_bytes=0,
    )
    s = build_services(settings)
    cases = []
    try:
        for size_mb in args.sizes_mb:
            ids = make_incident(s, size_mb * MB, args.object_mb * MB)
            baseline_mb = psutil.Process().memory_info().rss / 1e6
            read_bytes, read_s, read_rss = timed(raw_read, s, ids)
            copy_bytes, copy_s, copy_rss = timed(raw_copy, s, ids)
            (media_bytes, package_bytes), export_s, export_rss = timed(export, s, ids)
            case = {
                "media_mb": round(media_bytes / MB, 1),
                "objects": len(ids),
                "package_mb": round(package_bytes / MB, 1),
                "raw_read_mb_s": round(read_bytes / MB / read_s, 1),
                "raw_copy_mb_s": round(copy_bytes / MB / copy_s, 1),
                "export_mb_s": round(media_bytes / MB / export_s, 1),
                "export_s": round(export_s, 2),
                "export_vs_raw_read": round((media_bytes / export_s) / (read_bytes / read_s), 3),
                "export_vs_raw_copy": round((media_bytes / export_s) / (copy_bytes / copy_s), 3),
                "rss_before_mb": round(baseline_mb, 1),
                "peak_rss_raw_read_mb": round(read_rss, 1),
                "peak_rss_raw_copy_mb": round(copy_rss, 1),
                "peak_rss_export_mb": round(export_rss, 1),
                "export_rss_growth_mb": round(export_rss - baseline_mb, 1),
            }
            cases.append(case)
            print(
                f"{case['media_mb']:>8.0f} MB  raw read {case['raw_read_mb_s']:>6.1f} MB/s  "
                f"raw copy {case['raw_copy_mb_s']:>6.1f} MB/s  export {case['export_mb_s']:>6.1f} MB/s "
                f"({case['export_vs_raw_read']:.2f} of raw read, {case['export_vs_raw_copy']:.2f} of raw copy)  "
                f"peak RSS {case['peak_rss_export_mb']:.0f} MB (+{case['export_rss_growth_mb']:.0f})",
                flush=True,
            )
        out = write_results(
            "export",
            {
                "cases": cases,
                "target": "export >= 0.8 of raw read rate; peak memory independent of package size",
                "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
            },
        )
        print(f"results: {out}")
    finally:
        s.close()
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
