"""The simulated camera's coupling to the axes, on the owner's side.

The world runs in the camera process; it sees the magnets and the focus move through a
shared record of stage inputs that :class:`SimulationLink` fills from the axes'
readbacks, whatever drives the axes (simulated, python-microscope or EPICS), and gives
back the ground truth of every frame. It belongs to the simulated camera backend: a
microscope with a real camera has none.
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import Any

from magscope_ipc.rings import SlotRing
from magscope_ipc.shm import SharedRecord, remove_stale_segments, segment_name

from .frame_source import SIM_INPUTS_DTYPE, TRUTH_DTYPE, TruthReader
from .world import SimParams

#: Frames of ground truth kept by the simulated microscope (164 s at 100 frames/s).
TRUTH_CAPACITY = 16384

#: stage-input field -> the microscope's axis whose readback feeds it
AXIS_INPUTS = {"magnet_z_mm": "magnet_z", "magnet_turns": "magnet_rotation", "focus_nm": "focus"}


class SimulationLink:
    """Shared memory between the simulated axes (this process) and the world (camera process).

    Owns the stage-inputs record and the ground-truth ring; mirrors the axes' readbacks
    into the record so the world sees magnets and focus move as they move.
    """

    def __init__(self, params: SimParams, instance: str) -> None:
        self.params = params
        self.instance = instance
        self.inputs_name = segment_name(instance, "siminputs")
        self.truth_name = segment_name(instance, "truth")
        self.inputs: SharedRecord | None = None
        self.truth_ring: SlotRing | None = None
        self._finalizer: weakref.finalize | None = None
        self._mirrored = False

    def open(self, magnet_z_mm: float, magnet_turns: float, focus_nm: float) -> None:
        if self.inputs is not None:
            return
        remove_stale_segments(self.instance)  # this instance's only: others are not ours
        for name in (self.inputs_name, self.truth_name):
            Path("/dev/shm", name).unlink(missing_ok=True)
        self.inputs = SharedRecord.create(self.inputs_name, SIM_INPUTS_DTYPE)
        self.inputs["magnet_z_mm"] = magnet_z_mm
        self.inputs["magnet_turns"] = magnet_turns
        self.inputs["focus_nm"] = focus_nm
        self.inputs["drift_speed"] = 1.0
        n_beads = self.params.n_tethered + self.params.n_reference
        self.truth_ring = SlotRing.create(self.truth_name, TRUTH_CAPACITY, (n_beads,), TRUTH_DTYPE)
        self._finalizer = weakref.finalize(self, _unlink, self.inputs_name, self.truth_name)

    async def attach(self, microscope: Any) -> None:
        """Open the shared memory at the axes' positions (before the camera process
        starts) and mirror the axes' readbacks into it from then on. Idempotent."""
        if self.inputs is None:
            self.open(*[
                await getattr(microscope, axis).readback.get_value()
                for axis in AXIS_INPUTS.values()
            ])
        if not self._mirrored:
            for field, axis in AXIS_INPUTS.items():
                self.mirror(field, getattr(microscope, axis).readback)
            self._mirrored = True

    def update(self, field: str, value: float) -> None:
        if self.inputs is not None:
            self.inputs[field] = value

    def set_drift_speed(self, speed: float) -> None:
        """Run the simulated stage drift's clock at ``speed`` (1: as ``SimParams`` says,
        0: the stage holds still where it is; no jump either way)."""
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"drift speed {speed!r} must be a finite number >= 0")
        self.update("drift_speed", float(speed))

    def set_stage_z_offset(self, offset_nm: float) -> None:
        """Step the simulated sample stage along z to ``offset_nm`` (nm, on top of the
        drift): a sudden defocus of every bead, as a bumped stage would give."""
        if not math.isfinite(offset_nm):
            raise ValueError(f"stage offset {offset_nm!r} nm must be finite")
        self.update("stage_z_offset_nm", float(offset_nm))

    def mirror(self, field: str, signal) -> None:
        """Copy every new reading of ``signal`` into the inputs record's ``field``."""

        def on_reading(reading: dict) -> None:
            (entry,) = reading.values()
            self.update(field, float(entry["value"]))

        signal.subscribe_reading(on_reading)

    @property
    def truth(self) -> TruthReader:
        if self.truth_ring is None:
            raise RuntimeError("the simulated microscope is not connected")
        return TruthReader(self.truth_ring)

    def close(self) -> None:
        for shared in (self.inputs, self.truth_ring):
            if shared is not None:
                shared.unlink()
                shared.close()
        self.inputs = None
        self.truth_ring = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None


def _unlink(*names: str) -> None:
    for name in names:
        Path("/dev/shm", name).unlink(missing_ok=True)
