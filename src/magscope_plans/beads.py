"""Plan stubs to choose the tracked beads: add, move, remove by stable bead id.

Each reads the tracker's ROI table, changes it and sets it back (the tracker checks the
new table against the sensor and the other ROIs; a refused table changes nothing).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import Msg

from magscope_devices.bead_tracker import (
    BeadRois,
    BeadTracker,
    with_bead_added,
    with_bead_moved,
    without_beads,
)


def add_bead(
    tracker: BeadTracker, x_px: float, y_px: float, *, bead_id: int | None = None
) -> Generator[Msg, Any, int]:
    """Track a bead centred at (``x_px``, ``y_px``) (sensor px); returns its bead id."""
    table: BeadRois = yield from bps.rd(tracker.rois)
    size = yield from bps.rd(tracker.roi_size_px)
    new = with_bead_added(table, x_px, y_px, size, bead_id)
    yield from bps.mv(tracker.rois, new)
    return int(new.bead_id[-1])


def move_bead(
    tracker: BeadTracker, bead_id: int, x_px: float, y_px: float
) -> Generator[Msg, Any, None]:
    """Re-centre bead ``bead_id``'s ROI at (``x_px``, ``y_px``) (sensor px)."""
    table: BeadRois = yield from bps.rd(tracker.rois)
    size = yield from bps.rd(tracker.roi_size_px)
    yield from bps.mv(tracker.rois, with_bead_moved(table, bead_id, x_px, y_px, size))


def remove_beads(tracker: BeadTracker, bead_ids: Sequence[int]) -> Generator[Msg, Any, None]:
    """Stop tracking ``bead_ids``; the other beads keep their ids."""
    table: BeadRois = yield from bps.rd(tracker.rois)
    yield from bps.mv(tracker.rois, without_beads(table, bead_ids))
