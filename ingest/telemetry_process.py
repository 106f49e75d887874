"""The telemetry companion: heartbeats, locations and status messages in a process of their own.

Python threads share one interpreter lock, so in a single process every step of an SOS (a dozen
short database round trips) queues for the lock behind heartbeat work. With
``EVIDENCE_MQTT_TELEMETRY_PROCESS=true`` the service consumes only alarms and check-ins itself and
starts ``evidence alarm-worker`` for the rest: same settings, its own persistent MQTT session
(``<client id>-telemetry``), no escalation loop (that stays here), a nice increment so the
operating system favours the alarm process when both want a core. It is restarted when it dies.

Both processes count into one set of Prometheus metrics (``prometheus_client``'s multiprocess mode,
files under ``<data_dir>/metrics``), so ``/metrics`` here shows the companion's counters too. That
mode has to be chosen before ``prometheus_client`` is first imported: ``evidence serve`` does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from devices.lone_worker_wire import DEVICE_TOPICS
from storage.embedded import EmbeddedSeaweed
from storage.retries import (
    RESTART_BACKOFF,
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
)
from storage.settings import Settings

log = logging.getLogger(__name__)

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
URGENT_TYPES = frozenset({"alarm", "checkin"})
TELEMETRY_TYPES = frozenset(DEVICE_TOPICS) - URGENT_TYPES
RESTART_MIN_S = 1.0
ROOT = Path(__file__).resolve().parent.parent


def configured_types(settings: Settings) -> frozenset[str]:
    """``EVIDENCE_MQTT_MESSAGE_TYPES`` (checked by the settings); all types when empty."""
    named = {t for t in (settings.mqtt_message_types or "").split(",") if t}
    return frozenset(named) or frozenset(DEVICE_TOPICS)


def telemetry_process_wanted(settings: Settings) -> bool:
    """Asked for, and workable: a consumer runs here, on a database two processes can share, and
    the types it is configured for include both alarms and telemetry."""
    types = configured_types(settings)
    return bool(
        settings.mqtt_telemetry_process
        and settings.mqtt_consumer_enabled
        and settings.mqtt_host
        and settings.mqtt_username
        and not settings.resolved_database_url.startswith("sqlite")
        and types & URGENT_TYPES
        and types & TELEMETRY_TYPES
    )


def prepare_shared_metrics(settings: Settings) -> None:
    """Choose multiprocess metrics for this process and its companion (a fresh directory: counts of
    an earlier run must not be added to this one's). Call before importing ``prometheus_client``."""
    if not telemetry_process_wanted(settings):
        return
    if "prometheus_client" in sys.modules and METRICS_ENV not in os.environ:
        log.warning("metrics already initialised; the telemetry process's counts will not show here")
        return
    directory = (Path(settings.data_dir) / "metrics").resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.environ[METRICS_ENV] = str(directory)


def settings_environment(settings: Settings, embedded: EmbeddedSeaweed | None) -> dict[str, str]:
    """The companion's environment: this process's settings as ``EVIDENCE_*`` variables (whether they
    came from the environment, a ``.env`` file or code), pointed at the same object store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVIDENCE_")}
    env.update(settings.as_environment())
    env["EVIDENCE_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    env["EVIDENCE_DATABASE_URL"] = settings.resolved_database_url
    if embedded is not None:  # the store this process started, not a second one
        env["EVIDENCE_S3_ENDPOINT"] = embedded.endpoint
        env["EVIDENCE_S3_ACCESS_KEY"] = embedded.credentials.access_key
        env["EVIDENCE_S3_SECRET_KEY"] = embedded.credentials.secret_key
    env["EVIDENCE_MQTT_MESSAGE_TYPES"] = ",".join(sorted(configured_types(settings) & TELEMETRY_TYPES))
    env.pop("EVIDENCE_ADMIN_PASSWORD", None)  # the demo's; the companion has no use for it
    env["EVIDENCE_MQTT_TELEMETRY_PROCESS"] = "false"
    env["EVIDENCE_MQTT_CLIENT_ID"] = f"{settings.service_client_id}-telemetry"
    return env


class TelemetryProcess:
    """Starts, watches and stops the companion (``evidence alarm-worker``)."""

    def __init__(self, settings: Settings, embedded: EmbeddedSeaweed | None) -> None:
        self.settings = settings
        self.embedded = embedded
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> subprocess.Popen[bytes]:
        settings = self.settings
        command = [
            sys.executable,
            "-m",
            "ingest.cli",
            "alarm-worker",
            "--no-escalation",
            "--parent-pid",
            str(os.getpid()),
            "--nice",
            str(settings.mqtt_telemetry_nice),
        ]
        # Its log lines go where this process's go (inherited stdout and stderr).
        self.process = subprocess.Popen(command, cwd=ROOT, env=settings_environment(settings, self.embedded))
        self.starts += 1
        log.info("telemetry process started", extra={"pid": self.process.pid, "starts": self.starts})
        return self.process

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        _forget_metrics_of(process.pid)

    async def watch(self) -> None:
        """Keep it running (restarting with ``RESTART_BACKOFF`` when it dies) until cancelled, then
        stop it. One that ran a good while before it ended is restarted at the shortest delay."""
        try:
            while True:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type((OSError, _EndedEarly)),
                    wait=RESTART_BACKOFF,
                    stop=stop_never,
                    before_sleep=_note_restart,
                ):
                    with attempt:
                        await self._run_once()
                log.error("telemetry process exited; restarting", extra={"restart_in": RESTART_MIN_S})
                await asyncio.sleep(RESTART_MIN_S)
        finally:
            await asyncio.to_thread(self.stop)

    async def _run_once(self) -> None:
        """Start it and wait for it to end; :class:`_EndedEarly` if that was within a minute (a crash loop)."""
        process = await asyncio.to_thread(self.start)
        started = asyncio.get_running_loop().time()
        while (code := process.poll()) is None:  # no executor thread held for its lifetime
            await asyncio.sleep(0.5)
        _forget_metrics_of(process.pid)
        if asyncio.get_running_loop().time() - started <= 60:
            raise _EndedEarly(code)


class _EndedEarly(Exception):
    """The companion ended soon after it started."""


def _note_restart(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _EndedEarly):
        log.error(
            "telemetry process exited; restarting",
            extra={"exit_code": exc.args[0], "restart_in": state.upcoming_sleep},
        )
    else:
        log.error(
            "telemetry process could not be started",
            extra={"error": str(exc), "retry_in": state.upcoming_sleep},
        )


def _forget_metrics_of(pid: int) -> None:
    if os.environ.get(METRICS_ENV):
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid)


def discard_companion_session(settings: Settings, timeout: float = 5.0) -> None:
    """End the persistent session of a companion this instance no longer runs (connect with a
    clean start and no expiry): the broker would otherwise keep handing it a share of the
    telemetry that nobody reads, and devices on a visit would look silent."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client_id = f"{settings.service_client_id}-telemetry"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if settings.mqtt_username:
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        client.username_pw_set(settings.mqtt_username, password)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    try:
        client.connect(settings.mqtt_host, settings.mqtt_port, clean_start=True, properties=properties)
    except OSError as exc:
        log.warning("could not clear an earlier telemetry session", extra={"error": str(exc)})
        return
    client.loop_start()
    try:
        if connected.wait(timeout):
            log.info("earlier telemetry session cleared", extra={"client_id": client_id})
        else:
            log.warning("could not clear an earlier telemetry session", extra={"client_id": client_id})
    finally:
        client.disconnect()
        client.loop_stop()
