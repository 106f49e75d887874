"""Redactions an investigator asks for by hand, and automatic tracks they ask to leave alone.

A manual region hides a box over a time range: fixed, moved between keyframes, or followed by
an OpenCV tracker from where it was drawn (for a name badge or a screen that the face detector
knows nothing about). An exclusion un-masks one automatic track, over its whole life or a time
range: the subject of an incident, say, or a detection that is plainly not a face.

Times are seconds from the start of the clip; a frame counts as inside a range when any part
of its display interval overlaps the range, so a range never leaves a frame half-covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from redaction.geometry import Box, lerp

if TYPE_CHECKING:
    import numpy as np

    from redaction.frames import Frame
    from redaction.render import Shape

# cv2 is imported when a region is first followed, not when a redaction request is read: the
# service process reads requests and never redacts, and cv2 with numpy costs it about 35 MB at rest.


@dataclass(frozen=True)
class ManualRegion:
    """A box (frame pixels, at ``start``) hidden from ``start`` to ``end`` seconds.

    ``keyframes``: further (time, x, y, w, h) positions; the box moves linearly between them.
    ``follow``: follow the box's content with an OpenCV tracker instead (keyframes are ignored).
    """

    start: float
    end: float
    x: float
    y: float
    w: float
    h: float
    shape: Shape = "rect"
    follow: bool = False
    keyframes: tuple[tuple[float, float, float, float, float], ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise ValueError(f"manual region needs start <= end, got {self.start}..{self.end}")
        if self.w <= 0 or self.h <= 0:
            raise ValueError("manual region needs a positive width and height")

    @property
    def box(self) -> Box:
        return Box(self.x, self.y, self.w, self.h)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "box": [self.x, self.y, self.w, self.h],
            "shape": self.shape,
            "follow": self.follow,
            "keyframes": [list(k) for k in self.keyframes],
            "label": self.label,
        }


@dataclass(frozen=True)
class Exclusion:
    """Leave automatic track ``track`` unmasked, from ``start`` to ``end`` seconds (None: its whole life)."""

    track: int
    start: float | None = None
    end: float | None = None
    reason: str | None = None

    def covers(self, track: int, frame: int, fps: Fraction) -> bool:
        if track != self.track:
            return False
        return frame_in_range(frame, fps, self.start, self.end)

    def to_json(self) -> dict[str, Any]:
        return {"track": self.track, "start": self.start, "end": self.end, "reason": self.reason}


def frame_in_range(frame: int, fps: Fraction, start: float | None, end: float | None) -> bool:
    """Whether frame ``frame`` is on screen at any moment of [start, end] (open ends allowed)."""
    shown_from = frame / fps
    shown_to = (frame + 1) / fps
    if start is not None and shown_to <= Fraction(start):
        return False
    if end is not None and shown_from > Fraction(end):
        return False
    return True


@dataclass
class _Follower:
    tracker: Any
    box: Box
    lost: bool = False


@dataclass
class ManualRegionFollower:
    """Works out where each manual region is, frame by frame, in frame order.

    Followed regions need the frames themselves, so ``update`` is called with every frame as it
    is decoded; ``boxes_at`` may then be asked about any frame already seen.
    """

    regions: list[ManualRegion]
    fps: Fraction
    _followers: dict[int, _Follower] = field(default_factory=dict)
    _followed: dict[tuple[int, int], Box] = field(default_factory=dict)

    def update(self, frame_index: int, frame: Frame) -> None:
        import cv2

        image: np.ndarray | None = None
        for n, region in enumerate(self.regions):
            if not region.follow or not frame_in_range(frame_index, self.fps, region.start, region.end):
                continue
            if image is None:
                image = frame.to_bgr()
            follower = self._followers.get(n)
            if follower is None:
                tracker = cv2.TrackerMIL_create()  # type: ignore[attr-defined]  # in the wheel, not its stubs
                bx = _int_box(region.box, frame.width, frame.height)
                tracker.init(image, bx)
                follower = _Follower(tracker, region.box)
                self._followers[n] = follower
            elif not follower.lost:
                ok, found = follower.tracker.update(image)
                if ok:
                    follower.box = Box(*(float(v) for v in found))
                else:
                    # Keep hiding where it was last seen, and widen the net a little.
                    follower.box = follower.box.scaled(1.25)
                    follower.lost = True
            self._followed[(n, frame_index)] = follower.box

    def boxes_at(self, frame_index: int) -> list[tuple[int, ManualRegion, Box]]:
        out = []
        for n, region in enumerate(self.regions):
            if not frame_in_range(frame_index, self.fps, region.start, region.end):
                continue
            if region.follow:
                box = self._followed.get((n, frame_index), region.box)
            else:
                box = _keyframed(region, float(frame_index / self.fps))
            out.append((n, region, box))
        return out

    def forget_before(self, frame_index: int) -> None:
        for key in [k for k in self._followed if k[1] < frame_index]:
            del self._followed[key]


def _keyframed(region: ManualRegion, t: float) -> Box:
    keys = [(region.start, region.box)] + [
        (k[0], Box(k[1], k[2], k[3], k[4])) for k in sorted(region.keyframes)
    ]
    if t <= keys[0][0]:
        return keys[0][1]
    for (t0, b0), (t1, b1) in zip(keys, keys[1:], strict=False):
        if t <= t1:
            return b0 if t1 <= t0 else lerp(b0, b1, (t - t0) / (t1 - t0))
    return keys[-1][1]


def _int_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    clipped = box.clipped(width, height) or Box(0, 0, 1, 1)
    return (int(clipped.x), int(clipped.y), max(1, int(round(clipped.w))), max(1, int(round(clipped.h))))
