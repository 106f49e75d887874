"""Redaction on footage cut from real photographs: hard cuts, fast small faces, the one-file command.

The clips come from ``firmware_simulators.shots`` (faces-dev photographs and the scikit-image
faces, composed into shots with exact face boxes), rendered with the real ffmpeg and redacted by
the real pipeline with the real detector.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import EvidenceItem
from firmware_simulators import shots
from firmware_simulators.shots import ShotClip, faces_dev_dir, render_shots
from redaction import jobs
from redaction.cuts import CutDetector
from redaction.detector import Detection
from redaction.geometry import Box
from redaction.media import FrameReader, probe
from redaction.pipeline import RedactionResult, RedactionSettings, redact_clip
from redaction.render import Mask, covered
from redaction.tracking import FaceTracker, TrackingSettings
from tests.conftest import settings_env

SOLID = RedactionSettings(style="solid")


def masks_in(notes: list[dict]) -> list[Mask]:
    return [Mask(Box(*n["box"]), n.get("shape", "ellipse")) for n in notes if not n.get("excluded")]


def face_runs(clip: ShotClip, result: RedactionResult, min_size: float = 24) -> dict[int, list[bool]]:
    """For each face (track of the truth), frame by frame, whether the record's masks hid >= 90 % of it."""
    out: dict[int, list[bool]] = {}
    for frame, faces in sorted(clip.faces.items()):
        for f in faces:
            if f.size < min_size or f.visible < 0.5:
                continue
            share = covered(Box(*f.box), masks_in(result.record[frame]), clip.width, clip.height)
            out.setdefault(f.track, []).append(share >= 0.9)
    return out


def longest_false(flags: list[bool]) -> int:
    best = run = 0
    for ok in flags:
        run = 0 if ok else run + 1
        best = max(best, run)
    return best


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ShotClip, RedactionResult]:
    work = tmp_path_factory.mktemp("cuts")
    src = work / "cuts.mp4"
    clip = render_shots(
        src, 6, split="tune", seed=5, width=640, height=360, kinds=("approach", "crowd", "walkers")
    )
    result = redact_clip(src, work / "out.mp4", SOLID)
    return src, clip, result


def test_cut_detector_finds_exactly_the_cuts_of_real_footage(cut_clip) -> None:  # type: ignore[no-untyped-def]
    src, clip, _ = cut_clip
    detector = CutDetector()
    found = []
    with FrameReader(src, probe(src)) as reader:
        for index, frame in enumerate(reader):
            if detector.update(frame.y):
                found.append(index)
    assert found == [start for start, _ in clip.shots]
    assert cut_clip[2].shots == found  # the pipeline found the same cuts, and no others


def test_no_track_or_hold_crosses_a_cut(cut_clip) -> None:  # type: ignore[no-untyped-def]
    _, clip, result = cut_clip
    starts = [start for start, _ in clip.shots]
    shot_of_track: dict[int, set[int]] = {}
    for frame, notes in enumerate(result.record):
        for note in notes:
            if note["source"] == "auto":
                shot_of_track.setdefault(note["track"], set()).add(clip.shot_of(frame))
    assert shot_of_track, "the detector found faces"
    assert all(len(shots) == 1 for shots in shot_of_track.values()), shot_of_track
    # Around each cut every mask lies on a face of its own frame, or is a hold of a sighting in its
    # own shot no further away than the holds reach (a photograph's unannotated faces are detected
    # too): nothing is held over from the shot before or reaches back from the shot after.
    sighted: dict[int, list[int]] = {}
    for frame, notes in enumerate(result.record):
        for note in notes:
            if note["source"] == "auto" and note["kind"] == "detected":
                sighted.setdefault(note["track"], []).append(frame)
    reach = max(SOLID.tracking.keep_before, SOLID.tracking.keep_after)
    for cut in starts[1:]:
        for frame in (cut - 2, cut - 1, cut, cut + 1):
            faces = [Box(*f.box) for f in clip.faces.get(frame, [])]
            for note in result.record[frame]:
                if note.get("excluded") or any(_overlaps(Box(*note["box"]), face) for face in faces):
                    continue
                near = [f for f in sighted.get(note["track"], []) if abs(f - frame) <= reach]
                assert near and all(clip.shot_of(f) == clip.shot_of(frame) for f in near), (frame, note)


def _overlaps(a: Box, b: Box) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def test_tracker_ends_tracks_at_a_cut_and_holds_stop_there() -> None:
    tracker = FaceTracker(TrackingSettings(keep_before=6, keep_after=6, smooth=0))
    for f in range(0, 10, 2):
        tracker.observe(f, [Detection(Box(100 + f, 100, 30, 30), 0.9)])
    tracker.cut(11)
    tracker.observe(12, [Detection(Box(110, 100, 30, 30), 0.9)])  # same place, another shot
    assert {b.track for b in tracker.boxes_at(10)} == {0}  # hold-after inside its own shot
    assert {b.track for b in tracker.boxes_at(11)} == {1}  # no hold-after across, hold-before from 11 only
    assert tracker.track_count == 2


def test_fast_small_face_sightings_join_one_track_and_the_mask_follows_between() -> None:
    """A 26 px face at 14 px a frame seen every sixth frame: three face widths between sightings."""
    tracker = FaceTracker()
    truth = {f: Box(40 + 14 * f, 200, 26, 26) for f in range(60)}
    for f in range(0, 60, 6):
        tracker.observe(f, [Detection(truth[f], 0.8)])
    assert tracker.track_count == 1
    for f in range(60):
        boxes = tracker.boxes_at(f)
        assert len(boxes) == 1
        assert covered(truth[f], [Mask(boxes[0].box.scaled(SOLID.mask_scale))], 1280, 720) >= 0.9


def test_a_fast_small_face_walking_past_is_covered_between_detections(tmp_path: Path) -> None:
    src = tmp_path / "walkers.mp4"
    clip = render_shots(src, 4, split="held_out", seed=3, kinds=("walkers",))
    speeds = _speeds(clip)
    assert speeds and max(speeds.values()) >= 8  # the clip has a fast walker at a distance
    result = redact_clip(src, tmp_path / "out.mp4", SOLID)
    assert result.detection_frames < clip.frames / 3  # whole-frame detection only now and then
    runs = face_runs(clip, result)
    hidden = sum(sum(flags) for flags in runs.values())
    total = sum(len(flags) for flags in runs.values())
    assert hidden / total >= 0.95, {t: longest_false(f) for t, f in runs.items()}
    assert max(longest_false(flags) for flags in runs.values()) <= 6
    # Each walker is one track (not a trail of new ones): few tracks for the faces crossing.
    assert result.tracks <= 2 * len(runs)


@pytest.mark.skipif(
    not (faces_dev_dir() / "annotations.json").exists(),
    reason="needs the faces-dev photographs beside the repository",
)
def test_turned_faces_in_a_crowd_are_covered_where_the_detectors_box_sits_off_them(tmp_path: Path) -> None:
    """Faces of the faces-dev photographs turned to one side: the detector's box follows their
    features and sits up to a quarter of a face off the hand-drawn box, so a mask of the stated
    margin left part of the face bare for 14 frames in a row; moved by each face's landmark lean,
    the masks hold it."""
    assert_shot_held(tmp_path, "crowd", seed=4, face_frames=500)


def assert_shot_held(tmp_path: Path, kind: str, seed: int, face_frames: int) -> None:
    """Redact a 3 s shot of ``kind`` from the tune photographs: more than ``face_frames`` scored
    face-frames, >= 98 % of them hidden, none bare more than 6 frames in a row."""
    src = tmp_path / f"{kind}.mp4"
    clip = render_shots(src, 3, split="tune", seed=seed, kinds=(kind,))
    result = redact_clip(src, tmp_path / "out.mp4", SOLID)
    runs = face_runs(clip, result)
    hidden = sum(sum(flags) for flags in runs.values())
    total = sum(len(flags) for flags in runs.values())
    assert total > face_frames
    assert hidden / total >= 0.98, {t: longest_false(f) for t, f in runs.items()}
    assert max(longest_false(flags) for flags in runs.values()) <= 6


def _speeds(clip: ShotClip) -> dict[int, float]:
    first: dict[int, tuple[int, float]] = {}
    speed: dict[int, float] = {}
    for frame, faces in sorted(clip.faces.items()):
        for f in faces:
            cx = f.box[0] + f.box[2] / 2
            if f.track in first:
                f0, x0 = first[f.track]
                speed[f.track] = abs(cx - x0) / max(1, frame - f0)
            else:
                first[f.track] = (frame, cx)
    return {
        t: v
        for t, v in speed.items()
        if min(f.size for fs in clip.faces.values() for f in fs if f.track == t) < 42
    }


def test_command_line_redaction_gives_the_same_output_as_a_workers_job(
    sqlite_services, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    s = sqlite_services
    src = tmp_path / "clip.mp4"
    render_shots(src, 2, split="tune", seed=8, width=640, height=360, kinds=("walkers", "crowd"))
    spec = {
        "settings": {"style": "pixelate"},
        "manual_regions": [{"start": 0.2, "end": 1.0, "x": 10, "y": 10, "w": 60, "h": 40}],
    }
    with open(src, "rb") as f:
        stored = s.store.put_stream(
            "clips/test/cli.mp4",
            f,
            retain_until=datetime.now(UTC) + timedelta(days=1),
            content_type="video/mp4",
        )
    with s.db.session() as session:
        item = record_evidence(
            session, s.ledger, stored, Provenance(kind="clip", actor="test", content_type="video/mp4")
        )
        job = jobs.enqueue(session, item.id, "service", spec)
        job_id = job.id
    assert s.redaction_worker().run_once() == job_id
    with s.db.session() as session:
        done = session.get(jobs.RedactionJob, job_id)
        assert done is not None and done.status == "done", done and done.error
        video = session.get(EvidenceItem, done.result_item_id)
        record = session.get(EvidenceItem, done.record_item_id)
        worker_video = s.store.get_bytes(video.object_key, video.version_id)
        worker_record = json.loads(s.store.get_bytes(record.object_key, record.version_id))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out, rec = tmp_path / "cli.mp4", tmp_path / "cli.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "redact",
            str(src),
            str(out),
            "--spec",
            str(tmp_path / "spec.json"),
            "--record",
            str(rec),
        ],
        env=settings_env(s.settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "frames" in proc.stderr  # the progress bar and the summary go to the terminal
    (tmp_path / "worker.mp4").write_bytes(worker_video)
    cli_record = json.loads(rec.read_text())
    assert cli_record["record"] == worker_record["record"]
    assert cli_record["settings"] == worker_record["settings"]
    # Both ran the service's default detector: the int8 model the package ships, through onnxruntime.
    assert cli_record["detector"] == worker_record["detector"]
    assert worker_record["detector"]["runtime"].startswith("onnxruntime")
    assert worker_record["detector"]["model"] == "centerface-int8-fp6.onnx"
    assert any(n["source"] == "manual" for frame in cli_record["record"] for n in frame)
    assert _frames(out) == _frames(tmp_path / "worker.mp4")


def _frames(path: Path) -> list[bytes]:
    import hashlib

    with FrameReader(path, probe(path)) as reader:
        return [hashlib.sha256(np.ascontiguousarray(f.buffer).data).digest() for f in reader]


def test_a_face_seen_once_is_not_joined_to_another_face_across_the_picture(tmp_path: Path) -> None:
    """Real faces on a wall: a face is in view for one frame only (it turns away), and ten
    frames later another face comes into view 950 px to its right. A track seen once has no
    speed yet, and its statistical gate grows with the square of the gap, so the two were joined
    into one track: its mask swept across the empty wall between them (non-face pixels hidden)
    and left where the first face was seen after one frame instead of being held there."""
    from firmware_simulators.scene import face_sources
    from firmware_simulators.shots import _paste, _wall
    from redaction.media import ffmpeg_exe

    width, height, fps = 1280, 720, 30
    wall = _wall(width, height, seed=7)[:height, :width]
    sources = face_sources()
    first, second = sources[-1], sources[10]
    src = tmp_path / "once.mp4"
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24"]
    cmd += ["-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0", "-c:v", "libx264"]
    cmd += ["-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p", str(src)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    boxes: dict[int, list[Box]] = {}
    for index in range(30):
        image = wall.copy()
        if index == 0:
            boxes.setdefault(index, []).append(Box(*_paste(image, first, 150, 360, 90)))
        if index >= 10:
            boxes.setdefault(index, []).append(Box(*_paste(image, second, 1100, 360, 90)))
        proc.stdin.write(image.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    result = redact_clip(src, tmp_path / "out.mp4", SOLID)
    seen = boxes[0][0]
    assert covered(seen, masks_in(result.record[0]), width, height) >= 0.9
    assert covered(boxes[10][0], masks_in(result.record[10]), width, height) >= 0.9
    # Held where it was seen for the hold after a sighting, never swept across the wall.
    for index in range(1, 1 + SOLID.tracking.keep_after):
        assert covered(seen, masks_in(result.record[index]), width, height) >= 0.9, index
    middle = Box(400, 0, 450, height)
    for index in range(1, 10):
        assert covered(middle, masks_in(result.record[index]), width, height) == 0, index


def test_a_face_that_leaves_the_picture_is_not_joined_to_a_face_coming_into_view(tmp_path: Path) -> None:
    """A walking camera pans over a textured wall at 20 px a frame: a face (the astronaut inside
    scikit-image) goes out of the picture at its left edge by frame 24, and from frame 35 another
    face steps into view 600 px of the wall to its right. The first face's track still stood in
    the wall's coordinates, and thirteen frames on, its gate took the new face for it: its mask
    came back from the edge and slid across the wall to the new face (frames 23-35, nobody
    there; the held-out clip's crowd, night and glare shots did the same, 0.35 points of its
    non-face pixels). A face whose predicted place has left the picture now ends its track, so
    every mask lies on a face, or is a hold of the stated length beside one."""
    from skimage import data

    from redaction.media import ffmpeg_exe

    width, height, pan, px = 1280, 720, 20, 120
    rng = np.random.default_rng(3)
    wall_w = width + pan * 60 + 200
    cells = rng.integers(40, 200, (height // 16, wall_w // 16, 3), dtype=np.uint8)
    wall = cv2.resize(cells, (wall_w, height), interpolation=cv2.INTER_CUBIC)
    head = cv2.cvtColor(data.astronaut()[0:260, 90:350], cv2.COLOR_RGB2BGR)
    head = cv2.resize(head, (px, px), interpolation=cv2.INTER_AREA)
    first_x, second_x, y, second_from = 400, 1000, 250, 35
    wall[y : y + px, first_x : first_x + px] = head
    src = tmp_path / "pan.mp4"
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24"]
    cmd += ["-s", f"{width}x{height}", "-r", "30", "-i", "-", "-c:v", "libx264"]
    cmd += ["-crf", "18", "-pix_fmt", "yuv420p", str(src)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for index in range(60):
        scene = wall.copy()
        if index >= second_from:
            scene[y : y + px, second_x : second_x + px] = cv2.flip(head, 1)
        proc.stdin.write(np.ascontiguousarray(scene[:, pan * index : pan * index + width]).tobytes())
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    result = redact_clip(src, tmp_path / "out.mp4", SOLID)
    assert result.shots == [0]

    def first(index: int) -> Box:
        return Box(first_x - pan * index, y, px, px)

    def second(index: int) -> Box:
        return Box(second_x - pan * index, y, px, px)

    def face(head: Box, mirrored: bool) -> Box:  # the astronaut's face in her head's square
        return Box(head.x + (34 if mirrored else 38), head.y + 34, 49, 49)

    assert all(
        covered(face(first(i), False), masks_in(result.record[i]), width, height) >= 0.9 for i in range(20)
    )
    assert all(
        covered(face(second(i), True), masks_in(result.record[i]), width, height) >= 0.9
        for i in range(37, 50)
    )
    holds = SOLID.tracking
    for index, notes in enumerate(result.record):
        for note in notes:
            mask = Box(*note["box"])
            on_first = index <= 24 + holds.keep_after and _overlaps(mask, first(index))
            on_second = index >= second_from - holds.keep_before and _overlaps(mask, second(index))
            assert on_first or on_second, (index, note)
    # Once the first face is out of view, and until the second's hold before its first sighting,
    # nothing on the picture is hidden.
    assert not any(masks_in(result.record[i]) for i in range(25, second_from - holds.keep_before))


@pytest.mark.skipif(
    not (faces_dev_dir() / "annotations.json").exists(),
    reason="needs the faces-dev photographs beside the repository",
)
def test_a_face_looked_at_every_few_frames_keeps_the_larger_box_of_its_sightings_either_side(
    tmp_path: Path,
) -> None:
    """Night, glare and night shots of the tune photographs (the first three shots of the
    benchmark's seed 101 night and glare draw). An established face is sighted every 4-5 frames,
    and its size was taken only from sightings within two frames of each, so each sighting stood
    alone: between two whose boxes came out small the mask was that small, though the sightings
    on either side had the face's size. A 29 px face in the dark, its boxes 0.80-0.86 of the face
    and a third of a face to one side, went 11 frames in a row with under 90 % of it hidden
    (frames 228-238), its sighting at 240 0.98 of the face. A sighting is now no smaller than
    the line between its neighbours' sizes (within ``size_reach`` frames), and no face is bare
    more than 6 frames."""
    src = tmp_path / "night-glare-night.mp4"
    clip = render_shots(src, 9, split="tune", seed=101, kinds=("night", "glare", "night"))
    result = redact_clip(src, tmp_path / "out.mp4", SOLID)
    assert result.shots == [0, 90, 180]
    runs = face_runs(clip, result)
    hidden = sum(sum(flags) for flags in runs.values())
    total = sum(len(flags) for flags in runs.values())
    assert total > 2000
    assert hidden / total >= 0.98
    assert max(longest_false(flags) for flags in runs.values()) <= 6, {
        t: longest_false(f) for t, f in runs.items() if longest_false(f) > 6
    }


@pytest.mark.skipif(
    not (faces_dev_dir() / "annotations.json").exists(),
    reason="needs the faces-dev photographs beside the repository",
)
def test_a_face_found_after_a_gap_by_a_track_gone_elsewhere_is_followed_back_through_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walkers and approach shots of the benchmark's seed 71 held-out draw, alone (their own
    shot seeds). The cut between them is not found (two walls, a still camera), and the approaching
    face, 24 px at the shot's first frame, is first sighted 12 frames in at 45 px: with the fp32
    detector that sighting joined a walker's track gone 14 frames, so no look back followed the
    face, and it was bare 11 frames in a row (the walker's mask drawn across the picture to it).
    A face sighted again after a gap is now followed back through it, and parted from the track
    when that path does not lead there. With the int8 detector the same join happens, but a later
    sighting starts a track of its own, whose look back covers the face."""
    plan = shots.plan_shots(71, 20)[4:6]
    assert [p.kind for p in plan] == ["walkers", "approach"]
    monkeypatch.setattr(shots, "plan_shots", lambda seed, seconds, fps=30: plan)
    src = tmp_path / "walkers-approach.mp4"
    clip = render_shots(src, sum(p.frames for p in plan) / 30, split="held_out", seed=71)
    result = redact_clip(src, tmp_path / "out.mp4", replace(SOLID, detector_runtime="opencv"))
    runs = face_runs(clip, result)
    approaching = max(runs, key=lambda t: len(runs[t]))
    assert len(runs[approaching]) > 90
    assert longest_false(runs[approaching]) <= 6, longest_false(runs[approaching])
    assert max(longest_false(flags) for flags in runs.values()) <= 6, {
        t: longest_false(f) for t, f in runs.items()
    }
