"""Untrusted media never makes ffmpeg open another file: an HLS playlist or a concat list uploaded
as a clip or a voice memo, naming a local file with known content, is refused, and nothing of
that file reaches a probe, a redacted copy or a waveform."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from redaction.media import NOT_MEDIA, MediaError, ffmpeg_exe, media_input, probe
from redaction.pipeline import RedactionSettings, redact_clip
from redaction.waveform import waveform


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """Another person's footage and sound, lying where a worker's or the service's files lie."""
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=s=176x144:r=10:d=1", "-f", "lavfi", "-i", "sine=frequency=440:d=1",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(tmp_path / "secret.mp4"),
    )  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:d=1", str(tmp_path / "secret.wav"))
    return tmp_path


def hls(path: Path, target: Path) -> Path:
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n")
    return path


def concat(path: Path, target: str) -> Path:
    path.write_text(f"ffconcat version 1.0\nfile {target}\n")
    return path


def test_a_playlist_clip_is_refused_and_no_copy_of_what_it_names_is_written(secrets: Path) -> None:
    playlist = hls(secrets / "clip.m3u8", secrets / "secret.mp4")
    listed = concat(secrets / "original.mp4", "secret.mp4")
    for clip in (playlist, listed):
        with pytest.raises(MediaError, match="not one of the media containers"):
            probe(clip)
        out = secrets / f"redacted-{clip.stem}.mp4"
        with pytest.raises(MediaError):
            redact_clip(clip, out, RedactionSettings(stride=4))
        assert not out.exists()
    # The file they name is itself readable media: the refusal is of the reference, not of it.
    assert (probe(secrets / "secret.mp4").width, probe(secrets / "secret.mp4").height) == (176, 144)


def test_a_list_as_a_voice_memo_draws_no_waveform_of_the_file_it_names(
    secrets: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memo = concat(secrets / "media", "secret.wav")  # the name the waveform route gives what it read
    with caplog.at_level(logging.WARNING, logger="redaction.waveform"):
        drawn = waveform(memo, 20)
    assert drawn["has_audio"] is False and drawn["peaks"] == [] and drawn["problem"] == NOT_MEDIA
    assert [r.getMessage() for r in caplog.records] == ["waveform refused: not a media container"]
    assert "secret" not in " ".join(str(r.__dict__) for r in caplog.records)
    playlist = hls(secrets / "memo.m3u8", secrets / "secret.mp4")
    assert waveform(playlist, 20)["has_audio"] is False
    # Real sound is still drawn.
    assert waveform(secrets / "secret.wav", 20)["has_audio"] is True


def test_an_input_name_is_never_an_option_or_another_protocol(tmp_path: Path) -> None:
    for name in ("-f", "concat:a.mp4|b.mp4", "http:x", "pipe:0"):
        args = media_input(tmp_path / name)
        assert args[-2] == "-i" and args[-1] == f"file:{(tmp_path / name).resolve()}"
        assert args[args.index("-protocol_whitelist") + 1] == "file"
    odd = tmp_path / "-i"
    odd.write_bytes(b"")
    with pytest.raises(MediaError):
        probe(odd)
