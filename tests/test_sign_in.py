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
import time

import httpx

from accounts.throttle import SignInThrottle, ThrottlePolicy
from tests.conftest import ADMIN_PASSWORD

ATTACKER = "127.0.0.2"


def _client(address: str, base: str) -> httpx.Client:
    return httpx.Client(base_url=base, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _token(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/api/v1/auth/token", data={"username": username, "password": password})


def test_every_refusal_is_the_same_answer_after_the_same_work(live) -> None:  # type: ignore[no-untyped-def]
    with _client(ATTACKER, live.url) as attacker:
        answers: dict[str, list[httpx.Response]] = {"unknown": [], "wrong": [], "throttled": []}
        times: dict[str, list[float]] = {k: [] for k in answers}

        def timed(kind: str, username: str, password: str) -> None:
            t0 = time.perf_counter()
            answers[kind].append(_token(attacker, username, password))
            times[kind].append(time.perf_counter() - t0)

        for _ in range(2):
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


def test_waits_double_per_failure_and_a_success_clears_them() -> None:
    clock = _Clock()
    t = SignInThrottle(ThrottlePolicy(free=3, base_delay=1.0, max_delay=100.0), clock)
    key = ("ann", "10.0.0.9")
    for _ in range(3):
        assert t.allowed(*key)
        t.failed(*key)
    waits = []
    for _ in range(8):
        not_before = t._pairs[key].not_before
        waits.append(not_before - clock.now)
        assert not t.allowed(*key) if clock.now < not_before else True
        clock.now = t._pairs[key].not_before
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


def test_an_address_spraying_many_accounts_runs_dry_and_refills() -> None:
    clock = _Clock()
    t = SignInThrottle(ThrottlePolicy(client_failures_per_hour=10), clock)
    for i in range(10):
        assert t.allowed(f"user{i}", "10.0.0.66")
        t.failed(f"user{i}", "10.0.0.66")
    assert not t.allowed("user99", "10.0.0.66")
    assert t.allowed("user99", "10.0.0.67")
    clock.now += 360  # one try back every six minutes
    assert t.allowed("user99", "10.0.0.66")


def test_a_spent_account_budget_stops_addresses_that_failed_but_not_new_ones() -> None:
    clock = _Clock()
    t = SignInThrottle(
        ThrottlePolicy(free=100, account_failures_per_hour=5, client_failures_per_hour=100), clock
    )
    for i in range(5):
        t.failed("admin", f"10.1.0.{i}")
    assert not t.allowed("admin", "10.1.0.1")  # an address that guessed waits
    assert t.allowed("admin", "10.9.9.9")  # the real person, elsewhere, still gets their try


def test_the_tables_are_bounded() -> None:
    from accounts import throttle as module

    t = SignInThrottle(ThrottlePolicy(), _Clock())
    saved = module.MAX_ENTRIES
    module.MAX_ENTRIES = 50
    try:
        for i in range(500):
            t.failed(f"name{i}", f"10.2.{i // 256}.{i % 256}")
    finally:
        module.MAX_ENTRIES = saved
    assert len(t._pairs) <= 50 and len(t._clients) <= 50 and len(t._accounts) <= 50
