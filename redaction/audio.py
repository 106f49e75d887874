"""Silencing or bleeping parts of a clip's sound: names said aloud, a radio call, a phone number.

Edits become one ffmpeg ``aeval`` expression, evaluated per sample, so a muted range starts and
ends on the exact sample asked for rather than on the edge of an audio frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

AudioMode = Literal["mute", "tone"]


@dataclass(frozen=True)
class AudioEdit:
    """Replace the sound from ``start`` to ``end`` seconds with silence or a tone."""

    start: float
    end: float
    mode: AudioMode = "mute"
    tone_hz: float = 1000.0
    tone_level: float = 0.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or not 0 <= self.start < self.end:
            raise ValueError(f"audio edit needs 0 <= start < end, got {self.start}..{self.end}")
        if self.mode not in ("mute", "tone"):
            raise ValueError(f"unknown audio edit mode {self.mode!r}")
        if self.mode == "tone" and not (0 < self.tone_hz < 20000 and 0 < self.tone_level <= 1):
            raise ValueError("tone needs 0 < tone_hz < 20000 and 0 < tone_level <= 1")

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "mode": self.mode,
            "tone_hz": self.tone_hz,
            "tone_level": self.tone_level,
        }


def audio_filter(edits: list[AudioEdit]) -> str | None:
    """The ffmpeg audio filter that applies the edits (None when there are none)."""
    if not edits:
        return None
    expr = "val(ch)"
    # Later edits are wrapped outside earlier ones, so where ranges overlap the later one wins;
    # mutes are applied last of all, so silence always beats a tone.
    ordered = [e for e in edits if e.mode == "tone"] + [e for e in edits if e.mode == "mute"]
    for edit in ordered:
        inside = f"between(t,{edit.start:.6f},{edit.end:.6f})"
        if edit.mode == "mute":
            replacement = "0"
        else:
            replacement = f"{edit.tone_level:.4f}*sin(2*PI*{edit.tone_hz:.3f}*t)"
        expr = f"if({inside},{replacement},{expr})"
    return f"aeval=exprs='{expr}':channel_layout=same"
