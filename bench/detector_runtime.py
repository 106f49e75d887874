"""Benchmark: CenterFace through ``cv2.dnn`` against ``onnxruntime``, on the same frames.

The redaction runs CenterFace through OpenCV's DNN module. This measures whether onnxruntime
(graph optimisation basic or all, 1 or 2 intra-op threads) would be faster, at the sizes the
pipeline uses: a whole frame at 640x352, a fine pass at 1280x704 and a look of 128x128. The
runtimes take turns within each round, so machine load falls on all of them alike; every round
is kept. onnxruntime and onnx (to make the model's input size free) are not dependencies of
the project: install them into the virtual environment to include them.

    flock /tmp/bench.lock .venv/bin/python bench/detector_runtime.py [--rounds 3] [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import load_average, write_results  # noqa: E402
from redaction.detector import centerface_model_path  # noqa: E402

OUTPUTS = ["537", "538", "539", "540"]
SIZES = [(640, 352), (1280, 704), (128, 128)]


def frames() -> list[np.ndarray]:
    from skimage import data

    return [
        cv2.resize(data.astronaut()[:, :, ::-1], (1280, 720)),
        cv2.resize(data.coffee()[:, :, ::-1], (1280, 720)),
        cv2.resize(data.chelsea()[:, :, ::-1], (1280, 720)),
    ]


def runtimes(threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    path = str(centerface_model_path())
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromONNX(path)

    def opencv(blob: np.ndarray) -> object:
        net.setInput(blob)
        return net.forward(OUTPUTS)

    out: dict[str, Callable[[np.ndarray], object]] = {f"cv2.dnn/{threads}t": opencv}
    try:
        import onnx
        import onnxruntime as ort
        from onnx.tools.update_model_dims import update_inputs_outputs_dims
    except ImportError:
        return out
    ort.set_default_logger_severity(3)
    model = onnx.load(path)
    # Every graph input must be named (the model lists its weights as inputs too); only the
    # image's size and the outputs' become free.
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    outs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    dims["input.1"] = ["B", 3, "H", "W"]
    outs.update(
        {
            "537": ["B", 1, "h", "w"],
            "538": ["B", 2, "h", "w"],
            "539": ["B", 2, "h", "w"],
            "540": ["B", 10, "h", "w"],
        }
    )
    free = update_inputs_outputs_dims(model, dims, outs).SerializeToString()
    for name, level in (
        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(free, options, providers=["CPUExecutionProvider"])
        out[f"onnxruntime-{name}/{threads}t"] = lambda blob, s=session: s.run(OUTPUTS, {"input.1": blob})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    images = frames()
    rounds = []
    for r in range(args.rounds):
        row: dict[str, dict[str, float]] = {}
        for threads in (1, 2):
            for name, run in runtimes(threads).items():
                for w, h in SIZES:
                    blobs = [
                        cv2.dnn.blobFromImage(cv2.resize(i, (w, h)), 1.0, (w, h), (0, 0, 0), swapRB=True)
                        for i in images
                    ]
                    run(blobs[0])  # warm up (allocations, kernels)
                    t0 = time.perf_counter()
                    for k in range(args.repeat):
                        run(blobs[k % len(blobs)])
                    row.setdefault(f"{w}x{h}", {})[name] = round(
                        (time.perf_counter() - t0) * 1000 / args.repeat, 2
                    )
        rounds.append({"round": r + 1, "load_average": load_average(), "ms_per_image": row})
        print(f"round {r + 1} (load {rounds[-1]['load_average'][0]})")
        for size, by in row.items():
            best = min(by, key=by.get)  # type: ignore[arg-type]
            print(
                f"  {size:>9}: " + "  ".join(f"{k} {v:.1f}" for k, v in by.items()) + f"  -> fastest {best}"
            )
    summary: dict[str, dict[str, float]] = {}
    for size in rounds[0]["ms_per_image"]:
        names = rounds[0]["ms_per_image"][size]
        summary[size] = {n: statistics.median(rd["ms_per_image"][size][n] for rd in rounds) for n in names}
    path = write_results("detector-runtime", {"rounds": rounds, "median_ms": summary})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
