"""Benchmark: CenterFace quantised to int8 (onnxruntime), made and scored against the fp32 model.

``make`` writes int8 copies of the detector's model (``onnxruntime.quantization.quantize_static``,
weights per channel, activations calibrated with min/max) in QDQ and QOperator form to a folder,
calibrated on frames made from the faces-dev *training* photographs at the sizes the pipeline
feeds the network: whole 1280x720 frames scaled to 640x352 (the coarse pass), at 1280x704 (the
fine pass), and 128x128 looks around each face scaled so it is about 48 px across.
``--fp32 N`` keeps the first N convolutions (graph order), and all that comes before them, in fp32.

``score`` looks at the *testing* photographs (and the odd LFW faces of scikit-image) with the fp32
model through ``cv2.dnn`` and with each int8 model through onnxruntime (and through ``cv2.dnn``
where it loads), at the pipeline's threshold, at full size and scaled so the faces are 24-64 px,
and reports for each: faces found (recall, IoU >= 0.3 with the hand-drawn box), the box's error
against the hand-drawn box in face widths, the box's distance from fp32's box for the same face,
and detections matching no annotated face; and, in night frames, the faces found in the small
looks the pipeline takes around a known face (``dark_looks``). ``--kinds int8:PATH`` scores
another int8 model through the project's own int8 runtime.

onnxruntime and onnx are not dependencies of the project: run this with them installed.

    python bench/centerface_int8.py make --out var/int8 [--fp32 6] [--lights day,night] [--variants qdq]
    flock -s /tmp/bench.lock python bench/centerface_int8.py score --models var/int8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import load_average, write_results  # noqa: E402
from bench.face_boxes import NIGHT, SCALES, _night, matched, photographs  # noqa: E402
from firmware_simulators.shots import faces_dev_dir  # noqa: E402
from redaction.detector import CenterFaceDetector, Detection, face_boxes, nms  # noqa: E402
from redaction.frames import Frame  # noqa: E402
from redaction.geometry import Box, iou  # noqa: E402
from redaction.pipeline import RedactionSettings, _look_around  # noqa: E402

OUTPUTS = ["537", "538", "539", "540"]
INPUT = "input.1"
FRAME = (1280, 720)
VARIANTS = ("qdq", "qop")


def free_model(path: Path) -> Any:
    """The model with the image's size free, its weights no longer listed as inputs (an old
    exporter's habit that stops the quantiser treating them as constants) and opset 13."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    weights = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims, ["B", None, "H", "W"], strict=True):
        if name:
            d.dim_param = name
    for o in model.graph.output:
        od = o.type.tensor_type.shape.dim
        for d, name in zip(od, ["B", None, "h", "w"], strict=True):
            if name:
                d.dim_param = name
    del model.graph.value_info[:]
    return version_converter.convert_version(model, 13)


def blob(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What the detector feeds the network for an image scaled to ``size`` (as ``raw`` does)."""
    return cv2.dnn.blobFromImage(image, 1.0, size, (0, 0, 0), swapRB=True, crop=False)


def as_frame(image: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    """A photograph fitted into a 1280x720 frame (grey borders): the frame, its scale and offset."""
    h, w = image.shape[:2]
    s = min(FRAME[0] / w, FRAME[1] / h)
    small = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    frame = np.full((FRAME[1], FRAME[0], 3), 110, np.uint8)
    x0, y0 = (FRAME[0] - small.shape[1]) // 2, (FRAME[1] - small.shape[0]) // 2
    frame[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return frame, s, x0, y0


def _lit(frame: np.ndarray, light: str, rng: np.random.Generator) -> np.ndarray:
    """The frame as it reaches the network in ``light``: as it is, or darkened as the clips' night
    shots are (mean brightness 15, sensor noise) or burnt out as their glare shots, with its
    contrast normalised as the pipeline does."""
    if light == "day":
        return frame
    if light == "night":
        return _night(frame, rng)
    bright = np.clip(frame.astype(np.float32) * 2.2 + 40, 0, 255).astype(np.uint8)
    settings = RedactionSettings()
    return Frame.from_bgr(bright).bgr(None, None, (settings.dark_below, settings.bright_above))[0]


def calibration_blobs(lights: tuple[str, ...] = ("day",)) -> Iterator[np.ndarray]:
    """Network inputs from the training photographs at the pipeline's sizes: each photograph as a
    frame at 640x352 and 1280x704, and also zoomed twice (faces twice as large), and a look of
    128x128 around each face, the face scaled to about 48 px; in each of ``lights``."""
    notes = json.loads((faces_dev_dir() / "annotations.json").read_text())
    settings = RedactionSettings()
    rng = np.random.default_rng(5)
    for (name, note), light in ((item, light) for item in sorted(notes.items()) for light in lights):
        if note["split"] != "training":
            continue
        image = cv2.imread(str(faces_dev_dir() / name))
        frame, s, x0, y0 = as_frame(image)
        frame = _lit(frame, light, rng)
        yield blob(frame, (640, 352))
        yield blob(frame, (1280, 704))
        h, w = frame.shape[:2]
        zoom = cv2.resize(frame, (w * 2, h * 2))[h // 2 : h // 2 + h, w // 2 : w // 2 + w]
        yield blob(zoom, (640, 352))
        for bx, by, bw, bh in note["boxes_xywh"]:
            box = Box(x0 + bx * s, y0 + by * s, bw * s, bh * s)
            side = max(box.w, box.h) * settings.refresh_context
            win = Box.from_center(box.cx, box.cy, side, side).clipped(w, h)
            if win is None:
                continue
            crop = frame[int(win.y) : int(win.y + win.h), int(win.x) : int(win.x + win.w)]
            yield blob(crop, (128, 128))


def fp32_prefix(model: Any, convolutions: int) -> list[str]:
    """Names every node a model's ``convolutions`` first convolutions (in graph order) need: the
    nodes up to the last of them and the activations right after it, so that none of their
    inputs or outputs is quantised. Unnamed nodes are named (``<op>_<index>``) in place."""
    for n, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{n}"
    if convolutions <= 0:
        return []
    convs = [n for n, node in enumerate(model.graph.node) if node.op_type == "Conv"]
    last = convs[min(convolutions, len(convs)) - 1]
    names = [node.name for node in model.graph.node[: last + 1]]
    tail = set(model.graph.node[last].output)
    for node in model.graph.node[last + 1 :]:
        if node.op_type in ("Relu", "BatchNormalization") and set(node.input) & tail:
            names.append(node.name)
            tail |= set(node.output)
    return names


def make(
    out: Path,
    source: Path,
    lights: tuple[str, ...] = ("day",),
    fp32_convolutions: int = 0,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Write ``fp32.onnx`` (size free, opset 13) and the int8 variants into ``out``; with
    ``fp32_convolutions`` the first that many convolutions (and what lies before them) stay in
    fp32 (``nodes_to_exclude``): the first layers see the raw picture, where a dark face's few
    grey levels are lost to 8-bit activations."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"
    onnx.save(free_model(source), str(fp32))
    pre = out / "fp32-pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    pre_model = onnx.load(str(pre))
    excluded = fp32_prefix(pre_model, fp32_convolutions)
    onnx.save(pre_model, str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration_blobs(lights))

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {INPUT: b}

    made = {}
    formats = {"qdq": QuantFormat.QDQ, "qop": QuantFormat.QOperator}
    for variant, fmt in ((v, formats[v]) for v in variants):
        path = out / f"int8-{variant}.onnx"
        quantize_static(
            str(pre),
            str(path),
            Reader(),
            quant_format=fmt,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
        made[variant] = {"path": str(path), "bytes": path.stat().st_size}
    n = sum(1 for _ in calibration_blobs(lights))
    return {
        "calibration_inputs": n,
        "lights": list(lights),
        "fp32_convolutions": fp32_convolutions,
        "fp32_nodes": excluded,
        "models": made,
    }


class _OrtNet:
    """An onnxruntime session behind the two calls ``CenterFaceDetector`` makes of its network."""

    def __init__(self, path: Path, threads: int = 1, level: str = "all") -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.blob: np.ndarray | None = None

    def setInput(self, blob: np.ndarray) -> None:  # noqa: N802 - cv2.dnn's name
        self.blob = blob

    def forward(self, names: list[str]) -> list[np.ndarray]:
        return self.session.run(names, {INPUT: self.blob})


def detector(kind: str, models: Path, threshold: float) -> CenterFaceDetector:
    """``fp32`` (the project's detector), ``int8`` (the project's int8 detector), ``int8:PATH``
    (the project's int8 detector with another model), ``ort-fp32``, ``ort-<variant>`` or
    ``cv2-<variant>`` (the models in ``models``)."""
    if kind == "int8":  # the project's own int8 detector, with the model it ships
        return CenterFaceDetector(threshold=threshold, runtime="onnxruntime-int8")
    if kind.startswith("int8:"):
        return CenterFaceDetector(threshold=threshold, runtime="onnxruntime-int8", model_path=kind[5:])
    d = CenterFaceDetector(threshold=threshold)
    if kind == "fp32":
        return d
    runtime, variant = kind.split("-", 1)
    path = models / ("fp32.onnx" if variant == "fp32" else f"int8-{variant}.onnx")
    if runtime == "ort":
        d._net = _OrtNet(path)  # type: ignore[assignment]
    else:
        d._net = cv2.dnn.readNetFromONNX(str(path))
    return d


def _stats(v: list[float]) -> list[float]:
    return [round(statistics.fmean(v), 4), round(statistics.pstdev(v), 4)] if v else []


def score(models: Path, kinds: list[str], threshold: float) -> dict[str, Any]:
    """Recall, box errors and unmatched detections per detector, per size band, on the testing
    photographs; the fp32 ``cv2.dnn`` detector is the reference each box is compared with."""
    bands = {
        "full size (>=24 px)": (24, 1e9, False),
        "24-64 px": (24, 64, False),
        "16-24 px": (16, 24, False),
        "night, 24-64 px": (24, 64, True),
    }
    out: dict[str, Any] = {}
    for band, (lo, hi, night) in bands.items():
        per_kind: dict[str, Any] = {}
        reference: list[dict[str, Any]] | None = None
        for kind in kinds:
            d = detector(kind, models, threshold)
            rows = matched(d, "held_out", min_face=lo, max_face=hi, night=night)
            if kind == "fp32":
                reference = rows
            found = [r for r in rows if r["raw"] is not None]
            errs: dict[str, list[float]] = {"dx": [], "dy": [], "w": [], "h": [], "vs_fp32_centre": []}
            for n, r in enumerate(rows):
                if r["raw"] is None:
                    continue
                b = face_boxes(r["raw"], "detector")[0]
                t = r["truth"]
                errs["dx"].append((b.cx - t.cx) / t.w)
                errs["dy"].append((b.cy - t.cy) / t.w)
                errs["w"].append(b.w / t.w)
                errs["h"].append(b.h / t.h)
                ref = reference[n]["raw"] if reference else None
                if ref is not None:
                    rb = face_boxes(ref, "detector")[0]
                    errs["vs_fp32_centre"].append(float(np.hypot(b.cx - rb.cx, b.cy - rb.cy) / t.w))
            per_kind[kind] = {
                "faces": len(rows),
                "found": len(found),
                "recall": round(len(found) / max(1, len(rows)), 4),
                "both_found": sum(
                    1
                    for n, r in enumerate(rows)
                    if r["raw"] is not None and reference and reference[n]["raw"] is not None
                ),
                "dx": _stats(errs["dx"]),
                "dy": _stats(errs["dy"]),
                "abs_centre": _stats(
                    [float(np.hypot(a, b)) for a, b in zip(errs["dx"], errs["dy"], strict=True)]
                ),
                "w_over_truth": _stats(errs["w"]),
                "h_over_truth": _stats(errs["h"]),
                "centre_from_fp32": _stats(errs["vs_fp32_centre"]),
                "false_detections": false_detections(d, lo, hi, night),
            }
        out[band] = per_kind
    out["night looks, 24-64 px"] = {
        kind: dark_looks(detector(kind, models, threshold), 24, 64) for kind in kinds
    }
    return out


def dark_looks(d: CenterFaceDetector, lo: float, hi: float) -> dict[str, int]:
    """Faces found in the small looks the pipeline takes around a known face, in night frames:
    each scaled photograph darkened to mean brightness ``NIGHT`` with sensor noise (not
    normalised as a whole), then a look around each face of ``lo``-``hi`` px (the window and its
    enlargement as ``redaction.pipeline._look_around`` takes them, its contrast normalised there
    as the pipeline does); found when a detection overlaps the face by IoU >= 0.3."""
    settings = RedactionSettings()
    rng = np.random.default_rng(7)
    faces = found = 0
    for _name, image, truth in photographs("held_out"):
        h, w = image.shape[:2]
        for scale in SCALES:
            boxes = [
                Box(t.x * scale, t.y * scale, t.w * scale, t.h * scale)
                for t in truth
                if lo <= min(t.w, t.h) * scale < hi
            ]
            if not boxes:
                continue
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            dark = small.astype(np.float32) * (NIGHT / max(1.0, float(small.mean())))
            dark = np.clip(dark + rng.normal(0, 3, dark.shape), 0, 255).astype(np.uint8)
            frame = Frame.from_bgr(
                np.ascontiguousarray(dark[: dark.shape[0] // 2 * 2, : dark.shape[1] // 2 * 2])
            )
            for box in boxes:
                faces += 1
                found += any(iou(x.box, box) >= 0.3 for x in _look_around(d, frame, box, settings))
    return {"faces": faces, "found": found}


def false_detections(d: CenterFaceDetector, lo: float, hi: float, night: bool = False) -> dict[str, int]:
    """Detections (after NMS) overlapping no annotated face, over the same scaled photographs as
    ``matched`` (faces the photographs leave unannotated count here too)."""
    rng = np.random.default_rng(3)
    total = unmatched = 0
    for _name, image, truth in photographs("held_out"):
        h, w = image.shape[:2]
        for scale in SCALES:
            if not [b for b in truth if lo <= min(b.w, b.h) * scale < hi]:
                continue
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            raw = d.raw(_night(small, rng) if night else small)
            if raw is None:
                continue
            found = [Detection(b, float(s)) for b, s in zip(face_boxes(raw), raw.score, strict=True)]
            kept = nms(found, d.nms_iou)
            scaled = [Box(t.x * scale, t.y * scale, t.w * scale, t.h * scale) for t in truth]
            total += len(kept)
            unmatched += sum(1 for k in kept if max(iou(k.box, t) for t in scaled) < 0.3)
    return {"detections": total, "matching_no_face": unmatched}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", type=Path, default=ROOT / "var" / "int8")
    m.add_argument("--lights", default="day", help="day,night,glare: the light of the calibration frames")
    m.add_argument(
        "--fp32", type=int, default=0, metavar="N", help="keep the first N convolutions in fp32 (graph order)"
    )
    m.add_argument("--variants", default=",".join(VARIANTS), help="qdq,qop: the int8 forms to write")
    s = sub.add_parser("score")
    s.add_argument("--models", type=Path, default=ROOT / "var" / "int8")
    s.add_argument("--kinds", default="fp32,ort-fp32,ort-qdq,ort-qop,cv2-qdq,cv2-qop,int8")
    s.add_argument("--label", default="", help="suffix of the results file's name")
    s.add_argument("--threshold", type=float, default=RedactionSettings().threshold)
    args = parser.parse_args()
    if args.cmd == "make":
        from redaction.detector import centerface_model_path

        result = make(
            args.out,
            centerface_model_path(),
            tuple(args.lights.split(",")),
            args.fp32,
            tuple(args.variants.split(",")),
        )
        print(json.dumps(result, indent=2))
        return 0
    kinds = []
    for k in args.kinds.split(","):
        try:
            detector(k, args.models, args.threshold).raw(np.zeros((64, 64, 3), np.uint8))
            kinds.append(k)
        except Exception as e:  # a runtime that cannot load a model is reported, not fatal
            print(f"{k}: cannot run: {str(e).splitlines()[0][:200]}")
    before = load_average()
    result = score(args.models, kinds, args.threshold)
    data = {"threshold": args.threshold, "load_before": before, "load_after": load_average(), "bands": result}
    for band, by in result.items():
        print(band)
        for k, v in by.items():
            if "recall" not in v:
                print(f"  {k:>8}: found {v['found']}/{v['faces']}")
                continue
            print(
                f"  {k:>8}: found {v['found']}/{v['faces']} ({v['recall']:.3f})  dx {v['dx']}  dy {v['dy']}"
                f"  |c| {v['abs_centre']}  w {v['w_over_truth']}  from fp32 {v['centre_from_fp32']}"
                f"  false {v['false_detections']}"
            )
    name = "centerface-int8-accuracy" + (f"-{args.label}" if args.label else "")
    print(f"written to {write_results(name, data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
