"""Checks plans run before anything moves: each failure names the value and the fix.

Plan stubs that only read signals (``bps.rd``), so a plan refuses bad input at once,
with the instrument untouched; :func:`check_instrument_ready` reads no signal at all.
The argument checks that need no reading are in :mod:`magscope_plans._arguments`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import Msg

from magscope_devices._bead_layout import LAYOUT_FIELDS, BeadLayout
from magscope_devices._bead_tracker import BeadTracker
from magscope_devices._force_curve import ForceCalibration
from magscope_devices._microscope import Microscope

from ._arguments import InstrumentNotReadyError, PlanArgs, PlanArgumentError, PreflightError

__all__ = [
    "BeadSelection",
    "check_axis_limits",
    "check_instrument_ready",
    "check_magnet_heights",
    "check_microscope",
    "check_tracker",
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
        raise PreflightError(f"{plan} needs a microscope with a bead tracker")
    return tracker


def check_microscope(
    microscope: Any, plan: str, *, tracker: bool = False, ready: bool = True
) -> Microscope:
    """``microscope`` itself, after checking it is a :class:`Microscope` (with a bead
    tracker when ``tracker``) and, with ``ready``, that its camera and tracking processes
    are running (:func:`check_instrument_ready`)."""
    if not isinstance(microscope, Microscope):
        raise PlanArgumentError(
            plan, "microscope", microscope, f"is a {type(microscope).__name__}",
            "the Microscope device, e.g. microscope",
        )
    if tracker:
        _tracker(microscope, plan)
    if ready:
        check_instrument_ready(microscope, plan)
    return microscope


_RECOVER = (
    "fix the cause (e.g. free disk space), then restart the session (queueserver: close "
    "and reopen the environment)"
)


def check_instrument_ready(microscope: Microscope, plan: str) -> None:
    """Refuse (:class:`InstrumentNotReadyError`) when the camera's acquisition process or
    the tracking service has stopped, e.g. after the disk filled up while capturing: the
    plan would move the magnets and then fail at its first frame. Reads no signal; a
    device never connected to hardware (``init_devices(mock=True)``) passes."""
    _check_camera(getattr(microscope, "camera", None), plan)
    _check_tracking(getattr(microscope, "tracker", None), plan)


def check_tracker(tracker: Any, plan: str, *, ready: bool = True) -> BeadTracker:
    """``tracker`` itself, after checking it is a :class:`BeadTracker` and, with
    ``ready``, that its tracking service and camera are running (as
    :func:`check_instrument_ready`)."""
    if not isinstance(tracker, BeadTracker):
        raise PlanArgumentError(
            plan, "tracker", tracker, f"is a {type(tracker).__name__}",
            "the BeadTracker device, e.g. microscope.tracker",
        )
    if ready:
        _check_camera(tracker.camera, plan)
        _check_tracking(tracker, plan)
    return tracker


def _check_camera(camera: Any, plan: str) -> None:
    process = getattr(camera, "process", None)
    if process is None or getattr(process, "process", None) is None:
        return  # never started: a mock device (a real one fails to connect)
    failed = not process.running
    control = getattr(process, "control", None)
    if not failed and control is not None:
        from magscope_devices._acquisition import AcqState

        failed = int(control["state"]) == AcqState.FAILED
    if failed:
        raise InstrumentNotReadyError(
            f"{plan} refused, nothing moved: {camera.name or 'the camera'}: "
            f"{process.failure_message()}; {_RECOVER}"
        )
    pending = getattr(process, "pending_failure", "")
    if pending:  # it died and was restarted in place: say so once, before anything moves
        process.pending_failure = ""
        raise InstrumentNotReadyError(
            f"{plan} refused, nothing moved: {camera.name or 'the camera'}: the {pending} "
            "and was restarted in place with its settings; fix the cause (e.g. free disk "
            "space), then run the plan again"
        )


def _check_tracking(tracker: Any, plan: str) -> None:
    service = getattr(tracker, "service", None)
    if service is not None and not service.running:
        raise InstrumentNotReadyError(
            f"{plan} refused, nothing moved: {tracker.name or 'the bead tracker'}: the "
            f"tracking service has stopped; {_RECOVER}"
        )


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
        raise PreflightError(
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
            raise PreflightError(
                f"{plan}: beads {missing} are not in the tracker's ROI table "
                f"{in_table.tolist()}"
            )
    if chosen.size == 0:
        raise PreflightError(
            f"{plan}: the bead selection is empty (ROI table {in_table.tolist()}, reference "
            f"beads {reference.tolist()}): pass beads=[...] or add tethered beads"
        )
    if not need_heights:
        return BeadSelection(np.sort(chosen), np.sort(reference))
    if reference.size == 0:
        raise PreflightError(
            f"{plan}: no reference beads: extensions are measured against beads stuck to "
            "the surface; run `yield from find_reference_beads(microscope)` or set "
            "microscope.tracker.reference_beads"
        )
    zlut = yield from bps.rd(tracker.zlut_path)
    if not zlut:
        raise PreflightError(
            f"{plan}: no Z-LUT loaded: run zlut_sweep(microscope, ...) or "
            "load_zlut(microscope, run) first"
        )
    heights = yield from bps.rd(tracker.height_offsets)
    anchored = set(np.asarray(heights.bead_id).tolist())
    missing = sorted(set(chosen.tolist()) - anchored)
    if missing:
        raise PreflightError(
            f"{plan}: beads {missing} have no height above the reference beads: run "
            "zlut_sweep with the reference beads selected and a range that spans the "
            "tethers (e.g. -2000 to 10000 nm from the surface focus)"
        )
    return BeadSelection(np.sort(chosen), np.sort(reference))


def check_axis_limits(
    axis: Any,
    values: Sequence[float],
    *,
    plan: str,
    argument: str,
    units: str,
    what: str,
    relative_to: float = 0.0,
    single: bool = False,
) -> Generator[Msg, Any, None]:
    """Refuse (:class:`PlanArgumentError`) the first of ``values`` (+ ``relative_to``)
    outside ``axis``'s soft limits; ``single``: ``values`` is one argument, not a list."""
    low = yield from bps.rd(axis.low_limit)
    high = yield from bps.rd(axis.high_limit)
    for i, v in enumerate(values):
        target = relative_to + v
        if not low <= target <= high:
            where = f" (reaching {target:g} {units})" if relative_to else ""
            raise PlanArgumentError(
                plan, argument if single else f"{argument}[{i}]", v,
                f"is outside the {what} limits [{low:g}, {high:g}] {units}{where}",
                f"a {what} within [{low:g}, {high:g}] {units}"
                + (f", relative to {relative_to:g} {units} now" if relative_to else ""),
            )


def check_magnet_heights(
    microscope: Microscope,
    heights_mm: Sequence[float],
    *,
    plan: str,
    argument: str = "magnet_heights_mm",
    min_heights: int = 1,
) -> Generator[Msg, Any, list[float]]:
    """The heights as floats, after checking they are a list of at least ``min_heights``
    finite numbers within the magnet's limits (mm)."""
    heights = PlanArgs(plan).reals(
        argument, heights_mm, units="mm", what="magnet heights", example="[6.0, 4.0]",
        min_length=min_heights, min_distinct=min_heights,
    )
    yield from check_axis_limits(
        microscope.magnet_z, heights, plan=plan, argument=argument, units="mm",
        what="magnet height",
    )
    return heights


def require_force_calibration(
    microscope: Microscope,
    forces_pn: Sequence[float],
    *,
    plan: str,
    argument: str = "forces_pn",
    single: bool = False,
) -> Generator[Msg, Any, list[float]]:
    """The forces as floats, after checking a force calibration is loaded and covers them
    (``single``: ``forces_pn`` holds the one value of argument ``argument``)."""
    args = PlanArgs(plan)
    if single:
        forces = [args.real(argument, f, units="pN") for f in forces_pn]
    else:
        forces = args.reals(argument, forces_pn, units="pN", what="forces", example="[1, 2, 5]")
    path = yield from bps.rd(microscope.force.calibration_file)
    if not path:
        raise PreflightError(
            f"{plan}: no force calibration loaded: run force_calibration(microscope, ...) "
            "or load_force_calibration(microscope, run) first"
        )
    low = yield from bps.rd(microscope.force.low_limit)
    high = yield from bps.rd(microscope.force.high_limit)
    for i, f in enumerate(forces):
        if not low <= f <= high:
            raise PlanArgumentError(
                plan, argument if single else f"{argument}[{i}]", f,
                f"is outside the calibrated range [{low:.3g}, {high:.3g}] pN",
                f"a force within [{low:.3g}, {high:.3g}] pN, or calibrate over a wider "
                "magnet range with force_calibration",
            )
    return forces


def loaded_force_calibration(microscope: Microscope) -> Generator[Msg, Any, ForceCalibration]:
    """The force calibration ``microscope.force`` has loaded (read from its file)."""
    path = yield from bps.rd(microscope.force.calibration_file)
    return ForceCalibration.load(path)


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


def read_layout(tracker: Any) -> Generator[Msg, Any, BeadLayout]:
    """The tracker's bead layout now (:class:`~magscope_devices._bead_layout.BeadLayout`:
    bead ids, ROI origins, ROI size, nm/px, Z-LUT run uid), in increasing bead id; use
    ``.select(ids)`` for some beads in another order."""
    values = {}
    for field in LAYOUT_FIELDS:
        values[field] = yield from bps.rd(getattr(tracker, field))
    return BeadLayout(**values)
