"""Evidence reads checked as they stream, beside the same bytes unchecked and straight from storage.

In one run against a private SeaweedFS, for one object of ``--object-mb``:

- raw read: the object read through the ``minio`` client and discarded (the baseline);
- content, checked: ``GET /api/v1/evidence/{id}/content`` through uvicorn in this process (the
  object hashed with BLAKE3 as it streams, the last block held until it checks);
- content, unchecked: the same route for an administrator reviewing a quarantined copy of the same
  object (``review_reason``): the stream as it was before reads were checked;
- a 1 MiB range from the middle, checked (the whole object is read to check it) and unchecked;
- content, checked and listing: the first download of an object stored without a block list (as
  before lists were kept), which takes the object's block digests as it streams and keeps them
  (``chain_of_custody.later_lists``): a fresh such object for each repeat.

Run: ``flock /tmp/bench.lock .venv/bin/python bench/evidence_read.py [--object-mb 256] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.common import machine, write_results  # noqa: E402
from chain_of_custody.evidence import Provenance, quarantine, record_evidence  # noqa: E402
from storage.embedded import EmbeddedSeaweed  # noqa: E402
from tests.conftest import free_base_port, make_settings, start_server  # noqa: E402
from tests.test_incidents_kit import bearer, user  # noqa: E402


def _timed(fn: Any, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--object-mb", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from ingest.services import build_services

    tmp = Path(tempfile.mkdtemp(prefix="bench-read-"))
    seaweed = EmbeddedSeaweed(tmp / "s3", free_base_port(), "2GiB")
    seaweed.start()
    s = build_services(make_settings(tmp, f"sqlite:///{tmp / 'e.db'}", seaweed))
    size = args.object_mb * 1024 * 1024
    path = tmp / "object.bin"
    with open(path, "wb") as f:
        for _ in range(args.object_mb):
            f.write(os.urandom(1024 * 1024))
    items = []
    for n in range(2 + args.repeat):  # the last ``repeat`` of them without a block list
        with open(path, "rb") as f:
            stored = s.store.put_stream(
                f"bench/{len(items)}",
                f,
                retain_until=datetime.now(UTC) + timedelta(days=1),
                content_type="video/mp4",
                length=size,
            )
        with s.db.session() as session:
            items.append(
                record_evidence(
                    session, s.ledger, stored, Provenance(kind="clip", actor="bench"), block_list=n < 2
                ).id
            )
    with s.db.session() as session:
        quarantine(session, s.ledger, items[1], "bench: the unchecked path", {})
    user(s, "bench", "admin")
    headers = bearer(s, "bench")
    server, thread, url = start_server(s)
    review = {"review_reason": "benchmark of the unchecked path"}

    def get(item: str, params: dict[str, str] | None = None, rng: str | None = None) -> None:
        h = {**headers, **({"Range": rng} if rng else {})}
        params = params or {"reason": "benchmark of the checked path"}  # an original states why
        with httpx.stream(
            "GET", f"{url}/api/v1/evidence/{item}/content", headers=h, params=params, timeout=600
        ) as r:
            assert r.status_code in (200, 206), r.status_code
            n = sum(len(b) for b in r.iter_raw())
        assert n == (1024 * 1024 if rng else size), n

    def raw() -> None:
        n = sum(len(b) for b in s.store.read("bench/0"))
        assert n == size

    unlisted = iter(items[2:])
    mid = size // 2
    rng = f"bytes={mid}-{mid + 1024 * 1024 - 1}"
    try:
        times = {
            "raw_read": _timed(raw, args.repeat),
            "content_checked": _timed(lambda: get(items[0]), args.repeat),
            "content_checked_listing": _timed(lambda: get(next(unlisted)), args.repeat),
            "content_unchecked": _timed(lambda: get(items[1], review), args.repeat),
            "range_1mib_checked": _timed(lambda: get(items[0], rng=rng), args.repeat),
            "range_1mib_unchecked": _timed(lambda: get(items[1], review, rng), args.repeat),
        }
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()
        seaweed.stop()
    mb = args.object_mb
    out = {
        "machine": machine(),
        "object_mb": mb,
        "repeat": args.repeat,
        "seconds_median": times,
        "mb_per_s": {k: round(mb / v, 1) for k, v in times.items() if not k.startswith("range")},
        "ratios": {
            "content_checked_vs_raw_read": round(times["raw_read"] / times["content_checked"], 3),
            "content_checked_vs_unchecked": round(times["content_unchecked"] / times["content_checked"], 3),
            "content_listing_vs_checked": round(
                times["content_checked"] / times["content_checked_listing"], 3
            ),
            "range_checked_vs_unchecked_time": round(
                times["range_1mib_checked"] / times["range_1mib_unchecked"], 1
            ),
        },
    }
    print(out)
    write_results("evidence-read", out)


if __name__ == "__main__":
    main()
