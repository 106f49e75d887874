"""Real media for tests: short H.264/AAC clips made with the real ffmpeg."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import imageio_ffmpeg


def make_test_clip(path: Path, seconds: float = 3.0, size: str = "640x360", rate: int = 25) -> Path:
    """A real MP4 (H.264 yuv420p + AAC) with moving test pattern and a tone, written to ``path``.

    Each kind of clip is encoded once per run and copied after that: the same arguments gave the
    same bytes anyway, and encoding took most of a second on a loaded machine."""
    path.write_bytes(_encoded(seconds, size, rate).read_bytes())
    return path


@cache
def _encoded(seconds: float, size: str, rate: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="test-clip-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "clip.mp4"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={rate}",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
    )
    return path
