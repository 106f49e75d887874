"""Redacting a clip: decode, find and follow faces, hide them and any manual regions, encode.

Frames stream through: ffmpeg decodes into a short queue; the detector looks at whole frames
now and then (at two scales) and, in between, takes small looks around the faces it already
knows; the tracker joins sightings into tracks; and each frame is rendered once the sightings
``horizon`` frames beyond it are known, so a face is masked from before it was first seen (a
new face is also followed back through the held frames). Only ``horizon`` frames are held at a
time, whatever the clip's length. The output is a new H.264/AAC MP4 with the same frame rate and
frame count, and the result says, frame by frame, what was hidden and by which detector and
settings.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from redaction.audio import AudioEdit, audio_filter
from redaction.cuts import CutDetector
from redaction.detector import CenterFaceDetector, Detection, FaceBox, FaceDetector, Runtime, nms
from redaction.frames import Frame
from redaction.geometry import Box
from redaction.margins import MarginRule
from redaction.media import EncodeOptions, FrameReader, FrameWriter, MediaError, VideoInfo, probe, rate_text
from redaction.motion import CameraMotion, thumbnail
from redaction.regions import Exclusion, ManualRegion, ManualRegionFollower
from redaction.render import Mask, MaskStyle, Shape, Style, apply_masks
from redaction.tracking import FaceTracker, TrackedBox, TrackingSettings, TrackState
from storage.settings import WorkerSettings

Progress = Callable[[int, int | None], None]
Cover = Literal["face", "head"]


@dataclass(frozen=True)
class RedactionSettings:
    """Everything that decides what a redaction run hides and how.

    Whole-frame detection looks at frames scaled to ``detect_width`` pixels across (finds faces
    down to about 24 px at 640 on a 1280 frame) at least every ``stride`` frames, every
    ``still_stride`` frames while the camera holds still and no track is young, and at once on
    the first frame of every shot. Every ``fine_stride``-th frame of a shot it looks at ``fine_width`` (None: the frame's own width) to find faces down to about 16 px;
    ``fine_stride`` 0 turns that pass off, and it is skipped anyway when it would see no more
    detail than the first. Between whole-frame passes each known face gets a small look in a
    window around where its track says it is (wider the less sure the track is): every frame
    while the track is young or uncertain, every other frame while it moves fast, else every
    ``refresh_stride`` frames (0: no looks at all),
    scaled so the face is about ``refresh_face_px`` across (``refresh_below``: only faces
    smaller than this many pixels; None: all); the looks of one frame see at most
    ``look_budget`` of what a whole-frame pass sees, the neediest first. A new face is followed
    back through the frames still held, and so is a known face sighted again more than
    ``look_back_gap`` frames after its sighting before (back to that one): the looks between
    missed it, so where it was meanwhile is found from where it is now, not drawn on a straight
    line from where it was (``FaceTracker.resumed``). ``detector_runtime`` says
    how the face detector runs (``redaction.detector.Runtime``) when none is given, and
    ``face_box`` how it turns its output into face boxes (``redaction.detector.face_boxes``:
    "track", the default, moves each face's boxes sideways by its landmarks' median lean, as a
    turned face's features pull the detector's box off the face). Frames (or windows) darker than ``dark_below`` or
    brighter than ``bright_above`` (mean luma) get their contrast normalised (CLAHE) before the
    detector sees them.

    The mask (``shape``: an ellipse by default, see ``redaction.render``) is the face box grown
    about its centre by ``mask_scale``: 1.5 is a stated margin of a quarter of the face on every
    side (an ellipse of 1.41 passes through the face box's corners; the rest is room for the
    detector's error, about a tenth of a face, measured on the benchmark's tune split), more for
    small faces in the dark and less for large, confident, steady ones (``margins``, see
    ``redaction.margins``). Faces are about as wide as they are tall (the benchmark's annotated
    boxes: 1.00, 5-95 % 1.00-1.02); where the detector's box is narrower than ``face_aspect`` of
    its height (or flatter), its short side is what came out short (tune clip: boxes under 0.85
    as wide as tall were 0.80 of the face's width and 0.99 of its height), so the short side is
    grown to that share of the long one before the margin; ``cover``
    "head" masks the whole head around each face instead (hair, ears, a profile turning away).
    ``stabilise`` measures the camera's own motion so faces are followed through shake between
    sightings; ``cuts`` finds hard cuts so no track or hold crosses one. ``auto`` false finds no
    faces at all (manual regions only). Strides and tracking spans count frames.
    """

    detect_width: int = 640
    stride: int = 5
    still_stride: int = 8
    fine_width: int | None = None
    fine_stride: int = 24
    refresh_stride: int = 4
    refresh_below: int | None = None
    refresh_face_px: int = 48
    refresh_context: float = 2.5
    max_looks: int = 24
    look_budget: float = 0.5
    look_back_gap: int = 8
    threshold: float = 0.2
    detector_runtime: Runtime = "opencv"
    face_box: FaceBox = "track"
    dark_below: int = 70
    bright_above: int = 185
    mask_scale: float = 1.5
    face_aspect: float = 0.9
    margins: MarginRule = field(default_factory=MarginRule)
    cover: Cover = "face"
    shape: Shape = "ellipse"
    style: Style = "blur"
    blur_cells: int = 4
    pixel_cells: int = 8
    colour: tuple[int, int, int] = (0, 0, 0)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    stabilise: bool = True
    cuts: bool = True
    auto: bool = True
    motion_width: int = 320
    crf: int = 20
    preset: str = "veryfast"
    audio_bitrate: str = "128k"
    keyframe_seconds: float = 1.0
    threads: int = 0
    queue_frames: int = 8

    def __post_init__(self) -> None:
        if self.stride < 1 or self.still_stride < 1 or self.fine_stride < 0:
            raise ValueError("strides must be >= 1 and fine_stride >= 0")
        if self.detect_width < 32 or (self.fine_width is not None and self.fine_width < 32):
            raise ValueError("detection widths must be at least 32 pixels")
        if not 0 < self.threshold < 1:
            raise ValueError("threshold must be between 0 and 1")
        if self.mask_scale < 1:
            raise ValueError("mask_scale below 1 would leave the edges of faces showing")
        if not 0 <= self.face_aspect <= 1:
            raise ValueError(
                "face_aspect is the least share of a face box's longer side its shorter one may be, 0 to 1"
            )
        if self.cover not in ("face", "head"):
            raise ValueError("cover is 'face' or 'head'")
        if self.keyframe_seconds <= 0:
            raise ValueError("keyframe_seconds must be above 0")

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **overrides: Any) -> RedactionSettings:
        """Take the detection knobs from the service settings (``EVIDENCE_REDACTION_*``)."""
        base = cls(
            detect_width=settings.redaction_detect_width,
            threshold=settings.redaction_threshold,
            stride=settings.redaction_stride,
            detector_runtime=settings.redaction_detector,
        )
        return replace(base, **overrides)

    def mask_style(self) -> MaskStyle:
        return MaskStyle(self.style, self.blur_cells, self.pixel_cells, self.colour)

    def mask_box(self, face: Box, factor: float = 1.0) -> Box:
        """The region hidden for a face box: the face and its margin (``factor`` times the stated
        one, from ``margins``), or the whole head. A box narrower or flatter than
        ``face_aspect`` is first grown to it on its short side (``Box.squarer``)."""
        face = face.squarer(self.face_aspect)
        if self.cover == "head":
            # A head is about 1.5 face-boxes wide and 1.8 tall, its centre a little above the
            # face's (hair, ears and the back of the head when the face turns away).
            face = Box.from_center(face.cx, face.cy - 0.18 * face.h, face.w * 1.5, face.h * 1.8)
        return face.scaled(self.mask_scale * factor)

    def tracked_mask(self, tracked: TrackedBox) -> Box:
        """The region hidden for a tracked face: its box with the margin ``margins`` gives it
        there (the stated one while it is held before or after its sightings), widened where
        ``margins`` says its boxes stray sideways."""
        size = max(tracked.box.w, tracked.box.h)
        held = tracked.kind == "extended"
        factor = self.margins.factor(size, tracked.confidence, tracked.luma, tracked.sightings, held)
        mask = self.mask_box(tracked.box, factor)
        wider = self.margins.sideways(size, tracked.luma)
        return Box.from_center(mask.cx, mask.cy, mask.w * wider, mask.h)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["colour"] = list(self.colour)
        return out


@dataclass(frozen=True)
class DetectionPlan:
    """The scales whole-frame detection looks at, and how often (reported with every result).

    When a frame is looked at depends on the footage (cuts, camera motion, young tracks), so the
    plan only says the bounds: see ``_FaceFinder``.
    """

    coarse_width: int
    stride: int
    still_stride: int
    fine_width: int | None
    fine_stride: int

    @classmethod
    def for_clip(cls, settings: RedactionSettings, frame_width: int) -> DetectionPlan:
        coarse = min(settings.detect_width, frame_width)
        fine = min(settings.fine_width or frame_width, frame_width)
        still = max(settings.stride, settings.still_stride)
        # A fine pass only earns its cost when it sees clearly more detail than the coarse one.
        if settings.fine_stride == 0 or fine < coarse * 1.25:
            return cls(coarse, settings.stride, still, None, 0)
        return cls(coarse, settings.stride, still, fine, settings.fine_stride)

    def widths(self, since_shot: int, since_coarse: int, still: bool) -> list[int]:
        """The scaled widths to look at a frame at (empty: not looked at as a whole), given the
        frames since its shot began and since the last whole-frame pass, and whether the scene
        is still. A shot's first frame is looked at at once; the first fine pass comes half a
        ``fine_stride`` into the shot (the faces it finds are followed back to the shot's start),
        and a fine pass needs no coarse one beside it (it finds large faces too)."""
        fine = [self.fine_width] if self.fine_width else []
        if since_shot == 0:
            return [self.coarse_width]
        if self.fine_width and since_shot % self.fine_stride == self.fine_stride // 2:
            return fine
        if since_coarse >= (self.still_stride if still else self.stride):
            return [self.coarse_width]
        return []

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RedactionResult:
    """What a run produced: the clip's shape, what was hidden in each frame, and how it was decided.

    ``record[i]`` lists what was hidden in frame ``i``: automatic face masks (``source`` "auto",
    with the track id and whether the face was ``detected`` in that frame, ``interpolated``
    between sightings or ``extended`` before or after them), manual regions (``source``
    "manual") and excluded tracks (``excluded`` true, not hidden). Boxes are the hidden area in
    frame pixels, [x, y, w, h], margins included. ``shots`` holds the first frame of each shot
    (hard cuts found; no mask is carried across one).
    """

    frames: int
    width: int
    height: int
    fps: str
    duration: float
    elapsed: float
    record: list[list[dict[str, Any]]]
    tracks: int
    shots: list[int]
    detection_frames: int
    refresh_looks: int
    detector: dict[str, Any]
    settings: dict[str, Any]
    plan: dict[str, Any]
    audio: str
    manual_regions: list[dict[str, Any]]
    exclusions: list[dict[str, Any]]
    audio_edits: list[dict[str, Any]]

    @property
    def speed_fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Everything except the per-frame record."""
        out = {k: v for k, v in asdict(self).items() if k != "record"}
        out["speed_fps"] = round(self.speed_fps, 2)
        out["masked_frames"] = sum(1 for r in self.record if any(not m.get("excluded") for m in r))
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "record": self.record}


def redact_clip(
    src_path: str | Path,
    dst_path: str | Path,
    settings: RedactionSettings | None = None,
    manual_regions: Sequence[ManualRegion] = (),
    exclusions: Sequence[Exclusion] = (),
    audio_edits: Sequence[AudioEdit] = (),
    progress: Progress | None = None,
    detector: FaceDetector | None = None,
    ffmpeg: str | None = None,
) -> RedactionResult:
    """Write a redacted copy of ``src_path`` to ``dst_path`` (an MP4) and say what was hidden.

    The source is only read. ``progress(frames_done, frames_expected)`` is called now and then
    (``frames_expected`` is None when the clip does not say its duration).
    """
    settings = settings or RedactionSettings()
    started = time.perf_counter()
    if settings.threads > 0:
        cv2.setNumThreads(settings.threads)
    info = probe(src_path, ffmpeg)
    filt = audio_filter(list(audio_edits))
    if filt and not info.has_audio:
        raise MediaError("audio edits were asked for but the clip has no sound")
    detector = detector or CenterFaceDetector(
        threshold=settings.threshold, runtime=settings.detector_runtime, face_box=settings.face_box
    )
    finder = _FaceFinder(info, settings, detector)
    follower = ManualRegionFollower(list(manual_regions), info.fps)
    renderer = _FrameRenderer(info, settings, finder.tracker, follower, list(exclusions))
    expected = info.expected_frames
    last_report = 0.0
    done = 0
    options = EncodeOptions(settings.crf, settings.preset, settings.audio_bitrate, settings.keyframe_seconds)
    seen = _FrameSeen(settings)
    with (
        FrameReader(src_path, info, ffmpeg, settings.queue_frames, seen.see) as reader,
        FrameWriter(dst_path, info, src_path, options, filt, ffmpeg, settings.queue_frames) as writer,
    ):
        index = -1
        for index, (frame, pixels) in enumerate(reader.prepared()):
            follower.update(index, frame)
            for ready in finder.take(index, frame, pixels):
                writer.write(*renderer.render(*ready))
                done += 1
            if progress and time.perf_counter() - last_report >= 0.5:
                last_report = time.perf_counter()
                progress(done, expected)
        if index < 0:
            raise MediaError("the clip has no video frames")
        for ready in finder.drain():
            writer.write(*renderer.render(*ready))
            done += 1
        writer.finish()
    if progress:
        progress(done, done)
    frame_width, frame_height = info.frame_size
    return RedactionResult(
        frames=done,
        width=frame_width,
        height=frame_height,
        fps=rate_text(info.fps),
        duration=float(done / info.fps),
        elapsed=time.perf_counter() - started,
        record=renderer.record,
        tracks=finder.tracker.track_count,
        shots=finder.tracker.cuts,
        detection_frames=finder.detection_frames,
        refresh_looks=finder.looks,
        detector=finder.detector.info(),
        settings=settings.to_json(),
        plan=finder.plan.to_json(),
        audio="none" if not info.has_audio else ("filtered" if filt else "copied"),
        manual_regions=[r.to_json() for r in manual_regions],
        exclusions=[e.to_json() for e in exclusions],
        audio_edits=[e.to_json() for e in audio_edits],
    )


@dataclass(frozen=True)
class _Seen:
    """What is learnt from a frame's pixels alone, made on the decoding side ahead of its turn:
    whether it starts a shot, and the camera-motion thumbnail (None where not asked for)."""

    cut: bool
    small: np.ndarray | None


class _FrameSeen:
    """Cut detection and the motion thumbnail, done on the frame reader's thread (in frame
    order): they need nothing but the pixels, so they run beside detection rather than before it."""

    def __init__(self, settings: RedactionSettings) -> None:
        self.cuts = CutDetector() if settings.cuts else None
        self.motion_width = settings.motion_width if settings.stabilise else None

    def see(self, frame: Frame) -> _Seen:
        cut = self.cuts.update(frame.y) if self.cuts is not None else False
        small = thumbnail(frame.y, self.motion_width) if self.motion_width else None
        return _Seen(cut, small)


class _FaceFinder:
    """Runs detection and tracking over frames as they arrive and hands frames back, in order,
    once nothing later can change what is hidden in them.

    Three kinds of look: whole-frame passes (at once on a shot's first frame, then as the plan
    and the scene say); small looks around known faces, as often as each track needs; and, when
    a new face turns up, looks back through the frames still held (never past its shot's first
    frame) to find when it really came into view.
    """

    def __init__(self, info: VideoInfo, settings: RedactionSettings, detector: FaceDetector) -> None:
        self.settings = settings
        self.detector = detector
        self.plan = DetectionPlan.for_clip(settings, info.frame_size[0])
        self.tracker = FaceTracker(settings.tracking, info.frame_size)
        self.motion = CameraMotion(settings.motion_width) if settings.stabilise else None
        self.seen = _FrameSeen(settings)
        self.pending: deque[tuple[int, Frame]] = deque()
        self.detection_frames = 0
        self.looks = 0
        self.shot_start = 0
        self.last_coarse = -(10**9)
        self.camera_step = 0.0

    def take(self, index: int, frame: Frame, seen: _Seen | None = None) -> list[tuple[int, Frame]]:
        """Look at a newly decoded frame (``seen``: what its pixels alone say, when that was
        made already; else it is made here); return the held frames now ready to render."""
        s = self.settings
        seen = seen or self.seen.see(frame)
        cut = seen.cut
        if index == 0 or cut:
            if index > 0:
                self.tracker.cut(index)
            self.shot_start = index
            if self.motion is not None:
                self.motion = CameraMotion(s.motion_width)
        if self.motion is not None:
            moving = [box for _, box in self.tracker.expected(index - 1, unseen_for=0)]
            before = self.motion.offset
            after = self.motion.update(frame.y, moving, seen.small)
            self.tracker.move_camera(index, after)
            step = float(np.hypot(after[0] - before[0], after[1] - before[1]))
            self.camera_step = 0.7 * self.camera_step + 0.3 * step
        self.pending.append((index, frame))
        if s.auto:
            self._look(index, frame)
        ready = []
        while self.pending and self.pending[0][0] <= index - self.tracker.horizon:
            ready.append(self.pending.popleft())
        return ready

    def _look(self, index: int, frame: Frame) -> None:
        s = self.settings
        states = self.tracker.states(index, unseen_for=1)
        still = self.camera_step < 2.0 and all(st.sightings >= 3 for st in states)
        widths = self.plan.widths(index - self.shot_start, index - self.last_coarse, still)
        started: list[int] = []
        if widths:
            found: list[Detection] = []
            for width in widths:
                found.extend(_detect_in(self.detector, frame, None, width, s))
            started = self.tracker.observe(index, nms(found, 0.3))
            self.detection_frames += 1
            self.last_coarse = index
        else:
            due = [st for st in states if self._due(st, index)]
            due.sort(key=lambda st: (st.sightings, -st.spread / max(1.0, st.box.w)))
            # Looks cost what the detector sees; past a share of a whole-frame pass the rest
            # wait for the next frame (most needy first).
            budget = s.look_budget * _pixels((0, 0, frame.width, frame.height, self.plan.coarse_width))
            windows: list[tuple[int, int, int, int, int]] = []
            for st in due[: s.max_looks]:
                w = _look_window(frame, st.box, s, st.spread)
                if w is None:
                    continue
                if windows and _pixels(w) > budget:
                    break
                budget -= _pixels(w)
                windows.append(w)
            if windows:
                found = []
                for w in windows:
                    found.extend(_detect_in(self.detector, frame, w[:4], w[4], s))
                self.looks += len(windows)
                started = self.tracker.observe(index, nms(found, 0.3))
        for track_id in started:
            first = self.tracker.earliest(track_id)
            if first is not None:
                self._look_back(track_id, *first)
        for track_id, before, box in self.tracker.resumed(index, s.look_back_gap):
            if not self._look_back(track_id, index, box, after=before):
                continue
            other = self.tracker.separate(track_id, before)
            first = self.tracker.earliest(other) if other is not None else None
            if other is not None and first is not None:
                self._look_back(other, *first)

    def _due(self, st: TrackState, index: int) -> bool:
        """Whether a track needs a look this frame: every frame while it is young or uncertain,
        every other frame while it moves fast, else every ``refresh_stride`` frames (0: no looks
        at all)."""
        s = self.settings
        size = max(st.box.w, st.box.h)
        if not s.refresh_stride or (s.refresh_below is not None and size >= s.refresh_below):
            return False
        if st.sightings < 3 or st.spread > 0.35 * size:
            return True
        if st.speed > 0.3 * size:
            return index % 2 == 0
        return index % s.refresh_stride == 0

    def drain(self) -> list[tuple[int, Frame]]:
        ready = list(self.pending)
        self.pending.clear()
        return ready

    def _look_back(self, track_id: int, frame_no: int, box: Box, after: int | None = None) -> int:
        """Follow a face backwards from its sighting in ``frame_no`` through held frames (of its
        own shot, and after its track's sighting in ``after``, when given) while it can be found;
        return how many earlier sightings were found."""
        s = self.settings
        if not self.pending:
            return 0
        oldest = self.pending[0][0]
        limit = max(oldest, self.tracker.shot_start(frame_no), frame_no - s.tracking.max_gap)
        if after is not None:
            limit = max(limit, after + 1)
        f = frame_no - 1
        misses = added = 0
        while f >= limit:
            frame = self.pending[f - oldest][1]
            found = _look_around(self.detector, frame, box, s, 0.25 * max(box.w, box.h))
            self.looks += 1
            best = max(found, key=lambda d: _closeness(d.box, box), default=None)
            if best is None or _closeness(best.box, box) <= 0:
                misses += 1
                if misses > 1:
                    break
            else:
                misses = 0
                self.tracker.observe_earlier(track_id, f, best)
                added += 1
                box = best.box
            f -= 1
        return added


def _closeness(found: Box, expected: Box) -> float:
    """How well a box found on a look matches the one looked for: > 0 when near and alike in size."""
    size = max(expected.w, expected.h)
    ratio = max(found.w, found.h) / max(1e-6, size)
    if not 0.6 <= ratio <= 1.7:
        return 0.0
    shift = float(np.hypot(found.cx - expected.cx, found.cy - expected.cy)) / size
    return max(0.0, 1.0 - shift)


def _detect_in(
    detector: FaceDetector,
    frame: Frame,
    region: tuple[int, int, int, int] | None,
    width: int | None,
    settings: RedactionSettings,
) -> list[Detection]:
    """Detect faces in a region of the frame (default: all of it) scaled to ``width``; frame coordinates out."""
    image, x0, y0, sx, sy = frame.bgr(region, width, (settings.dark_below, settings.bright_above))
    found = [
        d.moved(Box(d.box.x / sx + x0, d.box.y / sy + y0, d.box.w / sx, d.box.h / sy))
        for d in detector.detect(image)
    ]
    return [d.lit(_luma_under(frame, d.box)) for d in found]


def _luma_under(frame: Frame, box: Box) -> float:
    """The mean brightness of the frame under a box (its source pixels, before normalisation)."""
    x0, y0 = max(0, int(box.x)), max(0, int(box.y))
    x1, y1 = min(frame.width, int(np.ceil(box.x + box.w))), min(frame.height, int(np.ceil(box.y + box.h)))
    if x1 <= x0 or y1 <= y0:
        return 255.0
    return float(cv2.mean(frame.y[y0:y1, x0:x1])[0])


def _look_window(
    frame: Frame, box: Box, settings: RedactionSettings, spread: float = 0.0
) -> tuple[int, int, int, int, int] | None:
    """The window (x0, y0, x1, y1) to look in around where a known face should be, wider the
    less sure we are, and the width to scale it to: small faces are looked at enlarged (up to
    twice), large ones reduced, so the face is about ``refresh_face_px`` across."""
    size = max(box.w, box.h)
    side = min(size * 6, max(32.0, size * settings.refresh_context, size * 1.5 + 6 * spread))
    window = Box.from_center(box.cx, box.cy, side, side).clipped(frame.width, frame.height)
    if window is None or window.w < 8 or window.h < 8:
        return None
    x0, y0 = int(window.x), int(window.y)
    x1, y1 = int(np.ceil(window.x + window.w)), int(np.ceil(window.y + window.h))
    scale = min(2.0, settings.refresh_face_px / max(1.0, size))
    return x0, y0, x1, y1, max(32, round((x1 - x0) * scale))


def _pixels(window: tuple[int, int, int, int, int]) -> int:
    """What the detector's work on a window scaled to a width costs: the pixels it sees."""
    x0, y0, x1, y1, width = window
    height = (y1 - y0) * width / max(1, x1 - x0)
    return int(np.ceil(width / 32) * 32 * np.ceil(height / 32) * 32)


def _look_around(
    detector: FaceDetector, frame: Frame, box: Box, settings: RedactionSettings, spread: float = 0.0
) -> list[Detection]:
    """Detect in a small window around where a known face should be."""
    window = _look_window(frame, box, settings, spread)
    if window is None:
        return []
    return _detect_in(detector, frame, window[:4], window[4], settings)


class _FrameRenderer:
    """Hides what must be hidden in one frame and notes it in the record."""

    def __init__(
        self,
        info: VideoInfo,
        settings: RedactionSettings,
        tracker: FaceTracker,
        follower: ManualRegionFollower,
        exclusions: list[Exclusion],
    ) -> None:
        self.info = info
        self.settings = settings
        self.style = settings.mask_style()
        self.tracker = tracker
        self.follower = follower
        self.exclusions = exclusions
        self.record: list[list[dict[str, Any]]] = []

    def render(self, index: int, frame: Frame) -> tuple[Frame, Callable[[Frame], None]]:
        """Decide what is hidden in a frame and note it; return the frame and what draws the
        masks on it (the writer does that on its own thread, just before encoding)."""
        s = self.settings
        masks: list[Mask] = []
        notes: list[dict[str, Any]] = []
        for tracked in self.tracker.boxes_at(index):
            box = s.tracked_mask(tracked)
            if box.clipped(*self.info.frame_size) is None:
                continue
            note: dict[str, Any] = {
                "source": "auto",
                "track": tracked.track,
                "box": box.rounded(),
                "shape": s.shape,
                "kind": tracked.kind,
            }
            if tracked.score is not None:
                note["score"] = round(tracked.score, 3)
            if any(e.covers(tracked.track, index, self.info.fps) for e in self.exclusions):
                note["excluded"] = True
            else:
                masks.append(Mask(box, s.shape))
            notes.append(note)
        for n, region, box in self.follower.boxes_at(index):
            masks.append(Mask(box, region.shape))
            notes.append({"source": "manual", "region": n, "box": box.rounded(), "shape": region.shape})
        self.record.append(notes)
        self.tracker.forget_before(index)
        self.follower.forget_before(index)
        return frame, functools.partial(apply_masks, masks=masks, style=self.style)
