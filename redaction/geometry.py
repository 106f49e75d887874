"""Boxes in frame pixels and the few operations redaction needs on them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned box: top-left corner, width and height, in frame pixels."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)

    @classmethod
    def from_center(cls, cx: float, cy: float, w: float, h: float) -> Box:
        return cls(cx - w / 2, cy - h / 2, w, h)

    def scaled(self, factor: float) -> Box:
        """The box grown (or shrunk) about its centre."""
        return Box.from_center(self.cx, self.cy, self.w * factor, self.h * factor)

    def squarer(self, aspect: float) -> Box:
        """The box grown about its centre until neither side is under ``aspect`` of the other
        (0: as it is). A face box is about as wide as it is tall; a detector's box much narrower
        or flatter than that has come out short on that side, not found a face of that shape."""
        if aspect <= 0:
            return self
        return Box.from_center(self.cx, self.cy, max(self.w, aspect * self.h), max(self.h, aspect * self.w))

    def clipped(self, width: int, height: int) -> Box | None:
        """The part inside a frame of the given size, or None when nothing is inside."""
        x0, y0 = max(0.0, self.x), max(0.0, self.y)
        x1, y1 = min(float(width), self.x + self.w), min(float(height), self.y + self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1 - x0, y1 - y0)

    def rounded(self) -> list[float]:
        return [round(self.x, 1), round(self.y, 1), round(self.w, 1), round(self.h, 1)]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not touch)."""
    ix = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    iy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (a.area + b.area - inter)


def lerp(a: Box, b: Box, u: float) -> Box:
    """The box a fraction ``u`` of the way from ``a`` to ``b`` (centres and sizes move linearly)."""
    return Box.from_center(
        a.cx + (b.cx - a.cx) * u,
        a.cy + (b.cy - a.cy) * u,
        a.w + (b.w - a.w) * u,
        a.h + (b.h - a.h) * u,
    )
