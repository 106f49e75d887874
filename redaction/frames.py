"""A decoded picture kept as ffmpeg hands it over: planar YUV 4:2:0.

Keeping frames in the codec's own layout halves what travels through the pipes and sits in the
look-ahead buffer, and spares ffmpeg two colour conversions per frame. Only the parts that are
looked at (a scaled-down copy for detection, a window around a known face) are turned into BGR.
"""

from __future__ import annotations

import cv2
import numpy as np


class Frame:
    """One picture in I420 layout: a Y plane at full size, U and V at half size each way.

    Width and height must be even (as H.264 in 4:2:0 requires).
    """

    __slots__ = ("buffer", "width", "height", "y", "u", "v")

    def __init__(self, buffer: np.ndarray, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("frame width and height must be even")
        if buffer.size != width * height * 3 // 2:
            raise ValueError("buffer does not hold one I420 frame of this size")
        self.buffer = buffer
        self.width = width
        self.height = height
        luma = width * height
        chroma = luma // 4
        self.y = buffer[:luma].reshape(height, width)
        self.u = buffer[luma : luma + chroma].reshape(height // 2, width // 2)
        self.v = buffer[luma + chroma :].reshape(height // 2, width // 2)

    @classmethod
    def empty(cls, width: int, height: int) -> Frame:
        return cls(np.empty(width * height * 3 // 2, np.uint8), width, height)

    @classmethod
    def from_bgr(cls, image: np.ndarray) -> Frame:
        h, w = image.shape[:2]
        i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        return cls(i420.reshape(-1), w, h)

    def bgr(
        self,
        region: tuple[int, int, int, int] | None = None,
        width: int | None = None,
        light: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, int, int, float, float]:
        """A BGR copy of ``region`` (x0, y0, x1, y1; default the whole frame), scaled to ``width``
        pixels across.

        ``light`` (dark, bright): when the region's mean brightness is below the first or above
        the second, its contrast is normalised (CLAHE on the brightness only), so a face in a
        night shot or in glare reaches the detector with its features showing.

        Returns the image, the region's actual top-left corner (aligned to even pixels) and the
        scale each way, so boxes found in the image map back as ``x / sx + x0``, ``y / sy + y0``.
        """
        x0, y0, x1, y1 = region or (0, 0, self.width, self.height)
        x0, y0 = max(0, x0 - x0 % 2), max(0, y0 - y0 % 2)
        x1, y1 = min(self.width, x1 + x1 % 2), min(self.height, y1 + y1 % 2)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ValueError("region is empty")
        rw, rh = x1 - x0, y1 - y0
        tw, th = rw, rh
        if width and width != rw:
            tw = max(2, 2 * round(width / 2))
            th = max(2, 2 * round(rh * tw / rw / 2))
        ys = self.y[y0:y1, x0:x1]
        us = self.u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        vs = self.v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        if (tw, th) != (rw, rh):
            how = cv2.INTER_AREA if tw < rw else cv2.INTER_LINEAR
            ys = cv2.resize(ys, (tw, th), interpolation=how)
            us = cv2.resize(us, (tw // 2, th // 2), interpolation=how)
            vs = cv2.resize(vs, (tw // 2, th // 2), interpolation=how)
        if light is not None:
            mean = float(cv2.mean(ys)[0])
            if mean < light[0] or mean > light[1]:
                ys = _clahe(ys)
        packed = np.concatenate([ys.reshape(-1), us.reshape(-1), vs.reshape(-1)]).reshape(th * 3 // 2, tw)
        return cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420), x0, y0, tw / rw, th / rh

    def to_bgr(self) -> np.ndarray:
        return cv2.cvtColor(self.buffer.reshape(self.height * 3 // 2, self.width), cv2.COLOR_YUV2BGR_I420)


def _clahe(luma: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation, tiles of about 80 px (at least 2 a side)."""
    h, w = luma.shape
    tiles = (max(2, min(8, round(w / 80))), max(2, min(8, round(h / 80))))
    return cv2.createCLAHE(clipLimit=3.0, tileGridSize=tiles).apply(np.ascontiguousarray(luma))
