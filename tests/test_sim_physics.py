"""Physics of the simulated microscope: WLC, magnets, drag, hat curve, exact OU, world."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import eigh_tridiagonal
from scipy.optimize import curve_fit
from scipy.signal import welch

from magscope_devices.sim import physics
from magscope_devices.sim.world import SimParams, SimWorld

KT = physics.KT_296_PN_NM
NO_DRIFT = (0.0, 0.0, 0.0)


def _many_beads(**kw) -> SimParams:
    """Many tethered beads packed closely (physics tests do not render)."""
    base = dict(n_tethered=40, n_reference=2, min_spacing_px=20.0, drift_rms_speed_nm_s=NO_DRIFT)
    base.update(kw)
    return SimParams(**base)


# ------------------------------------------------------------------------------ WLC


def _exact_wlc_relative_extension(f: float, lmax: int = 300) -> float:
    """<cos theta> of the exact WLC at reduced force f = F P / kT (transfer matrix).

    Ground state of H = -1/2 Laplacian_sphere - f cos(theta) in the Legendre basis.
    """
    ell = np.arange(lmax + 1)
    diag = ell * (ell + 1) / 2.0
    coup = (ell[:-1] + 1) / np.sqrt((2 * ell[:-1] + 1) * (2 * ell[:-1] + 3))
    _, vec = eigh_tridiagonal(diag, -f * coup, select="i", select_range=(0, 0))
    g = vec[:, 0]
    return float(2.0 * np.sum(g[:-1] * g[1:] * coup))


def test_wlc_bouchiat_matches_exact_chain():
    # Bouchiat et al. claim ~0.01 %; over 0.05 .. 100 pN (P = 50 nm) we allow 0.05 %
    for force in (0.05, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
        f = force * 50.0 / KT
        exact = _exact_wlc_relative_extension(f)
        model = physics.wlc_extension(force, 1.0, 50.0)
        assert model == pytest.approx(exact, rel=5e-4), force


def test_wlc_inverse_is_exact_and_vectorised():
    rng = np.random.default_rng(1)
    force = 10 ** rng.uniform(-3, 2.5, 2000)
    contour = rng.uniform(500, 20000, 2000)
    pers = rng.uniform(30, 60, 2000)
    ext = physics.wlc_extension(force, contour, pers, KT)
    assert ext.shape == force.shape
    assert np.all((ext > 0) & (ext < contour))
    np.testing.assert_allclose(physics.wlc_force(ext, contour, pers, KT), force, rtol=1e-9)
    # and the other way round: extension recovered to < 1e-6 relative
    x = rng.uniform(0.001, 0.999, 2000)
    f = physics.wlc_force(x * contour, contour, pers, KT)
    np.testing.assert_allclose(physics.wlc_extension(f, contour, pers, KT), x * contour, rtol=1e-9)
    assert physics.wlc_extension(0.0, 1000.0, 50.0) == 0.0
    # Marko-Siggia limits: small force x = 2 F P / (3 kT)
    small = physics.wlc_extension(1e-5, 1000.0, 50.0, KT)
    assert small == pytest.approx(1000.0 * 2 * 1e-5 * 50 / (3 * KT), rel=1e-4)


def test_wlc_stiffness_is_the_slope():
    ext = np.linspace(100.0, 4900.0, 25)
    h = 1e-3
    num = (physics.wlc_force(ext + h, 5000, 47) - physics.wlc_force(ext - h, 5000, 47)) / (2 * h)
    np.testing.assert_allclose(physics.wlc_stiffness(ext, 5000, 47), num, rtol=1e-6)


# ------------------------------------------------------------------------------ magnets, drag


def test_magnet_force_range_and_monotonic():
    z = np.linspace(0.3, 10.0, 200)
    f = physics.magnet_force(z)
    assert np.all(np.diff(f) < 0)
    assert 40.0 <= f[0] <= 60.0
    assert 0.03 <= f[-1] <= 0.08


def test_world_force_monotonic_with_bead_spread():
    world = SimWorld(_many_beads(n_tethered=150, min_spacing_px=12.0, force_scale_cv=0.03))
    z = np.linspace(0.3, 10.0, 50)
    forces = np.array([world.true_force(zz) for zz in z])  # (heights, beads)
    tethered = world.tethered
    assert np.all(np.isnan(forces[:, ~tethered]))
    ft = forces[:, tethered]
    assert np.all(np.diff(ft, axis=0) < 0)
    # the bead-to-bead spread is a per-bead factor: same at every height, about 3 %
    rel = ft / np.mean(ft, axis=1, keepdims=True)
    np.testing.assert_allclose(rel, rel[0:1].repeat(len(z), axis=0), rtol=1e-12)
    assert 0.02 < np.std(rel[0]) < 0.04
    np.testing.assert_allclose(
        rel[0] / np.mean(rel[0]),
        world.force_scale[tethered] / np.mean(world.force_scale[tethered]),
        rtol=1e-12,
    )


def test_surface_drag_corrections():
    assert physics.stokes_drag(1000.0, 1e-3) == pytest.approx(6 * np.pi * 1e-9 * 1000.0)
    far = physics.faxen_lateral_factor(1400.0, 1e7)
    assert far == pytest.approx(1.0, abs=1e-3)
    h = np.array([1500.0, 2000.0, 3000.0, 6000.0, 20000.0])
    lat = physics.faxen_lateral_factor(1400.0, h)
    ver = physics.brenner_vertical_factor(1400.0, h)
    assert np.all(np.diff(lat) < 0) and np.all(np.diff(ver) < 0)
    assert np.all(ver > lat)  # normal motion is hindered more than lateral
    # first-order (method of reflections) limits far from the wall
    q = 1400.0 / 20000.0
    assert lat[-1] == pytest.approx(1 / (1 - 9 / 16 * q), rel=1e-3)
    assert ver[-1] == pytest.approx(1 / (1 - 9 / 8 * q), rel=1e-3)
    assert physics.water_viscosity(296.15) == pytest.approx(9.33e-4, rel=0.01)


# ------------------------------------------------------------------------------ hat curve


def test_hat_curve_shape_and_buckling_point():
    length, pers = 5000.0, 47.0
    force = 0.5
    l0 = physics.wlc_extension(force, length, pers)
    nb = physics.buckling_turns(force, length, pers)
    slope = physics.plectoneme_slope(force, length, pers)
    assert 10 < nb < 60 and 40 < slope < 120
    n = np.linspace(-3 * nb, 3 * nb, 601)
    ext = physics.supercoil_extension(n, force, length, pers)
    # plateau at 0 turns is the WLC extension; flat to within the slight rounding
    assert physics.supercoil_extension(0.0, force, length, pers) == pytest.approx(l0, rel=1e-9)
    inner = np.abs(n) < 0.5 * nb
    assert np.all(ext[inner] <= l0 + 1e-9) and np.all(ext[inner] > 0.99 * l0)
    # symmetric below the melting force (the melting sigmoid is 1 - 5e-5 at 0.5 pN)
    np.testing.assert_allclose(ext, ext[::-1], rtol=0, atol=1e-3 * l0)
    # linear decrease with the plectoneme slope far beyond the buckling point
    far = (n > nb + 6) & (ext > 0)
    fit = np.polyfit(n[far], ext[far], 1)
    assert -fit[0] == pytest.approx(slope, rel=1e-3)
    # two-line estimate: the post-buckling line meets the plateau level at n_b
    plateau = physics.supercoil_extension(nb, force, length, pers, corner_width_turns=1e-6)
    n_cross = (fit[1] - plateau) / -fit[0]
    assert n_cross == pytest.approx(nb, abs=0.05)
    # the slope decreases with force and the buckling point moves out
    assert physics.plectoneme_slope(2.0, length, pers) < slope
    assert physics.buckling_turns(2.0, length, pers) > nb


def test_hat_curve_melting_above_one_pn():
    length, pers = 4000.0, 47.0
    for force, buckles in ((0.4, True), (3.0, False)):
        nb = physics.buckling_turns(force, length, pers)
        l0 = physics.wlc_extension(force, length, pers)
        neg = physics.supercoil_extension(-2 * nb, force, length, pers)
        pos = physics.supercoil_extension(2 * nb, force, length, pers)
        assert pos < l0 - 0.5 * physics.plectoneme_slope(force, length, pers) * nb
        if buckles:
            assert neg == pytest.approx(pos, rel=1e-3)
        else:
            assert neg > 0.97 * l0


def test_world_true_buckling_and_extension_with_turns():
    world = SimWorld(_many_beads(n_tethered=10))
    low, high = 6.5, 2.0  # mm: ~0.35 pN and ~10 pN
    f_low = world.true_force(low)
    assert np.nanmax(f_low) < 1.0 and np.nanmin(world.true_force(high)) > 1.0
    pos, neg = world.true_buckling_turns(low)
    t = world.tethered
    np.testing.assert_allclose(neg[t], -pos[t])
    assert np.all(np.isnan(pos[~t]))
    _, neg_high = world.true_buckling_turns(high)
    assert np.all(np.isnan(neg_high))
    turns = 1.5 * np.nanmax(pos)
    ext0 = world.true_extension(low, 0.0)
    ext = world.true_extension(low, turns)
    assert np.all(ext[t] < ext0[t]) and np.all(ext[~t] == 0)
    expected = physics.supercoil_extension(
        turns, f_low[t], world.contour_nm[t], world.persistence_nm[t], world.params.kt_pn_nm
    )
    np.testing.assert_allclose(ext[t], expected, rtol=1e-12)
    # the simulated bead height follows the extension with turns
    zs = []
    for i in range(400):
        zs.append(world.advance(0.05 * i, 0.0, low, turns, 0.0).z0_nm)
    zmean = np.mean(zs[50:], axis=0)
    np.testing.assert_allclose(zmean[t] - world.radius_nm[t], ext[t], atol=60.0)


# ------------------------------------------------------------------------------ exact OU


def test_ou_moments_match_quadrature():
    """The closed forms against direct numerical integration of the OU covariance."""
    tau, sigma2 = 1.0, 1.0
    for a in (1e-6, 1e-3, 0.02, 0.3, 1.0, 4.0, 30.0):
        w = a * tau
        t = np.linspace(0.0, w, 2001)
        cov = sigma2 * np.exp(-np.abs(t[:, None] - t[None, :]) / tau)
        wt = np.full(t.size, t[1] - t[0])
        wt[[0, -1]] *= 0.5
        wt /= w
        var_stat_m = wt @ cov @ wt
        cov_m_x0 = wt @ cov[:, 0]
        cov_m_xw = wt @ cov[:, -1]
        cov_xw_x0 = cov[-1, 0]
        decay, gain, v_end, v_mean, c = physics.ou_exposure_moments(a)
        assert decay == pytest.approx(cov_xw_x0, rel=1e-12)
        assert gain == pytest.approx(cov_m_x0, rel=1e-4)
        assert v_end == pytest.approx(sigma2 - cov_xw_x0**2, rel=1e-9)
        assert v_mean == pytest.approx(var_stat_m - cov_m_x0**2, rel=1e-4, abs=1e-12)
        assert c == pytest.approx(cov_m_xw - cov_xw_x0 * cov_m_x0, rel=1e-4, abs=1e-12)
        assert physics.ou_blur_factor(a) == pytest.approx(var_stat_m, rel=1e-4)


@pytest.mark.slow
def test_variance_equipartition_and_mean_extension():
    """Var(x) = kT (l + R) / F, Var(z) = kT / k_z and <z> - R = WLC(F), irregular frames."""
    world = SimWorld(_many_beads())
    mag = 3.5  # mm, ~3 pN
    dyn = world.true_dynamics(mag)
    t = world.tethered
    tau_max = np.nanmax(dyn["tau_xy_s"])
    rng = np.random.default_rng(7)
    n = 12000
    times = np.cumsum(rng.uniform(1.5, 3.0, n) * tau_max)  # irregular frame times
    x0 = np.empty((n, world.n_beads))
    y0 = np.empty_like(x0)
    z0 = np.empty_like(x0)
    for i, ts in enumerate(times):
        tr = world.advance(ts, 0.0, mag, 0.0, 0.0)
        x0[i], y0[i], z0[i] = tr.x0_nm, tr.y0_nm, tr.z0_nm
    force = world.true_force(mag)[t]
    ext = physics.wlc_extension(force, world.contour_nm[t], world.persistence_nm[t], KT)
    expected = KT * (ext + world.radius_nm[t]) / force
    np.testing.assert_allclose(expected, dyn["var_xy_nm2"][t], rtol=1e-12)
    for pos in (x0, y0):
        ratio = pos[:, t].var(axis=0) / expected
        assert np.all(np.abs(ratio - 1) < 0.05), ratio
        assert abs(np.mean(ratio) - 1) < 0.015
    ratio_z = z0[:, t].var(axis=0) / dyn["var_z_nm2"][t]
    assert np.all(np.abs(ratio_z - 1) < 0.05), ratio_z
    # mean positions: anchors laterally, WLC extension + R vertically
    np.testing.assert_allclose(x0[:, t].mean(axis=0), world.anchor_x_nm[t], atol=5.0)
    mean_ext = z0[:, t].mean(axis=0) - world.radius_nm[t]
    sem = np.sqrt(dyn["var_z_nm2"][t] / n)
    assert np.all(np.abs(mean_ext - ext) < 5 * sem + 0.1)
    # reference beads do not move
    assert np.all(np.ptp(x0[:, ~t], axis=0) == 0.0)


@pytest.mark.slow
def test_power_spectrum_is_lorentzian_with_expected_corner():
    world = SimWorld(_many_beads(n_tethered=20))
    mag = 0.8  # mm, ~30 pN: corner frequencies 10 .. 50 Hz
    dyn = world.true_dynamics(mag)
    t = world.tethered
    dt = 2e-3
    n = 1 << 14
    xs = np.empty((n, world.n_beads))
    ys = np.empty_like(xs)
    for i in range(n):
        tr = world.advance(i * dt, 0.0, mag, 0.0, 0.0)
        xs[i], ys[i] = tr.x0_nm, tr.y0_nm

    def model(f, log_var, log_tau):
        # one-sided PSD of an OU process sampled instantaneously every dt (aliased Lorentzian)
        var, tau = np.exp(log_var), np.exp(log_tau)
        c = np.exp(-dt / tau)
        return np.log(2 * var * dt * (1 - c * c) / (1 + c * c - 2 * c * np.cos(2 * np.pi * f * dt)))

    ratios = []
    for b in np.flatnonzero(t):
        fc_true = dyn["corner_xy_hz"][b]
        assert fc_true == pytest.approx(
            dyn["k_xy_pn_nm"][b] / (2 * np.pi * dyn["gamma_xy_pn_s_nm"][b]), rel=1e-12
        )
        fits = []
        for series in (xs[:, b], ys[:, b]):
            f, psd = welch(series, fs=1 / dt, nperseg=1024)
            keep = f > 0
            p0 = (np.log(series.var()), np.log(1 / (2 * np.pi * fc_true * 1.5)))
            popt, _ = curve_fit(model, f[keep], np.log(psd[keep]), p0=p0)
            fits.append(1 / (2 * np.pi * np.exp(popt[1])))
        ratios.append(np.mean(fits) / fc_true)
    ratios = np.array(ratios)
    print(np.round(ratios, 3), np.round(dyn["corner_xy_hz"][t], 1))
    assert np.all(np.abs(ratios - 1) < 0.10), ratios
    assert abs(np.mean(ratios) - 1) < 0.03


@pytest.mark.slow
def test_exposure_average_matches_motion_blur_formula():
    """Frames back to back: Var(mean) = sigma^2 blur(W/tau), Cov with start and end points."""
    world = SimWorld(_many_beads(n_tethered=30))
    mag = 2.5  # ~8 pN
    dyn = world.true_dynamics(mag)
    t = world.tethered
    w = float(np.nanmedian(dyn["tau_xy_s"]))  # a = W / tau around 1
    n = 12000
    m = np.empty((n, world.n_beads))
    x0 = np.empty_like(m)
    for i in range(n):
        tr = world.advance(i * w, w, mag, 0.0, 0.0)
        m[i], x0[i] = tr.x_nm, tr.x0_nm
    a = w / dyn["tau_xy_s"][t]
    sig2 = dyn["var_xy_nm2"][t]
    mt = m[:, t] - m[:, t].mean(axis=0)
    xt = x0[:, t] - x0[:, t].mean(axis=0)
    ratio_var = mt.var(axis=0) / (sig2 * physics.ou_blur_factor(a))
    # Cov(m_k, x0_k) = Cov(m_k, x_end_k = x0_{k+1}) = sigma^2 (1 - e^-a) / a
    cov_expected = sig2 * (-np.expm1(-a)) / a
    ratio_start = np.mean(mt * xt, axis=0) / cov_expected
    ratio_end = np.mean(mt[:-1] * xt[1:], axis=0) / cov_expected
    for r in (ratio_var, ratio_start, ratio_end):
        assert np.all(np.abs(r - 1) < 0.07), r
        assert abs(np.mean(r) - 1) < 0.02
    # blur makes the exposure average less variable than the position
    assert np.all(mt.var(axis=0) < xt.var(axis=0))
    np.testing.assert_allclose(xt.var(axis=0) / sig2, 1.0, atol=0.07)


def test_force_step_relaxes_to_new_equilibrium():
    world = SimWorld(_many_beads(n_tethered=10))
    t = world.tethered
    for i in range(50):
        world.advance(0.01 * i, 0.005, 8.0, 0.0, 0.0)
    z = [world.advance(1.0 + 0.01 * i, 0.005, 1.0, 0.0, 0.0).z_nm for i in range(300)]
    ext = world.true_extension(1.0)
    np.testing.assert_allclose(np.mean(z[50:], axis=0)[t] - world.radius_nm[t], ext[t], atol=5.0)


# ------------------------------------------------------------------------------ world basics


def _run(world: SimWorld, n: int = 30):
    out = []
    for i in range(n):
        tr = world.advance(
            1.7e9 + 0.013 * i + 0.002 * (i % 3), 0.004, 2.0 + 0.1 * (i % 5), 0.5 * i, 1000.0
        )
        out.append(np.concatenate([tr.x_nm, tr.y_nm, tr.z_nm, tr.x0_nm, tr.force_pn]))
    return np.array(out)


def test_deterministic_from_seed():
    a = _run(SimWorld(SimParams(seed=3)))
    b = _run(SimWorld(SimParams(seed=3)))
    c = _run(SimWorld(SimParams(seed=4)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, equal_nan=True)
    ta, tb = SimWorld(SimParams(seed=3)).bead_table(), SimWorld(SimParams(seed=3)).bead_table()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key])


def test_bead_table_and_truth_fields():
    p = SimParams()
    world = SimWorld(p)
    table = world.bead_table()
    n = p.n_beads
    assert list(table["bead_id"]) == list(range(n))
    assert (table["kind"] == "tethered").sum() == p.n_tethered
    t = table["tethered"]
    assert np.all((table["contour_nm"][t] >= 2000) & (table["contour_nm"][t] <= 8000))
    assert np.all((table["persistence_nm"][t] >= 45) & (table["persistence_nm"][t] <= 50))
    assert np.all(np.abs(table["radius_nm"] / 1400 - 1) < 0.1)
    assert np.all(np.isnan(table["contour_nm"][~t]))
    table["radius_nm"][0] = -1  # a copy: the world is unchanged
    assert world.radius_nm[0] > 0
    tr = world.advance(100.0, 0.005, 3.0, 0.0, 2500.0)
    assert tr.t_s == 100.0 and tr.exposure_s == 0.005 and tr.focus_nm == 2500.0
    assert np.all(np.isnan(tr.force_pn[~t])) and np.all(tr.force_pn[t] > 0)
    np.testing.assert_array_equal(tr.z_nm[~t], world.radius_nm[~t] + tr.drift_z_nm)
    # the focal plane moves by the focal shift per nm of focus travel (0.88 by default)
    assert p.focal_shift == 0.88 and tr.focal_plane_nm == pytest.approx(0.88 * 2500.0)
    np.testing.assert_allclose(tr.dz_nm, tr.z_nm - 0.88 * 2500.0)
    matched = SimWorld(p.replace(focal_shift=1.0)).advance(100.0, 0.005, 3.0, 0.0, 2500.0)
    np.testing.assert_allclose(matched.dz_nm, matched.z_nm - 2500.0)
    with pytest.raises(ValueError, match="focal_shift"):
        SimParams(focal_shift=0.1)
    with pytest.raises(ValueError):
        world.advance(99.0, 0.005, 3.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        SimParams(bit_depth=12)


def test_drift_is_smooth_bounded_and_slow():
    p = SimParams(drift_rms_speed_nm_s=(3.0, 2.0, 1.0))
    world = SimWorld(p)
    world.advance(50.0, 0.0, 5.0, 0.0, 0.0)
    assert np.all(world.drift_nm(50.0) == 0.0)
    ts = 50.0 + np.arange(0, 20000, 1.0)
    d = np.array([world.drift_nm(ts_) for ts_ in ts])
    speed = np.diff(d, axis=0)
    rms = np.sqrt(np.mean(speed**2, axis=0))
    np.testing.assert_allclose(rms, [3.0, 2.0, 1.0], rtol=0.35)
    assert np.all(np.abs(d).max(axis=0) < 5000.0)
    # exposure-averaged drift is the window mean
    fine = np.array([world.drift_nm(100.0 + s) for s in np.linspace(0, 2.0, 2001)]).mean(axis=0)
    np.testing.assert_allclose(world.drift_nm(100.0, 2.0), fine, atol=1e-3)
    # reference beads carry the drift
    tr = world.advance(1050.0, 0.0, 5.0, 0.0, 0.0)
    ref = ~world.tethered
    np.testing.assert_allclose(tr.x0_nm[ref] - world.anchor_x_nm[ref], world.drift_nm(1050.0)[0])
