"""find_beads on simulated full frames: finds the true beads, rejects edge and crowded ones."""

from __future__ import annotations

import numpy as np
import pytest

from magscope_devices.sim import Renderer, SimParams, SimWorld
from magscope_tracking import find_beads, roi_origin, track
from tracking_sim import frame_truth

ROI = 64


def _frame(params, x, y, dz, seed=1):
    return Renderer(params, seed=seed).render(frame_truth(params, x, y, dz))


def _match(found_xy, true_xy):
    """For each found bead the distance (px) to the nearest true bead, and its index."""
    d = np.hypot(found_xy[:, None, 0] - true_xy[None, :, 0], found_xy[:, None, 1] - true_xy[None, :, 1])
    return d.min(axis=1), d.argmin(axis=1)


def test_finds_isolated_beads_and_rejects_edge_and_overlapping_ones():
    p = SimParams(width_px=640, height_px=480, n_tethered=0, n_reference=1)
    beads = {  # name: (x, y, dz)
        "a": (110.3, 100.7, 1500.0),
        "b": (300.6, 95.2, -2500.0),
        "c": (500.2, 250.9, 500.0),
        "d": (150.5, 380.4, 3000.0),
        "edge_left": (22.0, 250.0, 0.0),  # ROI would start at x = -9
        "off_sensor": (-6.0, 420.0, -1000.0),  # half outside the sensor
        "pair_1": (330.0, 300.0, -1000.0),  # 45 px apart: their ROIs overlap
        "pair_2": (362.0, 332.0, 2000.0),
        "near_edge_1": (600.0, 60.0, 1000.0),  # ROI leaves the sensor (right edge)...
        "blocked": (560.0, 120.0, -500.0),  # ...and overlaps this one's ROI
    }
    x, y, dz = (np.array(v) for v in zip(*beads.values(), strict=True))
    frame = _frame(p, x, y, dz)
    found = find_beads(frame, roi_size=ROI)
    names = list(beads)
    dist, idx = _match(found.xy, np.column_stack([x, y]))
    assert sorted(names[i] for i in idx) == ["a", "b", "c", "d"]
    assert np.all(dist < 0.05)  # "within 1 px": in fact to the XY tracking precision
    assert np.all((found.score > 0.9) & (found.score <= 1.0))
    assert np.all(np.diff(found.score) <= 0)  # best first
    origins = found.roi_origins()
    rel = found.xy - origins
    assert np.all(np.abs(rel - (ROI - 1) / 2) <= 0.5)
    assert np.all(origins >= 0) and np.all(origins + ROI <= [640, 480])
    # the ROIs it proposes track their bead
    stack = np.stack([frame[r : r + ROI, c : c + ROI] for c, r in origins])
    res = track(stack)
    assert not res.lost.any() and np.abs(res.x_px + origins[:, 0] - found.x_px).max() < 1e-9
    best2 = find_beads(frame, roi_size=ROI, max_beads=2)
    np.testing.assert_array_equal(best2.xy, found.xy[:2])


def test_finds_the_beads_of_a_simulated_sample():
    """Default sample (20 tethered + 4 reference beads, 1024 x 768): every bead whose ROI
    fits on the sensor and overlaps no other bead's ROI is found, nothing else."""
    params = SimParams(seed=3)
    world = SimWorld(params)
    truth = world.advance(0.0, params.exposure_s, 3.0, 0.0, 2000.0)
    frame = Renderer(params, seed=4).render(truth)
    true_xy = np.column_stack([truth.x_nm, truth.y_nm]) / params.nm_per_px
    origin = roi_origin(true_xy[:, 0], true_xy[:, 1], ROI)
    inside = np.all(origin >= 0, axis=1) & np.all(origin + ROI <= [1024, 768], axis=1)
    dx = np.abs(true_xy[:, None, 0] - true_xy[None, :, 0])
    dy = np.abs(true_xy[:, None, 1] - true_xy[None, :, 1])
    crowded = ((dx < ROI) & (dy < ROI)).sum(axis=1) > 1
    expected = np.flatnonzero(inside & ~crowded)
    assert expected.size >= 15  # the test is about real beads
    found = find_beads(frame, roi_size=ROI)
    dist, idx = _match(found.xy, true_xy)
    assert sorted(idx.tolist()) == expected.tolist()
    assert np.all(dist < 1.0) and np.median(dist) < 0.05
    assert len(find_beads(frame, roi_size=ROI, max_beads=5)) == 5


def test_blank_and_noise_frames_have_no_beads():
    rng = np.random.default_rng(0)
    noise = rng.normal(125.0, 2.0, (300, 400)).round().astype(np.uint8)
    assert len(find_beads(noise, roi_size=ROI)) == 0
    assert len(find_beads(np.full((300, 400), 125, np.uint8), roi_size=ROI)) == 0


def test_16_bit_frame_and_argument_checks():
    p = SimParams(width_px=320, height_px=240, n_tethered=0, n_reference=1, bit_depth=16)
    frame = _frame(p, [100.4, 220.7], [120.2, 110.9], [0.0, -1500.0])
    assert frame.dtype == np.uint16
    found = find_beads(frame, roi_size=60)
    dist, _ = _match(found.xy, np.array([[100.4, 120.2], [220.7, 110.9]]))
    assert len(found) == 2 and np.all(dist < 0.05)
    with pytest.raises(ValueError, match="2-D"):
        find_beads(frame[None], roi_size=60)
    with pytest.raises(ValueError, match="roi_size"):
        find_beads(frame, roi_size=8)
