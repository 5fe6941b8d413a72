"""ophyd-async devices of the magnetic-tweezers microscope and their simulated twins.

The devices a user builds and drives, flat::

    from magscope_devices import SimParams, make_simulated_microscope

- the instrument: :class:`Microscope`, built from an :class:`InstrumentConfig` (read from
  YAML by :func:`load_instrument_config`, checked by :func:`parse_instrument_config`) by
  :func:`make_microscope` and its part factories (:func:`make_camera`, :func:`make_axis`,
  :func:`make_tracker`); :func:`make_simulated_microscope` (the default config's
  shortcut), :class:`SimParams` (the simulated world: beads, sensor, optics);
- its axes: :class:`MagnetZ` (mm), :class:`MagnetRotation` (turns), :class:`FocusStage`
  (nm), :class:`Force` (pN, through a :class:`ForceCalibration`; its model curve is
  :func:`magnet_force_pn`);
- its detectors: :class:`Camera`, :class:`BeadTracker` (with its ROI table
  :class:`BeadRois`, made by :func:`rois_from_centres`, and the layout of its per-bead
  arrays, :class:`BeadLayout`);
- the axes in shared memory, for other processes (the viewer): :func:`read_axes` ->
  :class:`AxesReadback` (one :class:`AxisReadback` per key of :data:`AXES`);
- the bead locks (children of the microscope, threads beside the tracker):
  :class:`FocusLock`, :class:`XYLock`;
- refusals: :class:`LimitError`, :class:`ForceRangeError`, :class:`NoForceCalibrationError`,
  :class:`InstrumentBusyError`.

The names load on first use (PEP 562): the camera process runs
``python -m magscope_devices._acquisition``, which must not import ophyd-async or Bluesky,
so this package's ``__init__`` imports nothing itself. The underscored modules are
private: import from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._axes_record import AXES, AxesReadback, AxisReadback, read_axes
    from ._bead_layout import BeadLayout
    from ._bead_rois import BeadRois, rois_from_centres
    from ._bead_tracker import BeadTracker
    from ._camera import Camera, CameraLimits
    from ._factories import make_axis, make_camera, make_microscope, make_tracker, make_video
    from ._force import Force, NoForceCalibrationError
    from ._force_curve import ForceCalibration, ForceRangeError, magnet_force_pn
    from ._health import HealthFigures, InstrumentHealth, read_health
    from ._instrument_config import (
        InstrumentConfig,
        InstrumentConfigError,
        load_instrument_config,
        parse_instrument_config,
    )
    from ._locks import FocusLock, XYLock
    from ._microscope import Microscope, make_simulated_microscope
    from ._motors import FocusStage, LimitError, MagnetRotation, MagnetZ
    from ._ownership import InstrumentBusyError
    from ._summary import MicroscopeSummary
    from ._video import VideoMode, VideoRecorder, VideoRecordingError
    from .sim.world import SimParams

#: exported name -> the submodule that defines it
_SOURCES = {
    "AXES": "._axes_record",
    "AxesReadback": "._axes_record",
    "AxisReadback": "._axes_record",
    "read_axes": "._axes_record",
    "BeadLayout": "._bead_layout",
    "BeadRois": "._bead_rois",
    "BeadTracker": "._bead_tracker",
    "Camera": "._camera",
    "CameraLimits": "._camera",
    "FocusLock": "._locks",
    "FocusStage": "._motors",
    "Force": "._force",
    "ForceCalibration": "._force_curve",
    "ForceRangeError": "._force_curve",
    "HealthFigures": "._health",
    "InstrumentHealth": "._health",
    "read_health": "._health",
    "InstrumentBusyError": "._ownership",
    "InstrumentConfig": "._instrument_config",
    "InstrumentConfigError": "._instrument_config",
    "load_instrument_config": "._instrument_config",
    "parse_instrument_config": "._instrument_config",
    "make_axis": "._factories",
    "make_camera": "._factories",
    "make_microscope": "._factories",
    "make_tracker": "._factories",
    "LimitError": "._motors",
    "MagnetRotation": "._motors",
    "MagnetZ": "._motors",
    "Microscope": "._microscope",
    "MicroscopeSummary": "._summary",
    "NoForceCalibrationError": "._force",
    "SimParams": ".sim.world",
    "magnet_force_pn": "._force_curve",
    "make_simulated_microscope": "._microscope",
    "rois_from_centres": "._bead_rois",
    "XYLock": "._locks",
    "VideoMode": "._video",
    "VideoRecorder": "._video",
    "VideoRecordingError": "._video",
    "make_video": "._factories",
}

__all__ = [
    "AXES",
    "AxesReadback",
    "AxisReadback",
    "BeadLayout",
    "BeadRois",
    "BeadTracker",
    "Camera",
    "CameraLimits",
    "FocusLock",
    "FocusStage",
    "Force",
    "ForceCalibration",
    "ForceRangeError",
    "HealthFigures",
    "InstrumentBusyError",
    "InstrumentHealth",
    "LimitError",
    "MagnetRotation",
    "MagnetZ",
    "Microscope",
    "MicroscopeSummary",
    "NoForceCalibrationError",
    "SimParams",
    "VideoMode",
    "VideoRecorder",
    "VideoRecordingError",
    "XYLock",
    "magnet_force_pn",
    "make_simulated_microscope",
    "InstrumentConfig",
    "InstrumentConfigError",
    "load_instrument_config",
    "parse_instrument_config",
    "make_axis",
    "make_camera",
    "make_microscope",
    "make_tracker",
    "make_video",
    "read_axes",
    "read_health",
    "rois_from_centres",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
