"""Each device's fair share of the alarm consumer: a rate, a short queue and its turn.

One authenticated device publishing garbage as fast as it can must not delay anyone else's SOS. So a
device message, before any costly work (the device's key and replay state from the database, the
signature), passes the door in the consumer's network thread:

- the cheap checks of :func:`devices.lone_worker_wire.first_look` (size, topic, a JSON object whose
  ``type`` and ``device_id`` match the topic): garbage is refused and acknowledged at once, never
  queued behind valid alarms;
- the device's token bucket (``EVIDENCE_MQTT_DEVICE_RATE`` a second, bursts of
  ``EVIDENCE_MQTT_DEVICE_BURST``): a device over its rate is refused at the door;
- the device's queue (at most ``EVIDENCE_MQTT_DEVICE_QUEUE`` messages waiting): the service holds
  the broker's acknowledgement of each waiting message, and the broker sends only so many
  unacknowledged messages at a time, so no device may hold many of them.

An alarm being raised (sos, amber, man down) gets ahead of a device's own other messages and may go
beyond its rate, one waiting at a time, so a flooding device's genuine SOS can still get through.

Workers take the devices in turn (round robin): one message of each device with work waiting, so a
busy device's queue costs the others one message's handling at most. A device's messages are
handled one at a time, in the order they came.

A device refused for its rate or its queue is flagged once (a log line, a gauge and the device's
state row) and unflagged once it has kept to its share for ``CALM_S``; its refusals are counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

CALM_S = 60.0  # how long a flagged device keeps to its share before it is unflagged
RAISE_BEYOND_RATE = 1  # alarms being raised that may wait beyond a device's rate, at a time
# How many alarms a second may go beyond a device's rate (bursts of RAISE_BURST): garbage shaped like
# an SOS cannot be told from one before its signature is checked, so this bounds what it can cost.
RAISE_RATE = 1.0
RAISE_BURST = 3.0


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; a message takes one."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Lane(Generic[T]):
    bucket: TokenBucket
    raises: TokenBucket
    waiting: deque[tuple[T, bool]] = field(default_factory=deque)  # (item, an alarm being raised)
    busy: bool = False  # a worker holds one of its messages
    flagged_at: float | None = None
    last_refusal: float = 0.0
    refused: int = 0  # while flagged


@dataclass(frozen=True)
class Admission(Generic[T]):
    """What the door decided: ``refused`` is ``None`` when the item was queued; ``evicted`` are items
    pushed out to make room for an alarm; ``flagged`` is true for the refusal that flagged the device,
    ``over_share`` while the device is flagged (its refusals are counted, not each logged)."""

    refused: str | None = None  # rate_limited | queue_full
    evicted: tuple[T, ...] = ()
    flagged: bool = False
    over_share: bool = False
    beyond_rate: bool = False  # let in beyond the rate as a possible alarm being raised


class FairShare(Generic[T]):
    """Per-device bounded queues and token buckets, taken round robin by any number of workers."""

    def __init__(
        self, *, rate: float, burst: float, queue_limit: int, clock: Callable[[], float] = time.monotonic
    ):
        self.rate = rate
        self.burst = max(1.0, burst)
        self.queue_limit = max(1, queue_limit)
        self.clock = clock
        self._lanes: dict[str, _Lane[T]] = {}
        self._flagged: set[str] = set()  # devices whose lanes are flagged (the scans look only here)
        self._turns: deque[str] = deque()  # devices with messages waiting and no worker on them
        self._cond = threading.Condition()
        self._closed = False
        self._pending = 0  # messages waiting or being handled
        self.idle = threading.Event()  # set while nothing waits or is being handled
        self.idle.set()

    # ------------------------------------------------------------------ the door (network thread)

    def admit(self, device: str, *, maybe_raise: bool = False) -> Admission[T]:
        """The device's token for one message, before anything is read of it: over its rate, it is
        refused (``maybe_raise``: the bytes may be an alarm being raised, which may go beyond the
        rate a little). Call :meth:`enqueue` next if it is let in and passes the cheap checks."""
        now = self.clock()
        with self._cond:
            lane = self._lane(device)
            if lane.bucket.take(now):
                return Admission(None, (), False, lane.flagged_at is not None)
            if maybe_raise and self._raises(lane) < RAISE_BEYOND_RATE and lane.raises.take(now):
                return Admission(None, (), False, lane.flagged_at is not None, beyond_rate=True)
            return self._refuse(device, lane, "rate_limited", now)

    def enqueue(self, device: str, item: T, *, urgent_raise: bool = False) -> Admission[T]:
        """Queue an admitted message that passed the cheap checks, if its device's queue has room
        (an alarm being raised makes room by pushing out one of the device's other messages)."""
        now = self.clock()
        with self._cond:
            lane = self._lane(device)
            evicted: tuple[T, ...] = ()
            if len(lane.waiting) >= self.queue_limit:
                if not urgent_raise:
                    return self._refuse(device, lane, "queue_full", now)
                victim = next((i for i, (_, r) in enumerate(lane.waiting) if not r), None)
                if victim is None:
                    return self._refuse(device, lane, "queue_full", now)
                evicted = (lane.waiting[victim][0],)
                del lane.waiting[victim]
                self._pending -= 1
            if urgent_raise:  # ahead of the device's own other messages, behind its earlier alarms
                at = next((i for i, (_, r) in enumerate(lane.waiting) if not r), len(lane.waiting))
                lane.waiting.insert(at, (item, True))
            else:
                lane.waiting.append((item, False))
            self._pending += 1
            self.idle.clear()
            if len(lane.waiting) == 1 and not lane.busy:
                self._turns.append(device)
                self._cond.notify()
            return Admission(None, evicted, False, lane.flagged_at is not None)

    def refuse(self, device: str, reason: str) -> Admission[T]:
        """Refuse an admitted message after all (it let itself in as an alarm being raised and
        was not one): counted against the device like any refusal for its share."""
        with self._cond:
            return self._refuse(device, self._lane(device), reason, self.clock())

    def _lane(self, device: str) -> _Lane[T]:
        lane = self._lanes.get(device)
        if lane is None:  # (devices are only those the broker lets in: bounded by the registry)
            lane = self._lanes[device] = _Lane(
                TokenBucket(self.rate, self.burst), TokenBucket(RAISE_RATE, RAISE_BURST)
            )
        return lane

    @staticmethod
    def _raises(lane: _Lane[T]) -> int:
        return sum(1 for _, r in lane.waiting if r)

    def _refuse(self, device: str, lane: _Lane[T], reason: str, now: float) -> Admission[T]:
        """Refused; a device over its rate is flagged (a full queue alone may be the service's
        slowness, a backlog the broker delivers at once, not the device's doing)."""
        if reason != "rate_limited":
            return Admission(reason, (), False, lane.flagged_at is not None)
        lane.last_refusal = now
        flagged = lane.flagged_at is None
        if flagged:
            lane.flagged_at, lane.refused = now, 0
            self._flagged.add(device)
        lane.refused += 1
        return Admission(reason, (), flagged, True)

    # ------------------------------------------------------------------ workers

    def take(self, limit: int, timeout: float | None = None) -> list[tuple[str, T]]:
        """The next message of each of up to ``limit`` devices, in turn; waits for one at least.
        Empty when closed (or on timeout). Call :meth:`done` with the devices once handled."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._turns or self._closed, timeout):
                return []
            taken: list[tuple[str, T]] = []
            while self._turns and len(taken) < limit:
                device = self._turns.popleft()
                lane = self._lanes[device]
                item, _ = lane.waiting.popleft()
                lane.busy = True
                taken.append((device, item))
            return taken

    def done(self, devices: list[str]) -> None:
        """The devices' taken messages are handled: their next ones go to the back of the turns."""
        with self._cond:
            for device in devices:
                lane = self._lanes[device]
                lane.busy = False
                self._pending -= 1
                if lane.waiting:
                    self._turns.append(device)
                    self._cond.notify()
            if self._pending <= 0 and not self._turns:
                self._pending = 0
                self.idle.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ flags

    def calmed(self) -> list[tuple[str, int]]:
        """Flagged devices that have kept to their share for ``CALM_S``, unflagged now, with the
        number of their messages refused while they were flagged."""
        now = self.clock()
        out: list[tuple[str, int]] = []
        with self._cond:
            for device in list(self._flagged):  # every few tenths of a second: never all the lanes
                lane = self._lanes[device]
                if lane.flagged_at is not None and now - lane.last_refusal >= CALM_S:
                    out.append((device, lane.refused))
                    lane.flagged_at, lane.refused = None, 0
                    self._flagged.discard(device)
        return out

    def flagged(self) -> dict[str, int]:
        """Devices flagged now, with their refusals so far."""
        with self._cond:
            return {d: self._lanes[d].refused for d in self._flagged}
