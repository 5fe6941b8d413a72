"""Drift subtraction with reference beads (beads stuck to the surface).

Units: positions nm (any axis: x, y or z), frames along axis 0.

Model. The stage (and focus) drift d(t) moves every bead alike. A reference bead stuck to
the surface reports r_j(t) = r_j0 + d(t) + noise_j(t), so the drift since the start of the
record is estimated, frame by frame, as the mean (or median) over the reference beads of

    r_j(t) - <r_j>_start,

where <r_j>_start is the average of the first ``baseline_frames`` valid frames of bead j
(the reference beads' own starting positions, so beads at different places can be
combined). The corrected traces are x_i(t) - d_hat(t): they keep their absolute positions
at the start of the record. NaN-aware: a reference bead lost in some frames is left out of
those frames only; a frame with no valid reference bead gives NaN.

Averaging n_ref reference beads divides their tracking noise variance by n_ref; the noise
of the corrected trace is that of the bead plus that of the drift estimate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_drift", "subtract_drift"]


def _as_frames_by_beads(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (n_frames,) or (n_frames, n_beads), got {a.shape}")
    return a


def reference_drift(
    reference_traces_nm, *, method: str = "mean", baseline_frames: int = 10
) -> np.ndarray:
    """Drift since the start (nm, shape (n_frames,)) from reference beads (n_frames, n_ref).

    Each reference bead is taken relative to the mean of its first ``baseline_frames``
    finite frames; then the mean or median over beads per frame, ignoring NaN. Frames
    where no reference bead is valid are NaN.
    """
    if method not in ("mean", "median"):
        raise ValueError(f"method must be 'mean' or 'median', not {method!r}")
    if baseline_frames < 1:
        raise ValueError("baseline_frames must be >= 1")
    ref = _as_frames_by_beads(reference_traces_nm, "reference_traces_nm")
    rel = np.full_like(ref, np.nan)
    for j in range(ref.shape[1]):
        col = ref[:, j]
        valid = np.flatnonzero(np.isfinite(col))
        if valid.size == 0:
            continue
        rel[:, j] = col - col[valid[:baseline_frames]].mean()
    have = np.isfinite(rel)
    n_valid = have.sum(axis=1)
    out = np.full(ref.shape[0], np.nan)
    rows = n_valid > 0
    if method == "mean":
        out[rows] = np.where(have[rows], rel[rows], 0.0).sum(axis=1) / n_valid[rows]
    else:
        out[rows] = np.nanmedian(rel[rows], axis=1)
    return out


def subtract_drift(
    traces_nm, reference_traces_nm, *, method: str = "mean", baseline_frames: int = 10
) -> np.ndarray:
    """Traces (n_frames, n_beads) minus the drift measured by reference beads.

    ``traces_nm`` (n_frames, n_beads) or (n_frames,); ``reference_traces_nm`` (n_frames,
    n_ref) or (n_frames,) on the same frames and axis; ``method`` "mean" or "median" over
    the reference beads; ``baseline_frames`` frames averaged for each reference bead's
    starting position. Returns an array of the shape of ``traces_nm`` (NaN where the trace
    or every reference bead is NaN).
    """
    traces = np.asarray(traces_nm, dtype=float)
    ref = _as_frames_by_beads(reference_traces_nm, "reference_traces_nm")
    if ref.shape[0] != traces.shape[0]:
        raise ValueError(
            f"traces and references differ in frames: {traces.shape[0]} != {ref.shape[0]}"
        )
    drift = reference_drift(ref, method=method, baseline_frames=baseline_frames)
    if traces.ndim == 1:
        return traces - drift
    return traces - drift[:, None]
