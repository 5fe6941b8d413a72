"""Force from the power spectral density (PSD) of a bead's lateral fluctuations.

Model (units: nm, s, Hz, pN). A tethered bead pulled up with force F swings like an
inverted pendulum of length l + R (tether extension l, bead radius R): perpendicular to the
magnetic field its lateral stiffness is k = F / (l + R), so F = k (l + R). Its position is
an overdamped OU process with corner frequency fc = k / (2 pi gamma) and diffusion
D = kT / gamma (gamma the drag). The camera reports the position averaged over each
exposure W and sampled at fs: the recorded spectrum is the *blurred and aliased* Lorentzian
(exact closed form in :mod:`.ou_model`), which can differ from the textbook Lorentzian
D / (pi^2 (fc^2 + f^2)) by far more than the statistical error when fc is not small
compared with fs and 1 / W.

Estimator. The one-sided periodogram P_k = 2 |X_k|^2 / (N fs) of the mean-subtracted trace
(nm^2/Hz, f_k = k fs / N, 0 < k < N / 2) is averaged in contiguous blocks whose width grows
with frequency (about 2 % of f, at least one bin: a block of n values is Gamma distributed
with shape n). The two parameters (fc and sigma^2 = kT / k, equivalently fc and D) are
found by maximum likelihood on the blocks (the Whittle likelihood; with
``aliasing_correction`` the expectation includes the exact finite-record term, the
de-biased Whittle likelihood), standard errors from the Fisher information. Traces longer
than 131072 frames are cut to the longest FFT-friendly length (factors 2, 3, 5, 7 and 11),
which drops less than 1 % of the frames and keeps the FFT fast. Then

    k = kT / sigma^2,  gamma = k / (2 pi fc),  F = k (l + R).

With ``viscosity_pa_s`` the drag is fixed to the Faxen-corrected Stokes drag
6 pi eta R / (1 - 9/16 q + 1/8 q^3 - 45/256 q^4 - 1/16 q^5), q = R / (l + R), and only fc is
fitted (k = 2 pi fc gamma).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ._fitting import (
    block_starts,
    build_result,
    check_lengths,
    failed,
    prepare_trace,
    profile_fit,
)
from .ou_model import (
    ForceResult,
    expected_periodogram,
    lateral_drag_pn_s_per_nm,
    psd_model,
    thermal_energy_pn_nm,
)

__all__ = ["psd_force", "periodogram", "block_average"]

#: Traces longer than this are cut to an FFT-friendly length (loses < 1 % of the frames).
_FAST_FFT_ABOVE = 1 << 17

#: Relative width of the frequency blocks (a block spans about 2 % of its frequency).
BLOCK_REL_WIDTH = 0.02


def periodogram(x_nm, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided periodogram (f in Hz, P in nm^2/Hz) of a mean-subtracted trace.

    P_k = 2 |sum_n x_n e^(-2 pi i k n / N)|^2 / (N fs) for 0 < k < N / 2 (no DC, no
    Nyquist bin). Its expectation is the one-sided PSD; integrating P over f gives the
    variance.
    """
    x = np.asarray(x_nm, dtype=float)
    n = x.size
    spec = scipy.fft.rfft(x - x.mean())
    k_max = (n - 1) // 2
    p = 2.0 * np.abs(spec[1 : k_max + 1]) ** 2 / (n * fs_hz)
    f = np.arange(1, k_max + 1) * (fs_hz / n)
    return f, p


def block_average(
    freq_hz: np.ndarray, power: np.ndarray, rel_width: float = BLOCK_REL_WIDTH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average consecutive periodogram values in blocks about ``rel_width`` * f wide.

    Returns (mean frequency, mean power, number of values) per block. Blocks at low
    frequency hold a single value (no loss of resolution where the spectrum bends).
    """
    n = freq_hz.size
    if n == 0:
        return freq_hz.copy(), power.copy(), np.zeros(0)
    step = float(freq_hz[1] - freq_hz[0]) if n > 1 else float(freq_hz[0])
    idx = block_starts(int(round(freq_hz[0] / step)), n, rel_width)
    counts = np.diff(np.append(idx, n))
    f_mean = np.add.reduceat(freq_hz, idx) / counts
    p_mean = np.add.reduceat(power, idx) / counts
    return f_mean, p_mean, counts.astype(float)


def _method_name(blur: bool, aliasing: bool, fixed: bool) -> str:
    if blur and aliasing:
        model = "blurred+aliased"
    elif blur:
        model = "blurred"
    elif aliasing:
        model = "aliased"
    else:
        model = "plain Lorentzian"
    return f"psd ({model}, {'fixed' if fixed else 'free'} drag)"


def psd_force(
    x_nm,
    *,
    fs_hz: float,
    exposure_s: float,
    length_nm: float,
    radius_nm: float,
    temperature_k: float = 296.15,
    viscosity_pa_s: float | None = None,
    blur_correction: bool = True,
    aliasing_correction: bool = True,
    f_min_hz: float | None = None,
    f_max_hz: float | None = None,
) -> ForceResult:
    """Force (pN) on a tethered bead from the PSD of its position perpendicular to the field.

    Parameters
    ----------
    x_nm : 1-D array, nm
        Position trace of one bead, one value per frame, along the axis perpendicular to
        the magnetic field (drift-subtracted; see :func:`subtract_drift`). Leading/trailing
        NaN are dropped, interior NaN (<= 1 % of frames) are interpolated.
    fs_hz : frame rate (Hz). exposure_s : camera exposure W (s), 0 <= W <= 1 / fs.
    length_nm : mean tether extension l (nm). radius_nm : bead radius R (nm).
    temperature_k : K (kT = 1.380649e-2 pN nm/K * T).
    viscosity_pa_s : None (drag is fitted) or the medium viscosity (Pa s): the drag is then
        fixed to the Faxen-corrected Stokes drag at height l + R and only fc is fitted.
    blur_correction, aliasing_correction : include the exposure blur / the aliasing in the
        model; both False is the plain Lorentzian D / (pi^2 (fc^2 + f^2)).
    f_min_hz, f_max_hz : optional frequency range of the fit (e.g. to exclude residual drift
        at the lowest frequencies).

    Returns
    -------
    :class:`ForceResult` (pN, pN/nm, Hz, pN s/nm and their standard errors). NaN everywhere
    when the fit cannot work: fewer than 64 frames, more than 1 % lost frames, or a corner
    frequency that is not identifiable (far above fs or below the lowest fitted frequency:
    relative standard error of fc above 100 % or of the force above 50 %).
    """
    lever = check_lengths(length_nm, radius_nm)
    fixed = viscosity_pa_s is not None
    method = _method_name(blur_correction, aliasing_correction, fixed)
    x = prepare_trace(x_nm, fs_hz, exposure_s, min_samples=64)
    if x is None:
        n = int(np.count_nonzero(np.isfinite(np.asarray(x_nm, dtype=float))))
        return failed(method, n)
    if x.size > _FAST_FFT_ABOVE:
        # an FFT-friendly length (factors 2, 3, 5, 7, 11): drops < 1 % of the frames
        x = x[: scipy.fft.prev_fast_len(x.size, real=False)]
    n = x.size
    f, p = periodogram(x, fs_hz)
    keep = np.ones(f.size, dtype=bool)
    if f_min_hz is not None:
        keep &= f >= f_min_hz
    if f_max_hz is not None:
        keep &= f <= f_max_hz
    if np.count_nonzero(keep) < 16:
        return failed(method, n)
    f_b, p_b, n_b = block_average(f[keep], p[keep])
    kt = thermal_energy_pn_nm(temperature_k)

    if aliasing_correction:

        def shape(fc) -> np.ndarray:
            return expected_periodogram(
                f_b, fc, fs_hz=fs_hz, exposure_s=exposure_s, n_samples=n, blur=blur_correction
            )

    else:

        def shape(fc) -> np.ndarray:
            return psd_model(
                f_b, fc, fs_hz=fs_hz, exposure_s=exposure_s, blur=blur_correction, aliasing=False
            )

    drag = None
    diffusion = None
    if fixed:
        drag = float(lateral_drag_pn_s_per_nm(radius_nm, lever, viscosity_pa_s))
        diffusion = kt / drag
    # nu = 2 n_b: a block mean of n_b periodogram values has 2 n_b degrees of freedom
    fit = profile_fit(
        p_b, 2.0 * n_b, shape, fc_lo=f_b[0] / 100.0, fc_hi=100.0 * fs_hz, diffusion_nm2_s=diffusion
    )
    if fit is None:
        return failed(method, n)
    fc, s2, cov = fit
    return build_result(
        fc, s2, cov, kt=kt, lever_nm=lever, fixed_drag=drag, method=method, n_samples=n
    )
