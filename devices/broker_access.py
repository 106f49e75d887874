"""Who may say what on the MQTT broker: Mosquitto's password and ACL files, made from the registry.

Each lone-worker device logs in as itself and may only publish its own five device topics and read
its own ``ack`` and ``command`` topics, so no device can speak for another even before the service
checks signatures. The service account reads every device topic and writes acks and commands.

Passwords are stored in Mosquitto's ``$7$`` form (PBKDF2-HMAC-SHA512), so the registry keeps only
the hash and the files can be regenerated at any time; send the broker SIGHUP to reload them.
Also here: start and stop a private Mosquitto for tests and benchmarks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from devices.broker import TEMPLATE as BROKER_TEMPLATE
from devices.lone_worker_wire import DEVICE_ID_PATTERN, DEVICE_TOPICS, TOPIC_ROOT

DEFAULT_TEMPLATE = BROKER_TEMPLATE  # package data, so an installed service finds it
CONTROL_TOPIC_ROOT = f"{TOPIC_ROOT}/_control"  # service instances only; no device id starts with "_"
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default; device passwords are random 256-bit tokens
_SALT_BYTES = 12
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


@dataclass(frozen=True)
class BrokerAccount:
    """A broker login: the username and its ``$7$`` password hash (never the password)."""

    username: str
    password_hash: str


def generate_password() -> str:
    """A fresh device or service password, printed once at enrolment."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto's ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>`` password hash."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as written by this module or ``mosquitto_passwd``)."""
    parts = password_hash.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def _check_username(name: str, *, device: bool) -> None:
    pattern = _DEVICE_ID_RE if device else _USERNAME_RE
    if not pattern.match(name):
        raise ValueError(f"{'device id' if device else 'username'} {name!r} is not allowed on the broker")


def password_file(accounts: Iterable[BrokerAccount]) -> str:
    """The password file: one ``username:$7$...`` line per account that may log in."""
    lines = []
    seen: set[str] = set()
    for account in accounts:
        _check_username(account.username, device=False)
        if account.username in seen:
            raise ValueError(f"username {account.username!r} appears twice")
        if not account.password_hash.startswith("$7$"):
            raise ValueError(f"password hash for {account.username!r} is not in $7$ form")
        seen.add(account.username)
        lines.append(f"{account.username}:{account.password_hash}")
    return "\n".join(lines) + "\n"


def acl_file(device_ids: Iterable[str], service_username: str) -> str:
    """The ACL file: each device only its own topics; the service reads all and answers each device.

    Devices are listed one by one (not by a ``%u`` pattern) so the file shows exactly who may
    publish, and a login that is not a listed device or the service can do nothing at all.
    """
    _check_username(service_username, device=False)
    lines = [
        "# Generated from the device registry; do not edit (regenerate and send SIGHUP).",
        f"user {service_username}",
        f"topic read {TOPIC_ROOT}/+/#",
        f"topic write {TOPIC_ROOT}/+/ack",
        f"topic write {TOPIC_ROOT}/+/command",
        f"topic write {CONTROL_TOPIC_ROOT}/#",
        "",
    ]
    seen: set[str] = set()
    for device_id in device_ids:
        _check_username(device_id, device=True)
        if device_id == service_username or device_id in seen:
            raise ValueError(f"device id {device_id!r} is duplicated or is the service account")
        seen.add(device_id)
        lines.append(f"user {device_id}")
        lines += [f"topic write {TOPIC_ROOT}/{device_id}/{leaf}" for leaf in DEVICE_TOPICS]
        lines += [
            f"topic read {TOPIC_ROOT}/{device_id}/ack",
            f"topic read {TOPIC_ROOT}/{device_id}/command",
            "",
        ]
    return "\n".join(lines)


def render_broker_config(
    *,
    port: int,
    data_dir: Path,
    password_path: Path,
    acl_path: Path,
    bind_address: str = "127.0.0.1",
    run_as_user: str | None = None,
    template_path: Path = DEFAULT_TEMPLATE,
) -> str:
    """``devices/broker/evidence.conf`` with its fields filled in.

    ``run_as_user``: Mosquitto started as root switches to the ``mosquitto`` user unless told
    otherwise; a private broker whose files live in a root-only directory needs ``root`` here.
    """
    return Template(template_path.read_text()).substitute(
        port=int(port),
        bind_address=bind_address,
        data_dir=str(data_dir),
        password_file=str(password_path),
        acl_file=str(acl_path),
        user_line=f"user {run_as_user}" if run_as_user else "",
    )


@dataclass(frozen=True)
class BrokerFiles:
    config: Path
    password_file: Path
    acl_file: Path
    data_dir: Path
    port: int


def _write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Write via a temporary file and rename, so a reloading broker never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_broker_files(
    directory: Path,
    *,
    devices: Iterable[BrokerAccount],
    service: BrokerAccount,
    port: int,
    bind_address: str = "127.0.0.1",
    run_as_user: str | None = None,
    template_path: Path = DEFAULT_TEMPLATE,
) -> BrokerFiles:
    """Write ``mosquitto.conf``, ``passwords`` and ``acl`` (and a ``data`` dir) into ``directory``."""
    directory = Path(directory).resolve()
    data_dir = directory / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    devices = list(devices)
    files = BrokerFiles(
        config=directory / "mosquitto.conf",
        password_file=directory / "passwords",
        acl_file=directory / "acl",
        data_dir=data_dir,
        port=port,
    )
    write_access_files(files, devices=devices, service=service)
    config = render_broker_config(
        port=port,
        data_dir=data_dir,
        password_path=files.password_file,
        acl_path=files.acl_file,
        bind_address=bind_address,
        run_as_user=run_as_user,
        template_path=template_path,
    )
    _write_atomically(files.config, config, mode=0o644)
    return files


def write_access_files(
    files: BrokerFiles, *, devices: Iterable[BrokerAccount], service: BrokerAccount
) -> None:
    """Rewrite only the password and ACL files (enrolment, disabling); then reload the broker."""
    devices = list(devices)
    _write_atomically(files.password_file, password_file([service, *devices]))
    _write_atomically(files.acl_file, acl_file([d.username for d in devices], service.username))


# --------------------------------------------------------------------------- a private broker


def find_mosquitto() -> str:
    """The ``mosquitto`` executable (often in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise FileNotFoundError("mosquitto is not installed")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once ``host:port`` accepts a connection; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"broker exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} did not accept connections within {timeout} s") from None
            time.sleep(0.01)


class BrokerProcess:
    """A Mosquitto started from ``files``; a context manager that stops it on exit."""

    def __init__(self, files: BrokerFiles, *, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.files = files
        self.host = host
        self.port = files.port
        self.log_path = log_path or files.config.with_name("mosquitto.log")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> BrokerProcess:
        log = open(self.log_path, "ab")  # the child keeps its own copy of the descriptor
        try:
            self._process = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.files.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        try:
            wait_for_port(self.host, self.port, timeout, self._process)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {exc}\n{self.log_tail()}") from exc
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def update_accounts(self, *, devices: Iterable[BrokerAccount], service: BrokerAccount) -> None:
        """Write new password and ACL files and have the running broker re-read them."""
        write_access_files(self.files, devices=devices, service=service)
        self.reload()

    def reload(self) -> None:
        """Re-read the password and ACL files (after :func:`write_broker_files`)."""
        if self._process is None:
            raise RuntimeError("broker is not running")
        self._process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> BrokerProcess:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_private_broker(
    directory: Path,
    *,
    devices: Iterable[BrokerAccount],
    service: BrokerAccount,
    port: int | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> BrokerProcess:
    """Write the files into ``directory`` and start Mosquitto on ``port`` (a free one if None).

    Runs the broker as the current user so it can read files in a private directory.
    """
    run_as = pwd.getpwuid(os.geteuid()).pw_name
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        files = write_broker_files(
            directory, devices=devices, service=service, port=chosen, bind_address=host, run_as_user=run_as
        )
        try:
            return BrokerProcess(files, host=host).start(timeout)
        except RuntimeError:
            if attempt == attempts - 1:  # the free port may have been taken meanwhile: try another
                raise
    raise AssertionError("unreachable")
