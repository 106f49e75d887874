"""The demo stops cleanly however it is stopped, and leaves nothing running behind it.

A second Ctrl-C or a supervisor's SIGTERM arriving while the demo is already cleaning up must not cut
the clean-up short (the service and its embedded store would stay on their ports and the next
``make run`` would fail); a child that ignores SIGTERM must not hold the shutdown; and a demo killed
outright must not leave its children running, nor stop the next demo from starting.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from demo.shutdown import StopRequests, stop_all
from tests.conftest import _free, free_base_port, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
READY = "Press Ctrl-C to stop."


class RunningDemo:
    """``python -m demo`` in a data directory and on ports of its own, its output read line by line."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.s3_base = free_base_port()
        env = {
            **os.environ,
            "EVIDENCE_DATA_DIR": str(data_dir),
            "EVIDENCE_HTTP_PORT": str(self.http_port),
            "EVIDENCE_EMBEDDED_S3_BASE_PORT": str(self.s3_base),
            "EVIDENCE_DEMO_CLIPS": "0",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "demo"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if text in line:
                return
        raise AssertionError(f"demo never said {text!r}; it said:\n" + "\n".join(self.output[-40:]))

    def children(self) -> dict[str, int]:
        recorded = json.loads((self.data_dir / "demo" / "processes.json").read_text())
        pids = {name: int(entry["pid"]) for name, entry in recorded.items()}
        pids["object store"] = int((self.data_dir / "s3" / "seaweed.pid").read_text())
        return pids

    def ports_free(self) -> bool:
        return _free(self.http_port) and _free(self.s3_base + 3)

    def stop_forcibly(self) -> None:
        """Test clean-up only: whatever is still running goes."""
        for pid in self._known_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def _known_pids(self) -> list[int]:
        try:
            return list(self.children().values())
        except (OSError, ValueError):
            return []


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.split(") ", 1)[1].startswith("Z")


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    running = RunningDemo(tmp_path / "var")
    yield running
    running.stop_forcibly()


@pytest.mark.e2e
def test_signals_during_clean_up_do_not_cut_it_short(demo: RunningDemo) -> None:
    demo.wait_line(READY, 240)
    children = demo.children()
    assert set(children) == {"broker", "service", "redaction worker", "object store"}
    assert not demo.ports_free()

    demo.process.send_signal(signal.SIGINT)
    demo.wait_line("Stopping the demo", 10)
    # A second Ctrl-C and a supervisor's SIGTERM, both while the demo is cleaning up.
    demo.process.send_signal(signal.SIGINT)
    demo.process.send_signal(signal.SIGTERM)
    demo.wait_line("Stopped.", 60)
    assert demo.process.wait(10) == 0
    for name, pid in children.items():
        assert gone(pid), f"the {name} (pid {pid}) is still running"
    assert demo.ports_free()
    assert not (demo.data_dir / "demo" / "processes.json").exists()


@pytest.mark.e2e
def test_a_killed_demo_takes_its_children_with_it_and_the_next_one_starts(tmp_path: Path) -> None:
    first = RunningDemo(tmp_path / "var")
    try:
        first.wait_line(READY, 240)
        children = first.children()
        first.process.kill()  # no chance to clean up
        first.process.wait(10)
        # The kernel's parent-death signal tells the service and worker to stop; the service stops its store.
        for name in ("service", "redaction worker", "object store"):
            pid = children[name]
            wait_for(lambda pid=pid: gone(pid), 40, what=f"the {name} (pid {pid}) to stop")
    except BaseException:
        first.stop_forcibly()
        raise

    # The broker was the demo's own child; the next demo stops it before it starts its own.
    second = RunningDemo(tmp_path / "var")
    try:
        second.wait_line("an earlier demo left running", 60)
        wait_for(lambda: gone(children["broker"]), 30, what="the earlier broker to stop")
        second.wait_line(READY, 240)
        second.process.send_signal(signal.SIGTERM)
        second.wait_line("Stopped.", 60)
        assert second.process.wait(10) == 0
        assert second.ports_free()
    finally:
        second.stop_forcibly()


def test_a_child_that_ignores_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"
    started = time.monotonic()
    stop_all([(stubborn, 1.0), (polite, 5.0)])
    took = time.monotonic() - started
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    assert took < 5.0, f"stopping took {took:.1f} s"


def test_only_the_first_stop_signal_interrupts(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    requests = StopRequests(write_end)
    with pytest.raises(KeyboardInterrupt):
        requests._on_signal(signal.SIGINT, None)
    requests._on_signal(signal.SIGTERM, None)  # while stopping: noted, not raised
    requests._on_signal(signal.SIGINT, None)
    os.close(write_end)
    with os.fdopen(read_end) as said:
        assert said.read().splitlines() == [
            "(already stopping; SIGTERM noted)",
            "(already stopping; SIGINT noted)",
        ]
