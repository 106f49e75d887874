"""Probing and piping clips through ffmpeg: frame rates, odd sizes, rotation, bad input."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from redaction.media import MediaError, exact_rate, ffmpeg_exe, parse_probe, probe
from redaction.pipeline import RedactionSettings, redact_clip
from tests.test_redaction_pipeline import count_frames

PHONE_CLIP = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'phone.mp4':
  Duration: 00:01:02.50, start: 0.000000, bitrate: 8000 kb/s
  Stream #0:0[0x1](und): Video: hevc (Main) (hvc1 / 0x31637668), yuv420p(tv, bt709), 1920x1080, 7900 kb/s, 29.97 fps, 29.97 tbr, 600 tbn (default)
      Metadata:
        handler_name    : Core Media Video
      Side data:
        displaymatrix: rotation of -90.00 degrees
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, fltp, 96 kb/s (default)
  Stream #0:2[0x3](und): Video: mjpeg (Baseline), yuvj420p(pc), 320x240, 90k tbr, 90k tbn (attached pic)
At least one output file must be specified
"""


def test_probe_text_is_read_with_rotation_exact_rate_and_audio() -> None:
    info = parse_probe(PHONE_CLIP)
    assert (info.width, info.height) == (1080, 1920)  # shown upright
    assert info.fps == Fraction(30000, 1001)
    assert info.duration == pytest.approx(62.5)
    assert info.video_codec == "hevc" and info.audio_codec == "aac" and info.audio_rate == 44100
    assert info.expected_frames == 1873


def test_printed_frame_rates_become_exact_fractions() -> None:
    assert exact_rate(25.0) == 25
    assert exact_rate(23.98) == Fraction(24000, 1001)
    assert exact_rate(59.94) == Fraction(60000, 1001)
    assert exact_rate(12.5) == Fraction(25, 2)


def test_a_file_that_is_not_video_is_refused_with_a_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video at all")
    with pytest.raises(MediaError, match="no video stream"):
        probe(bogus)
    with pytest.raises(MediaError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(MediaError):
        parse_probe("Stream #0:0: Audio: aac, 48000 Hz, mono\n")


def test_odd_sized_video_without_sound_is_padded_and_keeps_every_frame(tmp_path: Path) -> None:
    src = tmp_path / "odd.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x240:r=12.5:d=2",
            "-vf",
            "scale=321:241",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv444p",
            str(src),
        ],
        check=True,
    )
    dst = tmp_path / "out.mp4"
    result = redact_clip(src, dst, RedactionSettings(stride=4))
    assert (probe(src).width, probe(src).height) == (321, 241)
    out = probe(dst)
    assert (out.width, out.height) == (322, 242)
    assert out.fps == Fraction(25, 2) and out.audio_codec is None
    assert result.audio == "none"
    assert count_frames(dst) == count_frames(src) == 25 == result.frames


def test_a_clip_cut_short_mid_stream_fails_loudly_or_keeps_what_decodes(tmp_path: Path) -> None:
    src = tmp_path / "full.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=160x120:r=25:d=2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mpegts",
            str(src),
        ],
        check=True,
    )
    cut = tmp_path / "cut.ts"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    result = redact_clip(cut, tmp_path / "out.mp4", RedactionSettings(stride=4))
    assert 0 < result.frames < 50
    assert count_frames(tmp_path / "out.mp4") == result.frames
