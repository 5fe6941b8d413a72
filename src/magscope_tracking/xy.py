"""Sub-pixel XY localisation of a bead: centre-of-mass seed, then a radial-symmetry fit.

Method (per ROI, all coordinates in px relative to the ROI's top-left pixel centre):

1. **Seed**: the centre of mass of w_p = max((I_p - bg)^2 - 4 var, 0) over the ROI, with
   bg and var the mean and variance of the ROI border (:mod:`.background`): the
   squared deviation from the background, with the noise floor removed.
2. **Radial-symmetry fit** (Gauss-Newton): a bead image is a radially symmetric pattern
   T(|p - c|) about its centre c. At the current centre the profile T is fitted to the
   pixels within R by least squares (:mod:`.radial_profile`), then c moves to cancel the
   gradient of the residual:

       g = sum_p (I_p - bg - T(r_p)) W(r_p) (p - c) / r_p,    c <- c - g / H,
       H = 1/2 sum_k n_k W(r_k) T'(r_k)

   with W a smoothed derivative of T (the matched filter of a radial displacement) and
   n_k the pixel weight of knot k. Because T is re-fitted about each new centre, the fit
   converges to the point about which the image is most radially symmetric, and since
   T is fitted at each pixel's exact distance (no image interpolation, no rounding of
   radii) the estimate has no pixel-locking bias to speak of (about 0.001 px at most on
   the simulator). The first step is a cheap one (a checkerboard half of the pixels
   within 0.7 R); full steps follow until one is below ``tolerance_px`` (typically one
   full step). The precision is at the Cramer-Rao bound of the shot noise.
3. **XY score**: 1 - sum(res^2) / sum((I - bg)^2) over the disc, the fraction of the
   pixel variance the radial model explains: ~0.9-1 for a bead, ~n_bins / n_pixels
   (0.05-0.1) for a blank ROI; 0 for a lost bead.

The fitted profile of the last iteration is what Z matching uses.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import jit, scalar_jit
from .background import border_stats, roi_stats_reference
from .options import RadialBins, TrackOptions, TrackStatus
from .radial_profile import (
    PROFILE_PENALTY,
    profile_fit_reference,
    solve_profile,
    template_pass,
)

__all__ = [
    "N_WORK",
    "SEED_NOISE_FACTOR",
    "XYResult",
    "buffer_size",
    "locate_one",
    "locate_one_reference",
    "locate_xy_reference",
]

SEED_NOISE_FACTOR = 4.0
"""Noise floor of the centre-of-mass seed, in border noise variances."""

_WEIGHT_SMOOTHING = 2  # [1, 2, 1] / 4 passes over the profile before differentiating
_COARSE_RADIUS = 0.7  # the first step uses a checkerboard of the pixels within 0.7 R
_MAX_STEP_PX = 2.0  # trust region of one Gauss-Newton step
N_WORK = 9
"""Knot-sized scratch rows :func:`locate_one` needs (``work``: (N_WORK, n_bins))."""


# --------------------------------------------------------------------------- numba kernels


@jit
def _seed_pass(img, bg, floor, saturation):
    """One pass over the ROI: (has_non_finite, n_saturated, x, y) with (x, y) the centre
    of mass of max((I - bg)^2 - floor, 0) ((nan, nan) if that is zero everywhere).

    float32 arithmetic within a row (vectorises twice as wide), float64 across rows; a
    non-finite pixel turns the sum of (v - v) * 0 into NaN (no branch in the loop)."""
    h, w = img.shape
    sw = 0.0
    sx = 0.0
    sy = 0.0
    marker = 0.0
    n_sat = 0.0
    bg32 = np.float32(bg)
    floor32 = np.float32(floor)
    sat32 = np.float32(saturation) if saturation < 3e38 else np.float32(np.inf)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(h):
        rw = zero
        rx = zero
        nb = zero
        ns = zero
        for j in range(w):
            v = np.float32(img[i, j])
            nb += (v - v) * zero
            ns += one if v >= sat32 else zero
            d = v - bg32
            q = max(d * d - floor32, zero)
            rw += q
            rx += q * np.float32(j)
        marker += nb
        n_sat += ns
        sw += rw
        sx += rx
        sy += np.float64(rw) * i
    bad = not (marker == 0.0)
    if bad or not (sw > 0.0):
        return bad, int(n_sat), np.nan, np.nan
    return bad, int(n_sat), sx / sw, sy / sw


@jit
def _weights(n_bins, bin_px, coef, smooth, ws, wr, seg):
    """Smoothed derivative ws (ADU/px) of the profile at the knots, wr = ws / r, and the
    segment table seg[k] = (c_k, c_k+1 - c_k, wr_k, wr_k+1 - wr_k) of the gradient pass."""
    for k in range(n_bins):
        smooth[k] = coef[k]
    for _ in range(_WEIGHT_SMOOTHING):
        prev = smooth[0]
        for k in range(1, n_bins - 1):
            cur = smooth[k]
            smooth[k] = 0.25 * prev + 0.5 * cur + 0.25 * smooth[k + 1]
            prev = cur
    inv2 = 0.5 / bin_px
    ws[0] = 0.0
    for k in range(1, n_bins - 1):
        ws[k] = (smooth[k + 1] - smooth[k - 1]) * inv2
        wr[k] = ws[k] / (k * bin_px)
    last = n_bins - 1
    ws[last] = (smooth[last] - smooth[last - 1]) / bin_px
    wr[last] = ws[last] / (last * bin_px)
    wr[0] = wr[1]
    for k in range(last):
        seg[k, 0] = coef[k]
        seg[k, 1] = coef[k + 1] - coef[k]
        seg[k, 2] = wr[k]
        seg[k, 3] = wr[k + 1] - wr[k]
    seg[last, 0] = coef[last]
    seg[last, 1] = 0.0
    seg[last, 2] = wr[last]
    seg[last, 3] = 0.0


@jit
def _curvature(n_bins, bin_px, coef, diag, off, ws):
    """H = 1/2 sum_k n_k ws_k T'_k (n_k = pixel weight of knot k, T' = profile slope)."""
    inv2 = 0.5 / bin_px
    hsum = 0.0
    for k in range(1, n_bins - 1):
        nk = diag[k] + off[k] + off[k - 1]
        hsum += nk * ws[k] * (coef[k + 1] - coef[k - 1]) * inv2
    k = n_bins - 1
    nk = diag[k] + off[k - 1]
    hsum += nk * ws[k] * (coef[k] - coef[k - 1]) / bin_px
    return 0.5 * hsum


@scalar_jit
def _gradient_pass(img, bg, cx, cy, radius, stride, kbuf, ubuf, seg):
    """(gx, gy) over the pixels of ``template_pass`` (same order)."""
    h, w = img.shape
    r2max = radius * radius
    i0 = max(int(math.ceil(cy - radius)), 0)
    i1 = min(int(math.floor(cy + radius)), h - 1)
    gx = 0.0
    gy = 0.0
    n = 0
    for i in range(i0, i1 + 1):
        dy = i - cy
        rem = r2max - dy * dy
        if rem <= 0.0:
            continue
        half = math.sqrt(rem)
        j0 = max(int(math.ceil(cx - half)), 0)
        j1 = min(int(math.floor(cx + half)), w - 1)
        if stride == 2:
            j0 += (i + j0) & 1
        if j1 < j0:
            continue
        m = (j1 - j0) // stride + 1
        rx = 0.0
        ry = 0.0
        x0 = j0 - cx
        for jj in range(m):
            k = kbuf[n + jj]
            u = ubuf[n + jj]
            res = (img[i, j0 + jj * stride] - bg) - (seg[k, 0] + u * seg[k, 1])
            q = res * (seg[k, 2] + u * seg[k, 3])
            rx += q * (x0 + jj * stride)
            ry += q
        gx += rx
        gy += ry * dy
        n += m
    return gx, gy


@jit
def locate_one(img, saturation, max_sat, n_bins, bin_px, max_iter, tol, min_score, kbuf, ubuf,
               work, seg):
    """Check, seed and fit one ROI: (x, y, xy_score, status, background, iterations).

    The first Gauss-Newton step uses a checkerboard half of the pixels within
    ``_COARSE_RADIUS`` x the profile radius, the following ones all the pixels within the
    radius (at least one such step). On return ``work[3]`` holds the profile (ADU above
    the background) fitted at the centre before the last step (< ``tol`` away when
    converged).
    """
    h, w = img.shape
    bg, var = border_stats(img)
    bad, n_sat, cx, cy = _seed_pass(img, bg, SEED_NOISE_FACTOR * var, saturation)
    if bad or not math.isfinite(bg):
        return np.nan, np.nan, 0.0, 1, np.nan, 0  # NON_FINITE
    if n_sat > max_sat:
        return np.nan, np.nan, 0.0, 2, bg, 0  # SATURATED
    if not (bg > 0.0) or not (math.isfinite(cx) and math.isfinite(cy)):
        return np.nan, np.nan, 0.0, 3, bg, 0  # BLANK
    radius = (n_bins - 1) * bin_px
    inv_bin = 1.0 / bin_px
    diag = work[0]
    off = work[1]
    rhs = work[2]
    coef = work[3]
    cp = work[4]
    dp = work[5]
    smooth = work[6]
    ws = work[7]
    wr = work[8]
    status = 0
    score = 0.0
    last = np.inf
    it = 0
    nb_coarse = max(int(_COARSE_RADIUS * (n_bins - 1)), 8) + 1
    while it < max_iter:
        it += 1
        coarse = it == 1 and max_iter > 1
        stride = 2 if coarse else 1
        nb = min(nb_coarse, n_bins) if coarse else n_bins
        rad = (nb - 1) * bin_px
        if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5):
            status = 4  # EDGE: the centre left the ROI
            break
        npx, ssv = template_pass(
            img, bg, cx, cy, nb, inv_bin, rad, stride, kbuf, ubuf, diag, off, rhs
        )
        if npx < (2 * nb) // stride:
            status = 4
            break
        quad = solve_profile(nb, diag, off, rhs, PROFILE_PENALTY, coef, cp, dp)
        score = -quad / ssv if ssv > 0.0 else 0.0  # 1 - sum(res^2) / sum(v^2)
        _weights(nb, bin_px, coef, smooth, ws, wr, seg)
        gx, gy = _gradient_pass(img, bg, cx, cy, rad, stride, kbuf, ubuf, seg)
        hh = _curvature(nb, bin_px, coef, diag, off, ws)
        if not (hh > 0.0) or not math.isfinite(gx + gy):
            status = 3  # BLANK: no radial structure to fit
            break
        sx = -gx / hh
        sy = -gy / hh
        last = math.sqrt(sx * sx + sy * sy)
        if last > _MAX_STEP_PX:
            sx *= _MAX_STEP_PX / last
            sy *= _MAX_STEP_PX / last
        cx += sx
        cy += sy
        if last < tol and stride == 1:
            break
    if status == 0:
        if (
            cx - radius < -0.5
            or cx + radius > w - 0.5
            or cy - radius < -0.5
            or cy + radius > h - 0.5
        ):
            status = 4
        elif not (score >= min_score):
            status = 3
        elif not (last < 10.0 * tol):
            status = 5
    if status != 0:
        return np.nan, np.nan, 0.0, status, bg, it
    return cx, cy, score, 0, bg, it


@jit
def buffer_size(n_bins, bin_px):
    """Pixels a disc of the profile radius can cover (scratch buffer length)."""
    return (2 * int(math.ceil((n_bins - 1) * bin_px)) + 3) ** 2


# --------------------------------------------------------------------------- public


class XYResult:
    """Result of :func:`~magscope_tracking.locate_xy`: arrays of length n.

    ``x_px``, ``y_px`` (ROI pixel coordinates, NaN when lost), ``score`` (XY score in
    [0, 1], 0 when lost), ``status`` (:class:`TrackStatus` codes, uint8), ``background``
    (ADU), ``profiles`` ((n, n_bins) relative profiles, or None), ``bins``.
    """

    __slots__ = ("x_px", "y_px", "score", "status", "background", "profiles", "bins")

    def __init__(self, x_px, y_px, score, status, background, profiles, bins):
        self.x_px = x_px
        self.y_px = y_px
        self.score = score
        self.status = status
        self.background = background
        self.profiles = profiles
        self.bins = bins

    @property
    def lost(self) -> np.ndarray:
        """True where the bead is lost (status other than OK)."""
        return self.status != TrackStatus.OK


# --------------------------------------------------------------------------- reference


def _smooth_weights_reference(coef: np.ndarray, bin_px: float):
    s = coef.copy()
    for _ in range(_WEIGHT_SMOOTHING):
        s[1:-1] = 0.25 * s[:-2] + 0.5 * s[1:-1] + 0.25 * s[2:]
    ws = np.empty_like(s)
    ws[0] = 0.0
    ws[1:-1] = (s[2:] - s[:-2]) / (2.0 * bin_px)
    ws[-1] = (s[-1] - s[-2]) / bin_px
    r = np.arange(s.size) * bin_px
    wr = np.empty_like(s)
    wr[1:] = ws[1:] / r[1:]
    wr[0] = wr[1]
    return ws, wr


def locate_one_reference(img, bg: float, var: float, bins: RadialBins, options: TrackOptions):
    """Plain-NumPy twin of the per-ROI fit: (x, y, xy_score, status, profile_adu)."""
    h, w = img.shape
    a = img.astype(np.float64)
    # seed in float32 within rows, as the kernel
    d32 = img.astype(np.float32) - np.float32(bg)
    q = np.maximum(d32 * d32 - np.float32(SEED_NOISE_FACTOR * var), np.float32(0.0))
    row_w = q.sum(axis=1, dtype=np.float32).astype(np.float64)
    row_x = (q * np.arange(w, dtype=np.float32)).sum(axis=1, dtype=np.float32).astype(np.float64)
    sw = row_w.sum()
    if not sw > 0:
        return np.nan, np.nan, 0.0, TrackStatus.BLANK, None
    cx = float(row_x.sum() / sw)
    cy = float((row_w * np.arange(h)).sum() / sw)
    K, b, radius = bins.n_bins, bins.bin_px, bins.radius_px
    status = TrackStatus.OK
    score = 0.0
    last = np.inf
    coef = None
    nb_coarse = max(int(_COARSE_RADIUS * (K - 1)), 8) + 1
    for it in range(1, options.max_iterations + 1):
        coarse = it == 1 and options.max_iterations > 1
        stride = 2 if coarse else 1
        fit_bins = RadialBins(min(nb_coarse, K), b) if coarse else bins
        if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5):
            status = TrackStatus.EDGE
            break
        coef, k, u, rows, cols, (diag, off) = profile_fit_reference(
            a, bg, cx, cy, fit_bins, stride
        )
        if rows.size < (2 * fit_bins.n_bins) // stride:
            status = TrackStatus.EDGE
            break
        ws, wr = _smooth_weights_reference(coef, b)
        v = a[rows, cols] - bg
        res = v - (coef[k] + u * (coef[k + 1] - coef[k]))
        wt = wr[k] + u * (wr[k + 1] - wr[k])
        gx = float(np.sum(res * wt * (cols - cx)))
        gy = float(np.sum(res * wt * (rows - cy)))
        ssv = float(np.sum(v * v))
        score = 1.0 - float(np.sum(res * res)) / ssv if ssv > 0 else 0.0
        nk = diag.copy()
        nk[:-1] += off[:-1]
        nk[1:] += off[:-1]
        tp = np.empty(coef.size)
        tp[1:-1] = (coef[2:] - coef[:-2]) / (2 * b)
        tp[-1] = (coef[-1] - coef[-2]) / b
        hh = 0.5 * float(np.sum(nk[1:] * ws[1:] * tp[1:]))
        if not (hh > 0) or not np.isfinite(gx + gy):
            status = TrackStatus.BLANK
            break
        sx, sy = -gx / hh, -gy / hh
        last = math.hypot(sx, sy)
        if last > _MAX_STEP_PX:
            sx, sy = sx * _MAX_STEP_PX / last, sy * _MAX_STEP_PX / last
        cx += sx
        cy += sy
        if last < options.tolerance_px and stride == 1:
            break
    if status == TrackStatus.OK:
        if cx - radius < -0.5 or cx + radius > w - 0.5 or cy - radius < -0.5 or cy + radius > h - 0.5:
            status = TrackStatus.EDGE
        elif not score >= options.min_xy_score:
            status = TrackStatus.BLANK
        elif not last < 10 * options.tolerance_px:
            status = TrackStatus.NOT_CONVERGED
    if status != TrackStatus.OK:
        return np.nan, np.nan, 0.0, status, None
    return cx, cy, score, status, coef


def locate_xy_reference(stack, *, options: TrackOptions | None = None,
                        bins: RadialBins | None = None, profiles: bool = False) -> XYResult:
    """Plain-NumPy twin of :func:`~magscope_tracking.locate_xy` (slow; for tests and
    benchmarks)."""
    options = options or TrackOptions()
    a = np.asarray(stack)
    if a.ndim == 2:
        a = a[None]
    n, h, w = a.shape
    bins = bins or options.bins_for((h, w))
    sat = options.saturation_for(a.dtype)
    n_bad, n_sat, bg, var = roi_stats_reference(a, sat)
    max_sat = options.max_saturated_for(a.shape)
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    score = np.zeros(n)
    status = np.zeros(n, np.uint8)
    prof = np.full((n, bins.n_bins), np.nan) if profiles else None
    for r in range(n):
        if n_bad[r] > 0:
            status[r] = TrackStatus.NON_FINITE
            bg[r] = np.nan
            continue
        if n_sat[r] > max_sat:
            status[r] = TrackStatus.SATURATED
            continue
        if not bg[r] > 0:
            status[r] = TrackStatus.BLANK
            continue
        x[r], y[r], score[r], status[r], coef = locate_one_reference(
            a[r], bg[r], var[r], bins, options
        )
        if prof is not None and coef is not None:
            prof[r] = coef / bg[r]
    return XYResult(x, y, score, status, bg, prof, bins)
