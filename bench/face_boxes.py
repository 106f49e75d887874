"""Benchmark: how far the detector's face boxes sit from hand-drawn ones on still photographs.

The photographs of ``shared/datasets/faces-dev`` (training: the ``tune`` split, testing: ``held_out``)
are looked at whole, scaled from full size down until their faces are 28 px, and so are the LFW
faces of scikit-image (even: tune, odd: held out) laid out in a grid, with the box the clips'
truth gives them. Each annotated face is matched to the detection that overlaps it most (IoU of at
least 0.3; the same detections for every rule), and for each rule that turns the network's
output into a face box (``redaction.detector.face_boxes``) the box's error is measured in face
widths: centre dx, dy (mean ± sd), width and height over the truth's, and, for masks of the
pipeline's shape grown about the box's centre, the share of faces with >= 90 % of the box hidden
and the mask's area outside the face box (in face boxes).

With ``--min-face``/``--max-face`` only faces of those sizes (after scaling) are scored; with
``--night`` every scaled photograph is first darkened as the clips' night shots are (mean
brightness 15, sensor noise) and its contrast normalised as the pipeline does; with ``--glare``
overexposed as their glare shots are (times 2, plus 30 grey levels, clipped), its contrast
normalised where the pipeline would.

    .venv/bin/python -m bench.face_boxes [--rules detector,landmarks] [--threshold 0.2]
        [--min-face 28] [--max-face 28] [--night | --glare]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from firmware_simulators.scene import face_sources  # noqa: E402
from firmware_simulators.shots import faces_dev_dir  # noqa: E402
from redaction.detector import CenterFaceDetector, Detection, RawFaces, face_boxes, nms  # noqa: E402
from redaction.frames import Frame  # noqa: E402
from redaction.geometry import Box, iou  # noqa: E402
from redaction.pipeline import RedactionSettings  # noqa: E402
from redaction.render import Mask, _ellipse, _pixel_bounds, covered  # noqa: E402

SCALES = (1.0, 0.85, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3, 0.25, 0.21, 0.18)
MIN_FACE = 28
NIGHT = 15  # mean brightness of a night frame, as the clips' night shots
GLARE = (2.0, 30.0)  # gain and lift of a glare frame, the middle of the clips' glare shots
MARGINS = (1.3, 1.4, 1.5, 1.6)


def photographs(split: str) -> list[tuple[str, np.ndarray, list[Box]]]:
    """The split's photographs with their hand-drawn boxes, and a grid of the split's LFW faces."""
    root = faces_dev_dir()
    notes = json.loads((root / "annotations.json").read_text())
    want = "training" if split == "tune" else "testing"
    out = []
    for name, note in sorted(notes.items()):
        if note["split"] == want:
            image = cv2.imread(str(root / name))
            out.append((name, image, [Box(*map(float, b)) for b in note["boxes_xywh"]]))
    parity = 0 if split == "tune" else 1
    lfw = [s for n, s in enumerate(face_sources()[:-1]) if n % 2 == parity]
    cols, side, gap = 10, 100, 40
    rows = (len(lfw) + cols - 1) // cols
    grid = np.full((rows * (side + gap) + gap, cols * (side + gap) + gap, 3), 140, np.uint8)
    boxes = []
    for n, src in enumerate(lfw):
        y, x = gap + (n // cols) * (side + gap), gap + (n % cols) * (side + gap)
        alpha = src.alpha[:, :, None]
        region = grid[y : y + side, x : x + side].astype(np.float32)
        grid[y : y + side, x : x + side] = (region * (1 - alpha) + src.bgr * alpha).astype(np.uint8)
        fx0, fy0, fx1, fy1 = src.box
        boxes.append(Box(x + fx0 * side, y + fy0 * side, (fx1 - fx0) * side, (fy1 - fy0) * side))
    out.append(("lfw-grid", grid, boxes))
    return out


def matched(
    detector: CenterFaceDetector,
    split: str,
    min_face: float = MIN_FACE,
    max_face: float = 1e9,
    night: bool = False,
    glare: bool = False,
) -> list[dict[str, Any]]:
    """Every annotated face at every scale where it is ``min_face`` to ``max_face`` px, with the
    network's raw output for the detection matched to it (None: missed). ``night``: each scaled
    photograph darkened to a mean brightness of ``NIGHT`` with sensor noise, and its contrast
    normalised as the pipeline does before detection; ``glare``: each overexposed as the glare
    shots are (``GLARE``), normalised where the pipeline would."""
    out = []
    rng = np.random.default_rng(3)
    for name, image, truth in photographs(split):
        h, w = image.shape[:2]
        for scale in SCALES:
            faces = [b for b in truth if min_face <= min(b.w, b.h) * scale < max_face]
            if not faces:
                continue
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            if night:
                small = _night(small, rng)
            elif glare:
                small = _glare(small)
            raw = detector.raw(small)
            kept: list[int] = []
            if raw is not None:
                boxes = face_boxes(raw, "detector")
                found = [Detection(b, float(s)) for b, s in zip(boxes, raw.score, strict=True)]
                keep = nms(found, detector.nms_iou)
                kept = [found.index(d) for d in keep]
            for t in faces:
                tb = Box(t.x * scale, t.y * scale, t.w * scale, t.h * scale)
                best, best_iou = None, 0.3
                for i in kept:
                    assert raw is not None
                    o = iou(face_boxes(_one(raw, i), "detector")[0], tb)
                    if o >= best_iou:
                        best, best_iou = i, o
                out.append(
                    {
                        "photo": name,
                        "scale": scale,
                        "truth": tb,
                        "raw": None if best is None or raw is None else _one(raw, best),
                    }
                )
    return out


def _night(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dark = image.astype(np.float32) * (NIGHT / max(1.0, float(image.mean())))
    dark = np.clip(dark + rng.normal(0, 3, dark.shape), 0, 255).astype(np.uint8)
    return _as_the_pipeline_sees(dark)


def _glare(image: np.ndarray) -> np.ndarray:
    gain, lift = GLARE
    return _as_the_pipeline_sees(np.clip(image.astype(np.float32) * gain + lift, 0, 255).astype(np.uint8))


def _as_the_pipeline_sees(image: np.ndarray) -> np.ndarray:
    """An image as the detector gets it from the pipeline: its contrast normalised where its
    brightness is beyond the pipeline's bounds (``Frame.bgr``)."""
    frame = Frame.from_bgr(np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]))
    settings = RedactionSettings()
    return frame.bgr(None, None, (settings.dark_below, settings.bright_above))[0]


def _one(raw: RawFaces, i: int) -> RawFaces:
    return RawFaces(
        raw.cx[i : i + 1],
        raw.cy[i : i + 1],
        raw.w[i : i + 1],
        raw.h[i : i + 1],
        raw.score[i : i + 1],
        raw.marks[i : i + 1],
    )


def mask_share_and_spill(truth: Box, box: Box, margin: float) -> tuple[float, float]:
    """The share of the truth box an ellipse mask of ``margin`` around ``box`` hides, and its
    area outside the truth box in truth boxes."""
    mask = box.scaled(margin)
    share = covered(truth, [Mask(mask, "ellipse")], 100000, 100000)
    x0, y0, x1, y1 = _pixel_bounds(Box(mask.x + 1000, mask.y + 1000, mask.w, mask.h), 100000, 100000)
    inside = _ellipse(Box(mask.x + 1000, mask.y + 1000, mask.w, mask.h), x0, y0, x1, y1)
    ys, xs = np.nonzero(inside)
    xs, ys = xs + x0 - 1000 + 0.5, ys + y0 - 1000 + 0.5
    in_truth = (xs >= truth.x) & (xs < truth.x + truth.w) & (ys >= truth.y) & (ys < truth.y + truth.h)
    return share, float(np.count_nonzero(~in_truth)) / max(1.0, truth.area)


def errors(faces: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """Box errors of one rule over matched faces, overall and per group (photographs, LFW)."""
    groups: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    cover: dict[str, dict[float, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    missed: dict[str, int] = defaultdict(int)
    for f in faces:
        group = "lfw" if f["photo"] == "lfw-grid" else "photos"
        if f["raw"] is None:
            missed[group] += 1
            continue
        t: Box = f["truth"]
        b = face_boxes(f["raw"], rule)[0]  # type: ignore[arg-type]
        row = ((b.cx - t.cx) / t.w, (b.cy - t.cy) / t.w, b.w / t.w, b.h / t.h)
        for g in (group, "all"):
            groups[g].append(row)
            for m in MARGINS:
                cover[g][m].append(mask_share_and_spill(t, b, m))
    out: dict[str, Any] = {}
    for g, rows in sorted(groups.items()):
        a = np.array(rows)
        out[g] = {
            "faces": len(rows),
            "missed": missed[g] if g != "all" else sum(missed.values()),
            "dx": [round(float(a[:, 0].mean()), 3), round(float(a[:, 0].std()), 3)],
            "dy": [round(float(a[:, 1].mean()), 3), round(float(a[:, 1].std()), 3)],
            "abs_dx": round(float(np.abs(a[:, 0]).mean()), 3),
            "abs_dy": round(float(np.abs(a[:, 1]).mean()), 3),
            "w": [round(float(a[:, 2].mean()), 3), round(float(a[:, 2].std()), 3)],
            "h": [round(float(a[:, 3].mean()), 3), round(float(a[:, 3].std()), 3)],
            "masks": {
                f"{m:.2f}": {
                    "hidden": round(float(np.mean([s >= 0.9 for s, _ in v])), 3),
                    "spill": round(float(np.mean([sp for _, sp in v])), 3),
                }
                for m, v in sorted(cover[g].items())
            },
        }
    return out


def print_table(split: str, rule: str, result: dict[str, Any]) -> None:
    for g, r in result.items():
        masks = "  ".join(f"{m}: {v['hidden'] * 100:.0f}%/{v['spill']:.2f}" for m, v in r["masks"].items())
        print(
            f"  {split:<8} {rule:<10} {g:<6} n={r['faces']:<4} miss={r['missed']:<3}"
            f" dx {r['dx'][0]:+.3f}±{r['dx'][1]:.3f} dy {r['dy'][0]:+.3f}±{r['dy'][1]:.3f}"
            f" w {r['w'][0]:.3f}±{r['w'][1]:.3f} h {r['h'][0]:.3f}±{r['h'][1]:.3f}   {masks}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="detector,landmarks")
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--sets", default="tune,held_out")
    parser.add_argument("--name", default="face-boxes")
    parser.add_argument("--min-face", type=float, default=MIN_FACE, help="smallest face (px) scored")
    parser.add_argument("--max-face", type=float, default=1e9, help="faces from this size (px) are left out")
    parser.add_argument("--night", action="store_true", help="darken the photographs as the night shots")
    parser.add_argument("--glare", action="store_true", help="overexpose the photographs as the glare shots")
    args = parser.parse_args()
    detector = CenterFaceDetector(threshold=args.threshold)
    results: dict[str, Any] = {
        "scales": SCALES,
        "min_face": args.min_face,
        "max_face": args.max_face,
        "night": args.night,
        "glare": args.glare,
        "detector": detector.info(),
        "sets": {},
    }
    print(
        "  split    rule       group  faces, missed, dx/dy (face widths), w/h (of truth), masks: hidden/spill"
    )
    for split in args.sets.split(","):
        faces = matched(detector, split, args.min_face, args.max_face, args.night, args.glare)
        results["sets"][split] = {}
        for rule in args.rules.split(","):
            r = errors(faces, rule)
            results["sets"][split][rule] = r
            print_table(split, rule, r)
    print(f"written to {write_results(args.name, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
