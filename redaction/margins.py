"""How much margin a face's mask gets beyond its box: more where the detector's box is known to be
short, less where it is known to be good.

The stated margin (``RedactionSettings.mask_scale``, 1.5: a quarter of a face on every side) is
room for the detector's error. That error is not the same for every face:

- **Small faces in the dark come out small.** On the benchmark's tune clip the night faces of
  35-37 px (brightness about 10 of 255) were found with boxes 0.73-0.81 of the face's width, so
  a mask of the stated margin hid 30-89 % of them for up to 10 frames in a row; on the faces-dev
  training photographs darkened to a brightness of 15, the stated margin hides 90 % of faces of
  20-31 px (98 % by day) and a margin of 1.6 hides 97 %. A face under ``dark_small_below``
  pixels found where the picture under it is darker than ``dark_luma`` gets its mask grown by
  ``dark_grow`` (1.15: a margin of 1.725, so a box of 0.8 of the face's width gets a mask about as wide
  as the stated margin gives a box of the face's own width).
- **Small faces in the dark come out to one side.** Their boxes are off sideways more than up and
  down: on the benchmark's seed 101 night shot (tune photographs, both detectors) the boxes of
  night faces under 36 px were off sideways by a median 0.05-0.14 of a face (0.18-0.40 at the 90th
  percentile, after the landmarks' lean) and up or down by a median 0.05-0.07; one 29 px face's
  boxes sat 0.25-0.50 of a face to its right in every whole-frame pass, so its mask hid 0.75-0.90
  of it all shot long, and the least widening that hides it (>= 90 %) in every frame, its boxes
  moved by a pixel, is 1.25. Such a face's mask is also widened by ``dark_side`` (1.25), not heightened.
- **Large, confident, steady faces need less.** A face of ``steady_from`` pixels or more whose
  sightings within half a second (at least ``steady_sightings`` of them) have a median confidence
  of ``steady_confidence`` or more has a box the detector is sure of, and a quarter of a large
  face is a lot of picture: its mask is shrunk by ``steady_shrink`` (0.93: a margin of 1.4, which
  on the training photographs still hides 95-99 % of faces of 48 px and more, by day and at
  night). Before its first and after its last sighting a face is not steady: holds keep the
  stated margin.

The rule is pure: numbers in, a factor out; the tracker says what each face's sightings were.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MarginRule:
    """A factor on the stated margin, from a face's size, light and confidence (see the module doc).
    ``enabled`` false gives every face the stated margin."""

    enabled: bool = True
    dark_luma: float = 40.0
    dark_small_below: float = 48.0
    dark_grow: float = 1.15
    dark_side: float = 1.25
    steady_from: float = 64.0
    steady_confidence: float = 0.7
    steady_sightings: int = 3
    steady_shrink: float = 0.93

    def __post_init__(self) -> None:
        if self.dark_grow < 1:
            raise ValueError("dark_grow below 1 would shrink the masks of the faces hardest to see")
        if self.dark_side < 1:
            raise ValueError("dark_side below 1 would narrow the masks of the faces hardest to see")
        if not 0 < self.steady_shrink <= 1:
            raise ValueError("steady_shrink is a share of the stated margin, from 0 to 1")

    def factor(
        self, size: float, confidence: float | None, luma: float | None, sightings: int, held: bool
    ) -> float:
        """The factor for a face of ``size`` pixels whose nearby sightings have a median
        ``confidence`` and brightness ``luma`` (None: not known), ``sightings`` of them, in a frame
        where it is ``held`` (before its first or after its last sighting)."""
        if not self.enabled:
            return 1.0
        if self._dark_small(size, luma):
            return self.dark_grow
        if (
            not held
            and size >= self.steady_from
            and confidence is not None
            and confidence >= self.steady_confidence
            and sightings >= self.steady_sightings
        ):
            return self.steady_shrink
        return 1.0

    def sideways(self, size: float, luma: float | None) -> float:
        """The further factor on a mask's width alone (see the module doc): ``dark_side`` for a
        small face in the dark, else 1."""
        return self.dark_side if self.enabled and self._dark_small(size, luma) else 1.0

    def _dark_small(self, size: float, luma: float | None) -> bool:
        return luma is not None and luma < self.dark_luma and size < self.dark_small_below
