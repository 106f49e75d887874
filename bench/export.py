"""Export package throughput and memory, beside reading the same objects straight from storage.

For each incident size (0.5, 2 and 4 GB of video by default), in one run against a private SeaweedFS:

- raw read: every media object of the incident read through the ``minio`` client and discarded;
- raw HTTP read: the same objects fetched straight from storage by ``curl`` (presigned GETs, one
  process), the baseline for the HTTP download, whose client is ``curl`` too;
- build: ``incidents.export.build.build_package``, the real thing (one pass over the media checking each
  object against its recorded digest, BLAKE3, and size and computing its CRC-32, the layout stored
  as the package item, custody entries), both with the SHA-256 of the whole zip computed in that
  pass and without it;
- download: the zip assembled from the layout and the media objects (each media hash re-checked),
  both through the assembling generator alone and through the real HTTP route
  (``GET /api/v1/exports/download/{token}``, uvicorn in this process, ``curl`` as the client).

Throughput is media bytes over wall time. Peak resident memory of this process is sampled during
each phase; it must not grow with the package size.

Run: ``flock /tmp/team/bench.lock .venv/bin/python bench/export.py [--sizes-mb 512 2048 4096] [--repeat 5] [--object-mb 128]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from isal.isal_zlib import crc32  # noqa: E402
from sqlalchemy import select  # noqa: E402

from accounts.models import User  # noqa: E402
from accounts.seals import seal_user  # noqa: E402
from bench.common import PeakRSS, private_store_settings, scratch, write_results  # noqa: E402
from chain_of_custody.evidence import Provenance, record_evidence  # noqa: E402
from chain_of_custody.models import EvidenceItem  # noqa: E402
from incidents.export.assemble import assemble, read_layout  # noqa: E402
from incidents.export.build import ExportResult, build_package  # noqa: E402
from incidents.export.links import link_secret, make_link_token  # noqa: E402
from incidents.export.models import ExportJob, ExportLink  # noqa: E402
from incidents.export.plan import ExportRequest, OriginalsPermission, gather_items  # noqa: E402
from incidents.grants import seal_export_job  # noqa: E402
from incidents.service import IncidentDraft, create_incident  # noqa: E402
from ingest.services import Services, build_services  # noqa: E402
from storage.embedded import EmbeddedSeaweed  # noqa: E402
from tests.conftest import free_base_port, start_server  # noqa: E402

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


def private_services(work: Path, volume: str) -> tuple[EmbeddedSeaweed, Services]:
    """A SeaweedFS of its own (volumes of ``volume``) under ``work``, started, and the services on
    it with SQLite."""
    seaweed = EmbeddedSeaweed(work / "s3", free_base_port(), volume)
    seaweed.start()
    return seaweed, build_services(private_store_settings(work, seaweed, f"sqlite:///{work / 'bench.db'}"))


@contextlib.contextmanager
def served_privately(prefix: str, volume: str) -> Iterator[tuple[Services, str]]:
    """A scratch directory (``prefix``), the services on a SeaweedFS of their own in it
    (:func:`private_services`) and an HTTP server for them: the services and the server's base URL.
    All stopped and removed on the way out, however it is left."""
    work = scratch(prefix)
    seaweed, s = private_services(work, volume)
    server, thread, base_url = start_server(s)
    try:
        yield s, base_url
    finally:
        server.should_exit = True
        thread.join(15)
        s.close()
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)


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


def raw_http_read(s: Services, ids: list[str]) -> int:
    """The same objects straight from storage to curl (presigned GETs, one curl process); bytes received."""
    with s.db.session() as session:
        items = gather_items(session, ids)
    args = ["curl", "-sS", "--fail", "-w", "%{size_download}\\n"]
    for it in items:
        url = s.store.client.presigned_get_object(
            s.store.bucket, it.object_key, expires=timedelta(hours=1), version_id=it.version_id
        )
        args += ["-o", "/dev/null", url]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return sum(int(n) for n in out.stdout.split())


def build(s: Services, ids: list[str], package_hash: bool) -> ExportResult:
    with s.db.session() as session:
        items = gather_items(session, ids)
    return build_package(
        s.db,
        s.store,
        s.ledger,
        s.key,
        items,
        ExportRequest(
            export_id=str(uuid.uuid4()),
            incident={"reference": "INC-BENCH"},
            actor="bench",
            retain_until=datetime.now(UTC) + timedelta(days=2),
            originals=OriginalsPermission("bench", "admin", "benchmark of original footage"),
        ),
        package_hash=package_hash,
    )


def assemble_all(s: Services, export_id: str) -> tuple[int, int]:
    """The whole zip through the assembling generator; (bytes, CRC-32 of what came out)."""
    with s.db.session() as session:
        item = session.get(EvidenceItem, export_id)
        session.expunge(item)
    crc = 0
    n = 0
    for block in assemble(s.store, read_layout(s.store, item)):
        crc = crc32(block, crc)
        n += len(block)
    return n, crc


def download_link(s: Services, result: ExportResult) -> str:
    """A download link for the package, as the API would issue it (job and link rows, signed token)."""
    now = datetime.now(UTC)
    with s.db.session() as session:
        # A link serves only while its issuer may still hand the package out: an administrator, and
        # a real incident of the package.
        if session.scalar(select(User).where(User.username == "bench")) is None:
            issuer = User(username="bench", password_hash="-", role="admin")
            session.add(issuer)
            session.flush()
            seal_user(issuer, s.key)
        draft = IncidentDraft(category="physical_assault", occurred_at=now, site="BENCH")
        incident_id = create_incident(session, draft, "user:bench", ledger=s.ledger).id
        job = ExportJob(
            id=result.export_id,
            incident_id=incident_id,
            requested_by="bench",
            requester_role="admin",
            scope="{}",
            status="ready",
            package_sha256=result.package_sha256,
            package_size=result.package_size,
            filename=result.filename,
        )
        seal_export_job(job, s.key)  # as the route that asks for an export seals it
        session.add(job)
        session.flush()
        link = ExportLink(
            id=str(uuid.uuid4()),
            export_id=result.export_id,
            recipient="bench",
            created_by="user:bench",
            expires_at=now + timedelta(hours=1),
        )
        session.add(link)
        s.ledger.append(  # as the route that issues links records it
            session,
            "link_issued",
            "user:bench",
            item_id=result.export_id,
            details={"link": link.id, "recipient": "bench"},
        )
    return f"/api/v1/exports/download/{make_link_token(link_secret(s.key), link.id, result.export_id, link.expires_at)}"


def http_download(url: str) -> int:
    """The whole zip through the service's HTTP route, fetched by curl (its own process, so the client
    takes no CPU from the service's interpreter); the bytes received."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """Result, seconds, and peak RSS (MB) of this process while ``fn`` ran."""
    with PeakRSS(psutil.Process().pid, every=0.01) as rss:
        t = time.perf_counter()
        out = fn(*args)
        elapsed = time.perf_counter() - t
    return out, elapsed, rss.peak_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--object-mb", type=int, default=128)
    ap.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="rounds per size; each figure is its best round, with every round's ratio kept too",
    )
    args = ap.parse_args()

    cases = []
    with served_privately("bench-export-", "1GiB") as (s, base_url):
        # A small round first, so that one-time allocations (thread pools, the server's first
        # request, interpreter caches) do not count as growth of the first measured size.
        warm = make_incident(s, 64 * MB, 32 * MB)
        raw_read(s, warm)
        warm_pkg = build(s, warm, True)
        assemble_all(s, warm_pkg.export_id)
        http_download(base_url + download_link(s, warm_pkg))
        for size_mb in args.sizes_mb:
            ids = make_incident(s, size_mb * MB, args.object_mb * MB)
            baseline_mb = psutil.Process().memory_info().rss / 1e6
            best: dict[str, tuple[float, float]] = {}
            rounds: dict[str, list[float]] = {}

            def measure(
                name: str,
                fn: Any,
                *fargs: Any,
                best: dict[str, tuple[float, float]] = best,
                rounds: dict[str, list[float]] = rounds,
            ) -> Any:
                out, seconds, peak = timed(fn, *fargs)
                rounds.setdefault(name, []).append(seconds)
                prev = best.get(name)
                best[name] = (
                    min(seconds, prev[0]) if prev else seconds,
                    max(peak, prev[1]) if prev else peak,
                )
                return out

            for _ in range(max(1, args.repeat)):
                read_bytes = measure("read", raw_read, s, ids)
                http_read_bytes = measure("http_read", raw_http_read, s, ids)
                assert http_read_bytes == read_bytes, "curl read less than the objects hold"
                plain = measure("build", build, s, ids, False)
                hashed = measure("hashed", build, s, ids, True)
                gen_bytes, _ = measure("gen", assemble_all, s, hashed.export_id)
                again = assemble_all(s, plain.export_id)
                assert gen_bytes == hashed.package_size and again[0] == plain.package_size
                http_bytes = measure("http", http_download, base_url + download_link(s, hashed))
                assert http_bytes == hashed.package_size, "the HTTP download is short"
            (read_s, read_rss), (plain_s, plain_rss), (hashed_s, hashed_rss) = (
                best["read"],
                best["build"],
                best["hashed"],
            )
            (gen_s, gen_rss), (http_s, http_rss) = best["gen"], best["http"]
            raw_http = read_bytes / best["http_read"][0]
            media = hashed.media_bytes
            raw = read_bytes / read_s

            def rate(seconds: float, media: int = media) -> float:
                return round(media / MB / seconds, 1)

            def ratio(seconds: float, media: int = media, raw: float = raw) -> float:
                return round(media / seconds / raw, 3)

            def round_ratios(
                name: str, base: str = "read", rounds: dict[str, list[float]] = rounds
            ) -> list[float]:
                """Each round's ratio against the raw read of the same round (media bytes both ways)."""
                return [round(b / t, 3) for t, b in zip(rounds[name], rounds[base], strict=True)]

            case = {
                "media_mb": round(media / MB, 1),
                "objects": len(ids),
                "package_mb": round(hashed.package_size / MB, 1),
                "layout_kb": round(hashed.stored.size / 1024, 1),
                "raw_read_mb_s": round(raw / MB, 1),
                "raw_http_read_mb_s": round(raw_http / MB, 1),
                "build_mb_s": rate(plain_s),
                "build_vs_raw_read": ratio(plain_s),
                "build_with_package_hash_mb_s": rate(hashed_s),
                "build_with_package_hash_vs_raw_read": ratio(hashed_s),
                "download_generator_mb_s": rate(gen_s),
                "download_generator_vs_raw_read": ratio(gen_s),
                "download_http_mb_s": rate(http_s),
                "download_http_vs_raw_read": ratio(http_s),
                "download_http_vs_raw_http_read": round(media / http_s / raw_http, 3),
                "per_round_vs_raw_read": {
                    "build": round_ratios("build"),
                    "build_with_package_hash": round_ratios("hashed"),
                    "download_generator": round_ratios("gen"),
                    "download_http": round_ratios("http"),
                    "download_http_vs_raw_http_read": round_ratios("http", "http_read"),
                },
                "rss_before_mb": round(baseline_mb, 1),
                "peak_rss_raw_read_mb": round(read_rss, 1),
                "peak_rss_build_mb": round(max(plain_rss, hashed_rss), 1),
                "peak_rss_download_generator_mb": round(gen_rss, 1),
                "peak_rss_download_http_mb": round(http_rss, 1),
                "rss_growth_mb": round(max(plain_rss, hashed_rss, gen_rss, http_rss) - baseline_mb, 1),
                "export_peak_over_raw_read_peak_mb": round(
                    max(plain_rss, hashed_rss, gen_rss, http_rss) - read_rss, 1
                ),
            }
            cases.append(case)
            print(
                f"{case['media_mb']:>6.0f} MB  raw read {case['raw_read_mb_s']:>6.1f} MB/s  "
                f"build {case['build_mb_s']:>6.1f} ({case['build_vs_raw_read']:.2f})  "
                f"build+zip hash {case['build_with_package_hash_mb_s']:>6.1f} "
                f"({case['build_with_package_hash_vs_raw_read']:.2f})  "
                f"download gen {case['download_generator_mb_s']:>6.1f} ({case['download_generator_vs_raw_read']:.2f})  "
                f"http {case['download_http_mb_s']:>6.1f} ({case['download_http_vs_raw_read']:.2f}; "
                f"{case['download_http_vs_raw_http_read']:.2f} of curl from storage at {case['raw_http_read_mb_s']:.0f})  "
                f"peak RSS {max(case['peak_rss_build_mb'], case['peak_rss_download_http_mb']):.0f} MB (raw read {case['peak_rss_raw_read_mb']:.0f} MB)",
                flush=True,
            )
            print(
                f"         per round against that round's raw read: {case['per_round_vs_raw_read']}",
                flush=True,
            )
        out = write_results(
            "export",
            {
                "cases": cases,
                "target": "export >= 0.8 of raw read rate; peak memory independent of package size",
                "note": "build, build with the whole-zip SHA-256, and download (generator and HTTP) "
                "each as media bytes over wall time, best of --repeat rounds (the raw reads too), "
                "and per round against the raw read of the same round; "
                "ratios against the raw read of the same run, and for the HTTP download also against "
                "curl reading the same objects straight from storage",
                "repeat": args.repeat,
                "load_average": list(os.getloadavg()),
                "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
            },
        )
        print(f"results: {out}")


if __name__ == "__main__":
    main()
