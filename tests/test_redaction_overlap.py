"""Work beside detection: what needs only a frame's pixels is done on the reader's thread, masks
are drawn on the writer's, and the result is the same as doing it all on one thread.

On two cores the detector's thread is the redaction's critical path; cut detection, the motion
thumbnail and drawing masks took about a sixth of it (bench/redaction.py, #17)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import redaction.pipeline as pipeline
from redaction.frames import Frame
from redaction.media import EncodeOptions, FrameReader, FrameWriter, probe
from redaction.pipeline import RedactionSettings, redact_clip
from redaction.regions import ManualRegion
from tests.media import make_test_clip


def test_pixel_only_work_runs_on_the_reader_thread_in_frame_order(tmp_path: Path) -> None:
    src = make_test_clip(tmp_path / "clip.mp4", seconds=1.0, size="64x48", rate=12)
    called: list[str] = []

    def prepare(frame: Frame) -> tuple[int, float]:
        called.append(threading.current_thread().name)
        return len(called) - 1, float(frame.y.mean())

    with FrameReader(src, probe(src), prepare=prepare) as reader:
        got = list(reader.prepared())
    assert [n for _, (n, _) in got] == list(range(12))
    assert all(mean == pytest.approx(float(f.y.mean())) for f, (_, mean) in got)
    assert set(called) == {"frame-reader"}


def test_a_frame_is_finished_on_the_writer_thread_before_it_is_encoded(tmp_path: Path) -> None:
    src = make_test_clip(tmp_path / "clip.mp4", seconds=1.0, size="64x48", rate=12)
    info = probe(src)
    dst = tmp_path / "out.mp4"
    where: list[str] = []

    def whiten(frame: Frame) -> None:
        where.append(threading.current_thread().name)
        frame.y[:] = 235

    with FrameReader(src, info) as reader, FrameWriter(dst, info, src, EncodeOptions()) as writer:
        for frame in reader:
            writer.write(frame, whiten)
        writer.finish()
    assert set(where) == {"frame-writer"} and len(where) == 12
    with FrameReader(dst, probe(dst)) as reader:
        lumas = [float(f.y.mean()) for f in reader]
    assert len(lumas) == 12 and min(lumas) > 225


def test_a_redaction_finds_cuts_and_draws_masks_off_the_detector_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_test_clip(tmp_path / "clip.mp4", seconds=1.0, size="160x120", rate=12)
    threads: dict[str, set[str]] = {"cuts": set(), "masks": set()}
    cut_update = pipeline.CutDetector.update
    draw = pipeline.apply_masks

    def cuts_seen(self: Any, luma: np.ndarray) -> bool:
        threads["cuts"].add(threading.current_thread().name)
        return cut_update(self, luma)

    def masks_drawn(frame: Frame, masks: Any, style: Any) -> None:
        threads["masks"].add(threading.current_thread().name)
        draw(frame, masks, style)

    monkeypatch.setattr(pipeline.CutDetector, "update", cuts_seen)
    monkeypatch.setattr(pipeline, "apply_masks", masks_drawn)
    region = ManualRegion(0.0, 1.0, 40, 30, 40, 30)
    result = redact_clip(
        src, tmp_path / "out.mp4", RedactionSettings(auto=False, style="solid"), manual_regions=[region]
    )
    assert result.frames == 12
    assert threads == {"cuts": {"frame-reader"}, "masks": {"frame-writer"}}
    with FrameReader(tmp_path / "out.mp4", probe(tmp_path / "out.mp4")) as reader:
        hidden = [float(f.y[32:58, 42:78].std()) for f in reader]
    assert max(hidden) < 2.0  # the solid box is in every frame


def test_the_motion_thumbnail_made_ahead_gives_the_same_shift(tmp_path: Path) -> None:
    src = make_test_clip(tmp_path / "clip.mp4", seconds=1.0, size="640x360", rate=12)
    with FrameReader(src, probe(src)) as reader:
        frames = [f.y.copy() for f in reader]
    inline, ahead = pipeline.CameraMotion(320), pipeline.CameraMotion(320)
    for luma in frames:
        a = inline.update(luma)
        b = ahead.update(luma, small=pipeline.thumbnail(luma, 320))
        assert a == b
