"""Leaving the instrument safe when a plan ends, fails or is aborted."""


from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import finalize_wrapper
from bluesky.utils import Msg

from magscope_devices._microscope import Microscope

from ._arguments import PlanArgs, PlanArgumentError


def check_safe_height(
    microscope: Microscope, height_mm: float | None, *, plan: str
) -> Generator[Msg, Any, float]:
    """The magnet height (mm) ``plan`` leaves the magnets at: ``height_mm``, or, when None,
    the microscope's configured safe height (``microscope.magnet_z.safe_height``, the
    instrument config's ``magnet_z.safe``, 8 mm by default). Refused
    (:class:`PlanArgumentError` naming the value and the limit) outside the axis's limits;
    nothing moves."""
    from ._preflight import check_axis_limits

    if height_mm is None:
        height_mm = float((yield from bps.rd(microscope.magnet_z.safe_height)))
    yield from check_axis_limits(
        microscope.magnet_z, [height_mm], plan=plan, argument="safe_magnet_height_mm",
        units="mm", what="magnet height", single=True,
    )
    return height_mm


def restore_safe_state(
    microscope: Microscope, *, safe_magnet_height_mm: float | None = None
) -> Generator[Msg, Any, None]:
    """Magnets up to ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe
    height, ``microscope.magnet_z.safe_height``), rotation stopped where it is.

    Runs also when the camera has failed: it only moves the magnets."""
    plan = "restore_safe_state"
    if not isinstance(microscope, Microscope):
        raise PlanArgumentError(
            plan, "microscope", microscope, f"is a {type(microscope).__name__}",
            "the Microscope device, e.g. microscope",
        )
    height = PlanArgs(plan).optional_real("safe_magnet_height_mm", safe_magnet_height_mm, units="mm")
    height = yield from check_safe_height(microscope, height, plan=plan)
    yield from bps.stop(microscope.magnet_rotation)
    yield from bps.mv(microscope.magnet_z, height)


def with_safe_finish(
    plan: Generator[Msg, Any, Any],
    microscope: Microscope,
    *,
    safe_magnet_height_mm: float | None = None,
    lift_magnets: bool = True,
    restore_focus_nm: float | None = None,
    restore_turns: float | None = None,
) -> Generator[Msg, Any, Any]:
    """Run ``plan``; whatever happens, turn the magnets back to ``restore_turns`` (turns),
    lift them to ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe
    height) unless ``lift_magnets`` is False, and bring the focus back to
    ``restore_focus_nm`` (nm). ``restore_turns`` or ``restore_focus_nm`` None leaves that
    axis alone. Check the height before the plan with :func:`check_safe_height`."""

    def cleanup() -> Generator[Msg, Any, None]:
        if restore_turns is not None:
            yield from bps.stop(microscope.magnet_rotation)
            yield from bps.mv(microscope.magnet_rotation, restore_turns)
        if lift_magnets:
            yield from restore_safe_state(microscope, safe_magnet_height_mm=safe_magnet_height_mm)
        if restore_focus_nm is not None:
            yield from bps.mv(microscope.focus, restore_focus_nm)

    return (yield from finalize_wrapper(plan, cleanup()))
