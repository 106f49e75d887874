"""Synthetic body-worn camera footage with known face positions.

A camera walking down a ward corridor: a panning, shaking view of a textured corridor, with real
face photographs (the LFW subset and the astronaut portrait that ship inside scikit-image) moving
through it at sizes from about 20 to 200 pixels, some partly off frame, some briefly motion
blurred, and a speech-like audio track. Frames are rendered one at a time and piped into ffmpeg,
so a long clip never sits in memory. The ground truth (every face box in every frame) is what the
redaction tests and benchmarks score against. Everything is drawn from one seed, so a seed always
gives the same clip and the same truth.

Nothing of the service is imported here: the simulators are honest clients.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

# Where the face lies inside each source crop, as fractions (x0, y0, x1, y1) of the crop. The
# convention is the usual face-box one (brow or hairline to chin, cheek to cheek).
_LFW_FACE_BOX = (0.10, 0.03, 0.90, 0.97)
# The astronaut portrait: crop around the head and the face box inside it, in source pixels.
_ASTRONAUT_CROP = (140, 10, 310, 220)
_ASTRONAUT_FACE = (180, 60, 270, 180)
_LFW_MAX_FACE = 56


@dataclass(frozen=True)
class FaceBox:
    """One face in one frame: the part inside the frame, and the whole face as drawn."""

    track: int
    x: int
    y: int
    w: int
    h: int
    full: tuple[int, int, int, int]
    visible: float
    blurred: bool

    @property
    def size(self) -> int:
        """The face's size in pixels (the smaller side of the whole face box)."""
        return min(self.full[2], self.full[3])


@dataclass
class SceneTruth:
    """What a rendered clip contains: its format and every face box in every frame."""

    width: int
    height: int
    fps: str
    frames: int
    seconds: float
    audio_rate: int | None
    boxes: dict[int, list[FaceBox]] = field(default_factory=dict)

    def faces_in(self, frame: int) -> list[FaceBox]:
        return self.boxes.get(frame, [])

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": self.frames,
            "seconds": self.seconds,
            "audio_rate": self.audio_rate,
            "boxes": {str(i): [_box_json(b) for b in bs] for i, bs in sorted(self.boxes.items())},
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def from_json(cls, data: dict) -> SceneTruth:
        boxes = {
            int(i): [FaceBox(**{**b, "full": tuple(b["full"])}) for b in bs]
            for i, bs in data["boxes"].items()
        }
        fields = {k: data[k] for k in ("width", "height", "fps", "frames", "seconds", "audio_rate")}
        return cls(**fields, boxes=boxes)

    @classmethod
    def load(cls, path: str | Path) -> SceneTruth:
        return cls.from_json(json.loads(Path(path).read_text()))


def _box_json(b: FaceBox) -> dict:
    d = asdict(b)
    d["full"] = list(b.full)
    return d


@dataclass(frozen=True)
class FaceSource:
    """A face photograph with a soft alpha edge and the face box inside it (fractions)."""

    bgr: np.ndarray
    alpha: np.ndarray
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class _Track:
    """How one face moves: its source, when it is on screen, its path and size over time."""

    source: int
    start: int
    end: int
    x0: float
    y0: float
    vx: float
    vy: float
    wobble: float
    wobble_hz: float
    phase: float
    size0: float
    size1: float
    flip: bool
    tone: tuple[float, float, float]
    blur_spans: tuple[tuple[int, int, float, float], ...]


def render_clip(
    path: str | Path,
    seconds: float,
    width: int = 1280,
    height: int = 720,
    fps: float | Fraction | str = 30,
    faces: int = 6,
    seed: int = 0,
    *,
    min_face: int = 20,
    max_face: int = 200,
    audio: bool = True,
    audio_rate: int = 48000,
    crf: int = 20,
    preset: str = "veryfast",
    black_floor: int = 32,
    ffmpeg: str | None = None,
) -> SceneTruth:
    """Render an H.264 (yuv420p) + AAC MP4 of a corridor with moving faces; return its ground truth.

    ``faces`` is about how many faces are in view at once: each leaves after a few seconds and
    another takes its place, at sizes spread from ``min_face`` to ``max_face`` pixels.

    ``black_floor`` lifts the darkest pixel of the scene above true black, so a solid black mask
    drawn by a redactor can be told apart from the scene when scoring coverage.
    """
    rate = Fraction(str(fps)) if not isinstance(fps, Fraction) else fps
    rate = rate.limit_denominator(1001)
    n_frames = max(1, round(seconds * rate))
    rng = np.random.default_rng(seed)
    ffmpeg = ffmpeg or ffmpeg_exe()
    sources = face_sources()
    camera = _plan_camera(rng, n_frames, float(rate), width, height)
    tracks = _plan_tracks(rng, camera, float(rate), width, height, faces, min_face, max_face, len(sources))
    pano = _corridor(rng, width, height, camera)
    noise = [rng.integers(0, 7, size=(height, width, 3), dtype=np.uint8) for _ in range(4)]
    lut = np.clip(np.arange(256) * (255 - black_floor) / 255 + black_floor, 0, 255).astype(np.uint8)

    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += [
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{width}x{height}",
        "-r",
        _rate_arg(rate),
        "-i",
        "pipe:0",
    ]
    duration = n_frames / rate
    if audio:
        expr = (
            "0.22*sin(2*PI*190*t)*(0.55+0.45*sin(2*PI*3.1*t))"
            "+0.08*sin(2*PI*380*t)*(0.5+0.5*sin(2*PI*4.7*t))"
            "+0.04*sin(2*PI*1250*t)*(0.5+0.5*sin(2*PI*2.3*t))"
        )
        cmd += ["-f", "lavfi", "-i", f"aevalsrc=exprs={expr}:s={audio_rate}:d={float(duration):.6f}"]
        cmd += ["-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "96k"]
    cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p"]
    cmd += ["-movflags", "+faststart", str(path)]

    truth = SceneTruth(
        width=width,
        height=height,
        fps=_rate_arg(rate),
        frames=n_frames,
        seconds=float(duration),
        audio_rate=audio_rate if audio else None,
    )
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        frames = _frames(pano, camera, tracks, sources, noise, lut, width, height, n_frames)
        for i, (image, frame_boxes) in enumerate(frames):
            if frame_boxes:
                truth.boxes[i] = frame_boxes
            proc.stdin.write(image.data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed rendering {path}: {err.strip()[-2000:]}")
    return truth


def _frames(
    pano: np.ndarray,
    camera: np.ndarray,
    tracks: list[_Track],
    sources: list[FaceSource],
    noise: list[np.ndarray],
    lut: np.ndarray,
    width: int,
    height: int,
    n_frames: int,
) -> Iterator[tuple[np.ndarray, list[FaceBox]]]:
    """Yield each frame and its face boxes; the frame buffers are reused throughout."""
    frame = np.empty((height, width, 3), np.uint8)
    covered = np.zeros((height, width), np.uint8)
    for i in range(n_frames):
        cx, cy = int(round(camera[i, 0])), int(round(camera[i, 1]))
        np.copyto(frame, pano[cy : cy + height, cx : cx + width])
        placed = [
            p
            for t_id, tr in enumerate(tracks)
            if tr.start <= i < tr.end
            and (p := _place(tr, t_id, i, sources[tr.source], camera[i], width, height)) is not None
        ]
        for p in placed:
            _draw(frame, p, i, sources[p.track.source])
        cv2.add(frame, noise[i % len(noise)], dst=frame)
        cv2.LUT(frame, lut, dst=frame)
        yield frame, _visible_boxes(placed, covered, i, width, height)


@dataclass(frozen=True)
class _Placement:
    """Where a face lands in one frame: its face box and the pasted patch around it."""

    track_id: int
    track: _Track
    face: tuple[int, int, int, int]
    patch: tuple[int, int, int, int]


def _place(
    tr: _Track, track_id: int, i: int, src: FaceSource, cam: np.ndarray, width: int, height: int
) -> _Placement | None:
    """Work out the face box and patch of a track in frame ``i``; None when it is out of view."""
    u = (i - tr.start) / max(1, tr.end - tr.start - 1)
    face_h = tr.size0 + (tr.size1 - tr.size0) * u
    bx0, by0, bx1, by1 = src.box
    src_h, src_w = src.bgr.shape[:2]
    face_w = face_h * ((bx1 - bx0) * src_w) / ((by1 - by0) * src_h)
    patch_h = max(2, int(round(face_h / (by1 - by0))))
    patch_w = max(2, int(round(face_w / (bx1 - bx0))))
    t = i - tr.start
    wob = tr.wobble * math.sin(2 * math.pi * tr.wobble_hz * t + tr.phase)
    # Face centre in world coordinates, then on screen by taking away the camera's position.
    cx = tr.x0 + tr.vx * t + wob - cam[0]
    cy = tr.y0 + tr.vy * t + 0.3 * wob - cam[1]
    face_x = int(round(cx - face_w / 2))
    face_y = int(round(cy - face_h / 2))
    fw, fh = int(round(face_w)), int(round(face_h))
    if face_x + fw <= 1 or face_y + fh <= 1 or face_x >= width - 1 or face_y >= height - 1:
        return None
    px = face_x - int(round(bx0 * patch_w))
    py = face_y - int(round(by0 * patch_h))
    return _Placement(track_id, tr, (face_x, face_y, fw, fh), (px, py, patch_w, patch_h))


def _draw(frame: np.ndarray, p: _Placement, i: int, src: FaceSource) -> None:
    """Composite a face patch into the frame, motion blurred if its track is blurred at ``i``."""
    height, width = frame.shape[:2]
    px, py, patch_w, patch_h = p.patch
    src_h = src.bgr.shape[0]
    interp = cv2.INTER_AREA if patch_h < src_h else cv2.INTER_CUBIC
    bgr = cv2.resize(src.bgr, (patch_w, patch_h), interpolation=interp)
    alpha = cv2.resize(src.alpha, (patch_w, patch_h), interpolation=cv2.INTER_LINEAR)
    tr = p.track
    if tr.flip:
        bgr, alpha = bgr[:, ::-1], alpha[:, ::-1]
    for start, end, length, angle in tr.blur_spans:
        if start <= i < end:
            kernel = _motion_kernel(max(3, int(length * p.face[3])), angle)
            bgr = cv2.filter2D(bgr, -1, kernel, borderType=cv2.BORDER_REPLICATE)
            alpha = cv2.filter2D(alpha, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    x0, y0 = max(0, px), max(0, py)
    x1, y1 = min(width, px + patch_w), min(height, py + patch_h)
    if x1 > x0 and y1 > y0:
        gain = np.asarray(tr.tone, np.float32)
        region = frame[y0:y1, x0:x1].astype(np.float32)
        a = alpha[y0 - py : y1 - py, x0 - px : x1 - px, None]
        patch = bgr[y0 - py : y1 - py, x0 - px : x1 - px].astype(np.float32) * gain
        frame[y0:y1, x0:x1] = np.clip(region * (1 - a) + patch * a, 0, 255).astype(np.uint8)


def _visible_boxes(
    placed: list[_Placement], covered: np.ndarray, i: int, width: int, height: int
) -> list[FaceBox]:
    """Face boxes with the share of each face that can be seen: in frame and not behind a later face."""
    covered[:] = 0
    boxes: list[FaceBox] = []
    for p in reversed(placed):
        fx, fy, fw, fh = p.face
        vx0, vy0 = max(0, fx), max(0, fy)
        vx1, vy1 = min(width, fx + fw), min(height, fy + fh)
        if vx1 - vx0 < 2 or vy1 - vy0 < 2:
            continue
        hidden = int(np.count_nonzero(covered[vy0:vy1, vx0:vx1]))
        visible = ((vx1 - vx0) * (vy1 - vy0) - hidden) / float(fw * fh)
        blurred = any(s <= i < e for s, e, _, _ in p.track.blur_spans)
        boxes.append(
            FaceBox(
                track=p.track_id,
                x=vx0,
                y=vy0,
                w=vx1 - vx0,
                h=vy1 - vy0,
                full=p.face,
                visible=round(visible, 4),
                blurred=blurred,
            )
        )
        # The opaque middle of this face's patch hides whatever was drawn before it.
        px, py, pw, ph = p.patch
        mx, my = int(0.12 * pw), int(0.12 * ph)
        covered[max(0, py + my) : max(0, py + ph - my), max(0, px + mx) : max(0, px + pw - mx)] = 1
    boxes.reverse()
    return boxes


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    return k / max(k.sum(), 1e-6)


@lru_cache(maxsize=1)
def face_sources() -> list[FaceSource]:
    """The 100 LFW faces (tinted towards skin tones) and the astronaut's head."""
    from skimage import data

    out: list[FaceSource] = []
    lfw = data.lfw_subset()[:100]
    tints = np.array(
        [[0.78, 0.86, 1.0], [0.70, 0.80, 0.98], [0.85, 0.90, 1.0], [0.62, 0.72, 0.88]], np.float32
    )
    for n, face in enumerate(lfw):
        gray = (face * 255).astype(np.float32)
        bgr = np.clip(gray[:, :, None] * tints[n % len(tints)][None, None, :] + 12, 0, 255).astype(np.uint8)
        bgr = cv2.resize(bgr, (100, 100), interpolation=cv2.INTER_CUBIC)
        out.append(FaceSource(bgr=bgr, alpha=soft_alpha(100, 100, 0.08), box=_LFW_FACE_BOX))
    ax0, ay0, ax1, ay1 = _ASTRONAUT_CROP
    astro = data.astronaut()[ay0:ay1, ax0:ax1, ::-1].copy()
    cw, ch = ax1 - ax0, ay1 - ay0
    fx0, fy0, fx1, fy1 = _ASTRONAUT_FACE
    box = ((fx0 - ax0) / cw, (fy0 - ay0) / ch, (fx1 - ax0) / cw, (fy1 - ay0) / ch)
    out.append(FaceSource(bgr=astro, alpha=soft_alpha(cw, ch, 0.12, ellipse=True), box=box))
    return out


def soft_alpha(w: int, h: int, feather: float, ellipse: bool = False) -> np.ndarray:
    """An alpha mask that fades out at the edges, so a pasted crop has no hard square outline."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    nx = (xx + 0.5) / w * 2 - 1
    ny = (yy + 0.5) / h * 2 - 1
    power = 2.0 if ellipse else 6.0
    r = (np.abs(nx) ** power + np.abs(ny) ** power) ** (1 / power)
    return np.clip((1.0 - r) / feather, 0.0, 1.0).astype(np.float32)


def _plan_tracks(
    rng: np.random.Generator,
    camera: np.ndarray,
    fps: float,
    width: int,
    height: int,
    faces: int,
    min_face: int,
    max_face: int,
    n_sources: int,
) -> list[_Track]:
    """Keep about ``faces`` people in view: each of that many slots holds one face at a time, a
    new one following shortly after the last leaves. Slot sizes are spread evenly on a log scale
    from ``min_face`` to ``max_face``; each face gets a lifetime, a path and a look of its own."""
    n_frames = len(camera)
    tracks: list[_Track] = []
    slot_sizes = np.geomspace(min_face, max_face, faces) if faces > 1 else np.array([float(min_face)] * faces)
    for slot in range(faces):
        start = int(rng.integers(0, max(1, int(0.15 * n_frames))))
        while start < n_frames - 2:
            life = int(rng.uniform(2.5, 9.0) * fps)
            end = min(n_frames, start + life)
            tracks.append(
                _plan_track(
                    rng,
                    camera,
                    fps,
                    width,
                    height,
                    float(slot_sizes[slot]),
                    start,
                    end,
                    min_face,
                    max_face,
                    n_sources,
                    len(tracks),
                )
            )
            start = end + int(rng.uniform(0.0, 1.2) * fps)
    return tracks


def _plan_track(
    rng: np.random.Generator,
    camera: np.ndarray,
    fps: float,
    width: int,
    height: int,
    slot_size: float,
    start: int,
    end: int,
    min_face: int,
    max_face: int,
    n_sources: int,
    serial: int,
) -> _Track:
    size0 = float(np.clip(slot_size * rng.uniform(0.85, 1.15), min_face, max_face))
    size1 = float(np.clip(size0 * rng.uniform(0.8, 1.3), min_face, max_face * 1.1))
    # Walking pace on screen grows with the face: near people cross the view faster.
    speed = rng.uniform(0.2, 1.4) * size0 / fps
    angle = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), 0.3 * speed * math.sin(angle)
    sx = rng.uniform(0.08, 0.92) * width
    sy = rng.uniform(0.22, 0.7) * height
    if serial % 4 == 3:
        # Enters from a side of the frame.
        sx = -0.3 * size0 if vx > 0 else width + 0.3 * size0
    # Positions are kept in the corridor's coordinates, so the camera's motion moves faces too.
    x0, y0 = sx + camera[start, 0], sy + camera[start, 1]
    # The LFW crops are 25 pixels across: beyond about twice that they are too soft to pass for
    # a face, so larger faces are the astronaut's, in varied tones and either way round.
    source = n_sources - 1 if max(size0, size1) > _LFW_MAX_FACE else int(rng.integers(0, n_sources - 1))
    tone = rng.uniform(0.85, 1.12, size=3)
    spans = []
    for _ in range(int(rng.integers(0, 3))):
        b0 = int(rng.integers(start, max(start + 1, end - 6)))
        spans.append(
            (b0, b0 + int(rng.integers(3, 8)), float(rng.uniform(0.12, 0.3)), float(rng.uniform(0, math.pi)))
        )
    return _Track(
        source=source,
        start=start,
        end=end,
        x0=x0,
        y0=y0,
        vx=vx,
        vy=vy,
        wobble=float(rng.uniform(0, 0.25) * size0),
        wobble_hz=float(rng.uniform(0.4, 1.2) / fps),
        phase=float(rng.uniform(0, 2 * math.pi)),
        size0=size0,
        size1=size1,
        flip=bool(rng.random() < 0.5),
        tone=(float(tone[0]), float(tone[1]), float(tone[2])),
        blur_spans=tuple(spans),
    )


def _plan_camera(rng: np.random.Generator, n_frames: int, fps: float, width: int, height: int) -> np.ndarray:
    """The camera's top-left corner in the corridor panorama per frame: a slow pan with walking bob."""
    t = np.arange(n_frames) / fps
    pan_speed = rng.uniform(0.03, 0.08) * width  # pixels a second
    span = 0.8 * width
    phase = (pan_speed * t) % (2 * span)
    x = np.where(phase < span, phase, 2 * span - phase)
    shake_x = sum(
        rng.uniform(1.0, 4.0) * np.sin(2 * np.pi * rng.uniform(0.3, 2.5) * t + rng.uniform(0, 6.3))
        for _ in range(3)
    )
    bob = rng.uniform(2.0, 5.0) * np.sin(2 * np.pi * 1.8 * t) + sum(
        rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t + rng.uniform(0, 6.3))
        for _ in range(2)
    )
    margin = 0.06 * height
    cam = np.stack([x + shake_x + 20, bob + margin], axis=1)
    return cam


def _corridor(rng: np.random.Generator, width: int, height: int, camera: np.ndarray) -> np.ndarray:
    """Draw a hospital corridor panorama wide and tall enough for the camera's whole path."""
    pw = int(math.ceil(camera[:, 0].max())) + width + 40
    ph = int(math.ceil(camera[:, 1].max())) + height + 40
    img = np.empty((ph, pw, 3), np.uint8)
    wall = np.array(
        rng.choice([[196, 222, 206], [214, 226, 232], [190, 214, 228], [200, 226, 236]]), np.uint8
    )
    ceiling_y, rail_y, floor_y = int(0.14 * ph), int(0.58 * ph), int(0.70 * ph)
    img[:] = wall
    img[:ceiling_y] = (226, 230, 232)
    # Ceiling light panels and grid.
    for x in range(0, pw, max(60, width // 6)):
        cv2.line(img, (x, 0), (x, ceiling_y), (200, 204, 206), 2)
    for x in range(int(rng.integers(20, 120)), pw, max(180, width // 3)):
        cv2.rectangle(img, (x, int(0.03 * ph)), (x + width // 8, int(0.10 * ph)), (250, 252, 252), -1)
    cv2.line(img, (0, ceiling_y), (pw, ceiling_y), (150, 160, 165), 3)
    # Floor: vinyl tiles with variation.
    tile = max(24, width // 24)
    floor_colours = np.array([[150, 160, 170], [140, 150, 158], [162, 168, 176]], np.float32)
    for ty in range(floor_y, ph, tile // 2):
        for tx in range(-(ty % tile), pw, tile):
            c = floor_colours[int(rng.integers(0, len(floor_colours)))] + rng.normal(0, 4, 3)
            cv2.rectangle(img, (tx, ty), (tx + tile - 1, ty + tile // 2 - 1), c.tolist(), -1)
    cv2.line(img, (0, floor_y), (pw, floor_y), (90, 100, 110), 4)
    # Doors, windows, signs, hand-gel dispensers and notice boards along the wall.
    x = int(rng.integers(0, 120))
    signs = ["WARD 7", "BAY 3", "SLUICE", "STAFF ONLY", "X-RAY", "EXIT", "BAY 4", "LINEN", "OFFICE"]
    while x < pw:
        kind = rng.random()
        if kind < 0.45:
            dw, dh = int(0.14 * width), int(0.50 * ph)
            dtop = floor_y - dh
            colour = rng.choice([[120, 90, 60], [60, 110, 160], [150, 150, 150], [80, 140, 110]])
            cv2.rectangle(img, (x - 6, dtop - 6), (x + dw + 6, floor_y), (235, 235, 235), -1)
            cv2.rectangle(img, (x, dtop), (x + dw, floor_y), colour.tolist(), -1)
            cv2.rectangle(
                img, (x + dw // 4, dtop + dh // 8), (x + 3 * dw // 4, dtop + dh // 3), (210, 200, 180), -1
            )
            cv2.circle(img, (x + dw - 12, dtop + dh // 2), 5, (60, 60, 60), -1)
            label = signs[int(rng.integers(0, len(signs)))]
            cv2.rectangle(img, (x, dtop - 40), (x + dw, dtop - 12), (120, 60, 20), -1)
            cv2.putText(img, label, (x + 6, dtop - 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
            x += dw + int(rng.integers(60, 260))
        elif kind < 0.7:
            bw, bh = int(rng.integers(80, 160)), int(rng.integers(60, 120))
            by = int(0.25 * ph)
            cv2.rectangle(img, (x, by), (x + bw, by + bh), (40, 90, 150), -1)
            for _ in range(int(rng.integers(3, 7))):
                px = x + int(rng.integers(6, max(7, bw - 40)))
                py = by + int(rng.integers(6, max(7, bh - 30)))
                colour = rng.integers(150, 255, 3).tolist()
                cv2.rectangle(
                    img,
                    (px, py),
                    (px + int(rng.integers(20, 40)), py + int(rng.integers(14, 28))),
                    colour,
                    -1,
                )
                cv2.line(img, (px + 3, py + 6), (px + 17, py + 6), (40, 40, 40), 1)
            x += bw + int(rng.integers(40, 200))
        else:
            cv2.rectangle(img, (x, int(0.40 * ph)), (x + 26, int(0.40 * ph) + 50), (240, 240, 240), -1)
            cv2.rectangle(img, (x + 8, int(0.40 * ph) + 50), (x + 18, int(0.40 * ph) + 58), (80, 80, 80), -1)
            x += int(rng.integers(80, 220))
    # Handrail with a highlight.
    cv2.rectangle(img, (0, rail_y), (pw, rail_y + 10), (105, 125, 150), -1)
    cv2.line(img, (0, rail_y + 2), (pw, rail_y + 2), (190, 205, 220), 2)
    # Wall and floor texture: fixed grain, slightly softened.
    grain: np.ndarray = rng.normal(0, 5, size=(ph, pw, 1)).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 1.2)[:, :, None]
    return np.clip(img.astype(np.float32) + grain, 0, 255).astype(np.uint8)


def _rate_arg(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Render a synthetic ward-corridor clip with faces.")
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", default="30")
    parser.add_argument("--faces", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truth = render_clip(args.out, args.seconds, args.width, args.height, args.fps, args.faces, args.seed)
    truth.save(str(args.out) + ".faces.json")
    print(f"{args.out}: {truth.frames} frames, {sum(len(b) for b in truth.boxes.values())} face-frames")
