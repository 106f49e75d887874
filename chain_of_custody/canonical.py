"""The one byte form of what is hashed and signed: canonical JSON (RFC 8785-compatible subset) and
RFC 3339 UTC times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the same bytes on every machine."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members (``json.loads``' ``object_pairs_hook``), refusing one named twice:
    bytes whose parse hides a member are not what their signer signed."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def rfc3339(moment: datetime, digits: int = 6) -> str:
    """RFC 3339 in UTC ending in ``Z``, with ``digits`` (6: microseconds, 3: milliseconds, 0: none) of
    the second's fraction. Custody records use microseconds; the device wire protocol milliseconds."""
    if moment.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    utc = moment.astimezone(UTC)
    whole = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if digits == 0:
        return whole + "Z"
    return f"{whole}.{utc.microsecond:06d}"[: len(whole) + 1 + digits] + "Z"
