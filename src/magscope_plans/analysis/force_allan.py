"""Force from the Allan variance of a bead's lateral fluctuations (Lansdorp & Saleh 2012).

Model (units: nm, s, Hz, pN). As for the PSD (:mod:`.force_psd`), the bead is an OU
process with stiffness k = F / (l + R), drag gamma, corner frequency fc = k / (2 pi gamma)
and variance sigma^2 = kT / k, recorded as exposure averages over W at the frame rate fs.
The overlapping Allan variance at tau = m / fs,

    AV(tau) = 1/2 < (xbar_(n+m) - xbar_n)^2 >,  xbar_n = mean of frames n .. n+m-1,

is estimated from the cumulative sum of the trace for m = 1, 2^(1/q), 2^(2/q), ... (q =
``taus_per_octave``, rounded to whole frames, up to N / 5) and fitted with the exact
Allan variance of the sampled, exposure-averaged OU process (:func:`.ou_model.allan_model`:
sigma^2 times a function of fc, W and fs). The fit is maximum likelihood treating each
estimate as Gamma distributed with the equivalent degrees of freedom of the overlapping
estimator (NIST SP 1065: for white frequency noise, tau >> 1 / (2 pi fc), nu = (3(N-1)/(2m)
- 2(N-2)/N) 4m^2 / (4m^2 + 5); for random-walk frequency noise, tau << 1 / (2 pi fc),
nu = (N-2)/m ((N-1)^2 - 3m(N-1) + 4m^2) / (N-3)^2; blended with the weight
(tau 2 pi fc)^2 / (1 + (tau 2 pi fc)^2)). Then

    k = kT / sigma^2,  gamma = k / (2 pi fc),  F = k (l + R).

The estimates at neighbouring tau are strongly correlated, so the Fisher information of
this composite likelihood overstates the precision: the reported errors are the larger of
that (times q) and the Cramer-Rao bound of the N frames (the PSD information), which the
fit comes close to (tests and benchmark: the spread of the Allan and of the PSD force
estimates differ by a few per cent). Slow drift shows as a rise at the largest tau only.
"""

from __future__ import annotations

import numpy as np

from ._fitting import (
    build_result,
    check_lengths,
    failed,
    prepare_trace,
    profile_fit,
    spectral_inverse_fisher,
)
from .ou_model import (
    ForceResult,
    allan_model,
    lateral_drag_pn_s_per_nm,
    thermal_energy_pn_nm,
)

__all__ = ["allan_force", "allan_variance", "allan_taus"]


def allan_taus(n_samples: int, taus_per_octave: int = 2, max_fraction: float = 0.2) -> np.ndarray:
    """Block lengths m (frames) for the Allan variance: ~q per octave, 1 .. max_fraction N."""
    m_max = max(int(max_fraction * n_samples), 1)
    n_oct = np.log2(m_max)
    m = np.round(2.0 ** (np.arange(0.0, n_oct * taus_per_octave + 1.0) / taus_per_octave))
    return np.unique(m[m <= m_max].astype(np.int64))


def allan_variance(x_nm, m_frames, *, stride_fraction: float = 1.0 / 16.0) -> np.ndarray:
    """Overlapping Allan variance (nm^2) of a trace at block lengths m (frames).

    AV(m) = mean over starts n of (S_(n+2m) - 2 S_(n+m) + S_n)^2 / (2 m^2), with S the
    cumulative sum of the (mean-subtracted) trace: half the mean squared difference of the
    averages of adjacent blocks of m frames. The starts n step by max(1, m *
    ``stride_fraction``) frames: successive starts that close give nearly identical
    differences, so this loses no information to speak of and keeps the cost ~N per
    octave (``stride_fraction=0`` uses every start). NaN where 2m > N.
    """
    x = np.asarray(x_nm, dtype=float)
    cs = np.concatenate(([0.0], np.cumsum(x - x.mean())))
    n = x.size
    ms = np.asarray(m_frames, dtype=np.int64)
    out = np.full(ms.size, np.nan)
    sums = np.zeros(ms.size)
    counts = np.zeros(ms.size, dtype=np.int64)
    steps = np.maximum(1, (ms * stride_fraction).astype(np.int64))
    valid = (ms >= 1) & (2 * ms <= n)
    dense = np.flatnonzero(valid & (steps == 1))
    # every start: in chunks that stay in the cache, all block lengths per chunk (sums of
    # squares with numpy's pairwise sum, not BLAS dot: no thread start-up per chunk)
    chunk = 1 << 15
    buf = np.empty(chunk)
    for c0 in range(0, n, chunk):
        for i in dense:
            m = int(ms[i])
            k = min(chunk, n - 2 * m + 1 - c0)  # starts c0 .. c0 + k - 1
            if k <= 0:
                continue
            d = buf[:k]
            np.subtract(cs[c0 + 2 * m : c0 + 2 * m + k], cs[c0 + m : c0 + m + k], out=d)
            d -= cs[c0 + m : c0 + m + k]
            d += cs[c0 : c0 + k]
            sums[i] += float(np.square(d, out=d).sum())
            counts[i] += k
    # long blocks: every step-th start (strided views)
    big = np.empty(n)
    for i in np.flatnonzero(valid & (steps > 1)):
        m, step = int(ms[i]), int(steps[i])
        k = (n - 2 * m) // step + 1
        d = big[:k]
        np.subtract(cs[2 * m :: step][:k], cs[m::step][:k], out=d)
        d -= cs[m::step][:k]
        d += cs[::step][:k]
        sums[i] = float(np.square(d, out=d).sum())
        counts[i] = k
    ok = counts > 0
    out[ok] = sums[ok] / (2.0 * ms[ok].astype(float) ** 2 * counts[ok])
    return out


def _dof(m: np.ndarray, n: int, fc: float | None, fs_hz: float) -> np.ndarray:
    """Equivalent degrees of freedom of the overlapping Allan variance (module docstring)."""
    m = m.astype(float)
    w: float | np.ndarray
    wfm = (3.0 * (n - 1) / (2.0 * m) - 2.0 * (n - 2) / n) * 4.0 * m * m / (4.0 * m * m + 5.0)
    rwfm = (n - 2) / m * ((n - 1) ** 2 - 3.0 * m * (n - 1) + 4.0 * m * m) / (n - 3) ** 2
    if fc is None:
        w = 0.5
    else:
        u = (2.0 * np.pi * fc * m / fs_hz) ** 2
        w = u / (1.0 + u)
    return np.maximum(w * wfm + (1.0 - w) * rwfm, 1.0)


def allan_force(
    x_nm,
    *,
    fs_hz: float,
    exposure_s: float,
    length_nm: float,
    radius_nm: float,
    temperature_k: float = 296.15,
    viscosity_pa_s: float | None = None,
    taus_per_octave: int = 2,
) -> ForceResult:
    """Force (pN) on a tethered bead from the Allan variance of its lateral position.

    Parameters as :func:`psd_force`: ``x_nm`` one trace (nm) perpendicular to the field,
    ``fs_hz`` frame rate (Hz), ``exposure_s`` exposure (s, <= 1 / fs), ``length_nm`` tether
    extension l (nm), ``radius_nm`` bead radius R (nm), ``temperature_k`` (K),
    ``viscosity_pa_s`` None (drag fitted) or the viscosity (Pa s) that fixes the
    Faxen-corrected drag; ``taus_per_octave`` density of the tau grid.

    Returns a :class:`ForceResult`; NaN everywhere for fewer than 64 frames, more than 1 %
    lost frames or a corner frequency that cannot be identified (relative standard error of
    fc above 100 % or of the force above 50 %).
    """
    lever = check_lengths(length_nm, radius_nm)
    fixed = viscosity_pa_s is not None
    method = f"allan (blurred+sampled OU, {'fixed' if fixed else 'free'} drag)"
    x = prepare_trace(x_nm, fs_hz, exposure_s, min_samples=64)
    if x is None:
        n = int(np.count_nonzero(np.isfinite(np.asarray(x_nm, dtype=float))))
        return failed(method, n)
    n = x.size
    q = max(int(taus_per_octave), 1)
    m = allan_taus(n, q)
    av = allan_variance(x, m)
    ok = np.isfinite(av) & (av > 0.0)
    m, av = m[ok], av[ok]
    if m.size < 4:
        return failed(method, n)
    kt = thermal_energy_pn_nm(temperature_k)
    drag = None
    diffusion = None
    if fixed:
        drag = float(lateral_drag_pn_s_per_nm(radius_nm, lever, viscosity_pa_s))
        diffusion = kt / drag

    def shape(fc) -> np.ndarray:
        return allan_model(m, fc, fs_hz=fs_hz, exposure_s=exposure_s)

    fc_lo = fs_hz / (100.0 * n)
    fc_hi = 100.0 * fs_hz
    first = profile_fit(av, _dof(m, n, None, fs_hz), shape, fc_lo, fc_hi, diffusion_nm2_s=diffusion)
    if first is None:
        return failed(method, n)
    # the degrees of freedom depend on fc: refit once with the estimate, near it
    nu = _dof(m, n, first[0], fs_hz)
    fit = profile_fit(
        av,
        nu,
        shape,
        max(first[0] / 4.0, fc_lo),
        min(first[0] * 4.0, fc_hi),
        diffusion_nm2_s=diffusion,
        n_grid=12,
    )
    if fit is None:
        fit = profile_fit(av, nu, shape, fc_lo, fc_hi, diffusion_nm2_s=diffusion)
    if fit is None:
        return failed(method, n)
    fc, s2, cov = fit
    # correlated neighbouring estimates: the composite Fisher information overstates the
    # precision; never report less than the Cramer-Rao bound of the N frames
    cov = cov * q
    crb = spectral_inverse_fisher(
        fc, fs_hz=fs_hz, exposure_s=exposure_s, n_samples=n, fixed_drag=fixed
    )
    if crb is not None:
        key = 0 if fixed else 1  # ln k variance: ln fc (fixed drag) or ln sigma^2
        if crb[key, key] > cov[key, key]:
            cov = crb
    return build_result(
        fc, s2, cov, kt=kt, lever_nm=lever, fixed_drag=drag, method=method, n_samples=n
    )
