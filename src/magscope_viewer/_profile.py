"""The selected bead's radial profile and its Z-LUT match, computed in the viewer (no Qt).

The profile is computed from the ROI crop of the frame on screen with the tracker's own
kernel (:func:`magscope_tracking.track` with ``return_profiles``; default
:class:`~magscope_tracking.TrackOptions`, as the tracking workers use, and the LUT's
radial bins when a Z-LUT serves the bead), so it is the profile the tracker matched.
The Z-LUT is the file the tracker loaded (its control record holds path, SHA-256 and a
generation); :class:`ZlutFile` loads it read-only and again when the generation changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magscope_tracking import ZLUT, RoiTable, TrackOptions, TrackStatus, file_sha256, track

_OPTIONS = TrackOptions(return_profiles=True)


@dataclass(frozen=True)
class BeadProfile:
    """One bead in one frame: ``radii_px`` and ``profile`` (relative to the background),
    the centre (``x_px``, ``y_px``, ROI px), ``z_nm`` (NaN without a LUT match),
    ``status`` (:class:`~magscope_tracking.TrackStatus` name), and, with a Z-LUT for the
    bead, ``lut_profile`` (the LUT interpolated at ``z_nm``) and ``lut_index`` (the
    bead's row in the LUT)."""

    bead_id: int
    frame_index: int
    radii_px: np.ndarray
    profile: np.ndarray
    x_px: float
    y_px: float
    z_nm: float
    z_score: float
    status: str
    lut_profile: np.ndarray | None = None
    lut_index: int = -1


class ZlutFile:
    """The Z-LUT the tracker loaded, kept in step with its generation.

    :meth:`update` with the control record's (path, sha256, generation): loads the file
    when the generation changes (checking the SHA-256), or drops it when the path is "".
    ``zlut`` (None: none loaded), ``message`` (what to show instead).
    """

    def __init__(self) -> None:
        self.generation = -1
        self.path = ""
        self.zlut: ZLUT | None = None
        self.message = "no Z-LUT loaded"
        self.loads = 0

    def update(self, published: tuple[str, str, int] | None) -> bool:
        """Follow the published file; True if what is loaded changed."""
        if published is None:
            return False
        path, sha256, generation = published
        if generation == self.generation:
            return False
        self.generation, self.path, self.zlut = generation, path, None
        if not path:
            self.message = "no Z-LUT loaded"
            return True
        try:
            if sha256 and file_sha256(Path(path)) != sha256:
                raise ValueError("the file changed since the tracker loaded it")
            self.zlut = ZLUT.load(path)
            self.loads += 1
            self.message = f"Z-LUT (generation {generation}): {Path(path).name}"
        except Exception as exc:  # show why; the tracker keeps its own copy
            self.message = f"Z-LUT {path} not shown: {type(exc).__name__}: {exc}"
        return True


def lut_profile_at(zlut: ZLUT, index: int, z_nm: float) -> np.ndarray | None:
    """The LUT profile of bead row ``index`` at height ``z_nm`` (linear between the two
    nearest planes); None outside the LUT's z range or for a NaN z."""
    z = zlut.z_nm
    if not math.isfinite(z_nm) or z_nm < z[0] or z_nm > z[-1]:
        return None
    k = int(np.clip(np.searchsorted(z, z_nm) - 1, 0, z.size - 2))
    w = (z_nm - z[k]) / (z[k + 1] - z[k])
    planes = zlut.profiles[index]
    return (1.0 - w) * planes[k] + w * planes[k + 1]


def crop_roi(image: np.ndarray, x0_frame: int, y0_frame: int, table: RoiTable,
             bead_id: int) -> np.ndarray | None:
    """The ROI of ``bead_id`` (C-contiguous copy) from a frame whose top-left pixel is at
    sensor (``x0_frame``, ``y0_frame``) px; None if the bead has no ROI or it leaves the
    frame."""
    where = np.flatnonzero(table.ids == bead_id)
    if where.size == 0:
        return None
    k = int(where[0])
    x0 = int(table.x0[k]) - x0_frame
    y0 = int(table.y0[k]) - y0_frame
    size = int(table.size)
    rows, cols = image.shape
    if x0 < 0 or y0 < 0 or x0 + size > cols or y0 + size > rows:
        return None
    return np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size])


def bead_profile(crop: np.ndarray, bead_id: int, frame_index: int,
                 zlut: ZLUT | None) -> BeadProfile:
    """Track one ROI crop as the workers do and return its profile and LUT match."""
    index = -1
    lut = None
    if zlut is not None and crop.shape == tuple(zlut.roi_size):
        rows = np.flatnonzero(zlut.bead_ids == bead_id)
        if rows.size:
            index, lut = int(rows[0]), zlut
    if lut is None:
        result = track(crop[None], options=_OPTIONS)
    else:
        result = track(crop[None], lut, bead_index=np.array([index]), options=_OPTIONS)
    assert result.profiles is not None
    z = float(result.z_nm[0])
    status = TrackStatus(int(result.status[0])).name
    return BeadProfile(
        bead_id=bead_id, frame_index=frame_index, radii_px=result.bins.radii_px,
        profile=result.profiles[0], x_px=float(result.x_px[0]), y_px=float(result.y_px[0]),
        z_nm=z, z_score=float(result.z_score[0]), status=status,
        lut_profile=None if lut is None else lut_profile_at(lut, index, z), lut_index=index,
    )
