"""The redaction bench's breakdown of non-face pixels changed (``bench/redaction.py --spill``) on a
record written by hand, and the darker clips it makes: a mask drawn about an annotated face counts as margin and changes exactly
what the stated margin about the annotation would (the floor), a mask away from every face is
counted apart, and a track that never scored 0.35 is named."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bench.redaction import darken, spill_causes
from firmware_simulators.shots import ShotClip, ShotFace, render_shots
from redaction.geometry import Box
from redaction.pipeline import RedactionSettings


def _clip() -> ShotClip:
    clip = ShotClip(320, 240, 30, 2, shots=[(0, "night"), (1, "crowd")])
    clip.faces = {
        0: [ShotFace(0, (100.0, 80.0, 40.0, 40.0), 1.0)],
        1: [ShotFace(0, (100.0, 80.0, 40.0, 40.0), 1.0)],
    }
    return clip


def _note(track: int, box: Box, kind: str, score: float | None = None) -> dict[str, object]:
    note: dict[str, object] = {
        "source": "auto",
        "track": track,
        "box": box.rounded(),
        "shape": "ellipse",
        "kind": kind,
    }
    if score is not None:
        note["score"] = score
    return note


def test_margin_about_a_face_is_its_floor_and_masks_away_from_faces_are_counted_apart() -> None:
    settings = RedactionSettings()
    face = Box(100, 80, 40, 40).scaled(settings.mask_scale)
    away = Box(250, 20, 30, 30).scaled(settings.mask_scale)
    record = [
        [_note(1, face, "detected", 0.9), _note(2, away, "detected", 0.25)],
        [_note(1, face, "interpolated"), _note(3, away, "extended")],
    ]
    out = spill_causes(record, _clip(), settings)

    night, crowd = out["night"], out["crowd"]
    assert night["margin detected"] == night["floor"] > 0
    assert night["away detected"] > 0
    assert night["away, never scored 0.35"] == night["away detected"]
    assert night["changed"] == round(night["margin detected"] + night["away detected"], 4)
    assert crowd["margin interpolated"] == crowd["floor"]
    # Track 3 was never detected: it has no score at all, so it never scored 0.35 either.
    assert crowd["away, never scored 0.35"] == crowd["away extended"] > 0


def test_darker_clips_keep_their_frames_and_lose_their_light(tmp_path: Path) -> None:
    """``--darker`` turns a rendered shot darker and noisier, frame for frame."""
    path = tmp_path / "crowd.mp4"
    render_shots(path, 1.0, split="tune", seed=101, width=320, height=180, kinds=("crowd",))
    before = _frames(path)
    darken(path, 0.5, 3.0, seed=1)
    after = _frames(path)
    assert len(after) == len(before) == 30
    ratio = float(np.mean([a.mean() for a in after])) / float(np.mean([b.mean() for b in before]))
    assert 0.45 < ratio < 0.6
    assert not path.with_name("crowd-bright.mp4").exists()


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32))
    cap.release()
    return out
