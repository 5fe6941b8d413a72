"""The bead tracker's tables: the ROI table (one row per bead) and the per-bead height
offsets, and the pure helpers that edit an ROI table (beads keep their ids)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ophyd_async.core import Array1D, Table

__all__ = [
    "BeadHeights",
    "BeadRois",
    "offsets_for",
    "rois_from_centres",
    "with_bead_added",
    "with_bead_moved",
    "without_beads",
]


class BeadRois(Table):
    """The ROI table: one row per bead; ROI top-left corner in sensor px."""

    bead_id: Array1D[np.int32]
    x0_px: Array1D[np.int32]
    y0_px: Array1D[np.int32]


class BeadHeights(Table):
    """Per-bead height offsets (nm) added to the tracked z, so that every bead's z is its
    height above the reference beads at the Z-LUT sweep (see
    :mod:`magscope_tracking.height_anchor`). Beads not in the table get no offset."""

    bead_id: Array1D[np.int32]
    offset_nm: Array1D[np.float64]


def rois_from_centres(
    bead_ids: Sequence[int] | np.ndarray,
    x_px: Sequence[float] | np.ndarray,
    y_px: Sequence[float] | np.ndarray,
    roi_size_px: int,
) -> BeadRois:
    """ROIs of ``roi_size_px`` centred (to the nearest pixel) on bead centres (sensor px)."""
    half = roi_size_px // 2
    return BeadRois(
        bead_id=np.asarray(bead_ids, np.int32),
        x0_px=(np.rint(np.asarray(x_px, float)) - half).astype(np.int32),
        y0_px=(np.rint(np.asarray(y_px, float)) - half).astype(np.int32),
    )


def with_bead_added(
    table: BeadRois, x_px: float, y_px: float, roi_size_px: int, bead_id: int | None = None
) -> BeadRois:
    """``table`` plus a bead centred at (``x_px``, ``y_px``) (sensor px). Its id is
    ``bead_id`` or one more than the largest id in the table."""
    ids = np.asarray(table.bead_id, np.int64)
    new_id = int(ids.max(initial=-1)) + 1 if bead_id is None else int(bead_id)
    if new_id in set(ids.tolist()):
        raise ValueError(f"bead id {new_id} is already in the ROI table")
    return table + rois_from_centres([new_id], [x_px], [y_px], roi_size_px)


def with_bead_moved(
    table: BeadRois, bead_id: int, x_px: float, y_px: float, roi_size_px: int
) -> BeadRois:
    """``table`` with bead ``bead_id``'s ROI re-centred at (``x_px``, ``y_px``) (sensor px);
    the bead keeps its id."""
    ids = np.asarray(table.bead_id)
    hits = np.flatnonzero(ids == bead_id)
    if hits.size == 0:
        raise ValueError(f"bead id {bead_id} is not in the ROI table {ids.tolist()}")
    moved = rois_from_centres([bead_id], [x_px], [y_px], roi_size_px)
    x0, y0 = np.array(table.x0_px), np.array(table.y0_px)
    x0[hits[0]], y0[hits[0]] = moved.x0_px[0], moved.y0_px[0]
    return BeadRois(bead_id=np.array(ids, np.int32), x0_px=x0, y0_px=y0)


def without_beads(table: BeadRois, bead_ids: Sequence[int]) -> BeadRois:
    """``table`` without the beads ``bead_ids``; the other beads keep their ids."""
    ids = np.asarray(table.bead_id)
    missing = sorted(set(int(b) for b in bead_ids) - set(ids.tolist()))
    if missing:
        raise ValueError(f"bead ids {missing} are not in the ROI table {ids.tolist()}")
    keep = ~np.isin(ids, np.asarray(list(bead_ids)))
    return BeadRois(
        bead_id=np.array(ids[keep], np.int32),
        x0_px=np.array(table.x0_px)[keep],
        y0_px=np.array(table.y0_px)[keep],
    )


def offsets_for(table: BeadHeights, ids: np.ndarray) -> np.ndarray | None:
    """Height offsets (nm) for the track-file columns ``ids`` (0 for beads not in
    ``table``), or None when the table is empty."""
    if len(table.bead_id) == 0:
        return None
    lookup = dict(
        zip(np.asarray(table.bead_id).tolist(), np.asarray(table.offset_nm).tolist(), strict=True)
    )
    return np.array([lookup.get(int(i), 0.0) for i in ids])
