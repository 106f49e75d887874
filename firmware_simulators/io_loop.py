"""One I/O thread for many simulated devices: each on its own MQTT connection, their sockets watched
by one selector, so a fleet of thousands needs no thousands of threads."""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class IoLoop:
    """One thread that drives the sockets of many paho clients, plus timers.

    paho's external-loop hooks tell us when a socket opens, closes or has data to write; all
    reads, writes and connects happen on this thread, so paho is never driven from two threads.
    """

    def __init__(self, name: str = "lone-worker-io", misc_interval_s: float = 1.0) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._calls: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._fds: dict[mqtt.Client, int] = {}
        self._misc_interval_s = misc_interval_s
        self._running = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- thread-safe entry points
    def call_soon(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._calls.append(fn)
        self._wake()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        timer = Timer()
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._counter), timer, fn))
        self._wake()
        return timer

    def attach(self, client: mqtt.Client) -> None:
        """Route ``client``'s socket events to this loop (before it connects)."""

        def opened(c: mqtt.Client, _u: Any, sock: Any) -> None:
            # paho leaves Nagle on; small alarms and acks would wait up to 40 ms for a TCP ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.call_soon(partial(self._open, c, sock.fileno()))

        def closed(c: mqtt.Client, _u: Any, sock: Any) -> None:
            self.call_soon(partial(self._close, c, sock.fileno()))

        client.on_socket_open = opened
        client.on_socket_close = closed
        client.on_socket_register_write = lambda c, _u, _s: self.call_soon(partial(self.flush, c))
        client.on_socket_unregister_write = lambda c, _u, _s: None

    def flush(self, client: mqtt.Client) -> None:
        """(Loop thread.) Write what ``client`` has queued; watch for writability if it is not all out."""
        fd = self._fds.get(client)
        if fd is None:
            return
        client.loop_write()
        fd = self._fds.get(client)
        if fd is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
            self._selector.modify(fd, events, client)

    def stop(self) -> None:
        self._running = False
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    # -- loop thread
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full: the loop is already due to wake
            pass

    def _open(self, client: mqtt.Client, fd: int) -> None:
        old = self._fds.pop(client, None)
        if old is not None:
            self._unregister(old)
        self._unregister(fd)  # a closed socket's number may have been reused
        self._fds[client] = fd
        self._selector.register(fd, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _close(self, client: mqtt.Client, fd: int) -> None:
        if self._fds.get(client) == fd:
            del self._fds[client]
            self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _run(self) -> None:
        next_misc = time.monotonic() + self._misc_interval_s
        while self._running:
            with self._lock:
                first_timer = self._timers[0][0] if self._timers else None
            wake_at = min(next_misc, first_timer) if first_timer is not None else next_misc
            for key, mask in self._selector.select(max(0.0, wake_at - time.monotonic())):
                client = key.data
                if client is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                self._guard(self._service, client, mask)
            while True:
                with self._lock:
                    if not self._calls:
                        break
                    call = self._calls.popleft()
                self._guard(call)
            now = time.monotonic()
            while True:
                with self._lock:
                    if not self._timers or self._timers[0][0] > now:
                        break
                    _, _, timer, fn = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._guard(fn)
            if now >= next_misc:
                next_misc = now + self._misc_interval_s
                for client in list(self._fds):
                    self._guard(client.loop_misc)
                    if client.want_write():
                        self._guard(self.flush, client)
        for fd in list(self._fds.values()):
            self._unregister(fd)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _service(self, client: mqtt.Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            client.loop_read()
        if mask & selectors.EVENT_WRITE and client in self._fds:
            self.flush(client)

    @staticmethod
    def _guard(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # one device's trouble must not stop the others
            log.exception("lone-worker simulator I/O callback failed")
