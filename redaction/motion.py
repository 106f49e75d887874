"""How far the whole picture has moved: the camera's own shake, pan and walking bob.

A body-worn camera never holds still, so a face between two detections does not move in a
straight line on screen even when the person does. Measuring the picture's shift from frame to
frame lets the tracker interpolate faces in steady scene coordinates and put the camera's motion
back afterwards.

The shift is the median motion of corner features followed by optical flow on a small grey
copy of each frame (a millisecond or two). Features on known faces are left out, and the median
ignores the rest of what moves on its own, so a large face crossing the view is not mistaken for
the camera turning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from redaction.geometry import Box


class CameraMotion:
    """Accumulates the picture's shift, frame by frame, in full-frame pixels.

    ``update`` returns (dx, dy): where content that sat at (0, 0) in the first frame now appears.
    When too few features can be followed (a blank wall, a blurred frame), the step counts as none.
    """

    def __init__(self, width: int = 320, max_features: int = 100, min_features: int = 12) -> None:
        self.width = width
        self.max_features = max_features
        self.min_features = min_features
        self._previous: np.ndarray | None = None
        self._scale = 1.0
        self.offset = (0.0, 0.0)

    def update(
        self, luma: np.ndarray, moving: Iterable[Box] = (), small: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Take the next frame's grey (Y) plane, and boxes (in the previous frame, full-frame
        pixels) of things known to move on their own; return the picture's total shift so far.
        ``small``: the plane's ``thumbnail`` at this ``width``, when it was made already."""
        h, w = luma.shape[:2]
        self._scale = min(1.0, self.width / w)
        current = thumbnail(luma, self.width) if small is None else small
        size = (current.shape[1], current.shape[0])
        previous = self._previous
        self._previous = current
        if previous is None or previous.shape != current.shape:
            return self.offset
        mask = np.full(previous.shape, 255, np.uint8)
        for box in moving:
            b = box.scaled(1.3)
            x0, y0 = int(max(0, b.x * self._scale)), int(max(0, b.y * self._scale))
            x1, y1 = (
                int(min(size[0], (b.x + b.w) * self._scale + 1)),
                int(min(size[1], (b.y + b.h) * self._scale + 1)),
            )
            if x1 > x0 and y1 > y0:
                mask[y0:y1, x0:x1] = 0
        points = cv2.goodFeaturesToTrack(previous, self.max_features, 0.01, 6, mask=mask, blockSize=5)
        if points is None or len(points) < self.min_features:
            return self.offset
        # OpenCV's stubs disagree across releases on whether nextPts may be None (an output here).
        optical_flow: Any = cv2.calcOpticalFlowPyrLK
        moved, status, _ = optical_flow(previous, current, points, None, winSize=(15, 15), maxLevel=2)
        ok = status.reshape(-1) == 1
        if ok.sum() < self.min_features:
            return self.offset
        step = np.median((moved - points).reshape(-1, 2)[ok], axis=0)
        self.offset = (
            self.offset[0] + float(step[0]) / self._scale,
            self.offset[1] + float(step[1]) / self._scale,
        )
        return self.offset


def thumbnail(luma: np.ndarray, width: int) -> np.ndarray:
    """The small grey copy of a frame that ``CameraMotion`` follows features on (``width`` across
    at most): it needs the frame's pixels only, so it can be made ahead of the frame's turn."""
    h, w = luma.shape[:2]
    scale = min(1.0, width / w)
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return cv2.resize(luma, size, interpolation=cv2.INTER_AREA)
