"""Finding hard cuts: the frame where one shot ends and another begins.

A face on one side of a cut has nothing to do with a face on the other, so tracks, holds and
the camera's measured motion all stop at a cut. A cut is a frame whose brightness histogram, or
whose coarse layout (a thumbnail normalised for brightness and contrast), differs from the frame
before far more than the recent frame-to-frame changes did. A pan, a walking bob or a face
crossing changes the layout a little at every frame, so the recent changes raise the bar. A flash
or a sudden exposure change may be taken for a cut: that costs no more than a fresh detection.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np


class CutDetector:
    """Feed it every frame's grey (Y) plane in order; ``update`` says whether that frame starts a shot."""

    def __init__(
        self,
        hist_threshold: float = 0.35,
        layout_threshold: float = 0.35,
        recent: int = 15,
        min_shot: int = 6,
    ) -> None:
        self.hist_threshold = hist_threshold
        self.layout_threshold = layout_threshold
        self.min_shot = min_shot
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._recent: deque[tuple[float, float]] = deque(maxlen=recent)
        self._since_cut = 0
        self.last = (0.0, 0.0)

    def update(self, luma: np.ndarray) -> bool:
        small = cv2.resize(luma, (64, 36), interpolation=cv2.INTER_AREA)
        counts = cv2.calcHist([small], [0], None, [32], [0, 256]).reshape(-1)
        hist: np.ndarray = counts / max(1.0, float(counts.sum()))
        previous = self._previous
        self._previous = (small, hist)
        self._since_cut += 1
        if previous is None:
            self._since_cut = 0
            return True
        p_small, p_hist = previous
        hist_d = float(cv2.compareHist(p_hist, hist, cv2.HISTCMP_BHATTACHARYYA))
        # Layout: the difference of the two thumbnails once each is normalised for brightness and
        # contrast, so an exposure change alone scores low.
        a = _normalised(p_small)
        b = _normalised(small)
        layout_d = float(np.mean(np.abs(a - b))) / 2.0
        usual_hist = float(np.median([h for h, _ in self._recent])) if self._recent else 0.0
        usual_layout = float(np.median([lay for _, lay in self._recent])) if self._recent else 0.0
        self._recent.append((hist_d, layout_d))
        self.last = (hist_d, layout_d)
        # A cut changes the picture all at once: far more than the last frames changed.
        by_light = hist_d >= self.hist_threshold and hist_d >= 4 * usual_hist
        by_layout = (
            layout_d >= self.layout_threshold
            and layout_d >= 3 * usual_layout
            and hist_d >= self.hist_threshold / 2
        )
        cut = self._since_cut >= self.min_shot and (by_light or by_layout)
        if cut:
            self._since_cut = 0
            self._recent.clear()
        return cut


def _normalised(image: np.ndarray) -> np.ndarray:
    f = image.astype(np.float32)
    return (f - f.mean()) / (f.std() + 8.0)
