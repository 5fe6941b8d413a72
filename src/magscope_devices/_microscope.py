"""The microscope: the top device grouping camera, magnets and focus.

:func:`make_simulated_microscope` builds the default, simulated instrument. It
has no side effects until connected (``init_devices`` or ``await
microscope.connect()``): connecting creates the shared memory, starts the camera
process and links the simulated axes to the world model. :meth:`Microscope.close`
(also run at interpreter exit) stops the process and unlinks the shared memory.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import (
    AsyncStatus,
    DeviceConnector,
    PathProvider,
    StandardReadable,
    StaticPathProvider,
    UUIDFilenameProvider,
)

from magscope_ipc.rings import SlotRing
from magscope_ipc.shm import SharedRecord, remove_stale_segments, segment_name

from ._acquisition import AcquisitionConfig, AcquisitionProcess
from ._axes_record import LOCK_SIGNALS, LOCKS, AxesLink
from ._bead_tracker import BeadTracker
from ._camera import Camera, CameraLimits
from ._force import Force
from ._locks import FocusLock, XYLock
from ._motors import FocusStage, MagnetRotation, MagnetZ
from ._ownership import InstrumentLock
from ._summary import MicroscopeSummary, read_summary
from .sim.frame_source import SIM_INPUTS_DTYPE, TRUTH_DTYPE, SimFrameSource, TruthReader
from .sim.world import SimParams

#: Frames of ground truth kept by the simulated microscope (164 s at 100 frames/s).
TRUTH_CAPACITY = 16384


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


class _MicroscopeConnector(DeviceConnector):
    """Open the simulation link before the camera process starts, then mirror the axes."""

    async def connect_real(self, device, timeout: float, force_reconnect: bool):
        if device.ownership is not None:  # one owner per instrument: refuse before anything
            device.ownership.acquire()
        link: SimulationLink | None = device.simulation
        if link is not None:
            link.open(
                await device.magnet_z.readback.get_value(),
                await device.magnet_rotation.readback.get_value(),
                await device.focus.readback.get_value(),
            )
        await super().connect_real(device, timeout, force_reconnect)
        if link is not None and not device._mirrored:
            link.mirror("magnet_z_mm", device.magnet_z.readback)
            link.mirror("magnet_turns", device.magnet_rotation.readback)
            link.mirror("focus_nm", device.focus.readback)
            device._mirrored = True
        for lock in device.locks():
            lock.start_loop(asyncio.get_running_loop())
        axes: AxesLink | None = device.axes_link
        if axes is not None and not axes.is_open:
            axes.open()
            for key, axis in (
                ("magnet_z_mm", device.magnet_z), ("magnet_turns", device.magnet_rotation),
                ("focus_nm", device.focus), ("force_pn", device.force),
            ):
                axes.mirror(key, axis.readback)
                axes.mirror(key + "_setpoint", axis.setpoint)
                axes.mirror(key + "_low", axis.low_limit)
                axes.mirror(key + "_high", axis.high_limit)
            for prefix in LOCKS:
                lock = getattr(device, prefix, None)
                for signal in LOCK_SIGNALS if lock is not None else ():
                    axes.mirror(f"{prefix}_{signal}", getattr(lock, signal))


class Microscope(StandardReadable):
    """Camera, magnet height (mm), magnet rotation (turns), focus (nm), the force on the
    beads (pN, through the loaded force calibration) and, with a tracker, the bead locks
    (``focus_lock``, ``xy_lock``) of one instrument.

    ``read()`` gives the axes' positions; the camera is a detector of its own
    (``microscope.camera``), used in plans next to the microscope.
    """

    def __init__(
        self,
        camera: Camera,
        magnet_z: MagnetZ,
        magnet_rotation: MagnetRotation,
        focus: FocusStage,
        tracker: BeadTracker | None = None,
        simulation: SimulationLink | None = None,
        ownership: InstrumentLock | None = None,
        axes_link: AxesLink | None = None,
        name: str = "",
    ) -> None:
        self.simulation = simulation
        #: the axes record other processes (the viewer) read, created on connect
        self.axes_link = axes_link
        #: the instrument's ownership lock, taken on connect, released by close()
        self.ownership = ownership
        self._mirrored = False
        with self.add_children_as_readables():
            self.magnet_z = magnet_z
            self.magnet_rotation = magnet_rotation
            self.focus = focus
            self.force = Force(magnet_z)
            if tracker is not None:  # the locks read the tracker's ring
                self.focus_lock = FocusLock(tracker, focus)
                self.xy_lock = XYLock(tracker)
        self.camera = camera
        if tracker is not None:
            self.tracker = tracker
        super().__init__(name=name, connector=_MicroscopeConnector())

    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Stage the axes and the camera.

        Bluesky stages the root device of everything a plan lists, so a plan listing
        ``microscope.camera`` stages the microscope: the camera must come along.
        """
        await asyncio.gather(StandardReadable.stage(self), *(d.stage() for d in self.detectors()))

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        await asyncio.gather(
            StandardReadable.unstage(self), *(d.unstage() for d in self.detectors())
        )

    def locks(self) -> list[FocusLock | XYLock]:
        """The bead locks (none without a tracker)."""
        return [getattr(self, name) for name in LOCKS if hasattr(self, name)]

    def detectors(self) -> list[Any]:
        """The camera and, if present, the bead tracker."""
        tracker = getattr(self, "tracker", None)
        return [self.camera] if tracker is None else [self.camera, tracker]

    async def read_summary(self, *, fps_interval_s: float = 0.5) -> MicroscopeSummary:
        """Every axis (position and limits, in their units), the force (pN), the camera's
        rate and counters, the tracking health and the bead table; see :meth:`summary`."""
        return await read_summary(self, fps_interval_s=fps_interval_s)

    def summary(self, *, fps_interval_s: float = 0.5) -> MicroscopeSummary:
        """The microscope at a glance, as a table (:class:`MicroscopeSummary`; IPython
        shows it, ``print()`` prints it): every axis with its position and limits, the
        force, the camera's frame rate (set and measured over ``fps_interval_s`` s),
        frames tracked and dropped, tracking latency, the Z-LUT and the bead table (ids,
        ROI origins in px, reference beads, heights). Runs on Bluesky's event loop, from
        a plain (non-async) caller such as the IPython prompt; inside a coroutine use
        ``await microscope.read_summary()``."""
        from bluesky.run_engine import call_in_bluesky_event_loop

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return call_in_bluesky_event_loop(self.read_summary(fps_interval_s=fps_interval_s))
        raise RuntimeError(
            "summary() blocks: inside a coroutine use `await microscope.read_summary()`"
        )

    @property
    def truth(self) -> TruthReader:
        """Ground truth of recent frames (simulated instrument only)."""
        if self.simulation is None:
            raise RuntimeError(f"{self.name} is real hardware: there is no ground truth")
        return self.simulation.truth

    def close(self) -> None:
        """Stop the tracking service and the camera process, release all shared memory
        (also the axes record). Idempotent."""
        for lock in self.locks():
            lock.stop_loop()
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.close()
        self.camera.process.stop()
        if self.simulation is not None:
            self.simulation.close()
        if self.axes_link is not None:
            self.axes_link.close()
        if self.ownership is not None:
            self.ownership.release()


def make_simulated_microscope(
    params: SimParams | None = None,
    *,
    path_provider: PathProvider | None = None,
    data_dir: str | Path | None = None,
    exposure_s: float = 0.005,
    frame_rate_hz: float = 100.0,
    ring_capacity: int = 64,
    focus_nm: float | None = None,
    magnet_z_mm: float = 8.0,
    track: bool = True,
    tracking_workers: int | None = None,
    roi_size_px: int = 64,
    instance: str | None = None,
    name: str = "",
) -> Microscope:
    """Build the simulated microscope (not yet connected).

    :param params: the simulated world (beads, sensor, optics); defaults to ``SimParams()``.
    :param path_provider: where captured frames are written; default: UUID-named files in
        ``data_dir``.
    :param data_dir: folder for captured HDF5 files when no ``path_provider`` is given
        (it must be readable by the Tiled server).
    :param exposure_s: camera exposure (s).
    :param frame_rate_hz: camera frame rate (frames/s).
    :param ring_capacity: frames held in the shared-memory frame ring.
    :param focus_nm: initial focal-plane height above the surface (nm); default
        ``params.default_focus_nm``.
    :param magnet_z_mm: initial magnet height (mm).
    :param track: include the bead tracker (tracking service started on connect).
    :param tracking_workers: tracking worker processes (default one per core).
    :param roi_size_px: side of the tracking ROIs (px).
    :param instance: name of the instrument instance, in shared-memory names; a named
        instance is owned by one process at a time (connecting takes its lock, see
        :mod:`magscope_devices._ownership`). Default: a random, private name.
    """
    params = params or SimParams()
    ownership = InstrumentLock(instance) if instance else None
    instance = instance or f"sim{uuid.uuid4().hex[:8]}"
    if path_provider is None:
        if data_dir is None:
            raise ValueError("give a path_provider or a data_dir for captured frames")
        folder = Path(data_dir).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        path_provider = StaticPathProvider(UUIDFilenameProvider(), folder)
    link = SimulationLink(params, instance)
    dtype = np.uint8 if params.bit_depth <= 8 else np.uint16
    process = AcquisitionProcess(
        source_factory=functools.partial(
            SimFrameSource, params, link.inputs_name, link.truth_name
        ),
        sensor_shape=(params.height_px, params.width_px),
        dtype=dtype,
        bit_depth=params.bit_depth,
        config=AcquisitionConfig(
            instance=instance,
            ring_capacity=ring_capacity,
            exposure_s=exposure_s,
            frame_rate_hz=frame_rate_hz,
        ),
    )
    focus0 = getattr(params, "default_focus_nm", 0.0) if focus_nm is None else focus_nm
    camera = Camera(process, path_provider, CameraLimits())
    tracker = (
        BeadTracker(
            camera, path_provider, nm_per_px=params.nm_per_px, n_workers=tracking_workers,
            roi_size_px=roi_size_px, bead_radius_nm=params.bead_radius_nm,
        )
        if track
        else None
    )
    return Microscope(
        camera=camera,
        tracker=tracker,
        magnet_z=MagnetZ(initial=magnet_z_mm),
        magnet_rotation=MagnetRotation(),
        focus=FocusStage(initial=focus0),
        simulation=link,
        ownership=ownership,
        axes_link=AxesLink(instance),
        name=name,
    )
