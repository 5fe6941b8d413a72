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
    td, yd = decimate_minmax_columns(t, np.asarray(y, np.float64)[:, None], max_points)
    return td[:, 0], yd[:, 0]


def decimate_minmax_columns(
    t: np.ndarray, y: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decimate_minmax` of every column of ``y`` (frames, traces) at once:
    (t, y) each (points, traces) float64 (the times differ between traces: each keeps
    the frames of its own extremes)."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y)
    n, k = y.shape
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if n <= max_points:
        return np.repeat(t[:, None], k, axis=1), y.astype(np.float64)
    bins = max_points // 2
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    width = int(np.diff(edges).max())
    # pad every bin to the widest one: (bins, width, traces) with NaN padding
    idx = edges[:-1, None] + np.arange(width)[None, :]
    valid = idx < edges[1:, None]
    idx = np.minimum(idx, n - 1)
    block = y[idx]
    nan = np.isnan(block) | ~valid[:, :, None]
    empty = nan.all(axis=1)  # (bins, traces)
    lo_col = np.argmin(np.where(nan, np.inf, block), axis=1)
    hi_col = np.argmax(np.where(nan, -np.inf, block), axis=1)
    rows = np.arange(bins)[:, None]
    lo_i, hi_i = idx[rows, lo_col], idx[rows, hi_col]
    out_i = np.stack([np.minimum(lo_i, hi_i), np.maximum(lo_i, hi_i)], axis=1)
    out_i = out_i.reshape(2 * bins, k)
    out_y = np.take_along_axis(y, out_i, axis=0).astype(np.float64)
    out_y[np.repeat(empty, 2, axis=0)] = np.nan
    return t[out_i], out_y


def points_for_width(width_px: float, lo: int = 100, hi: int = 2000) -> int:
    """Points a decimated trace keeps for a plot ``width_px`` screen pixels wide: one
    (min, max) pair per two pixel columns (a point per column), even, clipped to
    ``lo`` .. ``hi``."""
    n = int(width_px) if np.isfinite(width_px) else lo
    return int(min(max(n, lo), hi)) // 2 * 2


def follow_range(
    current: tuple[float, float] | None, lo: float, hi: float, margin: float = 0.1
) -> tuple[float, float] | None:
    """A new axis range when the data range (``lo``, ``hi``) left ``current`` or fills
    less than a third of it, else None (keep it: the axis need not be redrawn). The new
    range is the data's, widened by ``margin`` of its span on each side."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    span = hi - lo
    if current is not None:
        c_lo, c_hi = current
        if c_lo <= lo and hi <= c_hi and span >= (c_hi - c_lo) / 3:
            return None
    pad = margin * span if span > 0 else max(abs(hi), 1.0) * 0.05
    return (float(lo - pad), float(hi + pad))


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


def nanmedian_columns(values: np.ndarray) -> np.ndarray:
    """Median of each column of ``values`` (frames, columns), NaN ignored (NaN for a
    column without a finite value); one sort for all columns, unlike ``np.nanmedian``,
    which goes column by column when there is NaN."""
    values = np.asarray(values)
    if values.shape[0] == 0:
        return np.full(values.shape[1:], np.nan)
    ordered = np.sort(values, axis=0)  # NaN sorts last
    n = np.isfinite(values).sum(axis=0)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[None, :], axis=0)[0]
    hi = np.take_along_axis(ordered, np.maximum(n // 2, 0)[None, :], axis=0)[0]
    out = (lo.astype(np.float64) + hi) / 2
    out[n == 0] = np.nan
    return out


def kymograph(values: np.ndarray, columns: int) -> np.ndarray:
    """(beads, columns) image of ``values`` (frames, beads): the frames are cut into
    ``columns`` equal bins (fewer when there are fewer frames) and each bin gives the
    NaN-aware mean per bead; float32, C-contiguous (for ``ImageItem.setImage``)."""
    values = np.asarray(values)
    frames, beads = values.shape
    if frames == 0 or beads == 0:
        return np.zeros((beads, 0), np.float32)
    columns = max(1, min(int(columns), frames))
    edges = np.linspace(0, frames, columns + 1).astype(np.int64)
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0), edges[:-1], axis=0, dtype=np.float64)
    counts = np.add.reduceat(finite, edges[:-1], axis=0, dtype=np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return np.ascontiguousarray(means.T, dtype=np.float32)


class TraceHistory:
    """The last ``capacity`` tracked frames of every bead of the ROI table.

    :meth:`append` adds the rows the track ring gives since the last call; when the ROI
    table's bead ids change (:meth:`set_ids`) the history starts again with the new ids.
    :meth:`window` gives the frames of the last ``seconds`` as views (no copy). Times are
    UNIX s (frame timestamps); positions nm (float32: display only).

    Storage: preallocated buffers of ``2 * capacity`` frames filled front to back; when
    full, the newest ``capacity`` frames move to the front (one copy every ``capacity``
    frames), so an append costs the new rows only and every window is contiguous.
    """

    def __init__(self, capacity: int = 6000) -> None:
        self.capacity = int(capacity)
        self.ids = np.zeros(0, np.int32)
        self.next_index: int | None = None
        self.lost = 0
        self.appended = 0  # frames appended since the last reset (tells a change)
        self.reset()

    def __len__(self) -> int:
        return self._stop - self._start

    def reset(self, ids: np.ndarray | None = None) -> None:
        """Forget every frame (and take ``ids``, sorted, as the beads)."""
        if ids is not None:
            self.ids = np.sort(np.asarray(ids, np.int32))
        size = 2 * max(self.capacity, 1)
        self._tbuf = np.zeros(size)
        self._fbuf = np.zeros(size, np.int64)
        self._vbuf = {axis: np.full((size, self.ids.size), np.nan, np.float32) for axis in AXES}
        self._start = self._stop = 0
        self.appended = 0

    def set_ids(self, ids: np.ndarray) -> None:
        """Follow the ROI table: a different set of bead ids starts the history again."""
        ids = np.sort(np.asarray(ids, np.int32))
        if not np.array_equal(ids, self.ids):
            self.reset(ids)

    def _put(self, t: np.ndarray, frame: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        n = min(t.size, self.capacity)
        t, frame = t[-n:], frame[-n:]
        size = self._tbuf.size
        if self._stop + n > size:  # move the frames still wanted to the front
            keep = min(len(self), self.capacity - n)
            lo = self._stop - keep
            self._tbuf[:keep] = self._tbuf[lo : self._stop]
            self._fbuf[:keep] = self._fbuf[lo : self._stop]
            for v in self._vbuf.values():
                v[:keep] = v[lo : self._stop]
            self._start, self._stop = 0, keep
        a, b = self._stop, self._stop + n
        self._tbuf[a:b] = t
        self._fbuf[a:b] = frame
        for axis, v in self._vbuf.items():
            v[a:b] = cols[axis][-n:]
        self._stop = b
        self._start = max(self._start, b - self.capacity)
        self.appended += n

    def append(self, rows: TrackRows) -> None:
        """Add frames read from the track ring (dropped frames give NaN)."""
        self.lost += rows.lost
        if len(rows):
            self.next_index = rows.next_index
        elif rows.next_index is not None:
            self.next_index = max(self.next_index or 0, rows.next_index)
        if not len(rows):
            return
        self._put(np.asarray(rows.timestamp, np.float64), np.asarray(rows.frame_index),
                  rows.columns(self.ids))

    @property
    def last_frame_index(self) -> int:
        """Camera frame index of the newest frame held (-1 when empty)."""
        return int(self._fbuf[self._stop - 1]) if len(self) else -1

    def frame_index_from_end(self, row: int) -> int:
        """Camera frame index of the frame ``row`` (negative: -1 is the newest) held."""
        if not -len(self) <= row < 0:
            raise IndexError(f"row {row} is not among the {len(self)} frames held (-1 is the newest)")
        return int(self._fbuf[self._stop + row])

    def window(self, seconds: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(t (frames,) UNIX s, {axis: (frames, beads) nm}) of the last ``seconds`` s:
        read-only views, valid until the next :meth:`append`."""
        t = self._tbuf[self._start : self._stop]
        start = self._start
        if t.size:
            start += int(np.searchsorted(t, t[-1] - seconds, side="left"))
        out_t = self._tbuf[start : self._stop]
        out = {axis: v[start : self._stop] for axis, v in self._vbuf.items()}
        out_t.flags.writeable = False
        for view in out.values():
            view.flags.writeable = False
        return out_t, out
