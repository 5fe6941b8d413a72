"""The microscope: the top device grouping camera, magnets and focus.

The instrument config (:mod:`._instrument_config`) says what drives each part and
:func:`~magscope_devices.make_microscope` builds it; :func:`make_simulated_microscope`
is the default config's shortcut. Nothing happens until connected (``init_devices`` or
``await microscope.connect()``): connecting reaches the hardware axes, creates the shared
memory, starts the camera process and, for the simulated camera, couples its world to the
axes. :meth:`Microscope.close` (also run at interpreter exit) stops the processes, lets
go of the hardware and unlinks the shared memory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ophyd_async.core import AsyncStatus, DeviceConnector, PathProvider, StandardReadable

from ._axes_record import LOCK_SIGNALS, LOCKS, AxesLink
from ._bead_tracker import BeadTracker
from ._camera import Camera
from ._force import Force
from ._health import InstrumentHealth
from ._locks import FocusLock, XYLock
from ._motors import FocusStage, MagnetRotation, MagnetZ
from ._ownership import InstrumentLock
from ._summary import MicroscopeSummary, read_summary
from ._video import VideoRecorder
from .sim.frame_source import TruthReader
from .sim.link import TRUTH_CAPACITY, SimulationLink
from .sim.world import SimParams

if TYPE_CHECKING:
    from ._instrument_config import InstrumentConfig

__all__ = ["TRUTH_CAPACITY", "Microscope", "SimulationLink", "make_simulated_microscope"]


class _MicroscopeConnector(DeviceConnector):
    """Take the instrument, connect the axes (hardware axes read their position), couple
    a simulated camera's world to them, then connect the rest (the camera process
    starts) and start the locks and the axes record."""

    async def connect_real(self, device, timeout: float, force_reconnect: bool):
        if device.ownership is not None:  # one owner per instrument: refuse before anything
            device.ownership.acquire()
        link: SimulationLink | None = device.simulation
        if link is not None:
            movers = (device.magnet_z, device.magnet_rotation, device.focus)
            await asyncio.gather(*(a.connect(timeout=timeout) for a in movers))
            await link.attach(device)
        await super().connect_real(device, timeout, force_reconnect)
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
        video: VideoRecorder | None = None,
        simulation: SimulationLink | None = None,
        ownership: InstrumentLock | None = None,
        axes_link: AxesLink | None = None,
        config: InstrumentConfig | None = None,
        name: str = "",
    ) -> None:
        #: what the microscope was built from (None: assembled in code)
        self.config = config
        self.simulation = simulation
        #: the axes record other processes (the viewer) read, created on connect
        self.axes_link = axes_link
        #: the instrument's ownership lock, taken on connect, released by close()
        self.ownership = ownership
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
        if video is not None:  # images beside the tracks (a detector of its own)
            self.video = video
        #: the instrument's health figures (not in the microscope's readings: the
        #: ``health`` stream of every session run reads it at the run's start and end)
        self.health = InstrumentHealth(camera, tracker, video)
        super().__init__(name=name, connector=_MicroscopeConnector())

    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Stage the axes and the camera.

        Bluesky stages the root device of everything a plan lists, so a plan listing
        ``microscope.camera`` stages the microscope: the camera must come along.
        """
        await asyncio.gather(
            StandardReadable.stage(self), *(d.stage() for d in self._staged_with())
        )

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        await asyncio.gather(
            StandardReadable.unstage(self), *(d.unstage() for d in self._staged_with())
        )

    def _staged_with(self) -> list[Any]:
        """The detectors staged with the microscope: the camera, the tracker, the video."""
        video = getattr(self, "video", None)
        return self.detectors() + ([video] if video is not None else [])

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
        video = getattr(self, "video", None)
        if video is not None:
            video.close()
        self.camera.process.stop()
        for axis in (self.magnet_z, self.magnet_rotation, self.focus):
            axis.close()
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
    ring_capacity: int | None = None,
    focus_nm: float | None = None,
    magnet_z_mm: float = 8.0,
    track: bool = True,
    tracking_workers: int | None = None,
    roi_size_px: int = 64,
    focal_shift: float | None = None,
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
    :param ring_capacity: frames held in the shared-memory frame ring; None: two seconds
        of frames, at least 64 and at most 512 MiB (``default_ring_capacity``).
    :param focus_nm: initial focal-plane height above the surface (nm); default
        0 nm (the surface).
    :param magnet_z_mm: initial magnet height (mm).
    :param track: include the bead tracker (tracking service started on connect).
    :param tracking_workers: tracking worker processes (default one per core).
    :param roi_size_px: side of the tracking ROIs (px).
    :param focal_shift: the focal shift the instrument believes (focal-plane travel per nm
        of focus travel; ``microscope.focus.focal_shift``); None: the simulated world's
        own (``params.focal_shift``), a perfectly configured instrument.
    :param instance: name of the instrument instance, in shared-memory names; a named
        instance is owned by one process at a time (connecting takes its lock, see
        :mod:`magscope_devices._ownership`). Default: a random, private name.
    """
    from ._factories import make_microscope
    from ._instrument_config import CameraConfig, InstrumentConfig, TrackingConfig, default_axis

    params = params or SimParams()
    focus0 = 0.0 if focus_nm is None else focus_nm
    config = InstrumentConfig(
        camera=CameraConfig(
            sensor_px=(params.width_px, params.height_px), bit_depth=params.bit_depth,
            frame_rate_hz=frame_rate_hz, exposure_s=exposure_s, ring_capacity=ring_capacity,
        ),
        magnet_z=default_axis("magnet_z", initial=magnet_z_mm),
        magnet_rotation=default_axis("magnet_rotation"),
        focus=default_axis("focus", initial=focus0),
        tracking=TrackingConfig(enabled=track, workers=tracking_workers, roi_size_px=roi_size_px),
        sim=params,
        focal_shift=focal_shift,
    )
    return make_microscope(
        config, path_provider=path_provider, data_dir=data_dir, instance=instance, name=name
    )
