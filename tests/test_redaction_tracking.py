"""The face tracker: joining detections, filling gaps, lingering masks and camera-shake compensation."""

from __future__ import annotations

import random

import pytest

from redaction.detector import Detection
from redaction.geometry import Box, iou
from redaction.pipeline import DetectionPlan, RedactionSettings
from redaction.render import Mask, covered
from redaction.tracking import FaceTracker, TrackingSettings


def det(x: float, y: float, size: float = 40, score: float = 0.9) -> Detection:
    return Detection(Box(x, y, size, size), score)


def plain(**kw: int) -> TrackingSettings:
    base = {"max_gap": 10, "keep_before": 3, "keep_after": 4, "smooth": 0}
    return TrackingSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_detections_of_one_moving_face_form_one_track_and_gaps_are_interpolated() -> None:
    tracker = FaceTracker(plain())
    for frame in range(0, 30, 5):
        tracker.observe(frame, [det(100 + 2 * frame, 50)])
    tracks = {b.track for f in range(30) for b in tracker.boxes_at(f)}
    assert tracks == {0}
    middle = tracker.boxes_at(12)
    assert len(middle) == 1 and middle[0].kind == "interpolated"
    assert middle[0].box.x == pytest.approx(124)
    seen = tracker.boxes_at(10)[0]
    assert seen.kind == "detected" and seen.score == pytest.approx(0.9)


def test_masks_start_before_first_and_end_after_last_sighting_along_the_motion() -> None:
    tracker = FaceTracker(plain(keep_before=3, keep_after=4))
    for frame in (10, 12, 14):
        tracker.observe(frame, [det(100 + 5 * (frame - 10), 50)])
    assert tracker.boxes_at(6) == []
    early = tracker.boxes_at(7)
    assert len(early) == 1 and early[0].kind == "extended"
    # 3 frames before the first sighting at 5 px a frame, at the face's own size (a hold does
    # not grow the mask).
    assert early[0].box.cx == pytest.approx(120 - 15)
    assert early[0].box.w == pytest.approx(40)
    late = tracker.boxes_at(18)
    assert len(late) == 1 and late[0].box.cx == pytest.approx(140 + 20)
    assert tracker.boxes_at(19) == []


def test_a_gap_longer_than_max_gap_splits_the_track_and_leaves_the_middle_unmasked() -> None:
    tracker = FaceTracker(plain(max_gap=10, keep_before=0, keep_after=0))
    tracker.observe(0, [det(100, 100)])
    tracker.observe(30, [det(100, 100)])
    assert tracker.boxes_at(15) == []
    assert tracker.track_count == 2


def test_two_faces_keep_their_own_tracks() -> None:
    tracker = FaceTracker(plain())
    for frame in range(0, 20, 2):
        tracker.observe(frame, [det(100 + frame, 100), det(400 - frame, 120, size=60)])
    at = tracker.boxes_at(9)
    assert len(at) == 2
    assert tracker.track_count == 2
    by_track = {b.track: b.box for b in at}
    assert by_track[0].x == pytest.approx(109)
    assert by_track[1].x == pytest.approx(391)


def test_largest_size_in_the_smoothing_window_is_kept() -> None:
    tracker = FaceTracker(plain(smooth=2))
    tracker.observe(0, [Detection(Box(100, 100, 40, 40), 0.9)])
    tracker.observe(1, [Detection(Box(102, 102, 36, 36), 0.5)])  # blurred: looks smaller
    tracker.observe(2, [Detection(Box(100, 100, 40, 40), 0.9)])
    assert tracker.boxes_at(1)[0].box.w == pytest.approx(40)


def test_a_sighting_seen_smaller_takes_the_size_its_neighbours_a_few_frames_away_give_it() -> None:
    tracker = FaceTracker(plain(max_gap=30, smooth=2, size_reach=8))
    tracker.observe(0, [Detection(Box(100, 100, 40, 40), 0.9)])
    tracker.observe(5, [Detection(Box(104, 104, 32, 32), 0.5)])  # one look gave a small box
    tracker.observe(10, [Detection(Box(100, 100, 40, 40), 0.9)])
    tracker.observe(30, [Detection(Box(102, 102, 32, 32), 0.9)])  # too far to be the same look's error
    assert tracker.boxes_at(5)[0].box.w == pytest.approx(40)
    assert tracker.boxes_at(7)[0].box.w == pytest.approx(40)
    assert tracker.boxes_at(30)[0].box.w == pytest.approx(32)


def test_a_face_coming_closer_keeps_its_own_size_between_smaller_and_larger_sightings() -> None:
    tracker = FaceTracker(plain(max_gap=30, smooth=2, size_reach=8))
    for frame, size in ((0, 40), (5, 44), (10, 48)):
        tracker.observe(frame, [Detection(Box(100, 100, size, size), 0.9)])
    assert tracker.boxes_at(5)[0].box.w == pytest.approx(44)


def test_camera_shake_is_followed_between_sightings() -> None:
    """A face still in the scene, filmed by a shaking camera: interpolation follows the shake."""
    shake = {f: (8.0 * ((-1) ** f), 0.0) for f in range(21)}
    steady = FaceTracker(plain())
    compensated = FaceTracker(plain())
    for f in range(21):
        compensated.move_camera(f, shake[f])
        if f % 10 == 0:
            steady.observe(f, [det(200 + shake[f][0], 100)])
            compensated.observe(f, [det(200 + shake[f][0], 100)])
    truth = Box(200 + shake[5][0], 100, 40, 40)
    assert iou(compensated.boxes_at(5)[0].box, truth) == pytest.approx(1.0)
    assert iou(steady.boxes_at(5)[0].box, truth) < 0.8


def test_expected_lists_live_tracks_not_seen_lately() -> None:
    tracker = FaceTracker(plain(max_gap=10))
    tracker.observe(0, [det(100, 100)])
    tracker.observe(4, [det(108, 100)])
    expected = tracker.expected(6, unseen_for=2)
    assert [t for t, _ in expected] == [0]
    assert expected[0][1].x == pytest.approx(112, abs=0.5)  # the filter's estimate of 2 px a frame
    assert tracker.expected(5, unseen_for=2) == []
    assert tracker.expected(20, unseen_for=2) == []


def test_frames_must_be_observed_in_order() -> None:
    tracker = FaceTracker()
    tracker.observe(5, [])
    with pytest.raises(ValueError):
        tracker.observe(5, [])


def test_forgotten_tracks_no_longer_answer() -> None:
    tracker = FaceTracker(plain(max_gap=5, keep_after=2))
    tracker.observe(0, [det(100, 100)])
    tracker.observe(20, [det(500, 100)])
    tracker.forget_before(10)
    assert tracker.boxes_at(1) == []
    assert len(tracker.boxes_at(20)) == 1


def test_detection_plan_looks_at_a_shot_at_once_and_less_often_when_still() -> None:
    settings = RedactionSettings(detect_width=640, stride=5, still_stride=8, fine_stride=24)
    plan = DetectionPlan.for_clip(settings, 1280)
    assert plan.widths(0, 99, True) == [640]  # a shot's first frame: at once
    assert plan.widths(3, 3, False) == [] and plan.widths(5, 5, False) == [640]
    assert plan.widths(5, 5, True) == [] and plan.widths(8, 8, True) == [640]
    assert plan.widths(12, 1, False) == [1280]  # the fine pass replaces the coarse one on its frame
    assert plan.widths(36, 1, False) == [1280] and plan.widths(24, 1, False) == []
    small = DetectionPlan.for_clip(settings, 640)
    assert small.fine_width is None and small.widths(0, 0, False) == [640]
    assert all(small.widths(f, f % 5, False) in ([], [640]) for f in range(1, 48))


def test_a_hold_after_a_lone_last_sighting_stays_where_it_was_seen() -> None:
    """A sighting joined to a track after a long gap gives no speed to carry the hold by: a speed
    taken across the gap moved the mask off across the picture onto nothing."""
    tracker = FaceTracker(TrackingSettings(keep_after=6, smooth=0))
    tracker.observe(0, [Detection(Box(300, 100, 40, 40), 0.9)])
    tracker.observe(2, [Detection(Box(304, 100, 40, 40), 0.9)])
    tracker.observe(22, [Detection(Box(100, 100, 40, 40), 0.9)])  # joined: the gate is wide after 20 frames
    assert tracker.track_count == 1
    held = [tracker.boxes_at(f)[0] for f in range(23, 29)]
    assert all(b.kind == "extended" and b.box == Box(100, 100, 40, 40) for b in held)
    assert tracker.boxes_at(29) == []


def test_a_face_is_moved_sideways_by_the_median_lean_of_its_nearby_sightings() -> None:
    """A turned face's landmarks put it to one side of the detector's box; one frame's landmarks
    jitter (noise, blur), so each box moves by the median lean of the face's nearby sightings,
    sideways only, and a sighting without a lean (a profile) takes its neighbours'."""
    tracker = FaceTracker(plain(lean_span=4))
    leans: list[tuple[float, float] | None] = [(0.2, 0.3), (0.25, -0.3), (-0.5, 0.0), None, (0.2, 0.1)]
    for frame, lean in enumerate(leans):
        tracker.observe(frame, [Detection(Box(100, 100, 40, 40), 0.9, lean)])
    for frame in range(5):
        (box,) = tracker.boxes_at(frame)
        assert box.box.cx == pytest.approx(120 + 0.2 * 40), frame
        assert box.box.cy == pytest.approx(120), frame
    (held,) = tracker.boxes_at(6)  # the hold after the last sighting keeps the face's lean
    assert held.kind == "extended" and held.box.cx == pytest.approx(128)


def test_sightings_without_a_lean_keep_the_detectors_box() -> None:
    tracker = FaceTracker(plain())
    for frame in range(3):
        tracker.observe(frame, [det(100, 100)])
    assert [b.box for b in tracker.boxes_at(1)] == [Box(100, 100, 40, 40)]


def test_a_lone_sighting_does_not_join_a_face_far_across_the_picture_after_a_gap() -> None:
    """A face seen once (its speed unknown) leaves the picture; ten frames later another face is
    found 900 px away. The statistical gate of a track without a speed grows with the square of
    the gap, so it took the new face for the old one and the mask flew across the picture between
    them, leaving the first face bare right after its sighting."""
    tracker = FaceTracker(plain(max_gap=30, keep_before=3, keep_after=4))
    tracker.observe(0, [det(100, 300, size=99)])
    tracker.observe(10, [det(1000, 300, size=99)])
    assert tracker.track_count == 2
    held = tracker.boxes_at(2)
    assert [b.kind for b in held] == ["extended"]
    assert held[0].box.x == pytest.approx(100)


def test_a_fast_face_seen_again_after_a_gap_still_joins_its_track() -> None:
    """A 26 px face crossing at 14 px a frame, seen at frames 0 and 6: one track (the bound on a
    track's change of speed leaves a walker at a distance joined)."""
    tracker = FaceTracker(plain(max_gap=30))
    tracker.observe(0, [det(40, 200, size=26)])
    tracker.observe(6, [det(40 + 14 * 6, 200, size=26)])
    assert tracker.track_count == 1


def test_a_flat_box_does_not_pull_the_face_up_or_down_while_square_sightings_place_it() -> None:
    """A 40 px face crossing at 4 px a frame, found whole at frames 0 and 5 and, between, as the
    lower 0.62 of the face (what a look at a small face in a crowd sometimes returns: the box
    cut off above the eyes). Fitting the centre through the flat boxes put the mask 6 px low on
    the face for frames on end, its brow showing; their height says nothing about where the face
    is up and down, while their width still places it sideways."""
    tracker = FaceTracker(plain(smooth=2))
    for frame in range(6):
        x = 100 + 4 * frame
        whole = frame in (0, 5)
        tracker.observe(frame, [Detection(Box(x, 300, 40, 40) if whole else Box(x, 315, 40, 25), 0.9)])
    for frame in range(1, 5):
        (box,) = tracker.boxes_at(frame)
        assert box.box.cy == pytest.approx(320, abs=0.5)
        assert box.box.cx == pytest.approx(120 + 4 * frame, abs=0.5)
        assert box.box.h == 40


def test_a_face_whose_predicted_place_has_left_the_picture_is_not_joined_to_one_elsewhere() -> None:
    """A still face on a wall the camera pans past (scene coordinates: it stays put): once the
    camera has turned 400 px, its predicted box is out of the picture, and a face found 500 px of
    the wall away is a new face, not the old one come back; the same face come back into view
    (the camera turning back) is still joined."""
    settings = plain(max_gap=30)
    for back, tracks in ((False, 2), (True, 1)):
        tracker = FaceTracker(settings, (640, 360))
        for frame in range(0, 5):
            tracker.move_camera(frame, (-20.0 * frame, 0.0))
            tracker.observe(frame, [det(100 - 20 * frame, 100, size=60)])
        tracker.move_camera(15, (-400.0 if not back else -20.0, 0.0))
        tracker.observe(15, [det(200, 100, size=60) if not back else det(82, 100, size=60)])
        assert tracker.track_count == tracks, back
    unbounded = FaceTracker(settings)  # no picture size: joined by the gate alone, as before
    for frame in range(0, 5):
        unbounded.move_camera(frame, (-20.0 * frame, 0.0))
        unbounded.observe(frame, [det(100 - 20 * frame, 100, size=60)])
    unbounded.move_camera(15, (-400.0, 0.0))
    unbounded.observe(15, [det(200, 100, size=60)])
    assert unbounded.track_count == 1


def test_a_face_found_again_on_its_line_after_a_gap_is_not_looked_back_for_and_stays_one_track() -> None:
    """A face walking right, sighted every 4 frames, then unseen for 12 and found where its motion
    puts it: not reported (``resumed``: the mask between is drawn along that line, no looks
    spent); found a face's size off that line, it is; and a look back whose sightings lead back
    to where it was leaves it one track."""
    tracker = FaceTracker(TrackingSettings())
    for f in range(0, 24, 4):
        tracker.observe(f, [det(100 + 6 * f, 200)])
    tracker.observe(32, [det(100 + 6 * 32, 200)])
    assert tracker.resumed(32, 8) == []
    tracker.observe(46, [det(100 + 6 * 46, 280)])
    assert tracker.resumed(46, 8) == [(0, 32, Box(376, 280, 40, 40))]
    assert tracker.resumed(46, 14) == []
    for f in range(45, 35, -1):
        tracker.observe_earlier(0, f, det(100 + 6 * f, 200 + 80 * (f - 32) / 14))
    assert tracker.separate(0, 32) is None
    assert tracker.track_count == 1
    assert [b.kind for b in tracker.boxes_at(40)] == ["detected"]


def test_a_face_joined_to_a_track_gone_elsewhere_is_parted_from_it_by_its_path() -> None:
    """A walker's track last sighted at frame 20; a face coming into view far ahead is sighted at
    34 and joined to it (within the gate after 14 frames). The look back finds that face at 23-33,
    a third of the picture from where the walker could be: it becomes a track of its own, so the
    walker's mask is not drawn across the picture to it, and the face is masked where it was."""
    tracker = FaceTracker(TrackingSettings(), (1280, 720))
    for f in range(0, 21, 2):
        tracker.observe(f, [det(400 + 11 * f, 280, 32)])
    tracker.observe(34, [det(1000, 310, 45)])
    assert tracker.track_count == 1  # the join
    (resumed,) = tracker.resumed(34, 8)
    assert resumed[:2] == (0, 20)
    for f in range(33, 22, -1):
        tracker.observe_earlier(0, f, det(1000 + 6 * (34 - f), 310, 45 - (34 - f)))
    other = tracker.separate(0, 20)
    assert other == 1
    assert tracker.earliest(1) == (23, Box(1066, 310, 34, 34))
    walker = [b for b in tracker.boxes_at(24) if b.track == 0]
    assert walker and walker[0].kind == "extended" and walker[0].box.x < 700
    assert [b.kind for b in tracker.boxes_at(28) if b.track == 1] == ["detected"]


# A 29 px face in the dark (brightness 25 under its boxes), as the whole-frame passes saw it on the
# benchmark's seed 101 night shot (tune photographs, frames 180-264, fp32 detector): each sighting's
# frame, its box's centre off the face's (sideways, up and down) and its size, in face sizes, its
# score and its landmarks' lean. Every box sits 0.25-0.50 of a face to the right; the detections
# near the threshold (0.2) are second boxes of the same face, half a face up or down.
NIGHT_FACE = [
    (180, 0.33, 0.01, 0.95, 0.97, 0.551, -0.06),
    (185, 0.38, -0.04, 0.86, 0.90, 0.527, -0.13),
    (185, 0.39, 0.43, 0.84, 0.87, 0.200, -0.10),
    (190, 0.34, -0.01, 0.80, 0.87, 0.529, -0.08),
    (192, 0.36, -0.02, 0.89, 0.88, 0.535, -0.05),
    (192, 0.12, 0.36, 0.84, 0.84, 0.225, -0.07),
    (197, 0.50, -0.10, 0.82, 0.84, 0.434, -0.04),
    (197, 0.52, 0.41, 0.81, 0.82, 0.241, 0.01),
    (197, 0.53, -0.56, 0.79, 0.82, 0.237, -0.03),
    (197, 0.05, -0.10, 0.81, 0.82, 0.225, -0.07),
    (202, 0.40, -0.16, 0.81, 0.84, 0.444, -0.08),
    (202, 0.41, 0.33, 0.81, 0.86, 0.235, -0.08),
    (207, 0.35, -0.10, 0.85, 0.87, 0.445, -0.15),
    (212, 0.26, -0.08, 0.86, 0.91, 0.443, -0.11),
    (212, 0.76, -0.36, 0.79, 0.84, 0.200, None),
    (216, 0.29, 0.04, 0.99, 0.97, 0.411, -0.04),
    (221, 0.50, 0.01, 0.85, 0.85, 0.480, -0.03),
    (226, 0.43, 0.06, 0.86, 0.88, 0.462, -0.05),
    (226, 0.44, -0.46, 0.84, 0.84, 0.242, -0.06),
    (231, 0.28, 0.04, 0.81, 0.83, 0.432, None),
    (236, 0.39, -0.05, 0.80, 0.95, 0.428, None),
    (240, 0.29, 0.02, 0.98, 1.02, 0.672, -0.08),
    (245, 0.37, 0.01, 0.91, 0.97, 0.404, -0.05),
    (245, 0.39, -0.51, 0.91, 0.97, 0.215, -0.08),
    (250, 0.27, -0.04, 0.90, 1.01, 0.416, None),
    (255, 0.36, -0.21, 0.82, 0.89, 0.280, None),
    (255, 0.09, 0.12, 0.85, 0.91, 0.201, None),
    (260, 0.41, -0.17, 0.87, 0.91, 0.471, None),
    (264, 0.25, 0.02, 0.88, 0.91, 0.321, -0.17),
]


def night_face(frame: int) -> Box:
    """Where the face is (the camera's pan taken out: a straight line), 32 px at 180, 26 at 264."""
    u = (frame - 180) / 84
    return Box.from_center(601.5 - 554.4 * u, 291.8 + 13.9 * u, 32.0 - 6.0 * u, 32.0 - 6.0 * u)


def test_a_small_night_face_whose_boxes_all_sit_to_one_side_is_hidden_whatever_a_pixel_or_the_threshold_does() -> (
    None
):
    """The night face's sightings, each box moved by up to a pixel and each score by up to a
    hundredth (several draws; a detection that falls under the threshold is not seen), through
    the tracker and the masks the renderer draws: the face is hidden (>= 90 %) in every frame from
    its first sighting to its last. With every box a third of a face to one side, a mask of the
    box's own size and margin hid 0.75-0.90 of it for dozens of frames, and which frames came
    over 0.90 was down to a pixel and to which second detection passed the threshold. A small face
    in the dark now has its mask widened (``MarginRule.dark_side``): such boxes err sideways."""
    settings = RedactionSettings()
    for seed in range(6):
        rng = random.Random(seed)
        tracker = FaceTracker(settings.tracking, (1280, 720))
        by_frame: dict[int, list[Detection]] = {}
        for frame, dx, dy, w, h, score, lean in NIGHT_FACE:
            face = night_face(frame)
            score += rng.uniform(-0.01, 0.01)
            if score < settings.threshold:
                continue
            x, y = face.cx + dx * face.w + rng.uniform(-1, 1), face.cy + dy * face.h + rng.uniform(-1, 1)
            box = Box.from_center(x, y, w * face.w + rng.uniform(-1, 1), h * face.h + rng.uniform(-1, 1))
            by_frame.setdefault(frame, []).append(
                Detection(box, score, None if lean is None else (lean, 0.0), luma=25.0)
            )
        for frame in sorted(by_frame):
            tracker.observe(frame, by_frame[frame])
        for frame in range(180, 265):
            masks = [Mask(settings.tracked_mask(t), settings.shape) for t in tracker.boxes_at(frame)]
            face = night_face(frame)
            assert covered(face, masks, 1280, 720) >= 0.9, (seed, frame)
            # Hidden by a mask reaching past the box, not by one the size of the picture.
            assert max(m.box.w for m in masks) < 3 * face.w, (seed, frame)


def test_only_a_small_face_in_the_dark_has_its_mask_widened() -> None:
    """The sideways margin is for the boxes of small faces in the dark; a face by day, or a large
    one at night, keeps the mask of its box and margin."""
    settings = RedactionSettings()
    for luma, size, wider in ((25.0, 30, True), (120.0, 30, False), (25.0, 60, False)):
        tracker = FaceTracker(settings.tracking, (1280, 720))
        for frame in range(0, 20, 5):
            tracker.observe(frame, [Detection(Box(200, 300, size, size), 0.6, luma=luma)])
        (tracked,) = tracker.boxes_at(8)
        mask = settings.tracked_mask(tracked)
        assert (mask.w > mask.h * 1.1) == wider, (luma, size)
