"""Accuracy of the force calibration (PSD and Allan variance) against the simulator's truth.

Run:  .venv/bin/python benchmarks/bench_force_calibration.py [--beads N] [--rel-error E]

For each force level (0.1 .. 30 pN) and frame rate (100 frames/s with 5 ms exposure, the
simulator's default; 1000 frames/s with 1 ms exposure) it records every tethered bead of a
simulated sample (tethers 2 .. 8 um, bead radius 1.4 um +- 2 %) for the time
``record_length_s(rel_error=E)`` asks for, using the simulator's exact exposure-averaged
Ornstein-Uhlenbeck law (``physics.ou_exposure_moments``: what a camera records, without
drift), and prints per method the median and the 95th percentile of |F / F_true - 1| in %:

- psd:        ``psd_force`` (blurred + aliased spectrum, the default);
- psd plain:  ``psd_force(blur_correction=False, aliasing_correction=False)``, the textbook
              Lorentzian;
- allan:      ``allan_force``.

Also the median corner frequency, record length and the analysis time per bead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import brentq
from scipy.signal import lfilter

from magscope_devices.sim import SimParams, SimWorld, physics
from magscope_plans.analysis import allan_force, psd_force, record_length_s

FORCES_PN = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
RATES = ((100.0, 0.005), (1000.0, 0.001))


def camera_trace(tau_s, var_nm2, fs_hz, exposure_s, n, rng):
    """Exposure-averaged OU positions (nm) sampled at fs, exactly as SimWorld.advance does.

    The start of each exposure follows an AR(1) recursion (exact OU transitions through the
    exposure and the gap); the frame value is drawn jointly with the exposure end point
    from physics.ou_exposure_moments.
    """
    dt = 1.0 / fs_hz
    decay, gain, var_end, var_mean, cov = (
        float(v) for v in physics.ou_exposure_moments(exposure_s / tau_s)
    )
    z = rng.standard_normal((3, n))
    v_end = var_nm2 * var_end
    noise_end = np.sqrt(v_end) * z[1]
    beta = var_nm2 * cov / v_end if v_end > 0 else 0.0
    resid = max(var_nm2 * var_mean - beta * var_nm2 * cov, 0.0)
    gap = dt - exposure_s
    d_gap = np.exp(-gap / tau_s)
    u = np.empty(n)
    u[0] = np.sqrt(var_nm2) * z[0, 0]
    u[1:] = d_gap * noise_end[:-1] + np.sqrt(var_nm2 * -np.expm1(-2 * gap / tau_s)) * z[0, 1:]
    start = lfilter([1.0], [1.0, -decay * d_gap], u)
    return gain * start + beta * noise_end + np.sqrt(resid) * z[2]


def magnet_z_for(force_pn: float, p: SimParams) -> float:
    """Magnet height (mm) at which a bead of force_scale 1 feels ``force_pn``."""

    def f(z):
        return physics.magnet_force(z, p.magnet_f0_pn, p.magnet_a, p.magnet_l1_mm, p.magnet_l2_mm)

    return brentq(lambda z: f(z) - force_pn, -5.0, 40.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beads", type=int, default=20, help="tethered beads (default 20)")
    ap.add_argument("--rel-error", type=float, default=0.05, help="record length target")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    params = SimParams(n_tethered=args.beads, n_reference=0, seed=args.seed)
    world = SimWorld(params)
    table = world.bead_table()
    nt = args.beads
    radius = table["radius_nm"][:nt]
    rng = np.random.default_rng(args.seed)
    contour = table["contour_nm"][:nt]
    print(
        f"{nt} beads, tethers {contour.min():.0f}..{contour.max():.0f} nm, record length for "
        f"{100 * args.rel_error:.0f} % (record_length_s); |error| in %: median / 95th pct"
    )
    header = (
        f"{'fs Hz':>6} {'F pN':>5} {'fc Hz':>7} {'T s':>7} | {'psd':>13} | "
        f"{'psd plain':>13} | {'allan':>13} | {'ms/bead psd, allan':>18}"
    )
    print(header)
    print("-" * len(header))
    t_start = time.perf_counter()
    for fs, w in RATES:
        for f_nom in FORCES_PN:
            z = magnet_z_for(f_nom, params)
            force = world.true_force(z)[:nt]
            ext = world.true_extension(z)[:nt]
            dyn = world.true_dynamics(z)
            t_rec = record_length_s(
                force,
                ext,
                radius,
                fs_hz=fs,
                exposure_s=w,
                rel_error=args.rel_error,
                viscosity_pa_s=params.viscosity_pa_s,
            )
            errs: dict[str, list[float]] = {"psd": [], "plain": [], "allan": []}
            t_psd = t_allan = 0.0
            for b in range(nt):
                n = int(t_rec[b] * fs)
                x = camera_trace(dyn["tau_xy_s"][b], dyn["var_xy_nm2"][b], fs, w, n, rng)
                kw = dict(fs_hz=fs, exposure_s=w, length_nm=ext[b], radius_nm=radius[b])
                t0 = time.perf_counter()
                errs["psd"].append(psd_force(x, **kw).force_pn / force[b] - 1)
                t_psd += time.perf_counter() - t0
                plain = psd_force(x, **kw, blur_correction=False, aliasing_correction=False)
                errs["plain"].append(plain.force_pn / force[b] - 1)
                t0 = time.perf_counter()
                errs["allan"].append(allan_force(x, **kw).force_pn / force[b] - 1)
                t_allan += time.perf_counter() - t0

            def cell(key, errs=errs):
                e = 100 * np.abs(np.asarray(errs[key]))
                if np.any(np.isnan(e)):
                    return f"{'failed ' + str(int(np.isnan(e).sum())):>13}"
                return f"{np.median(e):5.1f} / {np.quantile(e, 0.95):5.1f}"

            print(
                f"{fs:6.0f} {f_nom:5.1f} {np.median(dyn['corner_xy_hz'][:nt]):7.2f} "
                f"{np.median(t_rec):7.1f} | {cell('psd')} | {cell('plain')} | {cell('allan')} | "
                f"{1e3 * t_psd / nt:8.1f}, {1e3 * t_allan / nt:8.1f}",
                flush=True,
            )
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
