"""Benchmark: CenterFace through ``cv2.dnn`` against ``onnxruntime``, on the same frames.

The redaction runs CenterFace through OpenCV's DNN module. This measures whether onnxruntime
(graph optimisation basic or all, 1 or 2 intra-op threads) would be faster, at the sizes the
pipeline uses: a whole frame at 640x352, a fine pass at 1280x704 and a look of 128x128. The
runtimes take turns within each round, so machine load falls on all of them alike; every round
is kept. onnxruntime and onnx (to make the model's input size free) are not dependencies of
the project: install them into the virtual environment to include them.

With ``--int8 DIR`` (the models ``bench/centerface_int8.py make`` writes) the int8 models join
the turns: through onnxruntime (QDQ and QOperator form, optimisation basic and all) and through
``cv2.dnn`` where it loads them. Each time is also given as a ratio to fp32 ``cv2.dnn`` with the
same threads in the same round.

    flock -x /tmp/bench.lock .venv/bin/python bench/detector_runtime.py [--rounds 3] [--repeat 10]
        [--int8 var/int8]
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


def runtimes(threads: int, int8: Path | None = None) -> dict[str, Callable[[np.ndarray], object]]:
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
    for variant in ("qdq", "qop") if int8 else ():
        assert int8 is not None
        model = str(int8 / f"int8-{variant}.onnx")
        for name, level in (
            ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
            ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ):
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            out[f"ort-int8-{variant}-{name}/{threads}t"] = lambda blob, s=session: s.run(
                OUTPUTS, {"input.1": blob}
            )
        try:
            qnet = cv2.dnn.readNetFromONNX(model)
            qnet.setInput(np.zeros((1, 3, 64, 64), np.float32))
            qnet.forward(OUTPUTS)
        except cv2.error as e:
            print(f"cv2.dnn cannot run int8-{variant}: {str(e).strip().splitlines()[-1][:160]}")
            continue

        def opencv_int8(blob: np.ndarray, n: cv2.dnn.Net = qnet) -> object:
            n.setInput(blob)
            return n.forward(OUTPUTS)

        out[f"cv2.dnn-int8-{variant}/{threads}t"] = opencv_int8
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--int8", type=Path, default=None, help="folder of the int8 models")
    parser.add_argument("--label", default="", help="suffix of the results file's name")
    args = parser.parse_args()
    images = frames()
    rounds = []
    for r in range(args.rounds):
        row: dict[str, dict[str, float]] = {}
        load_before = load_average()
        for threads in (1, 2):
            for name, run in runtimes(threads, args.int8).items():
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
        ratio = {
            size: {k: round(v / by[f"cv2.dnn/{k.rsplit('/', 1)[1]}"], 3) for k, v in by.items()}
            for size, by in row.items()
        }
        rounds.append(
            {
                "round": r + 1,
                "load_before": load_before,
                "load_average": load_average(),
                "ms_per_image": row,
                "of_cv2_dnn_fp32": ratio,
            }
        )
        print(f"round {r + 1} (load {load_before[0]} before, {rounds[-1]['load_average'][0]} after)")
        for size, by in row.items():
            best = min(by, key=by.get)  # type: ignore[arg-type]
            print(f"  {size:>9}: -> fastest {best}")
            for k, v in by.items():
                print(f"      {k:<32} {v:8.1f} ms  {ratio[size][k]:.2f}")
    summary: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for size in rounds[0]["ms_per_image"]:
        names = rounds[0]["ms_per_image"][size]
        summary[size] = {n: statistics.median(rd["ms_per_image"][size][n] for rd in rounds) for n in names}
        ratios[size] = {n: statistics.median(rd["of_cv2_dnn_fp32"][size][n] for rd in rounds) for n in names}
    name = "detector-runtime" + (f"-{args.label}" if args.label else "")
    path = write_results(name, {"rounds": rounds, "median_ms": summary, "median_of_cv2_dnn_fp32": ratios})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
