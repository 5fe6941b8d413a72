"""The public face of the fused tracking kernel: :func:`track` and :func:`locate_xy`.

:func:`track` runs the one compiled kernel (:mod:`._kernels`) per ROI and in parallel
over ROIs: the validity checks and background (:mod:`.background`), the centre-of-mass
seed and radial-symmetry fit (:mod:`.xy`), whose last profile fit is the radial profile
(:mod:`.radial_profile`), and, with a Z-LUT, the profile match (:mod:`.z_match`).
:func:`locate_xy` is the same kernel without a Z-LUT. :func:`track_reference` and
:func:`~.xy.locate_xy_reference` do the same with the plain-NumPy twins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._kernels import run_kernel
from ._stack import as_stack
from .options import RadialBins, TrackOptions, TrackStatus
from .xy import XYResult, locate_xy_reference
from .z_match import match_z_reference
from .zlut import ZLUT, ZLUTMismatchError

__all__ = ["TrackResult", "locate_xy", "track", "track_reference"]


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


def _resolve(stack, zlut: ZLUT | None, bead_index, options: TrackOptions | None):
    options = options or TrackOptions()
    a = as_stack(stack)
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
    lut = zlut.prepared if zlut is not None else None
    out_f, status, profiles = run_kernel(a, options, bins, lut, index, options.return_profiles)
    return _result(out_f, status, zlut, profiles, bins)


def locate_xy(stack, *, options: TrackOptions | None = None, bins: RadialBins | None = None,
              profiles: bool = False) -> XYResult:
    """Sub-pixel bead centres of the ROIs of ``stack`` (n, h, w) (numba, parallel: the
    kernel of :func:`track` without a Z-LUT).

    ``bins`` default: ``options.bins_for((h, w))``. ``profiles=True`` also returns the
    relative radial profiles fitted at the final centres.
    """
    options = options or TrackOptions()
    a = as_stack(stack)
    bins = bins or options.bins_for(a.shape[1:])
    out_f, status, prof = run_kernel(a, options, bins, None, None, profiles)
    return XYResult(out_f[:, 0], out_f[:, 1], out_f[:, 3], status.astype(np.uint8),
                    out_f[:, 5], prof, bins)


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
