"""Leaving the instrument safe when a plan ends, fails or is aborted."""


from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import finalize_wrapper
from bluesky.utils import Msg

from magscope_devices._microscope import Microscope

from ._arguments import PlanArgs, PlanArgumentError

#: Magnet height (mm) plans retreat to when they finish: the lowest force.
DEFAULT_SAFE_MAGNET_HEIGHT_MM = 8.0


def restore_safe_state(
    microscope: Microscope, *, safe_magnet_height_mm: float = DEFAULT_SAFE_MAGNET_HEIGHT_MM
) -> Generator[Msg, Any, None]:
    """Magnets up to ``safe_magnet_height_mm`` (mm), rotation stopped where it is.

    Runs also when the camera has failed: it only moves the magnets."""
    from ._preflight import check_axis_limits

    plan = "restore_safe_state"
    if not isinstance(microscope, Microscope):
        raise PlanArgumentError(
            plan, "microscope", microscope, f"is a {type(microscope).__name__}",
            "the Microscope device, e.g. microscope",
        )
    height = PlanArgs(plan).real("safe_magnet_height_mm", safe_magnet_height_mm, units="mm")
    yield from check_axis_limits(
        microscope.magnet_z, [height], plan=plan, argument="safe_magnet_height_mm",
        units="mm", what="magnet height", single=True,
    )
    yield from bps.stop(microscope.magnet_rotation)
    yield from bps.mv(microscope.magnet_z, height)


def with_safe_finish(
    plan: Generator[Msg, Any, Any],
    microscope: Microscope,
    *,
    safe_magnet_height_mm: float | None = DEFAULT_SAFE_MAGNET_HEIGHT_MM,
    restore_focus_nm: float | None = None,
    restore_turns: float | None = None,
) -> Generator[Msg, Any, Any]:
    """Run ``plan``; whatever happens, turn the magnets back to ``restore_turns`` (turns),
    leave them at a safe height (mm) and the focus back at ``restore_focus_nm`` (nm).
    ``None`` leaves that axis alone."""

    def cleanup() -> Generator[Msg, Any, None]:
        if restore_turns is not None:
            yield from bps.stop(microscope.magnet_rotation)
            yield from bps.mv(microscope.magnet_rotation, restore_turns)
        if safe_magnet_height_mm is not None:
            yield from restore_safe_state(microscope, safe_magnet_height_mm=safe_magnet_height_mm)
        if restore_focus_nm is not None:
            yield from bps.mv(microscope.focus, restore_focus_nm)

    return (yield from finalize_wrapper(plan, cleanup()))
