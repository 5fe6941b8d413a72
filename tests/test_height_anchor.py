"""Bead heights above reference beads from a Z-LUT sweep, against rendered ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from magscope_tracking import build_zlut
from magscope_tracking.height_anchor import height_offsets_nm, profile_shift_planes
from tracking_sim import render_rois

# heights of bead centres above the surface (nm) and radii (nm): two reference beads
# stuck to the surface (centre at R) and three tethered beads 1.8, 4.3 and 7.4 um up
HEIGHTS = np.array([1400.0, 1420.0, 1400.0 + 1777.0, 1430.0 + 4321.0, 1370.0 + 7380.0])
RADII = np.array([1400.0, 1420.0, 1400.0, 1430.0, 1370.0])


@pytest.fixture(scope="module")
def sweep_lut():
    focus = np.arange(-2000.0, 10001.0, 100.0)
    ff = np.repeat(focus, 2)
    stacks = [
        render_rois(h - ff, roi=64, radius_nm=r, seed=11 + i, offsets=np.array([0.2, -0.1]))[0]
        for i, (h, r) in enumerate(zip(HEIGHTS, RADII, strict=True))
    ]
    return build_zlut(np.stack(stacks), -ff, nm_per_px=100.0, bead_ids=[10, 11, 2, 3, 4])


def test_heights_above_the_reference_beads(sweep_lut):
    heights = height_offsets_nm(sweep_lut, [10, 11])
    truth = HEIGHTS - HEIGHTS[:2].mean()
    assert np.max(np.abs(heights - truth)) < 15.0, heights - truth


def test_a_bead_out_of_reach_is_nan_not_a_guess(sweep_lut):
    short = sweep_lut._replace(
        z_nm=sweep_lut.z_nm[:40], profiles=sweep_lut.profiles[:, :40]
    )  # 4 um of sweep cannot reach the bead 7.4 um up
    heights = height_offsets_nm(short, [10, 11])
    assert np.isnan(heights[4])
    assert abs(heights[2] - (HEIGHTS[2] - HEIGHTS[:2].mean())) < 15.0


def test_refuses_a_lut_without_reference_beads(sweep_lut):
    with pytest.raises(ValueError, match=r"none of the reference beads \[99\]"):
        height_offsets_nm(sweep_lut, [99])


def test_shift_of_a_stack_against_itself_is_zero():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(30, 8)).cumsum(axis=0)
    s, mismatch = profile_shift_planes(stack, stack)
    assert s == 0.0 and mismatch == 0.0
    s, _ = profile_shift_planes(stack[3:], stack[:-3])
    assert s == pytest.approx(3.0, abs=0.05)
