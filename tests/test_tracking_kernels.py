"""Tracking kernels: XY accuracy and pixel-locking against the simulator's ground truth,
numba/NumPy parity, lost beads, the radial profile, options and warm-up."""

from __future__ import annotations

import time

import numpy as np
import pytest

from magscope_devices.sim import SimParams
from magscope_devices.sim.render import pixel_profile
from magscope_tracking import (
    RadialBins,
    TrackOptions,
    TrackStatus,
    build_zlut,
    locate_xy,
    locate_xy_reference,
    match_z,
    match_z_reference,
    radial_profile,
    radial_profile_reference,
    synthetic_bead,
    track,
    track_reference,
    warmup,
)
from magscope_tracking.background import roi_stats, roi_stats_reference
from tracking_sim import render_rois

XY_RMS_PX = 0.010  # target: XY error at most 0.010 px r.m.s.
XY_BIAS_PX = 0.002  # target: no bias above 0.002 px at any sub-pixel phase


@pytest.fixture(scope="module")
def beads_8bit():
    """600 noisy 8-bit ROIs, defocus uniform in +-3.5 um, random sub-pixel offsets."""
    rng = np.random.default_rng(7)
    dz = rng.uniform(-3500.0, 3500.0, 600)
    stack, xy = render_rois(dz, seed=7)
    return stack, xy, dz


# ------------------------------------------------------------------------------ accuracy


def test_xy_error_within_target_over_defocus_range(beads_8bit):
    stack, xy, dz = beads_8bit
    res = track(stack)
    assert not res.lost.any()
    err = np.column_stack([res.x_px, res.y_px]) - xy
    rms = np.sqrt(np.mean(err**2, axis=0))
    assert np.all(rms < XY_RMS_PX), rms
    assert np.all(np.abs(err.mean(axis=0)) < 0.0015), err.mean(axis=0)
    # the near-focus half and the far half both meet the target (not just the average)
    near = np.abs(dz) < 1750
    for part in (near, ~near):
        assert np.all(np.sqrt(np.mean(err[part] ** 2, axis=0)) < XY_RMS_PX)
    assert np.all((res.xy_score > 0.9) & (res.score == res.xy_score))
    assert np.all(np.isnan(res.z_nm)) and np.all(np.isnan(res.z_score))


@pytest.mark.parametrize("dz", [-3000.0, -800.0, 0.0, 1500.0, 3500.0])
def test_no_pixel_locking_across_subpixel_phase(dz):
    """Noise-free images (float, photoelectrons in ADU): the error against the sub-pixel
    phase is the method's bias; it must stay below 0.002 px everywhere."""
    phase = np.linspace(-0.5, 0.5, 21)
    offsets = np.column_stack([phase, 0.37 * phase[::-1]])
    stack, xy = render_rois(np.full(phase.size, dz), offsets, expected=True)
    res = track(stack)
    err = np.column_stack([res.x_px, res.y_px]) - xy
    assert np.abs(err).max() < XY_BIAS_PX, np.abs(err).max(axis=0)
    # the test can see pixel locking: a centroid in a 13 px window at the nearest pixel,
    # a classic pixel-locked estimator, fails it by far on the same images
    com_err = []
    for img, (x, y) in zip(stack, xy, strict=True):
        j, i = int(round(x)), int(round(y))
        w = (img[i - 6 : i + 7, j - 6 : j + 7] - img[0, 0]) ** 2
        com_err.append((w * np.arange(j - 6, j + 7)).sum() / w.sum() - x)
    assert np.ptp(com_err) > 10 * XY_BIAS_PX


def test_noisy_bias_per_phase_bin(beads_8bit):
    """With noise: the mean error in each tenth of the sub-pixel phase is within the bias
    target plus 3 standard errors."""
    stack, xy, _ = beads_8bit
    res = track(stack)
    err = np.column_stack([res.x_px, res.y_px]) - xy
    for axis in (0, 1):
        frac = xy[:, axis] - np.floor(xy[:, axis])
        bins = np.minimum((frac * 10).astype(int), 9)
        for b in range(10):
            e = err[bins == b, axis]
            assert abs(e.mean()) < XY_BIAS_PX + 3 * e.std() / np.sqrt(e.size), (axis, b)


def test_xy_accuracy_16bit_and_other_pixel_size():
    rng = np.random.default_rng(3)
    dz = rng.uniform(-3000.0, 3000.0, 128)
    stack, xy = render_rois(dz, seed=3, bit_depth=16, nm_per_px=120.0, roi=60)
    assert stack.dtype == np.uint16
    res = track(stack)
    assert not res.lost.any()
    err = np.column_stack([res.x_px, res.y_px]) - xy
    assert np.sqrt(np.mean(err**2)) < XY_RMS_PX


def test_bead_off_centre_is_found_within_its_roi():
    offsets = np.array([[8.3, -6.6], [-9.7, 4.2], [11.1, 11.4], [-4.5, -10.9]])
    stack, xy = render_rois(np.array([0.0, 2000.0, -2500.0, 3000.0]), offsets, seed=5)
    res = track(stack)
    assert not res.lost.any()
    assert np.abs(np.column_stack([res.x_px, res.y_px]) - xy).max() < 0.04


# ------------------------------------------------------------------------------ parity


def _mixed_stack():
    """Beads (8 bit) plus ROIs that must be lost: blank, at the edge, NaN, saturated."""
    rng = np.random.default_rng(11)
    dz = rng.uniform(-3500.0, 3500.0, 40)
    offsets = rng.uniform(-3.0, 3.0, (40, 2))
    offsets[:4] = [[25.0, 0.0], [0.0, -28.0], [40.0, 40.0], [-16.0, 3.0]]  # edge / outside
    stack, xy = render_rois(dz, offsets, seed=11, pad=48)
    blank, _ = render_rois(np.zeros(1), seed=12)
    stack = np.concatenate([stack, blank], axis=0).astype(np.float64)
    stack[-1] = rng.normal(125.0, 2.0, (64, 64))  # noise only
    stack[5, 30, 30] = np.nan
    stack[6] = 255.0
    return stack


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_track_matches_numpy_reference(dtype):
    stack = _mixed_stack()
    if np.dtype(dtype).kind == "u":
        stack = np.nan_to_num(stack, nan=0.0).clip(0, 255).round().astype(dtype)
        stack[5, 30, 30] = 255  # (uint8 cannot hold NaN)
    else:
        stack = stack.astype(dtype)
    sweep_dz = np.repeat(np.arange(-4000.0, 4001.0, 100.0), 2)
    images, _ = render_rois(sweep_dz, np.array([0.2, -0.1]), seed=13)
    lut = build_zlut(images.astype(dtype), sweep_dz, nm_per_px=100.0)
    options = TrackOptions(return_profiles=True)
    fast = track(stack, lut, options=options)
    ref = track_reference(stack, lut, options=options)
    np.testing.assert_array_equal(fast.status, ref.status)
    assert (fast.status != TrackStatus.OK).sum() >= 6  # the lost ROIs really are lost
    for name in ("x_px", "y_px"):
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=1e-6)
    np.testing.assert_allclose(fast.z_nm, ref.z_nm, atol=1e-5)
    for name in ("score", "xy_score", "z_score", "background"):
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=1e-6)
    np.testing.assert_allclose(fast.profiles, ref.profiles, atol=1e-6)


def test_building_blocks_match_numpy_reference():
    rng = np.random.default_rng(2)
    dz = rng.uniform(-3000.0, 3000.0, 24)
    stack, xy = render_rois(dz, seed=2)
    fast = locate_xy(stack, profiles=True)
    ref = locate_xy_reference(stack, profiles=True)
    np.testing.assert_allclose(fast.x_px, ref.x_px, atol=1e-6)
    np.testing.assert_allclose(fast.y_px, ref.y_px, atol=1e-6)
    np.testing.assert_allclose(fast.profiles, ref.profiles, atol=1e-6)
    bins = fast.bins
    p_fast = radial_profile(stack, xy[:, 0], xy[:, 1], bins)
    p_ref = radial_profile_reference(stack, xy[:, 0], xy[:, 1], bins)
    np.testing.assert_allclose(p_fast, p_ref, atol=1e-9)
    for got, want in zip(roi_stats(stack, 250.0), roi_stats_reference(stack, 250.0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9)
    sweep_dz = np.arange(-3500.0, 3501.0, 100.0)
    images, _ = render_rois(sweep_dz, np.array([0.1, 0.3]), seed=4)
    lut = build_zlut(images, sweep_dz, nm_per_px=100.0)
    index = np.zeros(len(stack), np.int64)
    z_fast = match_z(p_fast, lut.prepared, index)
    z_ref = match_z_reference(p_fast, lut.prepared, index)
    np.testing.assert_allclose(z_fast[0], z_ref[0], atol=1e-6)
    np.testing.assert_allclose(z_fast[1], z_ref[1], atol=1e-9)
    np.testing.assert_array_equal(z_fast[2], z_ref[2])


# ------------------------------------------------------------------------------ lost beads


def test_lost_beads_give_nan_and_low_score_never_a_crash():
    good, xy = render_rois(np.array([500.0, -1500.0]), seed=21)
    edge, _ = render_rois(np.array([0.0, 0.0, 1000.0]), np.array([[-31.0, 0.0], [29.0, 29.0],
                                                                    [0.0, 15.0]]), seed=22, pad=48)
    noise = np.random.default_rng(1).normal(125.0, 2.0, (64, 64)).round().astype(np.uint8)
    flat = np.full((64, 64), 125, np.uint8)
    dark = np.zeros((64, 64), np.uint8)
    saturated = np.full((64, 64), 255, np.uint8)
    partly = good[0].copy()
    partly[20:40, 20:40] = 255  # 400 px = 10 % saturated
    stack = np.stack([good[0], edge[0], edge[1], edge[2], noise, flat, dark, saturated, partly,
                      good[1]])
    res = track(stack)
    expect = [
        TrackStatus.OK,
        TrackStatus.EDGE,  # half the bead outside the ROI
        TrackStatus.EDGE,  # bead centred on the corner
        TrackStatus.EDGE,  # 15 px off centre: the profile disc leaves the ROI
        TrackStatus.BLANK,
        TrackStatus.BLANK,
        TrackStatus.BLANK,
        TrackStatus.SATURATED,
        TrackStatus.SATURATED,
        TrackStatus.OK,
    ]
    assert res.status.tolist() == [int(s) for s in expect]
    lost = res.lost
    assert lost.tolist() == [s != TrackStatus.OK for s in expect]
    assert np.all(np.isnan(res.x_px[lost]) & np.isnan(res.y_px[lost]) & np.isnan(res.z_nm[lost]))
    assert np.all(res.score[lost] == 0.0)
    assert np.all(res.score[~lost] > 0.9)
    assert np.abs(res.x_px[[0, 9]] - xy[:, 0]).max() < 0.05


def test_nan_pixels_in_float_stack():
    stack, _ = render_rois(np.array([0.0, 800.0, -800.0]), seed=8)
    f = stack.astype(np.float32)
    f[0, 10, 50] = np.nan
    f[1, 32, 32] = np.inf
    res = track(f)
    assert res.status.tolist() == [TrackStatus.NON_FINITE, TrackStatus.NON_FINITE, TrackStatus.OK]
    assert np.isnan(res.x_px[:2]).all() and np.isfinite(res.x_px[2])


def test_saturation_threshold_is_an_option():
    stack, _ = render_rois(np.array([-1000.0]), seed=9)
    s = stack.copy()
    s[0, :4, :] = 255  # 256 px = 6 % of the ROI
    assert track(s).status[0] == TrackStatus.SATURATED
    relaxed = TrackOptions(max_saturated_fraction=0.1)
    assert track(s, options=relaxed).status[0] != TrackStatus.SATURATED
    u16 = (stack.astype(np.uint16) * 16)  # a 12-bit camera in a 16-bit container
    u16[0, :4, :] = 4095
    assert track(u16).status[0] != TrackStatus.SATURATED  # dtype max is 65535
    assert track(u16, options=TrackOptions(saturation_adu=4095)).status[0] == TrackStatus.SATURATED


# ------------------------------------------------------------------------------ profile


def test_radial_profile_is_the_pixel_profile_of_the_bead():
    """Noise-free: the profile at each knot equals the simulator's pixel-integrated
    ring profile there (relative modulation), up to the piecewise-linear fit."""
    p = SimParams()
    for dz in (-2000.0, 0.0, 2500.0):
        stack, xy = render_rois(np.array([dz]), np.array([[0.31, -0.22]]), expected=True)
        bins = RadialBins(81, 0.25)
        prof = radial_profile(stack, xy[:, 0], xy[:, 1], bins)[0]
        r = bins.radii_px
        truth = pixel_profile(r * p.nm_per_px, dz, 1400.0, p)
        amp = np.abs(truth).max()
        far = r >= 1.0  # the first knots stand for a handful of pixels
        assert np.abs(prof[far] - truth[far]).max() < 0.03 * amp, dz
        assert np.abs(prof - truth).max() < 0.1 * amp


def test_profile_from_track_equals_profile_at_tracked_centre():
    stack, _ = render_rois(np.array([1200.0, -400.0]), seed=14)
    res = track(stack, options=TrackOptions(return_profiles=True))
    again = radial_profile(stack, res.x_px, res.y_px, res.bins)
    # the kernel keeps the profile fitted before its last (< tolerance) step
    assert np.abs(res.profiles - again).max() < 0.01 * np.abs(again).max()


# ------------------------------------------------------------------------------ API


def test_options_and_roi_size_constraints():
    with pytest.raises(ValueError, match="at least 16 px"):
        track(np.zeros((1, 12, 12), np.uint8))
    with pytest.raises(ValueError, match="does not fit an ROI"):
        track(np.zeros((1, 32, 32), np.uint8), options=TrackOptions(radius_px=20.0))
    with pytest.raises(ValueError, match="max_iterations"):
        TrackOptions(max_iterations=0)
    with pytest.raises(ValueError, match="bead_index"):
        track(np.zeros((2, 64, 64), np.uint8), bead_index=[0, 0])
    assert TrackOptions().bins_for((64, 64)) == RadialBins(72, 0.25)
    assert TrackOptions().bins_for((60, 60)).radius_px == 16.75


def test_shapes_dtypes_and_empty_stacks():
    img = synthetic_bead((64, 64), x_px=31.2, y_px=30.9, dz=0.5)
    single = track(img)  # one (h, w) ROI
    assert len(single) == 1 and abs(single.x_px[0] - 31.2) < 0.01
    for dtype in (np.uint8, np.uint16, np.float32, np.float64, np.int32):
        a = np.round(img).astype(dtype)[None]
        assert abs(track(a).y_px[0] - 30.9) < 0.02, dtype
    ro = np.repeat(np.round(img).astype(np.uint8)[None], 3, axis=0)
    ro.setflags(write=False)
    assert not track(ro).lost.any()  # read-only input is accepted
    empty = track(np.zeros((0, 64, 64), np.uint8))
    assert len(empty) == 0 and empty.status.dtype == np.uint8


def test_warmup_then_first_call_is_fast():
    took = warmup(dtypes=(np.uint8,))
    assert took >= 0.0
    stack = np.round(synthetic_bead((64, 64))).astype(np.uint8)[None].repeat(200, axis=0)
    t0 = time.perf_counter()
    track(stack)
    assert time.perf_counter() - t0 < 1.0
