"""Sixteen docks opening uploads at once: their blocking steps run side by side, not six at a time.

The event loop hands each request's database transactions and store requests to worker threads.
Python's default pool for them has ``min(32, CPUs + 4)`` threads, six on a two-core machine, so the
seventh dock's creation used to wait for one of the first six to finish its store round trip.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.clipkit import clip_metadata, enrol, sha256
from tests.test_dock_capacity import _live

DOCKS = 16


class _Gate:
    """Wraps ``start_multipart``: each call waits until ``DOCKS`` are in it at once (or gives up)."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.inner = store.start_multipart
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.all_in = threading.Event()
        store.start_multipart = self

    def __call__(self, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside == DOCKS:
                self.all_in.set()
        try:
            self.all_in.wait(5)
            return self.inner(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def test_sixteen_creations_make_their_store_requests_at_once(tmp_path: Path, seaweed) -> None:  # type: ignore[no-untyped-def]
    s, server, thread, url, admin = _live(tmp_path, seaweed)
    try:
        gate = _Gate(s.store)
        fleet = enrol(url, admin)
        h = fleet.dock_headers()
        clips = [os.urandom(1000 + i) for i in range(DOCKS)]

        def create(i: int) -> httpx.Response:
            return httpx.post(
                f"{url}/api/v1/dock/uploads",
                headers={
                    **h,
                    "Upload-Length": str(len(clips[i])),
                    "Upload-Metadata": clip_metadata(
                        fleet, sha256(clips[i]), len(clips[i]), filename=f"c{i}.mp4"
                    ),
                },
                timeout=60,
            )

        with ThreadPoolExecutor(DOCKS) as pool:
            answers = list(pool.map(create, range(DOCKS)))
        assert [r.status_code for r in answers] == [201] * DOCKS, [
            r.text for r in answers if r.status_code != 201
        ]
        assert gate.most == DOCKS, (
            f"at most {gate.most} of {DOCKS} creations were in their store request at once"
        )
    finally:
        server.should_exit = True
        thread.join(15)
        s.db.dispose()
