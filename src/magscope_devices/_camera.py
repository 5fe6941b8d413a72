"""The microscope camera as an ophyd-async ``StandardDetector``.

The camera free-runs in its own process (:mod:`magscope_devices._acquisition`),
filling the shared-memory frame ring for the live view and the trackers. When a
plan triggers or kicks it off, the next frames are also written to an HDF5 file
chosen by the path provider and announced with StreamResource/StreamDatum
documents (data key ``<name>``: frames, ``<name>-timestamp``: UNIX s).

Signals (all settable ones validated, with errors naming the value and the limit):
``exposure_s`` (s), ``frame_rate_hz`` (frames/s), ``gain`` (x), sensor ROI
``roi_x``/``roi_y``/``roi_width``/``roi_height`` (px), ``acquiring`` (free-run on/off),
read-only ``sensor_width``/``sensor_height`` (px), ``bit_depth``,
``frames_acquired`` and ``frames_late`` (counters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ophyd_async.core import (
    AsyncStatus,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    DeviceConnector,
    PathProvider,
    SignalR,
    StandardDetector,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    WatchableAsyncStatus,
    WatcherUpdate,
    soft_signal_r_and_setter,
    soft_signal_rw,
)

from magscope_ipc.shm import SharedRecord

from ._acquisition import (
    FRAMES_DATASET,
    TIMESTAMPS_DATASET,
    AcquisitionProcess,
    CameraProcessError,
)


@dataclass(frozen=True)
class CameraLimits:
    """Allowed camera settings."""

    exposure_min_s: float = 1e-5
    exposure_max_s: float = 1.0
    frame_rate_min_hz: float = 0.1
    frame_rate_max_hz: float = 2000.0
    gain_min: float = 0.1
    gain_max: float = 16.0
    roi_min_px: int = 16
    #: Why ``gain`` cannot be changed on this camera ("" when it can): a backend whose
    #: cameras name and scale their gain each their own way keeps gain at 1.
    gain_fixed_because: str = ""


class _AcquisitionConnector(DeviceConnector):
    """Connecting the camera starts its acquisition process."""

    def __init__(self, process: AcquisitionProcess) -> None:
        self.process = process

    async def connect_real(self, device, timeout: float, force_reconnect: bool):
        if force_reconnect or not self.process.running:
            if self.process.process is not None:
                await asyncio.to_thread(self.process.stop)
            await asyncio.to_thread(self.process.start)
        await super().connect_real(device, timeout, force_reconnect)


class CameraTriggerLogic(DetectorTriggerLogic):
    """Internal triggering: frames come at the free-running frame rate."""

    def __init__(self, camera: Camera) -> None:
        self.camera = camera

    def config_sigs(self) -> set[SignalR]:
        cam = self.camera
        return {cam.exposure_s, cam.frame_rate_hz, cam.gain}

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        if livetime:
            await self.camera.exposure_s.set(livetime)
        if deadtime:
            exposure = await self.camera.exposure_s.get_value()
            await self.camera.frame_rate_hz.set(1.0 / (exposure + deadtime))

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class CameraAcquireLogic(DetectorAcquireLogic):
    """Starting acquisition asks the process to capture the next frames into the file."""

    def __init__(self, camera: Camera) -> None:
        self.camera = camera
        self._restarts = 0

    async def start_acquiring(self) -> None:
        cam = self.camera
        cam.process.check_alive()
        self._restarts = cam.process.restarts
        ctl = cam._ctl
        if not ctl["acquire"]:
            raise CameraProcessError(
                f"{cam.name} is not acquiring: set {cam.name}.acquiring to True first"
            )
        ctl["capture_requested"] = ctl["capture_requested"] + 1  # one frame per trigger

    async def wait_for_idle(self) -> None:
        cam = self.camera
        ctl = cam._ctl
        while True:
            cam.process.check_alive()
            if cam.process.restarts != self._restarts:
                raise CameraProcessError(
                    f"{cam.name}: the {cam.process.last_failure} during the acquisition and "
                    f"was restarted; {ctl['capture_written']} frames were captured"
                )
            if ctl["capture_written"] >= ctl["capture_requested"]:
                return
            await asyncio.sleep(0.002)

    async def ensure_stopped(self) -> None:
        ctl = self.camera.process.control
        if ctl is not None:
            ctl["capture_requested"] = ctl["capture_written"]


class AnnouncedFramesProvider(StreamResourceDataProvider):
    """A :class:`StreamResourceDataProvider` that tells the writer of the file how many
    frames (collections) its StreamDatum documents announce, so the file never keeps
    more frames than the run describes (Tiled sizes the stream from the StreamDatums and
    refuses a file with more).

    bluesky collects the documents at ``read`` and emits them at ``save``; a pause
    between the two drops them (the resumed plan reads again, an abort never saves).
    So ``on_announce`` is told twice: at collection, the frames collected so far (what
    a crashed session's file is cut to; replay trims the rest), and at :meth:`settle`
    (before the next trigger, at a pause, at the close), the frames of documents the
    RunEngine really put in the run: dropped ones are taken back and announced again
    by the next collection.
    """

    def __init__(
        self, *args: Any, on_announce: Callable[[int], None],
        before_announce: Callable[[int], None] | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_announce = on_announce
        self._before_announce = before_announce
        self.collections_announced = 0
        #: StreamDatums of the last collection not yet settled, and last_emitted before it
        self._unsettled: tuple[list[dict[str, Any]], int, int] | None = None

    async def make_stream_docs(
        self, collections_written: int, collections_per_event: int
    ) -> AsyncIterator[Any]:
        self.settle()
        if self._before_announce is not None:  # e.g. put those rows on disk first
            self._before_announce(collections_written)
        before = self.last_emitted
        datums: list[dict[str, Any]] = []
        async for name, doc in super().make_stream_docs(collections_written, collections_per_event):
            if name == "stream_datum":
                datums.append(doc)  # type: ignore[arg-type]
            yield name, doc
        if datums:
            self._unsettled = (datums, before, collections_per_event)
        self._announce(self.last_emitted * collections_per_event)

    def settle(self) -> int:
        """Take back the last collection's StreamDatums if the RunEngine dropped them
        (bluesky fills in a StreamDatum's ``descriptor``, in place, when it puts the
        document in the run); return the frames announced."""
        unsettled, self._unsettled = self._unsettled, None
        if unsettled is not None:
            datums, before, collections_per_event = unsettled
            if not any(doc.get("descriptor") for doc in datums):
                self.last_emitted = before
                self._announce(before * collections_per_event)
        return self.collections_announced

    def _announce(self, collections: int) -> None:
        if collections != self.collections_announced:
            self.collections_announced = collections
            self._on_announce(collections)


class CameraDataLogic(DetectorDataLogic):
    """Frames and their timestamps go to one HDF5 file per prepare.

    The file holds exactly the frames announced in StreamDatum documents: a frame
    captured for a trigger that a pause, an abort or a crash interrupted is dropped
    (:meth:`Camera.drop_unannounced_frames` before the next trigger or prepare, and by
    the camera process when it closes the file, also when its owner died).
    """

    def __init__(self, camera: Camera, path_provider: PathProvider) -> None:
        self.camera = camera
        self.path_provider = path_provider
        self._open = False
        self.provider: AnnouncedFramesProvider | None = None

    def settle(self) -> None:
        """Announce only the frames of documents the RunEngine put in the run
        (:meth:`AnnouncedFramesProvider.settle`)."""
        if self.provider is not None:
            self.provider.settle()

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        cam = self.camera
        cam.process.check_alive()
        path_info = self.path_provider(datakey_name)
        path = path_info.directory_path / f"{path_info.filename}.h5"
        ctl = cam._ctl
        ctl["capture_path"] = str(path)
        generation = ctl.increment("capture_generation")
        await _wait_until(lambda: ctl["capture_ack"] == generation, cam, f"open {path}")
        self._open = True
        width, height = await asyncio.gather(cam.roi_width.get_value(), cam.roi_height.get_value())
        resources = [
            StreamResourceInfo(
                data_key=datakey_name,
                shape=(height, width),
                chunk_shape=(1, height, width),
                dtype_numpy=np.dtype(cam.process.dtype).str,
                parameters={"dataset": FRAMES_DATASET},
            ),
            StreamResourceInfo(
                data_key=f"{datakey_name}-timestamp",
                shape=(),
                chunk_shape=(1024,),
                dtype_numpy=np.dtype("<f8").str,
                parameters={"dataset": TIMESTAMPS_DATASET},
            ),
        ]

        def announce(frames: int) -> None:
            control = cam.process.control
            if control is not None:
                control["capture_announced"] = frames

        self.provider = AnnouncedFramesProvider(
            uri=f"{path_info.directory_uri}{path_info.filename}.h5",
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=cam.frames_captured,
            on_announce=announce,
        )
        return self.provider

    async def stop(self) -> None:
        if not self._open:
            return
        self.settle()  # an abort between a read and its save: that frame goes too
        self._open = False
        cam = self.camera
        ctl = cam.process.control
        if ctl is None or not cam.process.running:
            return
        generation = ctl.increment("capture_close_generation")
        await _wait_until(lambda: ctl["capture_close_ack"] == generation, cam, "close the file")

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return []


async def forward_updates(
    inner: WatchableAsyncStatus, check: Callable[[], None], poll_s: float = 0.05
) -> AsyncIterator[WatcherUpdate[Any]]:
    """Yield ``inner``'s watcher updates until it finishes; call ``check`` every ``poll_s``
    (s) and, if it raises, cancel ``inner`` and raise that instead of waiting on."""
    updates: asyncio.Queue[WatcherUpdate[Any]] = asyncio.Queue()

    def forward(**kwargs: Any) -> None:
        updates.put_nowait(WatcherUpdate(**kwargs))

    inner.watch(forward)  # type: ignore[arg-type]
    while not inner.done:
        try:
            check()
        except BaseException:
            inner.task.cancel()
            raise
        try:
            yield await asyncio.wait_for(updates.get(), timeout=poll_s)
        except TimeoutError:
            pass
    while not updates.empty():
        yield updates.get_nowait()
    await inner


async def _wait_until(predicate, camera: Camera, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        camera.process.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{camera.name}: camera process did not {what} within {timeout} s")
        await asyncio.sleep(0.002)


class Camera(StandardDetector):
    """A free-running camera whose frames also go to HDF5 when a plan acquires."""

    def __init__(
        self,
        process: AcquisitionProcess,
        path_provider: PathProvider,
        limits: CameraLimits = CameraLimits(),
        name: str = "",
    ) -> None:
        self.process = process
        self.limits = limits
        self.exposure_s = soft_signal_rw(
            float, getter=self._getter("exposure_s"), setter=self._set_exposure, units="s",
            precision=6,
        )
        self.frame_rate_hz = soft_signal_rw(
            float, getter=self._get_frame_rate, setter=self._set_frame_rate, units="Hz",
            precision=3,
        )
        self.gain = soft_signal_rw(float, getter=self._getter("gain"), setter=self._set_gain)
        self.acquiring = soft_signal_rw(
            bool, getter=lambda: bool(self._ctl["acquire"]), setter=self._set_acquiring
        )
        self.roi_x = self._roi_signal(0)
        self.roi_y = self._roi_signal(1)
        self.roi_width = self._roi_signal(2)
        self.roi_height = self._roi_signal(3)
        self.sensor_width, _ = soft_signal_r_and_setter(
            int, getter=self._getter("sensor_width"), units="px"
        )
        self.sensor_height, _ = soft_signal_r_and_setter(
            int, getter=self._getter("sensor_height"), units="px"
        )
        self.bit_depth, _ = soft_signal_r_and_setter(int, getter=self._getter("bit_depth"))
        self.frames_acquired, _ = soft_signal_r_and_setter(
            int, getter=self._getter("frames_acquired")
        )
        self.frames_late, _ = soft_signal_r_and_setter(int, getter=self._getter("frames_late"))
        self.frames_captured, _ = soft_signal_r_and_setter(
            int, getter=self._getter("capture_written"), poll_period=0.005
        )
        self._data_logic = CameraDataLogic(self, path_provider)
        self.add_detector_logics(
            CameraTriggerLogic(self), CameraAcquireLogic(self), self._data_logic
        )
        self.add_config_signals(self.roi_x, self.roi_y, self.roi_width, self.roi_height)
        super().__init__(name=name, connector=_AcquisitionConnector(process))

    # -- control-block plumbing -----------------------------------------------------
    @property
    def _ctl(self) -> SharedRecord:
        ctl = self.process.control
        if ctl is None:
            raise CameraProcessError(
                f"{self.name or 'camera'} is not connected: its acquisition process is not running"
            )
        return ctl

    def _getter(self, field: str):
        return lambda: self._ctl[field]

    def _get_frame_rate(self) -> float:
        return 1.0 / float(self._ctl["frame_period_s"])

    def _set_exposure(self, value: Any) -> None:
        lim = self.limits
        period = float(self._ctl["frame_period_s"])
        if not lim.exposure_min_s <= value <= lim.exposure_max_s:
            raise ValueError(
                f"{self.name}: exposure {value} s is outside [{lim.exposure_min_s}, "
                f"{lim.exposure_max_s}] s"
            )
        if value > period:
            raise ValueError(
                f"{self.name}: exposure {value} s is longer than the frame period {period:.6g} s "
                f"at {1 / period:.6g} frames/s; lower the exposure or the frame rate"
            )
        self._ctl["exposure_s"] = float(value)

    def _set_frame_rate(self, value: Any) -> None:
        lim = self.limits
        if not lim.frame_rate_min_hz <= value <= lim.frame_rate_max_hz:
            raise ValueError(
                f"{self.name}: frame rate {value} frames/s is outside "
                f"[{lim.frame_rate_min_hz}, {lim.frame_rate_max_hz}] frames/s"
            )
        exposure = float(self._ctl["exposure_s"])
        if exposure > 1.0 / value:
            raise ValueError(
                f"{self.name}: frame rate {value} frames/s leaves a frame period of "
                f"{1 / value:.6g} s, shorter than the exposure {exposure} s; "
                "lower the exposure first"
            )
        self._ctl["frame_period_s"] = 1.0 / float(value)

    def _set_gain(self, value: Any) -> None:
        lim = self.limits
        if lim.gain_fixed_because and value != 1.0:
            raise ValueError(f"{self.name}: gain {value} cannot be set: {lim.gain_fixed_because}")
        if not lim.gain_min <= value <= lim.gain_max:
            raise ValueError(f"{self.name}: gain {value} is outside [{lim.gain_min}, {lim.gain_max}]")
        self._ctl["gain"] = float(value)

    def _set_acquiring(self, value: Any) -> None:
        self.process.check_alive()
        self._ctl["acquire"] = int(bool(value))

    def _roi_signal(self, i: int):
        names = ("roi_x", "roi_y", "roi_width", "roi_height")

        def get() -> int:
            return int(self._ctl["roi"][i])

        def set_(value: Any) -> None:
            roi = [int(v) for v in self._ctl["roi"]]
            roi[i] = int(value)
            self._check_roi(roi, names[i], int(value))
            if self._capturing():
                raise ValueError(f"{self.name}: cannot change the sensor ROI while capturing to a file")
            self._ctl["roi"] = roi

        return soft_signal_rw(int, getter=get, setter=set_, units="px")

    def _capturing(self) -> bool:
        return self._ctl["capture_written"] < self._ctl["capture_requested"]

    def _check_roi(self, roi: list[int], field: str, value: int) -> None:
        x, y, w, h = roi
        sw, sh = int(self._ctl["sensor_width"]), int(self._ctl["sensor_height"])
        m = self.limits.roi_min_px
        if x < 0 or y < 0:
            raise ValueError(f"{self.name}: {field} = {value} px is negative; the sensor starts at 0")
        if w < m or h < m:
            raise ValueError(f"{self.name}: {field} = {value} px is below the minimum ROI of {m} px")
        if x + w > sw:
            raise ValueError(
                f"{self.name}: ROI x + width = {x} + {w} = {x + w} px is beyond the sensor width "
                f"{sw} px"
            )
        if y + h > sh:
            raise ValueError(
                f"{self.name}: ROI y + height = {y} + {h} = {y + h} px is beyond the sensor height "
                f"{sh} px"
            )

    # -- frames no event describes ------------------------------------------------------
    async def drop_unannounced_frames(self) -> None:
        """Drop frames of the open file that no StreamDatum announced, and cancel frame
        requests still open: what a trigger interrupted by a pause left (the resumed plan
        triggers again; without this, one event would cover two frames), and the frame
        of a read whose event a pause dropped before its save."""
        ctl = self.process.control
        if ctl is None or not self.process.running or ctl["capture_ack"] == 0:
            return
        self._data_logic.settle()
        announced = int(ctl["capture_announced"])
        if ctl["capture_written"] == announced and ctl["capture_requested"] == announced:
            return
        generation = ctl.increment("capture_rewind_generation")
        await _wait_until(
            lambda: ctl["capture_rewind_ack"] == generation, self, "drop unannounced frames"
        )

    async def pause(self) -> None:
        """The RunEngine paused: drop the frame of a trigger the pause interrupted now, so
        a run aborted or stopped from the pause never leaves a frame its events do not
        describe (a reader right after the stop document would see it)."""
        await self.drop_unannounced_frames()

    def resume(self) -> None:
        """Nothing to do: the resumed plan triggers again."""

    @AsyncStatus.wrap
    async def prepare(self, value: TriggerInfo) -> None:
        await self._drop_unannounced_and_recount()
        await StandardDetector.prepare(self, value)

    async def _drop_unannounced_and_recount(self) -> None:
        """:meth:`drop_unannounced_frames`, then the count of frames read afresh (a
        kickoff or trigger reads it from the signal's cache while anything subscribes to
        it: see BeadTracker._drop_unannounced_and_recount)."""
        await self.drop_unannounced_frames()
        await self.frames_captured.get_value(cached=False)

    # -- fail fast when the acquisition process dies -----------------------------------
    @WatchableAsyncStatus.wrap
    async def trigger(self) -> AsyncIterator[WatcherUpdate[int]]:
        await self._drop_unannounced_and_recount()
        async for update in self._guarded(StandardDetector.trigger(self)):
            yield update

    @WatchableAsyncStatus.wrap
    async def complete(self) -> AsyncIterator[WatcherUpdate[int]]:
        async for update in self._guarded(StandardDetector.complete(self)):
            yield update

    async def _guarded(self, inner: WatchableAsyncStatus) -> AsyncIterator[WatcherUpdate[Any]]:
        """Forward ``inner``'s progress; fail at once, clearly, if the process dies."""
        async for update in forward_updates(inner, self._check_process):
            yield update

    def _check_process(self) -> None:
        if not self.process.running:
            raise CameraProcessError(f"{self.name}: {self.process.failure_message()}")

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        if self.process.running:
            await StandardDetector.unstage(self)

    def latest_frame(self, timeout: float = 5.0) -> tuple[np.ndarray, float, int]:
        """Copy of the newest frame in the ring, its timestamp (UNIX s) and index.

        Just after the camera starts the ring may still be empty: wait up to ``timeout``
        seconds for the first frame, then fail naming the limit.
        """
        self.process.check_alive()
        ring = self.process.ring
        assert ring is not None
        deadline = time.monotonic() + timeout
        while ring.count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
            self.process.check_alive()
        index = ring.count - 1
        if index < 0:
            raise CameraProcessError(
                f"{self.name}: no frame acquired within {timeout} s of asking"
            )
        frame, timestamp = ring.read_frame(index)
        return frame, timestamp, index
