"""The Z look-up table (Z-LUT): a value object, how to build it, save it and load it.

A Z-LUT holds, for each of ``n_beads`` beads, the radial profile of the bead at
``n_planes`` known heights ``z_nm`` (increasing): ``profiles`` (n_beads, n_planes,
n_bins), relative to the background (see :mod:`.radial_profile`), with knots every
``bin_px`` out to (n_bins - 1) * bin_px. It also records the ROI size it was made for,
the pixel size, the bead ids, its creation time (UNIX s), the run it came from and the
focal shift its heights were scaled with.

The focal shift: a sweep moves the objective, but an oil-immersion objective focusing into
water moves its focal plane in the sample by only ``focal_shift`` (about 0.88) of its own
travel. :func:`build_zlut` takes the heights in nm of focus travel and keeps the planes in
nm of the sample (travel x ``focal_shift``), so every z tracked with the LUT is a height
in the sample; :meth:`ZLUT.with_focal_shift` rescales a LUT made with a wrong factor.

:func:`build_zlut` makes one from a focus sweep: images of a bead at known defocus
(several images per z allowed: their profiles are averaged). The profiles are then
smoothed along z by a local cubic fit over ``smooth_planes`` neighbouring planes
(7 by default), which removes most of the sweep's noise without distorting the profiles
(they change smoothly with z: at 50 nm steps a ring moves by < 0.25 rad per plane).

Files (:meth:`ZLUT.save`, :meth:`ZLUT.load`) are ``.npz`` archives (no pickles): arrays
``z_nm``, ``profiles``, ``bead_ids`` and a JSON header ``meta`` with the format name and
version, ``roi_size``, ``bin_px``, ``nm_per_px``, ``created``, ``source``, the
profile method and ``focal_shift`` (version 2; a version-1 file, from before the factor,
reads as 1). Loading validates everything; a malformed file raises
:class:`ZLUTFormatError`, a LUT that does not fit the ROIs being tracked
:class:`ZLUTMismatchError` (both ``ValueError``), naming the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._kernels import run_kernel
from ._stack import as_stack
from .options import RadialBins, TrackOptions, TrackStatus, check_bins_fit
from .z_match import PreparedLUT, prepare_lut

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PROFILE_METHOD",
    "ZLUT",
    "ZLUTError",
    "ZLUTFormatError",
    "ZLUTMismatchError",
    "build_zlut",
]

FORMAT_NAME = "magscope-zlut"
FORMAT_VERSION = 2
#: Format versions this library reads (1: no focal shift, read as 1).
READABLE_VERSIONS = (1, 2)
#: The focal shifts a Z-LUT may carry (focal-plane travel per nm of focus travel).
FOCAL_SHIFT_RANGE = (0.3, 1.5)
PROFILE_METHOD = "ls-hat-penalty0.1"
"""Identifies how profiles are computed; a LUT made another way cannot be matched."""

_MIN_PLANES = 4


class ZLUTError(ValueError):
    """Base class of Z-LUT errors."""


class ZLUTFormatError(ZLUTError):
    """A Z-LUT file or array set is malformed, corrupt or of an unsupported version."""


class ZLUTMismatchError(ZLUTError):
    """A Z-LUT does not fit the data it is used with (ROI size, bins, beads)."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class ZLUT:
    """Per-bead Z look-up table (see module docstring); immutable.

    Fields: ``z_nm`` (n_planes,) float64, increasing; ``profiles`` (n_beads, n_planes,
    n_bins) float64, relative to the background; ``roi_size`` (h, w) px; ``bin_px`` knot
    spacing (px); ``nm_per_px``; ``bead_ids`` (n_beads,) int64; ``created`` UNIX s;
    ``source`` run uid or None; ``profile_method`` (see ``PROFILE_METHOD``);
    ``focal_shift``: the factor from focus travel to the sample heights ``z_nm`` holds.
    """

    z_nm: np.ndarray
    profiles: np.ndarray
    roi_size: tuple[int, int]
    bin_px: float
    nm_per_px: float
    bead_ids: np.ndarray
    created: float
    source: str | None = None
    profile_method: str = PROFILE_METHOD
    focal_shift: float = 1.0

    def __post_init__(self):
        err = ZLUTFormatError
        lo, hi = FOCAL_SHIFT_RANGE
        try:
            shift = float(self.focal_shift)
        except (TypeError, ValueError):
            raise err(f"focal_shift must be a number, got {self.focal_shift!r}") from None
        if not lo <= shift <= hi:
            raise err(f"focal_shift {self.focal_shift!r} is outside {lo:g} to {hi:g}")
        object.__setattr__(self, "focal_shift", shift)
        z = np.asarray(self.z_nm, dtype=np.float64)
        prof = np.asarray(self.profiles, dtype=np.float64)
        ids = np.asarray(self.bead_ids)
        if z.ndim != 1 or z.size < _MIN_PLANES:
            raise err(f"z_nm must be 1-D with at least {_MIN_PLANES} planes, got shape {z.shape}")
        if not np.all(np.isfinite(z)) or not np.all(np.diff(z) > 0):
            raise err("z_nm must be finite and strictly increasing")
        if prof.ndim != 3 or prof.shape[1] != z.size:
            raise err(
                f"profiles must be (n_beads, n_planes={z.size}, n_bins), got shape {prof.shape}"
            )
        if prof.shape[0] < 1:
            raise err("a Z-LUT needs at least one bead")
        if not np.all(np.isfinite(prof)):
            raise err("profiles contain NaN or infinite values")
        if ids.ndim != 1 or ids.size != prof.shape[0] or ids.dtype.kind not in "iu":
            raise err(
                f"bead_ids must be {prof.shape[0]} integers (one per bead), got "
                f"{ids.dtype} shape {ids.shape}"
            )
        if np.unique(ids).size != ids.size:
            raise err(f"bead_ids must be unique, got {ids.tolist()}")
        try:
            roi = tuple(int(v) for v in self.roi_size)
        except (TypeError, ValueError):
            raise err(f"roi_size must be (h, w) integers, got {self.roi_size!r}") from None
        if len(roi) != 2 or min(roi) < 1:
            raise err(f"roi_size must be (h, w) positive integers, got {self.roi_size!r}")
        if not (math.isfinite(self.nm_per_px) and self.nm_per_px > 0):
            raise err(f"nm_per_px must be positive, got {self.nm_per_px}")
        if not math.isfinite(self.created):
            raise err(f"created must be a UNIX time in s, got {self.created}")
        if self.source is not None and not isinstance(self.source, str):
            raise err(f"source must be a run uid string or None, got {self.source!r}")
        if self.profile_method != PROFILE_METHOD:
            raise ZLUTMismatchError(
                f"Z-LUT profile method {self.profile_method!r} does not match this library's "
                f"{PROFILE_METHOD!r}"
            )
        try:
            bins = RadialBins(int(prof.shape[2]), float(self.bin_px))
            check_bins_fit(bins, roi)
        except ValueError as exc:
            raise err(f"invalid radial bins: {exc}") from None
        object.__setattr__(self, "z_nm", _readonly(z))
        object.__setattr__(self, "profiles", _readonly(prof))
        object.__setattr__(self, "bead_ids", _readonly(ids.astype(np.int64)))
        object.__setattr__(self, "roi_size", roi)
        object.__setattr__(self, "bin_px", float(self.bin_px))
        object.__setattr__(self, "nm_per_px", float(self.nm_per_px))
        object.__setattr__(self, "created", float(self.created))

    # ------------------------------------------------------------------ shape
    @property
    def n_beads(self) -> int:
        return int(self.profiles.shape[0])

    @property
    def n_planes(self) -> int:
        return int(self.profiles.shape[1])

    @property
    def n_bins(self) -> int:
        return int(self.profiles.shape[2])

    @property
    def bins(self) -> RadialBins:
        """The radial knots of the profiles."""
        return RadialBins(self.n_bins, self.bin_px)

    @property
    def z_range_nm(self) -> tuple[float, float]:
        """(first, last) plane height (nm)."""
        return float(self.z_nm[0]), float(self.z_nm[-1])

    def __repr__(self) -> str:
        return (
            f"ZLUT(beads={self.bead_ids.tolist()}, planes={self.n_planes} from "
            f"{self.z_nm[0]:g} to {self.z_nm[-1]:g} nm, roi_size={self.roi_size}, "
            f"bins={self.n_bins} x {self.bin_px:g} px, nm_per_px={self.nm_per_px:g}, "
            f"focal_shift={self.focal_shift:g}, source={self.source!r})"
        )

    # ------------------------------------------------------------------ matching
    @functools.cached_property
    def prepared(self) -> PreparedLUT:
        """The matching form (metric-transformed planes, spline, Gram matrices); cached."""
        return prepare_lut(self.z_nm, self.profiles, self.bin_px)

    def check_compatible(self, roi_size, options: TrackOptions | None = None) -> None:
        """Raise :class:`ZLUTMismatchError` unless ROIs of ``roi_size`` (h, w), tracked
        with ``options``, can use this LUT."""
        roi = tuple(int(v) for v in roi_size)
        if roi != self.roi_size:
            raise ZLUTMismatchError(
                f"ROI size {roi[0]} x {roi[1]} px of the stack does not match the Z-LUT's "
                f"ROI size {self.roi_size[0]} x {self.roi_size[1]} px"
            )
        if options is not None:
            if options.bin_px is not None and not math.isclose(options.bin_px, self.bin_px):
                raise ZLUTMismatchError(
                    f"bin_px {options.bin_px:g} px of the options does not match the Z-LUT's "
                    f"{self.bin_px:g} px"
                )
            if options.radius_px is not None and not math.isclose(
                options.radius_px, self.bins.radius_px
            ):
                raise ZLUTMismatchError(
                    f"radius_px {options.radius_px:g} px of the options does not match the "
                    f"Z-LUT's {self.bins.radius_px:g} px ({self.n_bins} bins of "
                    f"{self.bin_px:g} px)"
                )

    def index_of(self, bead_ids) -> np.ndarray:
        """Positions in this LUT of ``bead_ids`` (for ``track(bead_index=...)``)."""
        ids = np.atleast_1d(np.asarray(bead_ids, dtype=np.int64))
        pos = {int(b): i for i, b in enumerate(self.bead_ids)}
        missing = [int(b) for b in ids if int(b) not in pos]
        if missing:
            raise ZLUTMismatchError(
                f"bead ids {missing} are not in the Z-LUT (it has {self.bead_ids.tolist()})"
            )
        return np.array([pos[int(b)] for b in ids], dtype=np.int64)

    def select(self, bead_ids) -> ZLUT:
        """A LUT with only ``bead_ids`` (in that order)."""
        idx = self.index_of(bead_ids)
        return self._replace(profiles=self.profiles[idx], bead_ids=self.bead_ids[idx])

    def with_focal_shift(self, focal_shift: float) -> ZLUT:
        """The same LUT with its heights for another focal shift: each plane's height
        times ``focal_shift`` / ``self.focal_shift`` (a LUT swept with a wrong factor,
        corrected once the factor is measured)."""
        lo, hi = FOCAL_SHIFT_RANGE
        if not (isinstance(focal_shift, int | float) and lo <= focal_shift <= hi):
            raise ValueError(f"focal_shift={focal_shift!r}: must be a number within {lo:g} "
                             f"to {hi:g}")
        return self._replace(z_nm=self.z_nm * (float(focal_shift) / self.focal_shift),
                             focal_shift=float(focal_shift))

    def _replace(self, **changes: Any) -> ZLUT:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def stack(cls, luts: Sequence[ZLUT], *, created: float | None = None) -> ZLUT:
        """One multi-bead LUT from several LUTs with the same z planes, ROI size, bins and
        pixel size (bead ids must be distinct). ``source`` is kept if all agree."""
        luts = list(luts)
        if not luts:
            raise ValueError("ZLUT.stack needs at least one Z-LUT")
        first = luts[0]
        for other in luts[1:]:
            if other.z_nm.shape != first.z_nm.shape or not np.allclose(
                other.z_nm, first.z_nm, rtol=0, atol=1e-6
            ):
                raise ZLUTMismatchError(
                    f"Z-LUT planes differ: {other.n_planes} planes "
                    f"{other.z_range_nm} nm vs {first.n_planes} planes {first.z_range_nm} nm"
                )
            for name in ("roi_size", "bin_px", "nm_per_px", "focal_shift"):
                a, b = getattr(other, name), getattr(first, name)
                if a != b:
                    raise ZLUTMismatchError(f"Z-LUT {name} differs: {a} vs {b}")
            if other.n_bins != first.n_bins:
                raise ZLUTMismatchError(
                    f"Z-LUT n_bins differs: {other.n_bins} vs {first.n_bins}"
                )
        sources = {lut.source for lut in luts}
        return first._replace(
            profiles=np.concatenate([lut.profiles for lut in luts], axis=0),
            bead_ids=np.concatenate([lut.bead_ids for lut in luts]),
            created=time.time() if created is None else created,
            source=sources.pop() if len(sources) == 1 else None,
        )

    # ------------------------------------------------------------------ I/O
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The file content as arrays: ``z_nm``, ``profiles``, ``bead_ids`` and ``meta``
        (a 0-d string array holding the JSON header). :meth:`from_arrays` inverts it."""
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "roi_size": list(self.roi_size),
            "bin_px": self.bin_px,
            "nm_per_px": self.nm_per_px,
            "created": self.created,
            "source": self.source,
            "profile_method": self.profile_method,
            "focal_shift": self.focal_shift,
        }
        return {
            "meta": np.array(json.dumps(meta)),
            "z_nm": np.asarray(self.z_nm),
            "profiles": np.asarray(self.profiles),
            "bead_ids": np.asarray(self.bead_ids),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ZLUT:
        """Validate and build a LUT from :meth:`to_arrays` output (or a loaded file)."""
        missing = [k for k in ("meta", "z_nm", "profiles", "bead_ids") if k not in arrays]
        if missing:
            raise ZLUTFormatError(f"not a Z-LUT: missing {', '.join(missing)}")
        try:
            meta = json.loads(str(np.asarray(arrays["meta"])[()]))
        except (ValueError, TypeError) as exc:
            raise ZLUTFormatError(f"Z-LUT header is not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise ZLUTFormatError("Z-LUT header must be a JSON object")
        if meta.get("format") != FORMAT_NAME:
            raise ZLUTFormatError(
                f"not a Z-LUT: format {meta.get('format')!r}, expected {FORMAT_NAME!r}"
            )
        version = meta.get("version")
        if version not in READABLE_VERSIONS:
            raise ZLUTFormatError(
                f"unsupported Z-LUT format version {version!r} (this library reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        required = ["roi_size", "bin_px", "nm_per_px", "created", "profile_method"]
        if version >= 2:
            required.append("focal_shift")
        for key in required:
            if key not in meta:
                raise ZLUTFormatError(f"Z-LUT header lacks {key!r}")
        try:
            return cls(
                z_nm=np.asarray(arrays["z_nm"], dtype=np.float64),
                profiles=np.asarray(arrays["profiles"], dtype=np.float64),
                roi_size=tuple(meta["roi_size"]),
                bin_px=float(meta["bin_px"]),
                nm_per_px=float(meta["nm_per_px"]),
                bead_ids=np.asarray(arrays["bead_ids"]),
                created=float(meta["created"]),
                source=meta.get("source"),
                profile_method=str(meta["profile_method"]),
                focal_shift=meta.get("focal_shift", 1.0),
            )
        except ZLUTError:
            raise
        except (TypeError, ValueError) as exc:
            raise ZLUTFormatError(f"malformed Z-LUT: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the LUT to ``path`` (an ``.npz`` archive, written atomically); returns it."""
        path = Path(path)
        buf = io.BytesIO()
        arrays: dict[str, Any] = self.to_arrays()
        np.savez_compressed(buf, **arrays)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ZLUT:
        """Read and validate a LUT written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ZLUTFormatError(
                f"{path} is not a readable Z-LUT file (corrupt or truncated?): {exc}"
            ) from None
        return cls.from_arrays(arrays)


# --------------------------------------------------------------------------- building


def _smooth_along_z(profiles: np.ndarray, z: np.ndarray, window: int, order: int = 3):
    """Local polynomial (degree ``order``) fit over ``window`` neighbouring planes,
    evaluated at each plane (windows shift inwards at the ends); profiles (n_planes, K)."""
    n = z.size
    if window <= 1 or n < window or window <= order:
        return profiles
    half = window // 2
    out = np.empty_like(profiles)
    for j in range(n):
        lo = min(max(j - half, 0), n - window)
        zz = z[lo : lo + window] - z[j]
        scale = max(np.abs(zz).max(), 1e-12)
        vander = np.vander(zz / scale, order + 1, increasing=True)
        coef, *_ = np.linalg.lstsq(vander, profiles[lo : lo + window], rcond=None)
        out[j] = coef[0]
    return out


def build_zlut(
    images,
    z_nm,
    *,
    nm_per_px: float,
    bead_ids=None,
    source: str | None = None,
    options: TrackOptions | None = None,
    smooth_planes: int = 7,
    created: float | None = None,
    focal_shift: float = 1.0,
) -> ZLUT:
    """Build a Z-LUT from a focus sweep.

    ``images``: (m, h, w) ROIs of one bead, or (n_beads, m, h, w) for several beads
    imaged at the same focus positions; ``z_nm`` (m,): the bead height relative to the
    focus for each image, in nm of focus travel (minus the focus offset; any common
    offset), repeats allowed (their profiles are averaged). The LUT's planes are these
    heights times ``focal_shift`` (focal-plane travel in the sample per nm of focus
    travel; 1: an index-matched objective), so z tracked with it is in nm of the sample. Each image is located in XY and its profile taken about the bead centre
    (``options``: as for :func:`track`; they also set the bins). Images where the bead is
    lost are skipped; a height with no usable image is an error. ``smooth_planes``: width
    of the local cubic smoothing along z (0 or 1: none). ``bead_ids`` default 0..n-1.
    """
    options = options or TrackOptions()
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    if imgs.ndim != 4:
        raise ValueError(f"images must be (m, h, w) or (n_beads, m, h, w), got {imgs.shape}")
    n_beads, m, h, w = imgs.shape
    z = np.asarray(z_nm, dtype=np.float64).ravel()
    if z.size != m:
        raise ValueError(f"z_nm has {z.size} values for {m} images per bead")
    if not np.all(np.isfinite(z)):
        raise ValueError("z_nm must be finite")
    levels, inverse = np.unique(z, return_inverse=True)
    if levels.size < _MIN_PLANES:
        raise ValueError(f"a Z-LUT needs at least {_MIN_PLANES} distinct heights, got {levels.size}")
    ids = np.arange(n_beads) if bead_ids is None else np.atleast_1d(np.asarray(bead_ids))
    if ids.shape != (n_beads,):
        raise ValueError(f"bead_ids must have {n_beads} entries, got {ids.shape}")
    bins = options.bins_for((h, w))
    out = np.empty((n_beads, levels.size, bins.n_bins))
    for b in range(n_beads):
        # the kernel of locate_xy() (and track() without a LUT): x, y and the profiles
        _, status, profiles = run_kernel(as_stack(imgs[b]), options, bins, None, None, True)
        assert profiles is not None
        ok = status == TrackStatus.OK
        counts = np.bincount(inverse[ok], minlength=levels.size)
        if np.any(counts == 0):
            bad = levels[counts == 0]
            raise ValueError(
                f"bead {int(ids[b])}: no usable image at z = {bad[:5].tolist()} nm "
                f"(bead lost: status {np.bincount(status, minlength=7).tolist()})"
            )
        sums = np.zeros((levels.size, bins.n_bins))
        np.add.at(sums, inverse[ok], profiles[ok])
        out[b] = _smooth_along_z(sums / counts[:, None], levels, int(smooth_planes))
    if not FOCAL_SHIFT_RANGE[0] <= focal_shift <= FOCAL_SHIFT_RANGE[1]:
        raise ValueError(f"focal_shift={focal_shift!r}: must be within "
                         f"{FOCAL_SHIFT_RANGE[0]:g} to {FOCAL_SHIFT_RANGE[1]:g}")
    return ZLUT(
        z_nm=levels * float(focal_shift),
        profiles=out,
        roi_size=(h, w),
        bin_px=bins.bin_px,
        nm_per_px=float(nm_per_px),
        bead_ids=ids.astype(np.int64),
        created=time.time() if created is None else float(created),
        source=source,
        focal_shift=float(focal_shift),
    )
