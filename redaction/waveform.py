"""A clip's sound as a waveform to draw: the loudest sample and the RMS of each slice of time.

The review screen draws it so an investigator can see where someone speaks and choose the ranges
to mute or tone; computed here with the same ffmpeg that redacts (no browser-side decoding of
evidence, no third-party library).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# numpy (and cv2 behind ``.media``) are imported when a waveform is drawn, not when the service
# starts: the service process never redacts, and the two cost it about 35 MB at rest.

log = logging.getLogger(__name__)

RATE = 8000  # samples a second: enough to see speech, small enough for an hour of footage
MAX_BUCKETS = 4000


def summarise(samples: np.ndarray, rate: int, buckets: int) -> dict[str, Any]:
    """Peaks and RMS (0..1) of ``buckets`` equal slices of mono 16-bit ``samples``."""
    import numpy as np

    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be 1..{MAX_BUCKETS}")
    duration = len(samples) / rate
    if len(samples) == 0:
        return {"rate": rate, "duration": 0.0, "seconds_per_bucket": 0.0, "peaks": [], "rms": []}
    buckets = min(buckets, len(samples))
    edges = np.linspace(0, len(samples), buckets + 1).astype(np.int64)
    scaled = samples.astype(np.float64) / 32768.0
    peaks: list[float] = []
    rms: list[float] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        part = scaled[a:b]
        peaks.append(round(float(np.abs(part).max()), 4))
        rms.append(round(float(np.sqrt(np.mean(part**2))), 4))
    return {
        "rate": rate,
        "duration": round(duration, 4),
        "seconds_per_bucket": duration / buckets,
        "peaks": peaks,
        "rms": rms,
    }


def waveform(path: str | Path, buckets: int = 1000, ffmpeg: str | None = None) -> dict[str, Any]:
    """The waveform of a media file's first audio stream (``has_audio`` false and empty when there is
    none or the file is not media ffmpeg can read, with ``problem`` saying so)."""
    import numpy as np

    from .media import ffmpeg_exe, media_input, refused_format

    command = [
        ffmpeg or ffmpeg_exe(), "-nostdin", "-v", "error", *media_input(path),
        "-map", "0:a:0?", "-ac", "1", "-ar", str(RATE), "-f", "s16le", "-",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        # Not media ffmpeg can read: no sound to draw, and the answer says why.
        errors = done.stderr.decode(errors="replace")
        refused = refused_format(errors)
        if refused:
            log.warning("waveform refused: not a media container", extra={"bytes": Path(path).stat().st_size})
        problem = [refused] if refused else errors.strip().splitlines()[-1:] or ["unreadable"]
        empty = summarise(np.zeros(0, dtype="<i2"), RATE, buckets)
        return {"has_audio": False, "problem": problem[0][-300:], **empty}
    samples = np.frombuffer(done.stdout, dtype="<i2")
    return {"has_audio": len(samples) > 0, "problem": None, **summarise(samples, RATE, buckets)}
