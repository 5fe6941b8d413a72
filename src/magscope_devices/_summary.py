"""The microscope at a glance: every axis, the force, the beads and the health counters.

:meth:`Microscope.summary() <magscope_devices._microscope.Microscope.summary>` gives a
:class:`MicroscopeSummary`, whose text (its ``repr``, so IPython shows it) is a table::

    microscope
      axis             position          low         high  units
      magnet_z           8.0000       0.3000      10.0000  mm
      magnet_rotation     0.000     -200.000      200.000  turns
      focus              4000.0     -20000.0      80000.0  nm
      force                 nan          nan          nan  pN  (no force calibration)
      camera     100.0 frames/s set, 99.8 measured; exposure 5.000 ms; 1,234 frames, 0 late
      tracking   1,230 frames tracked, 0 dropped, queue 0; latency p50 1.2 ms, p99 3.4 ms
      Z-LUT      run 5f3c... (or: none loaded)
      beads      8 (2 reference)
        id   x0 px   y0 px  reference  height nm
         0     118     301          *        0.0
         ...

Units: axes in their own units (mm, turns, nm), force pN, ROI origins px (the ROI's
top-left sensor pixel), heights nm, latencies ms in the text (s in the fields).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._microscope import Microscope

__all__ = ["AxisState", "MicroscopeSummary", "read_summary"]


@dataclass(frozen=True)
class AxisState:
    """One axis: its position and limits, in ``units``."""

    name: str
    position: float
    low_limit: float
    high_limit: float
    units: str


@dataclass(frozen=True, repr=False)
class MicroscopeSummary:
    """What :meth:`Microscope.summary` read; ``str()`` / ``repr()`` is the table."""

    name: str
    axes: list[AxisState]
    force: AxisState
    force_calibration: str | None  # the calibration's run uid, or "" if it has none
    camera: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    bead_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    roi_x0_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    roi_y0_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    height_nm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __repr__(self) -> str:
        return self.text()

    def __str__(self) -> str:
        return self.text()

    def text(self, *, max_beads: int = 40) -> str:
        """The table (at most ``max_beads`` bead rows)."""
        lines = [self.name or "microscope"]
        lines.append(f"  {'axis':<16}{'position':>12}{'low':>13}{'high':>13}  units")
        for axis in [*self.axes, self.force]:
            lines.append(
                f"  {axis.name:<16}{axis.position:>12.4f}{axis.low_limit:>13.4f}"
                f"{axis.high_limit:>13.4f}  {axis.units}"
            )
        if self.force_calibration is None:
            lines[-1] += "  (no force calibration)"
        elif self.force_calibration:
            lines[-1] += f"  (calibration of run {self.force_calibration})"
        if "error" in self.camera:
            lines.append(f"  {'camera':<10} unavailable: {self.camera['error']}")
        elif self.camera:
            cam = self.camera
            measured = cam.get("measured_fps")
            rate = f"{cam['frame_rate_hz']:.1f} frames/s set" + (
                f", {measured:.1f} measured" if measured is not None else ""
            )
            lines.append(
                f"  {'camera':<10} {rate}; exposure {1e3 * cam['exposure_s']:.3f} ms; "
                f"{cam['frames_acquired']:,} frames, {cam['frames_late']:,} late"
            )
        if "error" in self.tracking:
            lines.append(f"  {'tracking':<10} unavailable: {self.tracking['error']}")
        elif self.tracking:
            trk = self.tracking
            lines.append(
                f"  {'tracking':<10} {trk['frames_tracked']:,} frames tracked, "
                f"{trk['frames_dropped']:,} dropped, queue {trk['queue_depth']}; latency "
                f"p50 {1e3 * trk['latency_p50_s']:.1f} ms, p99 {1e3 * trk['latency_p99_s']:.1f} ms"
            )
            zlut = trk.get("zlut_uid") or ""
            lines.append(f"  {'Z-LUT':<10} {'run ' + zlut if zlut else 'none loaded'}")
            n_ref = int(self.reference.sum())
            lines.append(f"  {'beads':<10} {len(self.bead_ids)} ({n_ref} reference)")
            if len(self.bead_ids):
                lines.append(f"    {'id':>4}{'x0 px':>8}{'y0 px':>8}{'reference':>11}{'height nm':>11}")
            for i in range(min(len(self.bead_ids), max_beads)):
                ref = "*" if self.reference[i] else ""
                height = self.height_nm[i]
                lines.append(
                    f"    {self.bead_ids[i]:>4}{self.roi_x0_px[i]:>8}{self.roi_y0_px[i]:>8}"
                    f"{ref:>11}{'' if math.isnan(height) else f'{height:.1f}':>11}"
                )
            if len(self.bead_ids) > max_beads:
                lines.append(f"    ... {len(self.bead_ids) - max_beads} more")
        return "\n".join(lines)


async def _axis(name: str, axis: Any, units: str) -> AxisState:
    position, low, high = await asyncio.gather(
        axis.readback.get_value(), axis.low_limit.get_value(), axis.high_limit.get_value()
    )
    return AxisState(name, float(position), float(low), float(high), units)


async def read_summary(microscope: Microscope, *, fps_interval_s: float = 0.5) -> MicroscopeSummary:
    """Read the summary of ``microscope``; the camera's frame rate is measured over
    ``fps_interval_s`` (s; 0 skips the measurement)."""
    axes = [
        await _axis("magnet_z", microscope.magnet_z, "mm"),
        await _axis("magnet_rotation", microscope.magnet_rotation, "turns"),
        await _axis("focus", microscope.focus, "nm"),
    ]
    force = await _axis("force", microscope.force, "pN")
    cal = microscope.force.calibration
    try:
        camera = await _read_camera(microscope.camera, fps_interval_s)
    except Exception as err:  # a stopped camera process: the rest still reads
        camera = {"error": str(err)}
    summary: dict[str, Any] = {
        "name": microscope.name,
        "axes": axes,
        "force": force,
        "force_calibration": None if cal is None else (cal.source or ""),
        "camera": camera,
    }
    tracker = getattr(microscope, "tracker", None)
    if tracker is not None:
        try:
            summary.update(await _read_tracker(tracker))
        except Exception as err:  # a stopped tracking service: the rest still reads
            summary["tracking"] = {"error": str(err)}
    return MicroscopeSummary(**summary)


async def _read_camera(cam: Any, fps_interval_s: float) -> dict[str, Any]:
    acquired = int(await cam.frames_acquired.get_value())
    measured = None
    if fps_interval_s > 0:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(fps_interval_s)
        later = int(await cam.frames_acquired.get_value())
        measured = (later - acquired) / (loop.time() - t0)
        acquired = later
    return {
        "frame_rate_hz": float(await cam.frame_rate_hz.get_value()),
        "measured_fps": measured,
        "exposure_s": float(await cam.exposure_s.get_value()),
        "frames_acquired": acquired,
        "frames_late": int(await cam.frames_late.get_value()),
    }


async def _read_tracker(tracker: Any) -> dict[str, Any]:
    tracking = {
        name: await getattr(tracker, name).get_value()
        for name in (
            "frames_tracked", "frames_dropped", "queue_depth", "latency_p50_s",
            "latency_p99_s", "zlut_uid",
        )
    }
    rois = await tracker.rois.get_value()
    ids = np.asarray(rois.bead_id, np.int64)
    reference = np.asarray(await tracker.reference_beads.get_value(), np.int64)
    heights = await tracker.height_offsets.get_value()
    offset = dict(zip(np.asarray(heights.bead_id).tolist(),
                      np.asarray(heights.offset_nm, float).tolist(), strict=True))
    return {
        "tracking": tracking,
        "bead_ids": ids,
        "roi_x0_px": np.asarray(rois.x0_px, np.int64),
        "roi_y0_px": np.asarray(rois.y0_px, np.int64),
        "reference": np.isin(ids, reference),
        "height_nm": np.array([offset.get(int(i), math.nan) for i in ids], float),
    }
