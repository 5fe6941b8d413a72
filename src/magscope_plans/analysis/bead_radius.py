"""A bead's radius from the drag its lateral fluctuations show.

A tethered bead's lateral motion is an OU process whose drag the PSD fit measures
(:func:`~magscope_plans.analysis.psd_force` with free drag, ``drag_pn_s_per_nm``). Near
the surface that drag is Stokes' law raised by Faxen's wall correction,

    gamma = 6 pi eta R / (1 - 9/16 q + 1/8 q^3 - 45/256 q^4 - 1/16 q^5),  q = R / h,

with h the height of the bead centre above the surface: the height above the reference
beads' centres plus their radius. Given gamma, h and eta this has one solution R < h
(gamma grows with R), found here by Newton's method; its standard error follows from the
drag's, ``R_err = gamma_err / (d gamma / d R)``. Several records of the same bead (one per
magnet height) are combined by :func:`combine_estimates` (inverse-variance weighted, the
error inflated by the scatter when the records disagree more than their errors say).

Units: nm, pN s/nm, Pa s (1 Pa s = 1e-6 pN s/nm^2).
"""

from __future__ import annotations

import numpy as np

from .ou_model import lateral_drag_pn_s_per_nm

__all__ = ["combine_estimates", "radius_from_drag"]

_NEWTON_STEPS = 30
_REL_TOL = 1e-12


def _drag_and_slope(radius_nm, height_nm, viscosity_pa_s):
    """gamma(R) and d gamma / d R at fixed h (pN s/nm, pN s/nm^2)."""
    gamma = lateral_drag_pn_s_per_nm(radius_nm, height_nm, viscosity_pa_s)
    q = radius_nm / height_nm
    den = 1.0 - 9.0 / 16.0 * q + q**3 / 8.0 - 45.0 / 256.0 * q**4 - q**5 / 16.0
    dden_dq = -9.0 / 16.0 + 3.0 * q**2 / 8.0 - 45.0 / 64.0 * q**3 - 5.0 * q**4 / 16.0
    # gamma = c R / den(R / h): d gamma / d R = gamma / R - gamma dden/dq / (h den)
    slope = gamma / radius_nm - gamma * dden_dq / (height_nm * den)
    return gamma, slope


def radius_from_drag(
    drag_pn_s_per_nm, height_nm, viscosity_pa_s: float, drag_err_pn_s_per_nm=None
) -> tuple[np.ndarray, np.ndarray]:
    """Bead radius (nm) and its standard error (nm) from the lateral drag near a wall.

    ``drag_pn_s_per_nm``: the fitted lateral drag (pN s/nm); ``height_nm``: the bead
    centre's height above the surface (nm, > 0); ``viscosity_pa_s``: the medium's
    viscosity (Pa s); ``drag_err_pn_s_per_nm``: the drag's standard error (None: errors
    NaN). Arrays broadcast. NaN where the drag or height is not finite and positive, or
    where no radius below the height gives that drag (the bead would touch the wall).
    """
    gamma = np.asarray(drag_pn_s_per_nm, dtype=float)
    h = np.asarray(height_nm, dtype=float)
    gamma, h = np.broadcast_arrays(gamma, h)
    if not (np.isfinite(viscosity_pa_s) and viscosity_pa_s > 0):
        raise ValueError(f"viscosity_pa_s={viscosity_pa_s!r}: must be a positive number (Pa s)")
    ok = np.isfinite(gamma) & (gamma > 0) & np.isfinite(h) & (h > 0)
    g = np.where(ok, gamma, 1.0)
    hh = np.where(ok, h, 1.0)
    bulk = g / (6.0 * np.pi * viscosity_pa_s * 1e-6)  # the radius far from any wall
    # the largest drag a bead below the wall can have: at q = 1 (touching)
    touching = lateral_drag_pn_s_per_nm(hh, hh, viscosity_pa_s)
    ok &= g < touching
    r = np.minimum(bulk, 0.999 * hh)
    for _ in range(_NEWTON_STEPS):
        value, slope = _drag_and_slope(r, hh, viscosity_pa_s)
        step = (value - g) / slope
        r = np.clip(r - step, 1e-9 * hh, 0.9999 * hh)
        if np.all(np.abs(step[ok]) <= _REL_TOL * r[ok]):
            break
    _, slope = _drag_and_slope(r, hh, viscosity_pa_s)
    if drag_err_pn_s_per_nm is None:
        err = np.full(r.shape, np.nan)
    else:
        err = np.abs(np.broadcast_to(np.asarray(drag_err_pn_s_per_nm, float), r.shape) / slope)
    r = np.where(ok, r, np.nan)
    err = np.where(ok, err, np.nan)
    return r, err


def combine_estimates(values, errors, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted mean of independent estimates along ``axis`` and its
    standard error; estimates with a non-finite value or error are left out (all left
    out: NaN). When the estimates scatter more than their errors say (reduced chi^2 above
    1), the error is multiplied by sqrt(reduced chi^2): it then covers the scatter too."""
    v = np.asarray(values, dtype=float)
    e = np.asarray(errors, dtype=float)
    good = np.isfinite(v) & np.isfinite(e) & (e > 0)
    w = np.where(good, 1.0 / np.where(good, e, 1.0) ** 2, 0.0)
    wsum = w.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.where(good, v, 0.0) * w).sum(axis=axis) / wsum
        err = 1.0 / np.sqrt(wsum)
        n = good.sum(axis=axis)
        resid = np.where(good, v - np.expand_dims(mean, axis), 0.0)
        chi2 = (w * resid**2).sum(axis=axis) / np.maximum(n - 1, 1)
        err = np.where(n > 1, err * np.sqrt(np.maximum(chi2, 1.0)), err)
    return np.where(n > 0, mean, np.nan), np.where(n > 0, err, np.nan)
