"""An upload's tail segments: the bytes after its last full part, kept as small objects in the
unlocked staging bucket (``[offset, size, writer]`` in the upload's ``staged`` list), so an
interrupted upload resumes from the byte where it stopped. Each is named after the request that
wrote it, so a writer that lost its lease cannot overwrite the next one's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.objects import ObjectStore, StorageError


def tail_key(upload_id: str, segment: list[Any]) -> str:
    """The staging key of a tail segment ``[offset, size, writer]`` (older rows have no writer)."""
    writer = f"-{segment[2]}" if len(segment) > 2 else ""
    return f"tails/{upload_id}/{int(segment[0]):015d}{writer}"


def drop_tails(store: ObjectStore, upload_id: str, segments: Iterable[list[Any]]) -> None:
    """Delete the staged tail segments named; one the store cannot delete now stays behind, and
    never fails the request that drops it."""
    for segment in segments:
        try:
            store.stage_delete(tail_key(upload_id, segment))
        except StorageError:
            pass
