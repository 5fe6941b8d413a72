"""A plan stub to move the microscope's axes (magnet height or force, magnet rotation,
focus) together: what the viewer's controls and a plan's own moves use.

No run is opened. Every argument is checked (finite numbers, within the axis's soft limits
and, for a force, within the loaded calibration) before the first move, so a refused
request moves nothing.
"""


from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import Msg

from magscope_devices._microscope import Microscope

from ._arguments import PlanArgs, PreflightError
from ._preflight import check_axis_limits, check_microscope, require_force_calibration


def move_axes(
    microscope: Microscope,
    *,
    magnet_z_mm: float | None = None,
    magnet_turns: float | None = None,
    force_pn: float | None = None,
    focus_nm: float | None = None,
) -> Generator[Msg, Any, dict[str, float]]:
    """Move the given axes to absolute targets at once and wait for all to arrive:
    magnet height ``magnet_z_mm`` (mm) or force ``force_pn`` (pN, through the loaded force
    calibration; not both), magnet rotation ``magnet_turns`` (turns), focus ``focus_nm``
    (nm). Returns the targets moved to (by argument name). A focus move is refused while
    the focus lock is on (the lock is the focus's one writer then)."""
    plan = "move_axes"
    args = PlanArgs(plan)
    targets = {
        "magnet_z_mm": args.optional_real("magnet_z_mm", magnet_z_mm, units="mm"),
        "magnet_turns": args.optional_real("magnet_turns", magnet_turns, units="turns"),
        "force_pn": args.optional_real("force_pn", force_pn, units="pN"),
        "focus_nm": args.optional_real("focus_nm", focus_nm, units="nm"),
    }
    given = {key: value for key, value in targets.items() if value is not None}
    if not given:
        raise args.error(
            "magnet_z_mm", None, "is missing (no axis given)",
            "at least one of magnet_z_mm, magnet_turns, force_pn, focus_nm",
        )
    if "magnet_z_mm" in given and "force_pn" in given:
        raise args.error(
            "force_pn", force_pn, "is given with magnet_z_mm (both set the magnet height)",
            "either magnet_z_mm or force_pn",
        )
    check_microscope(microscope, plan, ready=False)
    axes = {
        "magnet_z_mm": (microscope.magnet_z, "mm", "magnet height"),
        "magnet_turns": (microscope.magnet_rotation, "turns", "magnet rotation"),
        "focus_nm": (microscope.focus, "nm", "focus"),
    }
    lock = getattr(microscope, "focus_lock", None)
    if "focus_nm" in given and lock is not None and (yield from bps.rd(lock.enabled)):
        # the focus has one writer while the lock holds it
        raise PreflightError(
            f"{plan}: the focus lock is on and moves the focus: unlock_focus first, or "
            "give the lock another target (lock_focus(microscope, target_nm=...))"
        )
    moves: list[Any] = []
    for key, value in given.items():
        if key == "force_pn":
            yield from require_force_calibration(
                microscope, [value], plan=plan, argument="force_pn", single=True
            )
            moves += [microscope.force, value]
            continue
        axis, units, what = axes[key]
        yield from check_axis_limits(
            axis, [value], plan=plan, argument=key, units=units, what=what, single=True
        )
        moves += [axis, value]
    yield from bps.mv(*moves)
    return given
