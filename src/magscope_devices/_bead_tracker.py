"""The bead tracker as an ophyd-async detector.

It wraps :class:`magscope_tracking.service.TrackingService`: worker processes track every
camera frame into the shared-memory track ring, whether or not a plan runs. As a
detector:

- ``trigger()`` waits for the next ``window_frames`` tracked frames; ``read()`` gives, per
  bead, the mean and standard deviation of x, y, z (nm) over those frames, with the bead
  ids, as arrays: the signals ``bead_id``, ``x_nm_mean``, ``x_nm_std``, ... (getters on
  the last window; event keys ``<name>-bead_id``, ``<name>-x_nm_mean``, ...);
- every tracked frame of the window (or of a fly scan, ``kickoff``/``complete``) is
  written to an HDF5 track table (:mod:`magscope_tracking.track_file`) by the tracking
  service's collector as it merges the rows (:class:`magscope_tracking.TrackRecorder`);
  the tracker announces what it wrote with
  StreamResource/StreamDatum documents (``<name>-x_nm`` etc., one row per frame, one
  column per bead), so an hour at 1 kHz is a file, not millions of Events.

Signals: ``rois`` (table of bead id, ROI top-left x0, y0 in px), ``roi_size_px``,
``zlut_path`` (load a Z-LUT file; empty: none), ``window_frames``, ``bead_radius_nm`` (the
beads' radius, used by force calibration), ``reference_beads`` (ids of beads stuck to the
surface), ``height_offsets`` (per-bead nm added to z so that z is the height above the
reference beads; set by an anchored Z-LUT sweep), and the service's health
counters (``frames_tracked``, ``frames_dropped``, ``queue_depth``, ``latency_p50_s``,
``latency_p99_s``, ``worker_restarts``).

Configuration (in every stream the tracker is read or collected in): the bead layout of
:mod:`magscope_devices._bead_layout` (``bead_ids``: the columns of the per-bead arrays;
``roi_x0_px``, ``roi_y0_px``; ``roi_size_px``; ``nm_per_px``; ``zlut_uid``: the run of
the loaded Z-LUT), with ``window_frames``, ``zlut_path``, ``bead_radius_nm`` and
``reference_beads``: a run alone is enough to re-analyse its tracks.

The logics: :class:`TrackerTriggerLogic` holds the frames per acquisition,
:class:`TrackerAcquireLogic` asks the capture for them and waits, and
:class:`TrackerDataLogic` opens the track file and holds its columns.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from bluesky.protocols import Reading
from event_model import DataKey
from ophyd_async.core import (
    Array1D,
    AsyncStatus,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    DeviceConnector,
    PathProvider,
    Reference,
    SignalR,
    StandardDetector,
    StreamableDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    WatchableAsyncStatus,
    WatcherUpdate,
    merge_gathered_dicts,
    soft_signal_r_and_setter,
    soft_signal_rw,
)

from magscope_ipc.track_ring import TrackRing
from magscope_tracking import ROI_DTYPE, ZLUT, TrackingService, TrackRecorder
from magscope_tracking.track_file import DATASETS

from ._bead_rois import (
    BeadHeights,
    BeadRois,
    offsets_for,
    rois_from_centres,
    with_bead_added,
    with_bead_moved,
    without_beads,
)
from ._camera import AnnouncedFramesProvider, Camera, forward_updates

__all__ = [
    "BeadHeights",
    "BeadRois",
    "BeadTracker",
    "rois_from_centres",
    "with_bead_added",
    "with_bead_moved",
    "without_beads",
]

_STAT_FIELDS = ("x_nm", "y_nm", "z_nm")




class _TrackerConnector(DeviceConnector):
    """Connecting starts the tracking service on the camera's frame ring."""

    async def connect_real(self, device, timeout: float, force_reconnect: bool):
        tracker: BeadTracker = device
        camera = tracker.camera
        deadline = time.monotonic() + max(timeout, 30.0)
        while camera.process.ring is None or not camera.process.running:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{tracker.name}: the camera's acquisition process is not running; "
                    "connect the camera first"
                )
            await asyncio.sleep(0.02)
        if tracker.service is None or force_reconnect or not tracker.service.running:
            if tracker.service is not None:
                await asyncio.to_thread(tracker.service.stop)
            tracker.service = TrackingService(
                camera.process.ring.name,
                tracker._nm_per_px,
                max_beads=tracker.max_beads,
                n_workers=tracker.n_workers,
                instance=camera.process.config.instance,
            )
            await asyncio.to_thread(tracker.service.start)
        await super().connect_real(device, timeout, force_reconnect)


class _Capture:
    """The tracker's open recording. The tracking service's collector writes the rows of
    the requested frames to the track file as it merges them
    (:class:`~magscope_tracking.TrackRecorder`); this asks for frames and says which
    rows the StreamDatum documents announced."""

    def __init__(self, tracker: BeadTracker) -> None:
        self.tracker = tracker
        self.recorder: TrackRecorder | None = None
        #: the open file's document maker (its StreamDatums say which rows are announced)
        self.provider: AnnouncedFramesProvider | None = None
        self._last_window: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3, 0))
        )

    def open(self, path, bead_ids: np.ndarray, z_offsets: np.ndarray | None) -> None:
        self.close()
        self.recorder = self.tracker._service().start_recording(
            path, bead_ids, z_offsets=z_offsets
        )

    @property
    def rows_written(self) -> int:
        """Rows in the open track file (0 without one)."""
        return self.recorder.rows_written if self.recorder is not None else 0

    def request(self, frames: int) -> None:
        """Capture the next ``frames`` frames the camera makes from now on. A request
        still open (a record interrupted by a pause) is abandoned: the new one starts now."""
        if self.recorder is None:
            raise RuntimeError(f"{self.tracker.name}: no track file is open (prepare first)")
        self.recorder.capture(frames)

    @property
    def busy(self) -> bool:
        """True while requested frames are not yet in the file (raises if recording failed)."""
        return self.recorder is not None and self.recorder.busy

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.stop_capture()

    def announce(self, rows: int) -> None:
        if self.recorder is not None:
            self.recorder.announce(rows)

    def flush_before_announcing(self, rows: int) -> None:
        """Rows up to ``rows`` may be announced in StreamDatum documents next: put them on
        disk first, so a crash after the document never leaves it pointing at rows the
        file lacks."""
        if self.recorder is not None:
            self.recorder.flush_through(rows)

    def drop_unannounced(self) -> None:
        """End the open request and cut the file back to the announced rows: a record or
        trigger window a pause interrupted must leave no row that the next one's
        StreamDatums would claim (the file would hold more rows than the events, and
        the events the wrong rows). Rows of a read whose event a pause dropped before
        its save go too."""
        self._settle()
        if self.recorder is not None:
            self.recorder.drop_unannounced()

    def _settle(self) -> None:
        if self.provider is not None and self.recorder is not None:
            self.provider.settle()

    def window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame_index, timestamp, xyz (frames, 3, beads)) of the last request."""
        if self.recorder is None:  # the last recording's, kept when it closed
            return self._last_window
        return self.recorder.window()

    def close(self) -> None:
        """Close the track file, keeping only announced rows. Idempotent."""
        self._settle()
        self.provider = None
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        self._last_window = recorder.window()
        service = self.tracker.service
        if service is not None and service.recorder is recorder:
            service.stop_recording()
        else:
            recorder.close()


class _RecordWatch:
    """Checks, while a fly scan's ``complete`` waits for rows, that rows still come."""

    #: s a request may have ended short (no frame asked for, rows missing) before failing
    ended_short_s = 5.0

    def __init__(self, tracker: BeadTracker, stall_s: float) -> None:
        self.tracker = tracker
        self.stall_s = stall_s
        self.rows = tracker._capture.rows_written
        self.since = time.monotonic()

    def check(self) -> None:
        tracker = self.tracker
        tracker._check_service()
        capture = tracker._capture
        rows, now = capture.rows_written, time.monotonic()
        if rows != self.rows:
            self.rows, self.since = rows, now
            return
        quiet = now - self.since
        if capture.busy:
            if quiet > self.stall_s:
                raise TimeoutError(
                    f"{tracker.name}: no frame recorded for {self.stall_s:g} s ({rows} rows "
                    "in the track file): the camera or the tracking service stalled"
                )
        elif quiet > self.ended_short_s:
            raise RuntimeError(
                f"{tracker.name}: the record asks for no more frames, but the fly scan is "
                f"still waiting ({rows} rows in the track file); the request was ended "
                "early (a pause or a stop between prepare and complete?)"
            )


class TrackerTriggerLogic(DetectorTriggerLogic):
    """Frames come from the free-running camera; nothing to arm. Holds how many frames
    each acquisition (a trigger window, or a whole fly scan) captures."""

    def __init__(self) -> None:
        self.frames = 1

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        if livetime or deadtime:
            raise ValueError(
                "the bead tracker follows the camera: set livetime/deadtime on the camera"
            )
        if num < 1:
            raise ValueError(
                f"the bead tracker records a finite number of frames, not {num}: give "
                "number_of_events >= 1"
            )
        self.frames = int(num)

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class TrackerAcquireLogic(DetectorAcquireLogic):
    """Asks the capture for the frames the trigger logic was prepared for, and waits
    until they are captured. ``check`` raises when the service or camera died."""

    def __init__(
        self, capture: _Capture, trigger: TrackerTriggerLogic, check: Callable[[], None]
    ) -> None:
        self.capture = capture
        self.trigger = trigger
        self.check = check

    async def start_acquiring(self) -> None:
        self.check()
        self.capture.request(self.trigger.frames)

    #: s without a new row before a wait for frames fails (a stalled camera or collector)
    stall_s = 30.0

    async def wait_for_idle(self) -> None:
        rows, since = self.capture.rows_written, time.monotonic()
        while self.capture.busy:  # the service's collector writes the rows
            self.check()
            now = time.monotonic()
            if self.capture.rows_written != rows:
                rows, since = self.capture.rows_written, now
            elif now - since > self.stall_s:
                raise TimeoutError(
                    f"{self.capture.tracker.name}: no frame recorded for {self.stall_s:g} s "
                    f"({rows} rows in the track file, {self.trigger.frames} frames asked "
                    "for): the camera or the tracking service stalled"
                )
            await asyncio.sleep(0.003)

    async def ensure_stopped(self) -> None:
        self.capture.stop()


class TrackerDataLogic(DetectorDataLogic):
    """One HDF5 track table per prepare, columns = the beads of the ROI table then."""

    def __init__(
        self, tracker: BeadTracker, path_provider: PathProvider, capture: _Capture
    ) -> None:
        self.tracker = tracker
        self.path_provider = path_provider
        self.capture = capture
        #: the ROI table rows of the open file's columns (sorted by bead id), or None
        self.columns: np.ndarray | None = None
        #: the bead ids of the last file's columns (kept after it closed)
        self.bead_ids = np.empty(0, np.int32)

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        tracker = self.tracker
        tracker._check_service()
        rois = tracker._service().rois
        if rois.size == 0:
            raise ValueError(
                f"{tracker.name}: no beads selected: set {tracker.name}.rois or call "
                f"{tracker.name}.find_beads() first"
            )
        ids = np.sort(rois["bead_id"].astype(np.int32))
        info = self.path_provider(datakey_name)
        path = info.directory_path / f"{info.filename}.h5"
        order = np.argsort(rois["bead_id"], kind="stable")
        self.columns = rois[order].copy()  # the file's columns, with their ROIs now
        offsets = offsets_for(await tracker.height_offsets.get_value(), ids)
        self.capture.open(path, ids, offsets)
        self.bead_ids = ids
        b = int(ids.size)
        resources = [
            StreamResourceInfo(
                data_key=f"{datakey_name}-{field}",
                shape=(b,),
                chunk_shape=(256, b),
                dtype_numpy=np.dtype("<f4" if field == "score" else "<f8").str,
                parameters={"dataset": DATASETS[field]},
            )
            for field in ("x_nm", "y_nm", "z_nm", "score")
        ] + [
            StreamResourceInfo(
                data_key=f"{datakey_name}-{field}",
                shape=(),
                chunk_shape=(4096,),
                dtype_numpy=np.dtype("<i8" if field == "frame_index" else "<f8").str,
                parameters={"dataset": DATASETS[field]},
            )
            for field in ("frame_index", "timestamp")
        ] + [
            StreamResourceInfo(
                data_key=f"{datakey_name}-frame_status",
                shape=(),
                chunk_shape=(4096,),
                dtype_numpy=np.dtype("<i4").str,
                parameters={"dataset": DATASETS["status"]},
            )
        ]
        self.capture.provider = AnnouncedFramesProvider(
            uri=f"{info.directory_uri}{info.filename}.h5",
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=tracker.frames_written,
            on_announce=self.capture.announce,
            before_announce=self.capture.flush_before_announcing,
        )
        return self.capture.provider

    async def stop(self) -> None:
        self.capture.close()
        self.columns = None


class BeadTracker(StandardDetector):
    """Tracks the beads of the ROI table in every camera frame (see the module docstring)."""

    def __init__(
        self,
        camera: Camera,
        path_provider: PathProvider,
        *,
        nm_per_px: float,
        max_beads: int = 128,
        n_workers: int | None = None,
        roi_size_px: int = 64,
        window_frames: int = 10,
        bead_radius_nm: float = 1400.0,
        name: str = "",
    ) -> None:
        self._camera_ref = Reference(camera)
        self._nm_per_px = float(nm_per_px)
        self.max_beads = int(max_beads)
        self.n_workers = n_workers
        self.service: TrackingService | None = None
        self._capture = _Capture(self)
        self._prepared = False  # prepared since the last stage (else trigger prepares)
        self._roi_size = int(roi_size_px)
        self._path_provider = path_provider
        self._zlut_uid = ""
        self._data_logic = TrackerDataLogic(self, path_provider, self._capture)
        trigger_logic = TrackerTriggerLogic()
        acquire_logic = TrackerAcquireLogic(self._capture, trigger_logic, self._check_service)

        self.rois = soft_signal_rw(BeadRois, getter=self._get_rois, setter=self._set_rois)
        self.roi_size_px = soft_signal_rw(
            int, getter=lambda: self._roi_size, setter=self._set_roi_size, units="px"
        )
        self.zlut_path = soft_signal_rw(str, getter=self._get_zlut, setter=self._set_zlut)
        # the layout of the per-bead arrays (magscope_devices._bead_layout): the columns of
        # the open track file, else the ROI table now, in increasing bead id
        self.bead_ids, _ = soft_signal_r_and_setter(
            Array1D[np.int64], getter=lambda: self._columns()["bead_id"].astype(np.int64)
        )
        self.roi_x0_px, _ = soft_signal_r_and_setter(
            Array1D[np.int64], getter=lambda: self._columns()["x0"].astype(np.int64), units="px"
        )
        self.roi_y0_px, _ = soft_signal_r_and_setter(
            Array1D[np.int64], getter=lambda: self._columns()["y0"].astype(np.int64), units="px"
        )
        self.nm_per_px, _ = soft_signal_r_and_setter(float, self._nm_per_px, units="nm/px")
        self.zlut_uid, _ = soft_signal_r_and_setter(str, getter=lambda: self._zlut_uid)
        self.bead_radius_nm = soft_signal_rw(float, bead_radius_nm, units="nm")
        # kept in a plain attribute too: the focus lock's thread reads reference_ids()
        self._reference_ids = np.zeros(0, np.int32)
        self.reference_beads = soft_signal_rw(
            Array1D[np.int32], np.zeros(0, np.int32), setter=self._set_reference_beads
        )
        self.height_offsets = soft_signal_rw(BeadHeights, BeadHeights.empty())
        self.window_frames = soft_signal_rw(
            int, window_frames, setter=self._set_window, units="frames"
        )
        self.frames_written, _ = soft_signal_r_and_setter(
            int, getter=lambda: self._capture.rows_written, poll_period=0.005
        )
        # per-bead statistics of the last trigger window, read with each event: bead ids
        # (the columns) and the mean and standard deviation of x, y, z (nm)
        self._stats_cache: tuple[tuple[int, int, int], dict[str, np.ndarray]] = ((0, -1, -1), {})
        self.bead_id, _ = soft_signal_r_and_setter(
            Array1D[np.int64], getter=self._stat_getter("bead_id")
        )
        stats: list[SignalR] = [self.bead_id]
        for field in _STAT_FIELDS:
            for stat in ("mean", "std"):
                signal, _ = soft_signal_r_and_setter(
                    Array1D[np.float64], getter=self._stat_getter(f"{field}_{stat}"), units="nm"
                )
                setattr(self, f"{field}_{stat}", signal)
                stats.append(signal)
        self._stat_signals = tuple(stats)
        health = self._health_getter
        self.frames_tracked, _ = soft_signal_r_and_setter(int, getter=health("frames_tracked"))
        self.frames_dropped, _ = soft_signal_r_and_setter(int, getter=health("frames_dropped"))
        self.queue_depth, _ = soft_signal_r_and_setter(int, getter=health("queue_depth"))
        self.latency_p50_s, _ = soft_signal_r_and_setter(
            float, getter=health("latency_p50_s"), units="s"
        )
        self.latency_p99_s, _ = soft_signal_r_and_setter(
            float, getter=health("latency_p99_s"), units="s"
        )
        self.worker_restarts, _ = soft_signal_r_and_setter(int, getter=health("worker_restarts"))
        self.add_detector_logics(
            trigger_logic, acquire_logic, self._data_logic
        )
        self.add_config_signals(
            self.bead_ids, self.roi_x0_px, self.roi_y0_px, self.roi_size_px, self.nm_per_px,
            self.zlut_uid, self.window_frames, self.zlut_path, self.bead_radius_nm,
            self.reference_beads,
        )
        super().__init__(name=name, connector=_TrackerConnector())

    @property
    def camera(self) -> Camera:
        return self._camera_ref()

    # -- service plumbing -------------------------------------------------------------------
    def _service(self) -> TrackingService:
        if self.service is None or not self.service.running:
            raise RuntimeError(f"{self.name}: the tracking service is not running (connect first)")
        return self.service

    def _check_service(self) -> None:
        self._service()
        self.camera.process.check_alive()

    @property
    def _ring(self) -> TrackRing:
        return self._service().track_ring

    def _health_getter(self, field: str):
        def get():
            if self.service is None:
                return 0
            return getattr(self.service.health(), field)

        return get

    def _set_reference_beads(self, value: Any) -> None:
        ids = np.asarray(value if value is not None else [], dtype=np.int32).reshape(-1)
        self._reference_ids = ids.copy()

    def reference_ids(self) -> np.ndarray:
        """The reference bead ids now (a copy; any thread)."""
        return self._reference_ids.copy()

    def _get_rois(self) -> BeadRois:
        if self.service is None:
            return BeadRois.empty()
        rois = self.service.rois
        return BeadRois(bead_id=rois["bead_id"], x0_px=rois["x0"], y0_px=rois["y0"])

    def _set_rois(self, value: Any) -> None:
        table = value if isinstance(value, BeadRois) else BeadRois(**dict(value))
        rows = np.zeros(len(table.bead_id), ROI_DTYPE)
        rows["bead_id"], rows["x0"], rows["y0"] = table.bead_id, table.x0_px, table.y0_px
        self._service().set_rois(rows, self._roi_size)

    def _set_roi_size(self, value: Any) -> None:
        service = self._service()
        service.set_rois(service.rois, int(value))
        self._roi_size = int(value)

    def _get_zlut(self) -> str:
        path = self.service.zlut_path if self.service is not None else None
        return "" if path is None else str(path)

    def _set_zlut(self, value: Any) -> None:
        if value:
            self._service().load_zlut(str(value))
            self._zlut_uid = ZLUT.load(str(value)).source or ""
        else:
            self._service().clear_zlut()
            self._zlut_uid = ""

    def _columns(self) -> np.ndarray:
        """ROI table rows of the per-bead arrays' columns, in increasing bead id."""
        columns = self._data_logic.columns
        if columns is not None:
            return columns
        if self.service is None:
            return np.zeros(0, dtype=[("bead_id", "<i4"), ("x0", "<i4"), ("y0", "<i4")])
        rois = self.service.rois
        return rois[np.argsort(rois["bead_id"], kind="stable")]

    def _set_window(self, value: Any) -> None:
        if not 1 <= int(value) <= 100_000:
            raise ValueError(f"{self.name}: window_frames {value} is outside [1, 100000] frames")

    # -- bead selection -----------------------------------------------------------------------
    async def find_beads(self, max_beads: int | None = None) -> BeadRois:
        """Select the beads in the newest camera frame: replaces the ROI table (new ids,
        after the largest id used so far) and returns it.

        In a plan: ``yield from bps.wait_for([tracker.find_beads])``; in IPython:
        ``await tracker.find_beads()``.
        """
        from magscope_tracking import find_beads

        frame, _, _ = self.camera.latest_frame()
        found = find_beads(frame, roi_size=self._roi_size, max_beads=max_beads or self.max_beads)
        xy = found.xy
        start = int(self._service().rois["bead_id"].max(initial=-1)) + 1
        table = rois_from_centres(
            range(start, start + len(xy)), xy[:, 0], xy[:, 1], self._roi_size
        )
        await self.rois.set(table)
        return table

    async def grab_rois(
        self, n_frames: int, *, skip_frames: int = 1, timeout: float = 10.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next ``n_frames`` camera frames cropped to the current ROI table.

        Frames start ``skip_frames`` after the one being exposed now (so a move that just
        finished is not blurred into the first frame). Returns ``(images, bead_ids,
        frame_indices)`` with ``images`` (n_beads, n_frames, roi, roi) in the camera's
        dtype. Used by the Z-LUT sweep; in a plan: ``bps.wait_for([partial(tracker.grab_rois,
        n)])``.
        """
        if n_frames < 1:
            raise ValueError(f"n_frames must be at least 1, got {n_frames}")
        rois = self._service().rois
        if rois.size == 0:
            raise ValueError(f"{self.name}: no beads selected (set {self.name}.rois first)")
        ring = self.camera.process.ring
        assert ring is not None
        s = self._roi_size
        out = np.empty((rois.size, n_frames, s, s), dtype=ring.dtype)
        indices = np.empty(n_frames, np.int64)
        start = ring.count + max(0, int(skip_frames))
        deadline = time.monotonic() + timeout + n_frames * 0.1
        for j in range(n_frames):
            index = start + j
            while ring.count <= index:
                self.camera.process.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no camera frame {index} within {timeout} s")
                await asyncio.sleep(0.002)
            frame = ring.frame_view(index)
            for b, (x0, y0) in enumerate(zip(rois["x0"], rois["y0"], strict=True)):
                out[b, j] = frame[y0 : y0 + s, x0 : x0 + s]
            if not ring.is_valid(index):
                raise RuntimeError(f"{self.name}: frame {index} was overwritten while it was read")
            indices[j] = index
        return out, rois["bead_id"].astype(np.int64), indices

    async def next_tracks(self, n_frames: int, *, timeout: float = 10.0) -> dict[str, np.ndarray]:
        """The tracks of the next ``n_frames`` camera frames, straight from the track ring
        (nothing is written to a file or a run): the same keys as :meth:`window_tracks`,
        z including the height offsets. For quick looks and plan stubs that decide what to
        do next; in a plan: ``bps.wait_for([partial(tracker.next_tracks, n)])``."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be at least 1, got {n_frames}")
        ring = self._ring
        ids = np.sort(self._service().rois["bead_id"].astype(np.int32))
        offsets = offsets_for(await self.height_offsets.get_value(), ids)
        start = next_index = ring.count + 1
        parts: list[dict[str, np.ndarray]] = []
        index: list[np.ndarray] = []
        stamps: list[np.ndarray] = []
        deadline = time.monotonic() + timeout + n_frames * 0.05
        while next_index < start + n_frames:
            self._check_service()
            batch = ring.rows_since(next_index, max_frames=start + n_frames - next_index)
            if batch.lost:
                raise RuntimeError(f"{self.name}: {batch.lost} frames of tracks were overwritten")
            if len(batch):
                parts.append(batch.columns(ids))
                index.append(np.asarray(batch.frame_index, np.int64))
                stamps.append(np.asarray(batch.timestamp, float))
                next_index = batch.next_index
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {n_frames} frames were not tracked within {timeout} s")
            await asyncio.sleep(0.005)
        out = {
            "bead_id": ids.astype(np.int64),
            "frame_index": np.concatenate(index),
            "timestamp": np.concatenate(stamps),
        }
        for f in _STAT_FIELDS:
            out[f] = np.concatenate([p[f] for p in parts])
        if offsets is not None:
            out["z_nm"] = out["z_nm"] + offsets
        return out

    @property
    def data_dir(self):
        """Folder where this tracker's files (track tables, Z-LUTs) go."""
        return self._path_provider(None).directory_path

    # -- acquisition ----------------------------------------------------------------------------
    @AsyncStatus.wrap
    async def stage(self) -> None:
        self._prepared = False
        await StandardDetector.stage(self)

    @AsyncStatus.wrap
    async def prepare(self, value: TriggerInfo) -> None:
        # a record interrupted by a pause is abandoned here, and its rows dropped, so no
        # frame of it is written between this prepare and the next kickoff (which counts
        # the frames written) and none is claimed by the next record's StreamDatums
        await self._drop_unannounced_and_recount()
        await StandardDetector.prepare(self, value)
        self._prepared = True

    async def _drop_unannounced_and_recount(self) -> None:
        """Drop the rows no StreamDatum announced, and read the count of rows afresh: a
        kickoff or trigger reads the count it starts from from the signal's cache while
        anything subscribes to it (its 5 ms poll), so a resumed record could start from
        the rows just dropped and wait for rows that never come ("the request was ended
        early", seen under load)."""
        self._capture.drop_unannounced()
        await self.frames_written.get_value(cached=False)

    def pause(self) -> None:
        """The RunEngine paused: drop the rows of a window the pause interrupted now, so
        a run aborted or stopped from the pause never leaves a row its events do not
        describe (a reader right after the stop document would see it)."""
        self._capture.drop_unannounced()

    def resume(self) -> None:
        """Nothing to do: the resumed plan triggers a new window."""

    @WatchableAsyncStatus.wrap
    async def trigger(self) -> AsyncIterator[WatcherUpdate[int]]:
        # unprepared, a window is ``window_frames`` frames (StandardDetector would take 1)
        if not self._prepared:
            window = await self.window_frames.get_value()
            await self.prepare(TriggerInfo(collections_per_event=window))
        else:  # a window a pause interrupted: its rows go, the new window starts now
            await self._drop_unannounced_and_recount()
        async for update in forward_updates(StandardDetector.trigger(self), self._check_service):
            yield update

    @WatchableAsyncStatus.wrap
    async def complete(self) -> AsyncIterator[WatcherUpdate[int]]:
        # a fly scan waits for rows of the track file: fail, do not wait forever, when the
        # service dies, when no row comes for stall_s, or when the request ended short
        watch = _RecordWatch(self, getattr(self._acquire_logic, "stall_s", 30.0))
        async for update in forward_updates(StandardDetector.complete(self), watch.check):
            yield update

    def _window_stats(self) -> dict[str, np.ndarray]:
        """Per bead (columns of the window), mean and std (nm) of x, y, z over the frames
        of the last window; computed once per window."""
        index, _, stack = self._capture.window()  # stack: (frames, 3, beads)
        key = (len(index), int(index[0]) if len(index) else -1, int(index[-1]) if len(index) else -1)
        if self._stats_cache[0] != key:
            ids = self._data_logic.bead_ids
            if not len(stack):
                stack = np.full((1, 3, ids.size), np.nan)
            with warnings.catch_warnings():  # an all-NaN column (lost bead) is a NaN mean
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(stack, axis=0)
                std = np.nanstd(stack, axis=0)
            stats = {"bead_id": ids.astype(np.int64)}
            for i, field in enumerate(_STAT_FIELDS):
                stats[f"{field}_mean"] = mean[i]
                stats[f"{field}_std"] = std[i]
            self._stats_cache = (key, stats)
        return self._stats_cache[1]

    def _stat_getter(self, key: str) -> Callable[[], np.ndarray]:
        return lambda: self._window_stats()[key]

    def recording_first_frame(self) -> int:
        """Camera frame index the open record started at (-1 without a recording): the
        frame a video record beside it starts at."""
        recorder = self._capture.recorder
        return recorder.first_frame if recorder is not None else -1

    def recording_backlog_fraction(self) -> float:
        """Fraction of the track ring holding rows the open recording has not yet written
        to its file (0 when nothing records; at 1 rows are lost). NaN without a service."""
        service = self.service
        if service is None or not service.running:
            return float("nan")
        recorder = self._capture.recorder
        if recorder is None:
            return 0.0
        return min(1.0, recorder.backlog / service.track_capacity)

    def window_tracks(self) -> dict[str, np.ndarray]:
        """Every frame of the last trigger window (or fly scan) at full rate: ``bead_id``
        (beads,), ``frame_index`` (frames,), ``timestamp`` (frames,) UNIX s, and ``x_nm``,
        ``y_nm``, ``z_nm`` (frames, beads), NaN where a bead was lost or a frame dropped.
        z includes the height offsets. The same numbers as the run's track file."""
        index, stamps, stack = self._capture.window()
        return {
            "bead_id": self._data_logic.bead_ids.astype(np.int64),
            "frame_index": index,
            "timestamp": stamps,
            **{f: stack[:, i, :] for i, f in enumerate(_STAT_FIELDS)},
        }

    # StandardDetector reads only its data providers, and makes readable ones only for a
    # single collection per event: the per-window statistics signals join them here
    async def describe(self) -> dict[str, DataKey]:
        return await merge_gathered_dicts(
            [StandardDetector.describe(self), *(sig.describe() for sig in self._stat_signals)]
        )

    async def read(self) -> dict[str, Reading]:
        return await merge_gathered_dicts(
            [StandardDetector.read(self), *(sig.read(cached=False) for sig in self._stat_signals)]
        )

    def close(self) -> None:
        """Stop the tracking service (workers, shared memory). Idempotent."""
        self._capture.close()
        if self.service is not None:
            self.service.stop()
