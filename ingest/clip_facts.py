"""What a finished clip upload is recorded with: the manifest the camera signed, earlier quarantined
copies of the same clip, and the object's lock as storage holds it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.objects import ObjectStore, StoredObject

from .models import Upload


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


def settle_lock(store: ObjectStore, stored: StoredObject, due: datetime) -> datetime:
    """The object's lock as storage holds it, lengthened to ``due`` if the upload began with a shorter one
    (the camera's signature was checked again at the end, and a lock can only move later)."""
    held = store.info(stored.key, stored.version_id).retain_until
    if held is None or held < due.replace(microsecond=0):
        target = due.replace(microsecond=0) + timedelta(seconds=1)
        store.set_retention(stored.key, stored.version_id, target)
        return target
    return held
