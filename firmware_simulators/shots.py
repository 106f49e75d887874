"""Body-worn camera footage cut from real photographs, with every face box known in every frame.

Where ``scene.py`` draws one long corridor, this makes what a redactor finds hard: a clip of
short shots joined by hard cuts, each shot one of

- ``crowd``: the camera walks past a wall of group photographs (pan, drifting zoom, walking bob
  and sway, motion blur when it swings fast): many faces of 25-60 px at once;
- ``night``: the same, with the exposure down to a mean brightness of about 10-25 of 255, and
  sensor noise;
- ``glare``: the same, overexposed until the light parts clip (faces bright, most still with
  their features: a face burnt out to white shows no one and is no test);
- ``walkers``: people walking past a plain wall at a distance: faces of 24-40 px crossing at
  8-20 px a frame with a walking bob, while the camera stands (or sways a little);
- ``approach``: one face coming towards the camera across a wall, from 24 to 200 px.

The photographs are the research set in ``shared/datasets/faces-dev`` (with hand-drawn face boxes),
the LFW faces and the astronaut portrait inside scikit-image; without the set beside the repository,
group photographs are composed from the LFW faces instead. A clip is drawn from a seed and a
``split``: ``"tune"`` uses the set's training photographs and even-numbered LFW faces, ``"held_out"``
its testing photographs and the odd-numbered LFW faces, so a redactor can be tuned on one and
judged on the other. Frames are rendered one at a time into ffmpeg; nothing of the service is
imported (the simulators are honest clients).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from firmware_simulators.scene import FaceSource, face_sources, ffmpeg_exe, soft_alpha

SHOT_KINDS = ("crowd", "night", "glare", "walkers", "approach")


@dataclass(frozen=True)
class ShotFace:
    """One face in one frame: its whole box (may reach outside the frame) and the share in view."""

    track: int
    box: tuple[float, float, float, float]
    visible: float

    @property
    def size(self) -> float:
        return min(self.box[2], self.box[3])


@dataclass
class ShotClip:
    """What a rendered clip holds: its format, its shots (first frame, kind) and every face box."""

    width: int
    height: int
    fps: int
    frames: int
    shots: list[tuple[int, str]] = field(default_factory=list)
    faces: dict[int, list[ShotFace]] = field(default_factory=dict)

    def shot_of(self, frame: int) -> int:
        n = 0
        for i, (start, _) in enumerate(self.shots):
            if start <= frame:
                n = i
        return n

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": self.frames,
            "shots": [list(s) for s in self.shots],
            "faces": {
                str(f): [[x.track, *[round(v, 2) for v in x.box], x.visible] for x in fs]
                for f, fs in sorted(self.faces.items())
            },
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> ShotClip:
        data = json.loads(Path(path).read_text())
        faces = {
            int(f): [ShotFace(int(v[0]), (v[1], v[2], v[3], v[4]), v[5]) for v in fs]
            for f, fs in data["faces"].items()
        }
        shots = [(int(a), str(b)) for a, b in data["shots"]]
        return cls(data["width"], data["height"], data["fps"], data["frames"], shots, faces)


@dataclass(frozen=True)
class _Photo:
    image: np.ndarray
    boxes: tuple[tuple[float, float, float, float], ...]


def faces_dev_dir() -> Path:
    """``shared/datasets/faces-dev`` beside the repository."""
    return Path(__file__).resolve().parents[2] / "shared" / "datasets" / "faces-dev"


@lru_cache(maxsize=4)
def _photos(split: str, root: str) -> tuple[_Photo, ...]:
    """The set's photographs of ``split``; group photographs composed from LFW where it is absent.

    The set lies beside the repository (as it does in CI); a clone on its own still renders every
    shot kind, from scikit-image's faces only, so its tests run, if less hard.
    """
    if not (Path(root) / "annotations.json").exists():
        return _composed_photos(split)
    want = "training" if split == "tune" else "testing"
    notes = json.loads((Path(root) / "annotations.json").read_text())
    out = []
    for name, note in sorted(notes.items()):
        if note["split"] != want:
            continue
        image = cv2.imread(str(Path(root) / name))
        if image is None:
            raise FileNotFoundError(Path(root) / name)
        boxes = tuple((float(x), float(y), float(w), float(h)) for x, y, w, h in note["boxes_xywh"])
        out.append(_Photo(image, boxes))
    return tuple(out)


@lru_cache(maxsize=2)
def _composed_photos(split: str) -> tuple[_Photo, ...]:
    """Six group photographs of LFW faces (the split's parity) on a painted backdrop, boxes exact."""
    parity = 0 if split == "tune" else 1
    faces = [src for n, src in enumerate(face_sources()[:-1]) if n % 2 == parity]
    rng = np.random.default_rng(7 + parity)
    out = []
    for _ in range(6):
        h, w = 900, 1400
        tone = rng.uniform(60, 170, 3)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        image = tone[None, None, :] * (0.8 + 0.3 * (yy / h)[:, :, None]) + rng.normal(0, 6, (h, w, 1))
        boxes = []
        rows = int(rng.integers(2, 4))
        for r in range(rows):
            size = int(rng.uniform(110, 200))
            y = int(60 + r * (h - 120) / rows + rng.uniform(0, 30))
            x = int(rng.uniform(20, 80))
            while x + size < w - 20 and y + size < h:
                src = faces[int(rng.integers(len(faces)))]
                face = cv2.resize(src.bgr, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
                alpha = cv2.resize(src.alpha, (size, size))[:, :, None]
                region = image[y : y + size, x : x + size]
                image[y : y + size, x : x + size] = region * (1 - alpha) + face * alpha
                fx0, fy0, fx1, fy1 = src.box
                boxes.append((x + fx0 * size, y + fy0 * size, (fx1 - fx0) * size, (fy1 - fy0) * size))
                x += size + int(rng.uniform(10, 60))
        out.append(_Photo(np.clip(image, 0, 255).astype(np.uint8), tuple(boxes)))
    return tuple(out)


@lru_cache(maxsize=4)
def _sprites(split: str, root: str) -> tuple[FaceSource, ...]:
    parity = 0 if split == "tune" else 1
    lfw_and_astronaut = face_sources()
    out = [src for n, src in enumerate(lfw_and_astronaut[:-1]) if n % 2 == parity]
    # Faces cut from the photographs of the same split, in colour and at their own resolution.
    for photo in _photos(split, root):
        h, w = photo.image.shape[:2]
        for x, y, bw, bh in photo.boxes:
            m = 0.35
            x0, y0 = int(max(0, x - m * bw)), int(max(0, y - m * bh))
            x1, y1 = int(min(w, x + bw * (1 + m))), int(min(h, y + bh * (1 + m)))
            crop = photo.image[y0:y1, x0:x1]
            cw, ch = x1 - x0, y1 - y0
            box = ((x - x0) / cw, (y - y0) / ch, (x + bw - x0) / cw, (y + bh - y0) / ch)
            out.append(FaceSource(crop.copy(), soft_alpha(cw, ch, 0.15, ellipse=True), box))
    if split == "tune":
        out.append(lfw_and_astronaut[-1])
    return tuple(out)


@lru_cache(maxsize=2)
def _wall(width: int, height: int, seed: int) -> np.ndarray:
    """A plain painted wall with a little grain (from scikit-image's brick photograph)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    brick = cv2.resize(data.brick(), (width * 2, height * 2), interpolation=cv2.INTER_LINEAR)
    grain = cv2.GaussianBlur(brick.astype(np.float32), (0, 0), 3) - 128
    tone = rng.uniform(120, 200, 3)
    wall = tone[None, None, :] + 0.12 * grain[:, :, None]
    wall[int(height * 1.55) :] *= 0.7  # a skirting board and floor
    return np.clip(wall, 0, 255).astype(np.uint8)


@dataclass
class _Shot:
    kind: str
    frames: int
    seed: int


def plan_shots(seed: int, seconds: float, fps: int = 30) -> list[_Shot]:
    """Shots of 2-4 s until the clip is ``seconds`` long, every kind in turn from a random start."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * fps))
    shots: list[_Shot] = []
    start = int(rng.integers(len(SHOT_KINDS)))
    used = 0
    while used < total:
        n = min(total - used, int(rng.uniform(2.0, 4.0) * fps))
        if total - used - n < fps:  # no stub of a shot at the end
            n = total - used
        shots.append(_Shot(SHOT_KINDS[(start + len(shots)) % len(SHOT_KINDS)], n, int(rng.integers(1 << 30))))
        used += n
    return shots


def render_shots(
    path: str | Path,
    seconds: float,
    split: str = "tune",
    seed: int = 1,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    *,
    kinds: tuple[str, ...] | None = None,
    dataset: str | Path | None = None,
    crf: int = 18,
    ffmpeg: str | None = None,
) -> ShotClip:
    """Render an H.264 MP4 of shots joined by hard cuts; return its ground truth.

    ``kinds`` restricts (and orders) the shot kinds used, one shot each, ``seconds`` long in all.
    """
    if split not in ("tune", "held_out"):
        raise ValueError("split is 'tune' or 'held_out'")
    root = str(Path(dataset) if dataset else faces_dev_dir())
    if kinds:
        rng = np.random.default_rng(seed)
        each = int(round(seconds * fps / len(kinds)))
        plan = [_Shot(k, each, int(rng.integers(1 << 30))) for k in kinds]
    else:
        plan = plan_shots(seed, seconds, fps)
    clip = ShotClip(width, height, fps, sum(s.frames for s in plan))
    cmd = [ffmpeg or ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p"]
    cmd += ["-g", "60", "-movflags", "+faststart", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    index = 0
    track_base = 0
    try:
        for shot in plan:
            clip.shots.append((index, shot.kind))
            painter = _SHOT_PAINTERS[shot.kind]
            tracks = 0
            for image, faces in painter(shot, split, root, width, height, fps):
                kept = [ShotFace(track_base + f.track, f.box, f.visible) for f in faces if f.visible > 0.02]
                if kept:
                    clip.faces[index] = kept
                tracks = max([tracks, *[f.track + 1 for f in faces]])
                proc.stdin.write(np.ascontiguousarray(image).data)
                index += 1
            track_base += tracks
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed rendering {path}: {err.strip()[-2000:]}")
    return clip


# -- the camera ------------------------------------------------------------------------------


def _walking_camera(rng: np.random.Generator, n: int, fps: int, still: bool = False) -> np.ndarray:
    """Per-frame camera offset (x, y) in pixels from a walking wearer: bob, sway and jitter."""
    t = np.arange(n) / fps
    step_hz = rng.uniform(1.6, 2.1)
    bob = rng.uniform(3, 9) * (0.3 if still else 1.0)
    sway = rng.uniform(2, 7) * (0.3 if still else 1.0)
    jitter: np.ndarray = rng.normal(0, 1.2 if not still else 0.4, (n, 2))
    jitter = cv2.GaussianBlur(jitter.astype(np.float32), (1, 0), 1.5).reshape(n, 2)
    x = sway * np.sin(np.pi * step_hz * t + rng.uniform(0, 6)) + jitter[:, 0]
    y = bob * np.abs(np.sin(np.pi * step_hz * t + rng.uniform(0, 6))) + jitter[:, 1]
    return np.stack([x, y], axis=1)


def _motion_blur(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Blur along the camera's own motion in this frame (a long exposure during a swing)."""
    length = int(round(math.hypot(dx, dy) * 0.6))
    if length < 3:
        return image
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    ang = math.atan2(dy, dx)
    ex, ey = math.cos(ang) * c, math.sin(ang) * c
    cv2.line(k, (round(c - ex), round(c - ey)), (round(c + ex), round(c + ey)), 1.0, 1)
    return cv2.filter2D(image, -1, k / max(k.sum(), 1e-6))


def _boxes_in_view(
    boxes: list[tuple[int, tuple[float, float, float, float]]], width: int, height: int
) -> list[ShotFace]:
    out = []
    for track, (x, y, w, h) in boxes:
        ix = max(0.0, min(width, x + w) - max(0.0, x))
        iy = max(0.0, min(height, y + h) - max(0.0, y))
        vis = (ix * iy) / max(1e-6, w * h)
        if vis > 0:
            out.append(ShotFace(track, (x, y, w, h), round(vis, 3)))
    return out


# -- shots over group photographs ----------------------------------------------------------


def _photo_wall(rng: np.random.Generator, split: str, root: str, height: int) -> _Photo:
    """Three or four photographs side by side at one height: a crowd to walk past."""
    photos = list(_photos(split, root))
    order = rng.permutation(len(photos))[: min(len(photos), int(rng.integers(3, 5)))]
    row_h = int(height * rng.uniform(0.95, 1.3))
    parts, boxes, x = [], [], 0
    for i in order:
        p = photos[int(i)]
        s = row_h / p.image.shape[0]
        img = cv2.resize(p.image, (round(p.image.shape[1] * s), row_h), interpolation=cv2.INTER_CUBIC)
        parts.append(img)
        boxes += [(x + bx * s, by * s, bw * s, bh * s) for bx, by, bw, bh in p.boxes]
        x += img.shape[1]
    return _Photo(np.concatenate(parts, axis=1), tuple(boxes))


def _crowd(
    shot: _Shot, split: str, root: str, width: int, height: int, fps: int, light: str = "day"
) -> Iterator[tuple[np.ndarray, list[ShotFace]]]:
    rng = np.random.default_rng(shot.seed)
    wall = _photo_wall(rng, split, root, height)
    wh, ww = wall.image.shape[:2]
    n = shot.frames
    # Zoom: the photo row fills 0.45-0.9 of the frame's height, drifting (walking closer/away).
    z0 = rng.uniform(0.45, 0.9) * height / wh
    z1 = z0 * rng.uniform(0.8, 1.25)
    shake = _walking_camera(rng, n, fps)
    pan_span = max(0.0, ww * max(z0, z1) - width * 0.6)
    pan0 = rng.uniform(0, 0.2) * pan_span
    pan1 = pan0 + rng.uniform(0.4, 0.8) * pan_span * rng.choice([-1, 1])
    swing = int(rng.integers(n // 4, 3 * n // 4))  # one fast swing of the camera mid-shot
    gain = {"day": 1.0, "night": rng.uniform(0.06, 0.12), "glare": rng.uniform(1.7, 2.3)}[light]
    lift = {"day": 0.0, "night": rng.uniform(1, 4), "glare": rng.uniform(20, 40)}[light]
    prev = None
    for i in range(n):
        u = i / max(1, n - 1)
        z = z0 + (z1 - z0) * u
        swing_dx = 60 * math.exp(-(((i - swing) / 4) ** 2))
        tx = -(pan0 + (pan1 - pan0) * u) + shake[i, 0] - swing_dx
        ty = (height - wh * z) / 2 + shake[i, 1]
        m = np.array([[z, 0, tx], [0, z, ty]], np.float32)
        frame = cv2.warpAffine(
            wall.image, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(60, 60, 60)
        )
        if prev is not None:
            frame = _motion_blur(frame, tx - prev[0], ty - prev[1])
        prev = (tx, ty)
        if light != "day":
            f = frame.astype(np.float32) * gain + lift
            if light == "night":
                f += rng.normal(0, 2.0, f.shape[:2])[:, :, None]
            frame = np.clip(f, 0, 255).astype(np.uint8)
        boxes = [
            (k, (bx * z + tx, by * z + ty, bw * z, bh * z)) for k, (bx, by, bw, bh) in enumerate(wall.boxes)
        ]
        yield frame, _boxes_in_view(boxes, width, height)


def _night(
    shot: _Shot, split: str, root: str, width: int, height: int, fps: int
) -> Iterator[tuple[np.ndarray, list[ShotFace]]]:
    return _crowd(shot, split, root, width, height, fps, light="night")


def _glare(
    shot: _Shot, split: str, root: str, width: int, height: int, fps: int
) -> Iterator[tuple[np.ndarray, list[ShotFace]]]:
    return _crowd(shot, split, root, width, height, fps, light="glare")


# -- shots of people against a wall --------------------------------------------------------


@dataclass
class _Walker:
    sprite: FaceSource
    start: int
    x0: float
    y0: float
    vx: float
    size0: float
    size1: float
    bob: float
    phase: float


def _paste(
    frame: np.ndarray, sprite: FaceSource, cx: float, cy: float, face_h: float
) -> tuple[float, float, float, float]:
    """Draw a sprite with its face centred at (cx, cy), ``face_h`` tall; return the face box."""
    bx0, by0, bx1, by1 = sprite.box
    sh, sw = sprite.bgr.shape[:2]
    face_w = face_h * ((bx1 - bx0) * sw) / ((by1 - by0) * sh)
    ph = max(2, round(face_h / (by1 - by0)))
    pw = max(2, round(face_w / (bx1 - bx0)))
    fx, fy = cx - face_w / 2, cy - face_h / 2
    px, py = round(fx - bx0 * pw), round(fy - by0 * ph)
    interp = cv2.INTER_AREA if ph < sh else cv2.INTER_CUBIC
    bgr = cv2.resize(sprite.bgr, (pw, ph), interpolation=interp)
    alpha = cv2.resize(sprite.alpha, (pw, ph), interpolation=cv2.INTER_LINEAR)
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(0, px), max(0, py), min(w, px + pw), min(h, py + ph)
    if x1 > x0 and y1 > y0:
        a = alpha[y0 - py : y1 - py, x0 - px : x1 - px, None]
        region = frame[y0:y1, x0:x1].astype(np.float32)
        patch = bgr[y0 - py : y1 - py, x0 - px : x1 - px].astype(np.float32)
        frame[y0:y1, x0:x1] = (region * (1 - a) + patch * a).astype(np.uint8)
    # The face box of the drawn patch, in the pixels where it actually landed.
    return (px + bx0 * pw, py + by0 * ph, (bx1 - bx0) * pw, (by1 - by0) * ph)


def _walkers(
    shot: _Shot, split: str, root: str, width: int, height: int, fps: int, approach: bool = False
) -> Iterator[tuple[np.ndarray, list[ShotFace]]]:
    rng = np.random.default_rng(shot.seed)
    sprites = _sprites(split, root)
    wall = _wall(width, height, int(rng.integers(1000)))
    n = shot.frames
    people: list[_Walker] = []
    if approach:
        s = sprites[int(rng.integers(len(sprites)))]
        d = rng.choice([-1, 1])
        people.append(
            _Walker(
                s, 0, width * (0.15 if d > 0 else 0.85), height * 0.45, d * rng.uniform(2, 5), 24, 200, 4, 0
            )
        )
        count = int(rng.integers(0, 2))
    else:
        count = int(rng.integers(2, 5))
    for _ in range(count):
        d = rng.choice([-1, 1])
        speed = rng.uniform(8, 20)
        start = int(rng.integers(0, max(1, n // 2)))
        size = rng.uniform(24, 40)
        x0 = -size if d > 0 else width + size
        people.append(
            _Walker(
                sprites[int(rng.integers(len(sprites)))],
                start,
                x0,
                rng.uniform(0.2, 0.7) * height,
                d * speed,
                size,
                size * rng.uniform(0.9, 1.1),
                rng.uniform(1.5, 4),
                rng.uniform(0, 6),
            )
        )
    shake = _walking_camera(rng, n, fps, still=True)
    wx, wy = width // 2, height // 2
    for i in range(n):
        ox, oy = shake[i]
        m = np.array([[1, 0, -wx + ox], [0, 1, -wy * 0.5 + oy]], np.float32)
        frame = cv2.warpAffine(wall, m, (width, height), borderMode=cv2.BORDER_REFLECT)
        boxes = []
        for k, p in enumerate(people):
            t = i - p.start
            if t < 0:
                continue
            u = t / max(1, n - 1 - p.start)
            size = p.size0 + (p.size1 - p.size0) * u
            cx = p.x0 + p.vx * t + ox
            cy = p.y0 + p.bob * abs(math.sin(math.pi * 1.8 * t / fps + p.phase)) + oy
            if approach and k == 0:
                cy += 0.25 * size  # a face coming closer drops a little in the frame
            if cx < -3 * size or cx > width + 3 * size:
                continue
            boxes.append((k, _paste(frame, p.sprite, cx, cy, size)))
        noise = rng.normal(0, 2.0, (height, width, 1))
        frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        yield frame, _boxes_in_view(boxes, width, height)


def _approach(
    shot: _Shot, split: str, root: str, width: int, height: int, fps: int
) -> Iterator[tuple[np.ndarray, list[ShotFace]]]:
    return _walkers(shot, split, root, width, height, fps, approach=True)


_SHOT_PAINTERS = {
    "crowd": _crowd,
    "night": _night,
    "glare": _glare,
    "walkers": _walkers,
    "approach": _approach,
}
