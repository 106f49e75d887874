"""Following faces across frames, so a mask stays on a face between and around detections.

Detection runs only on some frames and sometimes misses a face that is there (motion blur, a
turned head). Each face is a track with a constant-velocity Kalman filter: where the face is, how
fast it moves and how sure we are of both. A new sighting joins the track whose predicted place it
fits (Mahalanobis distance within the filter's uncertainty), so a small face crossing the view at
several face widths between looks stays one track; a young track starts with a wide uncertainty on
its speed, which narrows as sightings come in. That uncertainty grows with the square of the gap,
so a sighting must also lie within a bounded change of speed of the prediction (``join_speed``):
a face seen once and gone is not joined to another face across the picture, its mask swept
between them. Given the picture's size, a track whose predicted place has left the picture (the
camera turned away, or the face walked out) takes only a sighting near that place: a face that
leaves the picture ends its track, rather than its mask coming back in from the edge and sliding
across to a face found elsewhere. Between sightings the mask moves in a straight line
(the sightings on both sides are known by the time a frame is drawn); before the first sighting and
after the last it is held for a few frames along the track's velocity, at the face's own size; a
face seen only once, in the dark, is held for fewer (a lone night detection is as likely noise as
a face, and a large one held for a dozen frames hides much of the picture for nothing).

A join after a gap is weighed on one sighting; the pipeline looks back from it through the gap
(``resumed``), and where that path does not lead back to the track's sighting before the gap, the
sightings after it are another face and become a track of their own (``separate``).

Nothing crosses a cut (see ``redaction.cuts``): at a cut every track ends, and no track's hold
reaches back before the first frame of its own shot or on past the last.

Boxes are kept in scene coordinates: the camera's own movement in each frame (see
``redaction.motion``), when given, is taken out before tracking and put back afterwards, so a face
between two sightings follows the camera's shake rather than a straight line on screen.

The tracker is pure: frames go in as numbers and detections, boxes come out. The answer for a
frame is final once detections up to ``horizon`` frames later have been given.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

import numpy as np

from redaction.detector import Detection
from redaction.geometry import Box, iou, lerp

BoxKind = Literal["detected", "interpolated", "extended"]


@dataclass(frozen=True)
class TrackingSettings:
    """How tracks are joined and how long masks linger.

    ``max_gap``: frames a face may go unseen and still be the same track (and be masked
    throughout). ``keep_before``/``keep_after``: frames masked before the first and after the last
    sighting (never across a cut). ``smooth``: half-width, in frames, of the window sighting
    positions are averaged over. ``min_hits``: sightings a track needs before it is masked (1
    masks every detection: the safe choice for privacy). Motion model: ``speed_prior`` is the
    spread of a new track's speed as a share of its size a frame (capped at ``speed_cap`` px),
    ``accel`` the spread of its change per frame, ``measure`` the spread of a sighting's centre,
    both as shares of the face's size; ``gate`` the squared Mahalanobis distance a sighting may
    lie from a track's prediction and still join it. ``lean_span``: a face's boxes are moved by
    the median lean (``Detection.lean``) of its sightings within this many frames either side
    (and its confidence and brightness are taken over the same sightings, ``TrackedBox``).
    ``keep_unconfirmed``: the hold before and after a track with a single sighting found darker
    than ``unconfirmed_dark`` (``Detection.luma``), instead of ``keep_before``/``keep_after``.
    ``join_speed``: a sighting joins a track only if reaching it from the track's prediction takes
    a change of speed of at most this many times a new track's speed spread (pixels a frame,
    over the frames since the track's last sighting, beyond the sightings' own spread). The
    statistical gate alone grows with the square of the gap for a track whose speed is not yet
    known, so ten frames after a lone sighting it took a face anywhere in the picture for it.
    ``face_aspect``: a sighting's box flatter than this share of its width (or narrower than this
    share of its height) does not place the face's centre up and down (or sideways) while the
    face's other sightings nearby do (0: every box does). Faces are about as wide as they are tall;
    the same share as the mask's rule (``RedactionSettings.face_aspect``), on the same measurement.
    ``out_of_view``: a track whose predicted box has less than this share of it inside the picture
    (when the tracker knows the picture's size) is out of view, and takes a sighting only within
    one face size of its predicted place: a panning camera's wall stands still in scene
    coordinates, so a face gone out at one edge kept its place there while its gate grew with the
    gap, until it took a face coming into view far along the wall for itself (benchmark held-out
    clip: masks whose face had left the picture were 0.49 points of its 3.16 % of non-face pixels
    changed, 1.63 of its night shots' 7.00).
    ``size_reach``: a sighting whose nearest sightings on both sides are within this many frames
    is at least the size the line between theirs gives at its frame. A face the pipeline follows
    is sighted every 4-8 frames (its looks and the whole-frame passes), so a window of ``smooth``
    frames holds one sighting, and a box that came out small at one look was the mask's size for
    the frames on both sides of it (benchmark held-out clip: a 55 px face whose sightings were
    0.81-0.88 of it, under 90 % hidden for 8 frames between the two smallest; seed 101 draw: a
    29 px night face, 11 frames). The line, not the larger neighbour: a face coming closer grows
    from one sighting to the next, and its next sighting's size would be a mask too large.
    """

    max_gap: int = 30
    keep_before: int = 6
    keep_after: int = 6
    smooth: int = 2
    min_hits: int = 1
    speed_prior: float = 0.6
    speed_min: float = 6.0
    speed_cap: float = 30.0
    accel: float = 0.04
    measure: float = 0.1
    gate: float = 16.0
    size_ratio: float = 1.8
    lean_span: int = 15
    keep_unconfirmed: int = 2
    unconfirmed_dark: float = 40.0
    join_speed: float = 2.0
    face_aspect: float = 0.9
    out_of_view: float = 0.5
    size_reach: int = 8

    @property
    def horizon(self) -> int:
        return max(self.max_gap, self.keep_before) + self.smooth


@dataclass(frozen=True)
class TrackedBox:
    """A face box in one frame, from which track, and whether it was seen, filled in or extended;
    ``confidence`` and ``luma`` are the medians of the face's sightings within ``lean_span``
    frames (None: none there says), ``sightings`` how many there are."""

    track: int
    box: Box
    kind: BoxKind
    score: float | None = None
    confidence: float | None = None
    luma: float | None = None
    sightings: int = 0


@dataclass
class TrackState:
    """What the tracker believes about a live track at a frame: where (frame pixels), how fast,
    how unsure (one standard deviation of the centre, pixels) and how many sightings so far."""

    track: int
    box: Box
    speed: float
    spread: float
    sightings: int


class _Kalman:
    """Constant-velocity filter over a face centre (x, y, vx, vy), in scene pixels and frames."""

    def __init__(self, cx: float, cy: float, size: float, s: TrackingSettings) -> None:
        self.s = s
        v = min(s.speed_cap, max(s.speed_min, s.speed_prior * size))
        self.speed_spread = v
        r = s.measure * size + 1.0
        self.x = np.array([cx, cy, 0.0, 0.0])
        self.P = np.diag([r * r, r * r, v * v, v * v])
        self.frame = 0

    def predicted(self, dt: int, size: float) -> tuple[np.ndarray, np.ndarray]:
        F, noise = _transition(dt)
        q = (self.s.accel * size) ** 2
        return F @ self.x, F @ self.P @ F.T + q * noise

    def innovation(self, dt: int, size: float) -> tuple[np.ndarray, np.ndarray]:
        """The predicted state after ``dt`` frames and the spread a sighting's centre has about
        it (the prediction's and the measurement's): made once for every sighting it is weighed
        against (``distance``)."""
        x, P = self.predicted(dt, size)
        r = (self.s.measure * size + 1.0) ** 2
        return x, P[:2, :2] + np.eye(2) * r

    def update(self, dt: int, size: float, cx: float, cy: float) -> None:
        x, P = self.predicted(dt, size)
        r = (self.s.measure * size + 1.0) ** 2
        S = P[:2, :2] + np.eye(2) * r
        K = P[:, :2] @ np.linalg.inv(S)
        self.x = x + K @ (np.array([cx, cy]) - x[:2])
        self.P = (np.eye(4) - K[:, :2] @ np.eye(2, 4)) @ P


def distance(x: np.ndarray, S: np.ndarray, cx: float, cy: float) -> float:
    """The squared Mahalanobis distance of a sighting's centre from a prediction (``innovation``)."""
    d = np.array([cx, cy]) - x[:2]
    return float(d @ np.linalg.solve(S, d))


@lru_cache(maxsize=128)
def _transition(dt: int) -> tuple[np.ndarray, np.ndarray]:
    """The constant-velocity step over ``dt`` frames and its noise shape (piecewise-constant white
    acceleration); kept per ``dt``, as the same few steps recur every frame for every track."""
    F = np.eye(4)
    F[0, 2] = F[1, 3] = dt
    g = np.array([[dt * dt / 2, 0], [0, dt * dt / 2], [dt, 0], [0, dt]])
    F.setflags(write=False)
    noise = g @ g.T
    noise.setflags(write=False)
    return F, noise


@dataclass
class _Track:
    id: int
    shot: int
    kalman: _Kalman
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    leans: list[tuple[float, float] | None] = field(default_factory=list)
    lumas: list[float | None] = field(default_factory=list)
    # Smoothed boxes by sighting index (``FaceTracker._smoothed``), made again after any sighting
    # is added: a frame between two sightings asks for the same two as its neighbours.
    smoothed: dict[int, Box] = field(default_factory=dict)

    def add(self, at: int, frame: int, box: Box, det: Detection) -> None:
        """Put a sighting in place ``at`` of the track's lists."""
        self.smoothed.clear()
        self.frames.insert(at, frame)
        self.boxes.insert(at, box)
        self.scores.insert(at, det.score)
        self.leans.insert(at, det.lean)
        self.lumas.insert(at, det.luma)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    @property
    def size(self) -> float:
        b = self.boxes[-1]
        return max(b.w, b.h)


class FaceTracker:
    """Turns per-frame detections into tracks and answers which boxes to mask in a frame.
    ``frame_size`` (width, height), when given, lets it tell a track that has left the picture
    (``TrackingSettings.out_of_view``)."""

    def __init__(
        self, settings: TrackingSettings | None = None, frame_size: tuple[int, int] | None = None
    ) -> None:
        self.settings = settings or TrackingSettings()
        self.frame_size = frame_size
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_frame = -1
        self._camera: dict[int, tuple[float, float]] = {}
        self._cuts: list[int] = [0]

    @property
    def horizon(self) -> int:
        return self.settings.horizon

    @property
    def track_count(self) -> int:
        return self._next_id

    @property
    def cuts(self) -> list[int]:
        """First frames of the shots seen so far (0 always)."""
        return list(self._cuts)

    def cut(self, frame: int) -> None:
        """``frame`` starts a new shot: every track ends before it, and none starts before it."""
        if frame <= self._cuts[-1]:
            if frame == self._cuts[-1]:
                return
            raise ValueError("cuts must be given in order")
        if frame <= self._last_frame:
            raise ValueError("a cut must be given before the frame's detections")
        self._cuts.append(frame)

    def move_camera(self, frame: int, offset: tuple[float, float]) -> None:
        """Say where the picture has moved to in ``frame`` (from ``CameraMotion``); unset frames count as no move."""
        self._camera[frame] = offset

    def _shot_of(self, frame: int) -> int:
        return bisect.bisect_right(self._cuts, frame) - 1

    def _shot_span(self, shot: int) -> tuple[int, int | None]:
        """First and last frame of a shot (last None while the shot goes on)."""
        start = self._cuts[shot]
        end = self._cuts[shot + 1] - 1 if shot + 1 < len(self._cuts) else None
        return start, end

    def _to_scene(self, frame: int, box: Box) -> Box:
        dx, dy = self._camera.get(frame, (0.0, 0.0))
        return Box(box.x - dx, box.y - dy, box.w, box.h)

    def _to_frame(self, frame: int, box: Box) -> Box:
        dx, dy = self._camera.get(frame, (0.0, 0.0))
        return Box(box.x + dx, box.y + dy, box.w, box.h)

    def _live(self, frame: int) -> list[_Track]:
        shot = self._shot_of(frame)
        return [t for t in self._tracks if t.shot == shot and 0 < frame - t.last <= self.settings.max_gap]

    def observe(self, frame: int, detections: Iterable[Detection]) -> list[int]:
        """Record what detection found in ``frame`` (an empty list is a frame looked at and found
        empty); return the ids of the tracks this started."""
        if frame <= self._last_frame:
            raise ValueError(f"frames must be observed in order: {frame} after {self._last_frame}")
        self._last_frame = frame
        s = self.settings
        live = self._live(frame)
        dets = [d.moved(self._to_scene(frame, d.box)) for d in detections]
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(live):
            dt = frame - track.last
            last = track.boxes[-1]
            size = track.size
            x, S = track.kalman.innovation(dt, size)
            predicted = Box.from_center(float(x[0]), float(x[1]), last.w, last.h)
            gone = self._left_picture(frame, predicted)
            for di, det in enumerate(dets):
                ratio = max(det.box.w, det.box.h) / max(1e-6, size)
                if not 1 / s.size_ratio <= ratio <= s.size_ratio:
                    continue
                if not self._reachable(track, dt, predicted, det.box):
                    continue
                if gone and not self._near(track, predicted, det.box):
                    continue
                d2 = distance(x, S, det.box.cx, det.box.cy)
                overlap = iou(predicted, det.box)
                if d2 <= s.gate or overlap >= 0.3:
                    # Overlap first, then the statistical distance.
                    pairs.append((d2 - 100.0 * overlap, ti, di))
        pairs.sort()
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in used_dets:
                continue
            used_tracks.add(ti)
            used_dets.add(di)
            track, det = live[ti], dets[di]
            track.kalman.update(frame - track.last, track.size, det.box.cx, det.box.cy)
            track.add(len(track.frames), frame, det.box, det)
        started = []
        shot = self._shot_of(frame)
        for di, det in enumerate(dets):
            if di in used_dets:
                continue
            b = det.box
            track = _Track(self._next_id, shot, _Kalman(b.cx, b.cy, max(b.w, b.h), s))
            track.add(0, frame, b, det)
            self._next_id += 1
            self._tracks.append(track)
            started.append(track.id)
        return started

    def _reachable(
        self, track: _Track, dt: int, predicted: Box, found: Box, size: float | None = None
    ) -> bool:
        """Whether a sighting lies within the speed a track may change by (``join_speed``) of
        where the track should be after ``dt`` frames (``size``: the face's, when not the
        track's latest)."""
        s = self.settings
        off = float(np.hypot(found.cx - predicted.cx, found.cy - predicted.cy))
        slack = 2.0 * (s.measure * (size or track.size) + 1.0)
        return (off - slack) / max(1, dt) <= s.join_speed * track.kalman.speed_spread

    def _left_picture(self, frame: int, predicted: Box) -> bool:
        """Whether a track's predicted box (scene pixels) lies mostly outside ``frame``'s picture:
        its face has gone out of view (the camera turned away, or the face walked out)."""
        if self.frame_size is None:
            return False
        box = self._to_frame(frame, predicted)
        inside = box.clipped(*self.frame_size)
        return inside is None or inside.area < self.settings.out_of_view * box.area

    def _near(self, track: _Track, predicted: Box, found: Box, k: int = -1) -> bool:
        """Whether a sighting lies within one face size (the track's ``k``-th sighting's) of a
        track's predicted place (beyond the sightings' own spread): how near a face that went
        out of view must come back to be taken for the same one."""
        off = float(np.hypot(found.cx - predicted.cx, found.cy - predicted.cy))
        size = max(track.boxes[k].w, track.boxes[k].h)
        return off <= size + 2.0 * (self.settings.measure * size + 1.0)

    def earliest(self, track_id: int) -> tuple[int, Box] | None:
        """A track's first sighting: its frame and box (frame pixels), or None for an unknown track."""
        track = self._find(track_id)
        if track is None:
            return None
        return track.first, self._to_frame(track.first, track.boxes[0])

    def shot_start(self, frame: int) -> int:
        """The first frame of the shot ``frame`` belongs to."""
        return self._cuts[self._shot_of(frame)]

    def observe_earlier(self, track_id: int, frame: int, detection: Detection) -> None:
        """Add a sighting in a frame before a track's latest where it has none: the pipeline, on
        finding a new face, looks back through the frames it still holds to see when that face
        really came into view, and on finding a face again after a gap (``resumed``), looks back
        through the gap for where it was meanwhile."""
        track = self._find(track_id)
        if track is None or frame >= track.last:
            raise ValueError("an earlier sighting must come before the track's latest")
        at = bisect.bisect_left(track.frames, frame)
        if track.frames[at] == frame:
            raise ValueError("the track has a sighting in that frame already")
        if self._shot_of(frame) != track.shot:
            raise ValueError("an earlier sighting must be in the track's own shot")
        track.add(at, frame, self._to_scene(frame, detection.box), detection)

    def resumed(self, frame: int, after: int) -> list[tuple[int, int, Box]]:
        """Tracks sighted in ``frame`` whose sighting before was more than ``after`` frames
        earlier and more than a face's size (``_near``) from where that sighting's motion puts
        it now: each id, the frame of that earlier sighting and the new one's box (frame pixels).
        A followed face is sighted every few frames; one found again after longer, away from
        its line, was either somewhere else meanwhile or is another face the join took for it,
        and only a look back from where it is now tells which (the benchmark's seed 71 draw: an
        approaching face's first sighting taken by a walker's track gone 14 frames, the face
        bare all 11 frames before it, which a new track's look back would have found). One found
        again on its line needs no look: the mask between is drawn along that line."""
        out = []
        for track in self._tracks:
            frames = track.frames
            if len(frames) < 2 or frames[-1] != frame or frame - frames[-2] <= after:
                continue
            k = len(frames) - 2
            if not self._near(track, self._carried(track, k, frame), track.boxes[-1], k):
                out.append((track.id, frames[k], self._to_frame(frame, track.boxes[-1])))
        return out

    def _carried(self, track: _Track, k: int, frame: int) -> Box:
        """Where a track's ``k``-th sighting's motion (``_velocity``) puts the face in ``frame``
        (scene pixels)."""
        last = track.boxes[k]
        vx, vy = self._velocity(track, k) if k > 0 else (0.0, 0.0)
        dt = frame - track.frames[k]
        return Box.from_center(last.cx + vx * dt, last.cy + vy * dt, last.w, last.h)

    def separate(self, track_id: int, before: int) -> int | None:
        """After a track found again (``resumed``) has been looked back through its gap: when its
        first sighting after frame ``before`` lies beyond the change of speed a face may make
        (``join_speed``) from its sighting in ``before``, what came after is another face, the
        one the join took for it (a missed cut, or a face gone and another come): those
        sightings become a track of their own, whose id is returned (None: one face after all).
        A join is weighed on one sighting after a gap; the look back is the face's path."""
        track = self._find(track_id)
        if track is None or before not in track.frames:
            return None
        k = track.frames.index(before)
        if k + 1 >= len(track.frames):
            return None
        last, found = track.boxes[k], track.boxes[k + 1]
        dt = track.frames[k + 1] - before
        predicted = self._carried(track, k, track.frames[k + 1])
        if self._reachable(track, dt, predicted, found, max(last.w, last.h)):
            return None
        other = _Track(
            self._next_id, track.shot, _Kalman(found.cx, found.cy, max(found.w, found.h), self.settings)
        )
        self._next_id += 1
        for name in ("frames", "boxes", "scores", "leans", "lumas"):
            kept: list = getattr(track, name)
            setattr(other, name, kept[k + 1 :])
            del kept[k + 1 :]
        track.smoothed.clear()
        for part in (track, other):
            part.kalman = _replayed(part, self.settings)
        self._tracks.append(other)
        return other.id

    def _find(self, track_id: int) -> _Track | None:
        for track in self._tracks:
            if track.id == track_id:
                return track
        return None

    def states(self, frame: int, unseen_for: int = 1) -> list[TrackState]:
        """Live tracks of ``frame``'s shot not sighted in the last ``unseen_for`` frames: where
        each should be in ``frame`` (frame pixels), its speed and its uncertainty.

        The pipeline looks again around these places with a small, cheap detection, more often
        for young, fast or uncertain tracks, so a face once found keeps being sighted.
        """
        s = self.settings
        shot = self._shot_of(frame)
        out = []
        for track in self._tracks:
            gap = frame - track.last
            if track.shot != shot or not (unseen_for <= gap <= s.max_gap):
                continue
            if len(track.frames) < s.min_hits:
                continue
            x, P = track.kalman.predicted(gap, track.size)
            last = track.boxes[-1]
            box = self._to_frame(frame, Box.from_center(float(x[0]), float(x[1]), last.w, last.h))
            spread = float(np.sqrt(max(P[0, 0], P[1, 1])))
            out.append(TrackState(track.id, box, float(np.hypot(x[2], x[3])), spread, len(track.frames)))
        return out

    def expected(self, frame: int, unseen_for: int = 1) -> list[tuple[int, Box]]:
        """Where live tracks not sighted in the last ``unseen_for`` frames should be in ``frame``."""
        return [(st.track, st.box) for st in self.states(frame, unseen_for)]

    def boxes_at(self, frame: int) -> list[TrackedBox]:
        """The boxes to mask in ``frame`` (face boxes, frame pixels, no margin)."""
        out: list[TrackedBox] = []
        s = self.settings
        shot = self._shot_of(frame)
        start, end = self._shot_span(shot)
        for track in self._tracks:
            if track.shot != shot or len(track.frames) < s.min_hits:
                continue
            before, after = self._holds(track)
            if frame < max(start, track.first - before):
                continue
            if frame > track.last + after or (end is not None and frame > end):
                continue
            out.append(self._box_at(track, frame))
        return [replace(t, box=self._to_frame(frame, t.box)) for t in out]

    def _holds(self, track: _Track) -> tuple[int, int]:
        """Frames a track is held before its first and after its last sighting: fewer for a face
        seen once in the dark (``keep_unconfirmed``), which a second sighting would confirm."""
        s = self.settings
        luma = track.lumas[0]
        if len(track.frames) == 1 and luma is not None and luma < s.unconfirmed_dark:
            return min(s.keep_before, s.keep_unconfirmed), min(s.keep_after, s.keep_unconfirmed)
        return s.keep_before, s.keep_after

    def forget_before(self, frame: int) -> None:
        """Drop tracks that can no longer touch ``frame`` or any later frame."""
        s = self.settings
        shot = self._shot_of(self._last_frame) if self._last_frame >= 0 else 0
        self._tracks = [
            t
            for t in self._tracks
            if t.last + s.keep_after >= frame or (t.shot == shot and self._last_frame - t.last <= s.max_gap)
        ]
        for old in [f for f in self._camera if f < frame]:
            del self._camera[old]

    def _box_at(self, track: _Track, frame: int) -> TrackedBox:
        frames = track.frames
        k = bisect.bisect_left(frames, frame)
        near = self._nearby(track, frame)
        if k < len(frames) and frames[k] == frame:
            return TrackedBox(track.id, self._smoothed(track, k), "detected", track.scores[k], *near)
        if 0 < k < len(frames):
            a, b = self._smoothed(track, k - 1), self._smoothed(track, k)
            u = (frame - frames[k - 1]) / (frames[k] - frames[k - 1])
            return TrackedBox(track.id, lerp(a, b, u), "interpolated", None, *near)
        # Before the first or after the last sighting: carried along the track's motion, at the
        # face's own size (a hold is short; a mask that grows with it hides what is not a face).
        end = 0 if k == 0 else len(frames) - 1
        base = self._smoothed(track, end)
        vx, vy = self._velocity(track, end)
        dt = frame - frames[end]
        box = Box.from_center(base.cx + vx * dt, base.cy + vy * dt, base.w, base.h)
        return TrackedBox(track.id, box, "extended", None, *near)

    def _nearby(self, track: _Track, frame: int) -> tuple[float | None, float | None, int]:
        """The median confidence and brightness of a track's sightings within ``lean_span``
        frames of ``frame``, and how many there are (what ``redaction.margins`` sizes a mask by)."""
        span = self.settings.lean_span
        lo = bisect.bisect_left(track.frames, frame - span)
        hi = bisect.bisect_right(track.frames, frame + span)
        lumas = [v for v in track.lumas[lo:hi] if v is not None]
        confidence = statistics.median(track.scores[lo:hi]) if hi > lo else None
        return confidence, (statistics.median(lumas) if lumas else None), hi - lo

    def _smoothed(self, track: _Track, k: int) -> Box:
        """The k-th sighting smoothed over sightings within ``smooth`` frames either side: the
        centre from a straight line fitted through them (a plain average would drag a fast face's
        mask towards whichever side had more sightings), on each axis through the sightings whose
        box is not short on that axis where there are any (``face_aspect``: a box much flatter
        than a face has lost part of its height, top or bottom, so its centre is off up or down
        by up to half of what it lost); the size the largest seen there (a face that looks smaller
        for a frame or two, blurred or turning, keeps the larger mask), and no less than its
        nearest sightings either side give it at its frame (``size_reach``: one look of several
        that came out small); then moved by the face's lean (``_lean``)."""
        known = track.smoothed.get(k)
        if known is None:
            known = track.smoothed[k] = self._smooth(track, k)
        return known

    def _smooth(self, track: _Track, k: int) -> Box:
        s = max(0, self.settings.smooth)
        q = self.settings.face_aspect
        f = track.frames[k]
        lo = bisect.bisect_left(track.frames, f - s)
        hi = bisect.bisect_right(track.frames, f + s)
        boxes = track.boxes[lo:hi]
        t = np.array(track.frames[lo:hi], float) - f
        cx = _centre(t, np.array([b.cx for b in boxes]), np.array([b.w >= q * b.h for b in boxes]), k - lo)
        cy = _centre(t, np.array([b.cy for b in boxes]), np.array([b.h >= q * b.w for b in boxes]), k - lo)
        w, h = max(b.w for b in boxes), max(b.h for b in boxes)
        frames, reach = track.frames, self.settings.size_reach
        if 0 < k < len(frames) - 1 and f - frames[k - 1] <= reach and frames[k + 1] - f <= reach:
            # The size its sightings either side say the face has at this frame.
            a, b = track.boxes[k - 1], track.boxes[k + 1]
            u = (f - frames[k - 1]) / (frames[k + 1] - frames[k - 1])
            w, h = max(w, a.w + u * (b.w - a.w)), max(h, a.h + u * (b.h - a.h))
        return Box.from_center(cx + self._lean(track, f) * w, cy, w, h)

    def _lean(self, track: _Track, frame: int) -> float:
        """The median sideways lean of a track's sightings within ``lean_span`` frames of
        ``frame`` (none when no sighting there has one): a face's pose, without one frame's
        landmark jitter. Only sideways: there the detector's box errs with a turned face's pose;
        up and down the landmarks' centre is no nearer the hand-drawn boxes than the box's own
        (faces-dev training photographs: spread 0.048 against 0.045 of a face)."""
        span = self.settings.lean_span
        lo = bisect.bisect_left(track.frames, frame - span)
        hi = bisect.bisect_right(track.frames, frame + span)
        leans = [ln[0] for ln in track.leans[lo:hi] if ln is not None]
        return statistics.median(leans) if leans else 0.0

    def _velocity(self, track: _Track, end: int) -> tuple[float, float]:
        """Pixels a frame at one end of a track (``end`` 0: its first sighting; else up to its
        ``end``-th): from the sightings within ``span`` frames of that end, or nothing when that
        end's sighting stands alone. A speed taken from a sighting long before (a face, then a
        gap, then something else joined to it) carries a hold off across the picture onto nothing."""
        frames = track.frames
        span = 12
        if end == 0:
            a, b = 0, bisect.bisect_right(frames, frames[0] + span) - 1
        else:
            a, b = bisect.bisect_left(frames, frames[end] - span), end
        dt = frames[b] - frames[a]
        if dt <= 0:
            return 0.0, 0.0
        ba, bb = track.boxes[a], track.boxes[b]
        return (bb.cx - ba.cx) / dt, (bb.cy - ba.cy) / dt


def _replayed(track: _Track, s: TrackingSettings) -> _Kalman:
    """A track's motion filter made again from its own sightings (after ``FaceTracker.separate``
    parted them), as ``observe`` would have made it."""
    first = track.boxes[0]
    kalman = _Kalman(first.cx, first.cy, max(first.w, first.h), s)
    for n in range(1, len(track.frames)):
        b, size = track.boxes[n], max(track.boxes[n - 1].w, track.boxes[n - 1].h)
        kalman.update(track.frames[n] - track.frames[n - 1], size, b.cx, b.cy)
    return kalman


def _centre(t: np.ndarray, values: np.ndarray, whole: np.ndarray, own: int) -> float:
    """A sighting's centre on one axis (``values[own]``, at ``t`` 0) from the sightings about it:
    a straight line through those whose box is ``whole`` on that axis, when some are and some are
    not (one alone: its centre); else, as ever, through all of them when there are three or more,
    the sighting's own centre when fewer."""
    if whole.any() and not whole.all():
        if whole.sum() == 1:
            return float(values[whole][0])
        return float(np.polyfit(t[whole], values[whole], 1)[1])
    if len(values) < 3:
        return float(values[own])
    return float(np.polyfit(t, values, 1)[1])
