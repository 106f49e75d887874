"""The stored form of an export package: its layout, from which the zip is assembled on download.

A package's media are already held write-once as evidence; storing them a second time inside a zip
would double the writes for nothing. So the package item's object holds only what is new (the zip's
headers, the small members and the central directory, as bytes) and a list of segments that, laid
end to end, are the zip: each segment is either a slice of those bytes or a whole media object named
by item, key, version, size, SHA-256 and CRC-32. The same layout gives the same bytes every time.

Object format (version 1)::

    evidence-export-layout/1\\n
    <length of the JSON document in bytes, decimal>\\n
    <JSON document>
    <blob: the bytes the "data" segments point into>
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

FORMAT = "evidence-export-layout/1"
MAGIC = FORMAT.encode() + b"\n"
CONTENT_TYPE = "application/vnd.evidence.export-layout"
MAX_DOCUMENT = 256 * 1024 * 1024


class LayoutError(ValueError):
    """The object is not a well-formed package layout."""


@dataclass(frozen=True)
class DataSegment:
    """``length`` bytes of the blob from ``offset``, at ``start`` in the package."""

    start: int
    offset: int
    length: int


@dataclass(frozen=True)
class MediaSegment:
    """The whole stored object of an evidence item, at ``start`` in the package."""

    start: int
    item_id: str
    key: str
    version_id: str | None
    length: int
    sha256: str
    crc32: int
    path: str
    blake3: str | None = None  # the item's second digest, checked on download where recorded


Segment = DataSegment | MediaSegment


@dataclass(frozen=True)
class Layout:
    export_id: str
    filename: str
    size: int
    sha256: str | None  # of the whole zip, when it was computed at build time
    manifest_sha256: str
    segments: tuple[Segment, ...]
    blob: bytes

    @property
    def media(self) -> list[MediaSegment]:
        return [s for s in self.segments if isinstance(s, MediaSegment)]


def _segment_json(seg: Segment) -> dict[str, Any]:
    if isinstance(seg, DataSegment):
        return {"data": [seg.offset, seg.length]}
    return {
        "item": seg.item_id,
        "key": seg.key,
        "version_id": seg.version_id,
        "size": seg.length,
        "sha256": seg.sha256,
        "crc32": seg.crc32,
        "path": seg.path,
        **({"blake3": seg.blake3} if seg.blake3 is not None else {}),
    }


def encode(layout: Layout) -> bytes:
    """The object's bytes (deterministic: sorted keys, no spaces)."""
    doc = {
        "format": FORMAT,
        "export_id": layout.export_id,
        "filename": layout.filename,
        "size": layout.size,
        "sha256": layout.sha256,
        "manifest_sha256": layout.manifest_sha256,
        "segments": [_segment_json(s) for s in layout.segments],
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + str(len(body)).encode() + b"\n" + body + layout.blob


def decode(data: bytes) -> Layout:
    """Parse and check that the segments tile the package exactly; LayoutError otherwise."""
    if not data.startswith(MAGIC):
        raise LayoutError("not an export package layout")
    rest = data[len(MAGIC) :]
    line, sep, rest = rest.partition(b"\n")
    if not sep or not line.isdigit() or int(line) > min(len(rest), MAX_DOCUMENT):
        raise LayoutError("layout document length missing or out of bounds")
    n = int(line)
    try:
        doc = json.loads(rest[:n])
    except ValueError as exc:
        raise LayoutError(f"layout document is not JSON: {exc}") from None
    blob = rest[n:]
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LayoutError("unknown layout format")
    try:
        segments: list[Segment] = []
        pos = 0
        for s in doc["segments"]:
            if "data" in s:
                offset, length = (int(v) for v in s["data"])
                if offset < 0 or length <= 0 or offset + length > len(blob):
                    raise LayoutError(f"data segment at {pos} points outside the blob")
                segments.append(DataSegment(pos, offset, length))
            else:
                length = int(s["size"])
                if length < 0:
                    raise LayoutError(f"media segment at {pos} has a negative size")
                segments.append(
                    MediaSegment(
                        pos,
                        str(s["item"]),
                        str(s["key"]),
                        None if s["version_id"] is None else str(s["version_id"]),
                        length,
                        str(s["sha256"]),
                        int(s["crc32"]),
                        str(s["path"]),
                        None if s.get("blake3") is None else str(s["blake3"]),
                    )
                )
            pos += length
        size = int(doc["size"])
        if pos != size:
            raise LayoutError(f"segments add up to {pos} bytes, the layout says {size}")
        return Layout(
            export_id=str(doc["export_id"]),
            filename=str(doc["filename"]),
            size=size,
            sha256=doc.get("sha256"),
            manifest_sha256=str(doc["manifest_sha256"]),
            segments=tuple(segments),
            blob=blob,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, LayoutError):
            raise
        raise LayoutError(f"malformed layout: {exc!r}") from None


def pieces(layout: Layout, start: int, end: int) -> Iterator[tuple[Segment, int, int]]:
    """(segment, offset within it, length) for the package bytes ``start``..``end`` inclusive."""
    for seg in layout.segments:
        length = seg.length
        seg_end = seg.start + length - 1
        if seg_end < start or seg.start > end or length == 0:
            continue
        lo = max(start, seg.start) - seg.start
        hi = min(end, seg_end) - seg.start
        yield seg, lo, hi - lo + 1
