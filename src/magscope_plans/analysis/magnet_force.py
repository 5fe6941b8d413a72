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

The fit keeps the parameters' covariance: :meth:`MagnetForceFit.force_rel_err` is the
curve's relative standard error at any height (the gradient of ln F through it), small
inside the measured heights and growing outside them.

:func:`fit_ensemble_force` fits many beads at once: bead b's force at height h is
s_b F(z_h), each bead with its own scale s_b (magnetic content; geometric mean 1 over the
beads). It alternates a weighted fit of the curve to every bead's forces divided by its
scale with each scale's weighted mean of ln(F_bh / F(z_h)), until the scales settle;
every point weighs by its own relative error, so a weak-force height with scattered
beads pulls the curve less than a precise one, but all beads count (not only a median).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

__all__ = ["EnsembleForceFit", "MagnetForceFit", "fit_ensemble_force", "fit_magnet_force"]

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
    #: covariance of (f0_pn, a, l1_mm, l2_mm) (4 x 4; for the single exponential the
    #: rows of a and l2 are those of 0 and l1); None: not determined
    covariance: np.ndarray | None = field(default=None, compare=False, repr=False)

    def force_pn(self, magnet_z_mm):
        """The fitted force (pN) at magnet height(s) z (mm)."""
        z = np.asarray(magnet_z_mm, dtype=float)
        return self.f0_pn * (
            self.a * np.exp(-z / self.l1_mm) + (1.0 - self.a) * np.exp(-z / self.l2_mm)
        )

    def force_rel_err(self, magnet_z_mm):
        """Relative standard error of the fitted force at height(s) z (mm): the standard
        deviation of ln F(z) from the parameters' covariance (NaN without one)."""
        return ln_force_std(magnet_z_mm, (self.f0_pn, self.a, self.l1_mm, self.l2_mm),
                            self.covariance)


def ln_force_std(magnet_z_mm, params, covariance) -> np.ndarray:
    """Standard deviation of ln F(z) for the double exponential ``params`` = (f0, a, l1,
    l2) with ``covariance`` (4 x 4, or None: NaN), at height(s) z (mm)."""
    z = np.asarray(magnet_z_mm, dtype=float)
    if covariance is None:
        return np.full(z.shape, np.nan)
    grad = _double_gradient(z, *params)
    cov = np.asarray(covariance, dtype=float)
    var = np.einsum("...i,ij,...j->...", grad, cov, grad)
    return np.sqrt(np.maximum(var, 0.0))


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

        def resid(p):
            e1, e2 = np.exp(-z / p[2]), np.exp(-z / p[3])
            return (lnf - np.log(p[0] * (p[1] * e1 + (1.0 - p[1]) * e2))) / r

        def jac(p):
            return -_double_gradient(z, *p) / r[:, None]

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
    cov: np.ndarray | None = None
    with np.errstate(invalid="ignore"):
        try:
            cov = np.linalg.inv(best.jac.T @ best.jac) * red
            errs = np.sqrt(np.where(np.diag(cov) >= 0.0, np.diag(cov), np.nan))
        except np.linalg.LinAlgError:
            errs = np.full(n_par, np.nan)
    if cov is not None and not np.all(np.isfinite(cov)):
        cov = None
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
        full = None
        if cov is not None:  # (f0, l) -> (f0, a = 1, l1 = l, l2 = l): a fixed, l2 moves with l1
            lift = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
            full = lift @ cov @ lift.T
        return MagnetForceFit(
            f0_pn=float(p[0]),
            a=1.0,
            l1_mm=float(p[1]),
            l2_mm=float(p[1]),
            f0_pn_err=float(errs[0]),
            a_err=0.0,
            l1_mm_err=float(errs[1]),
            l2_mm_err=float(errs[1]),
            covariance=full,
            **common,
        )
    f0, a, l1, l2 = (float(v) for v in p)
    f0_err, a_err, l1_err, l2_err = (float(v) for v in errs)
    if l1 > l2:  # the model is symmetric under (a, l1, l2) -> (1 - a, l2, l1)
        a, l1, l2 = 1.0 - a, l2, l1
        l1_err, l2_err = l2_err, l1_err
        if cov is not None:  # the same change of variables on the covariance
            swap = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], float)
            cov = swap @ cov @ swap.T
    return MagnetForceFit(
        f0_pn=f0,
        a=a,
        l1_mm=l1,
        l2_mm=l2,
        f0_pn_err=f0_err,
        a_err=a_err,
        l1_mm_err=l1_err,
        l2_mm_err=l2_err,
        covariance=cov,
        **common,
    )


@dataclass(frozen=True)
class EnsembleForceFit:
    """Result of :func:`fit_ensemble_force`: the curve (its covariance included), each
    bead's scale and its standard error (NaN for a bead without a usable force), and the
    alternations it took."""

    curve: MagnetForceFit
    bead_scale: np.ndarray = field(compare=False)
    bead_scale_err: np.ndarray = field(compare=False)
    iterations: int = 0


def fit_ensemble_force(
    magnet_z_mm, force_pn, force_err_pn, *, max_iterations: int = 50, tol: float = 1e-9
) -> EnsembleForceFit:
    """Fit F(z) and each bead's scale to the forces of many beads at several heights.

    ``magnet_z_mm`` (H,): the heights (mm); ``force_pn`` and ``force_err_pn`` (H, B): each
    bead's force there and its standard error (pN; NaN: none). Each point weighs by its
    relative error. A bead's scale error is the weighted mean's, widened by its points'
    scatter about the curve (reduced chi^2 > 1). The scales have geometric mean 1 over the
    beads that have one. ValueError when fewer than 2 heights have a usable force.
    """
    z = np.asarray(magnet_z_mm, dtype=float)
    f = np.asarray(force_pn, dtype=float)
    e = np.asarray(force_err_pn, dtype=float)
    if f.ndim != 2 or f.shape != e.shape or f.shape[0] != z.size:
        raise ValueError(
            f"force_pn and force_err_pn must be (heights, beads) = ({z.size}, B) arrays, "
            f"got {f.shape} and {e.shape}"
        )
    ok = np.isfinite(f) & (f > 0) & np.isfinite(e) & (e > 0) & np.isfinite(z)[:, None]
    if np.unique(z[ok.any(axis=1)]).size < 2:
        raise ValueError(
            f"only {int(np.unique(z[ok.any(axis=1)]).size)} magnet heights have a usable "
            "force: need 2 or more"
        )
    ln_f = np.log(np.where(ok, f, 1.0))
    w = np.where(ok, (f / np.where(ok, e, 1.0)) ** 2, 0.0)  # 1 / (relative error)^2
    has = ok.any(axis=0)
    ln_s = np.zeros(f.shape[1])
    zz = np.broadcast_to(z[:, None], f.shape)
    curve = None
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        scale = np.exp(ln_s)
        curve = fit_magnet_force(zz[ok], (f / scale)[ok], (e / scale)[ok])
        resid = ln_f - np.log(curve.force_pn(z))[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.where(has, (w * resid).sum(axis=0) / w.sum(axis=0), 0.0)
        new -= new[has].mean()
        step = float(np.max(np.abs(new - ln_s)))
        ln_s = new
        if step < tol:
            break
    assert curve is not None
    scale = np.exp(ln_s)
    curve = fit_magnet_force(zz[ok], (f / scale)[ok], (e / scale)[ok])
    cov_theta, scale_err = _joint_errors(curve, z, ok, w, ln_f, ln_s, has)
    if cov_theta is not None:
        err = np.sqrt(np.maximum(np.diag(cov_theta), 0.0))
        curve = dataclasses.replace(
            curve, covariance=cov_theta, f0_pn_err=float(err[0]), a_err=float(err[1]),
            l1_mm_err=float(err[2]), l2_mm_err=float(err[3]),
        )
    return EnsembleForceFit(
        curve, np.where(has, scale, np.nan), np.where(has, scale_err, np.nan), iterations
    )


def _ln_gradient(curve: MagnetForceFit, z: np.ndarray) -> np.ndarray:
    """d ln F / d (fitted parameters) at heights z: (f0, a, l1, l2), or (f0, l) for the
    single exponential."""
    if curve.model == _SINGLE:
        return np.stack([np.full(z.shape, 1.0 / curve.f0_pn), z / curve.l1_mm**2], axis=-1)
    return _double_gradient(z, curve.f0_pn, curve.a, curve.l1_mm, curve.l2_mm)


def _double_gradient(z: np.ndarray, f0: float, a: float, l1: float, l2: float) -> np.ndarray:
    """d ln F / d (f0, a, l1, l2) of the double exponential at heights z (..., 4)."""
    e1, e2 = np.exp(-z / l1), np.exp(-z / l2)
    m = a * e1 + (1.0 - a) * e2
    return np.stack([
        np.full(z.shape, 1.0 / f0), (e1 - e2) / m, a * e1 * z / l1**2 / m,
        (1.0 - a) * e2 * z / l2**2 / m,
    ], axis=-1)


def _joint_errors(curve, z, ok, w, ln_f, ln_s, has):
    """The curve's covariance and the scales' errors from the joint fit of both (the
    scales' last free one is minus the sum of the others: geometric mean 1), scaled by the
    reduced chi^2 when above 1. (None, NaN) when it cannot be inverted."""
    beads = np.flatnonzero(has)
    nb = beads.size
    grad = _ln_gradient(curve, z)  # (H, P)
    n_par = grad.shape[1]
    rows_h, rows_b = np.nonzero(ok)
    sw = np.sqrt(w[rows_h, rows_b])
    jac = np.zeros((rows_h.size, n_par + nb - 1))
    jac[:, :n_par] = grad[rows_h] * sw[:, None]
    col = {int(b): k for k, b in enumerate(beads)}
    for i, b in enumerate(rows_b):
        k = col[int(b)]
        if k < nb - 1:
            jac[i, n_par + k] = sw[i]
        else:  # the last scale: minus the sum of the others
            jac[i, n_par:] = -sw[i]
    resid = (ln_f - np.log(curve.force_pn(z))[:, None] - ln_s[None, :])[rows_h, rows_b] * sw
    dof = rows_h.size - jac.shape[1]
    red = float(np.sum(resid**2)) / dof if dof > 0 else np.nan
    try:
        cov = np.linalg.inv(jac.T @ jac) * (max(red, 1.0) if np.isfinite(red) else np.nan)
    except np.linalg.LinAlgError:
        return None, np.full(ln_s.shape, np.nan)
    if not np.all(np.isfinite(cov)):
        return None, np.full(ln_s.shape, np.nan)
    # the last scale's variance: var(-sum) = 1' C 1 over the free scales
    c_s = cov[n_par:, n_par:]
    var_ln_s = np.append(np.diag(c_s), np.sum(c_s))
    scale_err = np.full(ln_s.shape, np.nan)
    scale_err[beads] = np.exp(ln_s[beads]) * np.sqrt(np.maximum(var_ln_s, 0.0))
    theta = cov[:n_par, :n_par]
    if curve.model == _SINGLE:
        lift = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        theta = lift @ theta @ lift.T
    return theta, scale_err
