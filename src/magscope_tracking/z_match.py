"""Z from a radial profile by matching it against a bead's Z-LUT, with sub-plane interpolation.

Method (per ROI; p is the profile relative to the background, LUT planes L_j at z_j):

1. **Metric**: profiles are compared in the pixel-space least-squares sense. A profile
   knot near the centre stands for few pixels, one far out for many: the metric is the
   Gram matrix A of the hat functions over the disc (A_kl = integral of phi_k phi_l
   2 pi r dr, tridiagonal), applied as q = U p with A = U^T U (U upper bidiagonal).
2. **Per-bead normalisation**: the constant component (in that metric) is projected out
   of q and of every plane, and the match is a normalised correlation, so an offset of
   the background estimate and the overall contrast of the bead do not matter.
3. **Coarse**: the plane j* with the highest correlation rho_j = <q, L_j> / (|q| |L_j|).
4. **Sub-plane**: the planes are interpolated along z by a natural cubic spline S(z)
   (for every knot); z maximises <q, S(z)> / (|q| |S(z)|) over [z_j*-1, z_j*+1]. On
   an interval S = a L_j + b L_j+1 + c M_j + d M_j+1 (M the spline's second derivatives),
   so the numerator needs 4 dot products and the denominator a precomputed 4 x 4 Gram
   matrix; on each of the two intervals the maximum is bracketed on a grid of 5 points
   and refined by Newton steps on log(<q, S>^2 / |S|^2) (analytic derivatives).
5. **Score**: that maximal correlation, clipped to [0, 1] (0.99+ for a good match, much
   lower for a profile that is not in the LUT). If the best z is the first or last plane
   of the LUT, the bead is beyond its range: z is NaN (status ``Z_OUT_OF_RANGE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import prange

from ._numba import jit, n_chunks, parallel_jit

__all__ = [
    "PreparedLUT",
    "match_one",
    "match_z",
    "match_z_reference",
    "prepare_lut",
    "profile_metric",
]

_GRID = 4  # grid cells per plane interval before the Newton refinement
_NEWTON_ITERATIONS = 8
_EDGE_T = 1e-6  # an optimum this close (in plane fractions) to the LUT's end is "beyond"


def profile_metric(n_bins: int, bin_px: float):
    """Upper-bidiagonal Cholesky factor U (diagonal, super-diagonal) of the hat-function
    Gram matrix A_kl = int phi_k phi_l 2 pi r dr (px^2), A = U^T U."""
    k = np.arange(n_bins, dtype=np.float64)
    scale = 2.0 * np.pi * bin_px * bin_px
    diag = np.zeros(n_bins)
    diag[:-1] += k[:-1] / 3.0 + 1.0 / 12.0  # as left end of interval k
    diag[1:] += k[:-1] / 3.0 + 1.0 / 4.0  # as right end of interval k
    off = k[:-1] / 6.0 + 1.0 / 12.0
    diag *= scale
    off *= scale
    u_diag = np.empty(n_bins)
    u_off = np.zeros(n_bins)
    u_diag[0] = math.sqrt(diag[0])
    for i in range(1, n_bins):
        u_off[i - 1] = off[i - 1] / u_diag[i - 1]
        u_diag[i] = math.sqrt(diag[i] - u_off[i - 1] ** 2)
    return u_diag, u_off


def _transform(p: np.ndarray, u_diag: np.ndarray, u_off: np.ndarray, e: np.ndarray):
    """q = U p with the unit vector e (the constant profile in the metric) projected out;
    p (..., n_bins)."""
    q = p * u_diag
    q[..., :-1] += p[..., 1:] * u_off[:-1]
    return q - np.sum(q * e, axis=-1, keepdims=True) * e


def _natural_spline_m(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Second derivatives M (n, ...) of the natural cubic spline through (z, y) along
    axis 0 (M_0 = M_n-1 = 0)."""
    n = z.size
    h = np.diff(z)
    m = np.zeros_like(y)
    if n < 3:
        return m
    # tridiagonal system for M_1 .. M_n-2
    a = h[:-1] / 6.0
    b = (h[:-1] + h[1:]) / 3.0
    c = h[1:] / 6.0
    d = (y[2:] - y[1:-1]) / h[1:, None] - (y[1:-1] - y[:-2]) / h[:-1, None]
    n_in = n - 2
    cp = np.zeros(n_in)
    dp = np.zeros_like(d)
    cp[0] = c[0] / b[0]
    dp[0] = d[0] / b[0]
    for i in range(1, n_in):
        den = b[i] - a[i] * cp[i - 1]
        cp[i] = c[i] / den
        dp[i] = (d[i] - a[i] * dp[i - 1]) / den
    m[n_in] = dp[n_in - 1]
    for i in range(n_in - 2, -1, -1):
        m[i + 1] = dp[i] - cp[i] * m[i + 2]
    return m


@dataclass(frozen=True, eq=False)
class PreparedLUT:
    """Matching form of a Z-LUT (see module docstring); built by :func:`prepare_lut`.

    ``planes`` (n_beads, n_planes, n_bins) transformed planes, ``second`` their spline
    second derivatives, ``gram`` (n_beads, n_planes - 1, 4, 4) Gram matrices of
    (L_j, L_j+1, M_j, M_j+1), ``norms`` (n_beads, n_planes), ``z_nm``, ``u_diag``,
    ``u_off``, ``e`` (the metric and the projected-out constant)."""

    z_nm: np.ndarray
    planes: np.ndarray
    second: np.ndarray
    gram: np.ndarray
    norms: np.ndarray
    u_diag: np.ndarray
    u_off: np.ndarray
    e: np.ndarray


def prepare_lut(z_nm: np.ndarray, profiles: np.ndarray, bin_px: float) -> PreparedLUT:
    """Build the matching form of LUT profiles (n_beads, n_planes, n_bins) at ``z_nm``."""
    z = np.array(z_nm, dtype=np.float64)  # fresh, writeable: one kernel signature
    prof = np.asarray(profiles, dtype=np.float64)
    n_beads, n_planes, n_bins = prof.shape
    u_diag, u_off = profile_metric(n_bins, bin_px)
    one = np.ones(n_bins)
    e = one * u_diag
    e[:-1] += u_off[:-1]
    e /= np.linalg.norm(e)
    planes = _transform(prof, u_diag, u_off, e)
    second = np.empty_like(planes)
    for b in range(n_beads):
        second[b] = _natural_spline_m(z, planes[b])
    basis = np.stack([planes[:, :-1], planes[:, 1:], second[:, :-1], second[:, 1:]], axis=2)
    gram = np.einsum("bjuk,bjvk->bjuv", basis, basis)
    norms = np.linalg.norm(planes, axis=-1)
    return PreparedLUT(
        z_nm=z,
        planes=np.ascontiguousarray(planes),
        second=np.ascontiguousarray(second),
        gram=np.ascontiguousarray(gram),
        norms=np.ascontiguousarray(norms),
        u_diag=u_diag,
        u_off=u_off,
        e=e,
    )


# --------------------------------------------------------------------------- numba kernels


@jit
def _interval_terms(t, h, c0, c1, d0, d1, g):
    """N, N', N'', D, D', D'' of S(t) = a(t) . (L_j, L_j+1, M_j, M_j+1) on one interval:
    N = <q, S>, D = |S|^2 (see module docstring)."""
    s = 1.0 - t
    h6 = h * h / 6.0
    a0 = s
    a1 = t
    a2 = (s * s * s - s) * h6
    a3 = (t * t * t - t) * h6
    b0 = -1.0
    b1 = 1.0
    b2 = (1.0 - 3.0 * s * s) * h6
    b3 = (3.0 * t * t - 1.0) * h6
    e2 = s * h * h
    e3 = t * h * h
    num = a0 * c0 + a1 * c1 + a2 * d0 + a3 * d1
    num1 = b0 * c0 + b1 * c1 + b2 * d0 + b3 * d1
    num2 = e2 * d0 + e3 * d1
    ga0 = g[0, 0] * a0 + g[0, 1] * a1 + g[0, 2] * a2 + g[0, 3] * a3
    ga1 = g[1, 0] * a0 + g[1, 1] * a1 + g[1, 2] * a2 + g[1, 3] * a3
    ga2 = g[2, 0] * a0 + g[2, 1] * a1 + g[2, 2] * a2 + g[2, 3] * a3
    ga3 = g[3, 0] * a0 + g[3, 1] * a1 + g[3, 2] * a2 + g[3, 3] * a3
    gb0 = g[0, 0] * b0 + g[0, 1] * b1 + g[0, 2] * b2 + g[0, 3] * b3
    gb1 = g[1, 0] * b0 + g[1, 1] * b1 + g[1, 2] * b2 + g[1, 3] * b3
    gb2 = g[2, 0] * b0 + g[2, 1] * b1 + g[2, 2] * b2 + g[2, 3] * b3
    gb3 = g[3, 0] * b0 + g[3, 1] * b1 + g[3, 2] * b2 + g[3, 3] * b3
    den = a0 * ga0 + a1 * ga1 + a2 * ga2 + a3 * ga3
    den1 = 2.0 * (b0 * ga0 + b1 * ga1 + b2 * ga2 + b3 * ga3)
    den2 = 2.0 * (e2 * ga2 + e3 * ga3 + b0 * gb0 + b1 * gb1 + b2 * gb2 + b3 * gb3)
    return num, num1, num2, den, den1, den2


@jit
def _interval_value(t, h, c0, c1, d0, d1, g):
    """<q, S(t)> / |S(t)| on one interval."""
    num, _, _, den, _, _ = _interval_terms(t, h, c0, c1, d0, d1, g)
    if not (den > 0.0):
        return -np.inf
    return num / math.sqrt(den)


@jit
def _interval_max(h, c0, c1, d0, d1, g):
    """(t, value) maximising <q, S(t)> / |S(t)| over t in [0, 1]: the best of a grid of
    ``_GRID + 1`` points, then Newton steps on log(N^2 / D) within one grid cell of it."""
    tb = 0.0
    fb = -np.inf
    for i in range(_GRID + 1):
        t = i / _GRID
        f = _interval_value(t, h, c0, c1, d0, d1, g)
        if f > fb:
            fb = f
            tb = t
    if not (fb > 0.0):
        return tb, fb
    lo = max(tb - 1.0 / _GRID, 0.0)
    hi = min(tb + 1.0 / _GRID, 1.0)
    t = tb
    for _ in range(_NEWTON_ITERATIONS):
        num, num1, num2, den, den1, den2 = _interval_terms(t, h, c0, c1, d0, d1, g)
        if not (num > 0.0 and den > 0.0):
            break
        d1phi = 2.0 * num1 / num - den1 / den
        d2phi = 2.0 * (num2 / num - (num1 / num) ** 2) - (den2 / den - (den1 / den) ** 2)
        if not (d2phi < 0.0):
            break
        tn = min(max(t - d1phi / d2phi, lo), hi)
        step = abs(tn - t)
        t = tn
        if step < 1e-10:
            break
    f = _interval_value(t, h, c0, c1, d0, d1, g)
    if f > fb:
        return t, f
    return tb, fb


@jit
def match_one(p, u_diag, u_off, e, z, planes, second, gram, norms, q, corr):
    """Match one relative profile p against one bead's prepared LUT.

    Returns (z_nm, score, in_range). ``q`` (n_bins) and ``corr`` (n_planes) are scratch.
    """
    n_bins = p.size
    n_planes = z.size
    for k in range(n_bins - 1):
        q[k] = p[k] * u_diag[k] + p[k + 1] * u_off[k]
    q[n_bins - 1] = p[n_bins - 1] * u_diag[n_bins - 1]
    dot = 0.0
    for k in range(n_bins):
        dot += q[k] * e[k]
    qn2 = 0.0
    for k in range(n_bins):
        q[k] -= dot * e[k]
        qn2 += q[k] * q[k]
    if not (qn2 > 0.0) or not math.isfinite(qn2):
        return np.nan, 0.0, False
    qn = math.sqrt(qn2)
    best = -np.inf
    jb = 0
    for j in range(n_planes):
        c = 0.0
        for k in range(n_bins):
            c += q[k] * planes[j, k]
        corr[j] = c
        r = c / norms[j] if norms[j] > 0.0 else -np.inf
        if r > best:
            best = r
            jb = j
    ja = max(jb - 1, 0)
    je = min(jb + 1, n_planes - 1)
    z_best = z[jb]
    f_best = best
    t_edge = -1.0
    j_edge = -1
    for j in range(ja, je):
        d0 = 0.0
        d1 = 0.0
        for k in range(n_bins):
            d0 += q[k] * second[j, k]
            d1 += q[k] * second[j + 1, k]
        h = z[j + 1] - z[j]
        t, f = _interval_max(h, corr[j], corr[j + 1], d0, d1, gram[j])
        if f > f_best:
            f_best = f
            z_best = z[j] + t * h
            t_edge = t
            j_edge = j
    score = min(max(f_best / qn, 0.0), 1.0)
    if j_edge == -1:  # no interval beat the best plane itself
        in_range = 0 < jb < n_planes - 1
    else:
        in_range = not (
            (j_edge == 0 and t_edge <= _EDGE_T) or (j_edge == n_planes - 2 and t_edge >= 1.0 - _EDGE_T)
        )
    return z_best, score, in_range


@parallel_jit
def _match_stack(prof, index, u_diag, u_off, e, z, planes, second, gram, norms, n_chunks, out):
    """out[:, 0:3] = z_nm, score, in_range (1.0/0.0) for profiles (n, n_bins)."""
    n = prof.shape[0]
    n_bins = prof.shape[1]
    for c in prange(n_chunks):
        q = np.empty(n_bins)
        corr = np.empty(z.size)
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            b = index[r]
            if not math.isfinite(prof[r, 0]):
                out[r, 0] = np.nan
                out[r, 1] = 0.0
                out[r, 2] = 0.0
                continue
            zz, s, ok = match_one(
                prof[r], u_diag, u_off, e, z, planes[b], second[b], gram[b], norms[b], q, corr
            )
            out[r, 0] = zz if ok else np.nan
            out[r, 1] = s
            out[r, 2] = 1.0 if ok else 0.0


def match_z(profiles: np.ndarray, prepared: PreparedLUT, bead_index: np.ndarray):
    """Z (nm), score and in-range flag for relative profiles (n, n_bins) (numba).

    ``bead_index`` (n,) picks each profile's bead in the LUT. NaN profiles give NaN z and
    score 0. Returns (z_nm, score, in_range) arrays.
    """
    prof = np.ascontiguousarray(profiles, dtype=np.float64)
    index = np.ascontiguousarray(bead_index, dtype=np.int64)
    n = prof.shape[0]
    out = np.empty((n, 3))
    if n:
        p = prepared
        _match_stack(
            prof, index, p.u_diag, p.u_off, p.e, p.z_nm, p.planes, p.second, p.gram, p.norms,
            n_chunks(n), out,
        )
    return out[:, 0], out[:, 1], out[:, 2] > 0.5


# --------------------------------------------------------------------------- reference


def _interval_terms_reference(t, h, c, d, g):
    s = 1.0 - t
    h6 = h * h / 6.0
    a = np.array([s, t, (s**3 - s) * h6, (t**3 - t) * h6])
    b = np.array([-1.0, 1.0, (1.0 - 3.0 * s * s) * h6, (3.0 * t * t - 1.0) * h6])
    e = np.array([0.0, 0.0, s * h * h, t * h * h])
    n = np.array([c[0], c[1], d[0], d[1]])
    return a @ n, b @ n, e @ n, a @ g @ a, 2.0 * (b @ g @ a), 2.0 * (e @ g @ a + b @ g @ b)


def _interval_value_reference(t, h, c, d, g):
    num, _, _, den, _, _ = _interval_terms_reference(t, h, c, d, g)
    return num / math.sqrt(den) if den > 0 else -np.inf


def _interval_max_reference(h, c, d, g):
    grid = np.arange(_GRID + 1) / _GRID
    vals = np.array([_interval_value_reference(t, h, c, d, g) for t in grid])
    i = int(np.argmax(vals))
    tb, fb = float(grid[i]), float(vals[i])
    if not fb > 0:
        return tb, fb
    lo, hi = max(tb - 1.0 / _GRID, 0.0), min(tb + 1.0 / _GRID, 1.0)
    t = tb
    for _ in range(_NEWTON_ITERATIONS):
        num, num1, num2, den, den1, den2 = _interval_terms_reference(t, h, c, d, g)
        if not (num > 0 and den > 0):
            break
        d1phi = 2.0 * num1 / num - den1 / den
        d2phi = 2.0 * (num2 / num - (num1 / num) ** 2) - (den2 / den - (den1 / den) ** 2)
        if not d2phi < 0:
            break
        tn = min(max(t - d1phi / d2phi, lo), hi)
        step, t = abs(tn - t), tn
        if step < 1e-10:
            break
    f = _interval_value_reference(t, h, c, d, g)
    return (t, f) if f > fb else (tb, fb)


def match_z_reference(profiles: np.ndarray, prepared: PreparedLUT, bead_index: np.ndarray):
    """Plain-NumPy twin of :func:`match_z`."""
    p = prepared
    prof = np.asarray(profiles, dtype=np.float64)
    n = prof.shape[0]
    z_out = np.full(n, np.nan)
    s_out = np.zeros(n)
    ok_out = np.zeros(n, bool)
    z = p.z_nm
    n_planes = z.size
    for r in range(n):
        if not np.isfinite(prof[r, 0]):
            continue
        b = int(bead_index[r])
        q = _transform(prof[r][None], p.u_diag, p.u_off, p.e)[0]
        qn = float(np.linalg.norm(q))
        if not (qn > 0 and np.isfinite(qn)):
            continue
        corr = p.planes[b] @ q
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(p.norms[b] > 0, corr / p.norms[b], -np.inf)
        jb = int(np.argmax(rho))
        z_best, f_best = z[jb], rho[jb]
        j_edge, t_edge = -1, -1.0
        for j in range(max(jb - 1, 0), min(jb + 1, n_planes - 1)):
            d = (p.second[b, j] @ q, p.second[b, j + 1] @ q)
            h = z[j + 1] - z[j]
            t, f = _interval_max_reference(h, (corr[j], corr[j + 1]), d, p.gram[b, j])
            if f > f_best:
                f_best, z_best, t_edge, j_edge = f, z[j] + t * h, t, j
        s_out[r] = min(max(f_best / qn, 0.0), 1.0)
        if j_edge == -1:
            ok = 0 < jb < n_planes - 1
        else:
            ok = not (
                (j_edge == 0 and t_edge <= _EDGE_T)
                or (j_edge == n_planes - 2 and t_edge >= 1.0 - _EDGE_T)
            )
        ok_out[r] = ok
        z_out[r] = z_best if ok else np.nan
    return z_out, s_out, ok_out
