"""World model of the simulated magnetic-tweezers microscope.

:class:`SimParams` holds every setting (frozen), :class:`SimWorld` the bead table and the
Brownian state, and :meth:`SimWorld.advance` produces one :class:`FrameTruth` per camera
frame: per-bead positions (instantaneous and exposure-averaged), force, extension, drift.

Coordinates (see docs/simulator.md): x along sensor columns, y along rows, both in nm from
the centre of the sensor's top-left pixel (pixel i has its centre at i * nm_per_px);
z is the bead centre height above the surface in nm, plus the stage drift z.

Pure NumPy; no bluesky, ophyd or Qt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import physics

__all__ = ["SimParams", "SimWorld", "FrameTruth", "TETHERED", "REFERENCE"]

TETHERED = "tethered"
REFERENCE = "reference"

# SeedSequence spawn indices: each random stream is independent of the others, so e.g.
# rendering more or fewer frames never changes the bead trajectories.
_STREAM_LAYOUT, _STREAM_BROWNIAN, _STREAM_DRIFT, _STREAM_RENDER = range(4)


def seed_stream(seed: int, stream: int) -> np.random.Generator:
    """Independent generator number ``stream`` derived from the simulation seed."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(stream + 1)[stream])


@dataclass(frozen=True)
class SimParams:
    """All settings of the simulated microscope (units in the field names).

    Sensor: ``width_px`` x ``height_px`` pixels of ``nm_per_px`` (object-side pixel size),
    ``bit_depth`` 8 or 16.

    Beads: ``n_tethered`` DNA-tethered beads and ``n_reference`` beads stuck to the surface;
    radius ``bead_radius_nm`` with relative spread ``bead_radius_cv``; DNA contour length
    uniform in ``contour_nm_range``, persistence length uniform in ``persistence_nm_range``;
    per-bead force factor 1 + ``force_scale_cv`` * N(0, 1) (magnetic content spread); a
    fraction ``nicked_fraction`` of tethers is torsionally unconstrained (no hat curve).
    Anchors at least ``edge_margin_px`` from the sensor edges and ``min_spacing_px`` apart
    in x or in y (so square ROIs of that side around them never overlap).

    Environment: ``temperature_k``, ``viscosity_pa_s`` (water at 23 C), ``min_force_pn``
    (floor of the force used by the tether mechanics).

    Magnets: :func:`physics.magnet_force` with ``magnet_f0_pn``, ``magnet_a``,
    ``magnet_l1_mm``, ``magnet_l2_mm``. Supercoiling: :func:`physics.supercoil_extension`
    with ``twist_persistence_nm``, ``plateau_rounding``, ``corner_width_turns``,
    ``melting_force_pn``, ``melting_width_pn``.

    Drift: per axis (x, y, z) a sum of ``drift_components`` sinusoids with periods
    log-uniform in ``drift_period_s_range`` and random phases, scaled to the r.m.s. speed
    ``drift_rms_speed_nm_s``; zero at the first frame, bounded (a few 100 nm).

    Camera: ``exposure_s`` default exposure; background ``background_e_per_px_ms``
    photoelectrons per pixel per ms of exposure (4000 e at the default 5 ms); a linear
    ``illumination_gradient`` (relative change corner to corner, 0 = flat);
    ``read_noise_e`` (e r.m.s.); ``electrons_per_adu`` (None: 32 e/ADU at 8 bit,
    0.25 e/ADU at 16 bit); ``black_level_adu`` offset.

    Optics: ``focal_shift``, how far the focal plane moves in the sample per nm the
    objective (the focus axis) moves. An oil-immersion objective focusing into water
    moves its focal plane by about n_water / n_oil = 0.88 of its own travel (the simple
    estimate; measured factors range down to ~0.6): a bead's defocus is its height minus
    ``focal_shift`` times the focus position. 1 is an index-matched objective.

    Bead image (see render.py): ``ring_*`` shape parameters of the defocus ring pattern,
    ``max_pattern_radius_px`` cap of its support, ``supersample`` (sub-samples per pixel
    side).

    ``seed``: everything random (layout, Brownian motion, drift, camera noise) derives from
    it through independent streams.
    """

    # sensor
    width_px: int = 1024
    height_px: int = 768
    nm_per_px: float = 100.0
    bit_depth: int = 8
    # beads
    n_tethered: int = 20
    n_reference: int = 4
    bead_radius_nm: float = 1400.0
    bead_radius_cv: float = 0.02
    contour_nm_range: tuple[float, float] = (2000.0, 8000.0)
    persistence_nm_range: tuple[float, float] = (45.0, 50.0)
    force_scale_cv: float = 0.03
    nicked_fraction: float = 0.0
    edge_margin_px: float = 40.0
    min_spacing_px: float = 70.0
    # environment
    temperature_k: float = 296.15
    viscosity_pa_s: float = 9.33e-4
    min_force_pn: float = 0.01
    # magnets
    magnet_f0_pn: float = 68.0
    magnet_a: float = 0.7
    magnet_l1_mm: float = 0.8
    magnet_l2_mm: float = 1.65
    # supercoiling
    twist_persistence_nm: float = 95.0
    plateau_rounding: float = 0.02
    corner_width_turns: float = 1.0
    melting_force_pn: float = 1.0
    melting_width_pn: float = 0.05
    # drift
    drift_rms_speed_nm_s: tuple[float, float, float] = (2.0, 2.0, 1.0)
    drift_period_s_range: tuple[float, float] = (100.0, 3000.0)
    drift_components: int = 4
    # camera
    exposure_s: float = 0.005
    background_e_per_px_ms: float = 800.0
    illumination_gradient: float = 0.0
    read_noise_e: float = 6.0
    electrons_per_adu: float | None = None
    black_level_adu: float = 0.0
    # optics
    focal_shift: float = 0.88
    # bead image (ring pattern, see render.py)
    ring_wavelength_nm: float = 200.0
    ring_z0_nm: float = 1000.0
    ring_envelope_r0_nm: float = 400.0
    ring_envelope_slope: float = 0.25
    ring_envelope_asymmetry: float = 0.15
    ring_contrast: float = 0.5
    max_pattern_radius_px: float = 40.0
    supersample: int = 1
    # randomness
    seed: int = 0

    def __post_init__(self):
        if self.width_px < 1 or self.height_px < 1:
            raise ValueError("sensor size must be positive")
        if self.nm_per_px <= 0:
            raise ValueError("nm_per_px must be positive")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, not {self.bit_depth}")
        if self.n_tethered < 0 or self.n_reference < 0:
            raise ValueError("bead counts must be >= 0")
        if self.supersample < 1:
            raise ValueError("supersample must be >= 1")
        if self.bead_radius_nm <= 0 or self.temperature_k <= 0 or self.viscosity_pa_s <= 0:
            raise ValueError("bead radius, temperature and viscosity must be positive")
        if self.contour_nm_range[0] <= 0 or self.contour_nm_range[1] < self.contour_nm_range[0]:
            raise ValueError("contour_nm_range must be (low, high) with 0 < low <= high")
        if not 0.3 <= self.focal_shift <= 1.5:
            raise ValueError(f"focal_shift={self.focal_shift!r}: must be within 0.3 to 1.5")

    @property
    def n_beads(self) -> int:
        """Total number of beads (tethered + reference)."""
        return self.n_tethered + self.n_reference

    @property
    def kt_pn_nm(self) -> float:
        """Thermal energy k_B T, pN nm."""
        return float(physics.thermal_energy(self.temperature_k))

    @property
    def gain_e_per_adu(self) -> float:
        """Photoelectrons per ADU (camera conversion gain)."""
        if self.electrons_per_adu is not None:
            return float(self.electrons_per_adu)
        return 32.0 if self.bit_depth == 8 else 0.25

    @property
    def max_adu(self) -> int:
        """Largest pixel value, 2**bit_depth - 1."""
        return (1 << self.bit_depth) - 1

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype of rendered frames (uint8 or uint16)."""
        return np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)

    def replace(self, **changes) -> SimParams:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth of one camera frame; per-bead arrays are indexed by bead id.

    Positions in nm (sensor coordinates, see module docstring), z = bead centre height
    above the surface plus drift z. ``x_nm, y_nm, z_nm`` are averaged over the exposure
    window [t_s, t_s + exposure_s] (what the camera sees); ``x0_nm, y0_nm, z0_nm`` are
    instantaneous at t_s. ``force_pn`` (NaN for reference beads) and ``extension_nm``
    (mean tether extension; 0 for reference beads) are the equilibrium values of the frame.
    ``drift_*_nm`` are the stage drift averaged over the exposure window (common to all
    beads, included in the positions).
    """

    t_s: float
    exposure_s: float
    bead_id: np.ndarray
    tethered: np.ndarray
    radius_nm: np.ndarray
    x_nm: np.ndarray
    y_nm: np.ndarray
    z_nm: np.ndarray
    x0_nm: np.ndarray
    y0_nm: np.ndarray
    z0_nm: np.ndarray
    force_pn: np.ndarray
    extension_nm: np.ndarray
    drift_x_nm: float
    drift_y_nm: float
    drift_z_nm: float
    magnet_z_mm: float
    magnet_turns: float
    focus_nm: float  # the focus axis (objective) position, nm of its travel
    focal_shift: float = 1.0  # focal plane moved per nm of focus travel

    @property
    def focal_plane_nm(self) -> float:
        """Height of the focal plane in the sample (nm): ``focal_shift`` x ``focus_nm``."""
        return self.focal_shift * self.focus_nm

    @property
    def dz_nm(self) -> np.ndarray:
        """Defocus of each bead, exposure-averaged z minus the focal plane (nm)."""
        return self.z_nm - self.focal_plane_nm

    @classmethod
    def still_beads(
        cls,
        x_nm,
        y_nm,
        z_nm,
        *,
        radius_nm,
        exposure_s: float,
        focus_nm: float = 0.0,
        magnet_z_mm: float = 10.0,
    ) -> FrameTruth:
        """A frame of beads held still at given positions (nm, sensor coordinates; z
        relative to the surface): for rendering test images and warming up kernels.
        Arrays broadcast against each other; no force, no drift."""
        x, y, z, r = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(v, float)) for v in (x_nm, y_nm, z_nm, radius_nm))
        )
        x, y, z, r = (np.array(v) for v in (x, y, z, r))
        n = x.size
        return cls(
            t_s=0.0, exposure_s=float(exposure_s), bead_id=np.arange(n),
            tethered=np.zeros(n, bool), radius_nm=r, x_nm=x, y_nm=y, z_nm=z,
            x0_nm=x.copy(), y0_nm=y.copy(), z0_nm=z.copy(), force_pn=np.full(n, np.nan),
            extension_nm=np.zeros(n), drift_x_nm=0.0, drift_y_nm=0.0, drift_z_nm=0.0,
            magnet_z_mm=float(magnet_z_mm), magnet_turns=0.0, focus_nm=float(focus_nm),
        )


@dataclass(frozen=True)
class _Mechanics:
    """Equilibrium and dynamics of the tethered beads for one magnet state (arrays (3, n))."""

    force_pn: np.ndarray
    extension_nm: np.ndarray
    eq_nm: np.ndarray  # equilibrium (dx, dy, z) relative to the anchor, z above surface
    k_pn_nm: np.ndarray
    gamma_pn_s_nm: np.ndarray
    tau_s: np.ndarray
    sigma2_nm2: np.ndarray


def _place_beads(params: SimParams, rng: np.random.Generator) -> np.ndarray:
    """Random anchor positions (px), shape (n, 2) as (x, y), at least ``min_spacing_px``
    apart in x or in y (Chebyshev distance), so square ROIs of that side never overlap."""
    n = params.n_beads
    m = params.edge_margin_px
    x_hi = params.width_px - 1 - m
    y_hi = params.height_px - 1 - m
    if n and (x_hi < m or y_hi < m):
        raise ValueError("sensor too small for the edge margin")
    placed = np.empty((n, 2))
    spacing = params.min_spacing_px
    k = 0
    stalled = 0  # successive batches of 256 candidates that placed no bead
    while k < n and stalled < 200:
        cand = np.column_stack([rng.uniform(m, x_hi, 256), rng.uniform(m, y_hi, 256)])
        k_before = k
        if k:  # drop candidates too close to the beads placed so far (vectorised)
            dmin = np.min(np.max(np.abs(cand[:, None, :] - placed[None, :k, :]), axis=-1), axis=1)
            cand = cand[dmin >= spacing]
        for c in cand:  # then place the survivors one by one
            if k == n:
                break
            if k == 0 or np.min(np.max(np.abs(placed[:k] - c), axis=1)) >= spacing:
                placed[k] = c
                k += 1
        stalled = 0 if k > k_before else stalled + 1
    if k < n:
        raise ValueError(
            f"could not place {n} beads {params.min_spacing_px} px apart on a "
            f"{params.width_px} x {params.height_px} sensor"
        )
    return placed


class SimWorld:
    """The simulated sample: beads, tethers, magnets, drift; deterministic from the seed.

    Bead ids are 0 .. n-1: tethered beads first (0 .. n_tethered-1), then reference beads.
    Call :meth:`advance` once per camera frame with increasing times.
    """

    def __init__(self, params: SimParams | None = None):
        self.params = params if params is not None else SimParams()
        p = self.params
        self._kt = p.kt_pn_nm
        rng = seed_stream(p.seed, _STREAM_LAYOUT)
        n, nt = p.n_beads, p.n_tethered
        xy_px = _place_beads(p, rng)
        self.bead_id = np.arange(n)
        self.tethered = np.arange(n) < nt
        self.anchor_x_nm = xy_px[:, 0] * p.nm_per_px
        self.anchor_y_nm = xy_px[:, 1] * p.nm_per_px
        self.radius_nm = p.bead_radius_nm * (1.0 + p.bead_radius_cv * rng.standard_normal(n))
        self.contour_nm = np.full(n, np.nan)
        self.persistence_nm = np.full(n, np.nan)
        self.force_scale = np.full(n, np.nan)
        self.coilable = np.zeros(n, dtype=bool)
        self.contour_nm[:nt] = rng.uniform(*p.contour_nm_range, nt)
        self.persistence_nm[:nt] = rng.uniform(*p.persistence_nm_range, nt)
        self.force_scale[:nt] = np.maximum(1.0 + p.force_scale_cv * rng.standard_normal(nt), 0.1)
        self.coilable[:nt] = rng.uniform(size=nt) >= p.nicked_fraction
        for a in (
            self.bead_id,
            self.tethered,
            self.anchor_x_nm,
            self.anchor_y_nm,
            self.radius_nm,
            self.contour_nm,
            self.persistence_nm,
            self.force_scale,
            self.coilable,
        ):
            a.flags.writeable = False

        # drift: per axis, sum of sinusoids with rms speed drift_rms_speed_nm_s
        drng = seed_stream(p.seed, _STREAM_DRIFT)
        k = max(int(p.drift_components), 1)
        lo, hi = p.drift_period_s_range
        periods = np.exp(drng.uniform(np.log(lo), np.log(hi), (3, k)))
        self._drift_omega = 2.0 * np.pi / periods
        self._drift_phase = drng.uniform(0.0, 2.0 * np.pi, (3, k))
        w = drng.uniform(0.5, 1.0, (3, k))  # speed amplitude weights
        speed = np.asarray(p.drift_rms_speed_nm_s, dtype=float).reshape(3, 1)
        vamp = w / np.sqrt(np.sum(w**2, axis=1, keepdims=True) / 2.0) * speed
        self._drift_amp = vamp / self._drift_omega

        self._rng = seed_stream(p.seed, _STREAM_BROWNIAN)
        self._t0: float | None = None
        self._t_last: float | None = None
        self._t_state: float | None = None
        self._pos: np.ndarray | None = None
        self._mech_prev: _Mechanics | None = None
        self._mech_cache: tuple[tuple[float, float], _Mechanics] | None = None
        self._wlc_cache: tuple[float, tuple[np.ndarray, np.ndarray]] | None = None
        t = self.tethered
        self._gamma0 = physics.stokes_drag(self.radius_nm[t], p.viscosity_pa_s)
        # positions without Brownian motion or drift: anchors, z = R for reference beads;
        # tethered rows hold (anchor x, anchor y, 0), the OU state (dx, dy, z) is added
        self._static_pos = np.stack([self.anchor_x_nm, self.anchor_y_nm, self.radius_nm])
        self._static_pos[2, t] = 0.0
        self._force_template = np.full(n, np.nan)

    # ---------------------------------------------------------------- ground truth access
    @property
    def n_beads(self) -> int:
        return self.params.n_beads

    @property
    def t0_s(self) -> float | None:
        """Time of the first :meth:`advance` call (drift origin), or None."""
        return self._t0

    def bead_table(self) -> dict[str, np.ndarray]:
        """Per-bead ground-truth parameters (copies), indexed by bead id.

        Keys: bead_id, kind ('tethered' / 'reference'), tethered (bool), coilable (bool),
        anchor_x_nm, anchor_y_nm (sensor coordinates, nm), radius_nm, contour_nm,
        persistence_nm, force_scale (NaN for reference beads).
        """
        return {
            "bead_id": self.bead_id.copy(),
            "kind": np.where(self.tethered, TETHERED, REFERENCE),
            "tethered": self.tethered.copy(),
            "coilable": self.coilable.copy(),
            "anchor_x_nm": self.anchor_x_nm.copy(),
            "anchor_y_nm": self.anchor_y_nm.copy(),
            "radius_nm": self.radius_nm.copy(),
            "contour_nm": self.contour_nm.copy(),
            "persistence_nm": self.persistence_nm.copy(),
            "force_scale": self.force_scale.copy(),
        }

    def true_force(self, magnet_z_mm: float) -> np.ndarray:
        """Force (pN) on every bead at a magnet height (mm); NaN for reference beads.

        force_scale * magnet_force(z), floored at ``min_force_pn``.
        """
        p = self.params
        f = physics.magnet_force(
            magnet_z_mm,
            p.magnet_f0_pn,
            p.magnet_a,
            p.magnet_l1_mm,
            p.magnet_l2_mm,
            self.force_scale,
        )
        return np.where(self.tethered, np.maximum(f, p.min_force_pn), np.nan)

    def true_extension(self, magnet_z_mm: float, magnet_turns: float = 0.0) -> np.ndarray:
        """Mean tether extension (nm) per bead (0 for reference beads)."""
        out = np.zeros(self.n_beads)
        t = self.tethered
        out[t] = self._mechanics(magnet_z_mm, magnet_turns).extension_nm
        return out

    def true_buckling_turns(self, magnet_z_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """True buckling points (turns) per bead at a magnet height: (positive, negative).

        positive = n_b(F) >= 0, negative = -n_b(F) where underwound DNA buckles
        (F < melting force: melting_factor > 0.5), else NaN. NaN for reference beads and
        nicked tethers. See :func:`physics.buckling_turns`.
        """
        p = self.params
        force = self.true_force(magnet_z_mm)
        nb = physics.buckling_turns(
            force, self.contour_nm, self.persistence_nm, self._kt, p.twist_persistence_nm
        )
        nb = np.where(self.coilable, nb, np.nan)
        melt = physics.melting_factor(force, p.melting_force_pn, p.melting_width_pn)
        neg = np.where(melt > 0.5, -nb, np.nan)
        return nb, neg

    def true_dynamics(self, magnet_z_mm: float, magnet_turns: float = 0.0) -> dict:
        """Stiffness, drag and time constants per bead (NaN for reference beads).

        Keys (arrays of n_beads): k_xy_pn_nm (= F / (l + R)), k_z_pn_nm (WLC slope of the
        effective contour), gamma_xy_pn_s_nm, gamma_z_pn_s_nm (surface-corrected drag),
        tau_xy_s, tau_z_s (= gamma / k), var_xy_nm2, var_z_nm2 (= kT / k),
        corner_xy_hz, corner_z_hz (= k / (2 pi gamma)).
        """
        mech = self._mechanics(magnet_z_mm, magnet_turns)
        t = self.tethered
        out = {}

        def put(key, values):
            a = np.full(self.n_beads, np.nan)
            a[t] = values
            out[key] = a

        put("k_xy_pn_nm", mech.k_pn_nm[0])
        put("k_z_pn_nm", mech.k_pn_nm[2])
        put("gamma_xy_pn_s_nm", mech.gamma_pn_s_nm[0])
        put("gamma_z_pn_s_nm", mech.gamma_pn_s_nm[2])
        put("tau_xy_s", mech.tau_s[0])
        put("tau_z_s", mech.tau_s[2])
        put("var_xy_nm2", mech.sigma2_nm2[0])
        put("var_z_nm2", mech.sigma2_nm2[2])
        put("corner_xy_hz", 1.0 / (2.0 * np.pi * mech.tau_s[0]))
        put("corner_z_hz", 1.0 / (2.0 * np.pi * mech.tau_s[2]))
        return out

    def drift_nm(self, t_s: float, window_s: float = 0.0) -> np.ndarray:
        """Stage drift (x, y, z) in nm at time t_s (s), averaged over [t_s, t_s + window_s].

        Zero at the first :meth:`advance` time (before the first call, at t_s = 0).
        """
        t = float(t_s) - (self._t0 if self._t0 is not None else 0.0)
        om, ph, amp = self._drift_omega, self._drift_phase, self._drift_amp
        if window_s > 0.0:
            s = (np.cos(om * t + ph) - np.cos(om * (t + window_s) + ph)) / (om * window_s)
        else:
            s = np.sin(om * t + ph)
        return np.sum(amp * (s - np.sin(ph)), axis=1)

    def _drift_pair(self, t_s: float, window_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(instantaneous drift at t_s, drift averaged over the window), nm, shape (3,)."""
        t = float(t_s) - (self._t0 if self._t0 is not None else 0.0)
        om, ph, amp = self._drift_omega, self._drift_phase, self._drift_amp
        c0 = np.cos(om * t + ph)
        s0 = np.sin(om * t + ph)
        sph = np.sin(ph)
        inst = (amp * (s0 - sph)).sum(axis=1)
        if window_s > 0.0:
            s = (c0 - np.cos(om * (t + window_s) + ph)) / (om * window_s)
            mean = (amp * (s - sph)).sum(axis=1)
        else:
            mean = inst
        return inst, mean

    # ---------------------------------------------------------------- dynamics
    def _mechanics(self, magnet_z_mm: float, magnet_turns: float) -> _Mechanics:
        key = (float(magnet_z_mm), float(magnet_turns))
        if self._mech_cache is not None and self._mech_cache[0] == key:
            return self._mech_cache[1]
        p = self.params
        kt = self._kt
        t = self.tethered
        length = self.contour_nm[t]
        pers = self.persistence_nm[t]
        radius = self.radius_nm[t]
        zkey = key[0]
        if self._wlc_cache is not None and self._wlc_cache[0] == zkey:
            force, l0 = self._wlc_cache[1]
        else:
            force = self.true_force(magnet_z_mm)[t]
            l0 = physics.wlc_extension(force, length, pers, kt)
            self._wlc_cache = (zkey, (force, l0))
        ext = physics.supercoil_extension(
            key[1],
            force,
            length,
            pers,
            kt,
            p.twist_persistence_nm,
            p.plateau_rounding,
            p.corner_width_turns,
            p.melting_force_pn,
            p.melting_width_pn,
            wlc_extension_nm=l0,
        )
        ext = np.where(self.coilable[t], ext, l0)
        # plectonemes take contour out of the extended tail: L_eff = L * ext / l0; the
        # axial stiffness is the WLC slope of the tail at the same force
        with np.errstate(divide="ignore", invalid="ignore"):
            l_eff = np.where(l0 > 0.0, length * ext / l0, length)
        l_eff = np.maximum(l_eff, 10.0)
        k_z = physics.wlc_stiffness(l0 / length * l_eff, l_eff, pers, kt)
        height = ext + radius
        k_xy = force / height
        g_xy = self._gamma0 * physics.faxen_lateral_factor(radius, height)
        g_z = self._gamma0 * physics.brenner_vertical_factor(radius, height)
        k = np.stack([k_xy, k_xy, k_z])
        gamma = np.stack([g_xy, g_xy, g_z])
        zeros = np.zeros_like(ext)
        mech = _Mechanics(
            force_pn=force,
            extension_nm=ext,
            eq_nm=np.stack([zeros, zeros, height]),
            k_pn_nm=k,
            gamma_pn_s_nm=gamma,
            tau_s=gamma / k,
            sigma2_nm2=kt / k,
        )
        self._mech_cache = (key, mech)
        return mech

    def advance(
        self,
        t_s: float,
        exposure_s: float,
        magnet_z_mm: float,
        magnet_turns: float,
        focus_nm: float,
        *,
        drift_time_s: float | None = None,
        drift_speed: float = 1.0,
        stage_z_offset_nm: float = 0.0,
    ) -> FrameTruth:
        """Advance the world to the frame exposed over [t_s, t_s + exposure_s].

        Parameters: t_s frame start (s, any origin, e.g. UNIX time; must not decrease),
        exposure_s (s, >= 0), magnet_z_mm (mm), magnet_turns (turns), focus_nm (nm, the
        height of the focal plane in the same frame as z).

        The magnet state given here holds from t_s until the next call (zero-order hold):
        the bead relaxes from its previous state with the old parameters up to t_s, then
        with the new ones. Each tethered bead axis is an OU process integrated exactly; the
        exposure average is sampled jointly with the end point (:func:`physics.
        ou_sample_exposure`). If t_s falls inside the previous exposure (overlapping
        frames) the state at the end of that exposure is used as the start.

        ``drift_time_s`` (default ``t_s``): the time on the drift's own clock, which a
        caller may run slower or faster than ``t_s`` (``drift_speed`` = its rate, 0: the
        stage holds still), for tests that turn the drift off and on without a jump.
        ``stage_z_offset_nm``: a step of the sample stage along z (nm), added to the drift.
        """
        t_s = float(t_s)
        w = float(exposure_s)
        if w < 0.0 or not np.isfinite(w):
            raise ValueError(f"exposure_s must be >= 0, got {exposure_s}")
        if self._t_last is not None and t_s < self._t_last:
            raise ValueError(f"time went backwards: {t_s} < {self._t_last}")
        mech = self._mechanics(magnet_z_mm, magnet_turns)
        normals = self._rng.standard_normal((3, 3, self.params.n_tethered))
        if self._pos is None:
            self._t0 = t_s
            x0 = mech.eq_nm + np.sqrt(mech.sigma2_nm2) * normals[0]
        else:
            old = self._mech_prev
            assert old is not None and self._t_state is not None  # set with self._pos
            gap = max(t_s - self._t_state, 0.0)
            x0 = old.eq_nm + physics.ou_transition(
                self._pos - old.eq_nm, gap, old.tau_s, old.sigma2_nm2, normals[0]
            )
        d_end, d_mean = physics.ou_sample_exposure(
            x0 - mech.eq_nm, w / mech.tau_s, mech.sigma2_nm2, normals[1], normals[2]
        )
        self._pos = mech.eq_nm + d_end
        self._t_state = t_s + w
        self._t_last = t_s
        self._mech_prev = mech
        mean = mech.eq_nm + d_mean

        drift_t = t_s if drift_time_s is None else float(drift_time_s)
        drift_inst, drift_mean = self._drift_pair(drift_t, w * max(float(drift_speed), 0.0))
        if stage_z_offset_nm:
            step = np.array([0.0, 0.0, float(stage_z_offset_nm)])
            drift_inst, drift_mean = drift_inst + step, drift_mean + step
        nt = self.params.n_tethered
        pos0 = self._static_pos + drift_inst[:, None]
        posm = self._static_pos + drift_mean[:, None]
        pos0[:, :nt] += x0
        posm[:, :nt] += mean
        force = self._force_template.copy()
        force[:nt] = mech.force_pn
        ext = np.zeros(self.n_beads)
        ext[:nt] = mech.extension_nm
        return FrameTruth(
            t_s=t_s,
            exposure_s=w,
            bead_id=self.bead_id,
            tethered=self.tethered,
            radius_nm=self.radius_nm,
            x_nm=posm[0],
            y_nm=posm[1],
            z_nm=posm[2],
            x0_nm=pos0[0],
            y0_nm=pos0[1],
            z0_nm=pos0[2],
            force_pn=force,
            extension_nm=ext,
            drift_x_nm=float(drift_mean[0]),
            drift_y_nm=float(drift_mean[1]),
            drift_z_nm=float(drift_mean[2]),
            magnet_z_mm=float(magnet_z_mm),
            magnet_turns=float(magnet_turns),
            focus_nm=float(focus_nm),
            focal_shift=float(self.params.focal_shift),
        )
