"""The fused tracking kernel: XY, radial profile and Z of a stack of ROIs in one pass.

:func:`track_stack` runs, per ROI and in parallel over ROIs (numba ``prange``), the
per-ROI kernels of the stages: validity checks, background and the XY fit
(:func:`~.xy.locate_one`, whose last profile fit is the radial profile) and, with a
Z-LUT, the profile match (:func:`~.z_match.match_one`). Each of those sits beside its
plain-NumPy reference in its stage module. :func:`run_kernel` calls it on a checked
stack; :func:`~magscope_tracking.track`, :func:`~magscope_tracking.locate_xy` and
:func:`~magscope_tracking.build_zlut` all run this one compiled kernel.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba import n_chunks, parallel_jit
from .options import RadialBins, TrackOptions
from .xy import N_WORK, buffer_size, locate_one
from .z_match import PreparedLUT, match_one

__all__ = ["EMPTY_LUT", "run_kernel", "track_stack"]


@parallel_jit
def track_stack(stack, saturation, max_sat, n_bins, bin_px, max_iter, tol, min_score,
                 has_lut, index, u_diag, u_off, e, z, planes, second, gram, norms,
                 n_chunks, out_f, out_i, profiles):
    """out_f[:, :6] = x, y, z, xy_score, z_score, bg; out_i = status; profiles (n, n_bins)
    or (0, 0)."""
    n = stack.shape[0]
    size = buffer_size(n_bins, bin_px)
    keep = profiles.shape[0] == n
    n_planes = z.size
    for c in prange(n_chunks):
        kbuf = np.empty(size, np.int32)
        ubuf = np.empty(size)
        work = np.empty((N_WORK, n_bins))
        seg = np.empty((n_bins, 4))
        prof = np.empty(n_bins)
        q = np.empty(n_bins)
        corr = np.empty(max(n_planes, 1))
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            x, y, xy_score, status, bg, _ = locate_one(
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
                    zz, z_score, in_range = match_one(
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


#: Stand-in LUT arrays for a call without a Z-LUT (the kernel's signature is fixed).
EMPTY_LUT = (
    np.zeros(1),
    np.zeros(1),
    np.zeros(1),
    np.zeros(1),
    np.zeros((1, 1, 1)),
    np.zeros((1, 1, 1)),
    np.zeros((1, 1, 4, 4)),
    np.zeros((1, 1)),
)


def run_kernel(a: np.ndarray, options: TrackOptions, bins: RadialBins,
               lut: PreparedLUT | None, index: np.ndarray | None, profiles: bool):
    """Run :func:`track_stack` on a stack ``a`` made by :func:`~._stack.as_stack`, with
    the prepared Z-LUT ``lut`` (None: XY only) and ``index`` (n,) int64, the LUT bead of
    each ROI (checked by the caller). Returns (out_f (n, 6): x, y, z, xy_score, z_score,
    background; status (n,) int64; profiles (n, n_bins) or None)."""
    n = a.shape[0]
    if lut is not None:
        p = lut
        arrays = (p.u_diag, p.u_off, p.e, p.z_nm, p.planes, p.second, p.gram, p.norms)
    else:
        arrays = EMPTY_LUT
        index = np.zeros(n, np.int64)
    out_f = np.empty((n, 6))
    status = np.empty(n, np.int64)
    prof = np.empty((n, bins.n_bins)) if profiles else np.empty((0, 0))
    if n:
        track_stack(
            a, options.saturation_for(a.dtype), options.max_saturated_for(a.shape),
            bins.n_bins, float(bins.bin_px), int(options.max_iterations),
            float(options.tolerance_px), float(options.min_xy_score), lut is not None, index,
            *arrays, n_chunks(n), out_f, status, prof,
        )
    return out_f, status, (prof if profiles else None)
