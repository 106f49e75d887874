"""The detector's face boxes: from its own box, or placed on its five landmarks where they hold."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from firmware_simulators.scene import face_sources
from redaction.detector import CenterFaceDetector, RawFaces, Runtime, face_boxes
from redaction.frames import Frame
from redaction.geometry import Box, iou
from redaction.pipeline import RedactionSettings
from storage.settings import WorkerSettings


def raw_face(marks: list[tuple[float, float]], cx: float = 100, cy: float = 100, w: float = 40) -> RawFaces:
    """One face as the network gives it: its box (brow to chin) and landmarks (x, y)."""
    return RawFaces(
        cx=np.array([cx]),
        cy=np.array([cy]),
        w=np.array([w]),
        h=np.array([w * 1.2]),
        score=np.array([0.9]),
        marks=np.array([marks], dtype=np.float64),
    )


FRONTAL = [(96.0, 96.0), (112.0, 96.0), (104.0, 104.0), (97.0, 114.0), (111.0, 114.0)]


def test_landmark_box_centres_between_eyes_and_mouth_and_keeps_the_detector_size() -> None:
    raw = raw_face(FRONTAL)
    (plain,) = face_boxes(raw, "detector")
    (placed,) = face_boxes(raw, "landmarks")
    assert (placed.cx, placed.cy) == pytest.approx((104.0, 105.0))
    assert (placed.w, placed.h) == pytest.approx((plain.w, plain.h))
    assert (plain.cx, plain.cy) != pytest.approx((placed.cx, placed.cy))


@pytest.mark.parametrize(
    ("marks", "w", "why"),
    [
        ([(101.0, 96.0), (104.0, 96.0), (98.0, 104.0), (100.0, 114.0), (103.0, 114.0)], 40, "profile"),
        ([(126.0, 96.0), (142.0, 96.0), (134.0, 104.0), (127.0, 114.0), (141.0, 114.0)], 40, "far off"),
        ([(98.6, 98.6), (101.8, 98.6), (100.2, 100.2), (98.8, 102.2), (101.6, 102.2)], 8, "tiny"),
    ],
)
def test_landmark_box_falls_back_to_the_detector_box(
    marks: list[tuple[float, float]], w: float, why: str
) -> None:
    raw = raw_face(marks, w=w)
    assert face_boxes(raw, "landmarks") == face_boxes(raw, "detector"), why


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def test_landmarks_lie_on_the_face_in_order(portrait: np.ndarray) -> None:
    """Eyes above the nose above the mouth, left before right, all inside the box: the network's
    (y, x) landmark pairs are read the right way round."""
    detector = CenterFaceDetector(threshold=0.2)
    raw = detector.raw(portrait)
    assert raw is not None
    best = int(np.argmax(raw.score))
    m = raw.marks[best]
    assert m[0, 0] < m[1, 0] and m[3, 0] < m[4, 0]
    assert max(m[0, 1], m[1, 1]) < m[2, 1] < min(m[3, 1], m[4, 1])
    x0, y0 = raw.cx[best] - raw.w[best] / 2, raw.cy[best] - raw.h[best] / 2
    assert np.all((m[:, 0] > x0) & (m[:, 0] < x0 + raw.w[best]))
    assert np.all((m[:, 1] > y0) & (m[:, 1] < y0 + raw.h[best]))


def test_landmark_boxes_follow_a_mirrored_face(portrait: np.ndarray) -> None:
    """A face seen in a mirror gets the mirror of its box, within a few hundredths of a face."""
    plain = CenterFaceDetector(threshold=0.2)
    placed = CenterFaceDetector(threshold=0.2, face_box="landmarks")
    width = portrait.shape[1]
    a = max(placed.detect(portrait), key=lambda d: d.score).box
    b = max(placed.detect(np.ascontiguousarray(portrait[:, ::-1])), key=lambda d: d.score).box
    assert abs((width - b.cx) - a.cx) < 0.05 * a.w and abs(b.cy - a.cy) < 0.05 * a.w
    d = max(plain.detect(portrait), key=lambda d: d.score).box
    assert iou(a, d) > 0.8 and a != d


def test_the_record_names_the_face_box_rule() -> None:
    assert CenterFaceDetector().info()["face_box"] == "detector"
    assert CenterFaceDetector(face_box="landmarks").info()["face_box"] == "landmarks"
    with pytest.raises(ValueError):
        CenterFaceDetector(face_box="nose")  # type: ignore[arg-type]


def test_box_is_unchanged_by_default() -> None:
    """The detector's boxes are what they were before landmarks were read: the network's box
    widened, shortened and dropped by fixed factors."""
    (box,) = face_boxes(raw_face(FRONTAL), "detector")
    want = Box.from_center(100, 100 + 0.05 * 48 / 1.15, 40 / 0.89, 48 / 1.15)
    assert (box.x, box.y, box.w, box.h) == pytest.approx((want.x, want.y, want.w, want.h))


def _faces_at_three_sizes(portrait: np.ndarray) -> np.ndarray:
    """One 1280x720 frame holding the astronaut's portrait at three sizes (faces about 140, 70
    and 35 px across) on a grey ground."""
    frame = np.full((720, 1280, 3), 120, np.uint8)
    x = 0
    for side in (512, 256, 128):
        small = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
        frame[100 : 100 + side, x : x + side] = small
        x += side + 60
    return frame


def test_the_int8_detector_finds_the_faces_the_float_model_finds(portrait: np.ndarray) -> None:
    """The quantised model through onnxruntime finds every face of a known photograph, at three
    sizes, that the shipped model finds, and no other; its boxes lie within a tenth of a face."""
    frame = _faces_at_three_sizes(portrait)
    fp32 = CenterFaceDetector(threshold=0.2).detect(frame, 640)
    int8 = CenterFaceDetector(threshold=0.2, runtime="onnxruntime-int8").detect(frame, 640)
    assert len(fp32) == 3
    assert len(int8) == len(fp32)
    for want in fp32:
        got = max(int8, key=lambda d: iou(d.box, want.box)).box
        assert abs(got.cx - want.box.cx) < 0.1 * want.box.w and abs(got.cy - want.box.cy) < 0.1 * want.box.w
        assert 0.9 < got.w / want.box.w < 1.1


# The int8 model the package ships (``bench/centerface_int8.py make --fp32 6 --variants qdq``
# rebuilds it to the byte): a record naming this hash was made by it.
INT8_MODEL_SHA256 = "abeb557b3bd1a51796a1cbc34bf8bbf31426ded53fc939a29392416f9f64afda"


def test_the_record_names_the_runtime_and_its_model() -> None:
    info = CenterFaceDetector(runtime="onnxruntime-int8").info()
    assert info["model"] == "centerface-int8-fp6.onnx" and info["runtime"].startswith("onnxruntime")
    assert info["model_sha256"] == INT8_MODEL_SHA256
    assert (
        len(info["model_sha256"]) == 64
        and info["model_sha256"] != CenterFaceDetector().info()["model_sha256"]
    )
    with pytest.raises(ValueError):
        CenterFaceDetector(runtime="tensorrt")  # type: ignore[arg-type]


def test_the_runtime_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service runs the int8 model unless told otherwise; the fp32 model stays selectable."""
    assert RedactionSettings.from_settings(WorkerSettings()).detector_runtime == "onnxruntime-int8"
    monkeypatch.setenv("EVIDENCE_REDACTION_DETECTOR", "opencv")
    assert RedactionSettings.from_settings(WorkerSettings()).detector_runtime == "opencv"
    monkeypatch.setenv("EVIDENCE_REDACTION_DETECTOR", "onnxruntime-int8")
    assert RedactionSettings.from_settings(WorkerSettings()).detector_runtime == "onnxruntime-int8"


def _night_crowd(parity: int, face: int) -> tuple[Frame, Box]:
    """A night frame of small faces: the even or odd LFW faces of scikit-image in a grid on grey,
    scaled so they are about 28 px, darkened to a mean brightness of 15 with sensor noise (as the
    night shots of the clip benchmark), and the box of one of them."""
    faces = [s for n, s in enumerate(face_sources()[:-1]) if n % 2 == parity]
    cols, side, gap = 10, 100, 40
    rows = (len(faces) + cols - 1) // cols
    grid = np.full((rows * (side + gap) + gap, cols * (side + gap) + gap, 3), 140, np.uint8)
    boxes = []
    for n, src in enumerate(faces):
        y, x = gap + (n // cols) * (side + gap), gap + (n % cols) * (side + gap)
        alpha = src.alpha[:, :, None]
        region = grid[y : y + side, x : x + side].astype(np.float32)
        grid[y : y + side, x : x + side] = (region * (1 - alpha) + src.bgr * alpha).astype(np.uint8)
        fx0, fy0, fx1, fy1 = src.box
        boxes.append(Box(x + fx0 * side, y + fy0 * side, (fx1 - fx0) * side, (fy1 - fy0) * side))
    scale = 0.35
    h, w = grid.shape[:2]
    small = cv2.resize(grid, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    dark = small.astype(np.float32) * (15 / float(small.mean()))
    dark = np.clip(dark + np.random.default_rng(0).normal(0, 3, dark.shape), 0, 255).astype(np.uint8)
    frame = Frame.from_bgr(np.ascontiguousarray(dark[: dark.shape[0] // 2 * 2, : dark.shape[1] // 2 * 2]))
    b = boxes[face]
    return frame, Box(b.x * scale, b.y * scale, b.w * scale, b.h * scale)


def _found_in_a_close_look(runtime: Runtime, parity: int, index: int) -> float:
    """The best overlap with a 28 px face in a night frame of the detections made in a look as
    the pipeline takes one around a known face: a window of 2.5 faces, enlarged so the face is
    about 48 px, its contrast normalised because it is dark."""
    settings = RedactionSettings()
    frame, face = _night_crowd(parity, index)
    side = max(face.w, face.h) * settings.refresh_context
    window = Box.from_center(face.cx, face.cy, side, side).clipped(frame.width, frame.height)
    assert window is not None
    x0, y0 = int(window.x), int(window.y)
    x1, y1 = int(np.ceil(window.x + window.w)), int(np.ceil(window.y + window.h))
    width = round((x1 - x0) * min(2.0, settings.refresh_face_px / max(face.w, face.h)))
    image, ox, oy, sx, sy = frame.bgr((x0, y0, x1, y1), width, (settings.dark_below, settings.bright_above))
    assert float(image.mean()) > 40  # normalised: it reaches the network brightened
    found = [
        Box(d.box.x / sx + ox, d.box.y / sy + oy, d.box.w / sx, d.box.h / sy)
        for d in CenterFaceDetector(threshold=settings.threshold, runtime=runtime).detect(image)
    ]
    return max((iou(b, face) for b in found), default=0.0)


# Two LFW faces (even 10, odd 23) that the fp32 model finds in a close look at night whatever
# the sensor noise, and that the int8 model with every layer quantised (shipped until 7 December,
# SHA-256 8482fd7a...) never finds there; the int8 model that keeps its first six convolutions in
# fp32 finds both.
DARK_FACES = [(0, 10), (1, 23)]


@pytest.mark.parametrize(("parity", "index"), DARK_FACES)
def test_the_fp32_detector_finds_dark_small_faces_in_a_close_look(parity: int, index: int) -> None:
    assert _found_in_a_close_look("opencv", parity, index) >= 0.3


@pytest.mark.parametrize(("parity", "index"), DARK_FACES)
def test_the_int8_detector_finds_dark_small_faces_in_a_close_look(parity: int, index: int) -> None:
    assert _found_in_a_close_look("onnxruntime-int8", parity, index) >= 0.3
