"""Tracking options, the radial bins they imply, and the per-ROI status codes."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BIN_PX",
    "DEFAULT_RADIUS_FRACTION",
    "MIN_ROI_PX",
    "RadialBins",
    "TrackOptions",
    "TrackStatus",
    "default_radius_px",
]

DEFAULT_BIN_PX = 0.25
"""Default spacing of the radial profile's knots (px)."""

DEFAULT_RADIUS_FRACTION = 0.28
"""Default profile radius as a fraction of the ROI's smaller side (17.75 px for 64 px
ROIs, rounded down to a multiple of the bin spacing)."""

MIN_ROI_PX = 16
"""Smallest ROI side the kernels accept (px)."""


class TrackStatus(enum.IntEnum):
    """Outcome of tracking one ROI (``TrackResult.status``); anything but OK means lost.

    ``Z_OUT_OF_RANGE`` is the exception: x and y are valid, only z is NaN.
    """

    OK = 0
    NON_FINITE = 1  # NaN or infinite pixels in the ROI
    SATURATED = 2  # more than max_saturated_fraction of the pixels at the saturation level
    BLANK = 3  # no bead: no contrast, or the radially symmetric fit explains too little
    EDGE = 4  # the profile disc around the bead leaves the ROI
    NOT_CONVERGED = 5  # the sub-pixel fit did not settle
    Z_OUT_OF_RANGE = 6  # x, y valid; the profile matches the Z-LUT only at its end


@dataclass(frozen=True)
class RadialBins:
    """Radial knots of a profile: r_k = k * ``bin_px`` (px), k = 0 .. ``n_bins`` - 1."""

    n_bins: int
    bin_px: float

    def __post_init__(self):
        if int(self.n_bins) != self.n_bins or self.n_bins < 8:
            raise ValueError(f"n_bins must be an integer >= 8, got {self.n_bins}")
        if not (math.isfinite(self.bin_px) and 0.05 <= self.bin_px <= 2.0):
            raise ValueError(f"bin_px must be in [0.05, 2] px, got {self.bin_px}")

    @property
    def radius_px(self) -> float:
        """Radius of the disc the fit and the profile use: (n_bins - 1) * bin_px (px)."""
        return (self.n_bins - 1) * self.bin_px

    @property
    def radii_px(self) -> np.ndarray:
        """Knot radii r_k (px), float64 (n_bins,)."""
        return np.arange(self.n_bins) * self.bin_px


def default_radius_px(roi_shape: tuple[int, int], bin_px: float = DEFAULT_BIN_PX) -> float:
    """Default profile radius (px) for an ROI of shape (h, w): 0.28 * min(h, w), rounded
    down to a multiple of ``bin_px`` (17.75 px for 64 x 64, 16.75 px for 60 x 60)."""
    r = DEFAULT_RADIUS_FRACTION * min(roi_shape)
    return math.floor(r / bin_px + 1e-9) * bin_px


@dataclass(frozen=True)
class TrackOptions:
    """Options of :func:`magscope_tracking.track` (and of :func:`build_zlut`).

    Radial geometry (``bin_px``, ``radius_px``): the sub-pixel fit and the radial profile
    use the pixels within ``radius_px`` of the bead centre; the profile has knots every
    ``bin_px``. ``None`` means the default (0.25 px; 0.28 x the ROI's smaller side) or,
    when tracking with a Z-LUT, the LUT's own bins; a value that contradicts the LUT is an
    error. The bead is lost (``EDGE``) when that disc leaves the ROI, so the bead may
    wander (min(h, w)/2 - radius_px) px from the ROI centre: 14 px for 64 px ROIs.

    Fit: at most ``max_iterations`` Gauss-Newton steps, stopping once a step is below
    ``tolerance_px``; a fit whose last step is still above ``10 * tolerance_px`` is
    ``NOT_CONVERGED``.

    Lost-bead rules: any NaN/inf pixel; more than ``max_saturated_fraction`` of the pixels
    at or above ``saturation_adu`` (None: the dtype's maximum for integer stacks, no check
    for float stacks); an XY score (fraction of the pixel variance the radial model
    explains) below ``min_xy_score``; the disc leaving the ROI.

    ``return_profiles``: also return the radial profiles (relative to the background).
    """

    bin_px: float | None = None
    radius_px: float | None = None
    max_iterations: int = 6
    tolerance_px: float = 0.02
    min_xy_score: float = 0.2
    saturation_adu: float | None = None
    max_saturated_fraction: float = 0.01
    return_profiles: bool = False

    def __post_init__(self):
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if not (self.tolerance_px > 0):
            raise ValueError(f"tolerance_px must be > 0, got {self.tolerance_px}")
        if not (0.0 <= self.min_xy_score < 1.0):
            raise ValueError(f"min_xy_score must be in [0, 1), got {self.min_xy_score}")
        if not (0.0 <= self.max_saturated_fraction <= 1.0):
            raise ValueError(
                f"max_saturated_fraction must be in [0, 1], got {self.max_saturated_fraction}"
            )

    def bins_for(self, roi_shape: tuple[int, int]) -> RadialBins:
        """The radial bins these options give for an ROI of shape (h, w) (no Z-LUT)."""
        h, w = int(roi_shape[0]), int(roi_shape[1])
        if min(h, w) < MIN_ROI_PX:
            raise ValueError(f"ROIs must be at least {MIN_ROI_PX} px on a side, got {h} x {w}")
        bin_px = DEFAULT_BIN_PX if self.bin_px is None else float(self.bin_px)
        radius = default_radius_px((h, w), bin_px) if self.radius_px is None else self.radius_px
        n_bins = int(round(radius / bin_px)) + 1
        bins = RadialBins(n_bins, bin_px)
        check_bins_fit(bins, (h, w))
        return bins

    def saturation_for(self, dtype: np.dtype) -> float:
        """Saturation level (ADU) for a stack dtype; +inf means no check."""
        if self.saturation_adu is not None:
            return float(self.saturation_adu)
        dtype = np.dtype(dtype)
        if dtype.kind in "ui":
            return float(np.iinfo(dtype).max)
        return math.inf

    def max_saturated_for(self, shape: tuple[int, ...]) -> int:
        """Most saturated pixels an ROI of ``shape`` (..., h, w) may hold and still be
        tracked (``max_saturated_fraction`` of its pixels, rounded down)."""
        return int(math.floor(self.max_saturated_fraction * shape[-1] * shape[-2]))


def check_bins_fit(bins: RadialBins, roi_shape: tuple[int, int]) -> None:
    """Raise ValueError unless the profile disc fits in the ROI with the bead centred."""
    h, w = roi_shape
    limit = (min(h, w) - 1) / 2.0 + 0.5
    if bins.radius_px > limit - 1.0:
        raise ValueError(
            f"profile radius {bins.radius_px:g} px does not fit an ROI of {h} x {w} px "
            f"(at most {limit - 1.0:g} px)"
        )
