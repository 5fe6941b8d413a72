"""Worm-like-chain (WLC) fit of a force-extension curve.

Units: force pN, lengths nm, thermal energy pN nm, temperature K, stretch modulus pN.

Model. Marko & Siggia (1995) interpolation of the WLC, with the seventh-order polynomial
correction of Bouchiat et al. (1999) (accurate to 0.01 % against the exact WLC); with
x = l / L (relative extension), P the persistence length and L the contour length:

    F P / kT = 1 / (4 (1 - x)^2) - 1/4 + x + sum_{i=2..7} a_i x^i
    a_2..a_7 = -0.5164228, -2.737418, 16.07497, -38.87607, 39.49944, -14.17718

(``model="marko_siggia"`` drops the polynomial). The extensible form (Odijk / Wang et al.
1997) replaces x by x - F / S with S the stretch modulus, i.e. l = L (x_WLC(F) + F / S).

Fit. The force of a force-extension step is set by the magnets (known, from the force
calibration); the mean extension is the noisy quantity. So the fit is weighted least
squares in extension given force: residuals (l_i - l_model(F_i; L, P[, S])) / sigma_i, where
l_model inverts the force law numerically (vectorised bisection then Newton; 1e-12
relative). Without ``extension_err_nm`` all points weigh the same. Standard errors from the
Jacobian, scaled by the reduced chi-square (as scipy's curve_fit does by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from .ou_model import thermal_energy_pn_nm

__all__ = ["WLCFit", "wlc_fit", "wlc_force_pn", "wlc_extension_nm", "BOUCHIAT_COEFFS"]

#: Bouchiat et al. (1999) coefficients a_2 .. a_7.
BOUCHIAT_COEFFS = (-0.5164228, -2.737418, 16.07497, -38.87607, 39.49944, -14.17718)

_MODELS = ("marko_siggia_bouchiat", "marko_siggia")


@dataclass(frozen=True)
class WLCFit:
    """Result of :func:`wlc_fit`: lengths in nm, stretch modulus in pN (inf if inextensible).

    ``*_err`` are one standard error (NaN when not determined); ``stretch_modulus_pn_err`` is
    0 when the modulus was fixed. ``offset_nm`` is the fitted extension offset (0 and
    error 0 when not fitted). ``residual_rms_nm`` is the r.m.s. of the extension
    residuals, ``reduced_chi2`` the weighted residual sum over (n_points - n_parameters).
    """

    contour_nm: float
    persistence_nm: float
    contour_nm_err: float
    persistence_nm_err: float
    stretch_modulus_pn: float
    stretch_modulus_pn_err: float
    model: str
    n_points: int
    residual_rms_nm: float
    reduced_chi2: float
    offset_nm: float = 0.0
    offset_nm_err: float = 0.0


def _reduced_force(x, model: str):
    """f = F P / kT at relative extension x (0 <= x < 1)."""
    x = np.asarray(x, dtype=float)
    f = 0.25 / (1.0 - x) ** 2 - 0.25 + x
    if model == "marko_siggia_bouchiat":
        poly = np.zeros_like(x)
        for a in BOUCHIAT_COEFFS[::-1]:
            poly = (poly + a) * x
        f = f + poly * x  # sum a_i x^i, i = 2..7
    return f


def _reduced_slope(x, model: str):
    """df/dx."""
    x = np.asarray(x, dtype=float)
    d = 0.5 / (1.0 - x) ** 3 + 1.0
    if model == "marko_siggia_bouchiat":
        dp = np.zeros_like(x)
        for i, a in reversed(list(enumerate(BOUCHIAT_COEFFS, start=2))):
            dp = dp * x + i * a
        d = d + dp * x  # sum i a_i x^(i-1)
    return d


def _relative_extension(f, model: str):
    """Invert f(x) = f on [0, 1): 60 vectorised bisection steps, then 2 Newton steps."""
    f = np.asarray(f, dtype=float)
    lo = np.zeros_like(f)
    hi = np.ones_like(f)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _reduced_force(mid, model) > f
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    x = 0.5 * (lo + hi)
    for _ in range(2):
        step = (_reduced_force(x, model) - f) / _reduced_slope(x, model)
        x = np.clip(x - step, lo, hi)
    return np.where(f > 0.0, x, 0.0)


def wlc_force_pn(
    extension_nm,
    contour_nm,
    persistence_nm,
    *,
    temperature_k=296.15,
    model="marko_siggia_bouchiat",
):
    """Force (pN) of an inextensible WLC at extension l (nm); inf for l >= L."""
    _check_model(model)
    kt = thermal_energy_pn_nm(temperature_k)
    x = np.asarray(extension_nm, dtype=float) / np.asarray(contour_nm, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(x < 1.0, _reduced_force(np.minimum(x, 0.999999), model), np.inf)
    return kt / np.asarray(persistence_nm, dtype=float) * f


def wlc_extension_nm(
    force_pn,
    contour_nm,
    persistence_nm,
    *,
    temperature_k=296.15,
    model="marko_siggia_bouchiat",
    stretch_modulus_pn=None,
):
    """Mean extension (nm) at force F (pN): L (x(F P / kT) + F / S); S None = inextensible."""
    _check_model(model)
    kt = thermal_energy_pn_nm(temperature_k)
    force = np.asarray(force_pn, dtype=float)
    contour = np.asarray(contour_nm, dtype=float)
    x = _relative_extension(force * np.asarray(persistence_nm, dtype=float) / kt, model)
    if stretch_modulus_pn is not None:
        x = x + force / float(stretch_modulus_pn)
    return contour * x


def _check_model(model: str) -> None:
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, not {model!r}")


def wlc_fit(
    force_pn,
    extension_nm,
    *,
    temperature_k: float = 296.15,
    model: str = "marko_siggia_bouchiat",
    extensible: bool = False,
    stretch_modulus_pn: float | None = None,
    extension_err_nm=None,
    fit_offset: bool = False,
    max_offset_nm: float = 300.0,
) -> WLCFit:
    """Fit contour and persistence length (and stretch modulus) to a force-extension curve.

    Parameters
    ----------
    force_pn : forces of the steps (pN), one per point.
    extension_nm : mean tether extension at each force (nm), e.g. bead height minus radius
        (drift-subtracted). NaN points are ignored.
    temperature_k : K. model : "marko_siggia_bouchiat" (default) or "marko_siggia".
    extensible : fit l = L (x_WLC(F) + F / S). The stretch modulus S is fitted unless
        ``stretch_modulus_pn`` fixes it (then only L and P are fitted).
    extension_err_nm : optional standard errors of the mean extensions (nm), the weights.
    fit_offset : also fit a constant offset z0 (nm): the measured extension is
        z0 + l(F). Use it when the zero of the extension is uncertain (bead radius spread,
        an unanchored Z-LUT), bounded to +-``max_offset_nm``. Offset, L and P are only
        separable when the forces reach below ~0.3 pN (where l/L falls below 0.7).

    Returns :class:`WLCFit`. Needs at least 3 points (4 when S is fitted) with F > 0; NaN
    otherwise. Use forces from ~0.05 to ~20 pN: the low forces determine P, the high
    forces L (for extensible fits add points above ~10 pN).
    """
    _check_model(model)
    if stretch_modulus_pn is not None and not extensible:
        raise ValueError("stretch_modulus_pn needs extensible=True")
    force = np.asarray(force_pn, dtype=float).ravel()
    ext = np.asarray(extension_nm, dtype=float).ravel()
    if force.shape != ext.shape:
        raise ValueError(f"force and extension differ in length: {force.size} != {ext.size}")
    if extension_err_nm is None:
        sig = np.ones_like(ext)
    else:
        sig = np.broadcast_to(np.asarray(extension_err_nm, dtype=float), ext.shape).copy()
    ok = np.isfinite(force) & np.isfinite(ext) & np.isfinite(sig) & (force > 0) & (sig > 0)
    force, ext, sig = force[ok], ext[ok], sig[ok]
    fit_s = extensible and stretch_modulus_pn is None
    n_par = (3 if fit_s else 2) + (1 if fit_offset else 0)
    i_off = n_par - 1  # index of the offset when fitted
    nan = float("nan")
    s_fixed = float(stretch_modulus_pn) if stretch_modulus_pn is not None else np.inf
    if force.size < n_par + 1:
        return WLCFit(
            nan, nan, nan, nan, nan if fit_s else s_fixed, nan, model, int(force.size), nan, nan
        )
    kt = thermal_energy_pn_nm(temperature_k)

    def model_ext(p):
        length, pers = p[0], p[1]
        inv_s = 1.0 / p[2] if fit_s else (0.0 if not extensible else 1.0 / s_fixed)
        f_red = force * pers / kt
        x = _relative_extension(f_red, model)
        offset = p[i_off] if fit_offset else 0.0
        return offset + length * (x + force * inv_s), x, f_red, inv_s

    def resid(p):
        return (ext - model_ext(p)[0]) / sig

    def jac(p):
        length = p[0]
        _, x, _, inv_s = model_ext(p)
        dxdf = 1.0 / _reduced_slope(x, model)
        cols = [-(x + force * inv_s), -length * dxdf * force / kt]
        if fit_s:
            cols.append(length * force / p[2] ** 2)
        if fit_offset:
            cols.append(-np.ones_like(force))
        return np.stack(cols, axis=1) / sig[:, None]

    # start: P = 50 nm, L from the extensions and the model relative extension at P = 50
    x50 = _relative_extension(force * 50.0 / kt, model)
    l0 = float(np.median(ext / np.maximum(x50, 1e-3)))
    p0 = [l0, 50.0] + ([1000.0] if fit_s else []) + ([0.0] if fit_offset else [])
    lower = [1.0, 0.1] + ([1.0] if fit_s else []) + ([-max_offset_nm] if fit_offset else [])
    upper = [np.inf, 1e5] + ([1e6] if fit_s else []) + ([max_offset_nm] if fit_offset else [])
    res = least_squares(
        resid,
        p0,
        jac=jac,
        bounds=(lower, upper),
        x_scale="jac",
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
        max_nfev=500,
    )
    p = res.x
    dof = force.size - n_par
    chi2 = float(np.sum(res.fun**2))
    red = chi2 / dof if dof > 0 else nan
    try:
        cov = np.linalg.inv(res.jac.T @ res.jac) * (red if np.isfinite(red) else nan)
        errs = np.sqrt(np.maximum(np.diag(cov), 0.0))
    except np.linalg.LinAlgError:
        errs = np.full(n_par, nan)
    rms = float(np.sqrt(np.mean((res.fun * sig) ** 2)))
    return WLCFit(
        contour_nm=float(p[0]),
        persistence_nm=float(p[1]),
        contour_nm_err=float(errs[0]),
        persistence_nm_err=float(errs[1]),
        stretch_modulus_pn=float(p[2]) if fit_s else s_fixed,
        stretch_modulus_pn_err=float(errs[2]) if fit_s else 0.0,
        model=model,
        n_points=int(force.size),
        residual_rms_nm=rms,
        reduced_chi2=red,
        offset_nm=float(p[i_off]) if fit_offset else 0.0,
        offset_nm_err=float(errs[i_off]) if fit_offset else 0.0,
    )
