"""A bead's radius from its ring pattern, calibrated on drag radii (fast, pure functions;
the patterns are the simulator's own ring model, its drag law gives the drag radii)."""

from __future__ import annotations

import numpy as np
import pytest

from magscope_devices.sim import SimParams, physics
from magscope_devices.sim.render import ring_profile
from magscope_plans._force_calibration import bead_radii
from magscope_plans.analysis import fit_pattern_radius, pattern_contrast

PARAMS = SimParams()
R_NM = np.linspace(0.0, 3200.0, 64)  # the profile's bins (nm from the centre)
PLANES_NM = np.linspace(-2000.0, 3000.0, 51)  # LUT planes (focus travel, nm)
ETA = 9.33e-4  # Pa s


def luts(radii_nm, heights_nm):
    """(beads, planes, bins) profiles relative to the background of beads of these radii
    whose centres stand at these heights (the LUT's planes are focus positions)."""
    out = np.empty((len(radii_nm), PLANES_NM.size, R_NM.size))
    for b, (radius, height) in enumerate(zip(radii_nm, heights_nm, strict=True)):
        for k, focus in enumerate(PLANES_NM):
            out[b, k] = 1.0 + ring_profile(R_NM, height - focus, radius, PARAMS)
    return out


def test_the_contrast_grows_with_the_radius_and_ignores_the_height_and_background():
    radii = np.array([1300.0, 1350.0, 1400.0, 1450.0, 1500.0])
    c = pattern_contrast(luts(radii, np.full(5, 1400.0)))
    assert np.all(np.diff(c) > 0)
    # a bead 1.2 um higher (a tether) has the same contrast: compared at its own focus
    raised = pattern_contrast(luts(radii, np.full(5, 2600.0)))
    np.testing.assert_allclose(raised, c, rtol=2e-3)
    # a brighter background level changes nothing
    np.testing.assert_allclose(pattern_contrast(luts(radii, np.full(5, 1400.0)) + 0.3), c)


def test_a_focus_outside_the_lut_gives_no_contrast():
    c = pattern_contrast(luts([1400.0, 1400.0], [1400.0, 9000.0]))
    assert np.isfinite(c[0]) and np.isnan(c[1])
    with pytest.raises(ValueError, match=r"profiles must be \(n_beads, n_planes, n_bins\)"):
        pattern_contrast(np.ones((3, 4)))


def test_the_line_gives_the_reference_beads_radius_within_its_error():
    """20 beads with drag radii 15 nm off, 4 stuck reference beads: over 200 worlds the
    reference radius is within 1 sigma 68 +/- 6 % of the time and far closer than the
    batch mean (the fallback) is."""
    rng = np.random.default_rng(3)
    n, n_ref = 20, 4
    radii = rng.normal(1400.0, 42.0, 200 * (n + n_ref)).reshape(200, n + n_ref)
    grid = np.linspace(1200.0, 1600.0, 41)
    table = pattern_contrast(luts(grid, np.full(grid.size, 1400.0)))
    pulls, errors, batch_errors = [], [], []
    for world in radii:
        contrast = np.interp(world, grid, table) * (1 + 1e-3 * rng.normal(size=world.size))
        drag_r = world[:n] + rng.normal(0.0, 15.0, n)
        fit = fit_pattern_radius(contrast[:n], drag_r, np.full(n, 15.0), leave_one_out=False)
        assert fit is not None and fit.n_beads == n
        ref, ref_err = fit.mean_radius_nm(contrast[n:])
        truth = world[n:].mean()
        pulls.append((ref - truth) / ref_err)
        errors.append(abs(ref - truth))
        batch_errors.append(abs(drag_r.mean() - truth))
    inside = np.mean(np.abs(pulls) <= 1)
    assert 0.62 <= inside <= 0.74, inside
    assert np.median(errors) < 0.4 * np.median(batch_errors)


def test_unrelated_contrast_gives_a_flat_line_as_wide_as_the_batch():
    rng = np.random.default_rng(4)
    radii = rng.normal(1400.0, 42.0, 20)
    contrast = rng.uniform(0.1, 0.2, 20)
    fit = fit_pattern_radius(contrast, radii, np.full(20, 5.0))
    assert fit is not None
    assert fit.scatter_nm == pytest.approx(np.std(radii), rel=0.35)
    r, err = fit.radius_nm(0.15)
    assert err >= fit.scatter_nm
    # too few beads, or one contrast for all: no line
    assert fit_pattern_radius(contrast[:4], radii[:4], np.full(4, 5.0)) is None
    assert fit_pattern_radius(np.full(20, 0.1), radii, np.full(20, 5.0)) is None
    with pytest.raises(ValueError, match="1-D of one length"):
        fit_pattern_radius(contrast, radii[:5], np.full(20, 5.0))


def test_leave_one_out_is_independent_of_the_beads_own_radius():
    rng = np.random.default_rng(5)
    radii = rng.normal(1400.0, 42.0, 12)
    contrast = 1e-4 * radii
    fit = fit_pattern_radius(contrast, radii, np.full(12, 10.0))
    assert fit is not None
    moved = radii.copy()
    moved[3] += 200.0  # a wrong drag radius for bead 3 does not move its own estimate much
    refit = fit_pattern_radius(contrast, moved, np.full(12, 10.0))
    assert refit is not None
    assert refit.leave_one_out_nm[3] == pytest.approx(fit.leave_one_out_nm[3], abs=1e-6)
    assert np.all(np.abs(fit.leave_one_out_nm - radii) <= 3 * fit.leave_one_out_err_nm)


def test_bead_radii_take_the_reference_radius_from_the_pattern():
    """A calibration's drags at three heights, the reference beads 40 nm bigger than the
    batch: the batch mean misses them by 40 nm, the pattern line does not."""
    rng = np.random.default_rng(6)
    n = 20
    radii = rng.normal(1400.0, 42.0, n)
    refs = np.array([1440.0, 1445.0, 1435.0, 1442.0])
    ref_true = refs.mean()
    above = np.array([[600.0], [1200.0], [2000.0]]) + rng.uniform(-100, 100, (3, n))
    heights = above + ref_true
    drag = np.array([physics.stokes_drag(radii, ETA) * physics.faxen_lateral_factor(radii, h)
                     for h in heights])
    drag_err = 0.02 * drag
    drag = drag * (1 + 0.02 * rng.normal(size=drag.shape))
    grid = np.linspace(1200.0, 1600.0, 41)
    table = pattern_contrast(luts(grid, np.full(grid.size, 1400.0)))
    kw = dict(viscosity_pa_s=ETA, nominal_radius_nm=1400.0, n_reference=4)
    batch = bead_radii(drag, drag_err, above, **kw)
    lined = bead_radii(drag, drag_err, above, **kw, contrast=np.interp(radii, grid, table),
                       reference_contrast=np.interp(refs, grid, table))
    assert batch.pattern is None and lined.pattern is not None
    assert abs(batch.reference_nm - ref_true) > 20.0
    assert abs(lined.reference_nm - ref_true) < max(2 * lined.reference_nm_err, 5.0)
    assert lined.reference_nm_err < 0.5 * batch.reference_nm_err
    # each bead's radius: its drag and the line combined, closer than the drag alone
    assert np.median(np.abs(lined.radius_nm - radii)) < np.median(np.abs(batch.radius_nm - radii))
