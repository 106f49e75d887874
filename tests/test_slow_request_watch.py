"""The suite's slow-request watch: it shows where a slow request waits without risking the run.

It replaced ``faulthandler.dump_traceback_later``, which reads other threads' frames without the GIL."""

from __future__ import annotations

import io
import threading
import time

from tests.conftest import _SlowRequestWatch, wait_for


def _parked(release: threading.Event) -> None:
    release.wait(timeout=10)


def test_a_request_past_its_time_gets_every_threads_stack_written() -> None:
    out = io.StringIO()
    release = threading.Event()
    parked = threading.Thread(target=_parked, args=(release,), name="parked-worker")
    parked.start()
    watch = _SlowRequestWatch(out, after=0.1)
    try:
        token = watch.start("GET /slow in test_x")
        wait_for(lambda: "still running" in out.getvalue(), timeout=5)
        watch.done(token)
    finally:
        release.set()
        parked.join()
        watch.stop()
    text = out.getvalue()
    assert "--- GET /slow in test_x still running after 0.1 s" in text
    assert "thread parked-worker:" in text
    assert "in _parked" in text


def test_a_request_done_in_time_writes_nothing() -> None:
    out = io.StringIO()
    watch = _SlowRequestWatch(out, after=0.3)
    try:
        watch.done(watch.start("GET /quick in test_y"))
        time.sleep(0.5)  # longer than the watch's time: nothing may be written after it passes
    finally:
        watch.stop()
    assert out.getvalue() == ""
