"""Sign-in gives nothing away and cannot be used to lock anyone out.

Through the real server (both databases): an unknown user, a wrong password and a throttled try get
the same answer after the same work; a guesser from one address is slowed while the real person,
from another address, signs in (through the API and the console's form, which share one throttle);
a success clears the failures. Different client addresses are real: the tests connect from
127.0.0.2, 127.0.0.3... to the server on 127.0.0.1.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete

from accounts.models import SignInBucket, SignInFailures
from accounts.throttle import SignInThrottle, ThrottlePolicy, digest
from ingest.migrations_runner import upgrade_database
from storage.db import Database
from storage.embedded import EmbeddedSeaweed
from tests.conftest import ADMIN_PASSWORD, make_settings, start_server

ATTACKER = "127.0.0.2"


def _client(address: str, base: str) -> httpx.Client:
    return httpx.Client(base_url=base, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _token(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/api/v1/auth/token", data={"username": username, "password": password})


@pytest.mark.real_password_checks
def test_every_refusal_is_the_same_answer_after_the_same_work(live) -> None:  # type: ignore[no-untyped-def]
    with _client(ATTACKER, live.url) as attacker:
        answers: dict[str, list[httpx.Response]] = {"unknown": [], "wrong": [], "throttled": []}
        times: dict[str, list[float]] = {k: [] for k in answers}

        def timed(kind: str, username: str, password: str) -> None:
            t0 = time.perf_counter()
            answers[kind].append(_token(attacker, username, password))
            times[kind].append(time.perf_counter() - t0)

        for _ in range(3):  # three of each, so that one stall of a loaded machine is not the median
            timed("unknown", "nobody-here", "some guess or other")
            timed("wrong", "admin", "some guess or other")
        for _ in range(live.services.settings.login_free_failures):
            _token(attacker, "admin", "another wrong guess")
        for _ in range(3):  # now throttled: even the right password is refused, the same way
            timed("throttled", "admin", ADMIN_PASSWORD)
    bodies = {
        (r.status_code, r.text, r.headers.get("www-authenticate")) for rs in answers.values() for r in rs
    }
    assert len(bodies) == 1, bodies
    status, text, _ = bodies.pop()
    assert status == 401 and "admin" not in text and "locked" not in text
    medians = {k: statistics.median(v) for k, v in times.items()}
    # the same shape: one argon2 check each (no early answer for unknown or throttled)
    assert max(medians.values()) < 2.5 * min(medians.values()), medians


def test_a_guesser_cannot_lock_the_administrator_out(live) -> None:  # type: ignore[no-untyped-def]
    with _client(ATTACKER, live.url) as attacker:
        refused = [_token(attacker, "admin", f"guess number {i:04d}").status_code for i in range(12)]
        assert set(refused) == {401}
        # the guesser is slowed: its own right guess is refused while it must wait
        assert _token(attacker, "admin", ADMIN_PASSWORD).status_code == 401
    # the administrator, from their own address, signs in through the API and through the console
    with _client("127.0.0.3", live.url) as admin:
        assert _token(admin, "admin", ADMIN_PASSWORD).status_code == 200
        form = admin.get("/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf
        r = admin.post(
            "/sign-in", data={"csrf": csrf.group(1), "username": "admin", "password": ADMIN_PASSWORD}
        )
        assert r.status_code == 303, r.text


def test_the_api_and_the_console_share_one_throttle(live) -> None:  # type: ignore[no-untyped-def]
    with _client(ATTACKER, live.url) as attacker:
        form = attacker.get("/sign-in")
        for _ in range(live.services.settings.login_free_failures):
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            form = attacker.post(
                "/sign-in", data={"csrf": csrf.group(1), "username": "admin", "password": "console guess 1"}
            )
            assert form.status_code == 401
        # failures made through the form slow the same address on the token route
        assert _token(attacker, "admin", ADMIN_PASSWORD).status_code == 401
    with _client("127.0.0.4", live.url) as other:
        assert _token(other, "admin", ADMIN_PASSWORD).status_code == 200


def test_an_administrators_unlock_forgives_the_failures(live) -> None:  # type: ignore[no-untyped-def]
    with _client(ATTACKER, live.url) as attacker:
        for _ in range(live.services.settings.login_free_failures):
            _token(attacker, "admin", "wrong wrong wrong")
        assert _token(attacker, "admin", ADMIN_PASSWORD).status_code == 401
        me = httpx.get(f"{live.url}/api/v1/me", headers=live.admin()).json()
        r = httpx.patch(
            f"{live.url}/api/v1/users/{me['user_id']}", headers=live.admin(), json={"unlock": True}
        )
        assert r.status_code == 200
        assert _token(attacker, "admin", ADMIN_PASSWORD).status_code == 200


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def throttle_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """The throttle's tables (migrated), on SQLite: the rules do not depend on the database."""
    url = f"sqlite:///{tmp_path_factory.mktemp('throttle') / 'throttle.db'}"
    upgrade_database(url)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def throttle(throttle_db: Database) -> Callable[..., SignInThrottle]:
    with throttle_db.session() as session:
        session.execute(delete(SignInFailures))
        session.execute(delete(SignInBucket))
    return lambda policy, clock: SignInThrottle(throttle_db, policy, clock)


def _not_before(t: SignInThrottle, username: str, client: str) -> float:
    with t.db.session() as session:
        row = session.get(SignInFailures, (digest("username", username), digest("client", client)))
        assert row is not None
        return row.not_before


def test_waits_double_per_failure_and_a_success_clears_them(throttle) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    t = throttle(ThrottlePolicy(free=3, base_delay=1.0, max_delay=100.0), clock)
    key = ("ann", "10.0.0.9")
    for _ in range(3):
        assert t.allowed(*key)
        t.failed(*key)
    waits = []
    for _ in range(8):
        not_before = _not_before(t, *key)
        waits.append(not_before - clock.now)
        assert not t.allowed(*key) if clock.now < not_before else True
        clock.now = _not_before(t, *key)
        assert t.allowed(*key)
        t.failed(*key)
    assert waits[0] == 1.0
    assert waits[1:] == [4.0, 16.0, 64.0, 100.0, 100.0, 100.0, 100.0]  # a try while waiting counts too
    assert t.allowed("ann", "10.0.0.10")  # another address is not made to wait
    clock.now += 100
    t.succeeded(*key)
    assert t.allowed(*key)
    t.failed(*key)
    assert t.allowed(*key)  # counting starts again after a success


def test_an_address_spraying_many_accounts_runs_dry_and_refills(throttle) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    t = throttle(ThrottlePolicy(client_failures_per_hour=10), clock)
    for i in range(10):
        assert t.allowed(f"user{i}", "10.0.0.66")
        t.failed(f"user{i}", "10.0.0.66")
    assert not t.allowed("user99", "10.0.0.66")
    assert t.allowed("user99", "10.0.0.67")
    clock.now += 360  # one try back every six minutes
    assert t.allowed("user99", "10.0.0.66")


def _wrong_password(t: SignInThrottle, username: str, client: str) -> None:
    """A try let through (and counted at once) whose password was wrong, as ``sign_in`` makes it."""
    assert t.allowed(username, client)
    t.failed(username, client)


def test_a_spent_account_budget_stops_addresses_that_failed_but_not_new_ones(throttle) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    t = throttle(ThrottlePolicy(free=100, account_failures_per_hour=5, client_failures_per_hour=100), clock)
    for i in range(5):
        _wrong_password(t, "admin", f"10.1.0.{i}")
    assert not t.allowed("admin", "10.1.0.1")  # an address that guessed waits
    assert t.allowed("admin", "10.9.9.9")  # the real person, elsewhere, still gets their try


def test_the_tables_forget_what_no_longer_matters_and_keep_no_names(throttle) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    t = throttle(ThrottlePolicy(), clock)
    for i in range(50):
        _wrong_password(t, f"name{i} my-password-typed-here", f"10.2.0.{i}")
    assert t.count() == (50, 100)
    with t.db.session() as session:
        kept = [r.username_key for r in session.query(SignInFailures)] + [
            r.key for r in session.query(SignInBucket)
        ]
    assert not any("name" in k or "10.2" in k for k in kept)
    clock.now += 3601  # the buckets are full again: forgotten; the failures are kept for a day
    _wrong_password(t, "someone", "10.3.0.1")
    assert t.count() == (51, 2)
    clock.now += 24 * 3600
    _wrong_password(t, "someone", "10.3.0.1")
    assert t.count() == (1, 2)


def test_two_service_processes_count_the_same_failures(
    tmp_path: Path, database_url: str, seaweed: EmbeddedSeaweed
) -> None:
    """Two instances of the service on one database (as replicas behind a balancer): failures made
    against either slow the guesser on both, the real person elsewhere still signs in, and an
    administrator's unlock on one forgives on the other (before, each process counted alone)."""
    from accounts.service import create_user
    from ingest.services import build_services

    replicas = []
    for i in range(2):
        # Replicas share one service key (its signatures and seals must hold on every replica).
        key_path = tmp_path / "service_ed25519.pem"
        s = build_services(
            make_settings(tmp_path / f"r{i}", database_url, seaweed, service_key_path=key_path)
        )
        if i == 0:
            with s.db.session() as session:
                create_user(session, "admin", ADMIN_PASSWORD, "admin", key=s.key)
        server, thread, url = start_server(s)
        replicas.append((s, server, thread, url))
    try:
        urls = [r[3] for r in replicas]
        free = replicas[0][0].settings.login_free_failures
        clients = [_client(ATTACKER, u) for u in urls]
        # Alternate between the replicas: neither alone sees more than free failures... together they do.
        for i in range(free + 2):
            assert _token(clients[i % 2], "admin", f"guess {i}").status_code == 401
        for c in clients:  # the guesser's own right guess is refused on both while it must wait
            assert _token(c, "admin", ADMIN_PASSWORD).status_code == 401
        with _client("127.0.0.5", urls[1]) as admin:
            r = _token(admin, "admin", ADMIN_PASSWORD)
            assert r.status_code == 200  # nobody is locked out
            token = r.json()["access_token"]
            me = admin.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
        # An unlock made on one replica forgives on the other.
        r = httpx.patch(
            f"{urls[1]}/api/v1/users/{me['user_id']}",
            headers={"Authorization": f"Bearer {token}"},
            json={"unlock": True},
        )
        assert r.status_code == 200, r.text
        assert _token(clients[0], "admin", ADMIN_PASSWORD).status_code == 200
        for c in clients:
            c.close()
    finally:
        for s, server, thread, _ in replicas:
            server.should_exit = True
            thread.join(15)
            s.db.dispose()


def test_tries_made_at_the_same_moment_each_see_the_ones_before(database_url: str) -> None:
    """A guesser firing many tries in parallel (each password check takes its time) gets no more
    than the free ones: a try let through is counted at once, not after its check (before, twenty
    parallel tries were all let through)."""
    upgrade_database(database_url)
    db = Database(database_url)
    try:
        t = SignInThrottle(db, ThrottlePolicy(free=3, base_delay=1.0, max_delay=100.0))
        start = threading.Barrier(20)

        def attempt(_: int) -> bool:
            start.wait(10)
            return t.allowed("admin", "10.4.0.1")

        with ThreadPoolExecutor(20) as pool:
            let_through = sum(pool.map(attempt, range(20)))
        assert let_through == 3
        # The right password, from the person's own desk, meanwhile: let through, and given back.
        assert t.allowed("admin", "10.4.0.2")
        t.succeeded("admin", "10.4.0.2")
        with db.session() as session:
            account = session.get(SignInBucket, ("account", digest("username", "admin")))
            assert account is not None and account.tokens == pytest.approx(100 - 3, abs=0.5)
            assert (
                session.get(SignInFailures, (digest("username", "admin"), digest("client", "10.4.0.2")))
                is None
            )
    finally:
        db.dispose()
