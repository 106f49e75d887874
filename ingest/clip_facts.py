"""What a finished clip upload is recorded with: the manifest the camera signed, what the checks of
the camera's hash and signature found, earlier quarantined copies of the same clip, a copy the dock
stored already, and the object's lock as storage holds it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.canonical import canonical_json, rfc3339
from chain_of_custody.keys import ServiceKey, load_public_key_b64, verify_signature
from devices.ends import sealed_device
from devices.models import Device
from devices.seals import device_seal_key
from devices.service import ClipClaim, clip_holder
from storage.objects import ObjectStore, StoredObject

from .models import Upload
from .tus_protocol import parse_time

SIGNATURE_FAILS = "camera signature over the clip manifest does not verify"


def clip_manifest(upload: Upload) -> dict[str, Any]:
    """The manifest the camera signed for this clip (protocol v1)."""
    return {
        "camera_serial": upload.camera_serial,
        "filename": upload.filename,
        "recorded_start": upload.recorded_start,
        "recorded_stop": upload.recorded_stop,
        "sha256": upload.camera_sha256,
        "size": upload.length,
        "v": 1,
        "wearer": upload.wearer,
    }


@dataclass(frozen=True)
class ClipChecks:
    """What the end of an upload found, and the camera key it was checked with (None: not enrolled)."""

    camera_key: str | None
    signature_ok: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ClipStanding:
    """Where a clip is kept and why it is held for review: the site the camera was enrolled at when
    it recorded the clip, every reason the clip is quarantined (empty: good evidence), and the camera
    key its signature holds for (a retired one, or the current one)."""

    site: str | None
    reasons: tuple[str, ...]
    signed_by: str | None
    review: tuple[str, ...] = ()


def clip_standing(session: Session, upload: Upload, key: ServiceKey, checks: ClipChecks) -> ClipStanding:
    """The clip's site: the one the camera was enrolled at when it recorded the clip, where its clip is
    kept as captured (``evidence_items.site``), as its custody record has it at the clip's signed
    recording time (``devices.service.clip_holder``: a camera re-enrolled at another site since
    does not take the clip there), or at the upload's start when its signature does not vouch for
    that time or it is out of bounds. None if it has none, or if its row's seal does not hold for
    its latest custody entry (``devices.ends.sealed_device``, a warning names it): a site written
    in the database lends the clip to no site's managers.

    And why it is held for review beside what ``checks`` found: a clip signed by a key the camera
    had before (re-keyed since) within that key's period, recorded while custody had the camera
    disabled, or delivered by a camera disabled now (reported lost) is kept, never refused, but
    quarantined with the reason (``Held.review``), not taken as good evidence."""
    secret = device_seal_key(key)
    camera = sealed_device(session, secret, upload.camera_serial)
    if camera is None or camera.kind != "camera":
        return ClipStanding(None, checks.reasons, checks.camera_key)
    held = clip_holder(session, secret, camera, clip_claim(upload, key))
    review = list(held.review)
    if camera.status != "active":
        review.append(f"camera {camera.id} was disabled (reported lost, say) when the clip was received")
    found = [r for r in checks.reasons if held.retired_key is None or r != SIGNATURE_FAILS]
    return ClipStanding(held.site, (*found, *review), held.retired_key or checks.camera_key, tuple(review))


def clip_claim(upload: Upload, key: ServiceKey) -> ClipClaim:
    """What the upload's clip says of when it was recorded, as its camera signed it."""
    return ClipClaim(
        parse_time("recorded_start", upload.recorded_start),
        upload.created_at,
        canonical_json(clip_manifest(upload)),
        upload.signature,
        key.public_raw,
    )


def camera_key(session: Session, serial: str, key: ServiceKey) -> str | None:
    """The camera's enrolled public key (base64) as the session sees it; None if it has none, or if
    its row's seal does not hold for its latest custody entry (``devices.ends.sealed_device``: a
    key swapped in the database after the upload began would otherwise vouch for a clip the
    camera never signed; a warning names the camera)."""
    camera = sealed_device(session, device_seal_key(key), serial)
    return camera.public_key if camera is not None and camera.kind == "camera" else None


def check_clip(upload: Upload, key: str | None, digest: str) -> ClipChecks:
    """The camera's signature over the clip's manifest checked with ``key``, and the stored bytes'
    SHA-256 against the one the camera reported."""
    reasons: list[str] = []
    signature_ok = False
    if key is None:
        reasons.append("camera no longer enrolled: signature cannot be checked")
    else:
        signature_ok = verify_signature(
            load_public_key_b64(key), upload.signature, canonical_json(clip_manifest(upload))
        )
        if not signature_ok:
            reasons.append(SIGNATURE_FAILS)
    if digest != upload.camera_sha256:
        reasons.append(f"stored bytes hash to {digest}, the camera reported {upload.camera_sha256}")
    return ClipChecks(key, signature_ok, tuple(reasons))


def quarantined_copies(session: Session, upload: Upload) -> list[str]:
    """Items of the same clip quarantined before (bytes damaged on the way, say): this is their new copy."""
    return sorted(
        item_id
        for item_id in session.scalars(
            select(Upload.evidence_item_id).where(
                Upload.camera_serial == upload.camera_serial,
                Upload.camera_sha256 == upload.camera_sha256,
                Upload.evidence_status == "quarantined",
                Upload.id != upload.id,
            )
        )
        if item_id
    )


def received_details(session: Session, upload: Upload) -> dict[str, Any]:
    """The ``received`` custody entry's details: the dock, the upload, and the items of the same clip
    quarantined before (bytes damaged on the way, say) that this item is the new copy of."""
    received: dict[str, Any] = {
        "dock": upload.dock_id,
        "upload": upload.id,
        "bytes": upload.length,
        "upload_started": rfc3339(upload.created_at),
    }
    resent_for = quarantined_copies(session, upload)
    if resent_for:
        received["resent_for"] = resent_for
    return received


def already_recorded(session: Session, upload: Upload, digest: str) -> tuple[Upload, bool]:
    """The upload's row, locked, and whether the clip is evidence already: another request completed
    this upload meanwhile, or this dock stored the same clip (the camera's hash, signature and
    length) by another upload, which this one then names. A dock that created the upload again
    before the first answered (a client that timed out and started over) sends a clip twice. A copy
    whose bytes are not what the camera hashed is still recorded (quarantined), never dropped.

    The dock's row is locked first, as a creation locks it, so that on PostgreSQL two completions
    of one upload, or of two uploads of one clip, each see what the other recorded (SQLite's
    recording transactions are serialised anyway)."""
    session.get(Device, upload.dock_id, with_for_update=True)
    row = session.get(Upload, upload.id, with_for_update=True)
    assert row is not None
    if row.status == "complete" or digest != upload.camera_sha256:
        return row, row.status == "complete"
    copy = session.scalar(
        select(Upload)
        .where(
            Upload.dock_id == upload.dock_id,
            Upload.camera_serial == upload.camera_serial,
            Upload.camera_sha256 == upload.camera_sha256,
            Upload.signature == upload.signature,
            Upload.length == upload.length,
            Upload.status == "complete",
            Upload.evidence_status == "stored",
            Upload.id != upload.id,
        )
        .limit(1)
    )
    if copy is None:
        return row, False
    row.status, row.offset, row.committed = "complete", upload.length, upload.length
    row.evidence_item_id, row.evidence_status = copy.evidence_item_id, copy.evidence_status
    return row, True


def end_lease(row: Upload, upload: Upload) -> None:
    """The completing writer's lease (``upload`` as it read it) ends in the transaction that records
    the clip, so nothing is left to release after it; a lease taken over meanwhile is not touched."""
    if upload.lease_id is not None and row.lease_id == upload.lease_id:
        row.lease_id = row.lease_until = None


def settle_lock(store: ObjectStore, stored: StoredObject, due: datetime) -> datetime:
    """The object's lock as storage holds it, lengthened to ``due`` if the upload began with a shorter one
    (the camera's signature was checked again at the end, and a lock can only move later)."""
    held = store.info(stored.key, stored.version_id).retain_until
    if held is None or held < due.replace(microsecond=0):
        target = due.replace(microsecond=0) + timedelta(seconds=1)
        store.set_retention(stored.key, stored.version_id, target)
        return target
    return held
