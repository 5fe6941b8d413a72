"""Building the microscope from an instrument config: one factory per part.

:func:`make_microscope` is what sessions call; the part factories (:func:`make_camera`,
:func:`make_axis`, :func:`make_tracker`) are there for a lab assembling its own
instrument. Nothing connects here (``init_devices`` or ``await device.connect()`` does);
a backend's optional package is imported when its part is built.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import PathProvider, StaticPathProvider, UUIDFilenameProvider

from ._acquisition import AcquisitionConfig, AcquisitionProcess, FrameSource
from ._axes_record import AxesLink
from ._bead_tracker import BeadTracker
from ._camera import Camera, CameraLimits
from ._instrument_config import AxisConfig, InstrumentConfig
from ._microscope import Microscope
from ._motors import Axis, AxisDrive, FocusStage, MagnetRotation, MagnetZ
from ._ownership import InstrumentLock
from ._video import VideoRecorder
from .sim.frame_source import SimFrameSource
from .sim.link import SimulationLink

_AXIS_CLASSES: dict[str, type[Axis]] = {
    "magnet_z": MagnetZ, "magnet_rotation": MagnetRotation, "focus": FocusStage,
}
#: how close (axis units) a python-microscope stage or a PI axis must come to its target
_TOLERANCE = {"magnet_z": 1e-3, "magnet_rotation": 1e-3, "focus": 1.0}


def make_drive(config: AxisConfig) -> AxisDrive | None:
    """The hardware behind one axis (None for a simulated axis)."""
    if config.backend == "python-microscope":
        from .backends.pymicroscope import PyMicroscopeStageDrive

        assert config.uri is not None and config.axis is not None
        return PyMicroscopeStageDrive(
            config.uri, config.axis, units=config.units, scale=config.scale,
            offset=config.offset, tolerance=_TOLERANCE[config.key], timeout_s=config.timeout_s,
        )
    if config.backend == "pi":
        from .backends.pi import PiStageDrive

        assert config.uri is not None and config.axis is not None
        return PiStageDrive(
            config.uri, config.axis, units=config.units, scale=config.scale,
            offset=config.offset, tolerance=_TOLERANCE[config.key], timeout_s=config.timeout_s,
        )
    if config.backend == "zaber":
        from .backends.zaber import ZaberStageDrive

        assert config.uri is not None and config.axis is not None
        return ZaberStageDrive(
            config.uri, config.axis, units=config.units,
            device_units=config.device_units or "mm", scale=config.scale,
            offset=config.offset, timeout_s=config.timeout_s,
        )
    if config.backend == "epics":
        from .backends.epics import EpicsMotorDrive

        assert config.pv is not None
        return EpicsMotorDrive(
            config.pv, units=config.units, scale=config.scale, offset=config.offset,
            timeout_s=config.timeout_s,
        )
    return None


def make_axis(config: AxisConfig, *, name: str = "", focal_shift: float | None = None) -> Axis:
    """Magnet height (mm), magnet rotation (turns) or focus (nm), by ``config.key``;
    ``focal_shift``: the focus stage's (None: its default)."""
    cls = _AXIS_CLASSES[config.key]
    low, high = config.limits
    initial = config.initial if config.initial is not None else min(max(0.0, low), high)
    extra: dict[str, Any] = (
        {"safe": config.safe} if config.key == "magnet_z" and config.safe is not None else {}
    )
    if config.key == "focus" and focal_shift is not None:
        extra["focal_shift"] = focal_shift
    return cls(  # type: ignore[call-arg]
        initial=initial, low_limit=low, high_limit=high, velocity=config.velocity,
        drive=make_drive(config), name=name, **extra,
    )


def make_camera(
    config: InstrumentConfig, instance: str, path_provider: PathProvider,
    simulation: SimulationLink | None,
) -> Camera:
    """The camera: its acquisition process runs the config's frame source."""
    cam = config.camera
    assert cam.sensor_px is not None
    width, height = cam.sensor_px
    dtype = np.uint8 if cam.bit_depth <= 8 else np.uint16
    source_factory: Callable[[], FrameSource]
    limits = CameraLimits()
    if cam.backend == "sim":
        assert simulation is not None
        source_factory = functools.partial(
            SimFrameSource, config.sim, simulation.inputs_name, simulation.truth_name
        )
    else:
        from .backends import require

        require("Pyro4", "python-microscope")  # fail here, not in the camera process
        from .backends.pymicroscope import PyMicroscopeFrameSource

        assert cam.uri is not None
        source_factory = functools.partial(
            PyMicroscopeFrameSource, cam.uri, (height, width), dtype, cam.bit_depth,
            cam.timeout_s,
        )
        limits = CameraLimits(gain_fixed_because=(
            "python-microscope cameras each name and scale their own gain; set it on the "
            "camera (its python-microscope setting, e.g. 'gain') and leave camera.gain at 1"
        ))
    process = AcquisitionProcess(
        source_factory=source_factory,
        sensor_shape=(height, width),
        dtype=dtype,
        bit_depth=cam.bit_depth,
        config=AcquisitionConfig(
            instance=instance, ring_capacity=cam.ring_capacity, exposure_s=cam.exposure_s,
            frame_rate_hz=cam.frame_rate_hz,
        ),
    )
    return Camera(process, path_provider, limits)


def make_tracker(
    config: InstrumentConfig, camera: Camera, path_provider: PathProvider
) -> BeadTracker | None:
    """The bead tracker on ``camera`` (None when the config turns tracking off)."""
    trk = config.tracking
    if not trk.enabled:
        return None
    radius = trk.bead_radius_nm if trk.bead_radius_nm is not None else config.sim.bead_radius_nm
    return BeadTracker(
        camera, path_provider, nm_per_px=config.pixel_size_nm, n_workers=trk.workers,
        roi_size_px=trk.roi_size_px, bead_radius_nm=radius,
    )


def make_video(
    camera: Camera, tracker: BeadTracker | None, path_provider: PathProvider, instance: str
) -> VideoRecorder:
    """The video recorder on ``camera`` (ROI crops only with a ``tracker``)."""
    bead_columns = None
    if tracker is not None:
        def bead_columns() -> tuple[np.ndarray, int]:
            service = tracker._service()
            ids = np.sort(service.rois["bead_id"].astype(np.int32))
            return ids, int(service.roi_size or tracker._roi_size)
    return VideoRecorder(camera, path_provider, instance=instance, bead_columns=bead_columns)


def make_microscope(
    config: InstrumentConfig | None = None,
    *,
    path_provider: PathProvider | None = None,
    data_dir: str | Path | None = None,
    instance: str | None = None,
    name: str = "",
) -> Microscope:
    """The microscope ``config`` describes (default: the simulated one), not yet connected.

    :param path_provider: where captured frames and tracks are written; default: UUID-named
        files in ``data_dir`` (which the Tiled server must be able to read).
    :param instance: the instrument instance's name (shared-memory names; a named instance
        is owned by one process at a time). Default: a random, private name.
    """
    config = config or InstrumentConfig.simulated()
    ownership = InstrumentLock(instance) if instance else None
    prefix = "sim" if config.simulated_camera else "scope"
    instance = instance or f"{prefix}{uuid.uuid4().hex[:8]}"
    if path_provider is None:
        if data_dir is None:
            raise ValueError("give a path_provider or a data_dir for captured frames")
        folder = Path(data_dir).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        path_provider = StaticPathProvider(UUIDFilenameProvider(), folder)
    simulation = SimulationLink(config.sim, instance) if config.simulated_camera else None
    camera = make_camera(config, instance, path_provider, simulation)
    tracker = make_tracker(config, camera, path_provider)
    return Microscope(
        camera=camera,
        tracker=tracker,
        video=make_video(camera, tracker, path_provider, instance),
        magnet_z=make_axis(config.magnet_z),  # type: ignore[arg-type]
        magnet_rotation=make_axis(config.magnet_rotation),  # type: ignore[arg-type]
        focus=make_axis(config.focus, focal_shift=config.focal_shift_factor),  # type: ignore[arg-type]
        simulation=simulation,
        ownership=ownership,
        axes_link=AxesLink(instance),
        config=config,
        name=name,
    )
