"""Model of a camera-recorded bead in a harmonic trap: the sampled, exposure-averaged OU process.

Units: positions nm, times s, frequencies Hz, stiffness pN/nm, drag pN s/nm, diffusion
nm^2/s, energies pN nm, viscosity Pa s, temperature K.

A tethered bead moving perpendicular to the magnetic field is an overdamped bead in a
harmonic trap (an Ornstein-Uhlenbeck, OU, process):

    gamma dx/dt = -k x + sqrt(2 kT gamma) xi(t)

with stiffness k (pN/nm), drag gamma (pN s/nm), relaxation time tau = gamma / k, corner
frequency fc = 1 / (2 pi tau) = k / (2 pi gamma), diffusion D = kT / gamma and variance
sigma^2 = kT / k = D tau. Its autocovariance is sigma^2 exp(-|t| / tau).

A camera does not sample x(t): frame n reports the average of x over the exposure window
[n dt, n dt + W] (motion blur), with dt = 1 / fs the frame interval and W <= dt the
exposure time. With a = W / tau and r = exp(-dt / tau), the recorded sequence m_n is a
stationary Gaussian sequence with the exact autocovariance

    c_0 = sigma^2 * 2 (a - 1 + e^-a) / a^2                            (blurred variance)
    c_j = sigma^2 * ((1 - e^-a) / a)^2 * exp(-(dt - W) / tau) * r^(j - 1),   j >= 1

(integrate sigma^2 exp(-|t - s| / tau) over two windows). Its one-sided power spectral
density (nm^2/Hz, 0 < f < fs / 2), i.e. the blurred *and* aliased Lorentzian, follows by
summing the geometric series, with omega = 2 pi f dt:

    P(f) = 2 dt [c_0 + 2 c_1 (cos omega - r) / (1 - 2 r cos omega + r^2)]

This is the closed form of the aliased sum over the exposure-filtered Lorentzian (Wong &
Halvorsen 2006, te Velthuis et al. 2010 for W = dt, here for any W <= dt). The expected
periodogram of a finite record of N frames differs from P(f) by a term of order
1 / (N (1 - r)) (the record is finite: the Fejer kernel); it has the closed form

    E[P_k] = 2 dt [c_0 + (2 c_1 / N) Re(e^-iw (M / (1 - z) - z (1 - z^M) / (1 - z)^2))],

    z = r e^-iw, M = N - 1, at the Fourier frequencies f_k = k fs / N

and is used by the PSD fit (the "de-biased Whittle likelihood" of Sykulski et al. 2019).
W = 0 gives the aliased Lorentzian of a point-sampled bead; dropping aliasing gives the
continuous Lorentzian 4 sigma^2 tau / (1 + (2 pi f tau)^2) = D / (pi^2 (fc^2 + f^2)), times
sinc^2(pi f W) for the blur only.

The overlapping Allan variance of m_n at tau_m = m dt (half the mean squared difference of
adjacent averages over m frames) is, with V_m = Var(sum of m consecutive frames),

    AV(m) = (2 V_m - V_2m / 2) / m^2,
    V_m = m c_0 + 2 sum_{j=1}^{m-1} (m - j) c_j
        = m c_0 + 2 c_1 [(m - 1) / (1 - r) - r (1 - r^(m-1)) / (1 - r)^2]

(the exposure-averaged OU Allan variance of Lansdorp & Saleh 2012, exact for frames with
gaps W < dt as well).

All functions here are dimensionless in sigma^2 (they return the model for sigma^2 = 1), so
a fit can profile the scale out analytically. They broadcast: a column of corner
frequencies (shape (k, 1)) against a row of frequencies or block lengths gives a (k, n)
table (used to evaluate a whole grid of trial fc at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOLTZMANN_PN_NM_PER_K",
    "ForceResult",
    "thermal_energy_pn_nm",
    "water_viscosity_pa_s",
    "lateral_drag_pn_s_per_nm",
    "sampled_ou_covariance",
    "psd_model",
    "expected_periodogram",
    "allan_model",
]

#: Boltzmann constant in pN nm / K.
BOLTZMANN_PN_NM_PER_K = 1.380649e-2

_SMALL = 1e-4  # below this a = W / tau, the series are used (no cancellation)


@dataclass(frozen=True)
class ForceResult:
    """Force calibration of one bead from its lateral fluctuations.

    ``force_pn`` = k (l + R) (pN); ``stiffness_pn_per_nm`` k (pN/nm); ``corner_hz`` fc =
    k / (2 pi gamma) (Hz); ``drag_pn_s_per_nm`` gamma (pN s/nm, fitted, or the fixed Stokes
    drag when a viscosity was given). The ``*_err`` fields are one standard error from the
    fit alone (the lengths l and R are taken as exact). ``method`` says which estimator and
    model produced the numbers, ``n_samples`` how many frames were used. A failed fit gives
    NaN in every number (never a guess).
    """

    force_pn: float
    stiffness_pn_per_nm: float
    corner_hz: float
    drag_pn_s_per_nm: float
    force_pn_err: float
    stiffness_pn_per_nm_err: float
    corner_hz_err: float
    drag_pn_s_per_nm_err: float
    method: str
    n_samples: int

    @property
    def ok(self) -> bool:
        """True when the fit produced a finite force."""
        return bool(np.isfinite(self.force_pn))


def failed_result(method: str, n_samples: int) -> ForceResult:
    """A :class:`ForceResult` with NaN in every number."""
    nan = float("nan")
    return ForceResult(nan, nan, nan, nan, nan, nan, nan, nan, method, int(n_samples))


def thermal_energy_pn_nm(temperature_k: float = 296.15) -> float:
    """k_B T in pN nm (4.089 pN nm at 296.15 K)."""
    return BOLTZMANN_PN_NM_PER_K * float(temperature_k)


def water_viscosity_pa_s(temperature_k: float = 296.15) -> float:
    """Viscosity of water (Pa s), Vogel equation: 2.414e-5 * 10^(247.8 / (T - 140)).

    9.33e-4 Pa s at 296.15 K; good to about 1 % between 0 and 100 C.
    """
    return 2.414e-5 * 10.0 ** (247.8 / (float(temperature_k) - 140.0))


def lateral_drag_pn_s_per_nm(radius_nm, height_nm, viscosity_pa_s, surface_correction=True):
    """Drag (pN s/nm) of a sphere moving parallel to a wall.

    gamma = 6 pi eta R / (1 - 9/16 q + 1/8 q^3 - 45/256 q^4 - 1/16 q^5), q = R / h (Faxen),
    with h the height of the bead centre above the surface (nm) and eta in Pa s
    (1 Pa s = 1e-6 pN s/nm^2). ``surface_correction=False`` gives the bulk 6 pi eta R.
    """
    r = np.asarray(radius_nm, dtype=float)
    gamma0 = 6.0 * np.pi * float(viscosity_pa_s) * 1e-6 * r
    if not surface_correction:
        return gamma0
    q = np.clip(r / np.asarray(height_nm, dtype=float), 0.0, 1.0)
    return gamma0 / (1.0 - 9.0 / 16.0 * q + q**3 / 8.0 - 45.0 / 256.0 * q**4 - q**5 / 16.0)


def sampled_ou_covariance(corner_hz, fs_hz, exposure_s):
    """(c_0, c_1, r) of the recorded sequence for sigma^2 = 1 (see the module docstring).

    c_0 = Var(m_n) / sigma^2 (the motion-blur factor), c_1 = Cov(m_n, m_n+1) / sigma^2 and
    r = exp(-dt / tau) the ratio c_(j+1) / c_j. Requires 0 <= exposure_s <= 1 / fs_hz.
    """
    fc = np.asarray(corner_hz, dtype=float)
    dt = 1.0 / float(fs_hz)
    w = float(exposure_s)
    rate = 2.0 * np.pi * fc  # 1 / tau
    a = w * rate
    small = a < _SMALL
    with np.errstate(divide="ignore", invalid="ignore"):
        blur = np.where(small, 1.0 - a / 3.0 + a * a / 12.0, 2.0 * (a + np.expm1(-a)) / (a * a))
        gain = np.where(small, 1.0 - a / 2.0 + a * a / 6.0, -np.expm1(-a) / a)
    c1 = gain * gain * np.exp(-(dt - w) * rate)
    r = np.exp(-dt * rate)
    return blur, c1, r


def psd_model(freq_hz, corner_hz, *, fs_hz, exposure_s, blur=True, aliasing=True):
    """One-sided PSD (nm^2/Hz) of the recorded position for sigma^2 = kT / k = 1 nm^2.

    ``aliasing=True``: the exact PSD of the sampled sequence (module docstring), with the
    exposure ``exposure_s`` when ``blur`` else W = 0. ``aliasing=False``: the continuous
    Lorentzian 4 tau / (1 + (2 pi f tau)^2), times sinc^2(pi f W) when ``blur``.
    """
    f = np.asarray(freq_hz, dtype=float)
    fc = np.asarray(corner_hz, dtype=float)
    dt = 1.0 / float(fs_hz)
    w = float(exposure_s) if blur else 0.0
    if aliasing:
        c0, c1, r = sampled_ou_covariance(fc, fs_hz, w)
        cw = np.cos(2.0 * np.pi * f * dt)
        return 2.0 * dt * (c0 + 2.0 * c1 * (cw - r) / (1.0 - 2.0 * r * cw + r * r))
    tau = 1.0 / (2.0 * np.pi * fc)
    lor = 4.0 * tau / (1.0 + (2.0 * np.pi * f * tau) ** 2)
    if blur:
        lor = lor * np.sinc(f * w) ** 2
    return lor


def expected_periodogram(freq_hz, corner_hz, *, fs_hz, exposure_s, n_samples, blur=True):
    """Expected one-sided periodogram (nm^2/Hz) of N = ``n_samples`` frames, sigma^2 = 1.

    Exact at the Fourier frequencies k fs / N (module docstring); tends to
    :func:`psd_model` (aliasing=True) for long records.
    """
    f = np.asarray(freq_hz, dtype=float)
    dt = 1.0 / float(fs_hz)
    w = float(exposure_s) if blur else 0.0
    c0, c1, r = sampled_ou_covariance(corner_hz, fs_hz, w)
    n = int(n_samples)
    m = n - 1
    e = np.exp(-1j * 2.0 * np.pi * f * dt)
    z = r * e
    one_z = 1.0 - z
    zm = r**m / e  # z^M at the Fourier frequencies: r^M e^{+i omega}
    s = m / one_z - z * (1.0 - zm) / (one_z * one_z)
    return 2.0 * dt * (c0 + (2.0 * c1 / n) * np.real(e * s))


def allan_model(m_frames, corner_hz, *, fs_hz, exposure_s):
    """Overlapping Allan variance (nm^2) of the recorded position at tau = m / fs, sigma^2 = 1.

    Exact for the sampled, exposure-averaged OU process (module docstring).
    """
    m = np.asarray(m_frames, dtype=float)
    c0, c1, r = sampled_ou_covariance(corner_hz, fs_hz, exposure_s)
    x = 2.0 * np.pi * np.asarray(corner_hz, dtype=float) / float(fs_hz)  # dt / tau
    one_r = -np.expm1(-x)

    def block_var(mm):
        # sum_{i=0}^{M-1} (M - i) r^i with M = m - 1: closed form, or its series in x when
        # x M is small (the closed form then cancels): M(M+1)/2 - x (M-1)M(M+1)/6
        # + x^2 M^2 (M-1)(M+1)/24 + O(x^3 M^5)
        big_m = mm - 1.0
        xm = x * big_m
        with np.errstate(divide="ignore", invalid="ignore"):
            closed = big_m / one_r - r * (-np.expm1(-xm)) / (one_r * one_r)
        series = (
            big_m * (big_m + 1.0) / 2.0
            - x * (big_m - 1.0) * big_m * (big_m + 1.0) / 6.0
            + x * x * big_m * big_m * (big_m - 1.0) * (big_m + 1.0) / 24.0
        )
        tri = np.where(xm < 1e-3, series, closed)
        return mm * c0 + 2.0 * c1 * tri

    return (2.0 * block_var(m) - 0.5 * block_var(2.0 * m)) / (m * m)
