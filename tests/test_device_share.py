"""Each device's fair share of the alarm consumer (``ingest.device_share``), on a controlled clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from devices.service import add_staff, enrol_lone_worker
from ingest.device_share import CALM_S, FairShare, TokenBucket
from tests.test_alarms_kit import DeviceKit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def share(clock: Clock, *, rate: float = 10, burst: float = 5, queue_limit: int = 4) -> FairShare[str]:
    return FairShare(rate=rate, burst=burst, queue_limit=queue_limit, clock=clock)


def offer(s: FairShare[str], device: str, item: str, *, raising: bool = False) -> str | None:
    admission = s.admit(device, maybe_raise=raising)
    if admission.refused is not None:
        return admission.refused
    return s.enqueue(device, item, urgent_raise=raising).refused


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_devices_take_turns_so_a_busy_device_costs_others_one_message() -> None:
    clock = Clock()
    s = share(clock, burst=100, queue_limit=100)
    for i in range(50):
        assert offer(s, "noisy", f"n{i}") is None
    assert offer(s, "calm", "sos") is None
    first = s.take(1)
    assert first == [("noisy", "n0")]
    s.done(["noisy"])
    assert s.take(1) == [("calm", "sos")]  # next in turn, not behind 49 more
    s.done(["calm"])
    batch = s.take(64)
    assert batch == [("noisy", "n1")]  # one device once per batch, in the order it sent


def test_a_device_is_handled_one_message_at_a_time_in_order() -> None:
    s = share(Clock(), burst=100, queue_limit=100)
    for i in range(3):
        offer(s, "d", f"m{i}")
    assert s.take(8) == [("d", "m0")]
    assert s.take(8, timeout=0.01) == []  # its next waits until the first is done
    s.done(["d"])
    assert s.take(8) == [("d", "m1")]


def test_over_its_rate_or_queue_a_device_is_refused_and_flagged_once() -> None:
    clock = Clock()
    s = share(clock, rate=10, burst=5, queue_limit=4)
    results = [offer(s, "f", f"m{i}") for i in range(8)]
    assert results == [None, None, None, None, "queue_full", "rate_limited", "rate_limited", "rate_limited"]
    flags = []
    for _ in range(20):
        admission = s.admit("f")
        flags.append(admission.flagged)
        assert admission.refused == "rate_limited" and admission.over_share
    assert not any(flags)  # flagged by the first refusal, not again
    assert s.flagged() == {"f": 23}  # its refusals for its rate (a full queue flags no one)
    assert offer(s, "other", "x") is None  # others are untouched
    clock.now += CALM_S - 1
    assert s.calmed() == []
    for _ in range(4):
        s.take(1)
        s.done(["f"])
    clock.now += 1
    assert s.calmed() == [("f", 23)]
    assert s.flagged() == {}


def test_an_alarm_being_raised_goes_ahead_of_its_devices_garbage_and_beyond_its_rate() -> None:
    clock = Clock()
    s = share(clock, rate=1, burst=4, queue_limit=4)
    for i in range(4):
        assert offer(s, "f", f"junk{i}") is None
    assert offer(s, "f", "junk-more") == "rate_limited"
    admission = s.admit("f", maybe_raise=True)  # over its rate, but it may be an SOS
    assert admission.refused is None and admission.beyond_rate
    queued = s.enqueue("f", "sos", urgent_raise=True)
    assert queued.refused is None and queued.evicted == ("junk0",)  # room made in a full queue
    assert s.take(1) == [("f", "sos")]  # ahead of the junk it sent earlier
    s.done(["f"])
    assert s.admit("f", maybe_raise=True).refused is None  # a few beyond the rate...
    s.enqueue("f", "sos-2", urgent_raise=True)
    assert s.admit("f", maybe_raise=True).refused == "rate_limited"  # ...one waiting at a time


def test_idle_is_set_only_when_nothing_waits_or_is_handled() -> None:
    s = share(Clock())
    assert s.idle.is_set()
    offer(s, "d", "m")
    assert not s.idle.is_set()
    s.take(1)
    assert not s.idle.is_set()
    s.done(["d"])
    assert s.idle.is_set()


def test_the_flag_is_kept_on_the_devices_record_even_before_it_sent_anything_valid(services: Any) -> None:
    """Both databases: a device whose every message was refused has no state row yet; flagging it
    makes one, unflagging clears it; an id the registry does not know is ignored."""
    with services.db.session() as session:
        add_staff(session, services.ledger, "S-SHARE", "Nurse", "nurse", actor="test")
        enrol_lone_worker(session, services.ledger, "LW-SHARE", DeviceKit("LW-SHARE").public_b64, "t")

    def flag() -> object:
        return next(d for d in services.alarms.queries.lone_workers() if d["id"] == "LW-SHARE")[
            "over_share_since"
        ]

    assert flag() is None
    services.alarms.mark_over_share("LW-SHARE", datetime.now(UTC))
    assert flag() is not None
    services.alarms.mark_over_share("LW-SHARE", datetime.now(UTC))  # again: the row is there now
    services.alarms.mark_over_share("LW-SHARE", None)
    assert flag() is None
    services.alarms.mark_over_share("no-such-device", datetime.now(UTC))
