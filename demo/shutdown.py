"""How the demo stops: whatever signal arrives, and however many, every process it started ends.

The service and the redaction worker run in sessions of their own (a Ctrl-C in the terminal must not
reach them before the demo has said goodbye), so nothing stops them but the demo itself. Three
things make sure it always does:

- the first SIGINT, SIGTERM or SIGHUP asks the demo to stop; any signal that arrives while it is
  already stopping is noted and ignored, so the clean-up is never cut short half way;
- each child gets a bounded time to stop after SIGTERM and is then killed, so a worker busy in a
  long job (or ignoring SIGTERM) cannot hold the shutdown;
- the children are started with the kernel's parent-death signal, and their process ids are
  recorded under the data directory: if the demo itself is killed outright, they are told to stop,
  and the next demo stops whatever an earlier one left behind before it starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


class StopRequests:
    """Turns the first stop signal into ``KeyboardInterrupt`` and absorbs every later one.

    A later signal is noted with a raw write to the output's file descriptor: the handler may run
    in the middle of a ``print``, and re-entering Python's buffered writer would raise."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stopping = False

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def begin_stopping(self) -> None:
        """From here on no signal interrupts anything: the clean-up runs to its end."""
        self.stopping = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            with contextlib.suppress(OSError):
                os.write(self.fd, f"(already stopping; {signal.Signals(signum).name} noted)\n".encode())
            return
        self.stopping = True
        raise KeyboardInterrupt


def die_with_parent() -> None:
    """``preexec_fn`` for a child: the kernel sends it SIGTERM when the demo's process ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the child's process group; SIGKILL once ``grace`` seconds have passed."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def stop_all(children: list[tuple[subprocess.Popen[bytes], float]]) -> None:
    """Ask every child at once, then wait for each within its own grace period."""
    for process, _ in children:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process, grace in children:
        stop_group(process, grace)


class ProcessRecord:
    """The process ids of a running demo, kept under the data directory until it has stopped.

    Each process is kept with a text its command line holds (process ids are reused: a leftover is
    only stopped when the process with that id is still one of ours)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.processes: dict[str, dict[str, int | str]] = {}

    def add(self, name: str, pid: int | None, marker: str) -> None:
        if pid is None:
            return
        self.processes[name] = {"pid": pid, "marker": marker}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.processes))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def stop_leftovers(self, say: Callable[[str], None], grace: float = 20.0) -> None:
        """Stop what an earlier demo, killed before it could clean up, left running."""
        try:
            recorded: dict[str, dict[str, int | str]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        for name, entry in recorded.items():
            pid = int(entry["pid"])
            if not _is_ours(pid, str(entry["marker"])):
                continue
            say(f"Stopping the {name} an earlier demo left running (pid {pid}) ...")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited already
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _is_ours(pid: int, marker: str) -> bool:
    """Still running, and still the process that was recorded (its command line holds ``marker``)."""
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in command
