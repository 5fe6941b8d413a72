# Plans: the microscope's experiments and bead stubs, and bluesky's plan modules (bp, bps).
# In the queue, pass "microscope" (or "microscope.tracker" to the bead stubs) as the device:
# the queueserver checks the name when the plan is submitted.
import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky_queueserver import parameter_annotation_decorator

from magscope_plans import basic, beads, safety
from magscope_plans import force_calibration as _fc
from magscope_plans import force_extension as _fe
from magscope_plans import force_protocols as _fp
from magscope_plans import zlut as _zlut
from magscope_plans.basic import camera_and_axes


def _device_checked(plan, parameter, names):
    """``plan`` with its device parameter checked against ``names`` at submission."""
    kind = parameter.capitalize() + "Name"
    spec = {"parameters": {parameter: {"annotation": kind, "devices": {kind: list(names)}}}}
    return parameter_annotation_decorator(spec)(plan)


_MICROSCOPES = ["microscope"]
_TRACKERS = ["microscope.tracker", "tracker"]

zlut_sweep = _device_checked(_zlut.zlut_sweep, "microscope", _MICROSCOPES)
force_calibration = _device_checked(_fc.force_calibration, "microscope", _MICROSCOPES)
force_extension = _device_checked(_fe.force_extension, "microscope", _MICROSCOPES)
rotation_extension = _device_checked(_fe.rotation_extension, "microscope", _MICROSCOPES)
force_ramp = _device_checked(_fp.force_ramp, "microscope", _MICROSCOPES)
force_clamp = _device_checked(_fp.force_clamp, "microscope", _MICROSCOPES)
count_at_heights = _device_checked(basic.count_at_heights, "microscope", _MICROSCOPES)
focus_scan = _device_checked(basic.focus_scan, "microscope", _MICROSCOPES)
restore_safe_state = _device_checked(safety.restore_safe_state, "microscope", _MICROSCOPES)
auto_select_beads = _device_checked(beads.auto_select_beads, "tracker", _TRACKERS)
find_reference_beads = _device_checked(beads.find_reference_beads, "tracker", _TRACKERS)
add_bead = _device_checked(beads.add_bead, "tracker", _TRACKERS)
move_bead = _device_checked(beads.move_bead, "tracker", _TRACKERS)
remove_beads = _device_checked(beads.remove_beads, "tracker", _TRACKERS)

# interactive only (they take a Tiled run object): load_zlut(microscope, tiled[uid])
load_zlut = _zlut.load_zlut
load_force_calibration = _fc.load_force_calibration


def instrument_state():
    """Magnet height (mm), magnet rotation (turns), focus (nm) and force (pN) now; for the
    queue: ``api.function_execute(BFunc("instrument_state"), run_in_background=True)``."""
    from bluesky.run_engine import call_in_bluesky_event_loop

    axes = {
        "magnet_z_mm": microscope.magnet_z, "magnet_turns": microscope.magnet_rotation,
        "focus_nm": microscope.focus, "force_pn": microscope.force,
    }
    return {
        key: float(call_in_bluesky_event_loop(axis.readback.get_value()))
        for key, axis in axes.items()
    }
