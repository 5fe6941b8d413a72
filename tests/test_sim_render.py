"""Image renderer of the simulated microscope: parity, sub-pixel accuracy, dz, noise."""

from __future__ import annotations

import numpy as np
import pytest

from magscope_devices.sim import FrameTruth, ReferenceRenderer, Renderer, SimParams, SimWorld
from magscope_devices.sim.render import pattern_radius_nm, ring_profile


def _small(**kw) -> SimParams:
    base = dict(width_px=128, height_px=128, n_tethered=0, n_reference=1)
    base.update(kw)
    return SimParams(**base)


def _truth(p: SimParams, x_px, y_px, dz_nm, exposure_s=None, radius_nm=1400.0) -> FrameTruth:
    """A hand-made frame: beads at (x, y) px with defocus dz (focus at 0)."""
    x = np.atleast_1d(np.asarray(x_px, float)) * p.nm_per_px
    y = np.atleast_1d(np.asarray(y_px, float)) * p.nm_per_px
    z = np.atleast_1d(np.asarray(dz_nm, float)) * np.ones_like(x)
    return FrameTruth.still_beads(
        x, y, z, radius_nm=radius_nm, exposure_s=p.exposure_s if exposure_s is None else exposure_s
    )


def _radial_profile(img: np.ndarray, cx: float, cy: float, n_bins: int = 40):
    yy, xx = np.indices(img.shape)
    r = np.hypot(xx - cx, yy - cy)
    idx = np.floor(r).astype(int)
    keep = idx < n_bins
    counts = np.bincount(idx[keep], minlength=n_bins)
    sums = np.bincount(idx[keep], weights=img[keep], minlength=n_bins)
    return sums / counts, counts


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("supersample", [1, 2])
def test_numba_matches_numpy_reference_noise_free(supersample):
    p = SimParams(supersample=supersample, illumination_gradient=0.1, seed=5)
    world = SimWorld(p)
    truth = world.advance(10.0, p.exposure_s, 4.0, 0.0, 3000.0)
    fast = Renderer(p).expected_electrons(truth)
    ref = ReferenceRenderer(p).expected_electrons(truth)
    bg = Renderer(p).background_electrons(p.exposure_s)
    assert fast.dtype == np.float32 and fast.shape == (768, 1024)
    # the beads are really there (ring contrast of 10s of % of the background)
    assert np.abs(ref / np.median(ref) - 1).max() > 0.1
    assert np.abs(fast - ref).max() < 2e-4 * bg
    # quantised, noise-free frames agree to 1 ADU
    adu_fast = Renderer(p).render(truth, noise=False).astype(int)
    adu_ref = ReferenceRenderer(p).render(truth, noise=False).astype(int)
    assert np.abs(adu_fast - adu_ref).max() <= 1


@pytest.mark.parametrize("supersample, tol", [(1, 0.012), (2, 0.002)])
def test_pixels_are_pixel_area_integrals(supersample, tol):
    """Against brute-force 16 x 16 point sampling of the continuous pattern per pixel."""
    p = _small(supersample=supersample)
    r = Renderer(p)
    n = 16
    off = (np.arange(n) + 0.5) / n - 0.5
    crop = slice(64 - 36, 64 + 37)  # the pattern support is < 36 px for |dz| <= 5 um
    pix = np.arange(128)[crop]
    for dz in (-5000.0, -1500.0, -300.0, 0.0, 300.0, 1500.0, 5000.0):
        cx, cy = 64.37, 63.81
        img = r.expected_electrons(_truth(p, cx, cy, dz)) / r.background_electrons(p.exposure_s)
        ys = (pix[:, None] + off).ravel() - cy
        xs = (pix[:, None] + off).ravel() - cx
        rr = np.hypot(ys[:, None], xs[None, :]) * p.nm_per_px
        k = pix.size
        area = ring_profile(rr, dz, 1400.0, p).reshape(k, n, k, n).mean(axis=(1, 3))
        amp = np.abs(area).max()
        assert np.abs(img[crop, crop] - 1 - area).max() < tol * amp, dz
        outside = np.ones(img.shape, bool)
        outside[crop, crop] = False
        assert np.all(img[outside] == 1.0)


# ------------------------------------------------------------------------------ geometry


def test_subpixel_shift_moves_the_centre():
    p = _small()
    r = Renderer(p)
    yy, xx = np.indices((128, 128))
    for dz in (-3000.0, 0.0, 1000.0, 4000.0):
        for frac in np.linspace(0.0, 1.0, 11):
            cx, cy = 63.0 + frac, 64.5 - 0.37 * frac
            img = r.expected_electrons(_truth(p, cx, cy, dz)).astype(float)
            w = (img / r.background_electrons(p.exposure_s) - 1.0) ** 2
            ex = (w * xx).sum() / w.sum()
            ey = (w * yy).sum() / w.sum()
            assert abs(ex - cx) < 0.01 and abs(ey - cy) < 0.01, (dz, frac, ex - cx, ey - cy)


def test_pattern_is_radially_symmetric():
    p = _small()
    img = Renderer(p).expected_electrons(_truth(p, 63.5, 63.5, 2000.0))
    np.testing.assert_allclose(img, img[::-1, :], rtol=1e-5)
    np.testing.assert_allclose(img, img[:, ::-1], rtol=1e-5)
    np.testing.assert_allclose(img, img.T, rtol=1e-5)


def test_pattern_extent_grows_with_defocus_and_fits_30_px():
    p = SimParams()
    dz = np.linspace(-5000.0, 5000.0, 41)
    radius = pattern_radius_nm(dz, 1400.0, p) / p.nm_per_px
    pos = dz >= 0
    assert np.all(np.diff(radius[pos]) > 0) and np.all(np.diff(radius[~pos]) < 0)
    # "fits": beyond 30 px the modulation is < 0.2 % of the background at |dz| <= 5 um
    r = np.linspace(3000.0, 5000.0, 201)
    for d in dz:
        assert np.abs(ring_profile(r, d, 1400.0, p)).max() < 2e-3


def test_profiles_distinct_across_defocus():
    """Radial profiles 50 nm apart differ by >> shot noise, and no two dz look alike."""
    p = _small()
    r = Renderer(p)
    bg = r.background_electrons(p.exposure_s)
    dzs = np.arange(-6000.0, 6000.0 + 1, 50.0)
    profiles = []
    for dz in dzs:
        prof, counts = _radial_profile(r.expected_electrons(_truth(p, 64.3, 63.6, dz)), 64.3, 63.6)
        profiles.append(prof)
    profiles = np.array(profiles)
    sigma = np.sqrt(bg / counts)  # shot noise of a radial bin in one frame
    z = profiles / sigma
    d_next = np.sqrt(np.sum(np.diff(z, axis=0) ** 2, axis=1))
    assert d_next.min() > 5.0, d_next.min()  # adjacent planes: > 5 sigma apart in one frame
    # every pair of planes at least 50 nm apart is distinguishable (no aliasing of dz)
    dist = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1))
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 5.0
    # + dz and - dz differ
    i = np.searchsorted(dzs, 2000.0)
    j = np.searchsorted(dzs, -2000.0)
    assert np.sqrt(np.sum((z[i] - z[j]) ** 2)) > 50.0
    # the centre intensity changes with dz (bright below focus, dark above)
    assert profiles[j, 0] > bg > profiles[i, 0]


# ------------------------------------------------------------------------------ noise


def test_noise_variance_equals_signal_in_electrons():
    p = _small(n_reference=0, bit_depth=16, illumination_gradient=0.3, read_noise_e=8.0)
    r = Renderer(p, seed=11)
    truth = _truth(p, [], [], [])
    expected = r.expected_electrons(truth).astype(float)
    frames = np.array([r.render(truth) for _ in range(300)], dtype=float)
    e = frames * p.gain_e_per_adu  # black level 0
    mean = e.mean(axis=0)
    var = e.var(axis=0, ddof=1)
    # mean unbiased; per-pixel variance = signal + read noise^2 (+ quantisation g^2/12)
    assert abs(np.mean(mean - expected)) < 0.5
    predicted = expected + p.read_noise_e**2 + p.gain_e_per_adu**2 / 12
    for sl in (slice(0, 40), slice(88, 128)):  # dim and bright corners of the gradient
        ratio = var[sl, sl].mean() / predicted[sl, sl].mean()
        assert abs(ratio - 1) < 0.02, ratio
    # white: no correlation between neighbouring pixels or successive frames
    d = e - mean
    assert abs(np.mean(d[:, :, 1:] * d[:, :, :-1]) / np.mean(d * d)) < 0.01
    assert abs(np.mean(d[:, 1:, :] * d[:, :-1, :]) / np.mean(d * d)) < 0.01
    assert abs(np.mean(d[1:] * d[:-1]) / np.mean(d * d)) < 0.01


def test_reference_renderer_noise_is_poisson_plus_read():
    p = _small(n_reference=0, bit_depth=16, read_noise_e=5.0, exposure_s=0.0005)
    ref = ReferenceRenderer(p, seed=1)
    truth = _truth(p, [], [], [])
    frames = np.array([ref.render(truth) for _ in range(50)], dtype=float) * p.gain_e_per_adu
    signal = ref.expected_electrons(truth).mean()
    assert frames.var(axis=0, ddof=1).mean() == pytest.approx(
        signal + 25.0 + p.gain_e_per_adu**2 / 12, rel=0.03
    )


def test_renderer_noise_deterministic_from_seed():
    p = SimParams(seed=9)
    truth = SimWorld(p).advance(0.0, p.exposure_s, 3.0, 0.0, 2000.0)
    a = Renderer(p).render(truth)
    b = Renderer(p).render(truth)
    c = Renderer(p.replace(seed=10)).render(truth)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    r = Renderer(p)
    assert np.any(r.render(truth) != r.render(truth))  # fresh noise every frame


# ------------------------------------------------------------------------------ ADU, clipping


def test_bit_depth_gain_and_clipping():
    p8 = SimParams(seed=2)
    truth = SimWorld(p8).advance(0.0, p8.exposure_s, 3.0, 0.0, 2000.0)
    img8 = Renderer(p8).render(truth)
    assert img8.dtype == np.uint8 and img8.shape == (768, 1024)
    bg_adu = Renderer(p8).background_electrons(p8.exposure_s) / p8.gain_e_per_adu
    assert np.median(img8) == pytest.approx(bg_adu, abs=2)
    # analog gain scales ADU
    img8g = Renderer(p8).render(truth, gain=1.5)
    assert np.median(img8g) == pytest.approx(1.5 * bg_adu, abs=2)
    # overexposed: saturates at 255, never wraps
    over = SimWorld(p8).advance(0.0, 0.05, 3.0, 0.0, 2000.0)
    sat = Renderer(p8).render(over)
    assert sat.min() == 255
    # no light: clipped at 0, never wraps
    dark = Renderer(p8).render(SimWorld(p8).advance(0.0, 0.0, 3.0, 0.0, 2000.0))
    assert dark.max() < 5
    # 16 bit
    p16 = p8.replace(bit_depth=16)
    img16 = Renderer(p16).render(truth)
    assert img16.dtype == np.uint16
    assert np.median(img16) == pytest.approx(
        Renderer(p16).background_electrons(p16.exposure_s) / p16.gain_e_per_adu, rel=0.01
    )
    assert img16.max() > 255
    sat16 = Renderer(p16).render(over)
    assert sat16.max() == 65535 and sat16.min() > 30000
    # black level offset
    pb = p8.replace(black_level_adu=20.0)
    assert np.median(Renderer(pb).render(truth)) == pytest.approx(bg_adu + 20, abs=2)
    # output buffers are checked
    with pytest.raises(ValueError):
        Renderer(p8).render(truth, np.empty((768, 1024), np.uint16))
    with pytest.raises(ValueError):
        Renderer(p8).render(truth, np.empty((768, 1023), np.uint8))
    out = np.empty((768, 1024), np.uint8)
    assert Renderer(p8).render(truth, out) is out


def test_beads_away_from_edges_and_apart():
    for seed in range(4):
        for n_t, n_r in ((20, 4), (46, 4)):
            p = SimParams(seed=seed, n_tethered=n_t, n_reference=n_r)
            w = SimWorld(p)
            x = w.anchor_x_nm / p.nm_per_px
            y = w.anchor_y_nm / p.nm_per_px
            assert x.size == n_t + n_r
            assert np.all((x >= 40) & (x <= p.width_px - 1 - 40))
            assert np.all((y >= 40) & (y <= p.height_px - 1 - 40))
            d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
            np.fill_diagonal(d, np.inf)
            assert d.min() >= 70.0
    with pytest.raises(ValueError):
        SimWorld(SimParams(n_tethered=500))


def test_edge_bead_is_clipped_not_crashing():
    p = _small(n_reference=3)
    truth = _truth(p, [0.2, 127.6, -10.0], [64.0, 127.9, 64.0], [3000.0, -3000.0, 0.0])
    fast = Renderer(p).expected_electrons(truth)
    ref = ReferenceRenderer(p).expected_electrons(truth)
    assert np.abs(fast - ref).max() < 2e-4 * Renderer(p).background_electrons(p.exposure_s)
    assert np.all(np.isfinite(fast))
