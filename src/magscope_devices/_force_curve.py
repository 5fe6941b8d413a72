"""Force calibration: the force on a bead as a function of the magnet height.

Pure NumPy (no ophyd-async or bluesky), so plans, the :class:`~._force.Force` device and
offline analysis share it. Units: force pN, magnet height mm, time UNIX s.

Model. A pair of permanent magnets above the flow cell pulls a superparamagnetic bead
with a force that falls off roughly as a double exponential of the magnet height z:

    F(z) = F0 (a exp(-z / l1) + (1 - a) exp(-z / l2))

with F0 > 0, 0 <= a <= 1 and l1, l2 > 0, so F is strictly decreasing in z. A
:class:`ForceCalibration` stores the ensemble curve fitted over a range of magnet heights
(``min_height_mm`` .. ``max_height_mm``, the calibrated range), each bead's force relative
to that curve, each bead's radius (from its drag) and the reference beads' (their mean),
and where it came from. It converts heights to forces and back, and is saved as a small
JSON file (``"format": "magscope-force-calibration"``, ``"version": 2``; version 1, without
the radii, is still read).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ForceCalibration",
    "ForceCalibrationFormatError",
    "ForceRangeError",
    "magnet_force_pn",
]

#: The ``"format"`` header of a calibration file.
FORMAT_NAME = "magscope-force-calibration"
#: The ``"version"`` of the calibration file format this module writes and reads.
FORMAT_VERSION = 2
#: Versions this module reads (1: before the bead radii).
READABLE_VERSIONS = (1, 2)

#: Forces within this relative distance outside the calibrated range count as inside
#: (so that a force computed at the edge height converts back).
_RANGE_RTOL = 1e-12

_FIX_HINT = "calibrate over a wider magnet range with force_calibration"


class ForceRangeError(ValueError):
    """A requested force is outside the range the force calibration covers."""


class ForceCalibrationFormatError(ValueError):
    """A force-calibration file or JSON text is malformed."""


def magnet_force_pn(magnet_z_mm, f0_pn, a, l1_mm, l2_mm):
    """Force (pN) at magnet height z (mm): F0 (a exp(-z / l1) + (1 - a) exp(-z / l2)).

    ``f0_pn`` in pN (the force extrapolated to z = 0), ``a`` dimensionless, ``l1_mm`` and
    ``l2_mm`` decay lengths in mm. Array-friendly (broadcasts); returns an ndarray, or a
    NumPy scalar for scalar input.
    """
    z = np.asarray(magnet_z_mm, dtype=float)
    return f0_pn * (a * np.exp(-z / l1_mm) + (1.0 - a) * np.exp(-z / l2_mm))


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ForceCalibration:
    """A magnet force calibration: the ensemble force curve and the range it covers.

    Fields
    ------
    f0_pn, a, l1_mm, l2_mm : the double exponential of :func:`magnet_force_pn` (pN, 1,
        mm, mm); F0 > 0, 0 <= a <= 1, l1 > 0, l2 > 0.
    min_height_mm, max_height_mm : the magnet heights (mm) the calibration measured, the
        calibrated range; :meth:`height_mm` only converts forces within it.
    bead_ids : the beads that went into the calibration.
    bead_scale : each bead's force relative to the curve (same order as ``bead_ids``; 1
        is an average bead).
    source : uid of the run the calibration came from (None if not from a run).
    created : when the calibration was made (UNIX s).
    bead_radius_nm, bead_radius_nm_err : each bead's radius and its standard error (nm,
        same order as ``bead_ids``; NaN where unknown), from the drag of its lateral
        fluctuations (:func:`magscope_plans.analysis.radius_from_drag`); empty: not
        measured (a version-1 file).
    reference_radius_nm, reference_radius_nm_err : the radius taken for the reference
        beads (nm; they are stuck and show no drag: the mean of the tethered beads'
        radii, from the same batch) and its standard error; None: not measured.
    covariance : the fit's covariance of (f0_pn, a, l1_mm, l2_mm), 4 x 4 (empty: not
        known); :meth:`force_err_pn` is the curve's standard error at a height from it.
    bead_scale_err : each bead's ``bead_scale`` standard error (empty: not known).
    """

    f0_pn: float
    a: float
    l1_mm: float
    l2_mm: float
    min_height_mm: float
    max_height_mm: float
    bead_ids: tuple[int, ...] = ()
    bead_scale: tuple[float, ...] = ()
    source: str | None = None
    created: float = field(default_factory=time.time)
    bead_radius_nm: tuple[float, ...] = ()
    bead_radius_nm_err: tuple[float, ...] = ()
    reference_radius_nm: float | None = None
    reference_radius_nm_err: float | None = None
    covariance: tuple[tuple[float, ...], ...] = ()
    bead_scale_err: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("f0_pn", "a", "l1_mm", "l2_mm", "min_height_mm", "max_height_mm", "created"):
            value = getattr(self, name)
            if not _real(value) or not math.isfinite(value):
                raise ValueError(f"ForceCalibration.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("f0_pn", "l1_mm", "l2_mm"):
            if getattr(self, name) <= 0.0:
                raise ValueError(
                    f"ForceCalibration.{name} must be positive, got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.a <= 1.0:
            raise ValueError(f"ForceCalibration.a must be within [0, 1], got {self.a!r}")
        if not self.min_height_mm < self.max_height_mm:
            raise ValueError(
                f"ForceCalibration.min_height_mm ({self.min_height_mm} mm) must be below "
                f"max_height_mm ({self.max_height_mm} mm)"
            )
        ids = tuple(self.bead_ids)
        scale = tuple(self.bead_scale)
        for bead in ids:
            if not isinstance(bead, numbers.Integral) or isinstance(bead, bool):
                raise ValueError(f"ForceCalibration.bead_ids must be integers, got {bead!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"ForceCalibration.bead_ids has duplicates: {list(ids)}")
        if len(scale) != len(ids):
            raise ValueError(
                f"ForceCalibration.bead_scale has {len(scale)} values for {len(ids)} bead_ids"
            )
        for s in scale:
            if not _real(s) or not math.isfinite(s) or s <= 0.0:
                raise ValueError(
                    f"ForceCalibration.bead_scale must be positive finite numbers, got {s!r}"
                )
        if self.source is not None and not isinstance(self.source, str):
            raise ValueError(
                f"ForceCalibration.source must be a string or None, got {self.source!r}"
            )
        object.__setattr__(self, "bead_ids", tuple(int(b) for b in ids))
        object.__setattr__(self, "bead_scale", tuple(float(s) for s in scale))
        for name in ("bead_radius_nm", "bead_radius_nm_err"):
            values = tuple(getattr(self, name))
            if values and len(values) != len(ids):
                raise ValueError(
                    f"ForceCalibration.{name} has {len(values)} values for {len(ids)} bead_ids"
                )
            for v in values:
                if not _real(v) or (math.isfinite(v) and v <= 0.0) or math.isinf(v):
                    raise ValueError(
                        f"ForceCalibration.{name} must be positive numbers (nm) or NaN, "
                        f"got {v!r}"
                    )
            object.__setattr__(self, name, tuple(float(v) for v in values))
        cov = tuple(tuple(float(v) for v in row) for row in self.covariance)
        if cov and (len(cov) != 4 or any(len(row) != 4 for row in cov)
                    or not all(math.isfinite(v) for row in cov for v in row)):
            raise ValueError("ForceCalibration.covariance must be 4 x 4 finite numbers (or empty)")
        object.__setattr__(self, "covariance", cov)
        scale_err = tuple(float(v) for v in self.bead_scale_err)
        if scale_err and len(scale_err) != len(ids):
            raise ValueError(
                f"ForceCalibration.bead_scale_err has {len(scale_err)} values for {len(ids)} "
                "bead_ids"
            )
        object.__setattr__(self, "bead_scale_err", scale_err)
        if len(self.bead_radius_nm_err) != len(self.bead_radius_nm):
            raise ValueError("ForceCalibration.bead_radius_nm_err must match bead_radius_nm")
        for name in ("reference_radius_nm", "reference_radius_nm_err"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _real(value) or not math.isfinite(value) or value < 0.0:
                raise ValueError(
                    f"ForceCalibration.{name} must be a finite number >= 0 (nm) or None, "
                    f"got {value!r}"
                )
            object.__setattr__(self, name, float(value))

    # ---------------------------------------------------------------- conversions

    def force_pn(self, magnet_z_mm):
        """Ensemble force (pN) at magnet height(s) z (mm); array-friendly.

        Defined at any height (outside the calibrated range it extrapolates the curve).
        """
        return magnet_force_pn(magnet_z_mm, self.f0_pn, self.a, self.l1_mm, self.l2_mm)

    @property
    def min_force_pn(self) -> float:
        """The lowest calibrated force (pN): the force at ``max_height_mm``."""
        return float(self.force_pn(self.max_height_mm))

    @property
    def max_force_pn(self) -> float:
        """The highest calibrated force (pN): the force at ``min_height_mm``."""
        return float(self.force_pn(self.min_height_mm))

    def height_mm(self, force_pn):
        """Magnet height (mm) at which the ensemble force is ``force_pn`` (pN).

        The exact inverse of :meth:`force_pn` within the calibrated range (vectorised
        bisection on ln F, then Newton; about 1e-15 mm). Returns a float for scalar input,
        an ndarray otherwise. Raises :class:`ForceRangeError` if any force is not finite or
        outside [:attr:`min_force_pn`, :attr:`max_force_pn`].
        """
        f = np.asarray(force_pn, dtype=float)
        lo_f, hi_f = self.min_force_pn, self.max_force_pn
        bad = ~np.isfinite(f) | (f < lo_f * (1.0 - _RANGE_RTOL)) | (f > hi_f * (1.0 + _RANGE_RTOL))
        if np.any(bad):
            flat = f.ravel()[bad.ravel()]
            n_bad = flat.size
            first = float(flat[0])
            which = (
                f"force {first!r} pN"
                if f.ndim == 0
                else (f"{n_bad} of {f.size} forces (first {first!r} pN)")
            )
            if not math.isfinite(first):
                raise ForceRangeError(f"{which} is not a finite number of pN")
            raise ForceRangeError(
                f"{which} is outside the calibrated range [{lo_f:.6g}, {hi_f:.6g}] pN "
                f"(magnet heights {self.min_height_mm:g} to {self.max_height_mm:g} mm); "
                f"{_FIX_HINT}"
            )
        target = np.log(np.clip(f, lo_f, hi_f))
        lo = np.full(f.shape, self.min_height_mm)
        hi = np.full(f.shape, self.max_height_mm)
        for _ in range(64):  # ln F decreases with z
            mid = 0.5 * (lo + hi)
            above = np.log(self.force_pn(mid)) > target
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        z = 0.5 * (lo + hi)
        for _ in range(2):
            e1 = self.a * np.exp(-z / self.l1_mm)
            e2 = (1.0 - self.a) * np.exp(-z / self.l2_mm)
            dlnf_dz = -(e1 / self.l1_mm + e2 / self.l2_mm) / (e1 + e2)
            z = np.clip(z - (np.log(self.f0_pn * (e1 + e2)) - target) / dlnf_dz, lo, hi)
        return float(z) if z.ndim == 0 else z

    def _bead_index(self, bead_id: int) -> int:
        """Position of ``bead_id`` in ``bead_ids``; KeyError naming the calibrated beads."""
        try:
            return self.bead_ids.index(int(bead_id))
        except ValueError:
            raise KeyError(
                f"bead {bead_id!r} is not in this force calibration "
                f"(calibrated beads: {list(self.bead_ids)})"
            ) from None

    def bead_scale_for(self, bead_id: int) -> float:
        """Force of bead ``bead_id`` relative to the ensemble curve; KeyError if unknown."""
        return self.bead_scale[self._bead_index(bead_id)]

    def force_pn_for_bead(self, bead_id: int, magnet_z_mm):
        """Force (pN) on bead ``bead_id`` at magnet height(s) z (mm): scale x the curve."""
        return self.bead_scale_for(bead_id) * self.force_pn(magnet_z_mm)

    def force_err_pn(self, magnet_z_mm):
        """Standard error (pN) of the ensemble force at height(s) z (mm), from the fit's
        covariance; NaN without one. Outside the calibrated heights it is an
        extrapolation's error: it grows quickly, and plans refuse forces there."""
        z = np.asarray(magnet_z_mm, dtype=float)
        if not self.covariance:
            return np.full(z.shape, np.nan) if z.ndim else math.nan
        e1, e2 = np.exp(-z / self.l1_mm), np.exp(-z / self.l2_mm)
        m = self.a * e1 + (1.0 - self.a) * e2
        grad = np.stack([np.full(z.shape, 1.0 / self.f0_pn), (e1 - e2) / m,
                         self.a * e1 * z / self.l1_mm**2 / m,
                         (1.0 - self.a) * e2 * z / self.l2_mm**2 / m], axis=-1)
        var = np.einsum("...i,ij,...j->...", grad, np.asarray(self.covariance), grad)
        err = np.sqrt(np.maximum(var, 0.0)) * self.force_pn(z)
        return float(err) if err.ndim == 0 else err

    def force_err_pn_for_bead(self, bead_id: int, magnet_z_mm):
        """Standard error (pN) of bead ``bead_id``'s force at height(s) z (mm): the
        curve's relative error and its scale's, combined; NaN where either is unknown."""
        i = self._bead_index(bead_id)
        z = np.asarray(magnet_z_mm, dtype=float)
        force = self.force_pn(z)
        curve_rel = np.asarray(self.force_err_pn(z)) / force
        scale_rel = (self.bead_scale_err[i] / self.bead_scale[i]) if self.bead_scale_err \
            else math.nan
        err = self.bead_scale[i] * force * np.hypot(curve_rel, scale_rel)
        return float(err) if np.ndim(err) == 0 else err

    def radius_offsets_nm(self, bead_ids) -> tuple[np.ndarray, np.ndarray]:
        """Per bead, its radius minus the reference beads' (nm) and the standard error of
        that difference (nm): what a height above the reference beads holds beyond the
        tether's extension. 0 and NaN for a bead without a measured radius (not in the
        calibration, or a calibration without radii)."""
        ids = [int(b) for b in np.atleast_1d(bead_ids)]
        offset = np.zeros(len(ids))
        err = np.full(len(ids), np.nan)
        if not self.bead_radius_nm or self.reference_radius_nm is None:
            return offset, err
        ref_err = self.reference_radius_nm_err or 0.0
        for k, bead in enumerate(ids):
            if bead not in self.bead_ids:
                continue
            i = self.bead_ids.index(bead)
            r, r_err = self.bead_radius_nm[i], self.bead_radius_nm_err[i]
            if math.isfinite(r):
                offset[k] = r - self.reference_radius_nm
                err[k] = math.hypot(r_err, ref_err) if math.isfinite(r_err) else math.nan
        return offset, err

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """The file content: the format header and every field (JSON-compatible)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "f0_pn": self.f0_pn,
            "a": self.a,
            "l1_mm": self.l1_mm,
            "l2_mm": self.l2_mm,
            "min_height_mm": self.min_height_mm,
            "max_height_mm": self.max_height_mm,
            "bead_ids": list(self.bead_ids),
            "bead_scale": list(self.bead_scale),
            "source": self.source,
            "created": self.created,
            # JSON has no NaN: an unknown radius is null
            "bead_radius_nm": [_or_none(v) for v in self.bead_radius_nm],
            "bead_radius_nm_err": [_or_none(v) for v in self.bead_radius_nm_err],
            "reference_radius_nm": self.reference_radius_nm,
            "reference_radius_nm_err": self.reference_radius_nm_err,
            "covariance": [list(row) for row in self.covariance],
            "bead_scale_err": [_or_none(v) for v in self.bead_scale_err],
        }

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict` (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> ForceCalibration:
        """Inverse of :meth:`to_dict`; :class:`ForceCalibrationFormatError` if malformed."""
        if not isinstance(data, dict):
            raise ForceCalibrationFormatError(
                f"a force calibration must be a JSON object, got {type(data).__name__}"
            )
        fmt = data.get("format")
        if fmt != FORMAT_NAME:
            raise ForceCalibrationFormatError(
                f'"format" is {fmt!r}, expected {FORMAT_NAME!r}: not a force calibration'
            )
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise ForceCalibrationFormatError(
                f'unsupported force calibration "version" {version!r} (this reads '
                f"versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        required: tuple[str, ...] = (
            "f0_pn",
            "a",
            "l1_mm",
            "l2_mm",
            "min_height_mm",
            "max_height_mm",
            "bead_ids",
            "bead_scale",
            "source",
            "created",
        )
        radii = (
            "bead_radius_nm", "bead_radius_nm_err", "reference_radius_nm",
            "reference_radius_nm_err",
        )
        if version >= 2:
            required += radii
        optional = ("covariance", "bead_scale_err") if version >= 2 else ()
        missing = [k for k in required if k not in fields]
        if missing:
            raise ForceCalibrationFormatError(f"force calibration is missing {missing}")
        unknown = sorted(set(fields) - set(required) - set(optional))
        if unknown:
            raise ForceCalibrationFormatError(f"force calibration has unknown fields {unknown}")
        for key in ("bead_ids", "bead_scale", "bead_radius_nm", "bead_radius_nm_err"):
            if key in fields and not isinstance(fields[key], list):
                raise ForceCalibrationFormatError(f'"{key}" must be a list, got {fields[key]!r}')
        for key in ("bead_radius_nm", "bead_radius_nm_err", "bead_scale_err"):
            if key in fields:
                if not isinstance(fields[key], list):
                    raise ForceCalibrationFormatError(
                        f'"{key}" must be a list, got {fields[key]!r}'
                    )
                fields[key] = [math.nan if v is None else v for v in fields[key]]
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise ForceCalibrationFormatError(f"invalid force calibration: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> ForceCalibration:
        """Parse JSON text; :class:`ForceCalibrationFormatError` if malformed."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ForceCalibrationFormatError(
                f"force calibration is not valid JSON: {exc}"
            ) from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration to ``path`` (JSON, replaced atomically); returns the path."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ForceCalibration:
        """Read a calibration file.

        OSError (e.g. FileNotFoundError) if it cannot be read;
        :class:`ForceCalibrationFormatError` naming the file if its content is malformed.
        """
        path = Path(path)
        text = path.read_bytes()
        try:
            return cls.from_json(text)
        except ForceCalibrationFormatError as exc:
            raise ForceCalibrationFormatError(f"{path}: {exc}") from exc
