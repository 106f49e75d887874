"""Benchmark: face redaction on body-worn camera footage cut from real photographs.

Two clips are made by ``firmware_simulators.shots`` (1280x720, 30 fps): one from the ``tune`` split
(the faces-dev training photographs, even LFW faces, the astronaut) that the settings may be
tuned on, and one from the ``held_out`` split (the testing photographs, odd LFW faces) that they
must not be. Each is a run of short shots joined by hard cuts: crowds passed by a walking camera,
night, glare, people walking past a wall at a distance (24-40 px, 8-20 px a frame), and a face
coming closer (24-200 px), with walking shake and motion blur, and every face box known.

On each clip, in the same run: a plain x264 transcode with the same encoder settings (the floor:
decode + encode), this project's redaction with solid masks, its head option, and ``deface``
(default, and with ``--scale 640x360``), each mask filled with one magenta colour so every run is
scored the same way, from the pixels of its output:

- coverage: face-frames (faces >= 24 px, at least half in view) with >= 90 % of the box masked,
  in all, by size band and by shot kind;
- longest uncovered run: the most frames in a row any one face of that kind went unmasked;
- non-face pixels changed: masked pixels outside every face box, over all pixels outside them,
  and frames with more than half the picture masked;
- fps, and fps over the same run's x264 transcode fps.

Timed runs are repeated (``--runs``); every run is kept. ``--face-boxes track,detector,landmarks`` runs
the redaction once for each way of turning the detector's output into a face box
(``redaction.detector.face_boxes``); ``--margins 1.4,1.5,1.6`` also scores each first run's record
with its masks grown about their centres to those scales (the same detections and tracks with
another ``mask_scale``); ``--runtimes opencv,onnxruntime-int8`` runs it once for each way the
detector runs (``redaction.detector.Runtime``; by default the one the service runs), in turn within each run, in the order given
(``onnxruntime-int8=PATH`` runs the int8 runtime with another model, named after its folder);
``--spill`` breaks the non-face pixels changed down by cause (``spill_causes``); ``--seed``,
``--kinds`` and ``--darker`` make other clips (another draw, only some shot kinds, darker and
noisier than the shots' own night) to try a rule on footage it was not chosen on. Run under
``flock /tmp/bench.lock``.

    .venv/bin/python bench/redaction.py [--seconds 30] [--runs 3] [--no-deface] [--sets tune,held_out]
        [--face-boxes track,detector,landmarks] [--margins 1.4,1.5,1.6] [--runtimes opencv,onnxruntime-int8]
        [--misses] [--spill] [--seed N] [--kinds night,night] [--darker 0.6,3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import load_average, write_results  # noqa: E402
from firmware_simulators.shots import ShotClip, render_shots  # noqa: E402
from redaction.coverage import KnownFace, mask_shares, score, size_band  # noqa: E402
from redaction.detector import CenterFaceDetector, FaceBox, Runtime  # noqa: E402
from redaction.geometry import Box  # noqa: E402
from redaction.media import ffmpeg_exe  # noqa: E402
from redaction.pipeline import RedactionSettings, redact_clip  # noqa: E402
from redaction.render import _ellipse, _pixel_bounds, _power  # noqa: E402
from storage.settings import WorkerSettings  # noqa: E402

MAGENTA = (255, 0, 255)  # BGR fill of every run's masks
MIN_SIZE = 24
NEEDED = 0.9
BANDS = (24, 32, 48, 64, 96, 128)
SEEDS = {"tune": 11, "held_out": 29}


def magenta(image: np.ndarray) -> np.ndarray:
    """Pixels of the mask colour (after H.264's loss)."""
    b, g, r = (
        image[:, :, 0].astype(np.int16),
        image[:, :, 1].astype(np.int16),
        image[:, :, 2].astype(np.int16),
    )
    return (b > 150) & (r > 150) & (g < 110) & (np.abs(b - r) < 90)


def score_output(
    source: Path, output: Path, clip: ShotClip, shares: dict[tuple[int, int], float] | None = None
) -> dict[str, Any]:
    """Score a redacted output against the clip's truth from its pixels (see the module doc);
    ``shares``, when given, gets the share of each scored face-frame (frame, face) hidden."""
    src = cv2.VideoCapture(str(source))
    out = cv2.VideoCapture(str(output))
    kinds = [k for _, k in clip.shots]
    starts = [s for s, _ in clip.shots]
    per_kind: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"face_frames": 0, "hidden": 0, "bands": defaultdict(lambda: [0, 0])}
    )
    runs: dict[int, int] = defaultdict(int)  # track -> current uncovered run
    longest: dict[str, int] = defaultdict(int)
    longest_any = (0, None)
    nonface_changed = 0
    nonface_total = 0
    kind_nonface: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    frames_over_half = 0
    frames = 0
    for index in range(clip.frames):
        ok_s, a = src.read()
        ok_o, b = out.read()
        if not ok_s:
            break
        kind = kinds[int(np.searchsorted(starts, index, side="right")) - 1]
        h, w = a.shape[:2]
        masked = magenta(b) & ~magenta(a) if ok_o else np.zeros((h, w), bool)
        face_area = np.zeros((h, w), bool)
        faces = clip.faces.get(index, [])
        for f in faces:
            x, y, bw, bh = f.box
            face_area[
                max(0, int(y)) : max(0, int(np.ceil(y + bh))), max(0, int(x)) : max(0, int(np.ceil(x + bw)))
            ] = True
        nonface = ~face_area
        changed_here = int(np.count_nonzero(masked & nonface))
        nonface_changed += changed_here
        nonface_total += int(np.count_nonzero(nonface))
        kind_nonface[kind][0] += changed_here
        kind_nonface[kind][1] += int(np.count_nonzero(nonface))
        frames_over_half += int(np.count_nonzero(masked)) > 0.5 * h * w
        frames += 1
        seen = set()
        for f in faces:
            if f.size < MIN_SIZE or f.visible < 0.5:
                continue
            x, y, bw, bh = f.box
            x0, y0 = max(0, int(x)), max(0, int(y))
            x1, y1 = min(w, int(np.ceil(x + bw))), min(h, int(np.ceil(y + bh)))
            share = float(masked[y0:y1, x0:x1].mean()) if x1 > x0 and y1 > y0 else 1.0
            hidden = share >= NEEDED
            if shares is not None:
                shares[(index, f.track)] = share
            k = per_kind[kind]
            k["face_frames"] += 1
            k["hidden"] += hidden
            k["bands"][size_band(f.size, BANDS)][0] += hidden
            k["bands"][size_band(f.size, BANDS)][1] += 1
            seen.add(f.track)
            runs[f.track] = 0 if hidden else runs[f.track] + 1
            longest[kind] = max(longest[kind], runs[f.track])
            if runs[f.track] > longest_any[0]:
                longest_any = (
                    runs[f.track],
                    {"track": f.track, "frame": index, "kind": kind, "size": round(f.size, 1)},
                )
        for t in list(runs):
            if t not in seen:
                del runs[t]
    src.release()
    out.release()
    total_ff = sum(k["face_frames"] for k in per_kind.values())
    total_hidden = sum(k["hidden"] for k in per_kind.values())
    bands: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for k in per_kind.values():
        for name, (hid, n) in k["bands"].items():
            bands[name][0] += hid
            bands[name][1] += n
    return {
        "coverage": round(total_hidden / max(1, total_ff), 4),
        "face_frames": total_ff,
        "by_band": {b: round(v[0] / v[1], 4) for b, v in sorted(bands.items())},
        "by_kind": {
            kind: {
                "coverage": round(v["hidden"] / max(1, v["face_frames"]), 4),
                "face_frames": v["face_frames"],
                "longest_uncovered": longest[kind],
                "nonface_changed": round(kind_nonface[kind][0] / max(1, kind_nonface[kind][1]), 4),
            }
            for kind, v in sorted(per_kind.items())
        },
        "longest_uncovered": longest_any[0],
        "longest_uncovered_at": longest_any[1],
        "nonface_changed": round(nonface_changed / max(1, nonface_total), 4),
        "frames_over_half_masked": frames_over_half,
        "frames_scored": frames,
    }


def score_margins(
    record: list[list[dict[str, Any]]], clip: ShotClip, settings: RedactionSettings, margins: list[float]
) -> dict[str, Any]:
    """Score a run's per-frame record with its masks grown about their centres to other margins
    (what the same detections and tracks would give with another ``mask_scale``): coverage, longest
    uncovered run and non-face pixels changed, as ``score_output`` counts them."""
    faces = [
        KnownFace(frame, f.track, Box(*f.box), f.size, f.visible)
        for frame, fs in clip.faces.items()
        for f in fs
    ]
    out: dict[str, Any] = {}
    for margin in margins:
        factor = margin / settings.mask_scale
        scaled = [[{**n, "box": Box(*n["box"]).scaled(factor).rounded()} for n in notes] for notes in record]
        report = score(mask_shares(faces, scaled, clip.width, clip.height), min_size=MIN_SIZE, needed=NEEDED)
        changed = total = 0
        for index, notes in enumerate(scaled):
            if index >= clip.frames:
                break
            hit = np.zeros((clip.height, clip.width), bool)
            for n in notes:
                if n.get("excluded"):
                    continue
                box = Box(*n["box"])
                x0, y0, x1, y1 = _pixel_bounds(box, clip.width, clip.height)
                if x1 > x0 and y1 > y0:
                    hit[y0:y1, x0:x1] |= _ellipse(box, x0, y0, x1, y1, _power(n.get("shape", "ellipse")))
            face_area = np.zeros_like(hit)
            for f in clip.faces.get(index, []):
                x, y, bw, bh = f.box
                face_area[
                    max(0, int(y)) : max(0, int(np.ceil(y + bh))),
                    max(0, int(x)) : max(0, int(np.ceil(x + bw))),
                ] = True
            changed += int(np.count_nonzero(hit & ~face_area))
            total += int(np.count_nonzero(~face_area))
        out[f"{margin:.2f}"] = {
            "coverage": round(report.share, 4),
            "longest_uncovered": report.longest_uncovered,
            "nonface_changed": round(changed / max(1, total), 4),
        }
    return out


def spill_causes(
    record: list[list[dict[str, Any]]], clip: ShotClip, settings: RedactionSettings, low_score: float = 0.35
) -> dict[str, Any]:
    """Where the masked non-face pixels come from, by shot kind, as shares of that kind's non-face
    pixels (from the record's masks, as ``score_margins`` draws them): masks whose face box
    touches an annotated face (``margin``: the stated margin and the box's error about a real
    face) are counted first, then masks away from every annotated face (``away``: a false
    detection, a face the photographs leave unannotated, or a mask carried off its face), each by
    how the box came (detected, interpolated, extended), and the share of ``away`` pixels whose
    track never scored ``low_score`` or more; ``floor`` is what masks of the stated margin drawn
    about the annotated boxes themselves would change (a perfect detector's spill). Tells whether over-redaction is margins, holds or
    detections in noise before any rule is changed."""
    starts = [s for s, _ in clip.shots]
    best: dict[int, float] = defaultdict(float)
    for notes in record:
        for n in notes:
            if n.get("source") == "auto" and n.get("kind") == "detected":
                best[n["track"]] = max(best[n["track"]], float(n.get("score", 1.0)))
    shares: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for index, notes in enumerate(record[: clip.frames]):
        kind = clip.shots[int(np.searchsorted(starts, index, side="right")) - 1][1]
        claimed = np.zeros((clip.height, clip.width), bool)
        faces = []
        for f in clip.faces.get(index, []):
            face = Box(*f.box)
            faces.append(face)
            x0, y0, x1, y1 = _pixel_bounds(face, clip.width, clip.height)
            claimed[y0:y1, x0:x1] = True
        shares[kind]["non-face pixels"] += int(np.count_nonzero(~claimed))
        ideal = np.zeros_like(claimed)
        for face in faces:
            grown = face.scaled(settings.mask_scale)
            x0, y0, x1, y1 = _pixel_bounds(grown, clip.width, clip.height)
            if x1 > x0 and y1 > y0:
                ideal[y0:y1, x0:x1] |= _ellipse(grown, x0, y0, x1, y1, _power(settings.shape))
        shares[kind]["floor"] += int(np.count_nonzero(ideal & ~claimed))
        masks = []
        for n in notes:
            if n.get("excluded") or n.get("source") != "auto":
                continue
            box = Box(*n["box"])
            on = any(iou_any(box.scaled(1 / settings.mask_scale), face) for face in faces)
            masks.append((not on, n, box))
        for away, n, box in sorted(masks, key=lambda m: m[0]):
            x0, y0, x1, y1 = _pixel_bounds(box, clip.width, clip.height)
            if x1 <= x0 or y1 <= y0:
                continue
            hit = np.zeros_like(claimed)
            hit[y0:y1, x0:x1] = _ellipse(box, x0, y0, x1, y1, _power(n.get("shape", "ellipse")))
            new = int(np.count_nonzero(hit & ~claimed))
            claimed |= hit
            shares[kind][f"{'away' if away else 'margin'} {n.get('kind', 'detected')}"] += new
            if away and best.get(n.get("track", -1), 0.0) < low_score:
                shares[kind][f"away, never scored {low_score}"] += new
    out: dict[str, Any] = {}
    for kind, counts in sorted(shares.items()):
        total = max(1, counts.pop("non-face pixels"))
        out[kind] = {cause: round(v / total, 4) for cause, v in sorted(counts.items(), key=lambda c: -c[1])}
        floor = counts.pop("floor")
        out[kind]["changed"] = round(
            sum(v for c, v in counts.items() if not c.startswith("away,")) / total, 4
        )
        out[kind]["floor"] = round(floor / total, 4)
    return out


def miss_causes(
    source: Path,
    clip: ShotClip,
    record: list[list[dict[str, Any]]],
    settings: RedactionSettings,
    shares: dict[tuple[int, int], float],
    longer_than: int = 6,
) -> dict[str, Any]:
    """Each run of more than ``longer_than`` frames in which one face went uncovered (``shares``,
    from ``score_output``'s pixels), frame by frame by cause: ``undersized box`` (a mask on the face
    whose face box is under 0.9 of the face's width or height), ``off the face`` (a mask big enough
    but not on it), ``cut`` (no mask, the face's shot had just begun or was about to end and the
    face was found later or earlier in it), ``join`` (no mask, but the face was masked by a track
    before and another after, within the tracker's gap), ``no detection`` (no mask at all); with the
    face's size, its brightness in the source (mean luma of its box) and the masks' scores."""
    starts = [s for s, _ in clip.shots] + [clip.frames]
    faces = [
        KnownFace(frame, f.track, Box(*f.box), f.size, f.visible)
        for frame, fs in clip.faces.items()
        for f in fs
    ]
    by_track: dict[int, list[KnownFace]] = defaultdict(list)
    for f in faces:
        if f.size >= MIN_SIZE and f.visible >= 0.5:
            by_track[f.track].append(f)
    runs: list[list[KnownFace]] = []
    for seen in by_track.values():
        seen.sort(key=lambda f: f.frame)
        run: list[KnownFace] = []
        for f in seen:
            if shares.get((f.frame, f.track), 1.0) < NEEDED and (not run or run[-1].frame == f.frame - 1):
                run.append(f)
                continue
            if len(run) > longer_than:
                runs.append(run)
            run = [f] if shares.get((f.frame, f.track), 1.0) < NEEDED else []
        if len(run) > longer_than:
            runs.append(run)
    wanted = {f.frame for run in runs for f in run}
    luma: dict[int, np.ndarray] = {}
    cap = cv2.VideoCapture(str(source))
    for index in range(clip.frames):
        ok, image = cap.read()
        if not ok:
            break
        if index in wanted:
            luma[index] = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    cap.release()

    def overlapping(frame: int, face: Box) -> list[dict[str, Any]]:
        notes = record[frame] if frame < len(record) else []
        return [n for n in notes if not n.get("excluded") and iou_any(Box(*n["box"]), face)]

    out: list[dict[str, Any]] = []
    totals: dict[str, int] = defaultdict(int)
    for run in runs:
        causes: dict[str, int] = defaultdict(int)
        lumas, scores, ratios = [], [], []
        for f in run:
            shot = int(np.searchsorted(starts, f.frame, side="right")) - 1
            on = overlapping(f.frame, f.box)
            if f.frame in luma:
                x0, y0, x1, y1 = _pixel_bounds(f.box, clip.width, clip.height)
                lumas.append(float(luma[f.frame][y0:y1, x0:x1].mean()))
            if on:
                best = max(on, key=lambda n: _overlap(Box(*n["box"]), f.box))
                face_box = Box(*best["box"]).scaled(1 / settings.mask_scale)
                ratio = min(face_box.w / f.box.w, face_box.h / f.box.h)
                ratios.append(ratio)
                scores += [n["score"] for n in on if "score" in n]
                causes["undersized box" if ratio < 0.9 else "off the face"] += 1
                continue
            masked_frames = [
                g.frame
                for g in by_track[f.track]
                if overlapping(g.frame, g.box) and starts[shot] <= g.frame < starts[shot + 1]
            ]
            before = [g for g in masked_frames if g < f.frame]
            after = [g for g in masked_frames if g > f.frame]
            gap = settings.tracking.max_gap
            if before and after and after[0] - before[-1] <= gap:
                causes["join"] += 1
            elif (
                not before and f.frame - starts[shot] < settings.stride + settings.tracking.keep_before
            ) or (not after and starts[shot + 1] - f.frame <= settings.tracking.keep_after):
                causes["cut"] += 1
            else:
                causes["no detection"] += 1
        for k, v in causes.items():
            totals[k] += v
        kind = clip.shots[int(np.searchsorted(starts, run[0].frame, side="right")) - 1][1]
        out.append(
            {
                "track": run[0].track,
                "frames": [run[0].frame, run[-1].frame],
                "length": len(run),
                "kind": kind,
                "size": [round(min(f.size for f in run)), round(max(f.size for f in run))],
                "luma": round(float(np.median(lumas)), 1) if lumas else None,
                "box_to_face": round(float(np.median(ratios)), 2) if ratios else None,
                "scores": [round(min(scores), 2), round(max(scores), 2)] if scores else None,
                "causes": dict(causes),
            }
        )
    out.sort(key=lambda r: -r["length"])
    return {"runs": out, "frames_by_cause": dict(totals)}


def iou_any(a: Box, b: Box) -> bool:
    """Whether two boxes overlap at all."""
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def _overlap(a: Box, b: Box) -> float:
    w = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    h = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    return max(0.0, w) * max(0.0, h)


def timed(frames: int, run: Any) -> tuple[dict[str, Any], Any]:
    """Wall time and fps, and the CPU a frame of this process and of its finished children
    (ffmpeg), which machine load disturbs less than wall time."""
    t0, c0 = time.perf_counter(), os.times()
    value = run()
    elapsed, c1 = time.perf_counter() - t0, os.times()
    own = (c1.user + c1.system - c0.user - c0.system) * 1000 / frames
    children = (c1.children_user + c1.children_system - c0.children_user - c0.children_system) * 1000 / frames
    return {
        "seconds": round(elapsed, 2),
        "fps": round(frames / elapsed, 2),
        "cpu_ms_per_frame": {"python": round(own, 1), "children": round(children, 1)},
    }, value


def transcode(clip: Path, out: Path, settings: RedactionSettings) -> None:
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(clip), "-c:v", "libx264"]
    cmd += ["-preset", settings.preset, "-crf", str(settings.crf), "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, check=True)


def deface_command() -> str | None:
    found = shutil.which("deface") or str(Path(sys.executable).parent / "deface")
    return found if Path(found).exists() else None


def deface_backend() -> str:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        return "onnxruntime"
    except ImportError:
        return "opencv"


def darken(path: Path, gain: float, noise: float, seed: int) -> None:
    """Make a rendered clip darker and noisier in place (every pixel times ``gain``, plus sensor
    noise of ``noise`` grey levels): footage darker than the shots' own night, with the same
    face boxes, to see a rule on light it was not chosen on."""
    rng = np.random.default_rng(seed)
    src = path.with_name(path.stem + "-bright.mp4")
    path.rename(src)
    cap = cv2.VideoCapture(str(src))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24"]
    cmd += ["-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0", "-c:v", "libx264"]
    cmd += ["-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-g", "60", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    while True:
        ok, image = cap.read()
        if not ok:
            break
        dark = image.astype(np.float32) * gain + rng.normal(0, noise, image.shape[:2])[:, :, None]
        proc.stdin.write(np.clip(dark, 0, 255).astype(np.uint8).tobytes())
    cap.release()
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed darkening {path}")
    src.unlink()


def run_set(split: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    seed = args.seed if args.seed is not None else SEEDS[split]
    kinds_wanted = tuple(args.kinds.split(",")) if args.kinds else None
    name = f"{split}-{args.seconds:g}s-{args.width}x{args.height}"
    name += f"-seed{seed}" if args.seed is not None else ""
    name += f"-{'+'.join(kinds_wanted)}" if kinds_wanted else ""
    name += f"-darker{args.darker[0]:g}x{args.darker[1]:g}" if args.darker else ""
    clip_path = (args.clips or work) / f"{name}.mp4"
    truth_path = clip_path.with_suffix(".json")
    t0 = time.perf_counter()
    if args.clips and clip_path.exists() and truth_path.exists():
        clip = ShotClip.load(truth_path)
    else:
        print(f"[{split}] rendering {args.seconds:g} s of shots ...", flush=True)
        clip = render_shots(
            clip_path,
            args.seconds,
            split=split,
            seed=seed,
            width=args.width,
            height=args.height,
            kinds=kinds_wanted,
        )
        if args.darker:
            darken(clip_path, args.darker[0], args.darker[1], seed)
        clip.save(truth_path)
    kinds: dict[str, int] = defaultdict(int)
    for _, k in clip.shots:
        kinds[k] += 1
    out: dict[str, Any] = {
        "clip": {
            "split": split,
            "seed": seed,
            "kinds": list(kinds_wanted) if kinds_wanted else None,
            "darker": list(args.darker) if args.darker else None,
            "frames": clip.frames,
            "size": [clip.width, clip.height],
            "fps": clip.fps,
            "shots": [list(s) for s in clip.shots],
            "shot_kinds": dict(kinds),
            "face_frames_24px": sum(
                1 for fs in clip.faces.values() for f in fs if f.size >= MIN_SIZE and f.visible >= 0.5
            ),
            "render_seconds": round(time.perf_counter() - t0, 1),
        },
        "runs": [],
    }
    solid = RedactionSettings(style="solid", colour=MAGENTA)
    variants: dict[str, tuple[RedactionSettings, str, Path | None]] = {}
    for spec in args.runtimes.split(","):
        runtime, _, model = spec.partition("=")
        for face_box in args.face_boxes.split(","):
            name = "redaction" if face_box == RedactionSettings.face_box else f"redaction_{face_box}"
            name += "" if runtime == "opencv" else "_int8"
            name += f"_{Path(model).parent.name or Path(model).stem}" if model else ""
            settings = replace(
                solid, detector_runtime=cast(Runtime, runtime), face_box=cast(FaceBox, face_box)
            )
            variants[name] = (settings, face_box, Path(model) if model else None)
    if args.heads:
        variants["redaction_heads"] = (
            RedactionSettings(style="solid", colour=MAGENTA, cover="head"),
            RedactionSettings.face_box,
            None,
        )
    deface = None if args.no_deface else deface_command()
    magenta_png = work / "magenta.png"
    cv2.imwrite(str(magenta_png), np.full((8, 8, 3), MAGENTA, np.uint8))
    for n in range(args.runs):
        run: dict[str, Any] = {"run": n + 1, "load_average_before": load_average()}
        if args.x264:
            stats, _ = timed(clip.frames, lambda: transcode(clip_path, work / "x264.mp4", solid))
            run["x264_transcode"] = stats
        base_fps = run.get("x264_transcode", {}).get("fps", float("nan"))
        for name, (settings, face_box, model) in variants.items():
            if name == "redaction_heads" and n > 0:
                continue  # the head option's cost is in its masks, scored on the first run
            dst = work / f"{name}.mp4"
            print(f"[{split}] run {n + 1}: {name} ...", flush=True)
            stats, result = timed(
                clip.frames,
                lambda s=settings, d=dst, fb=face_box, m=model: redact_clip(
                    clip_path,
                    d,
                    s,
                    detector=CenterFaceDetector(
                        threshold=s.threshold, face_box=fb, runtime=s.detector_runtime, model_path=m
                    ),
                ),
            )
            entry = {**stats, "vs_x264": round(stats["fps"] / base_fps, 3)}
            if n == 0 or args.score_every_run:
                shares: dict[tuple[int, int], float] = {}
                entry["score"] = score_output(clip_path, dst, clip, shares)
                entry["detection_frames"] = result.detection_frames
                entry["looks"] = result.refresh_looks
                entry["tracks"] = result.tracks
                entry["detector"] = result.detector
                if args.margins:
                    margins = [float(m) for m in args.margins.split(",")]
                    entry["margins"] = score_margins(result.record, clip, settings, margins)
                if args.misses:
                    entry["misses"] = miss_causes(clip_path, clip, result.record, settings, shares)
                if args.spill:
                    entry["spill"] = spill_causes(result.record, clip, settings)
            run[name] = entry
        if deface and (n == 0 or args.deface_every_run):
            for name, extra in (("deface", []), ("deface_640x360", ["--scale", "640x360"])):
                dst = work / f"{name}.mp4"
                cmd = [deface, str(clip_path), "-o", str(dst), "--replacewith", "img"]
                cmd += ["--replaceimg", str(magenta_png), *extra]
                print(f"[{split}] run {n + 1}: {name} ...", flush=True)
                stats, _ = timed(
                    clip.frames, lambda c=cmd: subprocess.run(c, check=True, capture_output=True)
                )
                run[name] = {
                    **stats,
                    "vs_x264": round(stats["fps"] / base_fps, 3),
                    "backend": deface_backend(),
                    "command": " ".join(["deface", "CLIP", "-o", "OUT", *cmd[5:6], "img", *extra]),
                    "score": score_output(clip_path, dst, clip),
                }
        run["load_average_after"] = load_average()
        out["runs"].append(run)
        print_run(split, run)
    return out


def print_run(split: str, run: dict[str, Any]) -> None:
    print(f"\n[{split}] run {run['run']} (load {run['load_average_before'][0]})")
    print(f"  {'case':<18} {'fps':>6} {'/x264':>6} {'cover':>7} {'longest':>7} {'nonface':>8} {'>half':>6}")
    for name, v in run.items():
        if not isinstance(v, dict) or "fps" not in v:
            continue
        sc = v.get("score")
        line = f"  {name:<18} {v['fps']:>6.1f} {v.get('vs_x264', 1.0):>6.3f}"
        if sc:
            line += f" {sc['coverage'] * 100:>6.2f}% {sc['longest_uncovered']:>7} {sc['nonface_changed'] * 100:>7.2f}% {sc['frames_over_half_masked']:>6}"
        print(line)
        if sc:
            kinds = "  ".join(
                f"{k} {v2['coverage'] * 100:.1f}%/{v2['longest_uncovered']}/{v2['nonface_changed'] * 100:.1f}%"
                for k, v2 in sc["by_kind"].items()
            )
            print(f"      by kind (coverage/longest run/non-face): {kinds}")
            print("      by band: " + "  ".join(f"{b} {c * 100:.1f}%" for b, c in sc["by_band"].items()))
        misses = v.get("misses")
        if misses:
            print(f"      uncovered runs > 6 frames, frames by cause: {misses['frames_by_cause']}")
            for r in misses["runs"]:
                print(
                    f"        face {r['track']} {r['kind']} frames {r['frames'][0]}-{r['frames'][1]} ({r['length']}):"
                    f" {r['size'][0]}-{r['size'][1]} px, luma {r['luma']}, face box {r['box_to_face']} of the face,"
                    f" scores {r['scores']}: {r['causes']}"
                )
        for kind, causes in v.get("spill", {}).items():
            print(
                f"      non-face changed, {kind}: "
                + ", ".join(f"{c} {x * 100:.2f}%" for c, x in causes.items())
            )
        for m, r in v.get("margins", {}).items():
            print(
                f"      record, ellipse {m}: {r['coverage'] * 100:.2f}% {r['longest_uncovered']}"
                f" {r['nonface_changed'] * 100:.2f}%"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sets", default="tune,held_out")
    parser.add_argument("--no-deface", action="store_true")
    parser.add_argument("--no-heads", dest="heads", action="store_false")
    parser.add_argument(
        "--face-boxes",
        default=RedactionSettings.face_box,
        help="face box rules to run side by side (track,detector,landmarks: see redaction.detector.face_boxes)",
    )
    parser.add_argument(
        "--margins", default="", help="also score the record at these mask scales, e.g. 1.4,1.5,1.6"
    )
    parser.add_argument(
        "--runtimes",
        default=WorkerSettings.model_fields["redaction_detector"].default,  # what the service runs
        help="detector runtimes to run side by side, in turn (opencv,onnxruntime-int8: see redaction.detector.Runtime;"
        " onnxruntime-int8=PATH: with another int8 model)",
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="break each first run's uncovered runs over 6 frames down by cause",
    )
    parser.add_argument(
        "--spill",
        action="store_true",
        help="break each first run's non-face pixels changed down by cause (margins, masks away from faces)",
    )
    parser.add_argument("--seed", type=int, help="draw every clip from this seed instead of its split's own")
    parser.add_argument("--kinds", default="", help="only these shot kinds, one shot each, e.g. night,night")
    parser.add_argument(
        "--darker",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        help="GAIN,NOISE: every pixel times GAIN plus sensor noise of NOISE grey levels, e.g. 0.6,3",
    )
    parser.add_argument("--score-every-run", action="store_true")
    parser.add_argument("--deface-every-run", action="store_true")
    parser.add_argument("--name", default="redaction")
    parser.add_argument("--clips", type=Path, help="keep rendered clips here and reuse them")
    parser.add_argument(
        "--no-x264", dest="x264", action="store_false", help="skip the transcode (scoring only)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-redaction-"))
    try:
        sets = {split: run_set(split, args, work) for split in args.sets.split(",")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results(
        args.name,
        {
            "targets": {"coverage": 0.95, "longest_uncovered": 6, "nonface_changed": 0.03, "fps": 30},
            "settings": RedactionSettings().to_json(),
            "sets": sets,
        },
    )
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
