"""Per-ROI background level, noise and pixel validity (non-finite and saturated pixels).

The background is the mean of the ROI's border pixels (the outermost row and column on
each side, 2 (h + w) - 4 pixels); the noise variance is their variance. Both are in the
stack's units (ADU). A bead ROI must be large enough that the bead's pattern does not
reach the border; with the default profile radius (0.28 x the ROI side) the pattern of
a centred bead ends well inside it.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit

__all__ = ["border_stats", "roi_stats", "roi_stats_reference"]


@jit
def border_stats(img):
    """(mean, variance) of the border pixels of one ROI (h, w)."""
    h, w = img.shape
    s = 0.0
    s2 = 0.0
    for j in range(w):
        a = np.float64(img[0, j])
        b = np.float64(img[h - 1, j])
        s += a + b
        s2 += a * a + b * b
    for i in range(1, h - 1):
        a = np.float64(img[i, 0])
        b = np.float64(img[i, w - 1])
        s += a + b
        s2 += a * a + b * b
    n = 2 * (h + w) - 4
    mean = s / n
    var = max(s2 / n - mean * mean, 0.0)
    return mean, var


@jit
def _roi_stats_one(img, saturation):
    """(n_non_finite, n_saturated, background, noise_variance) of one ROI (h, w)."""
    h, w = img.shape
    n_bad = 0
    n_sat = 0
    for i in range(h):
        nb = 0
        ns = 0
        for j in range(w):
            v = np.float64(img[i, j])
            nb += (v - v) != 0.0
            ns += v >= saturation
        n_bad += nb
        n_sat += ns
    mean, var = border_stats(img)
    return n_bad, n_sat, mean, var


def roi_stats(stack: np.ndarray, saturation: float = np.inf):
    """Validity and background of each ROI of ``stack`` (n, h, w).

    Returns (n_non_finite, n_saturated, background, noise_var): int64, int64, float64
    (ADU), float64 (ADU^2) arrays of length n. ``saturation`` (ADU): pixels at or above it
    count as saturated.
    """
    stack = np.ascontiguousarray(stack)
    n = stack.shape[0]
    out_i = np.zeros((n, 2), dtype=np.int64)
    out_f = np.zeros((n, 2))
    for k in range(n):
        nb, ns, m, v = _roi_stats_one(stack[k], float(saturation))
        out_i[k] = nb, ns
        out_f[k] = m, v
    return out_i[:, 0], out_i[:, 1], out_f[:, 0], out_f[:, 1]


def roi_stats_reference(stack: np.ndarray, saturation: float = np.inf):
    """Plain-NumPy twin of :func:`roi_stats`."""
    a = np.asarray(stack, dtype=np.float64)
    n_bad = np.sum(~np.isfinite(a), axis=(1, 2))
    n_sat = np.sum(a >= saturation, axis=(1, 2))
    border = np.concatenate([a[:, 0, :], a[:, -1, :], a[:, 1:-1, 0], a[:, 1:-1, -1]], axis=1)
    mean = border.mean(axis=1)
    var = np.maximum((border * border).mean(axis=1) - mean * mean, 0.0)
    return n_bad.astype(np.int64), n_sat.astype(np.int64), mean, var
