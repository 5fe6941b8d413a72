"""ophyd-async devices of the magnetic-tweezers microscope and their simulated twins.

The devices a user builds and drives, flat::

    from magscope_devices import SimParams, make_simulated_microscope

- the instrument: :class:`Microscope`, :func:`make_simulated_microscope` (the simulated
  one, the default), :class:`SimParams` (its world: beads, sensor, optics);
- its axes: :class:`MagnetZ` (mm), :class:`MagnetRotation` (turns), :class:`FocusStage`
  (nm), :class:`Force` (pN, through a :class:`ForceCalibration`);
- its detectors: :class:`Camera`, :class:`BeadTracker` (with its ROI table
  :class:`BeadRois`, made by :func:`rois_from_centres`, and the layout of its per-bead
  arrays, :class:`BeadLayout`);
- refusals: :class:`LimitError`, :class:`ForceRangeError`, :class:`NoForceCalibrationError`,
  :class:`InstrumentBusyError`.

The names load on first use (PEP 562): the camera process runs
``python -m magscope_devices.acquisition``, which must not import ophyd-async or Bluesky,
so this package's ``__init__`` imports nothing itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bead_layout import BeadLayout
    from .bead_rois import BeadRois, rois_from_centres
    from .bead_tracker import BeadTracker
    from .camera import Camera, CameraLimits
    from .force import Force, NoForceCalibrationError
    from .force_curve import ForceCalibration, ForceRangeError
    from .microscope import Microscope, make_simulated_microscope
    from .motors import FocusStage, LimitError, MagnetRotation, MagnetZ
    from .ownership import InstrumentBusyError
    from .sim.world import SimParams
    from .summary import MicroscopeSummary

#: exported name -> the submodule that defines it
_SOURCES = {
    "BeadLayout": ".bead_layout",
    "BeadRois": ".bead_rois",
    "BeadTracker": ".bead_tracker",
    "Camera": ".camera",
    "CameraLimits": ".camera",
    "FocusStage": ".motors",
    "Force": ".force",
    "ForceCalibration": ".force_curve",
    "ForceRangeError": ".force_curve",
    "InstrumentBusyError": ".ownership",
    "LimitError": ".motors",
    "MagnetRotation": ".motors",
    "MagnetZ": ".motors",
    "Microscope": ".microscope",
    "MicroscopeSummary": ".summary",
    "NoForceCalibrationError": ".force",
    "SimParams": ".sim.world",
    "make_simulated_microscope": ".microscope",
    "rois_from_centres": ".bead_rois",
}

__all__ = [
    "BeadLayout",
    "BeadRois",
    "BeadTracker",
    "Camera",
    "CameraLimits",
    "FocusStage",
    "Force",
    "ForceCalibration",
    "ForceRangeError",
    "InstrumentBusyError",
    "LimitError",
    "MagnetRotation",
    "MagnetZ",
    "Microscope",
    "MicroscopeSummary",
    "NoForceCalibrationError",
    "SimParams",
    "make_simulated_microscope",
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
