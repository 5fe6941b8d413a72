"""Interpolated radial profile of a bead image about a sub-pixel centre.

The profile is a continuous, piecewise-linear function of the radius r (px) with knots
r_k = k * bin_px, k = 0 .. n_bins - 1, fitted by least squares to *every* pixel within
R = (n_bins - 1) * bin_px of the centre, each pixel at its exact distance (nothing is
rounded to a bin): with hat functions phi_k(r) = max(0, 1 - |r - r_k| / bin_px) the
coefficients c minimise

    sum_p (I_p - bg - sum_k c_k phi_k(r_p))^2 + lambda * sum_k (c_{k+1} - c_k)^2

(lambda = ``PROFILE_PENALTY`` = 0.1, in units of pixel weight: it only matters near the
centre, where a knot may have no pixel close to it). The normal equations are
tridiagonal and are solved directly. c_k is then the profile value at r_k in ADU above
the background; :func:`radial_profile` returns c_k / bg (the relative modulation, the
same for any illumination level).

Why least squares rather than a weighted average per bin: a bin average depends on how
the pixel distances fall inside each bin, which changes with the sub-pixel position of
the bead; the least-squares fit is nearly free of that, which is what keeps the XY fit
built on it (:mod:`magscope_tracking.xy`) free of pixel-locking bias.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._numba import jit, n_chunks, parallel_jit
from ._stack import as_stack
from .background import roi_stats_reference
from .options import RadialBins

__all__ = [
    "PROFILE_PENALTY",
    "profile_fit_reference",
    "radial_profile",
    "radial_profile_reference",
    "solve_profile",
    "template_pass",
]

PROFILE_PENALTY = 0.1
"""First-difference penalty lambda of the profile fit (pixel-weight units)."""


# --------------------------------------------------------------------------- numba kernels


@jit
def template_pass(img, bg, cx, cy, n_bins, inv_bin, radius, stride, kbuf, ubuf, diag, off, rhs):
    """Accumulate the normal equations of the profile fit about (cx, cy).

    Visits the pixels within ``radius`` of the centre row by row (``stride`` 2: only the
    pixels with i + j even, a checkerboard), in the same order as ``_gradient_pass`` in
    xy.py; stores each pixel's knot index k (int32) and fraction u in ``kbuf``/``ubuf``.
    Returns (number of pixels, sum of (I - bg)^2 over them).
    """
    h, w = img.shape
    for k in range(n_bins):
        diag[k] = 0.0
        off[k] = 0.0
        rhs[k] = 0.0
    r2max = radius * radius
    i0 = max(int(math.ceil(cy - radius)), 0)
    i1 = min(int(math.floor(cy + radius)), h - 1)
    kmax = n_bins - 2
    n = 0
    ssv = 0.0
    for i in range(i0, i1 + 1):
        dy = i - cy
        dy2 = dy * dy
        rem = r2max - dy2
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
        for jj in range(m):  # vectorised: distances, knots and fractions
            dx = (j0 + jj * stride) - cx
            t = math.sqrt(dx * dx + dy2) * inv_bin
            k = min(int(t), kmax)
            kbuf[n + jj] = k
            ubuf[n + jj] = t - k
        for jj in range(m):  # scatter into the tridiagonal normal equations
            k = kbuf[n + jj]
            u = ubuf[n + jj]
            a = 1.0 - u
            v = img[i, j0 + jj * stride] - bg
            diag[k] += a * a
            diag[k + 1] += u * u
            off[k] += a * u
            rhs[k] += a * v
            rhs[k + 1] += u * v
            ssv += v * v
        n += m
    return n, ssv


@jit
def solve_profile(n_bins, diag, off, rhs, penalty, coef, cp, dp):
    """Solve (A + penalty * L) coef = rhs, A = tridiag(off, diag, off), L the first-
    difference Laplacian (Thomas algorithm). Returns the residual sum of squares of the
    fit, sum_p (I_p - bg - T(r_p))^2 minus sum_p (I_p - bg)^2, i.e.
    -2 coef . rhs + coef^T A coef."""
    lam = penalty
    m = diag[0] + lam
    cp[0] = (off[0] - lam) / m
    dp[0] = rhs[0] / m
    last = n_bins - 1
    for k in range(1, n_bins):
        lk = lam if k == last else 2.0 * lam
        o = off[k - 1] - lam
        m = diag[k] + lk - o * cp[k - 1]
        cp[k] = (off[k] - lam) / m
        dp[k] = (rhs[k] - o * dp[k - 1]) / m
    coef[last] = dp[last]
    for k in range(last - 1, -1, -1):
        coef[k] = dp[k] - cp[k] * coef[k + 1]
    quad = diag[last] * coef[last] * coef[last] - 2.0 * coef[last] * rhs[last]
    for k in range(last):
        quad += coef[k] * (diag[k] * coef[k] + 2.0 * off[k] * coef[k + 1] - 2.0 * rhs[k])
    return quad


@parallel_jit
def _profiles_stack(stack, bg, xs, ys, n_bins, bin_px, penalty, n_chunks, out, npix):
    n = stack.shape[0]
    radius = (n_bins - 1) * bin_px
    inv_bin = 1.0 / bin_px
    size = (2 * int(math.ceil(radius)) + 3) ** 2
    for c in prange(n_chunks):
        kbuf = np.empty(size, np.int32)
        ubuf = np.empty(size)
        work = np.empty((5, n_bins))
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            if not (math.isfinite(xs[r]) and math.isfinite(ys[r]) and bg[r] > 0.0):
                for k in range(n_bins):
                    out[r, k] = np.nan
                npix[r] = 0
                continue
            npix[r], _ = template_pass(
                stack[r], bg[r], xs[r], ys[r], n_bins, inv_bin, radius, 1, kbuf, ubuf,
                work[0], work[1], work[2],
            )
            solve_profile(n_bins, work[0], work[1], work[2], penalty, out[r], work[3], work[4])
            inv = 1.0 / bg[r]
            for k in range(n_bins):
                out[r, k] *= inv


# --------------------------------------------------------------------------- public


def radial_profile(stack, x_px, y_px, bins: RadialBins, background=None) -> np.ndarray:
    """Radial profiles of ``stack`` (n, h, w) about centres (x_px, y_px) (px, ROI coords).

    Returns float64 (n, bins.n_bins): the profile at r_k = k * bins.bin_px divided by the
    background (``background``, ADU per ROI; default: the ROI border mean), i.e. relative
    modulation (0 = background level). NaN rows for non-finite centres.
    """
    a = as_stack(stack)
    n = a.shape[0]
    xs = np.ascontiguousarray(np.broadcast_to(np.asarray(x_px, np.float64), (n,)))
    ys = np.ascontiguousarray(np.broadcast_to(np.asarray(y_px, np.float64), (n,)))
    if background is None:
        background = roi_stats_reference(a)[2]
    bg = np.ascontiguousarray(np.broadcast_to(np.asarray(background, np.float64), (n,)))
    out = np.empty((n, bins.n_bins))
    npix = np.empty(n, np.int64)
    if n:
        _profiles_stack(
            a, bg, xs, ys, bins.n_bins, float(bins.bin_px), PROFILE_PENALTY, n_chunks(n), out, npix
        )
    return out


# --------------------------------------------------------------------------- reference


def disc_pixels_reference(shape, cx: float, cy: float, radius: float, stride: int = 1):
    """(rows, cols) of the pixels within ``radius`` of (cx, cy), in kernel order
    (``stride`` 2: the checkerboard half with i + j even)."""
    h, w = shape
    i0 = max(math.ceil(cy - radius), 0)
    i1 = min(math.floor(cy + radius), h - 1)
    rows = []
    cols = []
    for i in range(i0, i1 + 1):
        rem = radius * radius - (i - cy) ** 2
        if rem <= 0.0:
            continue
        half = math.sqrt(rem)
        j0 = max(math.ceil(cx - half), 0)
        j1 = min(math.floor(cx + half), w - 1)
        if stride == 2:
            j0 += (i + j0) & 1
        if j1 >= j0:
            c = np.arange(j0, j1 + 1, stride)
            cols.append(c)
            rows.append(np.full(c.size, i))
    if not rows:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return np.concatenate(rows), np.concatenate(cols)


def profile_fit_reference(img, bg: float, cx: float, cy: float, bins: RadialBins, stride: int = 1):
    """Plain-NumPy profile fit about (cx, cy): returns (coef, k, u, rows, cols, normal)
    with coef the profile in ADU above ``bg`` and ``normal`` = (diag, off) of the
    unpenalised normal matrix."""
    K = bins.n_bins
    rows, cols = disc_pixels_reference(img.shape, cx, cy, bins.radius_px, stride)
    dx = cols - cx
    dy = rows - cy
    t = np.sqrt(dx * dx + dy * dy) / bins.bin_px
    k = np.minimum(t.astype(np.int64), K - 2)
    u = t - k
    a = 1.0 - u
    v = img[rows, cols].astype(np.float64) - bg
    diag = np.bincount(k, a * a, K) + np.bincount(k + 1, u * u, K)
    off = np.bincount(k, a * u, K)
    rhs = np.bincount(k, a * v, K) + np.bincount(k + 1, u * v, K)
    lam = PROFILE_PENALTY
    pen = np.full(K, 2.0 * lam)
    pen[0] = pen[-1] = lam
    mat = np.diag(diag + pen) + np.diag(off[:-1] - lam, 1) + np.diag(off[:-1] - lam, -1)
    coef = np.linalg.solve(mat, rhs)
    return coef, k, u, rows, cols, (diag, off)


def radial_profile_reference(stack, x_px, y_px, bins: RadialBins, background=None):
    """Plain-NumPy twin of :func:`radial_profile`."""
    a = np.asarray(stack, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    n = a.shape[0]
    xs = np.broadcast_to(np.asarray(x_px, np.float64), (n,))
    ys = np.broadcast_to(np.asarray(y_px, np.float64), (n,))
    if background is None:
        background = roi_stats_reference(a)[2]
    bg = np.broadcast_to(np.asarray(background, np.float64), (n,))
    out = np.full((n, bins.n_bins), np.nan)
    for r in range(n):
        if np.isfinite(xs[r]) and np.isfinite(ys[r]) and bg[r] > 0:
            out[r] = profile_fit_reference(a[r], bg[r], xs[r], ys[r], bins)[0] / bg[r]
    return out
