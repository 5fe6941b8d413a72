"""The ROI table: which beads the tracking service tracks, and where (px).

One row per bead: a stable bead id and the top-left pixel of its square ROI in sensor
coordinates (:data:`ROI_DTYPE`). :func:`as_roi_table` accepts the forms a user writes;
:func:`validate_rois` refuses a table the workers could not track (naming the bead, the
value and the limit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .options import MIN_ROI_PX

#: One row of the ROI table: stable bead id, ROI top-left pixel (px, sensor coordinates).
#: The one definition in the project.
ROI_DTYPE = np.dtype([("bead_id", "<i4"), ("x0", "<i4"), ("y0", "<i4")])

#: Smallest ROI side the service accepts (px): the kernels' minimum.
MIN_ROI_SIZE = MIN_ROI_PX


def as_roi_table(table: Any) -> np.ndarray:
    """Convert ``table`` to a :data:`ROI_DTYPE` array.

    Accepts a structured array with fields ``bead_id``, ``x0``, ``y0``; an (n, 3) array or
    a sequence of ``(bead_id, x0, y0)``; or a mapping ``{bead_id: (x0, y0)}``. Values must
    be whole numbers (px).
    """
    if isinstance(table, dict):
        table = [(bead, *xy) for bead, xy in table.items()]
    arr = np.asarray(table)
    if arr.dtype.names is not None:
        missing = {"bead_id", "x0", "y0"} - set(arr.dtype.names)
        if missing:
            raise ValueError(f"ROI table lacks the field(s) {sorted(missing)}")
        cols = [np.asarray(arr[name]).reshape(-1) for name in ("bead_id", "x0", "y0")]
    else:
        if arr.size == 0:
            arr = arr.reshape(0, 3)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(
                f"ROI table must be rows of (bead_id, x0, y0), got an array of shape {arr.shape}"
            )
        cols = [arr[:, 0], arr[:, 1], arr[:, 2]]
    out = np.empty(cols[0].shape[0], ROI_DTYPE)
    for name, col in zip(("bead_id", "x0", "y0"), cols, strict=True):
        if col.dtype.kind not in "iuf" and col.size:
            raise ValueError(f"ROI table column {name} must be numbers, got {col.dtype}")
        values = col.astype(np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"ROI table row {i}: {name} = {col[i].item()!r} is not a whole number"
                + (" of px" if name != "bead_id" else "")
            )
        limit = 2**31 - 1
        if np.any(np.abs(values) > limit):
            i = int(np.flatnonzero(np.abs(values) > limit)[0])
            raise ValueError(f"ROI table row {i}: {name} = {col[i].item()!r} is beyond +-{limit}")
        out[name] = values.astype(np.int64)
    return out


def validate_rois(
    table: np.ndarray, roi_size: int, sensor_shape: tuple[int, int], max_beads: int
) -> None:
    """Raise ValueError (naming the bead, the value and the limit) unless every ROI of
    ``table`` (:data:`ROI_DTYPE`) is a square of ``roi_size`` px inside the sensor
    (``sensor_shape`` = (height, width) px), none overlap, bead ids are unique and >= 0,
    and there are at most ``max_beads``."""
    height, width = sensor_shape
    if not MIN_ROI_SIZE <= roi_size <= min(height, width):
        raise ValueError(
            f"roi_size {roi_size} px is outside [{MIN_ROI_SIZE}, {min(height, width)}] px "
            f"(sensor {width} x {height} px)"
        )
    n = table.shape[0]
    if n > max_beads:
        raise ValueError(f"{n} ROIs exceed max_beads = {max_beads} of this tracking service")
    ids, x0, y0 = (table[f].astype(np.int64) for f in ("bead_id", "x0", "y0"))
    for i in range(n):
        bead = int(ids[i])
        if bead < 0:
            raise ValueError(f"bead id {bead} is negative (bead ids are integers >= 0)")
        for axis, origin, limit, label in ((
            "x0", int(x0[i]), width, "width"), ("y0", int(y0[i]), height, "height")
        ):
            if origin < 0:
                raise ValueError(f"ROI of bead {bead}: {axis} = {origin} px is negative")
            if origin + roi_size > limit:
                raise ValueError(
                    f"ROI of bead {bead}: {axis} + roi_size = {origin} + {roi_size} = "
                    f"{origin + roi_size} px is beyond the sensor {label} {limit} px"
                )
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        bead = int(unique[counts > 1][0])
        raise ValueError(f"bead id {bead} appears {int(counts[unique == bead][0])} times")
    if n > 1:
        overlap = (np.abs(x0[:, None] - x0[None, :]) < roi_size) & (
            np.abs(y0[:, None] - y0[None, :]) < roi_size
        )
        np.fill_diagonal(overlap, False)
        if np.any(overlap):
            i, j = (int(v) for v in np.argwhere(overlap)[0])
            raise ValueError(
                f"ROIs of beads {int(ids[i])} and {int(ids[j])} overlap: top-left "
                f"({int(x0[i])}, {int(y0[i])}) and ({int(x0[j])}, {int(y0[j])}) px are less "
                f"than roi_size = {roi_size} px apart in both x and y"
            )
