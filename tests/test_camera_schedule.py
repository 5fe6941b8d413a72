"""The camera loop's schedule: a late host catches up on the driver's queued frames."""

from __future__ import annotations

import numpy as np
import pytest

from magscope_devices._acquisition import default_ring_capacity, next_exposure

PERIOD = 0.005  # s (200 frames/s)


def test_on_time_delivers_the_next_exposure_and_loses_nothing():
    t, nxt, skipped = next_exposure(now=10.0001, next_t=10.0, period=PERIOD, buffer_frames=10)
    assert (t, nxt, skipped) == (10.0, pytest.approx(10.005), 0)


def test_a_late_host_takes_the_oldest_queued_frame():
    # 7 periods late: 8 frames are waiting, the queue holds 10, the oldest comes first
    t, nxt, skipped = next_exposure(now=10.0 + 7.5 * PERIOD, next_t=10.0, period=PERIOD,
                                    buffer_frames=10)
    assert skipped == 0 and t == 10.0 and nxt == pytest.approx(10.0 + PERIOD)


@pytest.mark.parametrize("late_periods, buffer_frames, lost", [
    (12.5, 10, 3),  # 13 waiting, 10 kept: the 3 oldest are lost
    (1.5, 1, 1),  # no queue: the frame a period late is lost, the newest delivered
    (0.5, 1, 0),
    (100.2, 10, 91),
])
def test_frames_beyond_the_queue_are_lost_oldest_first(late_periods, buffer_frames, lost):
    now = 10.0 + late_periods * PERIOD
    t, nxt, skipped = next_exposure(now, 10.0, PERIOD, buffer_frames)
    assert skipped == lost
    assert t == pytest.approx(10.0 + lost * PERIOD)
    assert nxt == pytest.approx(t + PERIOD)
    # what is delivered is never in the future and never older than the queue holds
    assert t <= now and now - t < buffer_frames * PERIOD + PERIOD


def test_catching_up_delivers_every_exposure_once_in_order():
    """A host that stalls 6 periods, then runs fast: every exposure arrives, in order."""
    next_t, now, delivered, lost = 0.0, 0.0, [], 0
    for k in range(40):
        now = max(now, next_t)
        if k == 10:
            now += 6 * PERIOD  # the stall
        t, next_t, skipped = next_exposure(now, next_t, PERIOD, 10)
        delivered.append(t)
        lost += skipped
        now += 0.0002  # the host's work on a frame
    assert lost == 0
    steps = np.diff(delivered)
    assert all(s == pytest.approx(PERIOD) for s in steps)


def test_the_default_ring_holds_two_seconds_within_its_floor_and_memory_cap():
    mib = 2**20
    # 100 frames/s of 1024 x 768 8-bit frames: 200 frames (157 MB)
    assert default_ring_capacity(100.0, 1024 * 768) == 200
    # slow cameras keep the floor of 64 frames
    assert default_ring_capacity(10.0, 1024 * 768) == 64
    # 200 frames/s of 1280 x 1024 16-bit frames: 2 s would be 1 GiB, the cap gives 204
    capped = default_ring_capacity(200.0, 1280 * 1024 * 2)
    assert capped == 512 * mib // (1280 * 1024 * 2) == 204
    # frames so large that 64 exceed the cap: the floor wins
    assert default_ring_capacity(100.0, 16 * mib) == 64
    with pytest.raises(ValueError, match="frame_rate_hz must be a positive number.*nan"):
        default_ring_capacity(float("nan"), 100)
    with pytest.raises(ValueError, match="frame_bytes must be at least 1 byte, got 0"):
        default_ring_capacity(100.0, 0)
