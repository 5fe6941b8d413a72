# Plans: the microscope's experiments and bead stubs, and bluesky's plan modules (bp, bps).
# In the queue, pass "microscope" (or "microscope.tracker" to the bead stubs) as the device:
# the queueserver checks the name when the plan is submitted.
import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky_queueserver import parameter_annotation_decorator

import magscope_plans as _plans
from magscope_plans import camera_and_axes


def _device_checked(plan, parameter, names):
    """``plan`` with its device parameter checked against ``names`` at submission."""
    kind = parameter.capitalize() + "Name"
    spec = {"parameters": {parameter: {"annotation": kind, "devices": {kind: list(names)}}}}
    return parameter_annotation_decorator(spec)(plan)


_MICROSCOPES = ["microscope"]
_TRACKERS = ["microscope.tracker", "tracker"]

zlut_sweep = _device_checked(_plans.zlut_sweep, "microscope", _MICROSCOPES)
force_calibration = _device_checked(_plans.force_calibration, "microscope", _MICROSCOPES)
force_extension = _device_checked(_plans.force_extension, "microscope", _MICROSCOPES)
rotation_extension = _device_checked(_plans.rotation_extension, "microscope", _MICROSCOPES)
force_ramp = _device_checked(_plans.force_ramp, "microscope", _MICROSCOPES)
force_clamp = _device_checked(_plans.force_clamp, "microscope", _MICROSCOPES)
count_at_heights = _device_checked(_plans.count_at_heights, "microscope", _MICROSCOPES)
focus_scan = _device_checked(_plans.focus_scan, "microscope", _MICROSCOPES)
restore_safe_state = _device_checked(_plans.restore_safe_state, "microscope", _MICROSCOPES)
move_axes = _device_checked(_plans.move_axes, "microscope", _MICROSCOPES)
lock_focus = _device_checked(_plans.lock_focus, "microscope", _MICROSCOPES)
unlock_focus = _device_checked(_plans.unlock_focus, "microscope", _MICROSCOPES)
lock_xy = _device_checked(_plans.lock_xy, "microscope", _MICROSCOPES)
unlock_xy = _device_checked(_plans.unlock_xy, "microscope", _MICROSCOPES)
set_video_mode = _device_checked(_plans.set_video_mode, "microscope", _MICROSCOPES)
auto_select_beads = _device_checked(_plans.auto_select_beads, "tracker", _TRACKERS)
find_reference_beads = _device_checked(_plans.find_reference_beads, "tracker", _TRACKERS)
add_bead = _device_checked(_plans.add_bead, "tracker", _TRACKERS)
move_bead = _device_checked(_plans.move_bead, "tracker", _TRACKERS)
remove_beads = _device_checked(_plans.remove_beads, "tracker", _TRACKERS)

# interactive only (they take a Tiled run object): load_zlut(microscope, tiled[uid])
load_zlut = _plans.load_zlut
load_force_calibration = _plans.load_force_calibration


def instrument_state():
    """Magnet height (mm), magnet rotation (turns), focus (nm) and force (pN) now, the
    tracked bead ids and those without a height (no Z-LUT for them); for the queue: ``api.function_execute(BFunc("instrument_state"), run_in_background=True)``."""
    from bluesky.run_engine import call_in_bluesky_event_loop

    axes = {
        "magnet_z_mm": microscope.magnet_z, "magnet_turns": microscope.magnet_rotation,
        "focus_nm": microscope.focus, "force_pn": microscope.force,
    }
    state = {
        key: float(call_in_bluesky_event_loop(axis.readback.get_value()))
        for key, axis in axes.items()
    }
    rois = call_in_bluesky_event_loop(microscope.tracker.rois.get_value())
    heights = call_in_bluesky_event_loop(microscope.tracker.height_offsets.get_value())
    state["bead_ids"] = sorted(int(b) for b in rois.bead_id)
    # beads the plans refuse until a Z-LUT sweep gives them a height above the references
    state["beads_without_height"] = sorted(set(state["bead_ids"]) - {int(b) for b in heights.bead_id})
    return state
