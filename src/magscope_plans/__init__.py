"""Bluesky plans for magnetic-tweezers experiments and the analysis they need.

The plans and plan stubs a user calls, flat like :mod:`bluesky.plans`::

    from magscope_plans import force_calibration, force_extension, zlut_sweep

    RE(zlut_sweep(microscope))
    RE(force_calibration(microscope, [8.0, 4.0, 2.0]))

- Experiments (each one run): :func:`zlut_sweep`, :func:`force_calibration`,
  :func:`force_extension`, :func:`rotation_extension`, :func:`force_ramp`,
  :func:`force_clamp`, :func:`focus_scan`, :func:`count_at_heights`;
- bead stubs (no run): :func:`auto_select_beads`, :func:`find_reference_beads`,
  :func:`add_bead`, :func:`move_bead`, :func:`remove_beads`; axis moves (no run):
  :func:`move_axes`; the bead locks (no run): :func:`lock_focus`, :func:`unlock_focus`,
  :func:`lock_xy`, :func:`unlock_xy`, :func:`focus_lock_suspended` (for plans that own
  the focus), :class:`FocusLockSuspender` (pause while the focus lock is lost); images
  around a trigger (in a run): :func:`save_frames`; the video mode: :func:`set_video_mode`
  (no run), :func:`with_video_mode` (for a plan's run);
- the instrument's safe state: :func:`restore_safe_state`, :func:`with_safe_finish`;
- results of past runs loaded into the instrument: :func:`load_zlut`,
  :func:`load_force_calibration` (from a Tiled run), :func:`zlut_from_run`,
  :func:`force_calibration_from_run` (the values, rebuilt from the run's streams);
- refusals (a plan that will not start says why in one line): :class:`PlanRefusal`,
  :class:`PlanArgumentError`, :class:`PreflightError`, :class:`InstrumentNotReadyError`;
- for plans of your own: :class:`TrackRecorder` (a full-rate record of the tracker, a fly
  scan into a ``tracks`` stream); the field names of :func:`force_calibration`'s
  ``calibration`` and ``force_fit`` streams, :data:`CALIBRATION_FIELDS` and
  :data:`FIT_FIELDS`.

Pure analysis (PSD and Allan-variance forces, WLC fits, drift) is in
:mod:`magscope_plans.analysis`. The underscored modules are private: import from here.
"""

from ._arguments import (
    InstrumentNotReadyError,
    PlanArgumentError,
    PlanRefusal,
    PreflightError,
)
from ._axes import move_axes
from ._basic import camera_and_axes, count_at_heights, focus_scan
from ._beads import add_bead, auto_select_beads, find_reference_beads, move_bead, remove_beads
from ._force_calibration import (
    CALIBRATION_FIELDS,
    FIT_FIELDS,
    force_calibration,
    load_force_calibration,
)
from ._force_extension import force_extension, rotation_extension
from ._force_protocols import force_clamp, force_ramp
from ._health import HEALTH_STREAM, health_wrapper
from ._locks import (
    FocusLockSuspender,
    focus_lock_suspended,
    lock_focus,
    lock_xy,
    unlock_focus,
    unlock_xy,
)
from ._recording import TrackRecorder
from ._run_results import NoResultError, force_calibration_from_run, zlut_from_run
from ._safety import restore_safe_state, with_safe_finish
from ._video import save_frames, set_video_mode, with_video_mode
from ._zlut import load_zlut, zlut_sweep

__all__ = [
    "CALIBRATION_FIELDS",
    "FIT_FIELDS",
    "FocusLockSuspender",
    "HEALTH_STREAM",
    "InstrumentNotReadyError",
    "NoResultError",
    "PlanArgumentError",
    "PlanRefusal",
    "PreflightError",
    "TrackRecorder",
    "add_bead",
    "auto_select_beads",
    "camera_and_axes",
    "count_at_heights",
    "find_reference_beads",
    "focus_scan",
    "force_calibration",
    "force_calibration_from_run",
    "force_clamp",
    "force_extension",
    "focus_lock_suspended",
    "force_ramp",
    "health_wrapper",
    "load_force_calibration",
    "load_zlut",
    "lock_focus",
    "lock_xy",
    "move_axes",
    "move_bead",
    "remove_beads",
    "restore_safe_state",
    "save_frames",
    "set_video_mode",
    "rotation_extension",
    "unlock_focus",
    "unlock_xy",
    "with_safe_finish",
    "with_video_mode",
    "zlut_from_run",
    "zlut_sweep",
]
