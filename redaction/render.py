"""Drawing masks over a frame: blur, pixelate or solid fill, in an ellipse, a rounded box or a rectangle.

The blur is meant to be irreversible, not cosmetic: the region is first reduced to a handful of
samples (``blur_cells`` across the mask), so no deconvolution can bring the face back, and then
smoothed so it reads as a blur rather than a mosaic. Masks are drawn straight onto the frame's
Y, U and V planes (the chroma planes at half size), which is the same as drawing in colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from redaction.frames import Frame
from redaction.geometry import Box

Shape = Literal["ellipse", "rounded", "rect"]
# A "rounded" mask is the superellipse |x/a|^4 + |y/b|^4 <= 1: it reaches a box's corners from a
# margin of a tenth where an ellipse needs two-fifths, so it hides a face box with a sixth less
# spill around it.
_ROUNDED_POWER = 4.0
Style = Literal["blur", "pixelate", "solid"]


@dataclass(frozen=True)
class Mask:
    """A region to hide in one frame (already grown by any margin) and its outline."""

    box: Box
    shape: Shape = "ellipse"


@dataclass(frozen=True)
class MaskStyle:
    """How hidden regions look. ``blur_cells``/``pixel_cells``: samples across the mask's longer
    side that survive; ``colour``: BGR fill for solid."""

    style: Style = "blur"
    blur_cells: int = 4
    pixel_cells: int = 8
    colour: tuple[int, int, int] = (0, 0, 0)

    def fill(self) -> tuple[int, int, int]:
        """The solid colour as (Y, U, V)."""
        yuv = cv2.cvtColor(np.full((2, 2, 3), self.colour, np.uint8), cv2.COLOR_BGR2YUV_I420).reshape(-1)
        return int(yuv[0]), int(yuv[4]), int(yuv[5])


def apply_masks(frame: Frame, masks: list[Mask], style: MaskStyle) -> None:
    """Hide every mask's region in ``frame`` (changed in place)."""
    if not masks:
        return
    fill = style.fill()
    for mask in masks:
        half = Box(mask.box.x / 2, mask.box.y / 2, mask.box.w / 2, mask.box.h / 2)
        _hide(frame.y, mask.box, mask.shape, style, fill[0])
        _hide(frame.u, half, mask.shape, style, fill[1])
        _hide(frame.v, half, mask.shape, style, fill[2])


def _hide(plane: np.ndarray, box: Box, shape: Shape, style: MaskStyle, fill: int) -> None:
    height, width = plane.shape
    x0, y0, x1, y1 = _pixel_bounds(box, width, height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    roi = plane[y0:y1, x0:x1]
    hidden = _hidden(roi, style, max(box.w, box.h), fill)
    if shape == "rect":
        roi[:] = hidden
    else:
        np.copyto(roi, hidden, where=_ellipse(box, x0, y0, x1, y1, _power(shape)))


def _hidden(roi: np.ndarray, style: MaskStyle, extent: float, fill: int) -> np.ndarray | int:
    """What replaces the region. Cells are counted across the whole mask (``extent``), not just
    its part inside the frame, so a face half out of frame is reduced just as hard."""
    if style.style == "solid":
        return fill
    h, w = roi.shape
    cells = style.blur_cells if style.style == "blur" else style.pixel_cells
    cell = max(1.0, extent / max(1, cells))
    small_w, small_h = max(1, round(w / cell)), max(1, round(h / cell))
    small = cv2.resize(roi, (small_w, small_h), interpolation=cv2.INTER_AREA)
    if style.style == "pixelate":
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    # Smooth the few samples at a small size (cheap whatever the region's size), then scale up.
    mid_w, mid_h = max(1, min(w, small_w * 8)), max(1, min(h, small_h * 8))
    mid = cv2.resize(small, (mid_w, mid_h), interpolation=cv2.INTER_LINEAR)
    sigma = max(0.8, mid_w / small_w / 3)
    mid = cv2.GaussianBlur(mid, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)


def _pixel_bounds(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Whole pixels touched by the box, inside the frame (rounded outwards: never reveal an edge)."""
    x0 = max(0, int(np.floor(box.x)))
    y0 = max(0, int(np.floor(box.y)))
    x1 = min(width, int(np.ceil(box.x + box.w)))
    y1 = min(height, int(np.ceil(box.y + box.h)))
    return x0, y0, x1, y1


def _power(shape: Shape) -> float:
    return _ROUNDED_POWER if shape == "rounded" else 2.0


def _ellipse(box: Box, x0: int, y0: int, x1: int, y1: int, power: float = 2.0) -> np.ndarray:
    """Boolean map over pixels [x0, x1) x [y0, y1): which pixel centres lie in the box's ellipse
    (``power`` 2) or rounded box (``power`` 4)."""
    a, b = max(box.w / 2, 0.5), max(box.h / 2, 0.5)
    xs = np.abs((np.arange(x0, x1, dtype=np.float32) + 0.5 - box.cx) / a)
    ys = np.abs((np.arange(y0, y1, dtype=np.float32) + 0.5 - box.cy) / b)
    return (ys[:, None] ** power + xs[None, :] ** power) <= 1.0


def covered(box: Box, masks: list[Mask], width: int, height: int) -> float:
    """The share of a box's in-frame pixels that the masks hide (used to score coverage)."""
    x0, y0, x1, y1 = _pixel_bounds(box, width, height)
    if x1 <= x0 or y1 <= y0:
        return 1.0
    hit = np.zeros((y1 - y0, x1 - x0), bool)
    for mask in masks:
        mx0, my0, mx1, my1 = _pixel_bounds(mask.box, width, height)
        ix0, iy0, ix1, iy1 = max(x0, mx0), max(y0, my0), min(x1, mx1), min(y1, my1)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        part = hit[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        if mask.shape == "rect":
            part[:] = True
        else:
            part |= _ellipse(mask.box, ix0, iy0, ix1, iy1, _power(mask.shape))
    return float(hit.mean())
