"""The station's pieces that need no server. The software trigger on frames drawn here: each part decided once on a
whole, centred, still frame; empty belt never decided; a part it could not see well reported undecided, never
dropped; a changed view learnt again. The line's rolling health. A GenICam camera's buffers."""

from __future__ import annotations

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from casting_inspection.serving.health import LineHealth
from casting_inspection.serving.station.settings import TriggerSettings
from casting_inspection.serving.station.trigger import PartTrigger

W, H, SIDE = 320, 192, 96


def photo(seed: int, hub: int = 50) -> np.ndarray:
    """A light square photo with a grey disc and a hub (hub=60 matches the belt: a hole in the part's outline)."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
    image = np.full((SIDE, SIDE), 200, np.uint8)
    image[r < SIDE * 0.38] = 100 + seed % 10
    image[r < SIDE * 0.13] = hub
    return np.repeat(image[..., None], 3, axis=2)


def frame(parts: list[tuple[np.ndarray, int]], rng) -> np.ndarray:
    """The belt (grey 60, noisy) with each (photo, centre x) on it."""
    canvas = rng.normal(60, 3, (H, W, 3)).clip(0, 255).astype(np.uint8)
    for image, cx in parts:
        left, top = cx - SIDE // 2, (H - SIDE) // 2
        a, b = max(0, left), min(W, left + SIDE)
        if b > a:
            canvas[top : top + SIDE, a:b] = image[:, a - left : b - left]
    return canvas


def run(trigger: PartTrigger, frames: list[np.ndarray]) -> list:
    return [event for index, f in enumerate(frames) for event in trigger.frame(f, index)]


def ride(image, xs: list[int], rng) -> list[np.ndarray]:
    return [frame([(image, x)], rng) for x in xs]


def test_a_part_that_stops_at_the_centre_is_decided_once_on_its_whole_photo():
    rng = np.random.default_rng(0)
    image = photo(1, hub=60)
    frames = [frame([], rng)] * 3 + ride(image, [-24, 40, 100, 160, 160, 160, 220, 280, 340], rng) + [frame([], rng)] * 3
    events = run(PartTrigger(TriggerSettings()), frames)
    assert [e.kind for e in events] == ["decide"]
    assert events[0].crop.shape == image.shape
    assert np.abs(events[0].crop.astype(int) - image).max() <= 12  # the photo, not the belt around it


def test_empty_belt_and_sensor_noise_are_never_decided():
    rng = np.random.default_rng(1)
    assert run(PartTrigger(TriggerSettings()), [frame([], rng) for _ in range(60)]) == []


def test_a_part_too_fast_for_a_sharp_frame_is_reported_undecided_when_it_leaves():
    rng = np.random.default_rng(2)
    frames = [frame([], rng)] + ride(photo(2), [-10, 60, 130, 200, 270, 340, 420], rng) + [frame([], rng)]
    events = run(PartTrigger(TriggerSettings(motion=0.1)), frames)  # 70 px a frame: 22 % of the width
    assert [e.kind for e in events] == ["undecided"] and "left the view" in events[0].reason
    assert events[0].crop is not None and events[0].crop.size


def test_two_parts_in_view_are_each_decided_once():
    rng = np.random.default_rng(3)
    a, b = photo(3), photo(4)
    frames = [frame([], rng), frame([(a, 160), (b, 40)], rng), frame([(a, 160), (b, 40)], rng), frame([(b, 100)], rng),
              frame([(b, 160)], rng), frame([(b, 160)], rng), frame([], rng)]  # fmt: skip
    events = run(PartTrigger(TriggerSettings()), frames)
    assert sorted(e.track.number for e in events if e.kind == "decide") == [1, 2]
    assert len(events) == 2


def test_a_reset_reports_every_part_in_view_undecided():
    rng = np.random.default_rng(4)
    trigger = PartTrigger(TriggerSettings())
    run(trigger, [frame([], rng), frame([(photo(5), 20)], rng)])
    events = trigger.reset("the camera stalled while the part was in view")
    assert [e.kind for e in events] == ["undecided"] and events[0].reason.startswith("the camera stalled")
    assert trigger.tracks == []


def test_settings_out_of_range_are_named():
    assert TriggerSettings().problem() is None
    assert "centre" in TriggerSettings(centre=0.9).problem()
    assert "difference" in TriggerSettings(difference=0).problem()


def test_line_health_rolls_over_the_last_parts_and_raises_the_drift_alarm():
    reference = {"alarm_share": 0.2, "statistics": {"brightness": {"low": 0.3, "high": 0.7, "mean": 0.5, "std": 0.1}}}
    registry = CollectorRegistry()
    health = LineHealth(registry, window=4)
    health.use_model(reference)
    normal = np.full((1, 3, 8, 8), 128, np.uint8)
    dark = np.full((1, 3, 8, 8), 20, np.uint8)
    for decision in ("ok", "ok", "defective", "ok"):
        health.observe([decision], normal)
    text = generate_latest(registry).decode()
    assert 'casting_inspect_rolling_share{decision="defective"} 0.25' in text
    assert "casting_inspect_drift_alarm 0.0" in text
    for _ in range(4):
        health.observe(["not_a_part"], dark)  # a lamp that failed: the window fills with dark frames
    text = generate_latest(registry).decode()
    assert 'casting_inspect_rolling_share{decision="not_a_part"} 1.0' in text
    assert 'casting_inspect_drift_share_outside{statistic="brightness"} 1.0' in text
    assert "casting_inspect_drift_alarm 1.0" in text
    assert 'casting_inspect_parts_total{decision="ok"} 3.0' in text


def test_a_change_of_the_whole_view_is_learnt_again_and_parts_after_it_are_decided():
    rng = np.random.default_rng(5)
    trigger = PartTrigger(TriggerSettings())
    brighter = [(f.astype(int) + 40).clip(0, 255).astype(np.uint8) for f in [frame([], rng) for _ in range(2)]]
    events = run(trigger, [frame([], rng), *brighter])  # the hall's lights go on
    assert events == [] and trigger.background.mean() > 90 and trigger.notice is None
    later = [(f.astype(int) + 40).clip(0, 255).astype(np.uint8) for f in ride(photo(6), [40, 100, 160, 160, 220, 280, 340], rng)]
    assert [e.kind for e in run(trigger, later)] == ["decide"]


def test_a_part_in_the_first_frame_is_learnt_as_belt_then_forgotten_after_dwell():
    rng = np.random.default_rng(6)
    trigger = PartTrigger(TriggerSettings(dwell=5))
    ghost_frames = [frame([(photo(7), 160)], rng)] + [frame([], rng) for _ in range(8)]  # the part leaves: a ghost stays
    events = [e for index, f in enumerate(ghost_frames) for e in trigger.frame(f, index)]
    assert len(events) <= 1  # at most the ghost itself, decided once (the model then judges an empty crop)
    assert trigger.tracks == []  # after `dwell` frames the empty view is learnt again: no part stays
    assert [e.kind for e in run(trigger, ride(photo(8), [40, 100, 160, 160, 220, 280, 340], rng))] == ["decide"]


def test_grey_and_resized_frames_are_taken_in_stride():
    rng = np.random.default_rng(7)
    trigger = PartTrigger(TriggerSettings())
    grey = [f[..., :1] for f in ride(photo(9), [40, 100, 160, 160, 220, 280, 340], rng)]
    assert [e.kind for e in run(trigger, [frame([], rng)[..., :1], *grey])] == ["decide"]
    big = cv2.resize(frame([(photo(9), 160)], rng), (640, 384))
    assert trigger.frame(big, 99) == [] and trigger.notice and "size" in trigger.notice


def test_genicam_buffers_become_8_bit_frames_and_other_pixel_formats_are_refused_by_name():
    import pytest

    from casting_inspection.core.errors import InspectionError
    from casting_inspection.serving.station.sources import _genicam_image

    mono12 = np.array([[0, 4095], [2048, 16]], np.uint16)
    assert _genicam_image("Mono12", mono12.ravel(), 2, 2).tolist() == [[0, 255], [128, 1]]
    rgb = np.array([10, 20, 30] * 4, np.uint8)
    assert _genicam_image("RGB8", rgb, 2, 2)[0, 0].tolist() == [30, 20, 10]  # BGR, as OpenCV's frames
    with pytest.raises(InspectionError, match="BayerRG8: set the camera to one of Mono8"):
        _genicam_image("BayerRG8", rgb, 2, 2)


def test_an_indexing_conveyor_moving_parts_together_decides_each_part_once():
    """Parts 120 px apart move on 60 px a frame for two frames, then stand three: each move takes a part as far as
    the gap to the next, and each keeps its own track."""
    rng = np.random.default_rng(8)
    parts = [photo(10 + k) for k in range(6)]
    frames, offset = [frame([], rng)], -240
    for _ in range(12):
        for _ in range(3):
            frames.append(frame([(p, 160 + offset - 120 * k) for k, p in enumerate(parts)], rng))
        for _ in range(2):
            offset += 60
            frames.append(frame([(p, 160 + offset - 120 * k) for k, p in enumerate(parts)], rng))
    events = run(PartTrigger(TriggerSettings()), frames)
    assert [e.kind for e in events] == ["decide"] * 6
    assert sorted(e.track.number for e in events) == sorted({e.track.number for e in events})


def test_a_light_change_with_a_part_in_view_keeps_it_one_part_and_leaves_no_phantom():
    rng = np.random.default_rng(10)
    trigger = PartTrigger(TriggerSettings())
    image = photo(12)
    lit = lambda f: (f.astype(int) + 40).clip(0, 255).astype(np.uint8)  # noqa: E731
    frames = [frame([], rng), *ride(image, [40, 100, 160, 160], rng)]  # decided at the centre
    frames += [lit(f) for f in ride(image, [160, 160, 220, 280, 340, 400], rng)] + [lit(frame([], rng))] * 3
    events = run(trigger, frames)
    assert [e.kind for e in events] == ["decide"]  # one part, one result: no undecided, no phantom where it stood


def test_a_part_held_at_the_centre_past_dwell_is_neither_learnt_as_belt_nor_a_phantom():
    rng = np.random.default_rng(11)
    trigger = PartTrigger(TriggerSettings(dwell=5))
    image = photo(13)
    frames = [frame([], rng), *ride(image, [40, 100, 160], rng), *[frame([(image, 160)], rng)] * 12]
    frames += ride(image, [220, 280, 340, 400], rng) + [frame([], rng)] * 3
    assert [e.kind for e in run(trigger, frames)] == ["decide"]


def test_a_part_on_a_conveyor_that_never_stops_is_decided_once_on_its_best_centred_frame():
    rng = np.random.default_rng(12)
    image = photo(14)
    xs = list(range(-20, 400, 36))  # 36 px a frame (11 % of the width): never still; 160 is one of its places
    events = run(PartTrigger(TriggerSettings()), [frame([], rng), *ride(image, xs, rng), frame([], rng)])
    assert [e.kind for e in events] == ["decide"]
    assert np.abs(events[0].crop.astype(int) - image).max() <= 12  # the frame where it stood at the centre
