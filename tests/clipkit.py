"""Test helpers: enrol a dock and a camera through the API and make signed clip metadata."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Fleet:
    """A dock token and a camera key enrolled against a live server."""

    url: str
    dock_token: str
    camera_serial: str
    camera_key: Ed25519PrivateKey
    wearer: str

    def dock_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dock_token}", "Tus-Resumable": "1.0.0"}


def enrol(
    url: str,
    admin_headers: dict[str, str],
    dock_id: str = "DOCK-1",
    serial: str = "CAM-1",
    wearer: str = "S-1",
) -> Fleet:
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    httpx.post(
        f"{url}/api/v1/staff",
        json={"id": wearer, "name": "Test Wearer", "group": "nurse"},
        headers=admin_headers,
    ).raise_for_status()
    r = httpx.post(f"{url}/api/v1/devices/docks", json={"id": dock_id}, headers=admin_headers)
    r.raise_for_status()
    httpx.post(
        f"{url}/api/v1/devices/cameras",
        json={"id": serial, "public_key": pub, "staff_id": wearer},
        headers=admin_headers,
    ).raise_for_status()
    return Fleet(url, r.json()["token"], serial, key, wearer)


def clip_metadata(
    fleet: Fleet,
    data_sha256: str,
    size: int,
    *,
    filename: str = "clip.mp4",
    sign_sha256: str | None = None,
    bad_signature: bool = False,
    wearer: str | None = None,
    serial: str | None = None,
    recorded_start: str = "2026-11-22T10:00:00Z",
    recorded_stop: str = "2026-11-22T10:01:00Z",
) -> str:
    """The tus Upload-Metadata header for a clip, signed by the camera key."""
    manifest = {
        "camera_serial": serial or fleet.camera_serial,
        "filename": filename,
        "recorded_start": recorded_start,
        "recorded_stop": recorded_stop,
        "sha256": sign_sha256 or data_sha256,
        "size": size,
        "v": 1,
        "wearer": wearer or fleet.wearer,
    }
    sig = fleet.camera_key.sign(canonical(manifest))
    if bad_signature:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    meta = dict(manifest)
    meta["sha256"] = data_sha256
    meta["signature"] = base64.b64encode(sig).decode()
    del meta["size"], meta["v"]
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in meta.items())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
