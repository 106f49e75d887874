"""The JSON form of a redaction request (settings overrides and an investigator's edits), validated.

Pydantic models turn what arrives over the API into the pipeline's own types, with errors that say
which field is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.bounds import DB_INT_MAX
from storage.errors import Refused

from .audio import AudioEdit
from .regions import Exclusion, ManualRegion

if TYPE_CHECKING:
    from .pipeline import RedactionSettings

log = logging.getLogger(__name__)

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


# -- what a request may ask for: never less hiding than the service's own settings ---------------

# The widest a request may go where more is stronger (each beyond the defaults costs only time).
MAX_DETECT_WIDTH = 3840
MAX_MASK_SCALE = 4.0
MAX_CELLS = 64
EXCLUSION_REASON_MIN = 10  # as for exporting original footage: a sentence, not a word


class RedactionRefused(Refused):
    """A redaction request the service will not queue: it would hide less than the service's own
    settings do, or it leaves someone visible without the authority or the reason that needs."""

    status = 422


def _number(name: str, value: Any, integer: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise RedactionRefused("bad_setting", f"{name} must be {'a whole number' if integer else 'a number'}")
    return float(value)


def _weaker(name: str, value: Any, base: RedactionSettings) -> str | None:
    """Why ``value`` for setting ``name`` would hide less than ``base``; None when it hides as much."""
    if name == "threshold":  # a face found with less confidence than the default is still hidden
        v = _number(name, value)
        return None if 0 < v <= base.threshold else f"threshold must be above 0 and at most {base.threshold}"
    if name == "mask_scale":
        v = _number(name, value)
        return (
            None
            if base.mask_scale <= v <= MAX_MASK_SCALE
            else f"mask_scale must be from {base.mask_scale} to {MAX_MASK_SCALE}"
        )
    if name == "detect_width":
        v = _number(name, value, integer=True)
        return (
            None
            if base.detect_width <= v <= MAX_DETECT_WIDTH
            else f"detect_width must be from {base.detect_width} to {MAX_DETECT_WIDTH}"
        )
    if name == "stride":
        v = _number(name, value, integer=True)
        return None if 1 <= v <= base.stride else f"stride must be from 1 to {base.stride}"
    if name == "fine_stride":
        v = _number(name, value, integer=True)
        if base.fine_stride == 0:
            return None if 0 <= v <= 1000 else "fine_stride must be from 0 to 1000"
        return None if 1 <= v <= base.fine_stride else f"fine_stride must be from 1 to {base.fine_stride}"
    if name == "fine_width":  # the default (None) is the whole frame: any width only narrows it
        if value is None:
            return None
        v = _number(name, value, integer=True)
        if base.fine_width is None:
            return "fine_width may only be left at the whole frame (null)"
        return (
            None
            if base.fine_width <= v <= MAX_DETECT_WIDTH
            else f"fine_width must be from {base.fine_width} to {MAX_DETECT_WIDTH}"
        )
    if name in ("blur_cells", "pixel_cells"):  # samples that survive across a mask: fewer hide more
        v = _number(name, value, integer=True)
        most = getattr(base, name)
        return None if 1 <= v <= most else f"{name} must be from 1 to {most}"
    if name == "style":
        return None if value in ("blur", "pixelate", "solid") else "style must be blur, pixelate or solid"
    if name == "cover":
        return None if value in ("face", "head") else "cover must be face or head"
    if name == "shape":
        return None if value in ("rect", "ellipse", "rounded") else "shape must be rect, ellipse or rounded"
    return f"{name} cannot be changed per run"


def check_settings(spec: RedactionSpec, base: RedactionSettings, actor: str) -> None:
    """Refuse (``RedactionRefused``, logged) any setting that would hide less than ``base``."""
    for name, value in sorted(spec.settings.items()):
        try:
            why = _weaker(name, value, base)
            if why is not None:
                raise RedactionRefused(
                    "weaker_than_default", f"{why}: a redaction may not hide less than the defaults"
                )
        except RedactionRefused as refused:
            log.warning(
                "redaction request refused: %s",
                refused,
                extra={"reason": refused.reason, "setting": name, "actor": actor},
            )
            raise


def check_request(
    spec: RedactionSpec,
    base: RedactionSettings,
    *,
    role: str,
    actor: str,
    may_leave_visible: Collection[str],
) -> None:
    """Refuse (``RedactionRefused``, logged) a request that would hide less than ``base`` (the service's
    settings): every override is bounded on the side that reveals faces. Leaving a person visible
    (an exclusion) needs one of ``may_leave_visible`` (the roles that review redactions) and a stated
    reason for each track; the worker records both, and who asked, in the copy's custody. Making
    such a version releases nothing: handing it out does, so a package that holds it needs the
    authority and the reason that exporting original footage needs (``incidents.export.api``)."""
    check_settings(spec, base, actor)
    if not spec.exclusions:
        return
    if role not in may_leave_visible:
        log.warning(
            "redaction request refused: exclusion without authority",
            extra={"reason": "exclusion_not_authorised", "actor": actor, "role": role},
        )
        raise RedactionRefused(
            "exclusion_not_authorised",
            f"role {role} may not leave a person visible in a redacted copy",
            403,
        )
    short = [e.track for e in spec.exclusions if len(e.reason.strip()) < EXCLUSION_REASON_MIN]
    if short:
        log.warning(
            "redaction request refused: exclusion without a reason",
            extra={"reason": "exclusion_reason_required", "actor": actor, "tracks": short},
        )
        raise RedactionRefused(
            "exclusion_reason_required",
            f"leaving track {short[0]} visible needs a stated reason ({EXCLUSION_REASON_MIN} characters or more)",
        )


def left_visible(spec: RedactionSpec, requested_by: str | None) -> list[dict[str, Any]]:
    """The tracks a redaction leaves visible, each with its span, its reason and who asked for it."""
    return [{**e.model_dump(), "by": requested_by} for e in spec.exclusions]
