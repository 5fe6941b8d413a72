"""Shared pieces of the PSD and Allan-variance force fits (internal).

Both fits estimate the corner frequency fc (Hz) and the scale sigma^2 = kT / k (nm^2) of
an OU model ``S = sigma^2 g(fc)`` from observations O_i that are, to a good
approximation, Gamma distributed around the model with nu_i degrees of freedom:
O_i ~ S_i Gamma(nu_i / 2, 2 / nu_i). The negative log-likelihood is

    NLL = sum_i (nu_i / 2) (O_i / S_i + ln S_i).

For fixed fc the scale has the closed-form maximum sigma^2 = sum nu_i O_i / g_i /
sum nu_i, so the fit is a one-dimensional search over ln fc (a grid, then Brent). With a
fixed drag, sigma^2 = D / (2 pi fc) follows fc and the search is over the full NLL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from .ou_model import ForceResult, expected_periodogram, failed_result

#: A fit whose corner frequency has a relative standard error above this is a failure
#: (e.g. fc far above the frame rate: the recorded spectrum is flat).
MAX_REL_ERR_CORNER = 1.0
#: Likewise for the force (stiffness).
MAX_REL_ERR_FORCE = 0.5


def profile_fit(
    obs: np.ndarray,
    nu: np.ndarray,
    shape: Callable[[Any], np.ndarray],
    fc_lo: float,
    fc_hi: float,
    diffusion_nm2_s: float | None = None,
    n_grid: int = 40,
) -> tuple[float, float, np.ndarray] | None:
    """Maximum-likelihood (fc, sigma^2) and the covariance of (ln fc, ln sigma^2).

    ``shape(fc)`` returns g_i (the model for sigma^2 = 1). With ``diffusion_nm2_s`` the
    scale is tied to fc (sigma^2 = D / (2 pi fc)) and the covariance is 1 x 1 for ln fc.
    Returns None when the optimum sits on the edge of [fc_lo, fc_hi] (fc not identifiable
    from these data) or the information matrix is singular.
    """
    wsum = float(np.sum(nu))

    def nll_many(fcs: np.ndarray) -> np.ndarray:
        g = np.atleast_2d(shape(fcs[:, None]))  # (k, n_obs)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if diffusion_nm2_s is None:
                s2 = np.sum(nu * obs / g, axis=1) / wsum
                out = 0.5 * (np.sum(nu * np.log(g), axis=1) + wsum * np.log(s2))
            else:
                sm = diffusion_nm2_s / (2.0 * np.pi * fcs[:, None]) * g
                out = 0.5 * np.sum(nu * (obs / sm + np.log(sm)), axis=1)
        bad = ~np.all(np.isfinite(g) & (g > 0.0), axis=1) | ~np.isfinite(out)
        return np.where(bad, np.inf, out)

    def nll(u: float) -> float:
        return float(nll_many(np.array([np.exp(u)]))[0])

    lo, hi = np.log(fc_lo), np.log(fc_hi)
    grid = np.linspace(lo, hi, n_grid)
    values = nll_many(np.exp(grid))
    if not np.any(np.isfinite(values)):
        return None
    i = int(np.nanargmin(values))
    if i == 0 or i == n_grid - 1:
        return None
    res = minimize_scalar(
        nll, bounds=(grid[i - 1], grid[i + 1]), method="bounded", options={"xatol": 1e-7}
    )
    u = float(res.x)
    fc = float(np.exp(u))
    g = shape(fc)
    if diffusion_nm2_s is None:
        s2 = float(np.sum(nu * obs / g)) / wsum
    else:
        s2 = diffusion_nm2_s / (2.0 * np.pi * fc)
    cov = inverse_fisher(shape, fc, nu, fixed_drag=diffusion_nm2_s is not None)
    if cov is None:
        return None
    return fc, s2, cov


def inverse_fisher(
    shape: Callable[[Any], np.ndarray], fc: float, nu: np.ndarray, fixed_drag: bool = False
) -> np.ndarray | None:
    """Inverse Fisher information of (ln fc, ln sigma^2), or of ln fc with a fixed drag.

    I = sum_i (nu_i / 2) grad ln S_i grad ln S_i^T for Gamma observations with nu_i degrees
    of freedom; d ln S / d ln sigma^2 = 1, d ln S / d ln fc by central differences; with a
    fixed drag sigma^2 = D / (2 pi fc) and d ln S / d ln fc = d ln g / d ln fc - 1.
    None when singular.
    """
    h = 1e-4
    with np.errstate(divide="ignore", invalid="ignore"):
        dlng = (np.log(shape(fc * np.exp(h))) - np.log(shape(fc * np.exp(-h)))) / (2.0 * h)
    if fixed_drag:
        grads = (dlng - 1.0)[None, :]
    else:
        grads = np.stack([dlng, np.ones_like(dlng)])
    info = (grads * (0.5 * nu)) @ grads.T
    if not np.all(np.isfinite(info)):
        return None
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) <= 0.0):
        return None
    return cov


def block_starts(k_first: int, n: int, rel_width: float) -> np.ndarray:
    """Start indices of frequency blocks over n consecutive Fourier bins k_first .. k_first+n-1.

    A block starting at bin k spans max(1, int(rel_width k)) bins: single bins at low
    frequency, a constant relative width (about ``rel_width``) higher up.
    """
    starts = [0]
    while starts[-1] < n:
        i = starts[-1]
        starts.append(i + max(1, int(rel_width * (k_first + i))))
    return np.asarray(starts[:-1], dtype=np.int64)


def spectral_inverse_fisher(
    fc: float,
    *,
    fs_hz: float,
    exposure_s: float,
    n_samples: int,
    fixed_drag: bool = False,
    rel_width: float = 0.02,
) -> np.ndarray | None:
    """Cramer-Rao covariance of (ln fc, ln sigma^2) from N frames of the recorded bead.

    The periodogram ordinates at 0 < k < N / 2 are asymptotically independent exponentials
    around the exact blurred, aliased spectrum (:func:`.ou_model.expected_periodogram`):
    I = sum_k grad ln S_k grad ln S_k^T, evaluated on blocks of bins (exact to O(block
    width^2)). Any unbiased estimator from these N frames has at least this covariance.
    """
    n = int(n_samples)
    k_max = (n - 1) // 2
    if k_max < 4:
        return None
    idx = block_starts(1, k_max, rel_width)
    counts = np.diff(np.append(idx, k_max)).astype(float)
    k_mean = (idx + 1) + (counts - 1.0) / 2.0
    f = k_mean * fs_hz / n

    def shape(fc_) -> np.ndarray:
        return expected_periodogram(f, fc_, fs_hz=fs_hz, exposure_s=exposure_s, n_samples=n)

    return inverse_fisher(shape, fc, 2.0 * counts, fixed_drag=fixed_drag)


def build_result(
    fc: float,
    s2: float,
    cov: np.ndarray,
    *,
    kt: float,
    lever_nm: float,
    fixed_drag: float | None,
    method: str,
    n_samples: int,
    error_scale: float = 1.0,
) -> ForceResult:
    """ForceResult from fc, sigma^2 and the covariance of (ln fc[, ln sigma^2]).

    k = kT / sigma^2 (free drag) or 2 pi fc gamma (fixed drag); gamma = k / (2 pi fc);
    F = k * lever with lever = l + R. Relative errors add in quadrature with the
    correlation of the fit (ln k = ln kT - ln sigma^2, ln gamma = ln k - ln fc - ln 2 pi).
    A NaN result when the relative error of fc exceeds :data:`MAX_REL_ERR_CORNER` or that of
    k exceeds :data:`MAX_REL_ERR_FORCE` (the data do not determine them).
    """
    cov = np.asarray(cov, dtype=float) * error_scale**2
    if fixed_drag is None:
        k = kt / s2
        gamma = k / (2.0 * np.pi * fc)
        var_lnfc = cov[0, 0]
        var_lnk = cov[1, 1]
        var_lngamma = cov[0, 0] + cov[1, 1] + 2.0 * cov[0, 1]
    else:
        gamma = fixed_drag
        k = 2.0 * np.pi * fc * gamma
        var_lnfc = var_lnk = cov[0, 0]
        var_lngamma = 0.0
    rel_k = float(np.sqrt(max(var_lnk, 0.0)))
    rel_fc = float(np.sqrt(max(var_lnfc, 0.0)))
    if rel_fc > MAX_REL_ERR_CORNER or rel_k > MAX_REL_ERR_FORCE:
        return failed_result(method, n_samples)  # not identified by these data
    force = k * lever_nm
    return ForceResult(
        force_pn=float(force),
        stiffness_pn_per_nm=float(k),
        corner_hz=float(fc),
        drag_pn_s_per_nm=float(gamma),
        force_pn_err=float(force * rel_k),
        stiffness_pn_per_nm_err=float(k * rel_k),
        corner_hz_err=float(fc * np.sqrt(max(var_lnfc, 0.0))),
        drag_pn_s_per_nm_err=float(gamma * np.sqrt(max(var_lngamma, 0.0))),
        method=method,
        n_samples=int(n_samples),
    )


def prepare_trace(x_nm, fs_hz: float, exposure_s: float, min_samples: int):
    """Validate inputs; return (trace without NaN edges, gaps interpolated) or None.

    Leading and trailing NaN are dropped; interior NaN (lost frames) are filled by linear
    interpolation when they are at most 1 % of the frames, else None (the caller returns a
    NaN result). Raises ValueError on a bad shape, rate or exposure.
    """
    x = np.asarray(x_nm, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"x_nm must be one trace (1-D), got shape {x.shape}")
    if not (np.isfinite(fs_hz) and fs_hz > 0.0):
        raise ValueError(f"fs_hz must be positive, got {fs_hz}")
    if not (np.isfinite(exposure_s) and 0.0 <= exposure_s <= 1.0 / fs_hz * (1.0 + 1e-9)):
        raise ValueError(
            f"exposure_s must be within [0, 1/fs] = [0, {1.0 / fs_hz:.6g}] s, got {exposure_s}"
        )
    good = np.isfinite(x)
    if not np.any(good):
        return None
    idx = np.flatnonzero(good)
    x = x[idx[0] : idx[-1] + 1]
    good = good[idx[0] : idx[-1] + 1]
    n_bad = int(x.size - np.count_nonzero(good))
    if n_bad:
        if n_bad > 0.01 * x.size:
            return None
        pos = np.arange(x.size)
        x = x.copy()
        x[~good] = np.interp(pos[~good], pos[good], x[good])
    if x.size < min_samples:
        return None
    return x


def check_lengths(length_nm: float, radius_nm: float) -> float:
    """Lever arm l + R (nm) of the pendulum; ValueError if not positive and finite."""
    lever = float(length_nm) + float(radius_nm)
    if not (np.isfinite(lever) and lever > 0.0 and float(radius_nm) > 0.0):
        raise ValueError(f"need length_nm >= 0 and radius_nm > 0, got {length_nm}, {radius_nm}")
    return lever


def failed(method: str, n: int) -> ForceResult:
    return failed_result(method, n)
