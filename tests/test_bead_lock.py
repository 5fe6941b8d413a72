"""The bead lock's rules as pure functions: the focus PI step (sign, ramp, step response,
clamps, anti-windup, limits) on a one-line plant, and the XY lock's ROI moves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from magscope_tracking import ROI_DTYPE
from magscope_tracking.bead_lock import (
    FocusLockGains,
    FocusLockState,
    LockParameterError,
    check_rate_hz,
    focus_step,
    reference_height,
    roi_offsets_px,
    xy_lock_moves,
)

WIDE = {"low_nm": -1e6, "high_nm": 1e6}


def closed_loop(drift_nm, gains, dt=0.1, focus0=0.0):
    """A plant with the sign convention of tracked z: z = drift - focus. The lock holds
    z at 0; returns the errors it saw and the final state."""
    focus, state, errors = focus0, FocusLockState(), []
    for d in drift_nm:
        error = d - focus
        errors.append(error)
        step = focus_step(error, dt, state, gains, focus_nm=focus, **WIDE)
        focus, state = step.focus_nm, step.state
    return np.array(errors), state


def test_sign_beads_too_high_move_the_focus_up():
    step = focus_step(10.0, 0.1, FocusLockState(), FocusLockGains(ki=0.0), focus_nm=500.0, **WIDE)
    assert step.correction_nm == pytest.approx(7.0) and step.focus_nm == pytest.approx(507.0)
    step = focus_step(-10.0, 0.1, FocusLockState(), FocusLockGains(ki=0.0), focus_nm=500.0,
                      **WIDE)
    assert step.correction_nm == pytest.approx(-7.0)


def test_a_steady_drift_is_followed_without_lag():
    t = np.arange(300) * 0.1
    errors, state = closed_loop(50.0 * t, FocusLockGains())  # 50 nm/s
    assert abs(errors[-1]) < 0.5  # the integral learned the drift
    assert state.rate_nm_s == pytest.approx(50.0, rel=0.02)
    p_only, _ = closed_loop(50.0 * t, FocusLockGains(ki=0.0))
    assert p_only[-1] == pytest.approx(5.0 / 0.7, rel=0.01)  # v dt / kp: the lag it removes


def test_step_response_settles_in_five_updates_without_overshoot():
    drift = np.r_[np.zeros(3), np.full(40, 200.0)]
    errors, state = closed_loop(drift, FocusLockGains())
    after = errors[3:]
    assert after[0] == 200.0
    assert np.all(np.abs(after[5:]) < 10.0)
    assert -after.min() < 0.10 * 200.0  # overshoot (error of the other sign)
    assert abs(state.rate_nm_s) < 5.0  # the step taught no drift rate


def test_max_step_clamps_and_the_integral_does_not_wind_up():
    gains = FocusLockGains(max_step_nm=50.0, integral_band_nm=1e3)
    step = focus_step(400.0, 0.1, FocusLockState(), gains, focus_nm=0.0, **WIDE)
    assert step.clamped and step.correction_nm == 50.0
    assert step.state.rate_nm_s == 0.0  # nothing learned from a clamped move
    # the learned rate never exceeds max_step per update
    state = FocusLockState(rate_nm_s=10_000.0)
    step = focus_step(0.0, 0.1, state, gains, focus_nm=0.0, **WIDE)
    assert abs(step.correction_nm) <= 50.0 and step.state.rate_nm_s == pytest.approx(500.0)


def test_the_focus_range_stops_the_move_at_the_limit():
    step = focus_step(100.0, 0.1, FocusLockState(), FocusLockGains(), focus_nm=79_990.0,
                      low_nm=-20_000.0, high_nm=80_000.0)
    assert step.at_limit == "high" and step.focus_nm == 80_000.0
    assert step.correction_nm == pytest.approx(10.0)
    step = focus_step(-100.0, 0.1, FocusLockState(), FocusLockGains(), focus_nm=-19_990.0,
                      low_nm=-20_000.0, high_nm=80_000.0)
    assert step.at_limit == "low" and step.focus_nm == -20_000.0


def test_bad_input_is_refused_with_the_limit():
    with pytest.raises(LockParameterError, match=r"kp = 1.5 is outside \(0, 1\]"):
        FocusLockGains(kp=1.5)
    with pytest.raises(LockParameterError, match=r"ki = -0.1 is outside \[0, 0.5\]"):
        FocusLockGains(ki=-0.1)
    with pytest.raises(LockParameterError, match="max_step_nm = nan nm"):
        FocusLockGains(max_step_nm=math.nan)
    with pytest.raises(LockParameterError, match="not a number"):
        FocusLockGains(kp="0.5")  # type: ignore[arg-type]
    with pytest.raises(LockParameterError, match=r"rate_hz = 20 Hz is outside \[1, 10\] Hz"):
        check_rate_hz(20)
    assert check_rate_hz(5) == 5.0
    with pytest.raises(ValueError, match="not finite"):
        focus_step(math.nan, 0.1, FocusLockState(), FocusLockGains(), focus_nm=0, **WIDE)


def test_reference_height_is_the_median_of_the_valid_beads():
    z = np.array([[10.0, 20.0, 1000.0, np.nan],
                  [12.0, 22.0, 1000.0, np.nan],
                  [np.nan, 21.0, 1000.0, 5.0]])
    height, n = reference_height(z)
    assert n == 3 and height == pytest.approx(21.0)  # bead 4 valid in 1 of 3 frames
    assert reference_height(np.full((5, 3), np.nan)) == (pytest.approx(math.nan, nan_ok=True), 0)
    assert reference_height(np.zeros((0, 3)))[1] == 0


def rois(*rows):
    return np.array(list(rows), dtype=ROI_DTYPE)


def test_xy_moves_recentre_by_whole_pixels_beyond_the_threshold():
    table = rois((0, 100, 100), (1, 300, 100), (2, 500, 100))
    centre = 100 + 31.5
    x = np.array([centre + 2.6, 300 + 31.5 + 0.8, 500 + 31.5 - 1.4])
    y = np.array([centre - 3.2, 131.5, 131.5])
    out = xy_lock_moves(table, x, y, roi_size=64, sensor_shape=(768, 1024), threshold_px=1.0)
    assert out.moved == (0, 2) and out.skipped == {}
    assert (out.table["x0"][0], out.table["y0"][0]) == (103, 97)
    assert (out.table["x0"][1], out.table["y0"][1]) == (300, 100)  # within the dead-band
    assert (out.table["x0"][2], out.table["y0"][2]) == (499, 100)
    after = roi_offsets_px(out.table, x, y, 64)
    assert np.all(np.abs(after[[0, 2]]) <= 0.5 + 1e-9) and np.all(np.abs(after) <= 1.0)
    assert table["x0"][0] == 100  # the input is not changed


def test_xy_moves_that_leave_the_sensor_or_overlap_are_skipped_and_said():
    table = rois((0, 0, 10), (1, 70, 10), (2, 200, 10))
    x = np.array([31.5 - 3.0, 70 + 31.5 - 8.0, np.nan])
    y = np.array([41.5, 41.5, np.nan])
    out = xy_lock_moves(table, x, y, roi_size=64, sensor_shape=(768, 1024), threshold_px=1.0)
    assert out.moved == ()
    assert "would leave the 1024 x 768 px sensor" in out.skipped[0]
    assert "overlap bead 0's ROI" in out.skipped[1]
    assert 2 not in out.skipped  # lost bead: nothing to do
    assert np.array_equal(out.table, table)
