"""Buckling point of a rotation-extension ("hat") curve of a torsionally constrained tether.

Units: turns (magnet rotation, positive = overwinding), extension nm, slopes nm/turn.

Model. At constant force the extension stays on a plateau while the tether stores twist,
then, past the buckling point n_b, falls linearly as each turn adds a plectoneme loop:

    l(n) = h                       for |n - n0| <= n_b
    l(n) = h - s (|n - n0| - n_b)  beyond,   s > 0 (extension lost per turn)

separately on the positive and the negative side of the hat centre n0 (``center_turns``,
default 0). Above ~1 pN underwound DNA melts instead of buckling: that side stays flat and
its buckling point is NaN.

Fit, per side (n' = |n - n0| on that side, the points at n0 belong to both sides):

1. flat plateau + line: for each trial n_b the model is linear in (h, s), so the residual
   sum is minimised over n_b by a grid on the data followed by a bounded Brent search;
   points past n_b below 20 % of the plateau (bead resting on the surface) are dropped and
   the fit repeated;
2. local two-line fit: real plateaus are rounded (the extension already decreases slowly
   before buckling) and the transition is rounded too; a flat plateau with a sharp corner
   would be biased. The fit is repeated on the points with n' >= n_b - w (w =
   max(``window_turns``, n_b / 2)) with two lines, the plateau line h_b + p (n' - n_b)
   (slope p free) and the flank h_b - s (n' - n_b), joined by a smooth minimum

       l = h_b + p d - (p + s) delta ln(1 + exp(d / delta)),   d = n' - n_b,

   (corner half-width delta <= 1.5 turns, fitted): n_b, where the post-buckling line meets
   the plateau line, is the buckling point (nonlinear least squares on h_b, p, s, n_b,
   delta).

Standard errors from the Jacobian of the final fit and the residual variance. A side counts
as buckled when the flank has at least 3 points beyond n_b and its slope s exceeds both
``min_slope_nm_per_turn`` and 4 standard errors; otherwise its buckling turns and slope
are NaN. Precision: with ~1-turn steps, the error is about the extension noise of a point
divided by s, over the square root of the number of points near the corner: keep the
noise of each mean extension well below s (e.g. < 0.2 s) and have several points on the
plateau near n_b and on the flank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize_scalar

__all__ = ["BucklingResult", "buckling_point"]


@dataclass(frozen=True)
class BucklingResult:
    """Buckling points (turns, relative to 0 turns, not to the centre) and slopes.

    ``positive_turns`` > centre and ``negative_turns`` < centre (NaN when that side does not
    buckle within the data); ``*_slope_nm_per_turn`` is the extension lost per turn beyond
    buckling (positive numbers on both sides); ``plateau_nm`` the mean extension on the top
    of the hat (within half of the smaller buckling point from the centre); every
    ``*_err`` one standard error.
    """

    positive_turns: float
    negative_turns: float
    positive_turns_err: float
    negative_turns_err: float
    positive_slope_nm_per_turn: float
    negative_slope_nm_per_turn: float
    positive_slope_nm_per_turn_err: float
    negative_slope_nm_per_turn_err: float
    plateau_nm: float
    plateau_nm_err: float
    center_turns: float


@dataclass(frozen=True)
class _Side:
    nb: float
    nb_err: float
    slope: float
    slope_err: float


_NAN_SIDE = _Side(np.nan, np.nan, np.nan, np.nan)

#: Points past the buckling point below this fraction of the plateau are taken as the bead
#: resting on the surface (the flank is no longer linear there) and left out.
_SURFACE_FRACTION = 0.2

#: Largest half-width (turns) of the rounded corner between plateau and flank.
_MAX_CORNER_TURNS = 1.5


def _flat_fit(n: np.ndarray, y: np.ndarray, w: np.ndarray, nb: float):
    """Weighted LSQ of y = h - s max(n - nb, 0): returns (rss, h, s)."""
    t = np.maximum(n - nb, 0.0)
    a = np.stack([np.ones_like(n), -t], axis=1) * w[:, None]
    coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
    r = y * w - a @ coef
    return float(r @ r), float(coef[0]), float(coef[1])


def _corner_model(n, hb, p, s, nb, delta):
    """Plateau line hb + p (n - nb) and flank hb - s (n - nb), smooth minimum over delta turns.

    l = hb + p d - (p + s) delta softplus(d / delta), d = n - nb: the two lines far from the
    corner, meeting (as asymptotes) at n = nb.
    """
    d = n - nb
    return hb + p * d - (p + s) * delta * np.logaddexp(0.0, d / delta)


def _corner_jac(n, hb, p, s, nb, delta):
    """Jacobian of :func:`_corner_model` in (hb, p, s, nb, delta)."""
    d = n - nb
    u = d / delta
    sp = np.logaddexp(0.0, u)
    sig = 0.5 * (1.0 + np.tanh(0.5 * u))  # logistic(u) = d softplus / du
    return np.stack(
        [
            np.ones_like(d),
            d - delta * sp,
            -delta * sp,
            -p + (p + s) * sig,
            -(p + s) * (sp - u * sig),
        ],
        axis=1,
    )


def _minimise(func, lo: float, hi: float, grid: np.ndarray) -> float:
    """Minimise a 1-D function: best grid point, then Brent between its neighbours."""
    grid = np.unique(np.clip(grid, lo, hi))
    vals = np.array([func(g) for g in grid])
    i = int(np.argmin(vals))
    a = grid[max(i - 1, 0)]
    b = grid[min(i + 1, grid.size - 1)]
    if b <= a:
        return float(grid[i])
    res = minimize_scalar(func, bounds=(a, b), method="bounded", options={"xatol": 1e-6})
    return float(res.x) if res.fun <= vals[i] else float(grid[i])


def _fit_side(n, y, w, window_turns: float, min_slope: float) -> _Side:
    if n.size < 6:
        return _NAN_SIDE
    lo, hi = float(n.min()), float(n.max())
    uniq = np.unique(n)
    grid = np.concatenate([uniq, 0.5 * (uniq[1:] + uniq[:-1])])
    nb1 = _minimise(lambda v: _flat_fit(n, y, w, v)[0], lo, hi, grid)
    _, h1, s1 = _flat_fit(n, y, w, nb1)
    # the bead on the surface: beyond the flank the extension stays near 0, drop it
    low = (y < _SURFACE_FRACTION * h1) & (n > nb1)
    if np.any(low) and h1 > 0.0:
        keep = ~low
        n, y, w = n[keep], y[keep], w[keep]
        if n.size < 6:
            return _NAN_SIDE
        uniq = np.unique(n)
        grid = np.concatenate([uniq, 0.5 * (uniq[1:] + uniq[:-1])])
        nb1 = _minimise(lambda v: _flat_fit(n, y, w, v)[0], float(n.min()), float(n.max()), grid)
        _, h1, s1 = _flat_fit(n, y, w, nb1)
    if np.count_nonzero(n > nb1) < 3 or s1 <= 0.0:
        return _NAN_SIDE
    # local refinement: sloped plateau line and flank line joined by a smooth corner
    win = max(window_turns, 0.5 * nb1)
    sel = n >= nb1 - win
    ns, ys, ws = n[sel], y[sel], w[sel]
    if np.count_nonzero(ns < nb1) < 3 or np.count_nonzero(ns > nb1) < 3:
        return _NAN_SIDE
    scale = max(abs(h1), 1.0)

    def resid(q):
        return (_corner_model(ns, *q) - ys) * ws / scale

    def jac(q):
        return _corner_jac(ns, *q) * (ws / scale)[:, None]

    q0 = [h1, 0.0, s1, nb1, 0.5]
    lower = [-np.inf, -np.inf, -np.inf, float(ns.min()), 1e-3]
    upper = [np.inf, np.inf, np.inf, float(ns.max()), _MAX_CORNER_TURNS]
    res = least_squares(
        resid,
        q0,
        jac=jac,
        bounds=(lower, upper),
        x_scale="jac",
        xtol=1e-10,
        ftol=1e-10,
        max_nfev=400,
    )
    hb, p, s, nb, delta = (float(v) for v in res.x)
    dof = ns.size - 5
    if dof <= 0:
        return _NAN_SIDE
    rss = float(np.sum(res.fun**2)) * scale**2
    jm = _corner_jac(ns, *res.x) * ws[:, None]
    try:
        cov = np.linalg.pinv(jm.T @ jm) * (rss / dof)
    except np.linalg.LinAlgError:
        return _NAN_SIDE
    errs = np.sqrt(np.maximum(np.diag(cov), 0.0))
    s_err, nb_err = float(errs[2]), float(errs[3])
    n_after = np.count_nonzero(ns > nb + delta)
    if n_after < 3 or not (s > min_slope and s > 4.0 * s_err):
        return _NAN_SIDE
    return _Side(nb, nb_err, s, s_err)


def buckling_point(
    turns,
    extension_nm,
    *,
    center_turns: float = 0.0,
    extension_err_nm=None,
    window_turns: float = 4.0,
    min_slope_nm_per_turn: float = 5.0,
) -> BucklingResult:
    """Buckling points of a hat curve (mean extension against magnet turns at fixed force).

    Parameters
    ----------
    turns : magnet turns of each point (any order; repeats allowed, e.g. up and down scans).
    extension_nm : mean extension at each point (nm). NaN points are ignored.
    center_turns : the hat centre (turns at which the tether is torsionally relaxed).
    extension_err_nm : optional standard errors of the points (weights).
    window_turns : minimum plateau length used by the local two-line refinement.
    min_slope_nm_per_turn : smallest post-buckling slope that counts as buckling.

    Returns :class:`BucklingResult` (turns, nm/turn, nm, with standard errors).
    """
    n = np.asarray(turns, dtype=float).ravel()
    y = np.asarray(extension_nm, dtype=float).ravel()
    if n.shape != y.shape:
        raise ValueError(f"turns and extension differ in length: {n.size} != {y.size}")
    if extension_err_nm is None:
        w = np.ones_like(y)
    else:
        err = np.broadcast_to(np.asarray(extension_err_nm, dtype=float), y.shape)
        with np.errstate(divide="ignore"):
            w = 1.0 / err
    ok = np.isfinite(n) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    n, y, w = n[ok] - center_turns, y[ok], w[ok]
    sides = {}
    for sign in (1.0, -1.0):
        sel = sign * n >= 0.0
        sides[sign] = _fit_side(sign * n[sel], y[sel], w[sel], window_turns, min_slope_nm_per_turn)
    pos, neg = sides[1.0], sides[-1.0]
    # plateau: points within half of the smaller buckling point from the centre
    nbs = [side.nb for side in (pos, neg) if np.isfinite(side.nb)]
    top = np.abs(n) <= 0.5 * min(nbs) if nbs else np.ones_like(n, dtype=bool)
    if np.count_nonzero(top) >= 2:
        plateau = float(np.average(y[top], weights=w[top] ** 2))
        plateau_err = float(np.std(y[top], ddof=1) / np.sqrt(np.count_nonzero(top)))
    else:
        plateau, plateau_err = float("nan"), float("nan")
    return BucklingResult(
        positive_turns=center_turns + pos.nb,
        negative_turns=center_turns - neg.nb,
        positive_turns_err=pos.nb_err,
        negative_turns_err=neg.nb_err,
        positive_slope_nm_per_turn=pos.slope,
        negative_slope_nm_per_turn=neg.slope,
        positive_slope_nm_per_turn_err=pos.slope_err,
        negative_slope_nm_per_turn_err=neg.slope_err,
        plateau_nm=plateau,
        plateau_nm_err=plateau_err,
        center_turns=float(center_turns),
    )
