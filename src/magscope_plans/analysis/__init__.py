"""Pure analysis for magnetic-tweezers experiments: plain functions over NumPy arrays.

They run inside plans and on arrays read back from Tiled alike; no bluesky, ophyd or Qt.
Units: nm, s, Hz, pN, turns (see docs/analysis.md for the models and equations).

- :func:`psd_force`, :func:`allan_force`: force from a bead's lateral fluctuations
  (blurred, aliased OU model), returning :class:`ForceResult`;
- :func:`expected_corner_hz`, :func:`record_length_s`: how long to record for a target
  force precision;
- :func:`wlc_fit` (:class:`WLCFit`), :func:`wlc_extension_nm`, :func:`wlc_force_pn`:
  worm-like chain;
- :func:`buckling_point` (:class:`BucklingResult`): hat curves;
- :func:`subtract_drift`, :func:`reference_drift`: drift correction with reference beads;
- :func:`mean_and_sem`: mean and honest standard error of a correlated trace;
- :func:`radius_from_drag`, :func:`combine_estimates`: a bead's radius from its drag;
- :func:`pattern_contrast`, :func:`fit_pattern_radius`: its radius from its ring pattern,
  calibrated on the drag radii;
- :func:`focal_shift_from_contour`: the focal shift from tethers of known length.
"""

from .bead_radius import combine_estimates, radius_from_drag
from .drift import reference_drift, subtract_drift
from .focal_shift import FocalShiftEstimate, focal_shift_from_contour
from .force_allan import allan_force, allan_variance
from .force_psd import periodogram, psd_force
from .magnet_force import EnsembleForceFit, MagnetForceFit, fit_ensemble_force, fit_magnet_force
from .ou_model import (
    ForceResult,
    allan_model,
    expected_periodogram,
    psd_model,
    thermal_energy_pn_nm,
    water_viscosity_pa_s,
)
from .pattern_radius import PatternRadiusFit, fit_pattern_radius, pattern_contrast
from .record_length import expected_corner_hz, force_relative_error, record_length_s
from .stats import mean_and_sem
from .supercoiling import BucklingResult, buckling_point
from .wlc import WLCFit, wlc_extension_nm, wlc_fit, wlc_force_pn

__all__ = [
    "BucklingResult",
    "FocalShiftEstimate",
    "ForceResult",
    "EnsembleForceFit",
    "MagnetForceFit",
    "PatternRadiusFit",
    "WLCFit",
    "allan_force",
    "allan_model",
    "allan_variance",
    "buckling_point",
    "combine_estimates",
    "expected_corner_hz",
    "expected_periodogram",
    "fit_ensemble_force",
    "fit_magnet_force",
    "fit_pattern_radius",
    "focal_shift_from_contour",
    "force_relative_error",
    "mean_and_sem",
    "pattern_contrast",
    "periodogram",
    "psd_force",
    "psd_model",
    "radius_from_drag",
    "record_length_s",
    "reference_drift",
    "subtract_drift",
    "thermal_energy_pn_nm",
    "water_viscosity_pa_s",
    "wlc_extension_nm",
    "wlc_fit",
    "wlc_force_pn",
]
