"""Following faces across frames, so a mask stays on a face between and around detections.

Detection runs only on some frames and sometimes misses a face that is there (motion blur, a
turned head). The tracker joins detections of the same face into tracks, fills the frames in
between by interpolation, and keeps each mask on for a few frames before a face is first seen
and after it is last seen. It is pure: frames go in as numbers and detections, boxes come out.

Boxes are kept in scene coordinates: the camera's own movement in each frame (see
``redaction.motion``), when given, is taken out before interpolating and put back afterwards, so
a face between two sightings follows the camera's shake rather than a straight line.

The answer for a frame is final once detections up to ``horizon`` frames later have been given,
which is how far ahead the pipeline reads before it renders a frame.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from redaction.detector import Detection
from redaction.geometry import Box, iou, lerp

BoxKind = Literal["detected", "interpolated", "extended"]


@dataclass(frozen=True)
class TrackingSettings:
    """How tracks are joined and how long masks linger.

    ``max_gap``: frames a face may go unseen and still be the same track (and be masked
    throughout). ``keep_before``/``keep_after``: frames masked before the first and after the last
    sighting. ``smooth``: half-width, in frames, of the window box positions and sizes are
    averaged over. ``min_hits``: sightings a track needs before it is masked (1 masks every
    detection: the safe choice for privacy).
    """

    max_gap: int = 36
    keep_before: int = 24
    keep_after: int = 12
    smooth: int = 3
    min_iou: float = 0.05
    max_shift: float = 1.0
    min_hits: int = 1
    grow_per_frame: float = 0.03
    max_grow: float = 1.6

    @property
    def horizon(self) -> int:
        return max(self.max_gap, self.keep_before) + self.smooth


@dataclass(frozen=True)
class TrackedBox:
    """A face box in one frame, from which track, and whether it was seen, filled in or extended."""

    track: int
    box: Box
    kind: BoxKind
    score: float | None = None


@dataclass
class _Track:
    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def add(self, frame: int, box: Box, score: float) -> None:
        self.frames.append(frame)
        self.boxes.append(box)
        self.scores.append(score)


class FaceTracker:
    """Turns per-frame detections into tracks and answers which boxes to mask in a frame."""

    def __init__(self, settings: TrackingSettings | None = None) -> None:
        self.settings = settings or TrackingSettings()
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_frame = -1
        self._camera: dict[int, tuple[float, float]] = {}

    @property
    def horizon(self) -> int:
        return self.settings.horizon

    @property
    def track_count(self) -> int:
        return self._next_id

    def move_camera(self, frame: int, offset: tuple[float, float]) -> None:
        """Say where the picture has moved to in ``frame`` (from ``CameraMotion``); unset frames count as no move."""
        self._camera[frame] = offset

    def observe(self, frame: int, detections: Iterable[Detection]) -> list[int]:
        """Record what detection found in ``frame`` (an empty list is a frame looked at and found
        empty); return the ids of the tracks this started."""
        if frame <= self._last_frame:
            raise ValueError(f"frames must be observed in order: {frame} after {self._last_frame}")
        self._last_frame = frame
        s = self.settings
        live = [t for t in self._tracks if frame - t.last <= s.max_gap]
        dx, dy = self._camera.get(frame, (0.0, 0.0))
        dets = [Detection(Box(d.box.x - dx, d.box.y - dy, d.box.w, d.box.h), d.score) for d in detections]
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(live):
            predicted = self._predict(track, frame)
            for di, det in enumerate(dets):
                score = _match_score(predicted, det.box, s.min_iou, s.max_shift)
                if score > 0:
                    pairs.append((score, ti, di))
        pairs.sort(reverse=True)
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in used_dets:
                continue
            used_tracks.add(ti)
            used_dets.add(di)
            live[ti].add(frame, dets[di].box, dets[di].score)
        started = []
        for di, det in enumerate(dets):
            if di not in used_dets:
                track = _Track(self._next_id)
                self._next_id += 1
                track.add(frame, det.box, det.score)
                self._tracks.append(track)
                started.append(track.id)
        return started

    def earliest(self, track_id: int) -> tuple[int, Box] | None:
        """A track's first sighting: its frame and box (frame pixels), or None for an unknown track."""
        track = self._find(track_id)
        if track is None:
            return None
        dx, dy = self._camera.get(track.first, (0.0, 0.0))
        b = track.boxes[0]
        return track.first, Box(b.x + dx, b.y + dy, b.w, b.h)

    def observe_earlier(self, track_id: int, frame: int, detection: Detection) -> None:
        """Add a sighting before a track's first one: the pipeline, on finding a new face, looks
        back through the frames it still holds to see when that face really came into view."""
        track = self._find(track_id)
        if track is None or frame >= track.first:
            raise ValueError("an earlier sighting must come before the track's first")
        dx, dy = self._camera.get(frame, (0.0, 0.0))
        b = detection.box
        track.frames.insert(0, frame)
        track.boxes.insert(0, Box(b.x - dx, b.y - dy, b.w, b.h))
        track.scores.insert(0, detection.score)

    def _find(self, track_id: int) -> _Track | None:
        for track in self._tracks:
            if track.id == track_id:
                return track
        return None

    def expected(self, frame: int, unseen_for: int = 1) -> list[tuple[int, Box]]:
        """Where live tracks not sighted in the last ``unseen_for`` frames should be in ``frame``.

        The pipeline looks again around these places with a small, cheap detection, so a face
        once found keeps being sighted between full-frame passes.
        """
        s = self.settings
        dx, dy = self._camera.get(frame, (0.0, 0.0))
        out = []
        for track in self._tracks:
            gap = frame - track.last
            if unseen_for <= gap <= s.max_gap and len(track.frames) >= s.min_hits:
                b = self._predict(track, frame)
                out.append((track.id, Box(b.x + dx, b.y + dy, b.w, b.h)))
        return out

    def boxes_at(self, frame: int) -> list[TrackedBox]:
        """The boxes to mask in ``frame``."""
        out: list[TrackedBox] = []
        s = self.settings
        for track in self._tracks:
            if len(track.frames) < s.min_hits:
                continue
            if frame < track.first - s.keep_before or frame > track.last + s.keep_after:
                continue
            tracked = self._box_at(track, frame)
            out.append(tracked)
        dx, dy = self._camera.get(frame, (0.0, 0.0))
        if dx or dy:
            out = [replace(t, box=Box(t.box.x + dx, t.box.y + dy, t.box.w, t.box.h)) for t in out]
        return out

    def forget_before(self, frame: int) -> None:
        """Drop tracks that can no longer touch ``frame`` or any later frame."""
        s = self.settings
        self._tracks = [
            t
            for t in self._tracks
            if t.last + s.keep_after >= frame or self._last_frame - t.last <= s.max_gap
        ]
        for old in [f for f in self._camera if f < frame]:
            del self._camera[old]

    def _box_at(self, track: _Track, frame: int) -> TrackedBox:
        s = self.settings
        frames = track.frames
        k = bisect.bisect_left(frames, frame)
        if k < len(frames) and frames[k] == frame:
            return TrackedBox(track.id, self._smoothed(track, k), "detected", track.scores[k])
        if 0 < k < len(frames):
            a, b = self._smoothed(track, k - 1), self._smoothed(track, k)
            u = (frame - frames[k - 1]) / (frames[k] - frames[k - 1])
            return TrackedBox(track.id, lerp(a, b, u), "interpolated")
        # Before the first or after the last sighting: carry the box on along its motion, growing
        # it a little each frame because where the face is becomes less certain.
        end = 0 if k == 0 else len(frames) - 1
        base = self._smoothed(track, end)
        vx, vy = self._velocity(track, end)
        dt = frame - frames[end]
        grow = min(s.max_grow, 1.0 + s.grow_per_frame * abs(dt))
        moved = Box.from_center(base.cx + vx * dt, base.cy + vy * dt, base.w, base.h)
        return TrackedBox(track.id, moved.scaled(grow), "extended")

    def _smoothed(self, track: _Track, k: int) -> Box:
        """The k-th sighting smoothed over sightings within ``smooth`` frames either side: the
        centre averaged, the size the largest seen (a face that looks smaller for a frame or two,
        blurred or turning, keeps the larger mask)."""
        s = self.settings.smooth
        if s <= 0:
            return track.boxes[k]
        f = track.frames[k]
        lo = bisect.bisect_left(track.frames, f - s)
        hi = bisect.bisect_right(track.frames, f + s)
        boxes = track.boxes[lo:hi]
        n = len(boxes)
        return Box.from_center(
            sum(b.cx for b in boxes) / n,
            sum(b.cy for b in boxes) / n,
            max(b.w for b in boxes),
            max(b.h for b in boxes),
        )

    def _velocity(self, track: _Track, end: int) -> tuple[float, float]:
        """Pixels a frame at one end of a track, measured over up to ``max_gap`` frames of sightings."""
        frames = track.frames
        if len(frames) < 2:
            return 0.0, 0.0
        span = self.settings.max_gap
        if end == 0:
            j = max(1, bisect.bisect_right(frames, frames[0] + span) - 1)
            a, b = 0, j
        else:
            j = min(len(frames) - 2, bisect.bisect_left(frames, frames[-1] - span))
            a, b = j, len(frames) - 1
        dt = frames[b] - frames[a]
        if dt <= 0:
            return 0.0, 0.0
        ba, bb = self._smoothed(track, a), self._smoothed(track, b)
        return (bb.cx - ba.cx) / dt, (bb.cy - ba.cy) / dt

    def _predict(self, track: _Track, frame: int) -> Box:
        """Where a live track's face should be in ``frame``, from its latest motion."""
        last = track.boxes[-1]
        vx, vy = self._velocity(track, len(track.frames) - 1)
        dt = frame - track.last
        return Box.from_center(last.cx + vx * dt, last.cy + vy * dt, last.w, last.h)


def _match_score(predicted: Box, detected: Box, min_iou: float, max_shift: float) -> float:
    """How well a detection continues a track: its IoU, or a small score for a near, similar box."""
    overlap = iou(predicted, detected)
    if overlap >= min_iou:
        return overlap
    size = max(predicted.w, predicted.h, detected.w, detected.h)
    ratio = (detected.w * detected.h) / max(1e-6, predicted.w * predicted.h)
    shift = ((predicted.cx - detected.cx) ** 2 + (predicted.cy - detected.cy) ** 2) ** 0.5 / size
    if shift <= max_shift and 0.4 <= ratio <= 2.5:
        return 0.01 * (1.0 - shift / max_shift) + 1e-6
    return 0.0
