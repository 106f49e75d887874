"""An enrolled device gone bad: it publishes garbage on its own ``alarm`` topic as fast as asked.

Run as a process of its own (``python -m tests.flood_device PORT DEVICE PASSWORD KEY RATE SECONDS``),
so its publishing does not compete with the service under test for the interpreter, and written
straight to the socket (MQTT 3.1.1 packets made once, sent in batches) so it costs the machine
little, as a flooding device elsewhere on the network would. The garbage is a mix: bytes that are
not JSON, JSON that is not a message of this topic, and messages shaped like an SOS raise with a
signature by a key that is not the device's (these pass every check short of the signature). It
floods until its standard input closes (or for at most SECONDS). Two seconds in, the device's
wearer presses SOS for real (signed with the device's key, ``KEY`` in hex), sent again each second
until the service acknowledges it. Prints, at the end, one JSON line: messages published, those the
broker acknowledged, and how long the genuine SOS took.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_alarms_kit import DeviceKit


def garbage(device_id: str, count: int = 600) -> list[bytes]:
    """A cycle of junk: a third each of not JSON, the wrong shape, and SOS raises signed by a stranger."""
    stranger = DeviceKit(device_id, key=Ed25519PrivateKey.generate())
    out: list[bytes] = []
    for i in range(count):
        if i % 3 == 0:
            out.append(b"\x00garbage %d \xff" % i)
        elif i % 3 == 1:
            out.append(json.dumps({"type": "heartbeat", "device_id": device_id, "n": i}).encode())
        else:
            out.append(stranger.sos(seq=10_000 + i)[1])
    return out


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _packet(0x32, _text(topic) + struct.pack("!H", packet_id) + payload)  # QoS 1


class RawClient:
    """Just enough MQTT 3.1.1 to connect, publish at QoS 1, subscribe and read what comes back."""

    def __init__(self, port: int, client_id: str, username: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x80 | 0x40 | 0x02  # username, password, clean session
        body = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
        body += _text(client_id) + _text(username) + _text(password)
        self.sock.sendall(_packet(0x10, body))
        connack = self._read_exact(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"flooder refused: {connack!r}")
        self.pubacks = 0
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._reader, daemon=True).start()

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _reader(self) -> None:
        buffer = b""
        self.sock.settimeout(None)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2:
                    length, shift, i = 0, 0, 1
                    while i < len(buffer) and buffer[i] & 0x80:
                        length += (buffer[i] & 0x7F) << shift
                        shift, i = shift + 7, i + 1
                    if i >= len(buffer):
                        break
                    length += (buffer[i] & 0x7F) << shift
                    end = i + 1 + length
                    if len(buffer) < end:
                        break
                    kind, body, buffer = buffer[0], buffer[i + 1 : end], buffer[end:]
                    if kind >> 4 == 4:  # PUBACK
                        with self.lock:
                            self.pubacks += 1
                    elif kind >> 4 == 3:  # PUBLISH to us (the service's acks)
                        topic_len = struct.unpack("!H", body[:2])[0]
                        rest = body[2 + topic_len :]
                        if (kind >> 1) & 3:
                            packet_id, rest = rest[:2], rest[2:]
                            self.sock.sendall(b"\x40\x02" + packet_id)
                        with self.lock:
                            self.received.append(rest)
        except OSError:
            return

    def subscribe(self, topic: str) -> None:
        self.sock.sendall(_packet(0x82, struct.pack("!H", 1) + _text(topic) + b"\x01"))

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()


def flood(
    port: int, device_id: str, password: str, key_hex: str, rate: float, seconds: float
) -> dict[str, Any]:
    client = RawClient(port, device_id, device_id, password)
    client.subscribe(f"lw/v1/{device_id}/ack")
    own = DeviceKit(device_id, key=Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_hex)))
    own_event = str(uuid.uuid4())
    topic = f"lw/v1/{device_id}/alarm"
    junk = [publish_packet(topic, raw, 1) for raw in garbage(device_id)]
    stop = threading.Event()  # until stdin closes (or ``seconds`` have passed)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    def own_acked() -> bool:
        with client.lock:
            answers = [json.loads(r) for r in client.received]
        return any(
            a.get("event_id") == own_event and a.get("status") in ("received", "duplicate") for a in answers
        )

    sent = 0
    started = time.monotonic()
    own_first: float | None = None
    own_next = started + 2.0
    own_took: float | None = None
    while (elapsed := time.monotonic() - started) < seconds and not stop.is_set():
        due = int(elapsed * rate) + 1
        batch = []
        while sent < due:  # (packet ids may repeat: QoS 1 ids need only be unique while in flight)
            packet = junk[sent % len(junk)]
            batch.append(packet)
            sent += 1
        if batch:
            client.sock.sendall(b"".join(batch))
        now = time.monotonic()
        if own_took is None and own_first is not None and own_acked():
            own_took = now - own_first
        elif own_took is None and now >= own_next:  # pressed, and pressed again until answered
            client.sock.sendall(publish_packet(topic, own.sos(event_id=own_event)[1], 2))
            sent += 1
            own_first = own_first or now
            own_next = now + 1.0
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client.pubacks < sent:
        time.sleep(0.05)
    took = round(own_took, 3) if own_took is not None else None
    client.close()
    return {
        "sent": sent,
        "acked": client.pubacks,
        "seconds": round(time.monotonic() - started, 2),
        "own_sos_s": took,
    }


if __name__ == "__main__":
    port_, device_, password_, key_, rate_, seconds_ = sys.argv[1:7]
    print(json.dumps(flood(int(port_), device_, password_, key_, float(rate_), float(seconds_))), flush=True)
