"""A clip is its camera's holder's at the time it was recorded, on both databases.

A camera records an incident while nurse A wears it (or while it is enrolled at SOUTH), and is
docked only after it has been handed to nurse B (or re-enrolled at NORTH). The dock's upload must
be stored, as A's clip of SOUTH: the wearer and site its custody record gave the camera when the
clip was recorded (its signed ``recorded_start``), not those it has now.

A camera speaks only for itself, and only for when its key did: it cannot date a clip into a
wearer it never had, to a time after it was handed on, to a time before it was enrolled (or before
the key that signs was enrolled), or to a time that has not come yet; a clip its signature does not
vouch for is its holder's now, as before."""

from __future__ import annotations

import base64
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chain_of_custody.models import EvidenceItem
from tests.clipkit import Fleet, clip_metadata, sha256
from tests.test_upload_completion import _upload

CLIP = b"\x00\x00\x00\x18ftypmp42" + b"ward corridor" * 300


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tick() -> datetime:
    """A moment strictly between what came before and what comes next (custody entries' times)."""
    time.sleep(0.02)
    moment = datetime.now(UTC)
    time.sleep(0.02)
    return moment


def _staff(live: Any, staff_id: str, site: str) -> None:
    body = {"id": staff_id, "name": f"Staff {staff_id}", "group": "nurse", "site": site}
    r = httpx.post(f"{live.url}/api/v1/staff", json=body, headers=live.admin())
    assert r.status_code == 201, r.text


def _public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _enrol_camera(live: Any, serial: str, key: Ed25519PrivateKey, staff_id: str, site: str) -> None:
    body = {"id": serial, "public_key": _public(key), "staff_id": staff_id, "site": site}
    r = httpx.post(f"{live.url}/api/v1/devices/cameras", json=body, headers=live.admin())
    assert r.status_code == 201, r.text


def _reassign(live: Any, serial: str, staff_id: str) -> None:
    r = httpx.patch(f"{live.url}/api/v1/devices/{serial}", json={"staff_id": staff_id}, headers=live.admin())
    assert r.status_code == 200, r.text


def _fleet(live: Any, serial: str, key: Ed25519PrivateKey, wearer: str) -> Fleet:
    r = httpx.post(
        f"{live.url}/api/v1/devices/docks",
        json={"id": f"DOCK-{serial}", "site": "SOUTH"},
        headers=live.admin(),
    )
    assert r.status_code == 201, r.text
    return Fleet(live.url, r.json()["token"], serial, key, wearer)


def _stored(live: Any, fleet: Fleet, recorded: datetime, name: str) -> tuple[str | None, str | None]:
    """Upload a clip the camera recorded at ``recorded`` naming ``fleet.wearer``: the wearer and site
    of the evidence item it became."""
    data = CLIP + name.encode()
    stop = recorded + timedelta(seconds=30)
    done = _upload(fleet, data, filename=name, recorded_start=_at(recorded), recorded_stop=_at(stop))
    assert done.headers["evidence-status"] == "stored", done.headers
    with live.services.db.session() as session:
        item = session.get(EvidenceItem, done.headers["evidence-item-id"])
        assert item is not None
        return item.wearer, item.site


def _refused(fleet: Fleet, recorded: datetime, name: str, **meta: Any) -> str:
    """The reason the dock's creation of an upload of such a clip is refused with."""
    data = CLIP + name.encode()
    stop = recorded + timedelta(seconds=30)
    header = clip_metadata(
        fleet,
        sha256(data),
        len(data),
        filename=name,
        recorded_start=_at(recorded),
        recorded_stop=_at(stop),
        **meta,
    )
    r = httpx.post(
        f"{fleet.url}/api/v1/dock/uploads",
        headers={**fleet.dock_headers(), "Upload-Length": str(len(data)), "Upload-Metadata": header},
    )
    assert r.status_code == 403, r.text
    return str(r.json()["reason"])


def test_a_clip_recorded_before_its_camera_was_handed_on_is_its_wearers_then(live: Any) -> None:
    _staff(live, "S-A", "SOUTH")
    _staff(live, "S-B", "SOUTH")
    key = Ed25519PrivateKey.generate()
    _enrol_camera(live, "CAM-H", key, "S-A", "SOUTH")
    fleet = _fleet(live, "CAM-H", key, "S-A")
    worn_by_a = _tick()
    _reassign(live, "CAM-H", "S-B")
    worn_by_b = _tick()

    assert _stored(live, fleet, worn_by_a, "a.mp4") == ("S-A", "SOUTH")
    assert _stored(live, dataclasses.replace(fleet, wearer="S-B"), worn_by_b, "b.mp4") == ("S-B", "SOUTH")


def test_a_clip_recorded_before_its_camera_was_re_enrolled_elsewhere_keeps_its_wearer_and_site(
    live: Any,
) -> None:
    _staff(live, "S-A", "SOUTH")
    _staff(live, "N-B", "NORTH")
    key = Ed25519PrivateKey.generate()
    _enrol_camera(live, "CAM-M", key, "S-A", "SOUTH")
    fleet = _fleet(live, "CAM-M", key, "S-A")
    at_south = _tick()
    _enrol_camera(live, "CAM-M", key, "N-B", "NORTH")  # the same camera, its key unchanged
    at_north = _tick()

    assert _stored(live, fleet, at_south, "south.mp4") == ("S-A", "SOUTH")
    assert _stored(live, dataclasses.replace(fleet, wearer="N-B"), at_north, "north.mp4") == ("N-B", "NORTH")


def test_a_camera_cannot_date_a_clip_into_a_wearer_it_did_not_have_then(live: Any) -> None:
    _staff(live, "S-A", "SOUTH")
    _staff(live, "S-B", "SOUTH")
    _staff(live, "S-X", "NORTH")
    before_enrolment = _tick()
    key = Ed25519PrivateKey.generate()
    _enrol_camera(live, "CAM-T", key, "S-A", "SOUTH")
    fleet = _fleet(live, "CAM-T", key, "S-A")
    worn_by_a = _tick()
    _reassign(live, "CAM-T", "S-B")
    worn_by_b = _tick()

    # A's name on a clip recorded once B wore the camera, before it was enrolled, or not yet.
    assert _refused(fleet, worn_by_b, "later.mp4") == "camera_not_assigned"
    assert _refused(fleet, before_enrolment, "earlier.mp4") == "camera_not_assigned"
    assert _refused(fleet, datetime.now(UTC) + timedelta(hours=1), "future.mp4") == "camera_not_assigned"
    # A wearer it never had, at any time.
    for when, name in ((worn_by_a, "x1.mp4"), (worn_by_b, "x2.mp4")):
        assert _refused(fleet, when, name, wearer="S-X") == "camera_not_assigned"
    # A date the camera's signature does not vouch for is no date: the clip is its holder's now.
    assert _refused(fleet, worn_by_a, "unsigned.mp4", bad_signature=True) == "camera_not_assigned"

    # A new key, enrolled for B, speaks for nothing from before it was enrolled.
    new_key = Ed25519PrivateKey.generate()
    _enrol_camera(live, "CAM-T", new_key, "S-B", "SOUTH")
    rekeyed = dataclasses.replace(fleet, camera_key=new_key)
    assert _refused(rekeyed, worn_by_a, "old-date.mp4") == "camera_not_assigned"
    # What it records now is B's, as ever.
    assert _stored(live, dataclasses.replace(rekeyed, wearer="S-B"), _tick(), "now.mp4") == ("S-B", "SOUTH")
