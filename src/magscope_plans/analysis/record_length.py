"""How long to record a bead for a force calibration of a given precision.

Units: force pN, lengths nm, frequencies Hz, times s, viscosity Pa s, temperature K.

Expected corner frequency. For force F, tether extension l and bead radius R the lateral
stiffness is k = F / (l + R) and the drag near the surface gamma = 6 pi eta R / (1 - 9/16 q
+ 1/8 q^3 - 45/256 q^4 - 1/16 q^5), q = R / (l + R) (Faxen), so

    fc = k / (2 pi gamma).

Record length rule. The relative standard error of the force from the PSD fit (two free
parameters, fc and D) is the Cramer-Rao bound of the N = T fs recorded frames,
sqrt([I^-1]_(ln sigma^2)), with I the Fisher information of the periodogram under the exact
blurred and aliased spectrum (:func:`._fitting.spectral_inverse_fisher`). It scales as
1 / T, so T follows from one evaluation (refined twice):

    T = T0 * var_0(ln F) / rel_error^2.

When fc << fs / 2 and fc << 1 / W this tends to the classical result for a Lorentzian with
free fc and D,

    sigma_F / F = 1 / sqrt(pi fc T),  i.e.  T = 1 / (pi fc rel_error^2)

(127 / fc seconds, i.e. 800 relaxation times 1 / (2 pi fc), for 5 %); blur and aliasing
raise it when fc approaches fs / 2 (the spectrum is then flat and fc is poorly determined).
The Allan-variance fit reaches about the same precision (see the benchmark).
"""

from __future__ import annotations

import numpy as np

from ._fitting import spectral_inverse_fisher
from .ou_model import lateral_drag_pn_s_per_nm, water_viscosity_pa_s

__all__ = ["expected_corner_hz", "record_length_s", "force_relative_error"]


def expected_corner_hz(
    force_pn,
    length_nm,
    radius_nm,
    *,
    temperature_k: float = 296.15,
    viscosity_pa_s: float | None = None,
    surface_correction: bool = True,
):
    """Lateral corner frequency fc = F / ((l + R) 2 pi gamma) in Hz (broadcasts arrays).

    ``viscosity_pa_s`` None means water at ``temperature_k`` (Vogel equation);
    ``surface_correction`` applies Faxen's wall correction at the bead height l + R.
    """
    eta = water_viscosity_pa_s(temperature_k) if viscosity_pa_s is None else viscosity_pa_s
    force = np.asarray(force_pn, dtype=float)
    lever = np.asarray(length_nm, dtype=float) + np.asarray(radius_nm, dtype=float)
    gamma = lateral_drag_pn_s_per_nm(radius_nm, lever, eta, surface_correction)
    fc = force / lever / (2.0 * np.pi * gamma)
    return float(fc) if np.ndim(fc) == 0 else fc


def force_relative_error(corner_hz: float, *, fs_hz: float, exposure_s: float, n_samples: int):
    """Relative standard error of the PSD force from N frames (Cramer-Rao bound; inf if none)."""
    cov = spectral_inverse_fisher(
        float(corner_hz), fs_hz=fs_hz, exposure_s=exposure_s, n_samples=int(n_samples)
    )
    return float("inf") if cov is None else float(np.sqrt(cov[1, 1]))


def _one_record_length(fc: float, fs_hz: float, exposure_s: float, rel_error: float) -> float:
    if not (np.isfinite(fc) and fc > 0.0):
        return float("nan")
    n_min = 256
    # start from the classical rule, then rescale with the exact bound (it scales as 1/N)
    n = max(int(fs_hz / (np.pi * fc * rel_error**2)), n_min)
    for _ in range(3):
        err = force_relative_error(fc, fs_hz=fs_hz, exposure_s=exposure_s, n_samples=n)
        if not np.isfinite(err):
            return float("inf")
        n_new = max(int(np.ceil(n * (err / rel_error) ** 2)), n_min)
        if n_new > 1e12:
            return float("inf")
        if abs(n_new - n) <= 0.01 * n:
            n = n_new
            break
        n = n_new
    return n / fs_hz


def record_length_s(
    force_pn,
    length_nm,
    radius_nm,
    *,
    fs_hz: float,
    rel_error: float = 0.05,
    exposure_s: float | None = None,
    temperature_k: float = 296.15,
    viscosity_pa_s: float | None = None,
):
    """Record length (s) for a PSD force estimate with relative standard error ``rel_error``.

    ``force_pn`` the expected force (pN), ``length_nm`` the tether extension l (nm),
    ``radius_nm`` the bead radius R (nm) (arrays broadcast: e.g. one value per bead, then
    take the max), ``fs_hz`` the frame rate, ``exposure_s`` the exposure (default 1 / fs).
    Uses the expected corner frequency (:func:`expected_corner_hz`) and the Cramer-Rao rule
    of the module docstring; at least 256 frames. ``inf`` where fc is so far above fs that
    the force cannot be estimated from the spectrum.
    """
    if not 0.0 < rel_error < 1.0:
        raise ValueError(f"rel_error must be in (0, 1), got {rel_error}")
    w = 1.0 / fs_hz if exposure_s is None else float(exposure_s)
    fc = np.asarray(
        expected_corner_hz(
            force_pn,
            length_nm,
            radius_nm,
            temperature_k=temperature_k,
            viscosity_pa_s=viscosity_pa_s,
        ),
        dtype=float,
    )
    out = np.array([_one_record_length(float(v), fs_hz, w, rel_error) for v in fc.ravel()])
    out = out.reshape(fc.shape)
    return float(out) if out.ndim == 0 else out
