"""Basic acquisition plans on the microscope: focus scans and counts at magnet heights."""


from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky.utils import Msg

from magscope_devices._microscope import Microscope

from ._arguments import PlanArgs, PreflightError
from ._locks import focus_lock_suspended
from ._preflight import check_axis_limits, check_magnet_heights, check_microscope
from ._safety import check_safe_height, with_safe_finish


def camera_and_axes(microscope: Microscope, *, track: bool = False) -> list[Any]:
    """The camera (and with ``track`` the bead tracker) and the three axes, to read in
    every event.

    Pass these rather than ``[microscope.camera, microscope]``: bluesky drops a device
    whose parent is also in the list, so the camera would never be triggered.
    """
    detectors = microscope.detectors() if track else [microscope.camera]
    return [
        *detectors, microscope.magnet_z, microscope.magnet_rotation, microscope.focus,
        microscope.force,
    ]


def focus_scan(
    microscope: Microscope,
    start_nm: float,
    stop_nm: float,
    num: int,
    *,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Step the focus from ``start_nm`` to ``stop_nm`` (nm, relative to where it is) in
    ``num`` points, one camera frame per point; the focus returns to where it started.

    One run; the frames are in the run's primary stream under the camera's name.
    """
    plan = "focus_scan"
    args = PlanArgs(plan)
    start_nm = args.real("start_nm", start_nm, units="nm")
    stop_nm = args.real("stop_nm", stop_nm, units="nm")
    num = args.count("num", num, minimum=2, what="a whole number of points")
    md = args.metadata("md", md)
    check_microscope(microscope, plan)

    def body() -> Generator[Msg, Any, str]:
        focus0 = yield from bps.rd(microscope.focus)
        for argument, value in (("start_nm", start_nm), ("stop_nm", stop_nm)):
            yield from check_axis_limits(
                microscope.focus, [value], plan=plan, argument=argument, units="nm",
                what="focus", relative_to=focus0, single=True,
            )
        _md = {
            "plan_name": "focus_scan",
            "plan_args": {"start_nm": start_nm, "stop_nm": stop_nm, "num": num},
            "focus_start_nm": focus0,
        }
        _md.update(md or {})
        scan = bp.rel_scan(
            camera_and_axes(microscope), microscope.focus, start_nm, stop_nm, num, md=_md
        )
        return (
            yield from with_safe_finish(
                scan, microscope, lift_magnets=False, restore_focus_nm=focus0
            )
        )

    # the scan owns the focus: the focus lock (if on) holds still meanwhile
    return (yield from focus_lock_suspended(body(), microscope))


def count_at_heights(
    microscope: Microscope,
    magnet_heights_mm: Sequence[float],
    *,
    num: int = 5,
    delay_s: float = 0.0,
    track: bool = True,
    safe_magnet_height_mm: float | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, list[str]]:
    """At each magnet height (mm) take ``num`` camera frames, one run per height; with
    ``track`` (and a microscope with a bead tracker) also the tracked beads' x, y, z.

    The magnets return to ``safe_magnet_height_mm`` (mm; None: the microscope's configured safe height) at the end, also on failure.
    Returns the run uids.
    """
    plan = "count_at_heights"
    args = PlanArgs(plan)
    heights = args.reals(
        "magnet_heights_mm", magnet_heights_mm, units="mm", what="magnet heights",
        example="[6.0, 4.0]",
    )
    num = args.count("num", num, minimum=1, what="a whole number of frames per height")
    delay_s = args.non_negative("delay_s", delay_s, units="s")
    track = args.flag("track", track)
    safe_magnet_height_mm = args.optional_real(
        "safe_magnet_height_mm", safe_magnet_height_mm, units="mm"
    )
    md = args.metadata("md", md)
    check_microscope(microscope, plan)
    track = track and len(microscope.detectors()) > 1
    # refuse before anything moves
    heights = yield from check_magnet_heights(microscope, heights, plan=plan)
    safe_magnet_height_mm = yield from check_safe_height(
        microscope, safe_magnet_height_mm, plan=plan
    )
    if track:
        rois = yield from bps.rd(microscope.tracker.rois)
        if len(rois.bead_id) == 0:
            raise PreflightError(
                f"{plan}: no beads selected for tracking: set microscope.tracker.rois or run "
                "`yield from bps.wait_for([microscope.tracker.find_beads])` first, "
                "or pass track=False"
            )

    def inner() -> Generator[Msg, Any, list[str]]:
        uids = []
        for h in heights:
            yield from bps.mv(microscope.magnet_z, h)
            _md = {
                "plan_name": "count_at_heights",
                "plan_args": {"magnet_heights_mm": heights, "num": num, "delay_s": delay_s},
                "magnet_height_mm": h,
            }
            _md.update(md or {})
            uid = yield from bp.count(
                camera_and_axes(microscope, track=track), num=num, delay=delay_s, md=_md
            )
            uids.append(uid)
        return uids

    return (
        yield from with_safe_finish(
            inner(), microscope, safe_magnet_height_mm=safe_magnet_height_mm
        )
    )
