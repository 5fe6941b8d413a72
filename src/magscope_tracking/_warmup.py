"""Warm-up: compile (or load from numba's cache) the tracking kernels before they are needed.

:func:`warmup` runs every kernel entry point on :func:`synthetic_bead` images, so the first
real call does not pay the compilation (30-60 s per dtype on a first run).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .find_beads import find_beads
from .options import TrackOptions
from .track import track
from .zlut import build_zlut

__all__ = ["synthetic_bead", "warmup"]


def synthetic_bead(shape=(64, 64), x_px=None, y_px=None, dz: float = 0.0,
                   background: float = 125.0, contrast: float = 0.3) -> np.ndarray:
    """A noise-free, radially symmetric ring pattern (float64, ADU) for warm-up and demos.

    ``dz`` (arbitrary units, about -3 .. 3) changes the ring pattern monotonically. Not a
    physical model; use the simulator (``magscope_devices.sim``) for realistic images.
    """
    h, w = shape
    cx = (w - 1) / 2 if x_px is None else x_px
    cy = (h - 1) / 2 if y_px is None else y_px
    yy, xx = np.indices(shape, dtype=np.float64)
    r2 = (xx - cx) ** 2 + (yy - cy) ** 2
    zeff = math.sqrt(1.0 + dz * dz)
    rho = 6.5 + 2.5 * zeff
    ring = np.cos(math.pi * r2 / (20.0 * zeff) + 2.0 * math.atan(dz) + math.pi / 2)
    return background * (1.0 + contrast / zeff * np.exp(-((r2 / rho**2) ** 2)) * ring)


def warmup(dtypes=(np.uint8, np.uint16), roi_size: int = 64) -> float:
    """Compile, or load from numba's on-disk cache, the tracking kernel of :func:`track`
    (with and without a Z-LUT; also used by :func:`build_zlut` and :func:`find_beads`)
    for each stack dtype in ``dtypes``. Returns the seconds it took: about 1 s from the
    cache, 30-60 s per dtype on a first run (compilation)."""
    t0 = time.perf_counter()
    shape = (roi_size, roi_size)
    dz = np.linspace(-2.0, 2.0, 9)
    sweep = np.stack([synthetic_bead(shape, dz=d) for d in dz])
    lut = None
    for dtype in dtypes:
        dt = np.dtype(dtype)
        stack = sweep.astype(dt) if dt.kind == "f" else np.round(sweep).astype(dt)
        if lut is None:
            lut = build_zlut(stack, dz * 1000.0, nm_per_px=100.0, smooth_planes=0)
        track(stack)
        track(stack, lut, options=TrackOptions(return_profiles=True))
        frame = np.full((3 * roi_size, 3 * roi_size), 125.0)
        frame[roi_size : 2 * roi_size, roi_size : 2 * roi_size] = sweep[4]
        find_beads(frame.astype(dt) if dt.kind == "f" else np.round(frame).astype(dt),
                   roi_size=roi_size)
    return time.perf_counter() - t0
