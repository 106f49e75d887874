"""Who may log in to the MQTT broker, and a private Mosquitto for tests and benchmarks.

Mosquitto's password file says who may log in; :mod:`devices.broker_rules` says what each login may
do (Mosquitto's dynamic-security plugin). Both are generated from the registry: each lone-worker device
logs in as itself, with its own client id, and may only publish its own five device topics and read
its own ``ack`` and ``command`` topics, so no device can speak for another even before the service
checks signatures. The service login reads every device topic and writes acks and commands.

Passwords are stored in Mosquitto's ``$7$`` form (PBKDF2-HMAC-SHA512), so the registry keeps only
the hash and the files can be regenerated at any time. A running broker re-reads its password file on
SIGHUP; its rules are brought in line over the plugin's control topic (:class:`BrokerProcess`).
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from devices.broker import TEMPLATE as BROKER_TEMPLATE
from devices.broker_rules import (
    ADMIN_USERNAME,
    BrokerAdmin,
    Client,
    Role,
    Rules,
    changes,
    check_username,
    rules_for,
)
from devices.broker_rules import CONTROL_TOPIC_ROOT as CONTROL_TOPIC_ROOT  # the service's own topics
from storage.retries import another_port

DEFAULT_TEMPLATE = BROKER_TEMPLATE  # package data, so an installed service finds it
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default; device passwords are random 256-bit tokens
RULES_PLUGIN = "mosquitto_dynamic_security.so"
_SALT_BYTES = 12
# More rule changes than this reach a private broker by a restart rather than live.
LIVE_CHANGES = 200
BROKER_START_ATTEMPTS = 3  # a broker on a free port that was taken meanwhile: tries, one port each


class BrokerFilesError(RuntimeError):
    """The broker's files cannot be written so that the broker can use them."""


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


def password_file(accounts: Iterable[BrokerAccount]) -> str:
    """The password file: one ``username:$7$...`` line per account that may log in."""
    lines = []
    seen: set[str] = set()
    for account in accounts:
        check_username(account.username, device=False)
        if account.username in seen:
            raise ValueError(f"username {account.username!r} appears twice")
        if not account.password_hash.startswith("$7$"):
            raise ValueError(f"password hash for {account.username!r} is not in $7$ form")
        seen.add(account.username)
        lines.append(f"{account.username}:{account.password_hash}")
    return "\n".join(lines) + "\n"


def find_rules_plugin() -> Path:
    """Mosquitto's dynamic-security plugin (Debian: ``/usr/lib/<arch>/``; source builds: ``/usr/local/lib``)."""
    roots = [Path("/usr/lib"), Path("/usr/local/lib"), Path("/usr/lib64")]
    for root in roots:
        for candidate in [root / RULES_PLUGIN, *sorted(root.glob(f"*/{RULES_PLUGIN}"))]:
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{RULES_PLUGIN} not found (it ships with Mosquitto 2.0)")


def render_broker_config(
    *,
    port: int,
    data_dir: Path,
    password_path: Path,
    rules_path: Path,
    bind_address: str = "127.0.0.1",
    run_as_user: str | None = None,
    plugin_path: Path | None = None,
    template_path: Path = DEFAULT_TEMPLATE,
) -> str:
    """``devices/broker/evidence.conf`` with its fields filled in.

    ``run_as_user``: the account Mosquitto switches to when started as root (it must own the files).
    """
    return Template(template_path.read_text()).substitute(
        port=int(port),
        bind_address=bind_address,
        data_dir=str(data_dir),
        password_file=str(password_path),
        rules_file=str(rules_path),
        rules_plugin=str(plugin_path or find_rules_plugin()),
        user_line=f"user {run_as_user}" if run_as_user else "",
    )


@dataclass(frozen=True)
class ExtraLogins:
    """Logins beyond the registry's (a benchmark's probes): their passwords and their rules."""

    accounts: tuple[BrokerAccount, ...] = ()
    clients: tuple[Client, ...] = ()
    roles: tuple[Role, ...] = ()


NO_EXTRA_LOGINS = ExtraLogins()


@dataclass(frozen=True)
class BrokerFiles:
    config: Path
    password_file: Path
    rules_file: Path
    admin_file: Path  # the administering login's password: for whoever regenerates the files, not the broker
    data_dir: Path
    port: int

    @staticmethod
    def in_directory(directory: Path, port: int) -> BrokerFiles:
        directory = Path(directory).resolve()
        return BrokerFiles(
            config=directory / "mosquitto.conf",
            password_file=directory / "passwords",
            rules_file=directory / "data" / "rules.json",
            admin_file=directory / "broker-admin",
            data_dir=directory / "data",
            port=port,
        )

    def admin_password(self) -> str:
        try:
            return self.admin_file.read_text().strip()
        except FileNotFoundError:
            raise BrokerFilesError(f"{self.admin_file} is missing: regenerate the broker's files") from None


def broker_user(run_as_user: str | None) -> pwd.struct_passwd:
    """The account the broker will run as, which must be able to read its files and write its rules.

    Mosquitto started as root switches to the ``user`` of its configuration (``mosquitto`` unless
    told otherwise); started as anyone else it stays who it is. Only root can hand files to another.
    """
    me = pwd.getpwuid(os.geteuid())
    name = run_as_user or ("mosquitto" if os.geteuid() == 0 else me.pw_name)
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise BrokerFilesError(
            f"there is no user {name!r} for Mosquitto to run as: pass run-as-user"
        ) from None
    if os.geteuid() != 0 and user.pw_uid != me.pw_uid:
        raise BrokerFilesError(
            f"only root can give the broker's files to {name!r}; run this as root or as {name!r}"
        )
    return user


def _blocked_for(directory: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to ``directory`` that ``user`` may not pass through."""
    if user.pw_uid == 0:
        return None
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for step in reversed(directory.parents):
        info = step.stat()
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return step
    return None


def _write_atomically(path: Path, text: str, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write via a temporary file and rename, so a reloading broker never reads half a file; run as
    root, ``owner`` (uid, gid) gets the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(
            fh.fileno(), mode
        )  # exactly: the umask (077 is common for root) must not take the group's read
        if owner is not None and os.geteuid() == 0:
            os.fchown(fh.fileno(), *owner)
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
    plugin_path: Path | None = None,
    template_path: Path = DEFAULT_TEMPLATE,
) -> BrokerFiles:
    """Write ``mosquitto.conf``, ``passwords`` and ``data/rules.json`` into ``directory``, so that the
    account the broker will run as can read them and write under ``data/``; ``broker-admin`` (the
    password of the login that changes a running broker's rules) is created once and kept."""
    user = broker_user(run_as_user)
    files = BrokerFiles.in_directory(directory, port)
    directory = files.config.parent
    directory.mkdir(parents=True, exist_ok=True)
    blocked = _blocked_for(directory, user)
    if blocked is not None:
        raise BrokerFilesError(
            f"Mosquitto runs as {user.pw_name!r}, which cannot enter {blocked}: choose a directory it can reach"
        )
    if os.geteuid() == 0 and _blocked_for(files.password_file, user) == directory:
        # Made (or kept) unreadable by a strict umask (077 is common for root): the broker's group may
        # enter it, as it must to read its passwords; nothing in it becomes anyone else's to change.
        os.chown(directory, -1, user.pw_gid)
        directory.chmod(stat.S_IMODE(directory.stat().st_mode) | 0o050)
    # The broker writes only under data/ (its sessions, and its rules, which it saves itself); run as
    # root, it may read but not change its configuration, its passwords or the admin's password.
    files.data_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(files.data_dir, user.pw_uid, user.pw_gid)
    files.data_dir.chmod(0o700)
    if not files.admin_file.exists():
        _write_atomically(files.admin_file, generate_password() + "\n")
    write_access_files(files, devices=devices, service=service)
    config = render_broker_config(
        port=port,
        data_dir=files.data_dir,
        password_path=files.password_file,
        rules_path=files.rules_file,
        bind_address=bind_address,
        run_as_user=user.pw_name,
        plugin_path=plugin_path,
        template_path=template_path,
    )
    _write_atomically(files.config, config, mode=0o644)
    return files


def read_rules(path: Path) -> Rules:
    """The rules in a rules file (empty when there is none yet)."""
    try:
        return Rules.from_document(json.loads(path.read_text()))
    except FileNotFoundError:
        return Rules()


def write_access_files(
    files: BrokerFiles,
    *,
    devices: Iterable[BrokerAccount],
    service: BrokerAccount,
    extra: ExtraLogins = NO_EXTRA_LOGINS,
) -> Rules:
    """Rewrite the password and rules files (enrolment, disabling) and return the rules written.

    A running broker needs SIGHUP for the passwords, and :meth:`BrokerAdmin.bring_in_line` (or a
    restart) for the rules.
    """
    devices = list(devices)
    admin = BrokerAccount(ADMIN_USERNAME, hash_password(files.admin_password()))
    rules = rules_for([d.username for d in devices], service.username)
    rules = rules.with_accounts(extra.clients, extra.roles)
    broker = files.data_dir.stat()  # the broker's own directory
    passwords = password_file([service, admin, *devices, *extra.accounts])
    _write_atomically(files.password_file, passwords, 0o640, owner=(os.geteuid(), broker.st_gid))
    document = json.dumps(rules.document(), indent=1) + "\n"
    _write_atomically(files.rules_file, document, owner=(broker.st_uid, broker.st_gid))
    return rules


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

    def update_accounts(
        self,
        *,
        devices: Iterable[BrokerAccount],
        service: BrokerAccount,
        extra: ExtraLogins = NO_EXTRA_LOGINS,
    ) -> None:
        """Write new password and rules files, have the broker re-read its passwords and bring its
        rules in line: live (a login removed is disconnected at once) for a few changes, by a restart
        for many (the plugin rewrites its whole file after each change, so thousands take minutes)."""
        before = read_rules(self.files.rules_file)  # the plugin keeps its file in step with itself
        rules = write_access_files(self.files, devices=devices, service=service, extra=extra)
        todo = changes(before, rules)
        if len(todo) > LIVE_CHANGES:
            self.restart()
            return
        self.reload()
        if todo:
            with BrokerAdmin(self.host, self.port, self.files.admin_password()) as admin:
                admin.run(todo)

    def reload(self) -> None:
        """Re-read the password file (after :func:`write_access_files`)."""
        if self._process is None:
            raise RuntimeError("broker is not running")
        self._process.send_signal(signal.SIGHUP)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again from the files (persistent sessions and queued messages are kept)."""
        self.stop(timeout)
        self.start(timeout)

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

    Runs the broker as the current user, so the files may live in a private directory.
    """
    run_as = pwd.getpwuid(os.geteuid()).pw_name

    def start() -> BrokerProcess:
        chosen = port if port is not None else free_port(host)
        files = write_broker_files(
            directory, devices=devices, service=service, port=chosen, bind_address=host, run_as_user=run_as
        )
        return BrokerProcess(files, host=host).start(timeout)

    # The free port may have been taken meanwhile: another one (a port asked for is tried once).
    return another_port(1 if port is not None else BROKER_START_ATTEMPTS)(start)
