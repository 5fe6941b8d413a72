"""Physics of the simulated magnetic-tweezers microscope: pure functions on arrays.

Units everywhere: lengths in nm (magnet height in mm), forces in pN, energies in pN nm,
stiffnesses in pN/nm, drag coefficients in pN s/nm, times in s, viscosity in Pa s,
temperature in K, magnet rotation in turns. All functions broadcast their array arguments
(NumPy rules) and return float64 arrays (or floats for scalar input where noted).

Contents
- thermal energy, water viscosity;
- worm-like chain (WLC): force(extension) by Marko & Siggia (1995) with the seventh-order
  correction of Bouchiat et al. (1999), its exact inverse extension(force) and the slope
  dF/dl (the axial tether stiffness k_z);
- magnet height to force (double exponential);
- Stokes drag with surface corrections (Faxen lateral, Brenner vertical approximation);
- supercoiling "hat" curve (extension against magnet turns) and its buckling point;
- exact Ornstein-Uhlenbeck (OU) helpers: transition and the joint law of the end point and
  the time average over an exposure window (motion blur).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BOLTZMANN_PN_NM_PER_K",
    "KT_296_PN_NM",
    "BOUCHIAT_COEFFS",
    "thermal_energy",
    "water_viscosity",
    "wlc_force",
    "wlc_extension",
    "wlc_stiffness",
    "magnet_force",
    "stokes_drag",
    "faxen_lateral_factor",
    "brenner_vertical_factor",
    "buckling_turns",
    "plectoneme_slope",
    "melting_factor",
    "supercoil_extension",
    "ou_transition",
    "ou_exposure_moments",
    "ou_blur_factor",
    "ou_sample_exposure",
]

#: Boltzmann constant in pN nm / K.
BOLTZMANN_PN_NM_PER_K = 1.380649e-2

#: Thermal energy k_B T at 296.15 K (23 C), pN nm.
KT_296_PN_NM = BOLTZMANN_PN_NM_PER_K * 296.15

#: Bouchiat et al. (1999) coefficients a_2 .. a_7 of the polynomial correction.
BOUCHIAT_COEFFS = (-0.5164228, -2.737418, 16.07497, -38.87607, 39.49944, -14.17718)


def thermal_energy(temperature_k=296.15):
    """Thermal energy k_B T in pN nm for a temperature in K."""
    return BOLTZMANN_PN_NM_PER_K * np.asarray(temperature_k, dtype=float)


def water_viscosity(temperature_k=296.15):
    """Dynamic viscosity of water in Pa s (Vogel equation, good to ~1 % over 0-100 C).

    eta = 2.414e-5 Pa s * 10 ** (247.8 K / (T - 140 K)); 296.15 K gives 9.33e-4 Pa s.
    """
    t = np.asarray(temperature_k, dtype=float)
    return 2.414e-5 * 10.0 ** (247.8 / (t - 140.0))


# ---------------------------------------------------------------------------------------
# Worm-like chain
# ---------------------------------------------------------------------------------------


def _wlc_reduced_force(x):
    """Reduced force f = F P / kT of the Bouchiat WLC at relative extension x = l / L."""
    a2, a3, a4, a5, a6, a7 = BOUCHIAT_COEFFS
    poly = x * x * (a2 + x * (a3 + x * (a4 + x * (a5 + x * (a6 + x * a7)))))
    # 1 / (4 (1 - x)^2) - 1/4 written without cancellation at small x
    return 0.25 * x * (2.0 - x) / (1.0 - x) ** 2 + x + poly


def _wlc_reduced_slope(x):
    """d f / d x of :func:`_wlc_reduced_force`."""
    a2, a3, a4, a5, a6, a7 = BOUCHIAT_COEFFS
    dpoly = x * (2 * a2 + x * (3 * a3 + x * (4 * a4 + x * (5 * a5 + x * (6 * a6 + x * 7 * a7)))))
    return 0.5 / (1.0 - x) ** 3 + 1.0 + dpoly


def wlc_force(extension_nm, contour_nm, persistence_nm, kt_pn_nm=KT_296_PN_NM):
    """Tether force (pN) of a worm-like chain at a given mean extension (nm).

    F(l) = kT / P * [1 / (4 (1 - x)^2) - 1/4 + x + sum_{i=2..7} a_i x^i],  x = l / L,
    with the Bouchiat et al. (1999) coefficients a_i (:data:`BOUCHIAT_COEFFS`); accurate to
    ~0.01 % against the exact WLC. Valid for 0 <= l < L; l >= L gives +inf.

    Parameters: extension_nm (nm), contour_nm L (nm), persistence_nm P (nm),
    kt_pn_nm thermal energy (pN nm).
    """
    x = np.asarray(extension_nm, dtype=float) / np.asarray(contour_nm, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = _wlc_reduced_force(x)
        f = np.where(x >= 1.0, np.inf, f)
    return np.asarray(kt_pn_nm, dtype=float) / np.asarray(persistence_nm, dtype=float) * f


def wlc_stiffness(extension_nm, contour_nm, persistence_nm, kt_pn_nm=KT_296_PN_NM):
    """Axial stiffness k_z = dF/dl (pN/nm) of a worm-like chain at extension l (nm).

    k_z = kT / (P L) * f'(x), x = l / L, with f the reduced Bouchiat force law.
    """
    contour = np.asarray(contour_nm, dtype=float)
    x = np.asarray(extension_nm, dtype=float) / contour
    with np.errstate(divide="ignore", invalid="ignore"):
        d = _wlc_reduced_slope(x)
        d = np.where(x >= 1.0, np.inf, d)
    return (
        np.asarray(kt_pn_nm, dtype=float) / (np.asarray(persistence_nm, dtype=float) * contour) * d
    )


def _wlc_relative_extension(f):
    """Solve f(x) = f for x in [0, 1) (vectorised, safeguarded Newton with bisection).

    The Bouchiat force law is strictly increasing on [0, 1), with f(0) = 0 and f -> inf as
    x -> 1, so the root is unique; the iteration keeps a bracket [lo, hi] and falls back to
    bisection whenever a Newton step leaves it. Converges to machine precision (~1e-15
    relative in x) in ~5-10 iterations from the Marko-Siggia limits as the first guess.
    """
    f = np.asarray(f, dtype=float)
    out = np.zeros(f.shape)
    pos = f > 0.0
    if not np.any(pos):
        return out
    fp = f[pos]
    # initial guess: small-force limit x = 2f/3, large-force limit x = 1 - 1/(2 sqrt f)
    x = np.minimum(2.0 * fp / 3.0, 1.0 - 0.5 / np.sqrt(fp + 0.5625))
    x = np.clip(x, 0.0, 1.0 - 1e-12)
    lo = np.zeros_like(fp)
    hi = np.full_like(fp, 1.0 - 1e-15)
    act = np.arange(fp.size)  # indices still iterating
    for _ in range(200):
        xa, fa = x[act], fp[act]
        g = _wlc_reduced_force(xa) - fa
        la = np.where(g < 0.0, xa, lo[act])
        ha = np.where(g > 0.0, xa, hi[act])
        step = g / _wlc_reduced_slope(xa)
        xn = xa - step
        bad = (xn < la) | (xn > ha) | ~np.isfinite(xn)
        xn = np.where(bad, 0.5 * (la + ha), xn)
        # a Newton step below 1e-13 x leaves an error ~ (1e-13)^2: converged after it
        done = (~bad & (np.abs(step) <= 1e-13 * xa)) | (ha - la <= 4e-16 * xa) | (g == 0.0)
        x[act] = xn
        lo[act] = la
        hi[act] = ha
        act = act[~done]
        if act.size == 0:
            break
    out[pos] = x
    return out


def wlc_extension(force_pn, contour_nm, persistence_nm, kt_pn_nm=KT_296_PN_NM):
    """Mean extension (nm) of a worm-like chain under a force (pN): inverse of :func:`wlc_force`.

    Exact inverse (relative error ~1e-15) of the Bouchiat force law, vectorised.
    force_pn <= 0 gives 0 extension.
    """
    force = np.asarray(force_pn, dtype=float)
    contour = np.asarray(contour_nm, dtype=float)
    persistence = np.asarray(persistence_nm, dtype=float)
    f = force * persistence / np.asarray(kt_pn_nm, dtype=float)
    f, contour = np.broadcast_arrays(f, contour)
    return _wlc_relative_extension(f) * contour


# ---------------------------------------------------------------------------------------
# Magnets
# ---------------------------------------------------------------------------------------


def magnet_force(magnet_z_mm, f0_pn=68.0, a=0.7, l1_mm=0.8, l2_mm=1.65, scale=1.0):
    """Force (pN) on a bead from the magnet height (mm): a double exponential.

    F(z) = scale * F0 * (a * exp(-z / l1) + (1 - a) * exp(-z / l2)).

    Defaults (F0 = 68 pN, a = 0.7, l1 = 0.8 mm, l2 = 1.65 mm) give for scale = 1
    F(0.3 mm) = 49.7 pN, F(1 mm) = 24.8 pN, F(3 mm) = 4.4 pN, F(6 mm) = 0.56 pN,
    F(10 mm) = 0.048 pN: the range of a typical 1.4 um radius bead under a magnet pair.
    ``scale`` is the bead-to-bead factor (magnetic content), 1 on average.
    """
    z = np.asarray(magnet_z_mm, dtype=float)
    return scale * f0_pn * (a * np.exp(-z / l1_mm) + (1.0 - a) * np.exp(-z / l2_mm))


# ---------------------------------------------------------------------------------------
# Hydrodynamic drag
# ---------------------------------------------------------------------------------------


def stokes_drag(radius_nm, viscosity_pa_s=9.33e-4):
    """Bulk Stokes drag coefficient gamma_0 = 6 pi eta R in pN s/nm (R in nm, eta in Pa s).

    1 Pa s = 1e-6 pN s / nm^2.
    """
    return (
        6.0
        * np.pi
        * (np.asarray(viscosity_pa_s, dtype=float) * 1e-6)
        * np.asarray(radius_nm, dtype=float)
    )


def faxen_lateral_factor(radius_nm, height_nm):
    """Drag increase gamma_par / gamma_0 for motion parallel to a wall (Faxen's law).

    gamma_par / gamma_0 = 1 / (1 - 9/16 q + 1/8 q^3 - 45/256 q^4 - 1/16 q^5), q = R / h,
    h = distance from the wall to the bead centre (nm), R the bead radius (nm).
    h < R is clipped to h = R.
    """
    q = np.clip(np.asarray(radius_nm, dtype=float) / np.asarray(height_nm, dtype=float), 0.0, 1.0)
    den = 1.0 - 9.0 / 16.0 * q + q**3 / 8.0 - 45.0 / 256.0 * q**4 - q**5 / 16.0
    return 1.0 / den


def brenner_vertical_factor(radius_nm, height_nm, max_factor=100.0):
    """Drag increase gamma_perp / gamma_0 for motion normal to a wall (Brenner 1961).

    Closed-form approximation of Brenner's series (Schaffer, Norrelykke & Howard 2007):
    gamma_perp / gamma_0 = 1 / (1 - 9/8 q + 1/2 q^3 - 57/100 q^4 + 1/5 q^5 + 7/200 q^11
    - 1/25 q^12), q = R / h. It diverges at contact (h = R); the factor is capped at
    ``max_factor`` (default 100, reached ~ 5 nm from the wall for R = 1.4 um).
    """
    q = np.clip(np.asarray(radius_nm, dtype=float) / np.asarray(height_nm, dtype=float), 0.0, 1.0)
    den = (
        1.0
        - 9.0 / 8.0 * q
        + 0.5 * q**3
        - 0.57 * q**4
        + 0.2 * q**5
        + 7.0 / 200.0 * q**11
        - q**12 / 25.0
    )
    return 1.0 / np.maximum(den, 1.0 / max_factor)


# ---------------------------------------------------------------------------------------
# Supercoiling: the hat curve
# ---------------------------------------------------------------------------------------


def buckling_turns(
    force_pn, contour_nm, persistence_nm, kt_pn_nm=KT_296_PN_NM, twist_persistence_nm=95.0
):
    """Magnet turns (>= 0) at which a torsionally constrained tether buckles.

    Twisting DNA by n turns stores a torque Gamma = 2 pi n kT C / L (C the twist persistence
    length). It buckles into a plectoneme when Gamma reaches the buckling torque
    Gamma_b = sqrt(2 kT P F) (Marko 2007). Hence

        n_b(F) = L sqrt(2 P F / kT) / (2 pi C).

    For L = 5 um, P = 47 nm, C = 95 nm: n_b = 28 turns at 0.5 pN, 40 at 1 pN.
    In :func:`supercoil_extension` n_b is exactly the turns where the post-buckling line
    meets the pre-buckling plateau (the "true buckling point" a two-line fit estimates).
    """
    force = np.maximum(np.asarray(force_pn, dtype=float), 0.0)
    p = np.asarray(persistence_nm, dtype=float)
    return (
        np.asarray(contour_nm, dtype=float)
        * np.sqrt(2.0 * p * force / np.asarray(kt_pn_nm, dtype=float))
        / (2.0 * np.pi * twist_persistence_nm)
    )


def plectoneme_slope(force_pn, contour_nm, persistence_nm, kt_pn_nm=KT_296_PN_NM):
    """Extension lost per turn (nm/turn, > 0) once the tether has buckled.

    Each extra turn adds one plectonemic loop, which absorbs a contour length
    2 pi r_p with the loop radius r_p = sqrt(kT P / (2 F)) (bending against force); that
    contour would otherwise be extended by the WLC fraction x(F) = l(F) / L:

        slope = 2 pi sqrt(kT P / (2 F)) * x(F).

    For P = 47 nm: ~70 nm/turn at 0.5 pN, ~55 nm/turn at 1 pN, ~28 nm/turn at 4 pN.
    """
    force = np.maximum(np.asarray(force_pn, dtype=float), 1e-12)
    p = np.asarray(persistence_nm, dtype=float)
    kt = np.asarray(kt_pn_nm, dtype=float)
    x = wlc_extension(force, 1.0, p, kt)
    return 2.0 * np.pi * np.sqrt(kt * p / (2.0 * force)) * x


def melting_factor(force_pn, melting_force_pn=1.0, width_pn=0.05):
    """Fraction (0..1) of negative supercoiling that goes into plectonemes.

    Above ~1 pN, underwound DNA melts (denaturation bubbles absorb the negative turns) and
    does not buckle: 1 / (1 + exp((F - F_melt) / width)), ~1 below and ~0 above F_melt.
    """
    force = np.asarray(force_pn, dtype=float)
    u = np.clip((force - melting_force_pn) / width_pn, -700.0, 700.0)
    return 1.0 / (1.0 + np.exp(u))


def _softplus(u):
    return np.logaddexp(0.0, u)


def supercoil_extension(
    turns,
    force_pn,
    contour_nm,
    persistence_nm,
    kt_pn_nm=KT_296_PN_NM,
    twist_persistence_nm=95.0,
    plateau_rounding=0.02,
    corner_width_turns=1.0,
    melting_force_pn=1.0,
    melting_width_pn=0.05,
    wlc_extension_nm=None,
):
    """Mean tether extension (nm) against magnet turns at a constant force: the hat curve.

    With l0 = WLC extension at force F, n_b = :func:`buckling_turns`, s =
    :func:`plectoneme_slope` and beta = ``plateau_rounding``:

    - plateau (before buckling): p(n) = l0 (1 - beta min((n / n_b)^2, 1)), a slight
      rounding around 0 turns (twist-stretch / writhe fluctuations, phenomenological);
    - post-buckling line: q(n) = l0 (1 - beta) - s m (|n| - n_b), with m = 1 for n > 0 and
      m = :func:`melting_factor` (F) for n < 0 (no buckling of underwound DNA above ~1 pN);
    - the curve is the smooth minimum of both, rounded over ``corner_width_turns``:
      l(n) = p - d softplus((p - q) / d), d = s m w. Far from the corner l = p or l = q; the
      lines meet exactly at |n| = n_b, the true buckling point.

    The extension is floored at 0 (bead on the surface). A torsionally unconstrained
    (nicked) tether is just the WLC extension l0. ``wlc_extension_nm`` may pass l0 when
    already computed (it is then not recomputed).
    """
    n = np.asarray(turns, dtype=float)
    force = np.asarray(force_pn, dtype=float)
    kt = np.asarray(kt_pn_nm, dtype=float)
    if wlc_extension_nm is None:
        l0 = wlc_extension(force, contour_nm, persistence_nm, kt)
    else:
        l0 = np.asarray(wlc_extension_nm, dtype=float)
    nb = buckling_turns(force, contour_nm, persistence_nm, kt, twist_persistence_nm)
    # plectoneme_slope, with x(F) = l0 / L
    p = np.asarray(persistence_nm, dtype=float)
    f_pos = np.maximum(force, 1e-12)
    slope = 2.0 * np.pi * np.sqrt(kt * p / (2.0 * f_pos)) * l0 / np.asarray(contour_nm, dtype=float)
    m = np.where(n < 0.0, melting_factor(force, melting_force_pn, melting_width_pn), 1.0)
    an = np.abs(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(nb > 0.0, np.minimum((an / nb) ** 2, 1.0), 1.0)
    lb = l0 * (1.0 - plateau_rounding)
    p = l0 * (1.0 - plateau_rounding * r2)
    sm = slope * m
    q = lb - sm * (an - nb)
    d = np.maximum(sm * corner_width_turns, 1e-9)
    ext = p - d * _softplus((p - q) / d)
    return np.maximum(ext, 0.0)


# ---------------------------------------------------------------------------------------
# Ornstein-Uhlenbeck process (overdamped bead in a harmonic trap)
# ---------------------------------------------------------------------------------------


def ou_transition(x, dt_s, tau_s, sigma2_nm2, normal):
    """Exact OU transition of a deviation x (nm) from its mean over dt_s (s).

    x(t + dt) = x e^{-dt/tau} + sqrt(sigma^2 (1 - e^{-2 dt/tau})) N(0, 1), with the
    relaxation time tau = gamma / k (s) and the stationary variance sigma^2 = kT / k (nm^2);
    ``normal`` holds standard-normal draws broadcastable to x.
    """
    r = np.asarray(dt_s, dtype=float) / np.asarray(tau_s, dtype=float)
    decay = np.exp(-r)
    var = sigma2_nm2 * -np.expm1(-2.0 * r)
    return x * decay + np.sqrt(var) * normal


def _horner(coeffs, a):
    out = np.full_like(a, coeffs[-1])
    for c in coeffs[-2::-1]:
        out = out * a + c
    return out


def _factorial(k):
    out = 1.0
    for i in range(2, k + 1):
        out *= i
    return out


# Below _SMALL_A the closed forms lose ~2 log10(1/a) digits to cancellation (1e-10 relative
# at a = 1e-3); there the power series (truncation error < 1e-24) are used instead.
_SMALL_A = 1e-3
# a + (e^{-a} - 1) = a^2 * sum_{k>=2} (-1)^k a^(k-2) / k!
_APE_SERIES = tuple((-1.0) ** k / _factorial(k) for k in range(2, 10))
# (2a - 3 + 4 e^{-a} - e^{-2a}) / a^2 = sum_{k>=3} (-1)^k (4 - 2^k) / k! a^(k-2)
_VAR_MEAN_SERIES = (0.0,) + tuple(
    (-1.0) ** k * (4.0 - 2.0**k) / _factorial(k) for k in range(3, 10)
)


def ou_exposure_moments(a):
    """Moments of an OU process over an exposure window of W = a tau (a = W / tau >= 0).

    For a deviation x0 at the window start, with sigma^2 = kT / k (the results are in units
    of sigma^2 or dimensionless), x_W the end point and m = (1/W) int_0^W x dt the window
    mean (the exposure average):

        E[x_W | x0] = x0 e^{-a}                              -> ``decay``
        E[m | x0]   = x0 (1 - e^{-a}) / a                     -> ``mean_gain``
        Var[x_W | x0] / sigma^2 = 1 - e^{-2a}                  -> ``var_end``
        Var[m | x0] / sigma^2 = (2a - 3 + 4 e^{-a} - e^{-2a}) / a^2
                              = Var_stat(m)/sigma^2 - (1 - e^{-a})^2 / a^2   -> ``var_mean``
        Cov[x_W, m | x0] / sigma^2 = (1 - e^{-a})^2 / a        -> ``cov``

    with Var_stat(m) = 2 sigma^2 (a - 1 + e^{-a}) / a^2 (see :func:`ou_blur_factor`).
    Derivation: x(s) = x0 e^{-s} + sqrt(2) sigma int_0^s e^{-(s-u)} dB(u) (s in units of
    tau), so int_0^a x ds has the noise sqrt(2) sigma int_0^a (1 - e^{-(a-u)}) dB(u) and the
    Ito isometry gives the variances and the covariance. Small a (< 1e-3) uses power series
    (no cancellation); a = 0 gives decay = mean_gain = 1 and zero variances.

    Returns (decay, mean_gain, var_end, var_mean, cov) as float arrays of the shape of a.
    """
    a = np.asarray(a, dtype=float)
    shape = a.shape
    a = a.reshape(-1)
    e1 = np.expm1(-a)  # e^{-a} - 1
    decay = 1.0 + e1
    var_end = -np.expm1(-2.0 * a)
    small = a < _SMALL_A
    any_small = bool(small.any())
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / a
        mean_gain = -e1 * inv
        # Var[m|x0]/sigma^2 = (2 (a + E) - E^2) / a^2 with E = e^{-a} - 1
        var_mean = (2.0 * (a + e1) - e1 * e1) * inv * inv
        cov = e1 * e1 * inv
    if any_small:
        asm = a[small]
        var_mean[small] = _horner(_VAR_MEAN_SERIES, asm)
        zero = asm == 0.0
        if np.any(zero):
            idx = np.flatnonzero(small)[zero]
            mean_gain[idx] = 1.0
            cov[idx] = 0.0
    return (
        decay.reshape(shape),
        mean_gain.reshape(shape),
        var_end.reshape(shape),
        var_mean.reshape(shape),
        cov.reshape(shape),
    )


def ou_blur_factor(a):
    """Stationary variance of the exposure average over the variance of the position.

    Var_stat(m) / sigma^2 = 2 (a - 1 + e^{-a}) / a^2, a = W / tau (the motion-blur factor
    used in PSD force calibration, Wong & Halvorsen 2006). 1 at a = 0, ~2/a for large a.
    """
    a = np.asarray(a, dtype=float)
    shape = a.shape
    a = a.reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 2.0 * (a + np.expm1(-a)) / (a * a)
    small = a < _SMALL_A
    if np.any(small):
        out[small] = 2.0 * _horner(_APE_SERIES, a[small])
    return out.reshape(shape)


def ou_sample_exposure(x0, a, sigma2_nm2, normal_end, normal_mean):
    """Sample jointly and exactly the end point and the window mean of an OU deviation.

    Given the deviation x0 (nm) at the window start, a = W / tau and sigma^2 = kT / k (nm^2),
    draws (x_W, m) from their exact conditional Gaussian law
    (:func:`ou_exposure_moments`) using two independent standard-normal arrays:

        x_W = x0 e^{-a} + sqrt(V_W) z1
        m   = x0 (1 - e^{-a}) / a + C / V_W (x_W - x0 e^{-a}) + sqrt(V_m - C^2 / V_W) z2

    Returns (x_end_nm, x_mean_nm).
    """
    decay, mean_gain, var_end, var_mean, cov = ou_exposure_moments(a)
    x0 = np.asarray(x0, dtype=float)
    v_end = sigma2_nm2 * var_end
    v_mean = sigma2_nm2 * var_mean
    c = sigma2_nm2 * cov
    if np.all(var_end > 0.0):
        beta = c / v_end
        resid = v_mean - c * beta
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(v_end > 0.0, c / v_end, 0.0)
            resid = np.where(v_end > 0.0, v_mean - c * beta, 0.0)
    noise_end = np.sqrt(v_end) * normal_end
    x_end = x0 * decay + noise_end
    x_mean = x0 * mean_gain + beta * noise_end + np.sqrt(np.maximum(resid, 0.0)) * normal_mean
    return x_end, x_mean
