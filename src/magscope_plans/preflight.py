"""Checks plans run before anything moves: each failure names the value and the fix.

Plan stubs that only read signals (``bps.rd``), so a plan refuses bad input at once,
with the instrument untouched.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import Msg

from magscope_devices.microscope import Microscope

__all__ = [
    "BeadSelection",
    "check_magnet_heights",
    "require_force_calibration",
    "select_beads",
]


@dataclass(frozen=True)
class BeadSelection:
    """Beads a plan measures and the reference beads it subtracts drift with (ids)."""

    beads: np.ndarray
    reference: np.ndarray


def _tracker(microscope: Microscope, plan: str):
    tracker = getattr(microscope, "tracker", None)
    if tracker is None:
        raise ValueError(f"{plan} needs a microscope with a bead tracker")
    return tracker


def select_beads(
    microscope: Microscope,
    beads: Sequence[int] | None,
    *,
    plan: str,
    need_heights: bool = True,
) -> Generator[Msg, Any, BeadSelection]:
    """The tethered beads to measure (``beads`` or every non-reference bead of the ROI
    table) and the reference beads; with ``need_heights``, also require a Z-LUT and height
    offsets (an anchored Z-LUT sweep) for all of them."""
    tracker = _tracker(microscope, plan)
    rois = yield from bps.rd(tracker.rois)
    in_table = np.asarray(rois.bead_id, dtype=np.int64)
    if in_table.size == 0:
        raise ValueError(
            f"{plan}: no beads selected: set microscope.tracker.rois or run "
            "`yield from bps.wait_for([microscope.tracker.find_beads])` first"
        )
    reference = np.asarray((yield from bps.rd(tracker.reference_beads)), dtype=np.int64)
    reference = reference[np.isin(reference, in_table)]
    if beads is None:
        chosen = in_table[~np.isin(in_table, reference)]
    else:
        chosen = np.asarray(list(beads), dtype=np.int64)
        missing = sorted(set(chosen.tolist()) - set(in_table.tolist()))
        if missing:
            raise ValueError(
                f"{plan}: beads {missing} are not in the tracker's ROI table "
                f"{in_table.tolist()}"
            )
    if chosen.size == 0:
        raise ValueError(
            f"{plan}: the bead selection is empty (ROI table {in_table.tolist()}, reference "
            f"beads {reference.tolist()}): pass beads=[...] or add tethered beads"
        )
    if not need_heights:
        return BeadSelection(np.sort(chosen), np.sort(reference))
    if reference.size == 0:
        raise ValueError(
            f"{plan}: no reference beads: extensions are measured against beads stuck to "
            "the surface; run `yield from find_reference_beads(microscope)` or set "
            "microscope.tracker.reference_beads"
        )
    zlut = yield from bps.rd(tracker.zlut_path)
    if not zlut:
        raise ValueError(
            f"{plan}: no Z-LUT loaded: run zlut_sweep(microscope, ...) or "
            "load_zlut(microscope, run) first"
        )
    heights = yield from bps.rd(tracker.height_offsets)
    anchored = set(np.asarray(heights.bead_id).tolist())
    missing = sorted(set(chosen.tolist()) - anchored)
    if missing:
        raise ValueError(
            f"{plan}: beads {missing} have no height above the reference beads: run "
            "zlut_sweep with the reference beads selected and a range that spans the "
            "tethers (e.g. -2000 to 10000 nm from the surface focus)"
        )
    return BeadSelection(np.sort(chosen), np.sort(reference))


def check_magnet_heights(
    microscope: Microscope, heights_mm: Sequence[float], *, plan: str
) -> Generator[Msg, Any, list[float]]:
    """The heights as floats, after checking each against the magnet's limits (mm)."""
    heights = [float(h) for h in heights_mm]
    if not heights:
        raise ValueError(f"{plan} needs at least one magnet height")
    low = yield from bps.rd(microscope.magnet_z.low_limit)
    high = yield from bps.rd(microscope.magnet_z.high_limit)
    for h in heights:
        if not low <= h <= high:
            raise ValueError(
                f"{plan}: magnet height {h} mm is outside the magnet limits [{low}, {high}] mm"
            )
    return heights


def require_force_calibration(
    microscope: Microscope, forces_pn: Sequence[float], *, plan: str
) -> Generator[Msg, Any, list[float]]:
    """The forces as floats, after checking a force calibration is loaded and covers them."""
    forces = [float(f) for f in forces_pn]
    if not forces:
        raise ValueError(f"{plan} needs at least one force")
    path = yield from bps.rd(microscope.force.calibration_file)
    if not path:
        raise ValueError(
            f"{plan}: no force calibration loaded: run force_calibration(microscope, ...) "
            "or load_force_calibration(microscope, run) first"
        )
    low = yield from bps.rd(microscope.force.low_limit)
    high = yield from bps.rd(microscope.force.high_limit)
    for f in forces:
        if not (np.isfinite(f) and low <= f <= high):
            raise ValueError(
                f"{plan}: force {f} pN is outside the calibrated range [{low:.3g}, "
                f"{high:.3g}] pN: calibrate over a wider magnet range with force_calibration"
            )
    return forces


def plan_metadata(
    plan: str,
    plan_args: dict[str, Any],
    sel: BeadSelection,
    md: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    """The start-document metadata of an experiment: the plan's name and arguments (with
    the beads it measures), the bead and reference bead ids Tiled queries find it by,
    ``extra`` keys, and the user's ``md`` merged last."""
    out: dict[str, Any] = {
        "plan_name": plan,
        "plan_args": {**plan_args, "beads": sel.beads.tolist()},
        "bead_ids": sel.beads.tolist(),
        "reference_bead_ids": sel.reference.tolist(),
        **extra,
    }
    out.update(md or {})
    return out
