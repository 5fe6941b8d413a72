"""The simulated camera: the world model and renderer behind the acquisition loop.

Runs inside the camera process. Each frame it reads the stage inputs (magnet
height, rotation, focus) that the simulated axes publish into a shared record
(:data:`SIM_INPUTS_DTYPE`), advances the world to the frame's start time,
renders the frame, and appends the ground truth of that frame to a truth ring
whose index equals the frame ring's index, so any frame's truth can be looked
up by frame index (:class:`TruthReader`).
"""

from __future__ import annotations

import numpy as np

from magscope_ipc.rings import SlotRing
from magscope_ipc.shm import SharedRecord

from .render import Renderer
from .world import SimParams, SimWorld

SIM_INPUTS_DTYPE = np.dtype(
    [
        ("magnet_z_mm", "<f8"),
        ("magnet_turns", "<f8"),
        ("focus_nm", "<f8"),
        ("drift_speed", "<f8"),  # the stage drift's clock rate (1: as SimParams, 0: still)
        ("stage_z_offset_nm", "<f8"),  # a step of the sample stage along z (tests)
    ]
)

#: Per-bead ground truth stored for every frame (units in the names).
TRUTH_DTYPE = np.dtype(
    [
        ("x_nm", "<f8"),  # exposure-averaged position, sensor coordinates
        ("y_nm", "<f8"),
        ("z_nm", "<f8"),  # bead centre above the surface (+ drift)
        ("x0_nm", "<f8"),  # instantaneous position at the exposure start
        ("y0_nm", "<f8"),
        ("z0_nm", "<f8"),
        ("force_pn", "<f8"),
        ("extension_nm", "<f8"),
        ("magnet_z_mm", "<f8"),
        ("magnet_turns", "<f8"),
        ("focus_nm", "<f8"),  # the focus axis (objective) position
        ("focal_plane_nm", "<f8"),  # where it focuses in the sample: focal_shift x focus_nm
        ("exposure_s", "<f8"),
    ]
)


def truth_rows(truth, out: np.ndarray) -> None:
    """Fill a ``TRUTH_DTYPE`` array (one row per bead) from a ``FrameTruth``."""
    for field in ("x_nm", "y_nm", "z_nm", "x0_nm", "y0_nm", "z0_nm", "force_pn", "extension_nm"):
        out[field] = getattr(truth, field)
    out["magnet_z_mm"] = truth.magnet_z_mm
    out["magnet_turns"] = truth.magnet_turns
    out["focus_nm"] = truth.focus_nm
    out["focal_plane_nm"] = truth.focal_plane_nm
    out["exposure_s"] = truth.exposure_s


class SimFrameSource:
    """A :class:`~magscope_devices._acquisition.FrameSource` backed by :class:`SimWorld`."""

    def __init__(self, params: SimParams, inputs_name: str, truth_name: str) -> None:
        self.params = params
        self.world = SimWorld(params)
        self.sensor_shape = (params.height_px, params.width_px)
        self.bit_depth = params.bit_depth
        self.dtype = np.dtype(params.dtype)
        self.inputs = SharedRecord.attach(inputs_name)
        self.truth = SlotRing.attach(truth_name)
        self.renderer = Renderer(params)
        self.renderer.warmup()  # compile (or load cached) kernels before the first frame
        self._drift_clock: float | None = None  # drift time (s) at the previous frame
        self._t_prev = 0.0

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        inputs = self.inputs
        speed = max(float(inputs["drift_speed"]), 0.0)
        if self._drift_clock is None:
            self._drift_clock = t_s
        else:
            self._drift_clock += speed * max(t_s - self._t_prev, 0.0)
        self._t_prev = t_s
        truth = self.world.advance(
            t_s, exposure_s, inputs["magnet_z_mm"], inputs["magnet_turns"], inputs["focus_nm"],
            drift_time_s=self._drift_clock, drift_speed=speed,
            stage_z_offset_nm=float(inputs["stage_z_offset_nm"]),
        )
        self.renderer.render(truth, out, gain=gain)
        index, rows = self.truth.begin_write()
        truth_rows(truth, rows)
        self.truth.commit(index, t_s)

    def close(self) -> None:
        self.inputs.close()
        self.truth.close()


class TruthReader:
    """Ground truth of recent frames, looked up by frame index (owner side)."""

    def __init__(self, ring: SlotRing) -> None:
        self.ring = ring

    def frame(self, index: int) -> np.ndarray:
        """``TRUTH_DTYPE`` rows (one per bead) of frame ``index``."""
        rows, _ = self.ring.read(index)
        return rows

    def since(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame indices, timestamps (s) and truth rows ``(n_frames, n_beads)`` since ``k``."""
        avail = self.ring.available_since(k)
        indices = np.arange(avail.start, avail.stop)
        rows = np.empty((len(indices), *self.ring.slot_shape), dtype=self.ring.dtype)
        stamps = np.empty(len(indices))
        for j, i in enumerate(indices):
            rows[j], stamps[j] = self.ring.read(int(i))
        return indices, stamps, rows
