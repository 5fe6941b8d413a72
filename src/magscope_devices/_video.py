"""Video beside the tracks: the ``VideoRecorder`` detector and its acquisition modes.

``microscope.video`` records camera images into the run, as HDF5 assets
(StreamResource/StreamDatum) aligned with the track rows by camera frame index. What it
records is the signal ``mode`` (:class:`VideoMode`), which the viewer and the queue can set
like any signal and plans take as an option:

- ``"tracks"``: no images (the default; the tracks alone);
- ``"roi_crops"``: the ROI crop of every tracked bead at every frame of a record;
- ``"frames_every_n"``: the whole frame every ``every_n``-th frame of a record;
- ``"trigger_window"``: whole frames around a trigger: the writer keeps the newest
  ``pre_trigger_s`` seconds of frames in memory, and the plan stub
  :func:`~magscope_plans.save_frames` writes ``seconds_before`` .. ``seconds_after``.

The images are compressed (``codec``, one of :data:`~magscope_devices._video_file.CODECS`)
and written by a process of their own (:mod:`._video_process`), never in the RunEngine's,
the camera's or the trackers'. Readbacks: ``rows_written``, ``frames_dropped`` (frames the
ring lost before the writer read them), ``raw_mb`` and ``stored_mb`` (MB of images before
and after compression), ``compression_ratio`` and ``write_mb_per_s`` (raw MB per second
of the writer's busy time).

A write that fails (a full disk, an I/O error) fails the acquisition with the writer's
message: the file and the free space named. The rows written so far stay in the file.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from ophyd_async.core import (
    Array1D,
    AsyncStatus,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    Reference,
    StandardDetector,
    StreamableDataProvider,
    StreamResourceInfo,
    StrictEnum,
    TriggerInfo,
    WatchableAsyncStatus,
    WatcherUpdate,
    soft_signal_r_and_setter,
    soft_signal_rw,
)

from ._camera import AnnouncedFramesProvider, Camera, forward_updates
from ._video_file import (
    CODECS,
    CROP_ORIGIN_DATASET,
    DEFAULT_CODEC,
    FRAME_INDEX_DATASET,
    IMAGES_DATASET,
    TIMESTAMPS_DATASET,
)
from ._video_process import MAX_CROP_BEADS, VideoKind, VideoProcessError, VideoWriterProcess

__all__ = ["VideoMode", "VideoRecorder", "VideoRecordingError"]

#: most memory the frames kept before a trigger may take (bytes)
MAX_PRE_TRIGGER_BYTES = 4 * 2**30
#: longest window kept before a trigger (s)
MAX_PRE_TRIGGER_S = 30.0
#: largest ``every_n``
MAX_EVERY_N = 100_000


class VideoMode(StrictEnum):
    """What a record writes beside the tracks."""

    TRACKS = "tracks"
    ROI_CROPS = "roi_crops"
    FRAMES_EVERY_N = "frames_every_n"
    TRIGGER_WINDOW = "trigger_window"


class VideoRecordingError(RuntimeError):
    """The video could not be written (the message names the file and the free space)."""


class _RowsTrigger(DetectorTriggerLogic):
    """Rows (images) each acquisition writes: one per trigger, or a whole record."""

    def __init__(self) -> None:
        self.rows = 1

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        if livetime or deadtime:
            raise ValueError("the video follows the camera: set livetime/deadtime on the camera")
        if num < 1:
            raise ValueError(f"a video record writes a finite number of images, not {num}")
        self.rows = int(num)

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _WriterAcquire(DetectorAcquireLogic):
    """Asks the writer for the rows the trigger logic was prepared for, from
    ``first_frame`` (or the next camera frame) on, and waits until they are written."""

    #: s without a new row before a wait fails
    stall_s = 30.0

    def __init__(self, video: VideoRecorder, trigger: _RowsTrigger) -> None:
        self.video = video
        self.trigger = trigger

    async def start_acquiring(self) -> None:
        video = self.video
        ctl = video._ctl
        video._raise_write_error()
        first = await video.first_frame.get_value()
        await video.first_frame.set(-1)  # for this request only
        ring = video.camera.process.ring
        newest = ring.count if ring is not None else 0
        ctl["next_frame"] = newest if first < 0 else int(first)
        ctl["request_rows"] = int(ctl["rows_written"]) + self.trigger.rows

    async def wait_for_idle(self) -> None:
        video = self.video
        ctl = video._ctl
        rows, since = int(ctl["rows_written"]), time.monotonic()
        while ctl["rows_written"] < ctl["request_rows"]:
            video._raise_write_error()  # before "not running": it says why
            video.writer.check_alive()
            now = time.monotonic()
            if ctl["rows_written"] != rows:
                rows, since = int(ctl["rows_written"]), now
            elif now - since > self.stall_s:
                raise TimeoutError(
                    f"{video.name}: no image written for {self.stall_s:g} s ({rows} rows in "
                    f"{ctl['path']}): the camera or the video writer stalled"
                )
            await asyncio.sleep(0.003)
        # and on disk, so a document announcing them never points past the file
        deadline = time.monotonic() + 5.0
        while ctl["rows_flushed"] < ctl["request_rows"] and time.monotonic() < deadline:
            video._raise_write_error()
            video.writer.check_alive()
            await asyncio.sleep(0.005)
        video._raise_write_error()

    async def ensure_stopped(self) -> None:
        ctl = self.video.writer.control
        if ctl is not None:
            ctl["request_rows"] = ctl["rows_written"]


class _WriterData(DetectorDataLogic):
    """One video file per prepare: frames or crops, by the mode."""

    def __init__(self, video: VideoRecorder, path_provider: PathProvider) -> None:
        self.video = video
        self.path_provider = path_provider
        self.provider: AnnouncedFramesProvider | None = None
        self._open = False

    def settle(self) -> None:
        if self.provider is not None:
            self.provider.settle()

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        video = self.video
        mode = await video.mode.get_value()
        if mode == VideoMode.TRACKS:
            raise ValueError(
                f"{video.name}.mode is 'tracks': there are no images to record; set it to "
                f"one of {[m.value for m in VideoMode if m != VideoMode.TRACKS]}"
            )
        await video.ensure_writer()
        ctl = video._ctl
        codec = await video.codec.get_value()
        info = self.path_provider(datakey_name)
        path = info.directory_path / f"{info.filename}.h5"
        camera = video.camera
        dtype = np.dtype(camera.process.dtype)
        resources: list[StreamResourceInfo]
        if mode == VideoMode.ROI_CROPS:
            ids, size = video.bead_columns()
            if ids.size == 0:
                raise ValueError(
                    f"{video.name}: ROI crops need beads: set the tracker's rois first"
                )
            if ids.size > MAX_CROP_BEADS:
                raise ValueError(
                    f"{video.name}: {ids.size} beads is more than the {MAX_CROP_BEADS} a "
                    "crops file holds"
                )
            ctl["kind"] = VideoKind.CROPS
            ctl["roi_size"] = size
            ctl["n_beads"] = ids.size
            bead_ids = np.zeros(MAX_CROP_BEADS, np.int32)
            bead_ids[: ids.size] = ids
            ctl["bead_ids"] = bead_ids
            image_shape: tuple[int, ...] = (int(ids.size), size, size)
            extra = [StreamResourceInfo(
                data_key=f"{datakey_name}-crop_origin", shape=(int(ids.size), 2),
                chunk_shape=(1, int(ids.size), 2), dtype_numpy=np.dtype("<i4").str,
                parameters={"dataset": CROP_ORIGIN_DATASET},
            )]
        else:
            ctl["kind"] = VideoKind.FRAMES
            width, height = await asyncio.gather(
                camera.roi_width.get_value(), camera.roi_height.get_value()
            )
            image_shape = (int(height), int(width))
            extra = []
        ctl["codec"] = codec
        ctl["path"] = str(path)
        ctl["min_free_bytes"] = int(1e6 * await video.min_free_mb.get_value())
        every_n = await video.every_n.get_value()
        ctl["every_n"] = every_n if mode == VideoMode.FRAMES_EVERY_N else 1
        generation = ctl.increment("open_generation")
        await video._wait_until(lambda: ctl["open_ack"] == generation, f"open {path}")
        video._raise_write_error()
        self._open = True
        resources = [
            StreamResourceInfo(
                data_key=datakey_name, shape=image_shape, chunk_shape=(1, *image_shape),
                dtype_numpy=dtype.str, parameters={"dataset": IMAGES_DATASET},
            ),
            StreamResourceInfo(
                data_key=f"{datakey_name}-frame_index", shape=(), chunk_shape=(4096,),
                dtype_numpy=np.dtype("<i8").str, parameters={"dataset": FRAME_INDEX_DATASET},
            ),
            StreamResourceInfo(
                data_key=f"{datakey_name}-timestamp", shape=(), chunk_shape=(4096,),
                dtype_numpy=np.dtype("<f8").str, parameters={"dataset": TIMESTAMPS_DATASET},
            ),
            *extra,
        ]

        def announce(rows: int) -> None:
            control = video.writer.control
            if control is not None:
                control["rows_announced"] = rows

        self.provider = AnnouncedFramesProvider(
            uri=f"{info.directory_uri}{info.filename}.h5",
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=video.rows_written,
            on_announce=announce,
        )
        return self.provider

    async def stop(self) -> None:
        if not self._open:
            return
        self.settle()
        self._open = False
        ctl = self.video.writer.control
        if ctl is None or not self.video.writer.running:
            return
        generation = ctl.increment("close_generation")
        deadline = time.monotonic() + 10.0
        while ctl["close_ack"] != generation:
            if not self.video.writer.running:  # it ended after a failed write: nothing open
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.video.name}: the video writer did not close "
                                   f"{ctl['path']} within 10 s")
            await asyncio.sleep(0.002)

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return []


class VideoRecorder(StandardDetector):
    """Camera images beside the tracks (see the module docstring).

    :param camera: the camera whose frame ring the writer reads.
    :param path_provider: where the video files go (readable by the Tiled server).
    :param bead_columns: returns the bead ids (sorted) and ROI size (px) crops are cut
        for (the tracker's ROI table now); None: no crops (no tracker).
    :param instance: the instrument instance (the writer's shared-memory names).
    """

    def __init__(
        self, camera: Camera, path_provider: PathProvider, *, instance: str,
        bead_columns: Callable[[], tuple[np.ndarray, int]] | None = None, name: str = "",
    ) -> None:
        self._camera_ref = Reference(camera)  # not a child: the microscope's
        self._bead_columns = bead_columns
        self.writer = VideoWriterProcess(instance)
        #: streams declared in the run (by :func:`~magscope_plans.save_frames`), and
        #: whether the recorder is staged (both reset by stage and unstage)
        self.declared_streams: set[str] = set()
        self.staged = False
        self.mode = soft_signal_rw(VideoMode, VideoMode.TRACKS, setter=self._set_mode)
        self.every_n = soft_signal_rw(int, 10, setter=self._check_every_n, units="frames")
        self.pre_trigger_s = soft_signal_rw(float, 2.0, setter=self._set_pre_trigger, units="s")
        self.codec = soft_signal_rw(str, DEFAULT_CODEC, setter=self._check_codec)
        #: the writer stops a record before the disk has less than this free (MB): the
        #: file closes cleanly with every row readable, and the tracks have room
        self.min_free_mb = soft_signal_rw(
            float, 100.0, setter=self._check_min_free, units="MB"
        )
        #: the camera frame the next acquisition starts at (-1: the next frame); reset
        #: after each acquisition
        self.first_frame = soft_signal_rw(int, -1)
        #: index the camera's next frame will have (the trigger of a trigger window)
        self.next_camera_frame, _ = soft_signal_r_and_setter(int, getter=self._next_camera_frame)
        self.rows_written, _ = soft_signal_r_and_setter(
            int, getter=self._count("rows_written"), poll_period=0.005
        )
        self.frames_dropped, _ = soft_signal_r_and_setter(int, getter=self._count("frames_dropped"))
        self.raw_mb, _ = soft_signal_r_and_setter(
            float, getter=lambda: self._count("raw_bytes")() / 1e6, units="MB"
        )
        self.stored_mb, _ = soft_signal_r_and_setter(
            float, getter=lambda: self._count("stored_bytes")() / 1e6, units="MB"
        )
        self.compression_ratio, _ = soft_signal_r_and_setter(float, getter=self._ratio)
        self.write_mb_per_s, _ = soft_signal_r_and_setter(
            float, getter=self._write_rate, units="MB/s"
        )
        self._rows_trigger = _RowsTrigger()
        self._data_logic = _WriterData(self, path_provider)
        self.add_detector_logics(
            self._rows_trigger, _WriterAcquire(self, self._rows_trigger), self._data_logic
        )
        #: the bead ids of the crops (sorted; empty unless the open file holds crops)
        self.crop_bead_ids, _ = soft_signal_r_and_setter(
            Array1D[np.int32], getter=self._crop_bead_ids
        )
        self.add_config_signals(
            self.mode, self.every_n, self.codec, self.pre_trigger_s, self.min_free_mb,
            self.crop_bead_ids,
        )
        super().__init__(name=name)

    # -- plumbing ---------------------------------------------------------------------
    @property
    def camera(self) -> Camera:
        return self._camera_ref()

    @property
    def _ctl(self):
        ctl = self.writer.control
        if ctl is None:
            raise VideoProcessError(f"{self.name or 'video'}: {self.writer.failure_message()}")
        return ctl

    def _count(self, field: str) -> Callable[[], int]:
        def get() -> int:
            ctl = self.writer.control
            return int(ctl[field]) if ctl is not None else 0
        return get

    def _crop_bead_ids(self) -> np.ndarray:
        ctl = self.writer.control
        if ctl is None or ctl["kind"] != VideoKind.CROPS:
            return np.zeros(0, np.int32)
        return np.asarray(ctl["bead_ids"][: int(ctl["n_beads"])], np.int32)

    def _next_camera_frame(self) -> int:
        ring = self.camera.process.ring
        if ring is None:
            raise VideoProcessError(f"{self.name}: the camera is not connected")
        return int(ring.count)

    def _ratio(self) -> float:
        stored = self._count("stored_bytes")()
        return self._count("raw_bytes")() / stored if stored else float("nan")

    def _write_rate(self) -> float:
        ctl = self.writer.control
        if ctl is None or not ctl["write_seconds"]:
            return float("nan")
        return float(ctl["raw_bytes"]) / 1e6 / float(ctl["write_seconds"])

    def bead_columns(self) -> tuple[np.ndarray, int]:
        """The bead ids (sorted) and ROI size (px) crops are cut for."""
        if self._bead_columns is None:
            raise ValueError(f"{self.name}: ROI crops need the bead tracker (tracking is off)")
        return self._bead_columns()

    def _raise_write_error(self) -> None:
        ctl = self.writer.control
        if ctl is not None and ctl["write_error"]:
            raise VideoRecordingError(f"{self.name}: {ctl['write_error']}")

    async def _wait_until(self, predicate: Callable[[], bool], what: str,
                          timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.writer.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: the video writer did not {what} within "
                                   f"{timeout:g} s")
            await asyncio.sleep(0.002)

    # -- validation ----------------------------------------------------------------------
    def _check_every_n(self, value: Any) -> None:
        if isinstance(value, bool) or not float(value).is_integer() or not 1 <= value <= MAX_EVERY_N:
            raise ValueError(
                f"{self.name}: every_n = {value!r} must be a whole number of frames in "
                f"[1, {MAX_EVERY_N}]"
            )

    def _check_min_free(self, value: Any) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{self.name}: min_free_mb = {value!r} must be a number of MB >= 0")

    def _check_codec(self, value: Any) -> None:
        if value not in CODECS:
            raise ValueError(f"{self.name}: codec {value!r} is not one of {sorted(CODECS)}")

    def pre_trigger_frames(self, seconds: float) -> int:
        """Frames the writer keeps for ``seconds`` before a trigger (at the camera's
        frame rate), refused beyond :data:`MAX_PRE_TRIGGER_BYTES` of memory."""
        ctl = self.camera.process.control
        rate = 1.0 / float(ctl["frame_period_s"]) if ctl is not None else 100.0
        frames = math.ceil(seconds * rate)
        ring = self.camera.process.ring
        frame_bytes = int(np.prod(ring.slot_shape)) * ring.dtype.itemsize if ring is not None else 0
        if frames * frame_bytes > MAX_PRE_TRIGGER_BYTES:
            raise ValueError(
                f"{self.name}: pre_trigger_s = {seconds:g} s is {frames} frames "
                f"({frames * frame_bytes / 2**30:.1f} GiB) at {rate:g} frames/s, more than "
                f"the {MAX_PRE_TRIGGER_BYTES / 2**30:.0f} GiB the writer may keep"
            )
        return frames

    def _set_pre_trigger(self, value: Any) -> None:
        value = float(value)
        if not (math.isfinite(value) and 0 <= value <= MAX_PRE_TRIGGER_S):
            raise ValueError(
                f"{self.name}: pre_trigger_s = {value!r} s is outside [0, {MAX_PRE_TRIGGER_S:g}] s"
            )
        frames = self.pre_trigger_frames(value)
        self._pre_trigger_s = value
        ctl = self.writer.control
        if ctl is not None and self._mode_now == VideoMode.TRIGGER_WINDOW:
            ctl["pre_trigger_frames"] = frames

    _mode_now = VideoMode.TRACKS
    _pre_trigger_s = 2.0

    async def ensure_writer(self) -> None:
        """Start the writer process if it is not running (it starts when first needed:
        a record with images, or the trigger window's frames to keep)."""
        if not self.writer.running:
            await asyncio.to_thread(self.writer.stop)
            await asyncio.to_thread(self.writer.start)

    async def _set_mode(self, value: Any) -> None:
        mode = VideoMode(value)
        if mode == VideoMode.ROI_CROPS:
            self.bead_columns()  # crops need the tracker
        if mode == VideoMode.TRIGGER_WINDOW:
            self.pre_trigger_frames(self._pre_trigger_s)  # refused before anything starts
        if mode != VideoMode.TRACKS:  # started now, not at the first record's start
            await self.ensure_writer()
        ctl = self.writer.control
        if ctl is not None:
            if mode == VideoMode.TRIGGER_WINDOW:
                ctl["pre_trigger_frames"] = self.pre_trigger_frames(self._pre_trigger_s)
            else:
                ctl["pre_trigger_frames"] = 0
        self._mode_now = mode

    # -- acquisition ---------------------------------------------------------------------
    def drop_unannounced(self) -> None:
        """Cut the open file to the rows documents announced and cancel an open request
        (what a pause interrupted)."""
        ctl = self.writer.control
        if ctl is None or not self.writer.running or ctl["open_ack"] == 0:
            return
        self._data_logic.settle()
        announced = int(ctl["rows_announced"])
        if ctl["rows_written"] == announced and ctl["request_rows"] == announced:
            return
        ctl.increment("rewind_generation")

    async def _rewound(self) -> None:
        ctl = self.writer.control
        if ctl is not None and self.writer.running:
            generation = int(ctl["rewind_generation"])
            await self._wait_until(lambda: ctl["rewind_ack"] == generation, "rewind")

    @AsyncStatus.wrap
    async def stage(self) -> None:
        self.declared_streams.clear()
        await StandardDetector.stage(self)
        self.staged = True

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        self.declared_streams.clear()
        self.staged = False
        if self.writer.running:
            await StandardDetector.unstage(self)

    @AsyncStatus.wrap
    async def prepare(self, value: TriggerInfo) -> None:
        await self._drop_unannounced_and_recount()
        await StandardDetector.prepare(self, value)

    async def _drop_unannounced_and_recount(self) -> None:
        """Drop the rows no StreamDatum announced, wait until the writer has, and read the
        count of rows afresh (a kickoff or trigger reads it from the signal's cache while
        anything subscribes to it: see BeadTracker._drop_unannounced_and_recount)."""
        self.drop_unannounced()
        await self._rewound()
        await self.rows_written.get_value(cached=False)

    def pause(self) -> None:
        """The RunEngine paused: drop the rows of a record the pause interrupted."""
        self.drop_unannounced()

    def resume(self) -> None:
        """Nothing to do: the resumed plan records again."""

    @WatchableAsyncStatus.wrap
    async def trigger(self) -> AsyncIterator[WatcherUpdate[int]]:
        await self._drop_unannounced_and_recount()
        async for update in forward_updates(StandardDetector.trigger(self), self._check):
            yield update

    @WatchableAsyncStatus.wrap
    async def complete(self) -> AsyncIterator[WatcherUpdate[int]]:
        async for update in forward_updates(StandardDetector.complete(self), self._check):
            yield update

    def _check(self) -> None:
        self._raise_write_error()  # before "not running": it says why
        self.writer.check_alive()

    def close(self) -> None:
        """Stop the writer (its open file cut to the announced rows). Idempotent."""
        self.writer.stop()
