"""Fit of the magnet force curve: force (pN) against magnet height (mm).

Model (as :func:`magscope_devices._force_curve.magnet_force_pn`):

    F(z) = F0 (a exp(-z / l1) + (1 - a) exp(-z / l2)),   F0 > 0, 0 <= a <= 1, l1 <= l2

Fit. Forces of a calibration span ~0.1 to ~70 pN and their errors are roughly relative,
so the fit is weighted least squares in ln F: residuals (ln F_i - ln F(z_i)) / r_i with
r_i = sigma_i / F_i the relative error (all r_i = 1 without ``force_err_pn``). Starting
values come from log-linear fits over the upper half of the height range (the long decay
l2) and of what remains over the lower half (l1); a few variants of that start are tried
and the best kept. Standard errors from the Jacobian, scaled by the reduced chi-square
(as scipy's curve_fit does by default; NaN with no degrees of freedom).

The four-parameter model needs at least 5 distinct heights; with 2 to 4 the fit falls back
to a single exponential F0 exp(-z / l1) (a = 1, l2 = l1), and ``model`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

__all__ = ["MagnetForceFit", "fit_magnet_force"]

_DOUBLE = "double_exponential"
_SINGLE = "single_exponential"


@dataclass(frozen=True)
class MagnetForceFit:
    """Result of :func:`fit_magnet_force`: F0 in pN, decay lengths in mm, ``a`` unitless.

    ``*_err`` are one standard error (NaN when not determined). For
    ``model == "single_exponential"`` a = 1 (``a_err`` = 0) and l2 = l1 (with l1's error).
    ``rms_relative_residual`` is the r.m.s. of ln(F_i / F(z_i)) (about the r.m.s.
    relative deviation of the points from the curve); ``reduced_chi2`` the weighted
    residual sum over (n_points - n_parameters); ``n_heights`` the distinct heights.
    """

    f0_pn: float
    a: float
    l1_mm: float
    l2_mm: float
    f0_pn_err: float
    a_err: float
    l1_mm_err: float
    l2_mm_err: float
    model: str
    n_points: int
    n_heights: int
    rms_relative_residual: float
    reduced_chi2: float
    min_height_mm: float
    max_height_mm: float

    def force_pn(self, magnet_z_mm):
        """The fitted force (pN) at magnet height(s) z (mm)."""
        z = np.asarray(magnet_z_mm, dtype=float)
        return self.f0_pn * (
            self.a * np.exp(-z / self.l1_mm) + (1.0 - self.a) * np.exp(-z / self.l2_mm)
        )


def _loglinear(z: np.ndarray, lnf: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted straight line ln F = c - z / l; returns (exp(c), l), l = inf if flat."""
    sw = np.sqrt(w)
    design = np.stack([np.ones_like(z), -z], axis=1) * sw[:, None]
    (c, inv_l), *_ = np.linalg.lstsq(design, lnf * sw, rcond=None)
    length = 1.0 / inv_l if inv_l > 0 else np.inf
    return float(np.exp(c)), float(length)


def _double_starts(z, lnf, w) -> list[np.ndarray]:
    """Starting (F0, a, l1, l2) from log-linear fits over the two halves of the range."""
    span = float(np.ptp(z))
    mid = float(np.median(np.unique(z)))
    upper = z >= mid
    lower = z <= mid
    b, l2 = _loglinear(z[upper], lnf[upper], w[upper])
    _, l_low = _loglinear(z[lower], lnf[lower], w[lower])
    if not np.isfinite(l2):
        l2 = 10.0 * span
    if not np.isfinite(l_low):
        l_low = l2
    rest = np.exp(lnf[lower]) - b * np.exp(-z[lower] / l2)
    ok = rest > 0
    if np.count_nonzero(ok) >= 2 and np.unique(z[lower][ok]).size >= 2:
        a_amp, l1 = _loglinear(z[lower][ok], np.log(rest[ok]), w[lower][ok])
    else:
        a_amp, l1 = b, 0.5 * l_low
    if not (np.isfinite(l1) and 0 < l1 < l2):
        l1 = 0.5 * min(l_low, l2)
    f0 = a_amp + b
    a = a_amp / f0 if f0 > 0 else 0.5
    starts = [np.array([f0, a, l1, l2])]
    f_all, l_all = _loglinear(z, lnf, w)
    if np.isfinite(l_all):
        for a0, s1, s2 in ((0.5, 0.5, 1.5), (0.7, 0.6, 2.0), (0.3, 0.3, 1.2)):
            starts.append(np.array([f_all, a0, s1 * l_all, s2 * l_all]))
    return [np.clip(s, [1e-12, 0.01, 1e-6, 1e-6], [np.inf, 0.99, np.inf, np.inf]) for s in starts]


def fit_magnet_force(magnet_z_mm, force_pn, force_err_pn=None) -> MagnetForceFit:
    """Fit the double-exponential force curve F(z) to measured forces.

    Parameters
    ----------
    magnet_z_mm : magnet height of each point (mm); points may share a height (several
        beads per height).
    force_pn : measured force of each point (pN), > 0.
    force_err_pn : optional standard errors of the forces (pN); their relative size
        sigma / F weights the points.

    Points with a non-finite height, force or error are ignored. Raises ValueError for
    fewer than 2 usable points or distinct heights, for a force <= 0 or an error <= 0, or
    for inputs of different lengths. Returns :class:`MagnetForceFit` (l1 <= l2).
    """
    z = np.asarray(magnet_z_mm, dtype=float).ravel()
    f = np.asarray(force_pn, dtype=float).ravel()
    if z.shape != f.shape:
        raise ValueError(f"magnet_z_mm and force_pn differ in length: {z.size} != {f.size}")
    if force_err_pn is None:
        sig = np.ones_like(f)
        relative = False
    else:
        err = np.asarray(force_err_pn, dtype=float).ravel()
        if err.size not in (1, f.size):
            raise ValueError(
                f"force_err_pn has {err.size} values for {f.size} forces (give one or one each)"
            )
        sig = np.broadcast_to(err, f.shape).copy()
        relative = True
    ok = np.isfinite(z) & np.isfinite(f) & np.isfinite(sig)
    z, f, sig = z[ok], f[ok], sig[ok]
    if np.any(f <= 0):
        raise ValueError(
            f"forces must be positive to fit the force curve, got {float(f[f <= 0][0])} pN "
            f"at magnet height {float(z[f <= 0][0])} mm"
        )
    if np.any(sig <= 0):
        raise ValueError(f"force errors must be positive, got {float(sig[sig <= 0][0])} pN")
    n_heights = int(np.unique(z).size)
    if f.size < 2 or n_heights < 2:
        raise ValueError(
            f"need at least 2 points at 2 distinct magnet heights to fit the force curve, "
            f"got {f.size} points at {n_heights} heights"
        )
    r = sig / f if relative else sig  # relative error: sigma of ln F
    lnf = np.log(f)
    w = 1.0 / r**2
    double = n_heights >= 5
    n_par = 4 if double else 2

    if double:

        def model(p):
            e1 = np.exp(-z / p[2])
            e2 = np.exp(-z / p[3])
            return p[0] * (p[1] * e1 + (1.0 - p[1]) * e2), e1, e2

        def resid(p):
            return (lnf - np.log(model(p)[0])) / r

        def jac(p):
            m, e1, e2 = model(p)
            cols = [
                np.full_like(z, 1.0 / p[0]),
                p[0] * (e1 - e2) / m,
                p[0] * p[1] * e1 * z / p[2] ** 2 / m,
                p[0] * (1.0 - p[1]) * e2 * z / p[3] ** 2 / m,
            ]
            return -np.stack(cols, axis=1) / r[:, None]

        starts = _double_starts(z, lnf, w)
        lower = [0.0, 0.0, 1e-9, 1e-9]
        upper = [np.inf, 1.0, np.inf, np.inf]
    else:

        def resid(p):
            return (lnf - np.log(p[0]) + z / p[1]) / r

        def jac(p):
            return -np.stack([np.full_like(z, 1.0 / p[0]), -z / p[1] ** 2], axis=1) / r[:, None]

        f_all, l_all = _loglinear(z, lnf, w)
        if not np.isfinite(l_all):
            l_all = 100.0 * float(np.ptp(z))
        starts = [np.array([f_all, l_all])]
        lower = [0.0, 1e-9]
        upper = [np.inf, np.inf]

    best = None
    for p0 in starts:
        try:
            res = least_squares(
                resid,
                p0,
                jac=jac,
                bounds=(lower, upper),
                x_scale="jac",
                xtol=1e-14,
                ftol=1e-14,
                gtol=1e-14,
                max_nfev=2000,
            )
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(res.fun)) and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        raise ValueError("the force-curve fit failed to converge from any starting point")
    p = np.array(best.x, dtype=float)
    dof = f.size - n_par
    chi2 = float(np.sum(best.fun**2))
    red = chi2 / dof if dof > 0 else float("nan")
    with np.errstate(invalid="ignore"):
        try:
            cov = np.linalg.inv(best.jac.T @ best.jac) * red
            errs = np.sqrt(np.where(np.diag(cov) >= 0.0, np.diag(cov), np.nan))
        except np.linalg.LinAlgError:
            errs = np.full(n_par, np.nan)
    rms = float(np.sqrt(np.mean((best.fun * r) ** 2)))  # ln F_i - ln F(z_i)
    common: dict[str, Any] = dict(
        model=_DOUBLE if double else _SINGLE,
        n_points=int(f.size),
        n_heights=n_heights,
        rms_relative_residual=rms,
        reduced_chi2=red,
        min_height_mm=float(np.min(z)),
        max_height_mm=float(np.max(z)),
    )
    if not double:
        return MagnetForceFit(
            f0_pn=float(p[0]),
            a=1.0,
            l1_mm=float(p[1]),
            l2_mm=float(p[1]),
            f0_pn_err=float(errs[0]),
            a_err=0.0,
            l1_mm_err=float(errs[1]),
            l2_mm_err=float(errs[1]),
            **common,
        )
    f0, a, l1, l2 = (float(v) for v in p)
    f0_err, a_err, l1_err, l2_err = (float(v) for v in errs)
    if l1 > l2:  # the model is symmetric under (a, l1, l2) -> (1 - a, l2, l1)
        a, l1, l2 = 1.0 - a, l2, l1
        l1_err, l2_err = l2_err, l1_err
    return MagnetForceFit(
        f0_pn=f0,
        a=a,
        l1_mm=l1,
        l2_mm=l2,
        f0_pn_err=f0_err,
        a_err=a_err,
        l1_mm_err=l1_err,
        l2_mm_err=l2_err,
        **common,
    )
