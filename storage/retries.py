"""Every in-process retry the service makes, one named policy per purpose, all on ``tenacity``.

A caller names the policy it follows and leaves the counting, the waiting and the giving up to it,
so two places that retry for the same reason cannot drift apart. Retries that outlive the process
(a due outbox row, an interrupted job) are leases and schedules in the database, not these.

Where a call nearly always succeeds at the first try (a device message, a replayed device state),
:func:`after_first_failure` makes that try a plain call and sets the policy up only once it has
failed, with that failure as the policy's first attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_fixed,
    wait_none,
)

__all__ = [
    "RESTART_BACKOFF",
    "TRANSIENT_BACKOFF",
    "AsyncRetrying",
    "RetryCallState",
    "RetryError",
    "Retrying",
    "after_first_failure",
    "another_port",
    "faults_of_ours",
    "keeping_aside",
    "replay_changed",
    "retry_if_exception_type",
    "stop_never",
]

T = TypeVar("T")

# A device message waits for the database or the store to come back: 0.4 s, doubling, at most 10 s,
# for as long as the consumer runs (``ingest.mqtt_consumer``).
TRANSIENT_BACKOFF = wait_exponential(multiplier=0.4, max=timedelta(seconds=10))

# A telemetry companion that keeps dying waits before its next start: 1 s, doubling, at most 30 s
# (``ingest.telemetry_process``).
RESTART_BACKOFF = wait_exponential(multiplier=1, min=1, max=30)


def replay_changed(*conflicts: type[BaseException], attempts: int = 50) -> Retrying:
    """A device's replay state changed under a message (another instance wrote it first): read
    again and decide again at once, ``attempts`` tries in all, then :class:`RetryError`
    (``alarms.intake``). One object may serve every thread."""
    return Retrying(
        retry=retry_if_exception_type(conflicts), stop=stop_after_attempt(attempts), wait=wait_none()
    )


def _ours_unless(stopping: type[BaseException]) -> retry_if_exception:
    return retry_if_exception(lambda exc: isinstance(exc, Exception) and not isinstance(exc, stopping))


def faults_of_ours(attempts: int, *, unless: type[BaseException]) -> Retrying:
    """A fault of ours handling a device message: tried again at once, ``attempts`` tries in all,
    then the last fault is raised and the message kept aside (``ingest.mqtt_consumer``). ``unless``
    (the consumer stopping) is raised at once."""
    return Retrying(
        retry=_ours_unless(unless), stop=stop_after_attempt(attempts), wait=wait_none(), reraise=True
    )


# Keeping a message aside failed too: wait this long, then try it once more.
KEEPING_ASIDE_PAUSE_S = 5.0


def keeping_aside(sleep: Callable[[float], None], *, unless: type[BaseException]) -> Retrying:
    """Keeping a failed message aside failed too: ``KEEPING_ASIDE_PAUSE_S``, then once more, for
    as long as ``sleep`` returns; ``unless`` (raised by ``sleep`` when the consumer stops) ends it."""
    return Retrying(
        retry=_ours_unless(unless),
        wait=wait_fixed(KEEPING_ASIDE_PAUSE_S),
        stop=stop_never,
        sleep=sleep,
        reraise=True,
    )


def another_port(attempts: int) -> Retrying:
    """A process that would not start (``RuntimeError``) on a free port, which may have been taken
    meanwhile: again at once on another, ``attempts`` tries in all, then the last failure is raised
    (``devices.broker_access``)."""
    return Retrying(
        retry=retry_if_exception_type(RuntimeError),
        stop=stop_after_attempt(attempts),
        wait=wait_none(),
        reraise=True,
    )


def after_first_failure(policy: Retrying, call: Callable[[], T], first: BaseException) -> T:
    """Go on with ``policy`` after a plain first ``call`` failed with ``first``, which counts as the
    policy's first attempt: its waits, its stop and what it tells are as if it had made that try."""
    failed = [first]

    def attempt() -> T:
        if failed:
            raise failed.pop()
        return call()

    return policy(attempt)
