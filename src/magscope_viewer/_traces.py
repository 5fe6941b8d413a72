"""Pure NumPy parts of the trace and kymograph panels (no Qt; unit-tested on their own).

- :class:`TraceHistory` keeps the last frames of every bead of the ROI table, fed from the
  track ring (:meth:`~magscope_viewer.LiveSource.tracks_since`).
- :func:`decimate_minmax` cuts a trace to at most a given number of points and keeps its
  extremes (a spike stays visible), so a redraw costs the same whatever the frame rate.
- :func:`minus_reference` subtracts the mean of the reference beads (drift correction).
- :func:`kymograph` bins the z of all beads into one (beads, columns) image.
"""

from __future__ import annotations

import numpy as np

from magscope_ipc.track_ring import TrackRows

AXES = ("x_nm", "y_nm", "z_nm")


def decimate_minmax(t: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of the trace (``t``, ``y``): the frames are cut into
    ``max_points // 2`` bins and each bin gives its minimum and its maximum, in time order.
    NaN (lost bead, dropped frame) is ignored within a bin; a bin of NaN only gives NaN (a
    gap). A trace already short enough is returned as it is."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = t.size
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if n <= max_points:
        return t, y
    bins = max_points // 2
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    width = int(np.diff(edges).max())
    # pad every bin to the widest one: (bins, width) with NaN padding
    idx = edges[:-1, None] + np.arange(width)[None, :]
    valid = idx < edges[1:, None]
    idx = np.minimum(idx, n - 1)
    block = np.where(valid, y[idx], np.nan)
    empty = np.all(np.isnan(block), axis=1)
    fill = np.where(np.isnan(block), np.inf, block)
    lo_col = np.argmin(fill, axis=1)
    hi_col = np.argmax(np.where(np.isnan(block), -np.inf, block), axis=1)
    rows = np.arange(bins)
    lo_i, hi_i = idx[rows, lo_col], idx[rows, hi_col]
    first = np.minimum(lo_i, hi_i)
    second = np.maximum(lo_i, hi_i)
    out_i = np.column_stack([first, second]).ravel()
    out_y = y[out_i].copy()
    out_y[np.repeat(empty, 2)] = np.nan
    return t[out_i], out_y


def minus_reference(values: np.ndarray, ids: np.ndarray, reference_ids) -> np.ndarray:
    """``values`` (frames, beads; columns in the order of ``ids``) minus, frame by frame,
    the mean of the reference beads' columns (NaN-aware). Without reference beads among
    ``ids`` the values are returned unchanged."""
    ref = np.isin(np.asarray(ids), np.asarray(list(reference_ids), dtype=np.int64))
    if not ref.any():
        return values
    picked = values[:, ref]
    finite = np.isfinite(picked)
    counts = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        drift = np.where(finite, picked, 0.0).sum(axis=1) / counts  # all-NaN frame: NaN
    return values - drift[:, None]


def kymograph(values: np.ndarray, columns: int) -> np.ndarray:
    """(beads, columns) image of ``values`` (frames, beads): the frames are cut into
    ``columns`` equal bins (fewer when there are fewer frames) and each bin gives the
    NaN-aware mean per bead; float32, C-contiguous (for ``ImageItem.setImage``)."""
    values = np.asarray(values, dtype=np.float64)
    frames, beads = values.shape
    if frames == 0 or beads == 0:
        return np.zeros((beads, 0), np.float32)
    columns = max(1, min(int(columns), frames))
    edges = np.linspace(0, frames, columns + 1).astype(np.int64)
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), edges[:-1], axis=0)
    counts = np.add.reduceat(finite.astype(np.int64), edges[:-1], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return np.ascontiguousarray(means.T, dtype=np.float32)


class TraceHistory:
    """The last ``capacity`` tracked frames of every bead of the ROI table.

    :meth:`update` appends the rows the track ring gives since the last call (the first
    call starts at the newest frame); when the ROI table's bead ids change the history
    starts again with the new ids. :meth:`window` gives the frames of the last ``seconds``.
    Times are UNIX s (frame timestamps); positions nm.
    """

    def __init__(self, capacity: int = 6000) -> None:
        self.capacity = int(capacity)
        self.ids = np.zeros(0, np.int32)
        self.next_index: int | None = None
        self.lost = 0
        self._t = np.zeros(0)
        self._frame = np.zeros(0, np.int64)
        self._values = {axis: np.zeros((0, 0)) for axis in AXES}

    def __len__(self) -> int:
        return int(self._t.size)

    def reset(self, ids: np.ndarray | None = None) -> None:
        """Forget every frame (and take ``ids``, sorted, as the beads)."""
        if ids is not None:
            self.ids = np.sort(np.asarray(ids, np.int32))
        self._t = np.zeros(0)
        self._frame = np.zeros(0, np.int64)
        self._values = {axis: np.zeros((0, self.ids.size)) for axis in AXES}

    def set_ids(self, ids: np.ndarray) -> None:
        """Follow the ROI table: a different set of bead ids starts the history again."""
        ids = np.sort(np.asarray(ids, np.int32))
        if not np.array_equal(ids, self.ids):
            self.reset(ids)

    def append(self, rows: TrackRows) -> None:
        """Add frames read from the track ring (dropped frames give NaN)."""
        self.lost += rows.lost
        if len(rows):
            self.next_index = rows.next_index
        elif rows.next_index is not None:
            self.next_index = max(self.next_index or 0, rows.next_index)
        if not len(rows):
            return
        cols = rows.columns(self.ids)
        self._t = np.concatenate([self._t, rows.timestamp])[-self.capacity :]
        self._frame = np.concatenate([self._frame, rows.frame_index])[-self.capacity :]
        for axis in AXES:
            self._values[axis] = np.concatenate([self._values[axis], cols[axis]])[-self.capacity :]

    @property
    def last_frame_index(self) -> int:
        """Camera frame index of the newest frame held (-1 when empty)."""
        return int(self._frame[-1]) if self._frame.size else -1

    def window(self, seconds: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(t (frames,) UNIX s, {axis: (frames, beads) nm}) of the last ``seconds`` s."""
        if not self._t.size:
            return self._t, dict(self._values)
        start = int(np.searchsorted(self._t, self._t[-1] - seconds, side="left"))
        return self._t[start:], {axis: v[start:] for axis, v in self._values.items()}
