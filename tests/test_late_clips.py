"""A clip docked after its camera was re-keyed or disabled is kept, held for review, on both databases.

A camera records an incident while nurse A wears it at SOUTH, signed by the key it then has. Before
it is docked the camera is re-enrolled with a new key pair (for B, at NORTH), or reported lost and
disabled. The clip is evidence: the dock's upload must be stored, not refused and lost, as A's clip
of SOUTH, but quarantined with the reason, so it is not served or exported as good evidence until
someone reviews it.

An attacker holding an old key, or a stolen camera and a dock token, gains nothing more than a
quarantined item: a key the camera never had still vouches for nothing, a retired key vouches for
no time after it was retired, and nothing a disabled camera delivers is taken as good evidence."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chain_of_custody.models import EvidenceItem
from firmware_simulators.camera import CameraIdentity, record_clip
from firmware_simulators.dock import Dock
from firmware_simulators.tus import UploadRefused
from tests.clipkit import Fleet
from tests.test_alarms_kit import enrol
from tests.test_clip_holder import CLIP, _at, _enrol_camera, _fleet, _public, _refused, _staff, _tick
from tests.test_upload_completion import _upload


def _item(live: Any, fleet: Fleet, recorded: datetime, name: str) -> EvidenceItem:
    """Upload a clip the camera recorded at ``recorded`` naming ``fleet.wearer``: the item it became."""
    data = CLIP + name.encode()
    stop = recorded + timedelta(seconds=30)
    done = _upload(fleet, data, filename=name, recorded_start=_at(recorded), recorded_stop=_at(stop))
    with live.services.db.session() as session:
        item = session.get(EvidenceItem, done.headers["evidence-item-id"])
        assert item is not None and done.headers["evidence-status"] == item.status
        session.expunge(item)
        return item


def _trail(live: Any, item_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{live.url}/api/v1/evidence/{item_id}/custody", headers=live.admin())
    assert r.status_code == 200, r.text
    return list(r.json())


def _served(live: Any, item_id: str) -> int:
    """The status an administrator's ordinary read of the item is answered with (not a review)."""
    r = httpx.get(
        f"{live.url}/api/v1/evidence/{item_id}/content",
        headers={**live.admin(), "X-Evidence-Reason": "checking the clip"},
    )
    return r.status_code


def _disable(live: Any, serial: str, status: str = "disabled") -> None:
    r = httpx.patch(f"{live.url}/api/v1/devices/{serial}", json={"status": status}, headers=live.admin())
    assert r.status_code == 200, r.text


def _south_camera(live: Any, serial: str) -> tuple[Ed25519PrivateKey, Fleet]:
    _staff(live, "S-A", "SOUTH")
    _staff(live, "N-B", "NORTH")
    key = Ed25519PrivateKey.generate()
    _enrol_camera(live, serial, key, "S-A", "SOUTH")
    return key, _fleet(live, serial, key, "S-A")


def test_a_clip_signed_before_its_camera_was_re_keyed_is_kept_as_its_wearers_then_for_review(
    live: Any, caplog: pytest.LogCaptureFixture
) -> None:
    old_key, fleet = _south_camera(live, "CAM-R")
    worn_by_a = _tick()
    new_key = Ed25519PrivateKey.generate()
    _enrol_camera(live, "CAM-R", new_key, "N-B", "NORTH")  # re-enrolled with a new key pair

    with caplog.at_level(logging.WARNING):
        item = _item(live, fleet, worn_by_a, "before-rekey.mp4")  # refused 403 before: the clip lost
    assert (item.wearer, item.site, item.status) == ("S-A", "SOUTH", "quarantined")
    assert item.quarantine_reason is not None and "signed by a retired key" in item.quarantine_reason
    assert "does not verify" not in item.quarantine_reason
    trail = _trail(live, item.id)
    assert [e["action"] for e in trail] == ["captured", "received", "stored", "quarantined"]
    assert trail[0]["details"]["camera_public_key"] == _public(old_key)  # the key that signed it
    assert "signed by a retired key" in trail[-1]["details"]["reason"]
    assert any(r.getMessage() == "clip kept for review" for r in caplog.records)
    # Held for review: not served as good evidence.
    assert _served(live, item.id) == 409
    # What the new key records now is B's and good evidence, as ever.
    now = dataclasses.replace(fleet, camera_key=new_key, wearer="N-B")
    fresh = _item(live, now, _tick(), "after-rekey.mp4")
    assert (fresh.wearer, fresh.site, fresh.status) == ("N-B", "NORTH", "stored")


def test_a_clip_signed_by_a_re_keyed_camera_it_still_wears_names_the_retired_key(live: Any) -> None:
    old_key, fleet = _south_camera(live, "CAM-S")
    worn = _tick()
    _enrol_camera(live, "CAM-S", Ed25519PrivateKey.generate(), "S-A", "SOUTH")
    item = _item(live, fleet, worn, "same-wearer.mp4")
    assert (item.wearer, item.site, item.status) == ("S-A", "SOUTH", "quarantined")
    assert item.quarantine_reason is not None and "signed by a retired key" in item.quarantine_reason


def test_a_leaked_or_unknown_key_gains_nothing_from_retired_keys(live: Any) -> None:
    old_key, fleet = _south_camera(live, "CAM-X")
    worn_by_a = _tick()
    new_key = Ed25519PrivateKey.generate()
    _enrol_camera(live, "CAM-X", new_key, "N-B", "NORTH")
    after_rekey = _tick()

    # A key the camera never had, dated into A's time: refused as before.
    stranger = dataclasses.replace(fleet, camera_key=Ed25519PrivateKey.generate())
    assert _refused(stranger, worn_by_a, "stranger.mp4") == "camera_not_assigned"
    # The retired key signing for a time after it was retired: no date, so A's name is refused...
    assert _refused(fleet, after_rekey, "forged.mp4") == "camera_not_assigned"
    # ...and naming the camera's holder now, it is quarantined as a signature that does not verify,
    # never as a retired key's, nor as good evidence.
    for forger, name in ((fleet, "late.mp4"), (stranger, "never.mp4")):
        item = _item(live, dataclasses.replace(forger, wearer="N-B"), after_rekey, name)
        assert (item.wearer, item.site, item.status) == ("N-B", "NORTH", "quarantined")
        assert item.quarantine_reason is not None and "does not verify" in item.quarantine_reason
        assert "retired" not in item.quarantine_reason
    # The new key cannot reach back into the retired key's period (as before).
    assert _refused(dataclasses.replace(fleet, camera_key=new_key), worn_by_a, "back.mp4") == (
        "camera_not_assigned"
    )


def test_a_clip_of_a_disabled_camera_is_kept_quarantined_not_refused(live: Any) -> None:
    _, fleet = _south_camera(live, "CAM-D")
    worn_by_a = _tick()
    _disable(live, "CAM-D")  # reported lost, then found and docked before anyone enabled it

    item = _item(live, fleet, worn_by_a, "lost.mp4")  # refused 403 camera_disabled before
    assert (item.wearer, item.site, item.status) == ("S-A", "SOUTH", "quarantined")
    assert item.quarantine_reason is not None and "disabled" in item.quarantine_reason
    assert _trail(live, item.id)[-1]["action"] == "quarantined"
    assert _served(live, item.id) == 409
    # A stranger's key on a disabled camera dates nothing and vouches for nothing.
    stranger = dataclasses.replace(fleet, camera_key=Ed25519PrivateKey.generate())
    forged = _item(live, stranger, worn_by_a, "stranger.mp4")
    assert forged.status == "quarantined" and forged.quarantine_reason is not None
    assert "does not verify" in forged.quarantine_reason and "disabled" in forged.quarantine_reason


def test_a_clip_recorded_while_its_camera_was_disabled_is_held_for_review_once_enabled(live: Any) -> None:
    _, fleet = _south_camera(live, "CAM-E")
    before = _tick()
    _disable(live, "CAM-E")
    while_lost = _tick()
    _disable(live, "CAM-E", "active")  # found and enabled again
    after = _tick()

    lost = _item(live, fleet, while_lost, "while-lost.mp4")  # stored as good evidence before
    assert (lost.wearer, lost.site, lost.status) == ("S-A", "SOUTH", "quarantined")
    assert lost.quarantine_reason is not None and "recorded while the device was disabled" in (
        lost.quarantine_reason
    )
    for when, name in ((before, "before.mp4"), (after, "after.mp4")):
        assert _item(live, fleet, when, name).status == "stored"


def test_the_simulated_camera_and_dock_deliver_a_re_keyed_and_a_disabled_cameras_clips(
    live: Any, tmp_path: Path
) -> None:
    _staff(live, "S-A", "SOUTH")
    camera = CameraIdentity.generate("CAM-SIM")
    _enrol_camera(live, camera.serial, camera.private_key, "S-A", "SOUTH")
    token = _fleet(live, camera.serial, camera.private_key, "S-A").dock_token
    clips = []
    for name in ("one.mp4", "two.mp4"):
        (tmp_path / name).write_bytes(CLIP + name.encode())
        start = _tick()
        clips.append(record_clip(camera, tmp_path / name, "S-A", start, start + timedelta(seconds=5)))

    rekeyed = camera.rekeyed()
    assert rekeyed.serial == camera.serial and rekeyed.public_key_b64() != camera.public_key_b64()
    _enrol_camera(live, camera.serial, rekeyed.private_key, "S-A", "SOUTH")
    with Dock(live.url, token) as dock:
        assert dock.upload(clips[0]).evidence_status == "quarantined"
        _disable(live, camera.serial)
        assert dock.upload(clips[1]).evidence_status == "quarantined"
        # A clip its retired key signs now, dated after it was retired: nobody's date, and no
        # good evidence (the camera's holder is still A, so it is quarantined as before).
        (tmp_path / "late.mp4").write_bytes(CLIP + b"late")
        start = datetime.now(UTC)
        late = record_clip(camera, tmp_path / "late.mp4", "S-A", start, start + timedelta(seconds=5))
        done = dock.upload(late)
        assert done.evidence_status == "quarantined"
        # A camera it never was, with a dock token: refused, as before.
        with pytest.raises(UploadRefused) as refused:
            dock.upload(
                record_clip(CameraIdentity.generate("CAM-NONE"), tmp_path / "late.mp4", "S-A", start, start)
            )
        assert refused.value.status == 403 and refused.value.reason == "unknown_camera"
    with live.services.db.session() as session:
        item = session.get(EvidenceItem, done.evidence_item_id)
        assert item is not None and item.quarantine_reason is not None
        assert "retired" not in item.quarantine_reason and "does not verify" in item.quarantine_reason


MEMO = b"OggS" + b"help, ward 7" * 200


def memo_of_a_disabled_device(
    live: Any, device_id: str
) -> tuple[httpx.Response, Callable[[bytes], httpx.Response]]:
    """A device of S-1 at SOUTH raises an amber alarm, is disabled (reported lost), then sends its
    memo: the answer, and how to send another body for the same alarm."""
    kit = enrol(live.services, device_id, staff_id="S-1", site="SOUTH")
    topic, raw = kit.amber(600)
    assert live.services.alarms.handle(topic, raw).outcome == "accepted"
    event_id = str(json.loads(raw)["event_id"])
    _disable(live, device_id)
    url = f"{live.url}/api/v1/lone-worker/devices/{device_id}/alarms/{event_id}/voice-memo"

    def send(body: bytes) -> httpx.Response:
        return httpx.put(url, content=body, headers=kit.voice_memo_headers(event_id, body))

    return send(MEMO), send


def test_a_voice_memo_of_a_device_disabled_after_its_alarm_is_kept_for_review(live: Any) -> None:
    s = live.services
    memo = MEMO
    r, send = memo_of_a_disabled_device(live, "LW-LOST")
    assert (r.status_code, r.json()["status"]) == (201, "quarantined"), r.text  # 403 before: lost
    with s.db.session() as session:
        item = session.get(EvidenceItem, r.json()["evidence_item_id"])
        assert item is not None and item.quarantine_reason is not None
        assert "disabled" in item.quarantine_reason and item.wearer == "S-1"
        assert s.store.get_bytes(item.object_key, item.version_id) == memo
    assert _served(live, item.id) == 409
    # One memo kept for review: a disabled device does not fill the store with copies.
    r = send(memo + b"again")
    assert (r.status_code, r.json()["reason"]) == (403, "disabled_device")
