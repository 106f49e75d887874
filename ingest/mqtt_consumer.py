"""The MQTT consumer: lone-worker device messages from the broker into :class:`alarms.service.AlarmService`.

- MQTT v5 with a persistent session (clean start off, a long session expiry): while an instance is
  away the broker keeps queueing its share, and a restarted instance with the same client id picks
  it up. Instance client ids must therefore be stable (one per instance, e.g. a host or pod name).
- Shared subscriptions (``$share/<group>/lw/v1/+/<topic>``) split the stream between instances.
- Manual acknowledgement: the PUBACK for a device message goes only after its transaction has
  committed, so a crash at any point leaves the message with the broker, which delivers it again;
  the service absorbs the repeat as a duplicate. Every alarm is stored exactly once.
- Never dies on bad input (the wire checks answer with a verdict, not an exception); faults of ours
  or of the database are retried with backoff, and a message that still fails is kept in a
  dead-letter table before it is acknowledged.
- Each device a fair share (:mod:`ingest.device_share`): garbage is refused and acknowledged in the
  network thread by cheap checks, before any database or signature work; each device has a rate and a
  short queue, and workers take the devices in turn, so a flooding device costs the others at most one
  message's handling. The flooding device is flagged once, and its refusals counted.
- Alarms first: alarm and check-in messages have a queue and a worker of their own, so an SOS never
  waits behind heartbeats. A raised alarm is acknowledged as soon as its row is committed, and is
  provisional until a worker of its own makes it whole: stores its payload as evidence, appends its
  custody entry and opens or joins its incident (the clock's loop finishes any an instance left
  behind). While alarms are waiting or being handled, the other workers pause at their next message,
  and the clock's pass in this process before its next transaction (each for at most
  ``PRIORITY_PAUSE_S``): Python threads share one interpreter lock, and an alarm's many short
  database round trips would otherwise queue behind heartbeat or clock work for the lock at every one.
- Effects (acks to devices, escalation messages) come from the outbox: published at once after the
  commit, marked sent when the broker has them, and resent by the outbox relay of any instance if
  this one failed to.
- TCP_NODELAY on the socket: acks are small, and Nagle's algorithm would hold each one up to 40 ms.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter, Gauge
from sqlalchemy.exc import DBAPIError

from alarms.intake import MESSAGES, REJECTION_LOG, REJECTIONS
from alarms.outbox import Outgoing
from alarms.service import AlarmService, wait_for_nothing
from devices.lone_worker_wire import DEVICE_TOPICS, FirstLook, first_look, parse_topic, service_subscriptions
from storage.objects import StorageError
from storage.retries import (
    TRANSIENT_BACKOFF,
    RetryCallState,
    Retrying,
    after_first_failure,
    faults_of_ours,
    keeping_aside,
    retry_if_exception_type,
    stop_never,
)
from storage.settings import Settings

from .device_share import Admission, FairShare
from .telemetry_process import TELEMETRY_TYPES, URGENT_TYPES, configured_types

log = logging.getLogger(__name__)

CONNECTED = Gauge(
    "evidence_mqtt_connected",
    "Whether the alarm consumer is connected to the broker",
    multiprocess_mode="liveall",  # per live process (with a telemetry process); dead ones drop out
)
CONSUMER_ERRORS = Counter(
    "evidence_mqtt_consumer_errors_total", "Device messages whose handling failed and was retried", ["kind"]
)
DEAD_LETTERS = Counter("evidence_mqtt_dead_letters_total", "Device messages kept after repeated failures")
OVER_SHARE = Gauge(
    "evidence_lone_worker_devices_over_share",
    "Devices flagged now for sending beyond their rate or queue (see the log for which)",
    multiprocess_mode="livesum",
)
FLAGGED = Counter("evidence_lone_worker_devices_flagged_total", "Times a device was flagged for flooding")

TRANSIENT = (DBAPIError, StorageError, OSError, TimeoutError)
BATCH_MAX = 64  # messages handled in one transaction when they have queued up
# How long a worker taking heartbeats, locations and status messages waits for company: a batch
# costs one transaction, one read of its devices and one pipelined write of their state rows, so at
# 200 heartbeats a second ten share what each would pay alone. Liveness is judged in tens of seconds.
TELEMETRY_LINGER_S = 0.05
# Unacknowledged deliveries the broker may hand this consumer at once (the broker's own
# max_inflight_messages caps it too): each device holds at most its queue of them, so many devices
# flooding at once cannot use them all up.
RECEIVE_MAXIMUM = 1000
PRIORITY_PAUSE_S = 0.5  # the longest other work waits for alarms, so heartbeats are never starved
SWITCH_INTERVAL_S = 0.0005  # how long a thread may keep the interpreter lock from an alarm worker
# How long making provisional alarms whole waits for the acks just published to reach the broker
# (their PUBACKs): it would otherwise take the interpreter from the network thread writing them.
ACK_WRITE_WAIT_S = 0.02


class AlarmParts(Protocol):
    """What a consumer needs of the running service."""

    settings: Settings
    alarms: AlarmService


def consumed_types(settings: Settings, *, companion: bool = False) -> frozenset[str]:
    """The device message types this instance consumes: the configured ones, less the telemetry
    when a companion process (started by this one) takes it."""
    types = configured_types(settings)
    if companion:
        types -= TELEMETRY_TYPES  # never all of them: no companion unless alarms are left here
    return types


class _Stopping(Exception):
    """The consumer is stopping while a message waits to be retried: leave it with the broker."""


@dataclass
class _Delivery:
    generation: int
    device: str
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


class AlarmConsumer:
    """One MQTT connection and a few worker threads; thread-safe ``send`` for effects."""

    def __init__(
        self,
        services: AlarmParts,
        *,
        alarms: AlarmService | None = None,
        client_id: str | None = None,
        share_group: str | None = None,
        workers: int | None = None,
        companion: bool = False,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        relay_interval_s: float = 1.0,
        max_attempts: int = 3,
        linger_s: float = TELEMETRY_LINGER_S,
    ) -> None:
        settings = services.settings
        self.services = services
        self.settings = settings
        self.alarms = alarms or services.alarms
        self.client_id = client_id or settings.service_client_id
        self.share_group = settings.service_share_group if share_group is None else share_group
        self.types = consumed_types(settings, companion=companion)
        self.workers = max(1, workers or settings.mqtt_workers)
        self.relay_interval_s = relay_interval_s
        self.max_attempts = max_attempts
        self.linger_s = linger_s
        self.handled = 0
        self._running = False
        self._conn_lock = threading.Lock()
        self._generation = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()

        def fair_share() -> FairShare[_Delivery]:
            return FairShare(
                rate=settings.mqtt_device_rate,
                burst=settings.mqtt_device_burst,
                queue_limit=settings.mqtt_device_queue,
            )

        self._telemetry = fair_share()
        self._urgent = fair_share()
        self._urgent_idle = self._urgent.idle  # set while no alarm waits or is being handled
        # Flags to write to devices' state rows (by the relay thread, never the network thread).
        self._flag_changes: list[tuple[str, datetime | None]] = []
        self._flagged: set[str] = set()  # over their share of either kind of message
        self._flag_lock = threading.Lock()
        self._provisional_raised = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pub_lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> outbox id, for this connection
        self._early: dict[int, float] = {}  # PUBACKs that beat the bookkeeping, and when
        self._sent: list[int] = []
        self._acks_written = threading.Event()  # set while no published effect awaits its PUBACK
        self._acks_written.set()
        self._wake = threading.Event()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            client.username_pw_set(settings.mqtt_username, password)
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        client.max_queued_messages_set(0)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.client = client

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AlarmConsumer:
        """Connect in the background (retrying until the broker answers) and start the workers."""
        self._running = True
        self._take_over_effects()
        # Process-wide: a thread doing CPU work hands the interpreter lock over after this long
        # (5 ms by default), which bounds what each of an alarm's database round trips can cost.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        workers = [
            threading.Thread(
                target=self._work, args=(self._telemetry, False), name=f"device-worker-{i}", daemon=True
            )
            for i in range(self.workers)  # also for types consumed elsewhere that still arrive
        ]
        workers.append(
            threading.Thread(target=self._work, args=(self._urgent, True), name="alarm-worker", daemon=True)
        )
        workers.append(
            threading.Thread(target=self._make_provisional_whole, name="alarm-make-whole", daemon=True)
        )
        workers.append(threading.Thread(target=self._relay, name="alarm-outbox-relay", daemon=True))
        for thread in workers:
            thread.start()
        self._threads.extend(workers)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = int(self.settings.mqtt_session_expiry_seconds)
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        log.info(
            "alarm consumer starting",
            extra={
                "client_id": self.client_id,
                "broker": f"{self.settings.mqtt_host}:{self.settings.mqtt_port}",
                "shared": bool(self.share_group),  # the group's name stays out of the logs
                "types": ",".join(sorted(self.types)),
            },
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the messages being handled, acknowledge them, and leave (the session stays)."""
        if not self._running:
            return
        self._running = False
        self._telemetry.close()
        self._urgent.close()
        self._wake.set()
        self._provisional_raised.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self._flush_sent()
        self._hand_back_effects()
        self.client.disconnect()
        self.client.loop_stop()
        CONNECTED.set(0)
        log.info("alarm consumer stopped", extra={"client_id": self.client_id, "handled": self.handled})

    def _take_over_effects(self) -> None:
        """Effects are published by this consumer, provisional alarms made whole by its worker, and
        the clock's passes in this process go between its alarms (``alarms.service.run_pass``)."""
        self.alarms.publisher = self.send
        self.alarms.make_whole_inline = False
        self.alarms.alarms_first = self._alarms_first

    def _hand_back_effects(self) -> None:
        if self.alarms.publisher == self.send:
            self.alarms.publisher = None
            self.alarms.make_whole_inline = True
        if self.alarms.alarms_first == self._alarms_first:
            self.alarms.alarms_first = wait_for_nothing

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Connected and subscribed."""
        return self._connected.wait(timeout) and self._subscribed.wait(timeout)

    # ------------------------------------------------------------------ paho callbacks (network thread)

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the alarm consumer", extra={"reason": str(reason)})
            return
        with self._conn_lock:
            self._generation += 1
        options = SubscribeOptions(qos=1)
        group = self.share_group or None
        client.subscribe([(f, options) for f in service_subscriptions(group, self.types)])
        if flags.session_present:
            # A persistent session keeps what an earlier run of this instance subscribed to: drop the
            # types now consumed elsewhere, or their messages would keep arriving here.
            others = service_subscriptions(group, set(DEVICE_TOPICS) - self.types)
            if others:
                client.unsubscribe(others)
        self._connected.set()
        CONNECTED.set(1)
        log.info(
            "alarm consumer connected",
            extra={"client_id": self.client_id, "session_present": bool(flags.session_present)},
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("alarm subscriptions refused", extra={"reasons": failed})
        else:
            self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._conn_lock:
            self._generation += 1
        with self._pub_lock:
            self._inflight.clear()
            self._early.clear()
            self._acks_written.set()
        self._connected.clear()
        self._subscribed.clear()
        CONNECTED.set(0)
        if self._running:
            log.warning("alarm consumer lost the broker; reconnecting", extra={"reason": str(reason)})

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        parts = parse_topic(msg.topic)
        device = parts[0] if parts is not None else "?"  # (the broker lets no device go beyond its own)
        with self._conn_lock:
            generation = self._generation
        delivery = _Delivery(generation, device, msg.topic, payload, msg.mid, msg.qos, bool(msg.retain))
        # Alarms and check-ins have a worker of their own; a device's other messages are handled one
        # at a time in the order they came, by whichever worker takes its turn. (The replay window
        # accepts a heartbeat overtaken by an alarm, and the reverse.)
        urgent = parts is not None and parts[1] in URGENT_TYPES
        share = self._urgent if urgent else self._telemetry
        # The device's rate first: a flooding device's messages are refused before they are even read.
        admission = share.admit(device, maybe_raise=urgent and b'"raise"' in payload)
        if admission.refused is not None:
            self._refuse(
                delivery, FirstLook(device, parts[1] if parts else None), admission.refused, admission
            )
            return
        look = first_look(payload, msg.topic, self.settings.max_payload_bytes)
        if look.refused is not None:  # garbage: refused now, never queued behind valid messages
            self._refuse(delivery, look, look.refused.reason.value, admission)
            return
        if admission.beyond_rate and not look.urgent_raise:
            self._refuse(delivery, look, "rate_limited", share.refuse(device, "rate_limited"))
            return
        admission = share.enqueue(device, delivery, urgent_raise=look.urgent_raise)
        for evicted in admission.evicted:  # made room for an alarm being raised
            self._refuse(evicted, FirstLook(evicted.device, look.type), "queue_full", admission)
        if admission.refused is not None:
            self._refuse(delivery, look, admission.refused, admission)

    def _refuse(self, delivery: _Delivery, look: FirstLook, reason: str, admission: Admission[Any]) -> None:
        """Refused at the door: acknowledged at once (the broker's delivery, not the device's
        message: the device hears nothing and sends an alarm again), counted, and logged unless the
        device is flagged (then it is counted only; its flag was logged once)."""
        self._ack(delivery)
        REJECTIONS.labels(reason=reason).inc()
        MESSAGES.labels(type=look.type or "unknown", outcome="rejected").inc()
        if admission.flagged and self._flag(delivery.device):
            log.warning(
                "device flagged: it sends beyond its share; its messages over the share are refused "
                "and counted, not logged",
                extra={
                    "device": delivery.device,
                    "reason": reason,
                    "rate_per_s": self.settings.mqtt_device_rate,
                    "queue": self.settings.mqtt_device_queue,
                },
            )
        elif not admission.over_share and look.refused is not None and reason == look.refused.reason.value:
            REJECTION_LOG.log(
                delivery.device,
                reason=reason,
                detail=look.refused.detail,
                topic=delivery.topic[:160],
                bytes=len(delivery.payload),
            )

    def _flag(self, device: str) -> bool:
        """Flag a device (over its rate for alarms, or for telemetry); False if it already was."""
        with self._flag_lock:
            if device in self._flagged:
                return False
            self._flagged.add(device)
            self._flag_changes.append((device, datetime.now(UTC)))
        OVER_SHARE.inc()
        FLAGGED.inc()
        return True

    def _calmed(self) -> None:
        """Unflag devices that have kept to all their shares a while (one line each)."""
        for share in (self._urgent, self._telemetry):
            for device, refused in share.calmed():
                still = device in self._urgent.flagged() or device in self._telemetry.flagged()
                with self._flag_lock:
                    if still or device not in self._flagged:
                        continue
                    self._flagged.discard(device)
                    self._flag_changes.append((device, None))
                OVER_SHARE.dec()
                log.info("device back within its share", extra={"device": device, "refused": refused})
        with self._flag_lock:
            changes, self._flag_changes = self._flag_changes, []
        for device, since in changes:  # on the device's state row, for the console and the API
            try:
                self.alarms.mark_over_share(device, since)
            except Exception:  # noqa: BLE001 - the log line and the gauge have it; the row is a courtesy
                log.warning("could not record a device's flag", extra={"device": device}, exc_info=True)

    def flagged_devices(self) -> dict[str, int]:
        """Devices flagged now, with how many of their messages were refused while flagged."""
        flagged = self._telemetry.flagged()
        for device, refused in self._urgent.flagged().items():
            flagged[device] = flagged.get(device, 0) + refused
        return flagged

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._pub_lock:
            outbox_id = self._inflight.pop(mid, None)
            if not self._inflight:
                self._acks_written.set()
            if outbox_id is None:
                self._early[mid] = time.monotonic()
                return
            if not reason.is_failure:
                self._sent.append(outbox_id)

    # ------------------------------------------------------------------ workers

    def _work(self, share: FairShare[_Delivery], urgent: bool) -> None:
        while self._running:
            # What has queued up meanwhile goes in the same transaction: the next message of each
            # device in turn (one device once per batch). Alarms wait for no company; telemetry
            # waits up to ``linger_s`` for more (handled even if the consumer stops meanwhile).
            taken = share.take(BATCH_MAX)
            if not taken:
                break  # closed
            if not urgent:
                taken += self._company(share, len(taken))
            batch = [delivery for _, delivery in taken]
            if not urgent:
                self._urgent_idle.wait(PRIORITY_PAUSE_S)  # alarms first
            try:
                if len(batch) == 1:
                    self._process(batch[0])
                else:
                    self._process_batch(batch)
            except Exception:  # noqa: BLE001 - a worker must never die
                log.exception("device message worker failed on a message")
            finally:
                share.done([device for device, _ in taken])

    def _company(self, share: FairShare[_Delivery], have: int) -> list[tuple[str, _Delivery]]:
        """More telemetry for the batch, for up to ``linger_s`` (less once it is full or closed)."""
        more: list[tuple[str, _Delivery]] = []
        deadline = time.monotonic() + self.linger_s
        while have + len(more) < BATCH_MAX and self._running:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = share.take(BATCH_MAX - have - len(more), timeout=left)
            if not got:
                break  # closed, or nothing came
            more += got
        return more

    def _process_batch(self, batch: list[_Delivery]) -> None:
        """One transaction for the batch; if it fails, each message on its own (with the retries)."""
        started = time.perf_counter()
        try:
            results = self.alarms.handle_many([(d.topic, d.payload, d.retain) for d in batch])
        except Exception:  # noqa: BLE001 - one bad apple: handle them one by one
            log.info("batch of device messages not handled together; one by one", exc_info=True)
            for delivery in batch:
                self._process(delivery)
            return
        for delivery, result in zip(batch, results, strict=True):
            if result.provisional:
                self._provisional_raised.set()
            self.handled += 1
            self._ack(delivery)
        if any(r.type in URGENT_TYPES for r in results):  # a burst of alarms is worth a line
            log.info(
                "device messages handled together",
                extra={"messages": len(batch), "seconds": round(time.perf_counter() - started, 4)},
            )

    def _process(self, delivery: _Delivery) -> None:
        try:
            result = self._handled_or_kept_aside(delivery)
        except _Stopping:
            return  # left unacknowledged: the broker delivers it again
        if result is not None and result.provisional:
            self._provisional_raised.set()
        self.handled += 1
        self._ack(delivery)

    def _handled_or_kept_aside(self, delivery: _Delivery) -> Any:
        """Handle one message (its result), or keep it aside in the dead-letter table (None).

        A fault of ours is tried again at once (``faults_of_ours``: ``max_attempts`` tries in all),
        then the message is kept aside; if even that fails, it is tried once more and kept aside
        again after a pause (``keeping_aside``), until the consumer stops (:class:`_Stopping`).
        The first try is a plain call, as in :meth:`_handle_until_reachable`."""
        try:
            return self._handle_once(delivery)
        except _Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of ours: retry a little, then keep it aside
            first = exc
        try:
            return after_first_failure(
                faults_of_ours(self.max_attempts, unless=_Stopping),
                lambda: self._handle_once(delivery),
                first,
            )
        except _Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 - it keeps failing: keep it aside
            last = exc

        def once_more() -> Any:
            try:
                return self._handle_once(delivery)
            except _Stopping:
                raise
            except Exception as exc:  # noqa: BLE001
                return self._keep_aside(delivery, exc)

        try:
            return self._keep_aside(delivery, last)
        except Exception as exc:  # noqa: BLE001 - cannot even keep it: leave it with the broker, for now
            return after_first_failure(keeping_aside(self._pause, unless=_Stopping), once_more, exc)

    def _handle_once(self, delivery: _Delivery) -> Any:
        if not self._running:
            raise _Stopping()
        try:
            return self._handle_until_reachable(delivery)
        except _Stopping:
            raise
        except Exception:
            CONSUMER_ERRORS.labels(kind="internal").inc()
            log.exception("device message handling failed", extra={"topic": delivery.topic})
            raise

    def _keep_aside(self, delivery: _Delivery, exc: BaseException) -> None:
        try:
            self.alarms.dead_letter(delivery.topic, delivery.payload, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("could not keep the failed message; leaving it unacknowledged")
            raise
        DEAD_LETTERS.inc()

    def _handle_until_reachable(self, delivery: _Delivery) -> Any:
        """Handle one message, waiting out faults of the database or the store (``TRANSIENT_BACKOFF``).

        The first attempt is a plain call: the retry bookkeeping is set up only once it has failed
        (then that failure is the retrying's first attempt, so the backoff and the log are as if
        the retrying had made it)."""
        try:
            return self.alarms.handle(delivery.topic, delivery.payload, retained=delivery.retain)
        except TRANSIENT as exc:
            failed: list[BaseException] = [exc]

        def attempt() -> Any:
            if failed:
                raise failed.pop()
            return self.alarms.handle(delivery.topic, delivery.payload, retained=delivery.retain)

        def note(state: RetryCallState) -> None:
            CONSUMER_ERRORS.labels(kind="transient").inc()
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "device message not handled yet; retrying",
                extra={
                    "topic": delivery.topic,
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                    "retry_in": state.upcoming_sleep,
                },
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TRANSIENT),
            wait=TRANSIENT_BACKOFF,
            stop=stop_never,
            sleep=self._pause,
            before_sleep=note,
            reraise=True,
        )
        return retrying(attempt)

    def _pause(self, seconds: float) -> None:
        if not self._sleep(seconds):
            raise _Stopping()

    def _make_provisional_whole(self) -> None:
        """Make provisional alarms whole (evidence, custody entry, incident) once they are acknowledged."""
        while self._running:
            self._provisional_raised.wait(1.0)
            self._provisional_raised.clear()
            # The acks just published go out first: making an alarm whole is many milliseconds of
            # work in this process, and the network thread needs the interpreter to write an ack.
            self._acks_written.wait(ACK_WRITE_WAIT_S)
            try:
                # Until nothing is left, or all that is left is held by others (then the next wake).
                while self._running and self.alarms.make_provisional_alarms_whole(
                    limit=50, before_each=self._alarms_first
                ):
                    pass
            except Exception:  # noqa: BLE001 - they stay provisional; the next pass retries
                log.warning("pass making provisional alarms whole failed", exc_info=True)
                self._sleep(1.0)

    def _alarms_first(self) -> bool:
        """Wait (a little) while alarms are pending; False once stopping."""
        self._urgent_idle.wait(PRIORITY_PAUSE_S)
        return self._running

    def _sleep(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._running and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return self._running

    def _ack(self, delivery: _Delivery) -> None:
        if delivery.qos == 0:
            return
        with self._conn_lock:
            # A PUBACK must go on the connection the message came on: after a reconnect the same
            # message id may mean another message, and the broker delivers this one again anyway.
            if delivery.generation == self._generation:
                self.client.ack(delivery.mid, delivery.qos)

    # ------------------------------------------------------------------ effects

    def send(self, messages: list[Outgoing]) -> None:
        """Publish effects now (thread-safe); outbox rows are marked sent when the broker has them."""
        if not self._connected.is_set():
            return  # the relay sends them once connected
        for message in messages:
            info = self.client.publish(message.topic, message.payload, qos=message.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS or message.outbox_id is None:
                continue
            with self._pub_lock:
                if self._early.pop(info.mid, None) is not None:
                    self._sent.append(message.outbox_id)
                else:
                    self._inflight[info.mid] = message.outbox_id
                    self._acks_written.clear()
        # The relay is not woken here: the broker has taken nothing yet, and the relay's turn would
        # only compete with the network thread writing these messages. Its next tick (at most
        # 0.2 s) marks them sent.

    def _flush_sent(self) -> None:
        with self._pub_lock:
            sent, self._sent = self._sent, []
            stale = time.monotonic() - 10.0  # PUBACKs of messages resent by paho after a reconnect
            for mid in [m for m, at in self._early.items() if at < stale]:
                del self._early[mid]
        if sent:
            try:
                self.alarms.mark_sent(sent)
            except Exception:  # noqa: BLE001 - the relay will send them again; devices ignore repeats
                log.warning("could not mark outbox rows sent", exc_info=True)

    def _relay(self) -> None:
        """Mark sent what the broker took; resend what nobody sent (a crash between commit and publish)."""
        next_relay = time.monotonic()
        while self._running:
            self._wake.wait(0.2)
            self._wake.clear()
            self._flush_sent()
            self._calmed()
            if time.monotonic() < next_relay or not self._connected.is_set():
                continue
            next_relay = time.monotonic() + self.relay_interval_s
            try:
                rows = self.alarms.claim_outbox("mqtt")
            except Exception:  # noqa: BLE001
                log.warning("outbox relay could not read the outbox", exc_info=True)
                continue
            if rows:
                log.info("outbox relay resending", extra={"count": len(rows)})
                self.send([Outgoing(r.target, r.payload, r.qos, r.id) for r in rows])


def consumer_configured(settings: Settings) -> bool:
    """A broker to consume from: a host and the service's broker login."""
    return bool(settings.mqtt_host and settings.mqtt_username)
