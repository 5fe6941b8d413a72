"""Plan stubs to choose the tracked beads: add, move, remove by stable bead id, and find
the reference beads (stuck to the surface).

Each reads the tracker's ROI table, changes it and sets it back (the tracker checks the
new table against the sensor and the other ROIs; a refused table changes nothing).
"""


import functools
from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import Msg

from magscope_devices._bead_tracker import (
    BeadRois,
    BeadTracker,
    with_bead_added,
    with_bead_moved,
    without_beads,
)

from ._arguments import PlanArgs
from ._preflight import check_tracker


def add_bead(
    tracker: BeadTracker, x_px: float, y_px: float, *, bead_id: int | None = None
) -> Generator[Msg, Any, int]:
    """Track a bead centred at (``x_px``, ``y_px``) (sensor px); returns its bead id."""
    args = PlanArgs("add_bead")
    x_px = args.non_negative("x_px", x_px, units="px")
    y_px = args.non_negative("y_px", y_px, units="px")
    bead_id = args.optional_count("bead_id", bead_id, minimum=0, what="a bead id")
    check_tracker(tracker, "add_bead", ready=False)
    table: BeadRois = yield from bps.rd(tracker.rois)
    size = yield from bps.rd(tracker.roi_size_px)
    new = with_bead_added(table, x_px, y_px, size, bead_id)
    yield from bps.mv(tracker.rois, new)
    return int(new.bead_id[-1])


def move_bead(
    tracker: BeadTracker, bead_id: int, x_px: float, y_px: float
) -> Generator[Msg, Any, None]:
    """Re-centre bead ``bead_id``'s ROI at (``x_px``, ``y_px``) (sensor px)."""
    args = PlanArgs("move_bead")
    bead_id = args.count("bead_id", bead_id, minimum=0, what="a bead id")
    x_px = args.non_negative("x_px", x_px, units="px")
    y_px = args.non_negative("y_px", y_px, units="px")
    check_tracker(tracker, "move_bead", ready=False)
    table: BeadRois = yield from bps.rd(tracker.rois)
    size = yield from bps.rd(tracker.roi_size_px)
    yield from bps.mv(tracker.rois, with_bead_moved(table, bead_id, x_px, y_px, size))


def remove_beads(tracker: BeadTracker, bead_ids: Sequence[int]) -> Generator[Msg, Any, None]:
    """Stop tracking ``bead_ids``; the other beads keep their ids."""
    ids = PlanArgs("remove_beads").bead_ids("bead_ids", bead_ids, allow_none=False)
    check_tracker(tracker, "remove_beads", ready=False)
    table: BeadRois = yield from bps.rd(tracker.rois)
    yield from bps.mv(tracker.rois, without_beads(table, ids or []))


def find_reference_beads(
    tracker: BeadTracker, *, frames: int = 200, max_lateral_std_nm: float = 10.0
) -> Generator[Msg, Any, list[int]]:
    """Mark the beads stuck to the surface as reference beads; returns their ids.

    Watches the next ``frames`` frames: a bead whose x and y standard deviations (nm,
    after removing each bead's linear drift) are both below ``max_lateral_std_nm`` does not
    move on a tether. Tethered beads move by tens of nm even at 30 pN; stuck beads only
    by the tracking noise (about 1 nm). Sets ``tracker.reference_beads``.
    """
    args = PlanArgs("find_reference_beads")
    frames = args.count("frames", frames, minimum=10, what="a whole number of frames")
    max_lateral_std_nm = args.positive("max_lateral_std_nm", max_lateral_std_nm, units="nm")
    check_tracker(tracker, "find_reference_beads")
    (task,) = yield from bps.wait_for([functools.partial(tracker.next_tracks, frames)])
    tracks = task.result()
    t = np.arange(tracks["x_nm"].shape[0], dtype=float)
    stds = []
    for field in ("x_nm", "y_nm"):
        values = tracks[field]
        stds.append(np.array([_detrended_std(t, values[:, b]) for b in range(values.shape[1])]))
    still = (stds[0] < max_lateral_std_nm) & (stds[1] < max_lateral_std_nm)
    ids = tracks["bead_id"][still].astype(np.int32)
    yield from bps.mv(tracker.reference_beads, ids)
    return [int(b) for b in ids]


def _detrended_std(t: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(y)
    if ok.sum() < 3:
        return float("inf")
    coeffs = np.polyfit(t[ok], y[ok], 1)
    return float(np.std(y[ok] - np.polyval(coeffs, t[ok])))


def auto_select_beads(
    tracker: BeadTracker, *, max_beads: int | None = None
) -> Generator[Msg, Any, list[int]]:
    """Track the beads found in the newest camera frame (replaces the ROI table; new ids);
    returns their ids. The plan form of ``await tracker.find_beads()``, for the queue."""
    args = PlanArgs("auto_select_beads")
    max_beads = args.optional_count("max_beads", max_beads, minimum=1, what="a whole number of beads")
    check_tracker(tracker, "auto_select_beads")
    (task,) = yield from bps.wait_for([functools.partial(tracker.find_beads, max_beads)])
    table: BeadRois = task.result()
    return [int(b) for b in table.bead_id]
