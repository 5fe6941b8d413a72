"""Find bead candidates in a full camera frame ("auto-select beads").

Method:

1. Background and noise of the frame: the median and 1.4826 x the median absolute
   deviation (ADU).
2. Energy map: the local mean of (I - bg)^2 over ``roi_size // 8`` px boxes, in units
   of the noise variance, minus 1 (0 on empty background, ~10-1000 on a bead).
3. Objects: local maxima of the energy map (within ``roi_size // 4`` px) above
   ``min_snr``.
4. Strongest first, each maximum not within ``roi_size / 2`` of a bead found already
   (a ring of that bead) is located with the tracking fit in a crop of 1.5 ``roi_size``
   around it (the maximum may lie on a ring, off the centre), then the bead is fitted
   again in the ``roi_size`` ROI centred on it: that position and XY score are the
   result. Maxima that converge onto a known bead are merged into it.
5. Rejected: maxima the fit loses, beads whose ROI would leave the sensor (and maxima
   at the edge that cannot be fitted: probably beads cut by the edge), and *both*
   beads of any pair whose ROIs would overlap, edge beads included: such ROIs would
   contain two patterns.

Returns :class:`BeadCandidates` in sensor pixel coordinates (pixel (0, 0) has its centre
at (0, 0); x = column), best XY score first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .options import TrackOptions
from .track import track

__all__ = ["BeadCandidates", "find_beads", "roi_origin"]


def roi_origin(x_px, y_px, roi_size: int) -> np.ndarray:
    """Top-left pixel (col, row) of the ``roi_size`` square ROI centred on each (x, y):
    round(x - (roi_size - 1) / 2). Int64 array (n, 2)."""
    x = np.atleast_1d(np.asarray(x_px, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y_px, dtype=np.float64))
    half = (roi_size - 1) / 2.0
    return np.column_stack([np.round(x - half), np.round(y - half)]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class BeadCandidates:
    """Beads found by :func:`find_beads`: ``x_px``, ``y_px`` (sensor px) and ``score``
    (XY score in [0, 1]) arrays, best first; ``roi_size`` they were checked for."""

    x_px: np.ndarray
    y_px: np.ndarray
    score: np.ndarray
    roi_size: int

    def __len__(self) -> int:
        return int(self.x_px.size)

    @property
    def xy(self) -> np.ndarray:
        """(n, 2) array of (x_px, y_px)."""
        return np.column_stack([self.x_px, self.y_px])

    def roi_origins(self) -> np.ndarray:
        """(n, 2) top-left (col, row) of the ROIs centred on the beads."""
        return roi_origin(self.x_px, self.y_px, self.roi_size)


def _crop_fit(frame, x, y, half, options):
    """Locate the bead in the crop of half-size ``half`` around (x, y), clipped to the
    sensor: (x, y, xy_score) in sensor px, or None if it is lost there."""
    h, w = frame.shape
    x0 = max(int(round(x)) - half, 0)
    y0 = max(int(round(y)) - half, 0)
    x1 = min(int(round(x)) + half + 1, w)
    y1 = min(int(round(y)) + half + 1, h)
    radius = options.radius_px or 0.0
    if min(x1 - x0, y1 - y0) < max(16, 2 * radius + 3):
        return None
    res = track(frame[y0:y1, x0:x1][None], options=options)
    if res.lost[0]:
        return None
    return float(res.x_px[0] + x0), float(res.y_px[0] + y0), float(res.xy_score[0])


def _roi_inside(x, y, roi_size, shape) -> bool:
    x0, y0 = roi_origin(x, y, roi_size)[0]
    return bool(x0 >= 0 and y0 >= 0 and x0 + roi_size <= shape[1] and y0 + roi_size <= shape[0])


def find_beads(
    frame,
    *,
    roi_size: int,
    max_beads: int | None = None,
    min_snr: float = 5.0,
    options: TrackOptions | None = None,
) -> BeadCandidates:
    """Bead candidates in a full frame (h, w) whose ``roi_size`` ROIs fit on the sensor
    and overlap no other bead's ROI; see the module docstring. ``max_beads``: keep the
    best that many. ``min_snr``: detection threshold of the energy map (noise variances).
    ``options``: the tracking options of the fit (the bins are those of a ``roi_size``
    ROI).
    """
    a = np.asarray(frame)
    if a.ndim != 2:
        raise ValueError(f"frame must be 2-D (h, w), got shape {a.shape}")
    roi_size = int(roi_size)
    if roi_size < 16:
        raise ValueError(f"roi_size must be >= 16 px, got {roi_size}")
    options = options or TrackOptions()
    bins = options.bins_for((roi_size, roi_size))
    options = dataclasses.replace(options, bin_px=bins.bin_px, radius_px=bins.radius_px)
    f = a.astype(np.float64)
    sample = f[::2, ::2]
    bg = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - bg)))
    var = max(sigma * sigma, 1e-12)
    box = max(3, roi_size // 8)
    energy = ndimage.uniform_filter((f - bg) ** 2, size=box, mode="nearest") / var - 1.0
    nms = max(2, roi_size // 4)
    peaks = (energy == ndimage.maximum_filter(energy, size=2 * nms + 1, mode="nearest")) & (
        energy > min_snr
    )
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-energy[rows, cols], kind="stable")
    merge = roi_size / 2.0  # a peak this close to a known bead is part of it (a ring)
    half_search = roi_size // 2 + roi_size // 4  # search crop: the bead may be off-centre
    objects: list[tuple[float, float, float | None]] = []  # (x, y, score; None: at edge)
    for i in order:
        x, y = float(cols[i]), float(rows[i])
        if any(abs(x - ox) < merge and abs(y - oy) < merge for ox, oy, _ in objects):
            continue
        found = _crop_fit(a, x, y, half_search, options)
        if found is None:
            if not _roi_inside(x, y, roi_size, a.shape):
                objects.append((x, y, None))  # a bead cut by the edge: blocks neighbours
            continue
        x, y = found[0], found[1]
        if any(abs(x - ox) < 2.0 and abs(y - oy) < 2.0 for ox, oy, _ in objects):
            continue  # converged onto a bead found already
        if not _roi_inside(x, y, roi_size, a.shape):
            objects.append((x, y, None))
            continue
        x0, y0 = roi_origin(x, y, roi_size)[0]
        res = track(a[y0 : y0 + roi_size, x0 : x0 + roi_size][None], options=options)
        if res.lost[0]:
            objects.append((x, y, None))  # a bead that cannot be tracked in its ROI
            continue
        objects.append((float(res.x_px[0] + x0), float(res.y_px[0] + y0), float(res.xy_score[0])))
    keep = []
    for k, (x, y, score) in enumerate(objects):
        if score is None:
            continue
        crowded = any(
            j != k and abs(x - ox) < roi_size and abs(y - oy) < roi_size
            for j, (ox, oy, _) in enumerate(objects)
        )
        if not crowded:
            keep.append((x, y, score))
    keep.sort(key=lambda t: -t[2])
    if max_beads is not None:
        keep = keep[: int(max_beads)]
    arr = np.array(keep, dtype=np.float64).reshape(-1, 3)
    return BeadCandidates(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), roi_size)
