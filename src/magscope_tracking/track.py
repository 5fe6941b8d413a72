"""The combined fast path: XY, radial profile and Z of a stack of bead ROIs in one kernel.

:func:`track` runs, per ROI and in parallel over ROIs (numba ``prange``): the validity
checks and background (:mod:`.background`), the centre-of-mass seed and radial-symmetry
fit (:mod:`.xy`), whose last profile fit is the radial profile (:mod:`.radial_profile`),
and, with a Z-LUT, the profile match (:mod:`.z_match`). :func:`track_reference` does the
same with the plain-NumPy twins. :func:`warmup` compiles (or loads from the on-disk
cache) every kernel for the stack dtypes in use, so the first real call does not pay it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numba import prange

from ._numba import n_chunks, parallel_jit
from .options import RadialBins, TrackOptions, TrackStatus
from .radial_profile import _as_stack
from .xy import _N_WORK, _buffer_size, _locate_one, _max_saturated, locate_xy_reference
from .z_match import _match_one, match_z_reference
from .zlut import ZLUT, ZLUTMismatchError

__all__ = ["TrackResult", "track", "track_reference", "warmup"]


@dataclass(frozen=True, eq=False)
class TrackResult:
    """Per-ROI results of :func:`track` (arrays of length n).

    - ``x_px``, ``y_px``: bead centre (px) relative to the ROI's top-left pixel, whose
      centre is (0, 0); x along columns, y along rows. NaN when lost.
    - ``z_nm``: height from the Z-LUT (nm, in the LUT's z coordinates); NaN without a LUT,
      when lost, or beyond the LUT's range (status ``Z_OUT_OF_RANGE``).
    - ``score``: the quality figure in [0, 1]: the Z-LUT match score ``z_score`` when a
      LUT was given, else the XY score ``xy_score``; 0 when lost.
    - ``xy_score``: fraction of the pixel variance (within the profile radius) explained
      by the radially symmetric model; ~0.9-1 for a bead, below ``min_xy_score`` (0.2)
      means no bead; 0 when lost.
    - ``z_score``: correlation of the profile with the LUT at the fitted z (metric of
      :mod:`.z_match`); > 0.99 for a good match. NaN without a LUT, 0 when lost.
    - ``status``: :class:`TrackStatus` codes (uint8); ``lost`` is status not in
      (OK, Z_OUT_OF_RANGE).
    - ``background``: ROI border mean (ADU); ``profiles``: (n, n_bins) radial profiles
      relative to the background (``options.return_profiles``), else None; ``bins``.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    z_nm: np.ndarray
    score: np.ndarray
    xy_score: np.ndarray
    z_score: np.ndarray
    status: np.ndarray
    background: np.ndarray
    profiles: np.ndarray | None
    bins: RadialBins

    def __len__(self) -> int:
        return int(self.x_px.size)

    @property
    def lost(self) -> np.ndarray:
        """True where x and y are not valid."""
        return (self.status != TrackStatus.OK) & (self.status != TrackStatus.Z_OUT_OF_RANGE)


# --------------------------------------------------------------------------- kernel


@parallel_jit
def _track_stack(stack, saturation, max_sat, n_bins, bin_px, max_iter, tol, min_score,
                 has_lut, index, u_diag, u_off, e, z, planes, second, gram, norms,
                 n_chunks, out_f, out_i, profiles):
    """out_f[:, :6] = x, y, z, xy_score, z_score, bg; out_i = status; profiles (n, n_bins)
    or (0, 0)."""
    n = stack.shape[0]
    size = _buffer_size(n_bins, bin_px)
    keep = profiles.shape[0] == n
    n_planes = z.size
    for c in prange(n_chunks):
        kbuf = np.empty(size, np.int32)
        ubuf = np.empty(size)
        work = np.empty((_N_WORK, n_bins))
        seg = np.empty((n_bins, 4))
        prof = np.empty(n_bins)
        q = np.empty(n_bins)
        corr = np.empty(max(n_planes, 1))
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            x, y, xy_score, status, bg, _ = _locate_one(
                stack[r], saturation, max_sat, n_bins, bin_px, max_iter, tol, min_score,
                kbuf, ubuf, work, seg,
            )
            zz = np.nan
            z_score = np.nan
            if status == 0:
                inv = 1.0 / bg
                for k in range(n_bins):
                    prof[k] = work[3, k] * inv
                if has_lut:
                    b = index[r]
                    zz, z_score, in_range = _match_one(
                        prof, u_diag, u_off, e, z, planes[b], second[b], gram[b], norms[b],
                        q, corr,
                    )
                    if not in_range:
                        zz = np.nan
                        status = 6
            elif has_lut:
                z_score = 0.0
            out_f[r, 0] = x
            out_f[r, 1] = y
            out_f[r, 2] = zz
            out_f[r, 3] = xy_score
            out_f[r, 4] = z_score
            out_f[r, 5] = bg
            out_i[r] = status
            if keep:
                for k in range(n_bins):
                    profiles[r, k] = prof[k] if (status == 0 or status == 6) else np.nan


# --------------------------------------------------------------------------- public


def _resolve(stack, zlut: ZLUT | None, bead_index, options: TrackOptions | None):
    options = options or TrackOptions()
    a = _as_stack(stack)
    n, h, w = a.shape
    if zlut is None:
        if bead_index is not None:
            raise ValueError("bead_index is only meaningful with a Z-LUT")
        return a, options, options.bins_for((h, w)), np.zeros(n, np.int64)
    if not isinstance(zlut, ZLUT):
        raise TypeError(f"zlut must be a ZLUT, got {type(zlut).__name__}")
    zlut.check_compatible((h, w), options)
    if bead_index is None:
        if zlut.n_beads != 1:
            raise ValueError(
                f"the Z-LUT has {zlut.n_beads} beads (ids {zlut.bead_ids.tolist()}): pass "
                "bead_index (e.g. zlut.index_of(bead_ids)) to say which serves each ROI"
            )
        index = np.zeros(n, np.int64)
    else:
        index = np.asarray(bead_index)
        if index.dtype.kind not in "iu":
            raise TypeError(f"bead_index must be integers, got {index.dtype}")
        index = np.ascontiguousarray(np.broadcast_to(index.astype(np.int64), (n,)))
        if n and (index.min() < 0 or index.max() >= zlut.n_beads):
            bad = index[(index < 0) | (index >= zlut.n_beads)]
            raise ZLUTMismatchError(
                f"bead_index {bad[:5].tolist()} out of range for a Z-LUT of {zlut.n_beads} "
                f"bead(s) (valid: 0..{zlut.n_beads - 1})"
            )
    return a, options, zlut.bins, index


def _result(out_f, status, zlut, profiles, bins) -> TrackResult:
    xy_score = out_f[:, 3].copy()
    z_score = out_f[:, 4].copy()
    score = z_score.copy() if zlut is not None else xy_score.copy()
    lost = (status != TrackStatus.OK) & (status != TrackStatus.Z_OUT_OF_RANGE)
    score[lost] = 0.0
    return TrackResult(
        x_px=out_f[:, 0].copy(),
        y_px=out_f[:, 1].copy(),
        z_nm=out_f[:, 2].copy(),
        score=score,
        xy_score=xy_score,
        z_score=z_score,
        status=status.astype(np.uint8),
        background=out_f[:, 5].copy(),
        profiles=profiles,
        bins=bins,
    )


_EMPTY_LUT = (
    np.zeros(1),
    np.zeros(1),
    np.zeros(1),
    np.zeros(1),
    np.zeros((1, 1, 1)),
    np.zeros((1, 1, 1)),
    np.zeros((1, 1, 4, 4)),
    np.zeros((1, 1)),
)


def track(stack, zlut: ZLUT | None = None, *, bead_index=None,
          options: TrackOptions | None = None) -> TrackResult:
    """Track the beads in a stack of ROIs: sub-pixel x, y and, with a Z-LUT, z.

    ``stack``: (n, h, w) (or one (h, w)) uint8, uint16 or float ROIs, one bead each
    (other dtypes are converted to float64).
    ``zlut``: a :class:`ZLUT` for these ROIs (same ROI size; its bins are used), or None
    for XY only. ``bead_index`` (n,) ints: the LUT bead serving each ROI (see
    :meth:`ZLUT.index_of`); may be omitted for a single-bead LUT, which serves every
    ROI. ``options``: :class:`TrackOptions`.

    Never raises for bad image content: a lost bead (blank ROI, bead at or over the
    edge, NaN pixels, saturated) gives NaN x, y, z, score 0 and a status code. Raises
    :class:`ZLUTMismatchError` if the LUT does not fit the stack.
    """
    a, options, bins, index = _resolve(stack, zlut, bead_index, options)
    out_f, status, profiles = _run_kernel(a, options, bins, zlut, index, options.return_profiles)
    return _result(out_f, status, zlut, profiles, bins)


def _run_kernel(a, options: TrackOptions, bins: RadialBins, zlut: ZLUT | None, index,
                profiles: bool):
    """Run ``_track_stack`` on a checked stack: (out_f (n, 6), status (n,), profiles)."""
    n = a.shape[0]
    if zlut is not None:
        p = zlut.prepared
        lut = (p.u_diag, p.u_off, p.e, p.z_nm, p.planes, p.second, p.gram, p.norms)
    else:
        lut = _EMPTY_LUT
        index = np.zeros(n, np.int64)
    out_f = np.empty((n, 6))
    status = np.empty(n, np.int64)
    prof = np.empty((n, bins.n_bins)) if profiles else np.empty((0, 0))
    if n:
        _track_stack(
            a, options.saturation_for(a.dtype), _max_saturated(options, a.shape), bins.n_bins,
            float(bins.bin_px), int(options.max_iterations), float(options.tolerance_px),
            float(options.min_xy_score), zlut is not None, index, *lut, n_chunks(n), out_f,
            status, prof,
        )
    return out_f, status, (prof if profiles else None)


def track_reference(stack, zlut: ZLUT | None = None, *, bead_index=None,
                    options: TrackOptions | None = None) -> TrackResult:
    """Plain-NumPy twin of :func:`track` (same algorithm, ~50x slower)."""
    a, options, bins, index = _resolve(stack, zlut, bead_index, options)
    n = a.shape[0]
    xy = locate_xy_reference(a, options=options, bins=bins, profiles=True)
    assert xy.profiles is not None
    status = xy.status.astype(np.int64)
    out_f = np.full((n, 6), np.nan)
    out_f[:, 0] = xy.x_px
    out_f[:, 1] = xy.y_px
    out_f[:, 3] = xy.score
    out_f[:, 5] = xy.background
    if zlut is not None:
        z, s, ok = match_z_reference(xy.profiles, zlut.prepared, index)
        good = status == TrackStatus.OK
        out_f[:, 2] = np.where(good, z, np.nan)
        out_f[:, 4] = np.where(good, s, 0.0)
        status[good & ~ok] = TrackStatus.Z_OUT_OF_RANGE
    profiles = xy.profiles if options.return_profiles else None
    return _result(out_f, status, zlut, profiles, bins)


# --------------------------------------------------------------------------- warm-up


def synthetic_bead(shape=(64, 64), x_px=None, y_px=None, dz: float = 0.0,
                   background: float = 125.0, contrast: float = 0.3) -> np.ndarray:
    """A noise-free, radially symmetric ring pattern (float64, ADU) for warm-up and demos.

    ``dz`` (arbitrary units, about -3 .. 3) changes the ring pattern monotonically. Not a
    physical model; use the simulator (``magscope_devices.sim``) for realistic images.
    """
    h, w = shape
    cx = (w - 1) / 2 if x_px is None else x_px
    cy = (h - 1) / 2 if y_px is None else y_px
    yy, xx = np.indices(shape, dtype=np.float64)
    r2 = (xx - cx) ** 2 + (yy - cy) ** 2
    zeff = math.sqrt(1.0 + dz * dz)
    rho = 6.5 + 2.5 * zeff
    ring = np.cos(math.pi * r2 / (20.0 * zeff) + 2.0 * math.atan(dz) + math.pi / 2)
    return background * (1.0 + contrast / zeff * np.exp(-((r2 / rho**2) ** 2)) * ring)


def warmup(dtypes=(np.uint8, np.uint16), roi_size: int = 64) -> float:
    """Compile, or load from numba's on-disk cache, the tracking kernel of :func:`track`
    (with and without a Z-LUT; also used by :func:`build_zlut` and :func:`find_beads`)
    for each stack dtype in ``dtypes``. Returns the seconds it took: about 1 s from the
    cache, 30-60 s per dtype on a first run (compilation)."""
    from .find_beads import find_beads
    from .zlut import build_zlut

    t0 = time.perf_counter()
    shape = (roi_size, roi_size)
    dz = np.linspace(-2.0, 2.0, 9)
    sweep = np.stack([synthetic_bead(shape, dz=d) for d in dz])
    lut = None
    for dtype in dtypes:
        dt = np.dtype(dtype)
        stack = sweep.astype(dt) if dt.kind == "f" else np.round(sweep).astype(dt)
        if lut is None:
            lut = build_zlut(stack, dz * 1000.0, nm_per_px=100.0, smooth_planes=0)
        track(stack)
        track(stack, lut, options=TrackOptions(return_profiles=True))
        frame = np.full((3 * roi_size, 3 * roi_size), 125.0)
        frame[roi_size : 2 * roi_size, roi_size : 2 * roi_size] = sweep[4]
        find_beads(frame.astype(dt) if dt.kind == "f" else np.round(frame).astype(dt),
                   roi_size=roi_size)
    return time.perf_counter() - t0
