"""Scoring a redaction against faces whose places are known: how many were hidden, and where not.

Used to hold the redaction to its targets on footage with known faces (synthetic clips, hand
annotated ones). A face in a frame counts as hidden when the masks cover at least ``needed`` of
its box; faces smaller than ``min_size`` or mostly out of view (``min_visible``) are left out
of the score, as no detector can be asked to find them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from redaction.geometry import Box
from redaction.render import Mask, covered


@dataclass(frozen=True)
class KnownFace:
    """A face known to be in a frame: its track, in-frame box, size and how much of it is in view."""

    frame: int
    track: int
    box: Box
    size: float
    visible: float = 1.0


@dataclass
class CoverageReport:
    """How well the masks in a record covered the known faces."""

    face_frames: int = 0
    hidden: int = 0
    holes: int = 0
    longest_uncovered: int = 0
    by_size: dict[str, list[int]] = field(default_factory=dict)
    missed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.hidden / self.face_frames if self.face_frames else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "face_frames": self.face_frames,
            "hidden": self.hidden,
            "share": round(self.share, 4),
            "holes": self.holes,
            "longest_uncovered": self.longest_uncovered,
            "by_size": {k: {"hidden": v[0], "face_frames": v[1]} for k, v in sorted(self.by_size.items())},
            "missed_examples": self.missed[:20],
        }


def record_masks(notes: Sequence[dict[str, Any]]) -> list[Mask]:
    """The masks actually drawn in a frame, from its record entry."""
    return [Mask(Box(*n["box"]), n.get("shape", "rect")) for n in notes if not n.get("excluded")]


def mask_shares(
    faces: Iterable[KnownFace], record: Sequence[Sequence[dict[str, Any]]], width: int, height: int
) -> Iterator[tuple[KnownFace, float]]:
    """Each face with the share of its box that the masks in a redaction record hide."""
    for face in faces:
        notes = record[face.frame] if face.frame < len(record) else []
        yield face, covered(face.box, record_masks(notes), width, height)


def score(
    shares: Iterable[tuple[KnownFace, float]],
    *,
    min_size: float = 24,
    min_visible: float = 0.5,
    needed: float = 0.9,
    size_buckets: Sequence[int] = (24, 32, 48, 64, 96, 128),
) -> CoverageReport:
    """Score faces, each with the share of it that was hidden.

    ``holes`` counts face-frames left uncovered although the same face was covered both before
    and after them: a flicker of the real face that a viewer stepping through frames would see.
    ``longest_uncovered`` is the most scored frames in a row that any one face went uncovered.
    """
    report = CoverageReport()
    per_track: dict[int, list[tuple[int, bool]]] = defaultdict(list)
    for face, share in shares:
        if face.size < min_size or face.visible < min_visible:
            continue
        ok = share >= needed
        report.face_frames += 1
        report.hidden += ok
        bucket = size_band(face.size, size_buckets)
        counts = report.by_size.setdefault(bucket, [0, 0])
        counts[0] += ok
        counts[1] += 1
        per_track[face.track].append((face.frame, ok))
        if not ok:
            report.missed.append(
                {
                    "frame": face.frame,
                    "track": face.track,
                    "size": round(face.size, 1),
                    "covered": round(share, 3),
                }
            )
    for seen in per_track.values():
        seen.sort()
        flags = [ok for _, ok in seen]
        run = 0
        for ok in flags:
            run = 0 if ok else run + 1
            report.longest_uncovered = max(report.longest_uncovered, run)
        if True not in flags:
            continue
        first = flags.index(True)
        last = len(flags) - 1 - flags[::-1].index(True)
        report.holes += sum(1 for ok in flags[first:last] if not ok)
    return report


def size_band(size: float, buckets: Sequence[int]) -> str:
    """A label for the size range a face falls in, e.g. "024-031" (zero-padded so labels sort)."""
    if size < buckets[0]:
        return f"<{buckets[0]:03d}"
    for low, high in zip(buckets, buckets[1:], strict=False):
        if low <= size < high:
            return f"{low:03d}-{high - 1:03d}"
    return f"{buckets[-1]:03d}+"
