"""The JSON form of a redaction request (settings overrides and an investigator's edits), validated.

Pydantic models turn what arrives over the API into the pipeline's own types, with errors that say
which field is wrong.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.bounds import DB_INT_MAX

from .audio import AudioEdit
from .regions import Exclusion, ManualRegion

# Settings an investigator may change for one run; everything else comes from the service settings.
ADJUSTABLE = (
    "detect_width",
    "stride",
    "fine_width",
    "fine_stride",
    "threshold",
    "mask_scale",
    "cover",
    "shape",
    "style",
    "blur_cells",
    "pixel_cells",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManualRegionIn(_Strict):
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    x: float = Field(ge=0)
    y: float = Field(ge=0)
    w: float = Field(gt=0)
    h: float = Field(gt=0)
    shape: Literal["rect", "ellipse", "rounded"] = "rect"
    follow: bool = False
    keyframes: list[tuple[float, float, float, float, float]] = Field(default_factory=list, max_length=10_000)
    label: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> ManualRegionIn:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self

    def to_region(self) -> ManualRegion:
        return ManualRegion(
            self.start,
            self.end,
            self.x,
            self.y,
            self.w,
            self.h,
            self.shape,
            self.follow,
            tuple(tuple(k) for k in self.keyframes),  # type: ignore[misc]  # five numbers each, checked above
            self.label,
        )


class ExclusionIn(_Strict):
    track: int = Field(ge=0, le=DB_INT_MAX)
    start: float | None = None
    end: float | None = None
    reason: str = Field(min_length=3, max_length=500)

    def to_exclusion(self) -> Exclusion:
        return Exclusion(self.track, self.start, self.end, self.reason)


class AudioEditIn(_Strict):
    start: float = Field(ge=0)
    end: float = Field(gt=0)
    mode: Literal["mute", "tone"] = "mute"
    tone_hz: float = Field(default=1000.0, gt=20, lt=20000)

    def to_edit(self) -> AudioEdit:
        return AudioEdit(self.start, self.end, self.mode, self.tone_hz)


class RedactionSpec(_Strict):
    """One redaction run's request: setting overrides plus manual regions, exclusions and audio edits."""

    settings: dict[str, Any] = Field(default_factory=dict)
    manual_regions: list[ManualRegionIn] = Field(default_factory=list, max_length=1000)
    exclusions: list[ExclusionIn] = Field(default_factory=list, max_length=1000)
    audio_edits: list[AudioEditIn] = Field(default_factory=list, max_length=1000)
    note: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _only_adjustable(self) -> RedactionSpec:
        unknown = set(self.settings) - set(ADJUSTABLE)
        if unknown:
            raise ValueError(
                f"settings {sorted(unknown)} cannot be changed per run; allowed: {list(ADJUSTABLE)}"
            )
        return self
