"""Shared fixtures: the real SeaweedFS, both databases, a signed-in admin and a live HTTP server."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import event
from sqlalchemy.engine import Engine

from storage.embedded import EmbeddedSeaweed
from storage.settings import Settings

PG_ADMIN_URL = os.environ.get("EVIDENCE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_base_port() -> int:
    """A base port whose SeaweedFS neighbours (+0..+7 and +10000..+10004) are all free."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if all(_free(base + i) for i in range(8)) and all(_free(base + 10000 + i) for i in range(5)):
            return base
    raise RuntimeError("no free port range for SeaweedFS")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def backends_waiting_on_a_lock(engine: Engine, naming: str = "") -> int:
    """How many PostgreSQL backends of ``engine``'s database wait on a lock, of those whose statement
    names ``naming``: race tests let one transaction go once they see the other wait. Only the test's
    own database counts, so that tests running beside it (in another worker) are never taken for it."""
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND position(%(naming)s in query) > 0",
            {"naming": naming},
        ).scalar()
    return int(waiting or 0)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSeaweed]:
    # Every test makes its own buckets, and each bucket takes volumes of its own: allow plenty.
    store = EmbeddedSeaweed(tmp_path_factory.mktemp("seaweed"), free_base_port(), "1GiB", max_volumes=2000)
    store.start()
    yield store
    # Thrown away with the run's temporary directory: no graceful stop, which flushes every one of
    # the run's many volumes first (about 12 s at the end of a full run).
    store.kill()


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL cluster if it is down (CI may find it stopped)."""
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        return
    except psycopg.OperationalError:
        pass
    versions = os.listdir("/etc/postgresql")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"], check=False)
    wait_for(lambda: _pg_up(), 30, 0.3, "PostgreSQL to start")


def _pg_up() -> bool:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    ensure_postgres()
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """A database migrated once per run, that each test's fresh database is copied from: creating
    one from it takes about a tenth of a second, migrating an empty one about a second. The
    migrations still run from nothing on PostgreSQL in every run (here), and ``build_services``
    still runs them on every test's database (finding it up to date)."""
    from ingest.migrations_runner import upgrade_database

    url, name = fresh_pg_database(pg_server)
    upgrade_database(url)
    yield name
    drop_pg_database(pg_server, name)


def fresh_pg_database(admin_url: str, template: str | None = None) -> tuple[str, str]:
    """A new database, empty (``template=None``) or a copy of ``template``."""
    import psycopg

    name = f"evidence_t_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    return admin_url.rsplit("/", 1)[0] + "/" + name, name


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgCopies:
    """Copies of the migrated template, made ahead and dropped behind by one background thread.

    Copying takes about half a second on a loaded machine and dropping a few tenths, mostly waiting
    on the disk; made in the background they overlap the tests instead of adding to each. Every
    test still gets a database of its own, a fresh copy that no other test has used."""

    def __init__(self, admin_url: str, template: str, ahead: int = 2) -> None:
        self.admin_url, self.template, self.ahead = admin_url, template, ahead
        self._ready: list[tuple[str, str]] = []
        self._spent: list[str] = []
        self._failure: BaseException | None = None
        self._closing = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="pg-copies", daemon=True)
        self._thread.start()

    def take(self) -> tuple[str, str]:
        """A fresh copy's URL and name (waits for the thread if none is ready yet)."""
        with self._wake:
            while not self._ready and self._failure is None:
                self._wake.wait()
            if self._failure is not None:
                raise RuntimeError("copying the template database failed") from self._failure
            copy = self._ready.pop(0)
            self._wake.notify_all()
            return copy

    def give_back(self, name: str) -> None:
        """Drop ``name`` in the background (``WITH (FORCE)``: a connection left open ends)."""
        with self._wake:
            self._spent.append(name)
            self._wake.notify_all()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(120)
        for name in [*self._spent, *(name for _, name in self._ready)]:
            drop_pg_database(self.admin_url, name)

    def _work(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                while True:
                    with self._wake:
                        while not self._closing and not self._spent and len(self._ready) >= self.ahead:
                            self._wake.wait()
                        if self._closing:
                            return
                        # A test waiting for a copy comes before the drops.
                        drop = self._spent.pop(0) if self._spent and self._ready else None
                    if drop is not None:
                        conn.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
                        continue
                    name = f"evidence_t_{uuid.uuid4().hex[:12]}"
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                    with self._wake:
                        self._ready.append((self.admin_url.rsplit("/", 1)[0] + "/" + name, name))
                        self._wake.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the test that waits for a copy
            with self._wake:
                self._failure = exc
                self._wake.notify_all()


@pytest.fixture(scope="session")
def pg_copies(pg_server: str, pg_template: str) -> Iterator[PgCopies]:
    copies = PgCopies(pg_server, pg_template)
    yield copies
    copies.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs on both databases."""
    if request.param == "sqlite":
        yield migrated_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "evidence.db")
        return
    copies: PgCopies = request.getfixturevalue("pg_copies")
    url, name = copies.take()
    yield url
    copies.give_back(name)


@pytest.fixture
def pg_url(pg_copies: PgCopies) -> Iterator[str]:
    url, name = pg_copies.take()
    yield url
    pg_copies.give_back(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per run, that each test's is copied from (as
    :func:`pg_template`, for SQLite)."""
    import sqlite3

    from ingest.migrations_runner import upgrade_database

    template = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    upgrade_database(f"sqlite:///{template}")
    with sqlite3.connect(template) as conn:  # everything in the main file, none in a WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return template


def migrated_sqlite(template: Path, path: Path) -> str:
    """The URL of a new SQLite database at ``path``, a copy of ``template``."""
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def point_cli_at(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Point the ``evidence`` command (run by typer's CliRunner in this process) at ``settings``:
    its environment, and no settings cached from before."""
    from ingest.settings import get_settings

    for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
        monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
    get_settings.cache_clear()


def make_settings(
    tmp_path: Path, database_url: str, seaweed: EmbeddedSeaweed, **overrides: object
) -> Settings:
    bucket = f"ev-{uuid.uuid4().hex[:10]}"
    values: dict[str, object] = dict(
        data_dir=tmp_path / "var",
        database_url=database_url,
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.credentials.access_key,
        s3_secret_key=seaweed.credentials.secret_key,
        bucket=bucket,
        staging_bucket=bucket + "-staging",
        retention_days=1,
        upload_part_bytes=5 * 1024 * 1024,
        min_free_bytes=0,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def cli_services(
    tmp_path: Path, database_url: str, seaweed: EmbeddedSeaweed, monkeypatch: pytest.MonkeyPatch
):  # type: ignore[no-untyped-def]
    """The service's parts on a fresh store and database, and the ``evidence`` command (run by
    typer's CliRunner in this process) pointed at the same."""
    from ingest.services import build_services
    from ingest.settings import get_settings

    settings = make_settings(tmp_path, database_url, seaweed)
    s = build_services(settings)
    point_cli_at(monkeypatch, settings)
    try:
        yield s
    finally:
        get_settings.cache_clear()
        s.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process (``evidence serve``, ``evidence worker``) these settings."""
    return {**os.environ, **settings.as_environment()}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, seaweed: EmbeddedSeaweed) -> Settings:
    return make_settings(tmp_path, database_url, seaweed)


@pytest.fixture
def services(settings: Settings):  # type: ignore[no-untyped-def]
    from ingest.services import build_services

    s = build_services(settings)
    yield s
    s.close()


@pytest.fixture
def sqlite_services(tmp_path: Path, seaweed: EmbeddedSeaweed, sqlite_template: Path):  # type: ignore[no-untyped-def]
    """Services on SQLite only, for tests whose subject is not the database."""
    from ingest.services import build_services

    s = build_services(
        make_settings(tmp_path, migrated_sqlite(sqlite_template, tmp_path / "evidence.db"), seaweed)
    )
    yield s
    s.close()


ADMIN_PASSWORD = "correct horse battery staple"

# A sign-in is one argon2 check (about 0.4 s) and a few statements; a full suite on a loaded machine
# has seen one take over httpx's default 5 s, the first after a server started (its start-up's own
# passes run beside it), so the tests' sign-ins are given longer. Nothing else waits on this.
SIGN_IN_TIMEOUT = 30


# Every other request a test makes without a timeout of its own. Three full suites in a row each had
# one request (two first sign-ins, one incident created on SQLite on an otherwise quiet machine) take
# over httpx's default 5 s, each passing when run again; its cause is not yet known. So a test waits up
# to 30 s, and a request slower than 5 s is named at the end of the run with where every thread was at
# the 5 s mark (``slow-requests.txt``), to find it from rather than to fail on.
HTTP_TIMEOUT = 30.0
SLOW_REQUEST_S = 5.0
_SLOW_REQUESTS: list[str] = []
_SLOW_DUMPS: list[Path] = []


class _SlowRequestWatch:
    """Writes every thread's stack when a request has run past SLOW_REQUEST_S, to show where it waits.

    One watcher thread formats the stacks with ``sys._current_frames()`` while holding the GIL.
    ``faulthandler.dump_traceback_later`` did this job before, but it walks other threads' frames
    without the GIL, which can crash the interpreter when those threads are running (a segmentation
    fault once ended a whole run)."""

    def __init__(self, out: TextIO, after: float = SLOW_REQUEST_S) -> None:
        self._out = out
        self._after = after
        self._due: dict[int, tuple[float, str]] = {}
        self._next = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, name="slow-request-watch", daemon=True)
        self._thread.start()

    def start(self, label: str) -> int:
        with self._cond:
            self._next += 1
            self._due[self._next] = (time.monotonic() + self._after, label)
            self._cond.notify()
            return self._next

    def done(self, token: int) -> None:
        with self._cond:
            self._due.pop(token, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                late = [t for t, (due, _) in self._due.items() if due <= now]
                for token in late:
                    _, label = self._due.pop(token)
                    self._dump(label)
                soonest = min((due for due, _ in self._due.values()), default=now + 60.0)
                self._cond.wait(timeout=max(0.05, soonest - now))

    def _dump(self, label: str) -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        self._out.write(f"--- {label} still running after {self._after:g} s\n")
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            self._out.write(f"thread {names.get(ident, ident)}:\n")
            self._out.write("".join(traceback.format_stack(frame)))
        self._out.flush()


@pytest.fixture(scope="session", autouse=True)
def patient_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    default = httpx._config.DEFAULT_TIMEOUT_CONFIG  # the object every default argument refers to
    saved = (default.connect, default.read, default.write, default.pool)
    default.connect = default.read = default.write = default.pool = HTTP_TIMEOUT
    original = httpx.Client.send
    _SLOW_DUMPS.append(tmp_path_factory.getbasetemp() / "slow-requests.txt")
    dumps = _SLOW_DUMPS[0].open("w")
    watch = _SlowRequestWatch(dumps)

    def send(self: httpx.Client, request: httpx.Request, **kwargs: object) -> httpx.Response:
        started = time.monotonic()
        test = os.environ.get("PYTEST_CURRENT_TEST", "?")
        token = watch.start(f"{request.method} {request.url.path} in {test}")
        try:
            return original(self, request, **kwargs)  # type: ignore[arg-type]
        finally:
            watch.done(token)
            took = time.monotonic() - started
            if took > SLOW_REQUEST_S:
                _SLOW_REQUESTS.append(f"{took:.1f} s {request.method} {request.url.path} in {test}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.Client, "send", send)
        yield
    default.connect, default.read, default.write, default.pool = saved
    watch.stop()
    dumps.close()


@pytest.fixture(scope="session", autouse=True)
def one_tls_context() -> Iterator[None]:
    """Every ``httpx`` client the tests make shares one default TLS context.

    httpx builds a new one for each client, loading the whole certificate bundle (about 0.1 s, more
    on a loaded machine), and the tests make a client for nearly every request they send
    (``httpx.post``), all of them to ``http://`` addresses that never use it. A client given its own
    ``verify`` or ``cert`` still gets a context of its own."""
    import ssl

    import httpx._transports.default as transports

    original = transports.create_ssl_context
    shared: list[ssl.SSLContext] = []

    def create_ssl_context(
        verify: object = True, cert: object = None, trust_env: bool = True
    ) -> ssl.SSLContext:
        if verify is not True or cert is not None or not trust_env:
            return original(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[arg-type]
        if not shared:
            shared.append(original())
        return shared[0]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transports, "create_ssl_context", create_ssl_context)
        yield


# The run's garbage collector: a young generation of 50,000 objects rather than 700 (the tests build
# an app, its services and their caches many times over, in objects that live for one test) and an
# old one looked at a quarter as often; what every test shares, imported before the first, is frozen out of
# the collector's walks. A run of three HTTP-heavy modules spent 15 s of its 90 in collections, 3 s
# after this.
RUN_GC_THRESHOLDS = (50_000, 20, 40)


def pytest_collection_finish(session: pytest.Session) -> None:
    import tempfile

    from ingest.app import build_routes, create_app

    with tempfile.TemporaryDirectory() as scratch:
        # One app made and its routes built: FastAPI's and pydantic's caches of the service's
        # models are filled once, and frozen with the rest.
        build_routes(
            create_app(Settings(data_dir=Path(scratch), database_url=f"sqlite:///{scratch}/warm.db"))
        )
    gc.collect()
    gc.freeze()
    gc.set_threshold(*RUN_GC_THRESHOLDS)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker of a parallel run hands its slow requests to the run that reports them."""
    handed = getattr(session.config, "workeroutput", None)
    if handed is not None:
        handed["slow_requests"] = list(_SLOW_REQUESTS)
        handed["slow_dumps"] = [str(path) for path in _SLOW_DUMPS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    handed = getattr(node, "workeroutput", {})
    _SLOW_REQUESTS.extend(handed.get("slow_requests", []))
    _SLOW_DUMPS.extend(Path(path) for path in handed.get("slow_dumps", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SLOW_REQUESTS:
        where = ", ".join(map(str, _SLOW_DUMPS)) or "slow-requests.txt"
        terminalreporter.section(f"requests slower than {SLOW_REQUEST_S:.0f} s (threads at 5 s: {where})")
        for line in _SLOW_REQUESTS:
            terminalreporter.write_line(line)


class _RememberingHasher(PasswordHasher):
    """The service's argon2 hasher, that hashes each password once per run.

    Hashing is deliberately slow (about 0.4 s on a loaded machine) and the tests create their users
    with a handful of passwords, hundreds of times over. The hash handed out is a real one with the
    service's parameters, so signing in checks it as always; only its salt repeats between users
    that share a password.

    Checking a password (``verify``) is as slow, and the suite signs in thousands of times with
    the same few hashes and passwords: each pair is checked for real once per run and its answer
    (or its refusal) given again after that. A test that times or counts the checks themselves
    (the sign-in tests: every refusal after the same work) is marked ``real_password_checks`` and
    checks every password for real."""

    def __init__(self, like: PasswordHasher) -> None:
        super().__init__(
            time_cost=like.time_cost,
            memory_cost=like.memory_cost,
            parallelism=like.parallelism,
            hash_len=like.hash_len,
            salt_len=like.salt_len,
            encoding=like.encoding,
            type=like.type,
        )
        self._known: dict[str | bytes, str] = {}
        self._checked: dict[tuple[str | bytes, str | bytes], bool | Exception] = {}
        self.remember_checks = True

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        if salt is not None:
            return super().hash(password, salt=salt)
        if password not in self._known:
            self._known[password] = super().hash(password)
        return self._known[password]

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        if not self.remember_checks:
            return super().verify(hash, password)
        key = (hash, password)
        if key not in self._checked:
            try:
                self._checked[key] = super().verify(hash, password)
            except (VerificationError, InvalidHashError) as refused:
                self._checked[key] = refused
        answer = self._checked[key]
        if isinstance(answer, Exception):
            raise type(answer)(*answer.args)
        return True


@pytest.fixture(scope="session", autouse=True)
def remembered_password_hashes() -> Iterator[None]:
    import accounts.service

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accounts.service, "_hasher", _RememberingHasher(accounts.service._hasher))
        yield


@pytest.fixture(autouse=True)
def real_password_checks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every password checked for real in a test marked ``real_password_checks``."""
    import accounts.service

    hasher = accounts.service._hasher
    if (
        not isinstance(hasher, _RememberingHasher)
        or request.node.get_closest_marker("real_password_checks") is None
    ):
        yield
        return
    hasher.remember_checks = False
    try:
        yield
    finally:
        hasher.remember_checks = True


@dataclass
class LiveServer:
    url: str
    services: object
    admin_token: str

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


HTTP_LOOP_THREAD = "evidence-http-loop"


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # run in a thread
        pass

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        # Named, so that SQL run on this server's event loop is found (``no_sql_on_the_http_loop``).
        threading.current_thread().name = HTTP_LOOP_THREAD
        super().run(sockets)


_SQL_ON_THE_LOOP: list[str] = []


@event.listens_for(Engine, "before_cursor_execute")
def _note_sql_on_the_http_loop(*_: object) -> None:
    """A statement run on the HTTP server's event loop thread (not a worker thread) stalls every
    other request meanwhile, ``/healthz`` and the alarm board's stream included."""
    if threading.current_thread().name != HTTP_LOOP_THREAD or asyncio._get_running_loop() is None:
        return
    frames = [
        f
        for f in traceback.extract_stack()
        if "/tests/" not in f.filename and "site-packages" not in f.filename
    ]
    _SQL_ON_THE_LOOP.append(
        " <- ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(frames[-4:]))
    )


@pytest.fixture(autouse=True)
def nothing_kept_between_tests() -> Iterator[None]:
    """FastAPI remembers, per dependency callable, whether it is a coroutine or a generator, in
    caches of 4,096 entries; the service's dependencies are closures over its parts, so every
    test's app, its services and its database engine stayed reachable from those caches for
    hundreds of tests. The heap grew by about 15,000 objects a test, and each full collection of
    the garbage collector walked all of them (seconds apiece late in a run). A process runs one
    app, so the service itself is not affected."""
    yield
    from fastapi.dependencies import models

    for cached in (
        models._is_gen_callable_cached,
        models._is_async_gen_callable_cached,
        models._is_coroutine_callable_cached,
    ):
        cached.cache_clear()


@pytest.fixture(autouse=True)
def no_sql_on_the_http_loop() -> Iterator[None]:
    """Every test fails if a route ran SQL on the server's event loop instead of a worker thread."""
    _SQL_ON_THE_LOOP.clear()
    yield
    found = sorted(set(_SQL_ON_THE_LOOP))
    _SQL_ON_THE_LOOP.clear()
    assert not found, f"SQL ran on the HTTP server's event loop: {found[:5]}"


def start_server(services, app=None) -> tuple[_ThreadedServer, threading.Thread, str]:  # type: ignore[no-untyped-def]
    from ingest.app import create_app

    port = free_port()
    app = app or create_app(services.settings, services)
    from ingest.http_edge import server_config

    config = server_config(app, services.settings, "127.0.0.1", port, lifespan="on")
    server = _ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: server.started, 20, what="HTTP server to start")
    return server, thread, url


def recorded_user(  # type: ignore[no-untyped-def]
    session, ledger, username: str, password: str, role: str, *, site: str | None = None, full_name: str = ""
) -> int:
    """A user created as the users route and ``evidence users add`` create one: the row and its
    ``user_changed`` custody entry (``evidence verify`` names a user no entry created)."""
    from accounts.seals import record_user
    from accounts.service import create_user, creation_record

    row = create_user(session, username, password, role, full_name=full_name, site=site, key=ledger.key)
    record_user(session, ledger, row, "test", creation_record(ledger.key, row))
    return row.id


@pytest.fixture
def live(services) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        recorded_user(session, services.ledger, "admin", ADMIN_PASSWORD, "admin")
    server, thread, url = start_server(services)
    r = httpx.post(
        f"{url}/api/v1/auth/token",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=SIGN_IN_TIMEOUT,
    )
    r.raise_for_status()
    yield LiveServer(url, services, r.json()["access_token"])
    server.should_exit = True
    thread.join(15)
