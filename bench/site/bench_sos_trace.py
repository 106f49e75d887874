"""Benchmark-only: where an SOS's time goes inside the service (``bench/alarms.py --trace``).

Loaded by ``bench/site/sitecustomize.py`` in a process whose ``BENCH_SOS_TRACE`` names a file (not
an ``EVIDENCE_`` variable, which the telemetry companion would not inherit), it wraps a few of the
service's own functions and appends one line per event to that file: the wall clock
(``time.time()``, the clock the bench's devices stamp their sends with), the process, the thread,
what happened, and, around an alarm's handling, the thread's own scheduler statistics
(``/proc/thread-self/schedstat``: nanoseconds on a CPU and waiting on a run queue). Python's garbage
collections are timed too. Nothing here changes what the service does; it is never on the service's
own path (only the bench puts ``bench/site`` on ``PYTHONPATH``).

Events: ``recv`` (an alarm's message reached the network thread), ``handle``/``handled`` (the alarm
worker's transaction and its end, after the commit), ``publish`` (the ack handed to paho),
``whole``/``wholed`` (a provisional alarm made whole), ``payload``/``payloaded`` (its payload's put),
``gather``/``gathered`` (a tree head waiting for company), ``head``/``headed`` (a tree head's put),
``batch``/``batched`` (a batch of telemetry), ``gc``/``gced`` (a collection, with its generation);
and the service's periodic work: ``pass``/``passed`` (one pass of the clock, every 0.5 s) and
``step``/``stepped`` (its pieces, named), ``sweep``/``swept`` (the clock's 30 s sweeps for deadlines
changed in the database, named), ``house``/``housed`` (the 30 s housekeeping pass: checkpoint,
uploads, viewings) and ``relay``/``relayed`` (the outbox relay marking sent what the broker took,
every 0.2 s).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

from bench_trace_tools import after_import, schedstat

_PATH = os.environ.get("BENCH_SOS_TRACE")
_FD: int | None = None
_PID = os.getpid()


def _schedstat() -> str:
    return schedstat(" ", "- -")


def emit(what: str, detail: str = "", sched: bool = False) -> None:
    global _FD, _PID
    if _PATH is None:
        return
    if _FD is None or _PID != os.getpid():  # (a forked child opens its own)
        _FD = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _PID = os.getpid()
    stats = _schedstat() if sched else "- -"
    line = f"{time.time():.6f} {_PID} {threading.current_thread().name.replace(' ', '_')} {what} {detail or '-'} {stats}\n"
    os.write(_FD, line.encode())


def _wrap(cls: Any, name: str, start: str, end: str, detail: Any = None, sched: bool = False) -> None:
    original = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        d = detail(*args, **kwargs) if detail is not None else ""
        emit(start, d, sched)
        try:
            return original(*args, **kwargs)
        finally:
            emit(end, d, sched)

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(cls, name, wrapper)


def _device(topic: str) -> str:
    parts = topic.split("/")
    return parts[2] if len(parts) > 3 else "?"


def _gc(phase: str, info: dict[str, Any]) -> None:
    emit("gc" if phase == "start" else "gced", str(info.get("generation")))


def _install() -> None:
    import alarms.service as alarm_service
    from alarms.clock import Clock
    from alarms.intake import Intake
    from alarms.lifecycle import Lifecycle
    from alarms.outbox import Outbox
    from alarms.payloads import PayloadEvidence
    from alarms.visits import Visits
    from chain_of_custody.tree_heads import TreeHeadLog
    from ingest.mqtt_consumer import AlarmConsumer

    original_on_message = AlarmConsumer._on_message

    def on_message(self: Any, client: Any, userdata: Any, msg: Any) -> None:
        if "/alarm" in msg.topic:
            emit("recv", _device(msg.topic))
        original_on_message(self, client, userdata, msg)

    AlarmConsumer._on_message = on_message  # type: ignore[method-assign]

    original_send = AlarmConsumer.send

    def send(self: Any, messages: list[Any]) -> None:
        original_send(self, messages)
        for m in messages:
            if m.topic.endswith("/ack"):
                emit("publish", _device(m.topic))

    AlarmConsumer.send = send  # type: ignore[method-assign]

    _wrap(Intake, "handle", "handle", "handled", lambda self, topic, *a, **k: _device(topic), sched=True)
    _wrap(Intake, "handle_many", "batch", "batched", lambda self, messages, *a, **k: str(len(messages)))
    _wrap(Lifecycle, "make_whole_if_provisional", "whole", "wholed", sched=True)
    _wrap(PayloadEvidence, "put", "payload", "payloaded")
    _wrap(TreeHeadLog, "_gather", "gather", "gathered")
    _wrap(TreeHeadLog, "_write", "head", "headed")
    _wrap(alarm_service, "run_pass", "pass", "passed", sched=True)
    _wrap(Clock, "restore_deadlines", "sweep", "swept", lambda *a, **k: "alarms", sched=True)
    _wrap(Clock, "restore_offline_deadlines", "sweep", "swept", lambda *a, **k: "offline", sched=True)
    _wrap(Visits, "restore_deadlines", "sweep", "swept", lambda *a, **k: "visits", sched=True)
    _wrap(AlarmConsumer, "_flush_sent", "relay", "relayed")
    for step in ("fire_deadlines", "raise_missed_checkins", "raise_offline", "store_deferred_evidence",
                 "sample_trails"):  # fmt: skip
        _wrap(alarm_service.AlarmService, step, "step", "stepped", lambda *a, _s=step, **k: _s, sched=True)
    _wrap(Outbox, "send_webhooks", "step", "stepped", lambda *a, **k: "send_webhooks", sched=True)
    gc.callbacks.append(_gc)


def _install_app() -> None:
    import ingest.app as app

    _wrap(app, "housekeeping_pass", "house", "housed", sched=True)


def _not_installed(exc: Exception) -> None:
    emit("trace-not-installed", type(exc).__name__)


if _PATH is not None:
    # Right after the service itself imports ``ingest.mqtt_consumer`` (which imports everything
    # wrapped; ``ingest.app``'s own after it).
    after_import("ingest.mqtt_consumer", _install, _not_installed)
    after_import("ingest.app", _install_app, _not_installed)
