"""Bead heights relative to surface-stuck reference beads, from a Z-LUT sweep.

A Z-LUT made by a focus sweep knows each bead's profile only against the focus offset:
plane k of bead i holds P(h_i - f_k), with h_i the bead's (unknown) height and f_k the
focal plane, P the bead image as a function of defocus (the same optics for every bead).
So bead i's stack is the reference bead's stack shifted along z by h_i - h_ref:

    P_i[k] = P_ref[k + s],   s = (h_i - h_ref) / step    (planes equally spaced by step,
                                                     z_k = -f_k increasing)

:func:`height_offsets_nm` finds that shift for every bead by minimising the normalised
mean squared difference of the two stacks over their overlapping planes, refined to a
fraction of a plane by a parabola through the best three shifts. The sweep must span the
height differences plus ``min_overlap_planes`` planes: to anchor tethers up to 8 um long,
sweep from just below the reference beads' focus to 10 um above it.

With reference beads stuck to the surface (centres at height R), h_i - h_ref is the
tether extension plus the difference of the bead radii (about 2 % of R for commercial
beads): heights from here are *extensions* to within that.

Pure NumPy; units nm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .zlut import ZLUT

__all__ = ["height_offsets_nm", "profile_shift_planes"]


def profile_shift_planes(
    stack, reference_stack, *, min_overlap_planes: int = 10
) -> tuple[float, float]:
    """Shift s (planes, fractional) with ``stack[k] ~ reference_stack[k + s]``, and the
    normalised mismatch at the best integer shift (0 = identical; NaN if no overlap).

    Both stacks are (n_planes, n_bins) profiles on the same equally spaced planes.
    """
    a = np.asarray(stack, dtype=float)
    b = np.asarray(reference_stack, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"stacks must be two (planes, bins) arrays alike, got {a.shape}, {b.shape}")
    n = a.shape[0]
    if n < min_overlap_planes:
        raise ValueError(
            f"{n} planes are fewer than min_overlap_planes={min_overlap_planes}"
        )
    shifts = np.arange(-(n - min_overlap_planes), n - min_overlap_planes + 1)
    cost = np.empty(shifts.size)
    for j, s in enumerate(shifts):
        k0, k1 = max(0, -s), min(n, n - s)
        x, y = a[k0:k1], b[k0 + s : k1 + s]
        cost[j] = np.mean((x - y) ** 2) / max(np.mean(x**2 + y**2), 1e-300)
    best = int(np.argmin(cost))
    frac = 0.0
    if 0 < best < shifts.size - 1:
        cm, c0, cp = cost[best - 1], cost[best], cost[best + 1]
        curvature = cm - 2.0 * c0 + cp
        if curvature > 0:
            frac = float(np.clip(0.5 * (cm - cp) / curvature, -0.5, 0.5))
    return float(shifts[best] + frac), float(cost[best])


def height_offsets_nm(
    lut: ZLUT,
    reference_ids: Sequence[int] | np.ndarray,
    *,
    min_overlap_planes: int = 10,
    max_mismatch: float = 0.05,
) -> np.ndarray:
    """Height (nm) of every bead of ``lut`` above the mean of the reference beads, at the
    sweep that built the LUT (reference beads themselves come out near 0).

    Each bead is matched against every reference bead (:func:`profile_shift_planes`) and
    the heights averaged. A bead whose best match is worse than ``max_mismatch`` (or whose
    stack does not overlap a reference's by ``min_overlap_planes``) gets NaN: widen the
    sweep. Raises ValueError if no reference bead is in the LUT or the planes are not
    equally spaced.
    """
    refs = np.asarray(list(reference_ids), dtype=np.int64)
    present = refs[np.isin(refs, lut.bead_ids)]
    if present.size == 0:
        raise ValueError(
            f"none of the reference beads {refs.tolist()} is in the Z-LUT "
            f"(beads {lut.bead_ids.tolist()}): sweep the reference beads too"
        )
    step = np.diff(lut.z_nm)
    if not np.allclose(step, step[0], rtol=1e-6, atol=1e-6):
        raise ValueError("the Z-LUT planes are not equally spaced: cannot anchor heights")
    dz = float(step[0])
    ref_idx = lut.index_of(present)
    out = np.full(lut.n_beads, np.nan)
    for i in range(lut.n_beads):
        heights = []
        for r in ref_idx:
            if r == i:
                heights.append(0.0)
                continue
            s, mismatch = profile_shift_planes(
                lut.profiles[i], lut.profiles[r], min_overlap_planes=min_overlap_planes
            )
            if np.isfinite(mismatch) and mismatch <= max_mismatch:
                # plane k is z_k = -f_k: P_i[k] = P(h_i + z_k) = P_r[k + s] = P(h_r + z_k + s dz)
                heights.append(s * dz)
        if heights:
            out[i] = float(np.mean(heights))
    # express relative to the mean reference bead
    ref_heights = out[ref_idx]
    if np.any(np.isfinite(ref_heights)):
        out = out - np.nanmean(ref_heights)
    return out
