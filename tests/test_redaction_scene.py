"""The synthetic footage generator the redaction tests and benchmarks score against."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from firmware_simulators.scene import SceneTruth, render_clip
from redaction.media import probe


def test_same_seed_same_clip_and_truth(tmp_path: Path) -> None:
    a = render_clip(tmp_path / "a.mp4", 1.2, 320, 240, 25, faces=4, seed=5)
    b = render_clip(tmp_path / "b.mp4", 1.2, 320, 240, 25, faces=4, seed=5)
    c = render_clip(tmp_path / "c.mp4", 1.2, 320, 240, 25, faces=4, seed=6)
    assert a.to_json() == b.to_json() != c.to_json()
    first = [cv2.VideoCapture(str(tmp_path / n)).read()[1] for n in ("a.mp4", "b.mp4")]
    assert np.array_equal(first[0], first[1])


def test_clip_is_h264_aac_with_faces_of_many_sizes_drawn_where_the_truth_says(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    truth = render_clip(path, 3, 640, 360, 25, faces=6, seed=3)
    info = probe(path)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert (info.width, info.height, info.fps, info.expected_frames) == (640, 360, 25, truth.frames)
    boxes = [b for bs in truth.boxes.values() for b in bs]
    assert min(b.size for b in boxes) <= 24 and max(b.size for b in boxes) >= 120
    assert any(b.visible < 1 for b in boxes) and any(b.blurred for b in boxes)
    for b in boxes:
        assert 0 <= b.x and 0 <= b.y and b.x + b.w <= 640 and b.y + b.h <= 360
    # A face box holds more detail than the plain wall around it (the face really is there).
    index, big = max(
        ((i, b) for i, bs in truth.boxes.items() for b in bs if b.visible == 1),
        key=lambda ib: ib[1].w * ib[1].h,
    )
    capture = cv2.VideoCapture(str(path))
    for _ in range(index + 1):
        _, frame = capture.read()
    face = cv2.cvtColor(frame[big.y : big.y + big.h, big.x : big.x + big.w], cv2.COLOR_BGR2GRAY)
    wall = cv2.cvtColor(frame[5:25, 5:45], cv2.COLOR_BGR2GRAY)
    assert float(face.std()) > 15 > float(wall.std())


def test_truth_round_trips_through_json(tmp_path: Path) -> None:
    truth = render_clip(tmp_path / "clip.mp4", 0.5, 160, 120, 10, faces=2, seed=1, audio=False)
    truth.save(tmp_path / "truth.json")
    again = SceneTruth.load(tmp_path / "truth.json")
    assert again == truth
    assert probe(tmp_path / "clip.mp4").audio_codec is None
