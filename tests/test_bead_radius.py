"""A bead's radius from its lateral drag near the surface (fast, pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from magscope_devices.sim import physics
from magscope_plans.analysis.bead_radius import combine_estimates, radius_from_drag

ETA = 9.33e-4  # Pa s


def _sim_drag(radius_nm, height_nm):
    """The simulator's own drag law (its physics module, not the analysis')."""
    gamma0 = physics.stokes_drag(radius_nm, ETA)
    return gamma0 * physics.faxen_lateral_factor(radius_nm, height_nm)


@pytest.mark.parametrize("radius, height", [(1400.0, 3400.0), (1330.0, 1500.0),
                                             (1440.0, 9000.0), (500.0, 520.0)])
def test_the_radius_the_simulator_used_comes_back(radius, height):
    r, err = radius_from_drag(_sim_drag(radius, height), height, ETA)
    assert r == pytest.approx(radius, rel=1e-9)
    assert np.isnan(err)  # no drag error given


def test_the_error_is_the_drag_error_through_the_slope():
    radius, height = np.array([1380.0, 1420.0]), np.array([2000.0, 6000.0])
    gamma = _sim_drag(radius, height)
    r, err = radius_from_drag(gamma, height, ETA, 0.01 * gamma)
    # finite difference of R(gamma)
    r_hi, _ = radius_from_drag(1.0001 * gamma, height, ETA)
    r_lo, _ = radius_from_drag(0.9999 * gamma, height, ETA)
    slope = (r_hi - r_lo) / (0.0002 * gamma)
    np.testing.assert_allclose(err, 0.01 * gamma * slope, rtol=1e-5)
    # the wall makes the drag grow faster than R: a 1 % drag error is under 1 % of R
    assert np.all(err < 0.01 * r)


def test_no_radius_where_none_fits():
    height = 2000.0
    touching = _sim_drag(height, height)
    r, err = radius_from_drag([np.nan, -1.0, 2 * touching, 1e-6], [height, height, height,
                                                                     np.nan], ETA, 1e-7)
    assert np.isnan(r).all() and np.isnan(err).all()
    with pytest.raises(ValueError, match="viscosity_pa_s"):
        radius_from_drag(1e-5, height, 0.0)


def test_combined_estimates_weight_by_error_and_widen_on_disagreement():
    mean, err = combine_estimates([[1400.0], [1410.0]], [[10.0], [10.0]])
    assert mean[0] == pytest.approx(1405.0) and err[0] == pytest.approx(10 / np.sqrt(2))
    mean, err = combine_estimates([1400.0, 1500.0, np.nan], [10.0, 30.0, 5.0])
    assert mean == pytest.approx((1400 / 100 + 1500 / 900) / (1 / 100 + 1 / 900))
    chi2 = ((1400 - mean) / 10) ** 2 + ((1500 - mean) / 30) ** 2  # 1 degree of freedom
    assert err == pytest.approx(np.sqrt(chi2) / np.sqrt(1 / 100 + 1 / 900))
    mean, err = combine_estimates([np.nan, 3.0], [1.0, np.inf])
    assert np.isnan(mean) and np.isnan(err)


def test_the_focal_shift_comes_back_from_known_contour_lengths():
    from magscope_plans.analysis import focal_shift_from_contour

    rng = np.random.default_rng(4)
    true, used, known = 0.80, 0.88, 4000.0
    fitted = known * used / true * (1 + 0.004 * rng.standard_normal(12))
    fitted[3] = 2 * fitted[3]  # a double tether: left out
    fitted[5] = np.nan  # a failed fit
    est = focal_shift_from_contour(fitted, known, used)
    assert est.n_beads == 10 and np.isnan(est.per_bead[5])
    assert est.focal_shift == pytest.approx(true, rel=0.004)
    assert 0 < est.focal_shift_err < 0.004 * true
    with pytest.raises(ValueError, match="known_contour_nm=-1"):
        focal_shift_from_contour(fitted, -1, used)
    with pytest.raises(ValueError, match="no bead has a fitted contour length"):
        focal_shift_from_contour([np.nan], known, used)
