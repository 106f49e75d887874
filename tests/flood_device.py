"""An enrolled device gone bad: it publishes garbage on its own ``alarm`` topic as fast as asked.

Run as a process of its own (``python -m tests.flood_device PORT DEVICE PASSWORD RATE SECONDS``), so
its publishing does not compete with the service under test for the interpreter. The garbage is a
mix: bytes that are not JSON, JSON that is not a message of this topic, and messages shaped like an
SOS raise with a signature by a key that is not the device's (these pass every check short of the
signature). It floods until its standard input closes (or for at most SECONDS). Two seconds in, the device's wearer presses SOS for real (signed with the device's key,
``KEY`` in hex), sent again each second until the service acknowledges it. Prints, at the end, one
JSON line: messages published, those the broker acknowledged, and how long the genuine SOS took.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

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


def flood(
    port: int, device_id: str, password: str, key_hex: str, rate: float, seconds: float
) -> dict[str, Any]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, password)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    acked = 0
    lock = threading.Lock()
    connected = threading.Event()

    def on_publish(*_: object) -> None:
        nonlocal acked
        with lock:
            acked += 1

    own = DeviceKit(device_id, key=Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_hex)))
    own_event = str(uuid.uuid4())
    own_acked = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ack = json.loads(msg.payload)
        if ack.get("event_id") == own_event and ack.get("status") in ("received", "duplicate"):
            own_acked.set()

    client.on_publish = on_publish
    client.on_message = on_message
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("flooder could not connect")
    client.subscribe(f"lw/v1/{device_id}/ack", qos=1)
    junk = garbage(device_id)
    stop = threading.Event()  # until stdin closes (or ``seconds`` have passed)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    topic = f"lw/v1/{device_id}/alarm"
    sent = 0
    started = time.monotonic()
    tick = 0.01
    own_first: float | None = None
    own_next = started + 2.0
    own_took: float | None = None
    while (elapsed := time.monotonic() - started) < seconds and not stop.is_set():
        due = int(elapsed * rate) + 1
        while sent < due:
            client.publish(topic, junk[sent % len(junk)], qos=1)
            sent += 1
        now = time.monotonic()
        if own_took is None and own_acked.is_set() and own_first is not None:
            own_took = now - own_first
        elif own_took is None and now >= own_next:  # pressed, and pressed again until answered
            client.publish(topic, own.sos(event_id=own_event)[1], qos=1)
            own_first = own_first or now
            own_next = now + 1.0
        time.sleep(tick)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and acked < sent:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    took = round(own_took, 3) if own_took is not None else None
    return {"sent": sent, "acked": acked, "seconds": round(time.monotonic() - started, 2), "own_sos_s": took}


if __name__ == "__main__":
    port_, device_, password_, key_, rate_, seconds_ = sys.argv[1:7]
    print(json.dumps(flood(int(port_), device_, password_, key_, float(rate_), float(seconds_))), flush=True)
