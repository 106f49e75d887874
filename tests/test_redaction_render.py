"""Drawing masks: a blurred face is gone for good, solid and pixelated masks look as they should."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage import data

from redaction.detector import CenterFaceDetector
from redaction.frames import Frame
from redaction.geometry import Box, iou
from redaction.render import Mask, MaskStyle, apply_masks, covered

FACE = Box(181, 58, 88, 120)  # the astronaut's face in skimage's portrait, as CenterFace boxes it


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector(threshold=0.2)


def masked(image: np.ndarray, masks: list[Mask], style: MaskStyle) -> np.ndarray:
    frame = Frame.from_bgr(image)
    apply_masks(frame, masks, style)
    return frame.to_bgr()


def sharpness(image: np.ndarray, box: Box) -> float:
    region = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[
        int(box.y) : int(box.y + box.h), int(box.x) : int(box.x + box.w)
    ]
    return float(cv2.Laplacian(region.astype(np.float32), cv2.CV_32F).var())


def test_blurred_face_is_no_longer_found_and_its_detail_is_gone(portrait, detector) -> None:  # type: ignore[no-untyped-def]
    assert any(iou(d.box, FACE) > 0.5 for d in detector.detect(portrait))
    out = masked(portrait, [Mask(FACE.scaled(1.5), "ellipse")], MaskStyle("blur"))
    assert not any(iou(d.box, FACE) > 0.1 for d in detector.detect(out))
    # Fine detail (eyes, mouth, hair strands) is gone, not just softened.
    assert sharpness(out, FACE) < 0.02 * sharpness(portrait, FACE)
    # Away from the mask nothing changed at all.
    untouched = masked(portrait, [], MaskStyle("blur"))
    far = (slice(300, 500), slice(0, 120))
    assert np.array_equal(out[far], untouched[far])


def test_blur_keeps_only_a_few_samples_whatever_the_face(portrait) -> None:  # type: ignore[no-untyped-def]
    """Two different faces under the same mask come out nearly alike: identity does not survive."""
    other = portrait.copy()
    other[FACE_SLICE] = cv2.flip(portrait[FACE_SLICE], 1)  # the same colours, a different face layout
    mask = [Mask(FACE.scaled(1.5), "rect")]
    a, b = masked(portrait, mask, MaskStyle("blur")), masked(other, mask, MaskStyle("blur"))
    before = np.abs(portrait[FACE_SLICE].astype(int) - other[FACE_SLICE].astype(int)).mean()
    after = np.abs(a[FACE_SLICE].astype(int) - b[FACE_SLICE].astype(int)).mean()
    assert after < 0.25 * before


FACE_SLICE = (slice(58, 178), slice(181, 269))


def test_solid_fills_the_ellipse_and_only_the_ellipse(portrait) -> None:  # type: ignore[no-untyped-def]
    box = Box(100, 100, 200, 100)
    out = masked(portrait, [Mask(box, "ellipse")], MaskStyle("solid", colour=(0, 0, 0)))
    assert out[150, 200].max() <= 3  # the centre
    assert out[150, 110].max() <= 3  # near the left edge, still inside the ellipse
    # In the box's corner but outside the ellipse: untouched.
    untouched = masked(portrait, [], MaskStyle("solid"))
    assert np.array_equal(out[104, 106], untouched[104, 106])


def test_pixelate_leaves_blocks(portrait) -> None:  # type: ignore[no-untyped-def]
    box = Box(160, 40, 128, 160)
    out = masked(portrait, [Mask(box, "rect")], MaskStyle("pixelate", pixel_cells=8))
    region = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[44:196, 164:284]
    distinct_rows = {tuple(row) for row in region[::1]}
    assert len(distinct_rows) <= 12  # 8 cells tall, plus chroma-rounding seams


def test_masks_partly_out_of_frame_hide_what_is_inside(portrait) -> None:  # type: ignore[no-untyped-def]
    box = Box(-50, -40, 150, 120)
    out = masked(portrait, [Mask(box, "rect")], MaskStyle("solid"))
    assert out[:80, :100].max() <= 3
    assert covered(Box(0, 0, 60, 60), [Mask(box, "rect")], 512, 512) == 1.0


def test_covered_measures_ellipse_and_rectangle() -> None:
    box = Box(0, 0, 100, 60)
    assert covered(box, [Mask(box, "rect")], 640, 480) == 1.0
    assert covered(box, [Mask(box, "ellipse")], 640, 480) == pytest.approx(math.pi / 4, abs=0.02)
    assert covered(box, [Mask(Box(300, 300, 20, 20), "rect")], 640, 480) == 0.0
    assert covered(box, [Mask(box.scaled(1.5), "ellipse")], 640, 480) > 0.97
