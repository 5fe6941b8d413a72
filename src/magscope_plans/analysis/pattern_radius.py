"""A bead's radius from its ring pattern, calibrated against the radii the drag gives.

A bigger bead scatters more: its ring pattern is stronger. :func:`pattern_contrast`
reduces each bead's Z-LUT to one number, the strongest ring modulation over the LUT's
planes (the standard deviation of the radial profile across its bins, at the plane where
it is largest: near the bead's focus, so beads at different heights are compared at the
same defocus). The radius does not follow from it by theory (the contrast also depends on
the illumination and the bead's material), so :func:`fit_pattern_radius` calibrates it on
the field of view itself: a straight line R = a + b (c - c_mean) through the tethered
beads' radii from their drag (:func:`~magscope_plans.analysis.radius_from_drag`), each
weighted by its error plus an intrinsic scatter ``s`` found so that the residuals'
reduced chi^2 is 1 (beads whose contrast says less about their radius widen ``s``; a
contrast unrelated to the radius gives a flat line and an ``s`` as wide as the batch).

The line gives every bead a radius: the stuck reference beads (which show no drag) and,
left out of the fit one at a time, each tethered bead (an estimate independent of its own
drag, to combine with it). Units: nm; the contrast is dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PatternRadiusFit", "fit_pattern_radius", "pattern_contrast"]

#: planes at either end of a LUT where a contrast maximum means the bead's focus may lie
#: outside the LUT (the contrast is then NaN)
EDGE_PLANES = 2
#: the fewest tethered beads with a drag radius and a contrast the line is fitted to
MIN_BEADS = 5


def pattern_contrast(profiles: np.ndarray, *, edge_planes: int = EDGE_PLANES) -> np.ndarray:
    """Each bead's strongest ring modulation over its Z-LUT's planes (dimensionless).

    ``profiles``: (n_beads, n_planes, n_bins) radial profiles relative to the background
    (:attr:`magscope_tracking.ZLUT.profiles`). Per plane, the standard deviation of the
    profile across its bins (insensitive to the background's level); per bead, the largest
    of them. NaN for a bead whose largest lies within ``edge_planes`` of either end of
    the LUT (its focus may be outside it) or whose profiles are not finite.
    """
    p = np.asarray(profiles, dtype=float)
    if p.ndim != 3:
        raise ValueError(f"profiles must be (n_beads, n_planes, n_bins), got shape {p.shape}")
    n_planes = p.shape[1]
    if n_planes < 2 * edge_planes + 1:
        raise ValueError(f"a LUT of {n_planes} planes has none inside its {edge_planes} edge "
                         f"planes at either end")
    with np.errstate(invalid="ignore"):
        spread = p.std(axis=2)  # (beads, planes)
    finite = np.all(np.isfinite(spread), axis=1)
    filled = np.where(np.isfinite(spread), spread, -np.inf)
    k = np.argmax(filled, axis=1)
    best = filled[np.arange(p.shape[0]), k]
    inside = (k >= edge_planes) & (k < n_planes - edge_planes)
    return np.where(finite & inside, best, np.nan)


@dataclass(frozen=True)
class PatternRadiusFit:
    """R = intercept_nm + slope_nm (c - contrast_mean) with intrinsic scatter scatter_nm.

    ``covariance``: of (intercept_nm, slope_nm); ``n_beads``: the beads fitted;
    ``leave_one_out_nm`` / ``leave_one_out_err_nm``: for each fitted bead (in the order
    given, NaN where it was not fitted) the radius the line fitted without it gives.
    """

    intercept_nm: float
    slope_nm: float
    contrast_mean: float
    scatter_nm: float
    covariance: np.ndarray
    n_beads: int
    leave_one_out_nm: np.ndarray
    leave_one_out_err_nm: np.ndarray

    def radius_nm(self, contrast) -> tuple[np.ndarray, np.ndarray]:
        """Radius (nm) and its error (nm) of beads of ``contrast``: the line's error there
        and the intrinsic scatter. NaN where the contrast is not finite."""
        c = np.asarray(contrast, dtype=float)
        d = c - self.contrast_mean
        r = self.intercept_nm + self.slope_nm * d
        cov = self.covariance
        var = cov[0, 0] + 2 * d * cov[0, 1] + d * d * cov[1, 1] + self.scatter_nm**2
        return r, np.sqrt(var)

    def mean_radius_nm(self, contrast) -> tuple[float, float]:
        """The mean radius (nm) of beads of ``contrast`` (non-finite ones left out) and its
        error (nm): the line's error at their mean contrast (common to them) and the
        intrinsic scatter over sqrt(n). NaN if none is finite."""
        c = np.asarray(contrast, dtype=float)
        c = c[np.isfinite(c)]
        if c.size == 0:
            return float("nan"), float("nan")
        d = float(c.mean()) - self.contrast_mean
        cov = self.covariance
        var = cov[0, 0] + 2 * d * cov[0, 1] + d * d * cov[1, 1] + self.scatter_nm**2 / c.size
        return float(self.intercept_nm + self.slope_nm * d), float(np.sqrt(var))


def _weighted_line(c, r, e, scatter):
    """Weighted straight line through (c, r) with errors hypot(e, scatter): (intercept at
    the weighted mean contrast, slope, that mean, covariance, chi^2)."""
    w = 1.0 / (e * e + scatter * scatter)
    cm = float(np.sum(w * c) / np.sum(w))
    d = c - cm
    sw, sdd = float(np.sum(w)), float(np.sum(w * d * d))
    a = float(np.sum(w * r) / sw)
    b = float(np.sum(w * d * r) / sdd) if sdd > 0 else 0.0
    cov = np.array([[1.0 / sw, 0.0], [0.0, 1.0 / sdd if sdd > 0 else np.inf]])
    chi2 = float(np.sum(w * (r - a - b * d) ** 2))
    return a, b, cm, cov, chi2


def _line_with_scatter(c, r, e):
    """The line with the intrinsic scatter that makes chi^2 / (n - 2) = 1 (0 if the errors
    alone already explain the residuals); bisection on the scatter (nm)."""
    n = c.size
    line = _weighted_line(c, r, e, 0.0)
    if line[4] <= n - 2:
        return (*line[:4], 0.0)
    low, high = 0.0, float(np.ptp(r)) + float(e.max())
    for _ in range(60):
        mid = 0.5 * (low + high)
        if _weighted_line(c, r, e, mid)[4] > n - 2:
            low = mid
        else:
            high = mid
    s = 0.5 * (low + high)
    return (*_weighted_line(c, r, e, s)[:4], s)


def fit_pattern_radius(contrast, radius_nm, radius_err_nm, *, min_beads: int = MIN_BEADS,
                       leave_one_out: bool = True) -> PatternRadiusFit | None:
    """Calibrate the radius against the ring contrast on beads of known radius.

    ``contrast`` (n,): :func:`pattern_contrast` of each bead; ``radius_nm`` (n,) and
    ``radius_err_nm`` (n,): their radii and errors from the drag. Beads with a non-finite
    value or a non-positive error are left out; None if fewer than ``min_beads`` remain
    or their contrasts are all the same. ``leave_one_out``: also fit the line without
    each bead in turn (:attr:`PatternRadiusFit.leave_one_out_nm`; NaN if False).
    """
    c = np.asarray(contrast, dtype=float)
    r = np.asarray(radius_nm, dtype=float)
    e = np.asarray(radius_err_nm, dtype=float)
    if not c.shape == r.shape == e.shape or c.ndim != 1:
        raise ValueError(f"contrast, radius_nm and radius_err_nm must be 1-D of one length, "
                         f"got {c.shape}, {r.shape}, {e.shape}")
    good = np.isfinite(c) & np.isfinite(r) & np.isfinite(e) & (e > 0)
    idx = np.flatnonzero(good)
    if idx.size < max(3, int(min_beads)) or np.ptp(c[idx]) == 0:
        return None
    a, b, cm, cov, s = _line_with_scatter(c[idx], r[idx], e[idx])
    loo = np.full(c.shape, np.nan)
    loo_err = np.full(c.shape, np.nan)
    for j, i in enumerate(idx if leave_one_out else ()):
        keep = np.delete(idx, j)
        if np.ptp(c[keep]) == 0:
            continue
        pa, pb, pcm, pcov, ps = _line_with_scatter(c[keep], r[keep], e[keep])
        line = PatternRadiusFit(pa, pb, pcm, ps, pcov, keep.size, loo, loo_err)
        loo[i], loo_err[i] = (float(v) for v in line.radius_nm(c[i]))
    return PatternRadiusFit(
        intercept_nm=a, slope_nm=b, contrast_mean=cm, scatter_nm=s, covariance=cov,
        n_beads=int(idx.size), leave_one_out_nm=loo, leave_one_out_err_nm=loo_err,
    )
