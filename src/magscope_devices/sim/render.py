"""Camera image of the simulated microscope: bead ring patterns, background and noise.

Image model (all in photoelectrons per pixel, e-):

    S(x, y) = B(x, y) * (1 + sum_b Q_b)
    B(x, y) = background_e_per_px_ms * 1000 * exposure_s * (1 + g * (u + v - 1) / 2)

with u = column / (width - 1), v = row / (height - 1) and g the ``illumination_gradient``
(relative change corner to corner; 0 = flat). A bead modulates the bright-field
illumination with a radially symmetric, defocus-dependent ring pattern P (see
:func:`ring_profile`), centred on the bead's exposure-averaged position (sub-pixel), with
dz = z_bead minus the focal plane (``FrameTruth.dz_nm``: the focus position times the
focal shift). Q_b is P integrated over the pixel area, to second order
(:func:`pixel_profile`: P plus 1/24 of its Laplacian), averaged over ``supersample`` x
``supersample`` sub-pixels (default 1: error < 1.2 % of the ring amplitude).

Noise: shot noise (Poisson with mean S, approximated by a Gaussian of variance S: same
mean and variance, skewness 1/sqrt(S) ~ 1.6 % ignored at 4000 e) plus Gaussian read
noise (``read_noise_e``); then ADU = round(e * gain / e_per_adu + black_level), clipped
to [0, 2**bit_depth - 1].

Fast path (:class:`Renderer`, numba, one thread): per bead the pixel profile Q is
tabulated on a uniform grid of r^2 (1024 points up to the pattern's support radius) and
linearly interpolated per pixel (error < 1e-4 of the background); the noise reads
standard normals from a precomputed bank (2**22 float32 samples) at a random offset and
with a random sign per row and frame. Two rows (of one frame or of different frames)
reuse overlapping stretches of the bank only with probability ~2 * width / 2**22, so the
noise is white in space and time for all practical purposes (the approximation: a finite
bank is reused, in random pieces).

Reference path (:class:`ReferenceRenderer`, plain NumPy): evaluates Q analytically at
every sub-pixel and draws exact Poisson and Gaussian noise; ~60x slower, for tests.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .world import _STREAM_RENDER, FrameTruth, SimParams, seed_stream

__all__ = [
    "Renderer",
    "ReferenceRenderer",
    "ring_profile",
    "pixel_profile",
    "pattern_radius_nm",
]

_TABLE_SIZE = 1024
_BANK_SIZE = 1 << 22
_RADIUS_REF_NM = 1400.0  # bead radius of the nominal pattern scale
_TAPER_START = 0.8  # taper of the pattern support from 0.8 r_cut to r_cut
_CUT_RHO = 1.75  # support radius r_cut = 1.75 rho (capped)


# ---------------------------------------------------------------------------------------
# The ring pattern (scalar parameters shared by the NumPy and numba implementations)
# ---------------------------------------------------------------------------------------


def _pattern_constants(params: SimParams):
    return (
        float(params.ring_wavelength_nm),
        float(params.ring_z0_nm),
        float(params.ring_envelope_r0_nm),
        float(params.ring_envelope_slope),
        float(params.ring_envelope_asymmetry),
        float(params.ring_contrast),
        float(params.max_pattern_radius_px) * float(params.nm_per_px),
    )


def _shape_numpy(dz_nm, radius_nm, wavelength, z0, r0, slope, asym, contrast, cap_nm):
    """Per-bead pattern parameters: (rho, amp, inv_lz, psi, r_cut) as arrays (nm units)."""
    dz = np.asarray(dz_nm, dtype=float)
    scale = np.asarray(radius_nm, dtype=float) / _RADIUS_REF_NM
    u = dz / z0
    zeff = z0 * np.sqrt(1.0 + u * u)
    rho = r0 * scale + slope * zeff * (1.0 + asym * u * np.abs(u) / (1.0 + u * u))
    rho_focus = r0 + slope * z0
    amp = contrast * scale * (rho_focus / rho) ** 0.8
    inv_lz = np.pi / (wavelength * zeff)
    psi = 2.0 * np.arctan(u) + 0.5 * np.pi
    r_cut = np.minimum(_CUT_RHO * rho, cap_nm)
    return rho, amp, inv_lz, psi, r_cut


def pattern_radius_nm(dz_nm, radius_nm, params: SimParams):
    """Support radius (nm) of a bead's ring pattern: min(1.75 rho(dz), max_pattern_radius)."""
    return _shape_numpy(dz_nm, radius_nm, *_pattern_constants(params))[4]


def ring_profile(r_nm, dz_nm, radius_nm, params: SimParams):
    """Relative intensity modulation P(r; dz) of a bead image (dimensionless).

    Phenomenological model of the bright-field diffraction pattern of a bead at defocus
    dz = z_bead - z_focus (nm) and distance r (nm) from its centre, radius R (nm):

        u     = dz / z0,  z_eff = z0 sqrt(1 + u^2)
        rho   = r0 R / 1400 nm + s z_eff (1 + eta u |u| / (1 + u^2))   envelope radius
        A     = c (R / 1400 nm) ((r0 + s z0) / rho)^0.8            contrast
        psi   = 2 atan(u) + pi / 2                                 (Gouy-like phase)
        P     = A exp(-(r / rho)^4) cos(pi r^2 / (lambda z_eff) + psi) T(r)

    with lambda = ``ring_wavelength_nm``, z0 = ``ring_z0_nm``, r0 = ``ring_envelope_r0_nm``,
    s = ``ring_envelope_slope``, eta = ``ring_envelope_asymmetry``, c = ``ring_contrast``;
    T(r) is a C2 smootherstep taper, 1 - x^3 (10 - 15 x + 6 x^2) with
    x = (r - 0.8 r_cut) / (0.2 r_cut) clipped to [0, 1], r_cut = min(1.75 rho, max radius),
    and P = 0 beyond r_cut. Rings are Fresnel-like (radii ~ sqrt(n lambda z_eff)), their number and the
    pattern extent grow monotonically with |dz| on both sides (for eta < 1/2), the centre
    value A cos(psi) goes from bright (dz < 0) to dark (dz > 0), and eta makes +dz and -dz
    differ in extent: every dz in -6..+6 um has its own profile, smooth in dz. At the defaults the pattern fits within 30 px (3 um) for
    |dz| <= 5 um.
    """
    rho, amp, inv_lz, psi, r_cut = _shape_numpy(dz_nm, radius_nm, *_pattern_constants(params))
    r = np.asarray(r_nm, dtype=float)
    s = r * r
    env = np.exp(-((s / (rho * rho)) ** 2))
    t0 = _TAPER_START * r_cut
    x = np.clip((r - t0) / (r_cut - t0), 0.0, 1.0)
    taper = 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)
    val = amp * env * np.cos(s * inv_lz + psi) * taper
    return np.where(r < r_cut, val, 0.0)


def pixel_profile(r_nm, dz_nm, radius_nm, params: SimParams, supersample: int | None = None):
    """Pixel-area average of the ring pattern, to second order (dimensionless).

    The mean of P over a square of side a (px) centred at distance r is
    P + a^2 / 24 * Laplacian(P) + O(a^4). With s = r^2 (px^2) the 2D Laplacian of a radial
    function is 4 (P_s + s P_ss), hence

        Q(r) = P(r) + (P_s + s P_ss) / (6 S^2)

    for a sub-pixel of side 1 / S (``supersample`` S, default ``params.supersample``).
    The renderer evaluates Q at each sub-pixel centre and averages the S^2 values. The
    residual (fourth order) is < 1 % of the ring amplitude for ring frequencies up to
    0.3 cycles/px, whereas plain 2 x 2 point supersampling errs by ~4 % there. Derivatives
    here are analytic (the numba renderer uses finite differences on its table).
    """
    ss = int(params.supersample if supersample is None else supersample)
    rho, amp, inv_lz, psi, r_cut = _shape_numpy(dz_nm, radius_nm, *_pattern_constants(params))
    r = np.asarray(r_nm, dtype=float)
    s = r * r
    rho4 = rho**4
    e = np.exp(-(s * s) / rho4)
    e_s = -2.0 * s / rho4 * e
    e_ss = (-2.0 / rho4 + 4.0 * s * s / rho4**2) * e
    ph = s * inv_lz + psi
    c = np.cos(ph)
    c_s = -inv_lz * np.sin(ph)
    c_ss = -(inv_lz**2) * c
    t0 = _TAPER_START * r_cut
    wdt = r_cut - t0
    x = np.clip((r - t0) / wdt, 0.0, 1.0)
    tap = 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)
    t_x = -30.0 * x * x * (1.0 - x) ** 2
    t_xx = -60.0 * x * (1.0 - x) * (1.0 - 2.0 * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_r = t_x / wdt
        t_rr = t_xx / wdt**2
        in_taper = x > 0.0
        t_s = np.where(in_taper, t_r / (2.0 * r), 0.0)
        t_ss = np.where(in_taper, (t_rr - t_r / r) / (4.0 * s), 0.0)
    f = e * c * tap
    f_s = e_s * c * tap + e * c_s * tap + e * c * t_s
    f_ss = (
        e_ss * c * tap
        + e * c_ss * tap
        + e * c * t_ss
        + 2.0 * (e_s * c_s * tap + e_s * c * t_s + e * c_s * t_s)
    )
    px2 = float(params.nm_per_px) ** 2
    q = amp * (f + px2 * (f_s + s * f_ss) / (6.0 * ss * ss))
    return np.where(r < r_cut, q, 0.0)


def _illumination(params: SimParams) -> np.ndarray:
    """Relative illumination map (h, w), mean 1 (float64)."""
    h, w = params.height_px, params.width_px
    u = np.arange(w) / max(w - 1, 1)
    v = np.arange(h) / max(h - 1, 1)
    return 1.0 + params.illumination_gradient * ((u[None, :] + v[:, None]) - 1.0) / 2.0


def _background_scale(params: SimParams, exposure_s: float) -> float:
    """Mean background photoelectrons per pixel for an exposure (s)."""
    return params.background_e_per_px_ms * 1000.0 * float(exposure_s)


def _bead_inputs(truth: FrameTruth, params: SimParams):
    p = params.nm_per_px
    cx = np.ascontiguousarray(truth.x_nm, dtype=np.float64) / p
    cy = np.ascontiguousarray(truth.y_nm, dtype=np.float64) / p
    dz = np.ascontiguousarray(truth.dz_nm, dtype=np.float64)
    radius = np.ascontiguousarray(truth.radius_nm, dtype=np.float64)
    return cx, cy, dz, radius


def _check_out(out, shape, dtype, name):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"{name} must be a {dtype} array of shape {shape}, got {out.dtype} {out.shape}"
        )
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return out


# ---------------------------------------------------------------------------------------
# numba kernels (one thread)
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _build_table(table, work, amp, rho, inv_lz, psi, r_cut, nm_per_px, ds, lap):
    """Tabulate the pixel profile Q on s = k ds (px^2) into ``table`` (float32, n + 2).

    First P(k ds) for k = 0 .. n + 2 into ``work`` (float64, n + 3), advancing
    exp(-(k dq)^2) and cos(k dtheta + psi) by exact recurrences (relative rounding error
    ~ k * 1e-16, no libm call per entry); then Q = P + lap (P_s + s P_ss) with central
    differences in s (one-sided at s = 0). table[n] = table[n + 1] = 0 (support edge).
    """
    n = table.size - 2
    px2 = nm_per_px * nm_per_px
    dq = ds * px2 / (rho * rho)
    g = math.exp(-dq * dq)
    g2 = g * g
    env = amp
    dth = ds * px2 * inv_lz
    cd = math.cos(dth)
    sd = math.sin(dth)
    c = math.cos(psi)
    sn = math.sin(psi)
    t0 = _TAPER_START * r_cut
    inv_tw = 1.0 / (r_cut - t0)
    k_taper = int((t0 / nm_per_px) ** 2 / ds)
    for k in range(work.size):
        val = env * c
        if k >= k_taper:
            r = math.sqrt(k * ds * px2)
            if r >= r_cut:
                val = 0.0
            elif r > t0:
                x = (r - t0) * inv_tw
                val *= 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)
        work[k] = val
        env *= g
        g *= g2
        c, sn = c * cd - sn * sd, sn * cd + c * sd
    inv2ds = 0.5 / ds
    inv_ds = 1.0 / ds
    table[0] = work[0] + lap * (-3.0 * work[0] + 4.0 * work[1] - work[2]) * inv2ds
    for k in range(1, n):
        d1 = (work[k + 1] - work[k - 1]) * inv2ds
        sd2 = k * (work[k + 1] - 2.0 * work[k] + work[k - 1]) * inv_ds
        table[k] = work[k] + lap * (d1 + sd2)
    table[n] = 0.0
    table[n + 1] = 0.0


@numba.njit(cache=True, nogil=True, fastmath=True)
def _accumulate_patterns(
    mod, cx, cy, dz, radius, nm_per_px, consts, supersample, table, work, rects, dx2, dy2, acc
):  # pragma: no cover - compiled
    """Add each bead's pixel-integrated ring pattern into ``mod`` (h, w) float32.

    Records each bead's patch rectangle (i0, i1, j0, j1), inclusive, in ``rects``
    (empty: i1 < i0). ``table``, ``dx2``, ``dy2``, ``acc`` (float32) and ``work``
    (float64) are scratch.
    """
    wavelength, z0, r0, slope, asym, contrast, cap_nm = consts
    h, w = mod.shape
    ntab = table.size - 2
    ss = supersample
    inv_ss2 = np.float32(1.0 / (ss * ss))
    lap = 1.0 / (6.0 * ss * ss)
    rho_focus = r0 + slope * z0
    fntab = np.float32(ntab)
    for b in range(cx.size):
        rects[b, 0] = 0
        rects[b, 1] = -1
        rects[b, 2] = 0
        rects[b, 3] = -1
        if not (np.isfinite(cx[b]) and np.isfinite(cy[b]) and np.isfinite(dz[b])):
            continue
        scale = radius[b] / _RADIUS_REF_NM
        u = dz[b] / z0
        zeff = z0 * math.sqrt(1.0 + u * u)
        rho = r0 * scale + slope * zeff * (1.0 + asym * u * abs(u) / (1.0 + u * u))
        amp = contrast * scale * (rho_focus / rho) ** 0.8
        inv_lz = math.pi / (wavelength * zeff)
        psi = 2.0 * math.atan(u) + 0.5 * math.pi
        r_cut = min(_CUT_RHO * rho, cap_nm)
        rc_px = r_cut / nm_per_px
        ds = rc_px * rc_px / ntab  # px^2 per table step
        i0 = max(int(math.floor(cy[b] - rc_px)), 0)
        i1 = min(int(math.ceil(cy[b] + rc_px)), h - 1)
        j0 = max(int(math.floor(cx[b] - rc_px)), 0)
        j1 = min(int(math.ceil(cx[b] + rc_px)), w - 1)
        if i1 < i0 or j1 < j0:
            continue
        _build_table(table, work, amp, rho, inv_lz, psi, r_cut, nm_per_px, ds, lap)
        rects[b, 0] = i0
        rects[b, 1] = i1
        rects[b, 2] = j0
        rects[b, 3] = j1
        inv_ds = 1.0 / ds
        # squared sub-sample offsets from the centre, in table units (s / ds)
        for jj in range(j1 - j0 + 1):
            for sj in range(ss):
                d = j0 + jj + (sj + 0.5) / ss - 0.5 - cx[b]
                dx2[jj * ss + sj] = d * d * inv_ds
        for ii in range(i1 - i0 + 1):
            for si in range(ss):
                d = i0 + ii + (si + 0.5) / ss - 0.5 - cy[b]
                dy2[ii * ss + si] = d * d * inv_ds
        for ii in range(i1 - i0 + 1):
            # the sub-sample row nearest the centre decides which columns can be inside
            fy_min = dy2[ii * ss]
            for si in range(1, ss):
                fy_min = min(fy_min, dy2[ii * ss + si])
            if fy_min >= fntab:
                continue
            half = math.sqrt((fntab - fy_min) * ds) + 1.0
            ja = max(int(math.floor(cx[b] - half)), j0)
            jb = min(int(math.ceil(cx[b] + half)), j1)
            row = mod[i0 + ii]
            if ss == 1:
                fy = dy2[ii]
                for j in range(ja, jb + 1):
                    f = min(dx2[j - j0] + fy, fntab)
                    k = int(f)
                    t = f - np.float32(k)
                    row[j] += table[k] + t * (table[k + 1] - table[k])
                continue
            qa = (ja - j0) * ss
            qb = (jb - j0 + 1) * ss
            for q in range(qa, qb):
                acc[q] = 0.0
            for si in range(ss):
                fy = dy2[ii * ss + si]
                for q in range(qa, qb):
                    f = min(dx2[q] + fy, fntab)
                    k = int(f)
                    t = f - np.float32(k)
                    acc[q] += table[k] + t * (table[k + 1] - table[k])
            for j in range(ja, jb + 1):
                v = acc[(j - j0) * ss]
                for sj in range(1, ss):
                    v += acc[(j - j0) * ss + sj]
                row[j] += v * inv_ss2


@numba.njit(cache=True, nogil=True)
def _clear_rects(mod, rects):  # pragma: no cover - compiled
    for b in range(rects.shape[0]):
        for i in range(rects[b, 0], rects[b, 1] + 1):
            for j in range(rects[b, 2], rects[b, 3] + 1):
                mod[i, j] = 0.0


@numba.njit(cache=True, nogil=True, fastmath=True)
def _expected_pass(out, illum, mod, scale):  # pragma: no cover - compiled
    h, w = out.shape
    sc = np.float32(scale)
    one = np.float32(1.0)
    for i in range(h):
        for j in range(w):
            out[i, j] = illum[i, j] * sc * (one + mod[i, j])


@numba.njit(cache=True, nogil=True, fastmath=True)
def _noise_pass(
    out, illum, mod, scale, read_var, inv_gain, black, max_adu, bank, offsets, signs
):  # pragma: no cover - compiled
    """Signal, Gaussian shot + read noise, quantisation and clipping into ``out``.

    float32 arithmetic (vectorised); row i uses bank[offsets[i]:offsets[i] + w] * signs[i].
    """
    h, w = out.shape
    sc = np.float32(scale)
    rv = np.float32(read_var)
    ig = np.float32(inv_gain)
    bl = np.float32(black + 0.5)
    mx = np.float32(max_adu)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(h):
        o = offsets[i]
        sg = np.float32(signs[i])
        row_i = illum[i]
        row_m = mod[i]
        row_o = out[i]
        nrm = bank[o : o + w]
        for j in range(w):
            s = max(row_i[j] * sc * (one + row_m[j]), zero)
            v = (s + math.sqrt(s + rv) * sg * nrm[j]) * ig + bl
            row_o[j] = np.int32(min(max(v, zero), mx))


@numba.njit(cache=True, nogil=True, fastmath=True)
def _quantise_pass(out, illum, mod, scale, inv_gain, black, max_adu):  # pragma: no cover
    h, w = out.shape
    sc = np.float32(scale)
    ig = np.float32(inv_gain)
    bl = np.float32(black + 0.5)
    mx = np.float32(max_adu)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(h):
        row_i = illum[i]
        row_m = mod[i]
        row_o = out[i]
        for j in range(w):
            s = max(row_i[j] * sc * (one + row_m[j]), zero)
            row_o[j] = np.int32(min(max(s * ig + bl, zero), mx))


# ---------------------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------------------


class Renderer:
    """Fast camera-image renderer (numba, single thread).

    ``Renderer(params)`` preallocates its buffers (a float32 frame of modulation, the
    illumination map; the 16 MB noise bank on first noisy use). Then per frame:

    - :meth:`render` (truth, out) -> uint8/uint16 (h, w) frame in ADU, with noise;
    - :meth:`expected_electrons` (truth, out) -> float32 (h, w) noise-free photoelectrons.

    Noise is deterministic from ``seed`` (default: derived from ``params.seed``) and the
    sequence of calls. Not thread-safe (one renderer per camera process).
    """

    def __init__(self, params: SimParams | None = None, *, seed: int | None = None):
        self.params = params if params is not None else SimParams()
        p = self.params
        self.shape = (p.height_px, p.width_px)
        self.dtype = p.dtype
        self._illum = np.ascontiguousarray(_illumination(p), dtype=np.float32)
        self._mod = np.zeros(self.shape, dtype=np.float32)
        self._table = np.empty(_TABLE_SIZE + 2, dtype=np.float32)
        self._work = np.empty(_TABLE_SIZE + 3)
        n_sub = (2 * int(math.ceil(p.max_pattern_radius_px)) + 3) * p.supersample
        self._dx2 = np.empty(n_sub, dtype=np.float32)
        self._dy2 = np.empty(n_sub, dtype=np.float32)
        self._acc = np.empty(n_sub, dtype=np.float32)
        self._consts = _pattern_constants(p)
        self._rng = (
            seed_stream(p.seed, _STREAM_RENDER) if seed is None else np.random.default_rng(seed)
        )
        self._bank: np.ndarray | None = None

    # -- helpers
    def electrons_to_adu(self, electrons):
        """Noise-free ADU (float, unclipped, unrounded) for photoelectrons."""
        return np.asarray(electrons) / self.params.gain_e_per_adu + self.params.black_level_adu

    def background_electrons(self, exposure_s: float) -> float:
        """Mean background photoelectrons per pixel at an exposure (s)."""
        return _background_scale(self.params, exposure_s)

    def warmup(self) -> None:
        """Compile the kernels (or load them from the cache) and build the noise bank."""
        self._ensure_bank()
        truth = _dummy_truth(self.params)
        self.render(truth, np.empty(self.shape, self.dtype))
        self.render(truth, np.empty(self.shape, self.dtype), noise=False)
        self.expected_electrons(truth)

    def _ensure_bank(self) -> np.ndarray:
        if self._bank is None:
            w = self.params.width_px
            size = max(_BANK_SIZE, 4 * w)
            self._bank = self._rng.standard_normal(size, dtype=np.float32)
        return self._bank

    def _patterns(self, truth: FrameTruth) -> np.ndarray:
        cx, cy, dz, radius = _bead_inputs(truth, self.params)
        rects = np.empty((cx.size, 4), dtype=np.int64)
        _accumulate_patterns(
            self._mod,
            cx,
            cy,
            dz,
            radius,
            float(self.params.nm_per_px),
            self._consts,
            int(self.params.supersample),
            self._table,
            self._work,
            rects,
            self._dx2,
            self._dy2,
            self._acc,
        )
        return rects

    # -- public
    def expected_electrons(self, truth: FrameTruth, out: np.ndarray | None = None) -> np.ndarray:
        """Noise-free image S(x, y) in photoelectrons, float32 (h, w)."""
        out = _check_out(out, self.shape, np.dtype(np.float32), "out")
        rects = self._patterns(truth)
        try:
            _expected_pass(
                out, self._illum, self._mod, _background_scale(self.params, truth.exposure_s)
            )
        finally:
            _clear_rects(self._mod, rects)
        return out

    def render(
        self,
        truth: FrameTruth,
        out: np.ndarray | None = None,
        *,
        noise: bool = True,
        gain: float = 1.0,
    ) -> np.ndarray:
        """Camera frame in ADU (uint8 for 8 bit, uint16 for 16 bit), shape (h, w).

        ``noise=False`` quantises the expected image without noise. ``gain`` is the
        camera's analog gain: ADU per photoelectron relative to ``params`` (2 doubles the
        ADU of the same light, the noise in electrons is unchanged).
        """
        p = self.params
        out = _check_out(out, self.shape, self.dtype, "out")
        scale = _background_scale(p, truth.exposure_s)
        inv_gain = float(gain) / p.gain_e_per_adu
        rects = self._patterns(truth)
        try:
            if noise:
                bank = self._ensure_bank()
                h, w = self.shape
                draws = self._rng.integers(0, 2 * (bank.size - w + 1), h)
                offsets = draws >> 1
                signs = np.where(draws & 1, 1.0, -1.0)
                _noise_pass(
                    out,
                    self._illum,
                    self._mod,
                    scale,
                    float(p.read_noise_e) ** 2,
                    inv_gain,
                    float(p.black_level_adu),
                    float(p.max_adu),
                    bank,
                    offsets,
                    signs,
                )
            else:
                _quantise_pass(
                    out,
                    self._illum,
                    self._mod,
                    scale,
                    inv_gain,
                    float(p.black_level_adu),
                    float(p.max_adu),
                )
        finally:
            _clear_rects(self._mod, rects)
        return out


class ReferenceRenderer:
    """Plain-NumPy reference of :class:`Renderer`: exact profile, exact Poisson noise.

    Same interface (:meth:`render`, :meth:`expected_electrons`); much slower.
    """

    def __init__(self, params: SimParams | None = None, *, seed: int | None = None):
        self.params = params if params is not None else SimParams()
        p = self.params
        self.shape = (p.height_px, p.width_px)
        self.dtype = p.dtype
        self._illum = _illumination(p)
        self._rng = (
            seed_stream(p.seed, _STREAM_RENDER) if seed is None else np.random.default_rng(seed)
        )

    def modulation(self, truth: FrameTruth) -> np.ndarray:
        """Sum of the pixel-integrated bead patterns (:func:`pixel_profile`), float64 (h, w)."""
        p = self.params
        h, w = self.shape
        ss = int(p.supersample)
        offs = (np.arange(ss) + 0.5) / ss - 0.5
        mod = np.zeros(self.shape)
        cx, cy, dz, radius = _bead_inputs(truth, p)
        r_cut = pattern_radius_nm(dz, radius, p) / p.nm_per_px
        for b in range(cx.size):
            if not (np.isfinite(cx[b]) and np.isfinite(cy[b]) and np.isfinite(dz[b])):
                continue
            i0 = max(int(np.floor(cy[b] - r_cut[b])), 0)
            i1 = min(int(np.ceil(cy[b] + r_cut[b])), h - 1)
            j0 = max(int(np.floor(cx[b] - r_cut[b])), 0)
            j1 = min(int(np.ceil(cx[b] + r_cut[b])), w - 1)
            if i1 < i0 or j1 < j0:
                continue
            ys = (np.arange(i0, i1 + 1)[:, None] + offs[None, :]).ravel() - cy[b]
            xs = (np.arange(j0, j1 + 1)[:, None] + offs[None, :]).ravel() - cx[b]
            r = np.hypot(ys[:, None], xs[None, :]) * p.nm_per_px
            val = pixel_profile(r, dz[b], radius[b], p, ss)
            val = val.reshape(i1 - i0 + 1, ss, j1 - j0 + 1, ss).mean(axis=(1, 3))
            mod[i0 : i1 + 1, j0 : j1 + 1] += val
        return mod

    def expected_electrons(self, truth: FrameTruth, out: np.ndarray | None = None) -> np.ndarray:
        """Noise-free image in photoelectrons, float64 (h, w)."""
        e = (
            self._illum
            * _background_scale(self.params, truth.exposure_s)
            * (1.0 + self.modulation(truth))
        )
        if out is not None:
            out[...] = e
            return out
        return e

    def render(
        self,
        truth: FrameTruth,
        out: np.ndarray | None = None,
        *,
        noise: bool = True,
        gain: float = 1.0,
    ) -> np.ndarray:
        """Camera frame in ADU: Poisson shot noise + Gaussian read noise, rounded, clipped."""
        p = self.params
        out = _check_out(out, self.shape, self.dtype, "out")
        e = np.maximum(self.expected_electrons(truth), 0.0)
        if noise:
            e = self._rng.poisson(e) + p.read_noise_e * self._rng.standard_normal(self.shape)
        adu = np.floor(e * gain / p.gain_e_per_adu + p.black_level_adu + 0.5)
        out[...] = np.clip(adu, 0, p.max_adu)
        return out


def _dummy_truth(params: SimParams) -> FrameTruth:
    """A one-bead frame in the sensor centre (for warm-up)."""
    return FrameTruth.still_beads(
        params.width_px / 2 * params.nm_per_px,
        params.height_px / 2 * params.nm_per_px,
        params.bead_radius_nm,
        radius_nm=params.bead_radius_nm,
        exposure_s=params.exposure_s,
    )
