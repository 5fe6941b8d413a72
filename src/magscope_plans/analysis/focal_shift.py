"""The focal shift, measured with tethers of a known contour length.

A Z-LUT is swept by moving the objective; the heights it gives are the objective's travel
times the focal shift the instrument assumed (``microscope.focus.focal_shift``). If the
true factor differs, every height and extension is off by ``assumed / true``, and so is
every contour length a worm-like-chain fit finds. With a construct of known contour
length (lambda DNA: 16.49 um; a plasmid-derived tether of N bp: 0.34 nm x N), the true
factor is

    focal_shift = assumed x L_known / L_fitted

per bead; :func:`focal_shift_from_contour` takes the median over the beads (robust to a
bead with two tethers or a stuck one) and its standard error. The force calibration's
errors barely move L (it is set by the extension at high force), so one force-extension
curve measures the factor to a fraction of a per cent per bead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["FocalShiftEstimate", "focal_shift_from_contour"]


class FocalShiftEstimate(NamedTuple):
    """The focal shift (focal-plane nm per nm of focus travel), its standard error, the
    beads it came from and each bead's own estimate (NaN where its fit failed)."""

    focal_shift: float
    focal_shift_err: float
    n_beads: int
    per_bead: np.ndarray


def focal_shift_from_contour(
    contour_nm, known_contour_nm: float, focal_shift_used: float
) -> FocalShiftEstimate:
    """The true focal shift from fitted contour lengths (nm, one per bead) of tethers whose
    contour length is ``known_contour_nm`` (nm), fitted from heights made with
    ``focal_shift_used``. Median over the beads; standard error 1.2533 x their standard
    deviation / sqrt(n) (the median's, for normally scattered beads). Beads more than 5
    median absolute deviations from the median are left out (a double tether, a bead
    stuck to the surface). ValueError for non-positive inputs or no usable bead."""
    if not (np.isfinite(known_contour_nm) and known_contour_nm > 0):
        raise ValueError(f"known_contour_nm={known_contour_nm!r}: must be a positive length (nm)")
    if not (np.isfinite(focal_shift_used) and focal_shift_used > 0):
        raise ValueError(f"focal_shift_used={focal_shift_used!r}: must be a positive factor")
    contour = np.atleast_1d(np.asarray(contour_nm, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_bead = np.where(contour > 0, focal_shift_used * known_contour_nm / contour, np.nan)
    good = per_bead[np.isfinite(per_bead)]
    if good.size == 0:
        raise ValueError("no bead has a fitted contour length: nothing to measure the factor from")
    median = float(np.median(good))
    mad = float(np.median(np.abs(good - median)))
    if mad > 0:
        good = good[np.abs(good - median) <= 5 * 1.4826 * mad]
        median = float(np.median(good))
    err = 1.2533 * float(np.std(good, ddof=1)) / np.sqrt(good.size) if good.size > 1 else np.nan
    return FocalShiftEstimate(median, err, int(good.size), per_bead)
