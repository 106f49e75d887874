"""An investigator's edits on a real clip: manual regions (fixed, keyframed, followed), exclusions, a tone."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from firmware_simulators.scene import SceneTruth, render_clip
from redaction.audio import AudioEdit, audio_filter
from redaction.geometry import Box
from redaction.media import MediaError, ffmpeg_exe
from redaction.pipeline import RedactionSettings, redact_clip
from redaction.regions import Exclusion, ManualRegion, frame_in_range
from redaction.render import Mask, covered
from tests.test_redaction_pipeline import decode_audio

FPS = 25
SOLID = RedactionSettings(style="solid")
MANUAL_ONLY = RedactionSettings(style="solid", auto=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SceneTruth]:
    path = tmp_path_factory.mktemp("edits") / "clip.mp4"
    truth = render_clip(
        path, seconds=2, width=320, height=240, fps=FPS, faces=2, seed=11, min_face=40, max_face=70
    )
    return path, truth


def frames_of(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        out.append(image)
    capture.release()
    return out


def black_share(image: np.ndarray, box: Box) -> float:
    region = image[int(box.y) : int(box.y + box.h), int(box.x) : int(box.x + box.w)]
    return float((region.max(axis=2) <= 24).mean())


def test_manual_regions_hide_exactly_their_time_range_and_follow_keyframes(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _ = clip
    fixed = ManualRegion(0.4, 1.2, 10, 180, 60, 40, label="badge")
    moving = ManualRegion(0.0, 1.6, 200, 10, 40, 40, keyframes=((1.6, 260, 10, 40, 40),))
    dst = tmp_path / "out.mp4"
    result = redact_clip(src, dst, MANUAL_ONLY, manual_regions=[fixed, moving])
    frames = frames_of(dst)
    for i, image in enumerate(frames):
        inside = frame_in_range(i, result_fps(), 0.4, 1.2)
        share = black_share(image, Box(14, 184, 52, 32))
        assert share > 0.98 if inside else share < 0.2, (i, share)
    # Half way through its keyframes the moving region has moved half way.
    mid = round(0.8 * FPS)
    assert black_share(frames[mid], Box(234, 14, 32, 32)) > 0.98
    assert black_share(frames[mid], Box(200, 50, 30, 20)) < 0.2
    notes = [n for n in result.record[mid] if n["source"] == "manual"]
    assert sorted(n["region"] for n in notes) == [0, 1]


def result_fps():  # type: ignore[no-untyped-def]
    from fractions import Fraction

    return Fraction(FPS)


def test_followed_region_stays_on_what_it_was_drawn_around(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, truth = clip
    first = truth.faces_in(0)[0]
    follow = ManualRegion(0.0, 2.0, first.x - 4, first.y - 4, first.w + 8, first.h + 8, follow=True)
    result = redact_clip(src, tmp_path / "out.mp4", MANUAL_ONLY, manual_regions=[follow])
    later = [f for f in range(truth.frames) if any(b.track == first.track for b in truth.faces_in(f))][-1]
    face = next(b for b in truth.faces_in(later) if b.track == first.track)
    moved = abs(face.x - first.x) + abs(face.y - first.y)
    assert moved > 5  # the face really moved
    masks = [Mask(Box(*n["box"]), "rect") for n in result.record[later] if n["source"] == "manual"]
    assert covered(Box(face.x, face.y, face.w, face.h), masks, truth.width, truth.height) > 0.8


def test_an_excluded_track_is_left_visible_and_recorded_as_excluded(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _ = clip
    first = redact_clip(src, tmp_path / "a.mp4", SOLID)
    counts: dict[int, int] = {}
    for notes in first.record:
        for n in notes:
            counts[n["track"]] = counts.get(n["track"], 0) + 1
    track = max(counts, key=lambda t: counts[t])
    second = redact_clip(src, tmp_path / "b.mp4", SOLID, exclusions=[Exclusion(track, reason="the subject")])
    frames = frames_of(tmp_path / "b.mp4")
    checked = 0
    for i, notes in enumerate(second.record):
        for n in notes:
            if n["track"] == track:
                assert n.get("excluded") is True
                others = [Mask(Box(*m["box"]), m["shape"]) for m in notes if m is not n]
                box = Box(*n["box"]).scaled(0.4)
                inside = box.x >= 0 and box.y >= 0 and box.x + box.w <= 320 and box.y + box.h <= 240
                if inside and covered(box, others, 320, 240) == 0:
                    assert black_share(frames[i], box) < 0.05
                    checked += 1
            else:
                assert not n.get("excluded")
    assert checked > 10


def test_tone_replaces_the_sound_in_its_range(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _ = clip
    dst = tmp_path / "tone.mp4"
    redact_clip(
        src, dst, MANUAL_ONLY, audio_edits=[AudioEdit(0.5, 1.0, "tone", tone_hz=1000, tone_level=0.2)]
    )
    rate = 48000
    audio = decode_audio(dst, rate)
    part = audio[int(0.55 * rate) : int(0.95 * rate)].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
    peak = np.fft.rfftfreq(len(part), 1 / rate)[int(np.argmax(spectrum))]
    assert abs(peak - 1000) < 10
    assert np.sqrt(np.mean(part**2)) == pytest.approx(0.2 / np.sqrt(2), rel=0.1)


def test_audio_edits_are_checked_and_compose() -> None:
    with pytest.raises(ValueError):
        AudioEdit(2.0, 1.0)
    with pytest.raises(ValueError):
        AudioEdit(0.0, 1.0, "tone", tone_hz=0)
    assert audio_filter([]) is None
    text = audio_filter([AudioEdit(1, 2), AudioEdit(0.5, 3, "tone")])
    assert text is not None and text.startswith("aeval=")
    # The mute is the outermost test, so it wins where the two overlap.
    assert text.index("between(t,1.000000,2.000000),0,") < text.index("sin(")


def test_audio_edits_on_a_silent_clip_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "silent.mp4"
    render_clip(src, seconds=0.5, width=160, height=120, fps=FPS, faces=1, seed=2, audio=False)
    with pytest.raises(MediaError, match="no sound"):
        redact_clip(src, tmp_path / "out.mp4", audio_edits=[AudioEdit(0.1, 0.2)])
    assert Path(ffmpeg_exe()).exists()


def test_manual_regions_and_exclusion_ranges_are_validated() -> None:
    with pytest.raises(ValueError):
        ManualRegion(2.0, 1.0, 0, 0, 10, 10)
    with pytest.raises(ValueError):
        ManualRegion(0.0, 1.0, 0, 0, 0, 10)
    assert Exclusion(3, 1.0, 2.0).covers(3, 30, result_fps())
    assert not Exclusion(3, 1.0, 2.0).covers(3, 60, result_fps())
    assert not Exclusion(3).covers(4, 30, result_fps())
