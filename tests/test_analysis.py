"""magscope_plans.analysis scored against the simulator's ground truth.

Bead traces come from the simulator's own physics, without images: either
``SimWorld.advance`` frame by frame (exposure-averaged positions ``x_nm``, exactly what a
camera records, with the stage drift) or, for the long records of the force grid, the same
exact exposure-averaged OU process vectorised in time with ``physics.ou_exposure_moments``
(``_camera_trace``; a test checks it against ``SimWorld``). The truth is
``world.true_force``, ``true_extension``, ``true_dynamics``, ``true_buckling_turns``,
``drift_nm`` and the bead table. In the simulator the lateral stiffness is
k_x = k_y = F / (l + R) on both axes (l the mean extension): x is used as "perpendicular
to the field".
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.signal import lfilter

from magscope_devices.sim import SimParams, SimWorld, physics
from magscope_plans.analysis import (
    BucklingResult,
    ForceResult,
    WLCFit,
    allan_force,
    allan_model,
    allan_variance,
    buckling_point,
    expected_corner_hz,
    expected_periodogram,
    mean_and_sem,
    psd_force,
    psd_model,
    record_length_s,
    reference_drift,
    subtract_drift,
    wlc_extension_nm,
    wlc_fit,
    wlc_force_pn,
)
from magscope_plans.analysis.ou_model import sampled_ou_covariance

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _camera_trace(tau_s, var_nm2, fs_hz, exposure_s, n, rng):
    """Exposure-averaged OU positions (nm) at fs: the law of SimWorld.advance, vectorised.

    Per frame: the start x_s evolves to the window end with the exact joint law of (end,
    window mean) (physics.ou_exposure_moments), then over the gap dt - W to the next start.
    So x_s(i+1) = r x_s(i) + e_i (an AR(1) solved with lfilter) and the frame value is
    m_i = gain x_s(i) + beta e_end,i + sqrt(resid) z_i.
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
    v_gap = var_nm2 * -np.expm1(-2.0 * gap / tau_s)
    u = np.empty(n)
    u[0] = np.sqrt(var_nm2) * z[0, 0]
    u[1:] = d_gap * noise_end[:-1] + np.sqrt(v_gap) * z[0, 1:]
    start = lfilter([1.0], [1.0, -decay * d_gap], u)
    return gain * start + beta * noise_end + np.sqrt(resid) * z[2]


def _magnet_z_for(force_pn, p=SimParams()):
    """Magnet height (mm) giving ``force_pn`` for a bead of force_scale 1."""

    def f(z):
        return physics.magnet_force(z, p.magnet_f0_pn, p.magnet_a, p.magnet_l1_mm, p.magnet_l2_mm)

    return brentq(lambda z: f(z) - force_pn, -5.0, 40.0)


def _run_world(world, magnet_z_mm, turns, fs_hz, exposure_s, n_frames, t0):
    """Advance the world n_frames at fs; returns (t, x, y, z) arrays (n_frames, n_beads)."""
    nb = world.n_beads
    out = np.empty((3, n_frames, nb))
    t = t0 + np.arange(n_frames) / fs_hz
    for i in range(n_frames):
        fr = world.advance(t[i], exposure_s, magnet_z_mm, turns, 0.0)
        out[0, i], out[1, i], out[2, i] = fr.x_nm, fr.y_nm, fr.z_nm
    return t, out[0], out[1], out[2]


def _rel_errors(estimates, truth):
    return np.abs(np.asarray(estimates) / np.asarray(truth) - 1.0)


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------


def test_sampled_model_matches_the_simulator_physics_and_brute_force_sums():
    fs, w = 100.0, 0.005
    for fc in (0.3, 8.0, 45.0, 400.0):
        tau = 1.0 / (2 * np.pi * fc)
        c0, c1, r = sampled_ou_covariance(fc, fs, w)
        assert c0 == pytest.approx(float(physics.ou_blur_factor(w / tau)), rel=1e-9)
        # c_1 from the simulator's conditional moments: Cov(m_0, m_1) via the end point
        decay, gain, var_end, var_mean, cov = physics.ou_exposure_moments(w / tau)
        # Cov(m_1, x_start_1) * gain, x_start_1 = e^(-gap/tau) x_end_0, Cov(m_0, x_end_0)
        cov_m0_end = cov + gain * decay * 1.0  # x_start_0 ~ N(0, 1)
        assert c1 == pytest.approx(gain * np.exp(-(1 / fs - w) / tau) * cov_m0_end, rel=1e-9)
        j = np.arange(1, 200000)
        cj = c1 * r ** (j - 1)
        f = np.array([0.5, 7.0, 33.0, 49.0])
        brute = 2 / fs * (c0 + 2 * np.sum(cj * np.cos(2 * np.pi * f[:, None] * j / fs), axis=1))
        assert np.allclose(psd_model(f, fc, fs_hz=fs, exposure_s=w), brute, rtol=1e-8)
        n = 2048
        k = np.array([1, 3, 100, 1000])
        jj = np.arange(1, n)
        cjj = c1 * r ** (jj - 1)
        fk = k * fs / n
        arg = 2 * np.pi * fk[:, None] * jj / fs
        brute_n = 2 / fs * (c0 + 2 * np.sum((1 - jj / n) * cjj * np.cos(arg), axis=1))
        got = expected_periodogram(fk, fc, fs_hz=fs, exposure_s=w, n_samples=n)
        assert np.allclose(got, brute_n, rtol=1e-8)
        for m in (1, 2, 7, 300):
            jm = np.arange(1, 2 * m)
            cm = c1 * r ** (jm - 1)

            def v(mm, jm=jm, cm=cm, c0=c0):
                return mm * c0 + 2 * np.sum(((mm - jm) * cm)[jm < mm])

            brute_av = (2 * v(m) - v(2 * m) / 2) / m**2
            assert allan_model(m, fc, fs_hz=fs, exposure_s=w) == pytest.approx(brute_av, rel=1e-7)
    # without blur and aliasing: the textbook Lorentzian D / (pi^2 (fc^2 + f^2))
    f = np.array([0.1, 1.0, 10.0])
    fc = 2.0
    lor = psd_model(f, fc, fs_hz=100.0, exposure_s=0.005, blur=False, aliasing=False)
    d = 2 * np.pi * fc  # sigma^2 = 1 -> D = 2 pi fc
    assert np.allclose(lor, d / (np.pi**2 * (fc**2 + f**2)))


def test_camera_trace_generator_has_the_statistics_of_simworld():
    """The vectorised generator and SimWorld.advance give the same lag covariances."""
    params = SimParams(n_tethered=20, n_reference=0, seed=11, drift_rms_speed_nm_s=(0, 0, 0))
    world = SimWorld(params)
    z = _magnet_z_for(5.0)
    fs, w, n = 100.0, 0.005, 3000
    _, x, _, _ = _run_world(world, z, 0.0, fs, w, n, 0.0)
    dyn = world.true_dynamics(z)
    anchors = world.bead_table()["anchor_x_nm"]
    rng = np.random.default_rng(5)
    for lag in (0, 1, 3):
        sim, gen = [], []
        for b in range(params.n_tethered):
            xs = x[:, b] - anchors[b]
            xg = _camera_trace(dyn["tau_xy_s"][b], dyn["var_xy_nm2"][b], fs, w, n, rng)
            s2 = dyn["var_xy_nm2"][b]
            sim.append(np.mean(xs[: n - lag] * xs[lag:]) / s2)
            gen.append(np.mean(xg[: n - lag] * xg[lag:]) / s2)
        # same normalised lag covariance on average over 20 beads (3000 frames each)
        assert np.mean(sim) == pytest.approx(np.mean(gen), abs=0.05)
    c0, c1, _ = sampled_ou_covariance(dyn["corner_xy_hz"][0], fs, w)
    assert 0.5 < c0 < 1.0  # there is blur at 5 pN, 100 Hz


def test_expected_corner_frequency_is_the_simulator_truth():
    params = SimParams(n_tethered=12, seed=4)
    world = SimWorld(params)
    table = world.bead_table()
    t = table["tethered"]
    for z in (1.0, 4.0, 8.0):
        fc = expected_corner_hz(
            world.true_force(z)[t],
            world.true_extension(z)[t],
            table["radius_nm"][t],
            temperature_k=params.temperature_k,
            viscosity_pa_s=params.viscosity_pa_s,
        )
        assert np.allclose(fc, world.true_dynamics(z)["corner_xy_hz"][t], rtol=1e-9)
    # the default viscosity is water at the temperature (the simulator's value at 23 C)
    assert expected_corner_hz(1.0, 3000.0, 1400.0) == pytest.approx(
        expected_corner_hz(1.0, 3000.0, 1400.0, viscosity_pa_s=9.33e-4), rel=2e-3
    )


# ---------------------------------------------------------------------------------------
# force calibration over 0.1 .. 30 pN, 2 .. 8 um, 100 Hz and 1 kHz
# ---------------------------------------------------------------------------------------

FORCES_PN = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
RATES = ((100.0, 0.005), (1000.0, 0.001))  # frame rate (Hz), exposure (s)
REL_ERROR = 0.035  # record length rule target: 95 % within 10 % needs ~< 4 %


@pytest.fixture(scope="module")
def force_grid():
    """Force estimates per (frame rate, force level) for 12 beads (6), 2..8 um tethers.

    Each bead is recorded for record_length_s(rel_error=REL_ERROR) at its true force.
    """
    params = SimParams(n_tethered=12, n_reference=0, seed=7)
    world = SimWorld(params)
    table = world.bead_table()
    radius = table["radius_nm"][:12]
    assert table["contour_nm"][:12].min() < 3000 and table["contour_nm"][:12].max() > 7000
    rng = np.random.default_rng(2024)
    out = {}
    for fs, w in RATES:
        for f_nom in FORCES_PN:
            z = _magnet_z_for(f_nom)
            force = world.true_force(z)[:12]
            ext = world.true_extension(z)[:12]
            dyn = world.true_dynamics(z)
            rows = []
            # below 1 pN at 1 kHz the records are 10^6 frames per bead: half the beads (every
            # other one in contour order, so still 2..8 um) keep the test time reasonable
            beads = range(12)
            if fs > 500.0 and f_nom < 1.0:
                beads = np.argsort(table["contour_nm"][:12])[::2]
            for b in beads:
                t_rec = record_length_s(
                    force[b],
                    ext[b],
                    radius[b],
                    fs_hz=fs,
                    rel_error=REL_ERROR,
                    exposure_s=w,
                    viscosity_pa_s=params.viscosity_pa_s,
                )
                n = int(t_rec * fs)
                x = _camera_trace(dyn["tau_xy_s"][b], dyn["var_xy_nm2"][b], fs, w, n, rng)
                kw = dict(fs_hz=fs, exposure_s=w, length_nm=ext[b], radius_nm=radius[b])
                plain = None
                if fs < 500.0 or f_nom >= 1.0:  # the plain Lorentzian, for comparison
                    plain = psd_force(x, **kw, blur_correction=False, aliasing_correction=False)
                rows.append((force[b], psd_force(x, **kw), plain, allan_force(x, **kw), dyn, b))
            out[(fs, f_nom)] = rows
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fs", [r[0] for r in RATES])
@pytest.mark.parametrize("f_nom", FORCES_PN)
@pytest.mark.parametrize("method", ["psd", "allan"])
def test_force_within_5_percent_median(force_grid, fs, f_nom, method):
    rows = force_grid[(fs, f_nom)]
    col = 1 if method == "psd" else 3
    err = _rel_errors([r[col].force_pn for r in rows], [r[0] for r in rows])
    assert np.median(err) < 0.05, err
    assert np.max(err) < 0.15, err
    res = rows[0][col]
    assert isinstance(res, ForceResult) and res.ok and res.n_samples > 0
    assert res.method.startswith(method)


@pytest.mark.slow
@pytest.mark.parametrize("fs", [r[0] for r in RATES])
@pytest.mark.parametrize("method", ["psd", "allan"])
def test_force_within_10_percent_for_95_percent_of_beads(force_grid, fs, method):
    """Pooled over 0.1 .. 30 pN at one frame rate (60 beads)."""
    col = 1 if method == "psd" else 3
    rows = [r for (rate, _), rs in force_grid.items() if rate == fs for r in rs]
    err = _rel_errors([r[col].force_pn for r in rows], [r[0] for r in rows])
    assert len(err) >= 60
    assert np.quantile(err, 0.95) < 0.10, np.sort(err)[-5:]


def test_force_fit_also_gives_stiffness_corner_and_drag(force_grid):
    for (_fs, _f), rows in force_grid.items():
        for force, res, _, _, dyn, b in rows:
            for value, err, key in (
                (res.stiffness_pn_per_nm, res.stiffness_pn_per_nm_err, "k_xy_pn_nm"),
                (res.corner_hz, res.corner_hz_err, "corner_xy_hz"),
                (res.drag_pn_s_per_nm, res.drag_pn_s_per_nm_err, "gamma_xy_pn_s_nm"),
            ):
                assert abs(value - dyn[key][b]) < 4.5 * err, (key, value, dyn[key][b], err)
                assert 0.0 < err < 0.3 * value
            # F = k (l + R): the lever arm of the inverted pendulum
            lever = res.force_pn / res.stiffness_pn_per_nm
            assert lever == pytest.approx(force / dyn["k_xy_pn_nm"][b], rel=1e-9)
            assert res.corner_hz == pytest.approx(
                res.stiffness_pn_per_nm / (2 * np.pi * res.drag_pn_s_per_nm), rel=1e-9
            )


def test_standard_errors_are_calibrated(force_grid):
    """(F - F_true) / F_err is ~N(0, 1) for both methods, pooled over the grid."""
    for col in (1, 3):
        z = np.array(
            [
                (r[col].force_pn - r[0]) / r[col].force_pn_err
                for rows in force_grid.values()
                for r in rows
            ]
        )
        assert 0.75 < np.std(z) < 1.3, np.std(z)
        assert abs(np.mean(z)) < 0.3
        rel = np.array(
            [r[col].force_pn_err / r[col].force_pn for rows in force_grid.values() for r in rows]
        )
        # the record length rule delivered the requested precision
        assert np.median(rel) == pytest.approx(REL_ERROR, rel=0.25)


def test_blur_and_aliasing_corrections_matter_at_high_force_and_low_frame_rate(force_grid):
    def median_err(fs, f_nom, col):
        rows = force_grid[(fs, f_nom)]
        return np.median(_rel_errors([r[col].force_pn for r in rows], [r[0] for r in rows]))

    # 100 Hz, 30 pN (fc ~ 20-50 Hz, near Nyquist): the plain Lorentzian is far off
    corrected = median_err(100.0, 30.0, 1)
    plain = median_err(100.0, 30.0, 2)
    assert plain > 0.15 and plain > 5 * corrected, (plain, corrected)
    assert median_err(100.0, 10.0, 2) > 2 * median_err(100.0, 10.0, 1)
    # the plain model always underestimates there (blur hides high-frequency power)
    rows = force_grid[(100.0, 30.0)]
    assert all(r[2].force_pn < r[0] for r in rows)
    # and at 1 kHz, or at low force, it hardly matters
    assert median_err(1000.0, 1.0, 2) < 0.05
    assert median_err(100.0, 0.3, 2) < 0.05


def test_each_correction_alone_is_not_enough_at_100_hz():
    """Blur only or aliasing only is still biased at 30 pN, 100 Hz; both together are not."""
    params = SimParams(n_tethered=12, n_reference=0, seed=17)
    world = SimWorld(params)
    z = _magnet_z_for(30.0)
    tab, dyn = world.bead_table(), world.true_dynamics(z)
    force, ext = world.true_force(z), world.true_extension(z)
    rng = np.random.default_rng(12)
    errs: dict[tuple[bool, bool], list[float]] = {}
    for b in range(12):
        x = _camera_trace(dyn["tau_xy_s"][b], dyn["var_xy_nm2"][b], 100.0, 0.005, 4000, rng)
        kw = dict(fs_hz=100.0, exposure_s=0.005, length_nm=ext[b], radius_nm=tab["radius_nm"][b])
        for flags in ((True, True), (True, False), (False, True)):
            r = psd_force(x, **kw, blur_correction=flags[0], aliasing_correction=flags[1])
            assert r.method.startswith("psd (")
            errs.setdefault(flags, []).append(abs(r.force_pn / force[b] - 1))
    both = np.median(errs[(True, True)])
    assert both < 0.05
    assert np.median(errs[(True, False)]) > 2 * both
    assert np.median(errs[(False, True)]) > 2 * both


def test_fit_range_can_exclude_residual_drift():
    """Slow residual drift biases the lowest bins; f_min_hz leaves it out."""
    rng = np.random.default_rng(6)
    fs, w, fc, var = 100.0, 0.005, 5.0, 400.0
    kt = 1.380649e-2 * 296.15
    lever = 4000.0
    true_force = kt / var * lever
    n = 60000
    t = np.arange(n) / fs
    forces = {}
    for f_min in (None, 0.5):
        est = []
        for _ in range(6):
            x = _camera_trace(1 / (2 * np.pi * fc), var, fs, w, n, rng)
            x += 60.0 * np.sin(2 * np.pi * t / 200.0 + rng.uniform(0, 6.3))  # 200 s wander
            r = psd_force(
                x,
                fs_hz=fs,
                exposure_s=w,
                length_nm=lever - 1400.0,
                radius_nm=1400.0,
                f_min_hz=f_min,
                f_max_hz=45.0,
            )
            est.append(r.force_pn / true_force - 1)
        forces[f_min] = np.median(np.abs(est))
    assert forces[0.5] < 0.05 < forces[None]


# ---------------------------------------------------------------------------------------
# the whole chain on SimWorld frames: drift, reference beads, PSD and Allan
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("f_nom", "fs", "exposure"), [(10.0, 100.0, 0.005), (30.0, 100.0, 0.005), (30.0, 1000.0, 0.001)]
)
def test_force_from_simworld_frames_after_drift_subtraction(f_nom, fs, exposure):
    params = SimParams(n_tethered=16, n_reference=4, seed=21, drift_rms_speed_nm_s=(5, 5, 2))
    world = SimWorld(params)
    z = _magnet_z_for(f_nom)
    table = world.bead_table()
    t = table["tethered"]
    force = world.true_force(z)[t]
    ext = world.true_extension(z)[t]
    radius = table["radius_nm"][t]
    t_rec = np.max(
        record_length_s(force, ext, radius, fs_hz=fs, exposure_s=exposure, rel_error=REL_ERROR)
    )
    n = int(t_rec * fs)
    _, x, _, _ = _run_world(world, z, 0.0, fs, exposure, n, 1000.0)
    xc = subtract_drift(x[:, t], x[:, ~t])
    errs, errs_plain = [], []
    for b in range(t.sum()):
        kw = dict(fs_hz=fs, exposure_s=exposure, length_nm=ext[b], radius_nm=radius[b])
        errs.append(psd_force(xc[:, b], **kw).force_pn / force[b] - 1)
        errs.append(allan_force(xc[:, b], **kw).force_pn / force[b] - 1)
        errs_plain.append(
            psd_force(xc[:, b], **kw, blur_correction=False, aliasing_correction=False).force_pn
            / force[b]
            - 1
        )
    errs = np.abs(errs)
    assert np.median(errs) < 0.05 and np.quantile(errs, 0.95) < 0.10, errs
    if fs == 100.0 and f_nom == 30.0:
        assert np.median(np.abs(errs_plain)) > 0.15


def test_fixed_drag_option_uses_the_faxen_drag():
    params = SimParams(n_tethered=8, n_reference=0, seed=3)
    world = SimWorld(params)
    z = _magnet_z_for(2.0)
    tab = world.bead_table()
    dyn = world.true_dynamics(z)
    force, ext = world.true_force(z), world.true_extension(z)
    rng = np.random.default_rng(8)
    errs = []
    for b in range(8):
        x = _camera_trace(dyn["tau_xy_s"][b], dyn["var_xy_nm2"][b], 100.0, 0.005, 20000, rng)
        r = psd_force(
            x,
            fs_hz=100.0,
            exposure_s=0.005,
            length_nm=ext[b],
            radius_nm=tab["radius_nm"][b],
            viscosity_pa_s=params.viscosity_pa_s,
        )
        assert r.drag_pn_s_per_nm == pytest.approx(dyn["gamma_xy_pn_s_nm"][b], rel=1e-9)
        assert r.drag_pn_s_per_nm_err == 0.0 and "fixed drag" in r.method
        errs.append(r.force_pn / force[b] - 1)
    assert np.median(np.abs(errs)) < 0.05


def test_record_length_rule():
    fc = expected_corner_hz(1.0, 3000.0, 1400.0)
    t = record_length_s(1.0, 3000.0, 1400.0, fs_hz=1000.0, rel_error=0.05)
    # fc << fs: the classical 1 / (pi fc eps^2)
    assert t == pytest.approx(1.0 / (np.pi * fc * 0.05**2), rel=0.03)
    # precision costs T ~ 1 / eps^2; lower force (lower fc) needs longer records
    assert record_length_s(1.0, 3000.0, 1400.0, fs_hz=1000.0, rel_error=0.025) == pytest.approx(
        4 * t, rel=0.03
    )
    assert record_length_s(0.1, 3000.0, 1400.0, fs_hz=1000.0) > 5 * t
    # near or above Nyquist it costs more than the classical rule, far above it is hopeless
    fc30 = expected_corner_hz(30.0, 2000.0, 1400.0)
    t30 = record_length_s(30.0, 2000.0, 1400.0, fs_hz=100.0, exposure_s=0.005)
    assert t30 > 2.0 / (np.pi * fc30 * 0.05**2)
    assert record_length_s(1000.0, 1000.0, 1400.0, fs_hz=100.0, exposure_s=0.005) > 1e4
    arr = record_length_s([0.5, 5.0], [3000.0, 4000.0], 1400.0, fs_hz=100.0)
    assert arr.shape == (2,) and arr[0] > arr[1]
    with pytest.raises(ValueError):
        record_length_s(1.0, 3000.0, 1400.0, fs_hz=100.0, rel_error=0.0)


def test_failure_modes_give_nan_not_garbage():
    rng = np.random.default_rng(0)
    kw = dict(fs_hz=100.0, exposure_s=0.005, length_nm=3000.0, radius_nm=1400.0)
    # too short
    assert not psd_force(rng.normal(size=40), **kw).ok
    assert not allan_force(rng.normal(size=40), **kw).ok
    # white noise: corner frequency far above the frame rate, not identifiable
    white = rng.normal(0, 10, 20000)
    assert np.isnan(psd_force(white, **kw).force_pn)
    # too many lost frames
    x = _camera_trace(0.05, 1e4, 100.0, 0.005, 20000, rng)
    lost = x.copy()
    lost[rng.choice(20000, 1000, replace=False)] = np.nan
    assert np.isnan(psd_force(lost, **kw).force_pn)
    # a few lost frames are interpolated, NaN edges trimmed
    few = x.copy()
    few[rng.choice(20000, 50, replace=False)] = np.nan
    few[:10] = np.nan
    r_few, r_all = psd_force(few, **kw), psd_force(x, **kw)
    assert r_few.ok and r_few.force_pn == pytest.approx(r_all.force_pn, rel=0.03)
    assert r_few.n_samples == 20000 - 10
    # bad arguments are errors
    with pytest.raises(ValueError):
        psd_force(x, fs_hz=100.0, exposure_s=0.02, length_nm=3000.0, radius_nm=1400.0)
    with pytest.raises(ValueError):
        psd_force(np.zeros((10, 10)), **kw)
    with pytest.raises(ValueError):
        psd_force(x, fs_hz=100.0, exposure_s=0.005, length_nm=3000.0, radius_nm=0.0)


def test_allan_variance_estimator_matches_its_model():
    rng = np.random.default_rng(3)
    fs, w, fc = 100.0, 0.005, 4.0
    tau = 1 / (2 * np.pi * fc)
    m = np.array([1, 2, 4, 16, 64])
    avs = np.mean(
        [allan_variance(_camera_trace(tau, 100.0, fs, w, 40000, rng), m) for _ in range(5)],
        axis=0,
    )
    model = 100.0 * allan_model(m, fc, fs_hz=fs, exposure_s=w)
    assert np.allclose(avs, model, rtol=0.05)


# ---------------------------------------------------------------------------------------
# worm-like chain
# ---------------------------------------------------------------------------------------


def test_wlc_model_is_the_simulators_law():
    f = np.geomspace(0.02, 50, 40)
    ext = wlc_extension_nm(f, 5000.0, 47.0)
    assert np.allclose(ext, physics.wlc_extension(f, 5000.0, 47.0), rtol=1e-10)
    assert np.allclose(wlc_force_pn(ext, 5000.0, 47.0), f, rtol=1e-9)
    exact = wlc_fit(f, ext)
    assert exact.contour_nm == pytest.approx(5000.0, rel=1e-7)
    assert exact.persistence_nm == pytest.approx(47.0, rel=1e-6)
    stretched = wlc_extension_nm(f, 5000.0, 47.0, stretch_modulus_pn=1000.0)
    ext_fit = wlc_fit(f, stretched, extensible=True)
    assert ext_fit.stretch_modulus_pn == pytest.approx(1000.0, rel=1e-4)
    fixed = wlc_fit(f, stretched, extensible=True, stretch_modulus_pn=1000.0)
    assert fixed.contour_nm == pytest.approx(5000.0, rel=1e-7)
    assert fixed.stretch_modulus_pn_err == 0.0
    ms = wlc_fit(f, wlc_extension_nm(f, 5000.0, 47.0, model="marko_siggia"), model="marko_siggia")
    assert ms.persistence_nm == pytest.approx(47.0, rel=1e-6)
    with pytest.raises(ValueError):
        wlc_fit(f, ext, stretch_modulus_pn=1000.0)
    with pytest.raises(ValueError):
        wlc_fit(f, ext, model="freely_jointed")
    assert np.isnan(wlc_fit(f[:2], ext[:2]).contour_nm)


@pytest.mark.slow
def test_wlc_fit_of_simulated_force_extension_steps():
    """Force steps 0.1 .. 20 pN like a force-extension plan; mean z per step from frames."""
    params = SimParams(n_tethered=20, n_reference=4, seed=5)
    world = SimWorld(params)
    tab = world.bead_table()
    t = tab["tethered"]
    fs = 100.0
    forces = np.geomspace(0.1, 20.0, 10)
    t0 = 0.0
    chunks, steps, true_f = [], [], []
    for f_nom in forces:
        z_mag = _magnet_z_for(f_nom)
        tau_z = np.nanmax(world.true_dynamics(z_mag)["tau_z_s"])
        settle = int(np.ceil(5 * tau_z * fs))  # let the bead relax to the new force
        n = settle + int((20.0 if f_nom < 0.5 else 5.0) * fs)
        _, _, _, zz = _run_world(world, z_mag, 0.0, fs, 0.005, n, t0)
        t0 += n / fs
        steps.append(np.arange(n) >= settle)
        chunks.append(zz)
        true_f.append(world.true_force(z_mag)[t])
    # drift correction over the whole run (reference beads, from the first frames)
    zc = subtract_drift(np.concatenate(chunks)[:, t], np.concatenate(chunks)[:, ~t])
    zc -= tab["radius_nm"][t]
    means, sems = [], []
    start = 0
    for use in steps:
        block = zc[start : start + use.size][use]
        start += use.size
        ms = [mean_and_sem(block[:, b]) for b in range(t.sum())]
        means.append([m[0] for m in ms])
        sems.append([m[1] for m in ms])
    means, sems, true_f = np.array(means), np.array(sems), np.array(true_f)
    lc_err, lp_err = [], []
    for b in range(t.sum()):
        fit = wlc_fit(true_f[:, b], means[:, b], extension_err_nm=sems[:, b])
        assert isinstance(fit, WLCFit) and fit.n_points == forces.size
        lc_err.append(fit.contour_nm / tab["contour_nm"][b] - 1)
        lp_err.append(fit.persistence_nm / tab["persistence_nm"][b] - 1)
        assert 0.2 < fit.reduced_chi2 < 5.0
    lc_err, lp_err = np.abs(lc_err), np.abs(lp_err)
    assert np.all(lc_err < 0.03), lc_err
    assert np.quantile(lp_err, 0.95) < 0.15 and np.median(lp_err) < 0.08, lp_err


# ---------------------------------------------------------------------------------------
# supercoiling
# ---------------------------------------------------------------------------------------


def _hat_scan(world, z_mag, fs, seconds_per_turn, max_turns, t0=0.0):
    """Mean drift-corrected extension per turn step (like rotation_extension)."""
    tab = world.bead_table()
    t = tab["tethered"]
    turns = np.arange(-max_turns, max_turns + 1, 1.0)
    settle = int(0.3 * fs)
    n = settle + int(seconds_per_turn * fs)
    ext = np.empty((turns.size, t.sum()))
    sem = np.empty_like(ext)
    for i, nt in enumerate(turns):
        _, _, _, zz = _run_world(world, z_mag, nt, fs, 0.005, n, t0 + i * n / fs)
        # reference beads sit at z = R + drift: subtract their drift (absolute, from t = 0)
        zc = zz[settle:, t] - (zz[settle:, ~t] - tab["radius_nm"][~t]).mean(axis=1)[:, None]
        for b in range(t.sum()):
            ext[i, b], sem[i, b] = mean_and_sem(zc[:, b] - tab["radius_nm"][b])
    return turns, ext, sem


@pytest.mark.slow
def test_buckling_point_of_simulated_hat_curves():
    """0.5 pN, 16 tethers of 2..5 um, 1-turn steps of 3 s (like rotation_extension)."""
    params = SimParams(n_tethered=16, n_reference=2, seed=9, contour_nm_range=(2000.0, 5000.0))
    world = SimWorld(params)
    tab = world.bead_table()
    z_mag = _magnet_z_for(0.5)
    nb_pos, nb_neg = world.true_buckling_turns(z_mag)
    t = tab["tethered"]
    assert np.all(np.isfinite(nb_neg[t]))  # below the melting force: both sides buckle
    max_turns = int(np.nanmax(nb_pos[t]) + 12)
    turns, ext, sem = _hat_scan(world, z_mag, 100.0, 3.0, max_turns)
    errs, zs = [], []
    for b in range(t.sum()):
        r = buckling_point(turns, ext[:, b], extension_err_nm=sem[:, b])
        assert isinstance(r, BucklingResult)
        errs += [r.positive_turns - nb_pos[b], r.negative_turns - nb_neg[b]]
        zs += [errs[-2] / r.positive_turns_err, errs[-1] / r.negative_turns_err]
        slope = physics.plectoneme_slope(world.true_force(z_mag)[b], 1.0, tab["persistence_nm"][b])
        assert r.positive_slope_nm_per_turn == pytest.approx(slope, rel=0.1)
        assert r.negative_slope_nm_per_turn == pytest.approx(slope, rel=0.1)
        assert r.plateau_nm == pytest.approx(world.true_extension(z_mag)[b], rel=0.02)
    errs = np.abs(errs)
    assert np.median(errs) < 0.25, errs
    assert np.quantile(errs, 0.95) < 0.5, errs
    assert np.max(errs) < 0.75, errs
    assert 0.6 < np.std(zs) < 1.5, zs  # honest error bars


@pytest.mark.slow
def test_no_negative_buckling_above_the_melting_force():
    params = SimParams(n_tethered=4, n_reference=2, seed=2, contour_nm_range=(2000.0, 3500.0))
    world = SimWorld(params)
    z_mag = _magnet_z_for(2.0)
    nb_pos, nb_neg = world.true_buckling_turns(z_mag)
    assert np.all(np.isnan(nb_neg[:4]))
    t = world.bead_table()["tethered"]
    turns, ext, sem = _hat_scan(world, z_mag, 100.0, 1.0, int(np.nanmax(nb_pos[t]) + 15))
    for b in range(4):
        r = buckling_point(turns, ext[:, b], extension_err_nm=sem[:, b])
        assert abs(r.positive_turns - nb_pos[b]) < 0.5
        assert np.isnan(r.negative_turns) and np.isnan(r.negative_slope_nm_per_turn)
    # a nicked (or never buckling) tether: both NaN
    flat = buckling_point(turns, 3000.0 + np.random.default_rng(1).normal(0, 10, turns.size))
    assert np.isnan(flat.positive_turns) and np.isnan(flat.negative_turns)
    assert flat.plateau_nm == pytest.approx(3000.0, abs=5.0)


# ---------------------------------------------------------------------------------------
# drift
# ---------------------------------------------------------------------------------------


def test_subtract_drift_removes_the_simulated_drift():
    params = SimParams(n_tethered=6, n_reference=5, seed=13, drift_rms_speed_nm_s=(4, 4, 2))
    world = SimWorld(params)
    fs, n = 100.0, 6000
    tt, x, y, z = _run_world(world, 4.0, 0.0, fs, 0.005, n, 500.0)
    tab = world.bead_table()
    t = tab["tethered"]
    true_dx = np.array([world.drift_nm(ti, 0.005)[0] for ti in tt])
    true_dz = np.array([world.drift_nm(ti, 0.005)[2] for ti in tt])
    assert np.ptp(true_dx) > 100.0  # there is drift to remove
    for axis, truth in ((x, true_dx), (z, true_dz)):
        corrected = subtract_drift(axis[:, t], axis[:, ~t])
        ideal = axis[:, t] - truth[:, None]
        diff = corrected - ideal
        # exactly the drift, up to the (tiny) drift during the 10 baseline frames
        assert np.ptp(diff) < 1e-6
        assert abs(diff[0, 0] - truth[:10].mean()) < 1e-6
    # noisy, partly lost reference beads; mean and median
    rng = np.random.default_rng(1)
    ref = x[:, ~t] + rng.normal(0, 2.0, (n, 5))
    ref[rng.random((n, 5)) < 0.1] = np.nan
    ref[100:200, :] = np.nan  # all lost: NaN there
    for method in ("mean", "median"):
        corr = subtract_drift(x[:, t], ref, method=method)
        d = corr - (x[:, t] - true_dx[:, None])
        good = np.isfinite(d[:, 0])
        assert np.all(np.isnan(d[100:200])) and good.sum() == n - 100
        assert np.std(d[good, 0]) < 2.0 and abs(np.mean(d[good, 0])) < 2.0
    # 1-D input and the drift alone
    one = subtract_drift(x[:, 0], x[:, ~t][:, 0])
    assert one.shape == (n,)
    drift = reference_drift(x[:, ~t])
    assert np.allclose(drift - drift[:10].mean(), true_dx - true_dx[:10].mean(), atol=1e-6)
    with pytest.raises(ValueError):
        subtract_drift(x[:, t], x[:-1, ~t])
    with pytest.raises(ValueError):
        subtract_drift(x[:, t], x[:, ~t], method="mode")


def test_mean_and_sem_is_honest_for_correlated_traces():
    rng = np.random.default_rng(4)
    fs, tau = 100.0, 0.5  # 50 correlated frames
    means, sems = [], []
    for _ in range(200):
        x = _camera_trace(tau, 100.0, fs, 0.005, 5000, rng)
        m, s = mean_and_sem(x)
        means.append(m)
        sems.append(s)
    true_sem = np.std(means)
    assert np.median(sems) == pytest.approx(true_sem, rel=0.2)
    naive = 10.0 / np.sqrt(5000)
    assert np.median(sems) > 5 * naive


def test_wlc_fit_with_a_free_offset_recovers_length_and_offset():
    kt = physics.thermal_energy(296.15)
    force = np.geomspace(0.05, 20.0, 14)
    ext = physics.wlc_extension(force, 3000.0, 48.0, kt)
    rng = np.random.default_rng(4)
    measured = ext + 45.0 + rng.normal(0.0, 2.0, force.size)  # radius difference + noise
    plain = wlc_fit(force, measured, extension_err_nm=2.0)
    fit = wlc_fit(force, measured, extension_err_nm=2.0, fit_offset=True)
    assert abs(fit.offset_nm - 45.0) < 3 * fit.offset_nm_err + 1.0
    assert abs(fit.contour_nm / 3000.0 - 1) < 0.005
    assert abs(fit.persistence_nm / 48.0 - 1) < 0.05
    assert abs(plain.contour_nm / 3000.0 - 1) > abs(fit.contour_nm / 3000.0 - 1)
    assert plain.offset_nm == 0.0 and plain.offset_nm_err == 0.0
