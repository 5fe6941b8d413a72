"""The tracking service: worker processes that turn camera frames into track rows.

::

    frame ring ──▶ worker 0 (frames 0, N, 2N, ...)  ──▶ output ring 0 ─┐
     (camera)  ──▶ worker 1 (frames 1, N+1, ...)    ──▶ output ring 1 ─┼─▶ collector ──▶ track ring
               ──▶ ...                                                  ┘   (thread)     (frame order)

:class:`TrackingService` is the owner side; it lives in the RunEngine's process. It
creates a control record (ROI table, Z-LUT, options, counters), one output ring and one
status record per worker, and starts the workers: fresh interpreters running this module
(``python -m magscope_tracking.service``), like the camera process. Frame ``i`` goes to
worker ``i % n_workers``. A worker reads its frame from the frame ring (zero-copy view,
checked afterwards against being overwritten), crops every ROI, runs
:func:`magscope_tracking.track`, converts to sensor nm and appends one entry per frame to
its own output ring. The ROI table and the Z-LUT are read once per frame (a seqlock on the
table), so changes apply between frames, never within one.

A collector thread in the owner merges the workers' entries in frame order into the public
:class:`~magscope_ipc.track_ring.TrackRing` (one writer), one entry per camera frame
from the frame the service started at: tracked or dropped, never missing.

Backpressure is explicit. A worker more than ``max_lag_frames`` behind the camera (default
half the frame ring) skips ahead to the oldest frame within that bound and writes the
frames it skipped as dropped; so does a worker whose frame was overwritten while it read
it. A worker that dies (killed, crashed) is detected by the collector, reported (a log
warning naming the worker and its exit signal, and :meth:`TrackingService.health`) and
restarted; the frames it owed are written as dropped. A worker that stops responding for
``worker_timeout_s`` (or does not start within ``start_timeout_s``) is killed and restarted
the same way, with twice the time the next round, so a slow compile never becomes a
restart storm. Workers exit by themselves when their owner dies (a watchdog thread, so
also while numba compiles); the owner's segments are then stale and removed at the next
start. While one worker stalls, the track ring waits for it (frame order), so the queue
grows; the frames it then skips are written as dropped.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from magscope_ipc.processes import exit_with_parent, spawn
from magscope_ipc.rings import EntryOverwrittenError, FrameRing, SlotRing
from magscope_ipc.shm import SharedRecord, remove_stale_segments, segment_name
from magscope_ipc.track_ring import TRACK_DTYPE, FrameStatus, TrackRing, empty_rows

from .options import MIN_ROI_PX

log = logging.getLogger(__name__)

#: One row of the ROI table: stable bead id, ROI top-left pixel (px, sensor coordinates).
ROI_DTYPE = np.dtype([("bead_id", "<i4"), ("x0", "<i4"), ("y0", "<i4")])

#: Smallest ROI side the service accepts (px): the kernels' minimum.
MIN_ROI_SIZE = MIN_ROI_PX
#: Default time (s) a worker may go without a heartbeat before it is killed and restarted.
WORKER_TIMEOUT_S = 60.0
#: Latency percentiles are over the frames tracked in the last this many seconds.
LATENCY_WINDOW_S = 2.0


class TrackingServiceError(RuntimeError):
    """The tracking service could not start, or is not running."""


class WorkerState(enum.IntEnum):
    """Life cycle of a worker, as stored in its status record."""

    STARTING = 0
    READY = 1  # kernels compiled, waiting for its first frame index
    RUNNING = 2
    STOPPED = 3
    FAILED = 4


class DropReason(enum.IntEnum):
    """Why a worker did not track a frame (in its output entries)."""

    NONE = 0
    BEHIND = 1  # more than max_lag_frames behind the camera: skipped
    OVERWRITTEN = 2  # the camera overwrote the frame before or while it was read
    ERROR = 3  # the kernels raised


def control_dtype(max_beads: int) -> np.dtype:
    """The control record shared by the owner and its workers."""
    return np.dtype(
        [
            ("quit", "<i8"),
            ("owner_pid", "<i8"),
            ("n_workers", "<i8"),
            ("nm_per_px", "<f8"),
            ("max_beads", "<i8"),
            # ROI table (written under the seqlock roi_seq: odd while being written)
            ("roi_seq", "<i8"),
            ("roi_generation", "<i8"),  # counts accepted ROI tables (service lifetime)
            ("roi_size", "<i8"),  # px
            ("n_rois", "<i8"),
            ("roi_bead_id", "<i4", (max_beads,)),
            ("roi_x0", "<i4", (max_beads,)),  # px, sensor coordinates
            ("roi_y0", "<i4", (max_beads,)),
            # Z-LUT file (seqlock zlut_seq: odd while being written)
            ("zlut_seq", "<i8"),
            ("zlut_generation", "<i8"),  # counts Z-LUT changes (service lifetime)
            ("zlut_path", "S4096"),
            ("zlut_sha256", "S64"),
            # options
            ("max_lag_frames", "<i8"),
            ("worker_delay_s", "<f8"),  # extra time per frame (tests, benchmarks)
            # counters, mirrored by the collector for readers in other processes
            ("first_frame", "<i8"),
            ("frames_acquired", "<i8"),
            ("frames_seen", "<i8"),
            ("frames_tracked", "<i8"),
            ("frames_dropped", "<i8"),
            ("queue_depth", "<i8"),
            ("latency_p50_s", "<f8"),
            ("latency_p99_s", "<f8"),
            ("worker_restarts", "<i8"),
        ]
    )


WORKER_DTYPE = np.dtype(
    [
        ("pid", "<i8"),
        ("state", "<i8"),
        ("go", "<i8"),  # set by the collector once start_frame is valid
        ("start_frame", "<i8"),
        ("next_frame", "<i8"),
        ("heartbeat", "<f8"),  # UNIX s of the worker's last loop iteration
        ("frames_tracked", "<i8"),
        ("frames_dropped", "<i8"),
        ("kernel_errors", "<i8"),
        ("busy_s", "<f8"),  # time spent cropping and tracking (s)
        ("zlut_generation", "<i8"),  # the Z-LUT generation the worker has loaded
        ("error", "S2048"),
    ]
)


def output_dtype(max_beads: int) -> np.dtype:
    """One worker output entry: a frame's rows, its status and why it was dropped."""
    return np.dtype(
        [
            ("frame", "<i8"),
            ("status", "<i4"),
            ("reason", "<i4"),
            ("n", "<i4"),
            ("rows", TRACK_DTYPE, (max_beads,)),
        ]
    )


@dataclass(frozen=True)
class WorkerHealth:
    """One worker, as seen by the owner."""

    index: int
    pid: int
    alive: bool
    state: str
    frames_tracked: int
    frames_dropped: int
    kernel_errors: int
    busy_s: float  # s spent cropping and tracking since this worker process started
    zlut_generation: int  # the Z-LUT generation this worker has loaded
    error: str


@dataclass(frozen=True)
class TrackingHealth:
    """Health counters of a :class:`TrackingService` (frame counts since :meth:`start`).

    ``frames_acquired``: camera frames written since the service started;
    ``frames_seen``: frames in the track ring (``frames_tracked + frames_dropped``);
    ``queue_depth``: frames acquired but not yet in the track ring;
    ``dropped_behind`` / ``dropped_worker`` / ``dropped_error``: dropped frames because a
    worker was behind (or its frame overwritten), because its worker was dead or
    restarting, because the kernels raised; ``latency_p50_s`` / ``latency_p99_s``: from the
    frame's timestamp to its track row written, over the ``latency_window`` frames tracked in
    the last :data:`LATENCY_WINDOW_S` seconds (s; NaN if none); ``worker_restarts``:
    workers restarted after dying.
    """

    running: bool
    first_frame: int
    frames_acquired: int
    frames_seen: int
    frames_tracked: int
    frames_dropped: int
    dropped_behind: int
    dropped_worker: int
    dropped_error: int
    queue_depth: int
    latency_p50_s: float
    latency_p99_s: float
    latency_window: int
    worker_restarts: int
    roi_generation: int
    zlut_generation: int
    workers: tuple[WorkerHealth, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- ROI table validation -------------------------------------------------------------------
def as_roi_table(table: Any) -> np.ndarray:
    """Convert ``table`` to a :data:`ROI_DTYPE` array.

    Accepts a structured array with fields ``bead_id``, ``x0``, ``y0``; an (n, 3) array or
    a sequence of ``(bead_id, x0, y0)``; or a mapping ``{bead_id: (x0, y0)}``. Values must
    be whole numbers (px).
    """
    if isinstance(table, dict):
        table = [(bead, *xy) for bead, xy in table.items()]
    arr = np.asarray(table)
    if arr.dtype.names is not None:
        missing = {"bead_id", "x0", "y0"} - set(arr.dtype.names)
        if missing:
            raise ValueError(f"ROI table lacks the field(s) {sorted(missing)}")
        cols = [np.asarray(arr[name]).reshape(-1) for name in ("bead_id", "x0", "y0")]
    else:
        if arr.size == 0:
            arr = arr.reshape(0, 3)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(
                f"ROI table must be rows of (bead_id, x0, y0), got an array of shape {arr.shape}"
            )
        cols = [arr[:, 0], arr[:, 1], arr[:, 2]]
    out = np.empty(cols[0].shape[0], ROI_DTYPE)
    for name, col in zip(("bead_id", "x0", "y0"), cols, strict=True):
        if col.dtype.kind not in "iuf" and col.size:
            raise ValueError(f"ROI table column {name} must be numbers, got {col.dtype}")
        values = col.astype(np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"ROI table row {i}: {name} = {col[i].item()!r} is not a whole number"
                + (" of px" if name != "bead_id" else "")
            )
        limit = 2**31 - 1
        if np.any(np.abs(values) > limit):
            i = int(np.flatnonzero(np.abs(values) > limit)[0])
            raise ValueError(f"ROI table row {i}: {name} = {col[i].item()!r} is beyond +-{limit}")
        out[name] = values.astype(np.int64)
    return out


def validate_rois(
    table: np.ndarray, roi_size: int, sensor_shape: tuple[int, int], max_beads: int
) -> None:
    """Raise ValueError (naming the bead, the value and the limit) unless every ROI of
    ``table`` (:data:`ROI_DTYPE`) is a square of ``roi_size`` px inside the sensor
    (``sensor_shape`` = (height, width) px), none overlap, bead ids are unique and >= 0,
    and there are at most ``max_beads``."""
    height, width = sensor_shape
    if not MIN_ROI_SIZE <= roi_size <= min(height, width):
        raise ValueError(
            f"roi_size {roi_size} px is outside [{MIN_ROI_SIZE}, {min(height, width)}] px "
            f"(sensor {width} x {height} px)"
        )
    n = table.shape[0]
    if n > max_beads:
        raise ValueError(f"{n} ROIs exceed max_beads = {max_beads} of this tracking service")
    ids, x0, y0 = (table[f].astype(np.int64) for f in ("bead_id", "x0", "y0"))
    for i in range(n):
        bead = int(ids[i])
        if bead < 0:
            raise ValueError(f"bead id {bead} is negative (bead ids are integers >= 0)")
        for axis, origin, limit, label in ((
            "x0", int(x0[i]), width, "width"), ("y0", int(y0[i]), height, "height")
        ):
            if origin < 0:
                raise ValueError(f"ROI of bead {bead}: {axis} = {origin} px is negative")
            if origin + roi_size > limit:
                raise ValueError(
                    f"ROI of bead {bead}: {axis} + roi_size = {origin} + {roi_size} = "
                    f"{origin + roi_size} px is beyond the sensor {label} {limit} px"
                )
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        bead = int(unique[counts > 1][0])
        raise ValueError(f"bead id {bead} appears {int(counts[unique == bead][0])} times")
    if n > 1:
        overlap = (np.abs(x0[:, None] - x0[None, :]) < roi_size) & (
            np.abs(y0[:, None] - y0[None, :]) < roi_size
        )
        np.fill_diagonal(overlap, False)
        if np.any(overlap):
            i, j = (int(v) for v in np.argwhere(overlap)[0])
            raise ValueError(
                f"ROIs of beads {int(ids[i])} and {int(ids[j])} overlap: top-left "
                f"({int(x0[i])}, {int(y0[i])}) and ({int(x0[j])}, {int(y0[j])}) px are less "
                f"than roi_size = {roi_size} px apart in both x and y"
            )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _exit_description(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


# -- owner side ---------------------------------------------------------------------------
class TrackingService:
    """Owner of the tracking workers, their shared memory and the public track ring.

    :param frame_ring: name of the camera's frame ring (``/dev/shm`` segment).
    :param nm_per_px: object-side pixel size (nm), to convert positions to nm.
    :param max_beads: most ROIs the service tracks at once (sizes the shared memory).
    :param n_workers: worker processes (default: one per core, ``os.cpu_count()``).
    :param instance: instrument instance name, in the shared-memory names.
    :param track_capacity: frames held in the track ring.
    :param max_lag_frames: how far (frames) a worker may fall behind the camera before it
        skips ahead and drops frames; default half the frame ring's capacity.
    :param worker_timeout_s: a worker without a heartbeat for this long (s) is killed and
        restarted.
    :param start_timeout_s: time (s) the workers have to start (import, compile kernels).
    """

    def __init__(
        self,
        frame_ring: str,
        nm_per_px: float,
        max_beads: int = 128,
        n_workers: int | None = None,
        instance: str = "default",
        *,
        track_capacity: int = 4096,
        max_lag_frames: int | None = None,
        worker_timeout_s: float = WORKER_TIMEOUT_S,
        start_timeout_s: float = 120.0,
    ) -> None:
        if not (math.isfinite(nm_per_px) and nm_per_px > 0):
            raise ValueError(f"nm_per_px must be a positive number, got {nm_per_px}")
        if max_beads < 1:
            raise ValueError(f"max_beads must be at least 1, got {max_beads}")
        n_workers = (os.cpu_count() or 1) if n_workers is None else int(n_workers)
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        if track_capacity < 2:
            raise ValueError(f"track_capacity must be at least 2 frames, got {track_capacity}")
        self.frame_ring_name = frame_ring
        self.nm_per_px = float(nm_per_px)
        self.max_beads = int(max_beads)
        self.n_workers = n_workers
        self.instance = instance
        self.track_capacity = int(track_capacity)
        self.worker_timeout_s = float(worker_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self._max_lag_frames = max_lag_frames
        self._worker_delay_s = 0.0
        self._lock = threading.RLock()
        self._rois = np.empty(0, ROI_DTYPE)
        self._roi_size: int | None = None
        self._zlut_path: Path | None = None
        self._zlut_roi_size: int | None = None
        self._zlut_sha256 = ""
        self._zlut_generation = 0
        self._roi_generation = 0
        self._collector: _Collector | None = None
        self._finalizer: weakref.finalize | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the shared memory, start the workers (waiting until they are ready) and
        the collector. The track ring starts at the next frame the camera writes."""
        if self.running:
            return
        self.stop()
        remove_stale_segments(self.instance)
        collector = _Collector(self)
        self._finalizer = weakref.finalize(
            self, _emergency_cleanup, collector.stop_event, collector.processes,
            collector.segment_names,
        )
        try:
            collector.open()
            # the ROI table and Z-LUT set before (or before a restart) apply from the start
            with self._lock:
                if self._roi_size is not None:
                    collector.write_rois(self._rois, self._roi_size, self._roi_generation)
                if self._zlut_path is not None:
                    collector.write_zlut(
                        str(self._zlut_path), self._zlut_sha256, self._zlut_generation
                    )
            collector.begin()
        except BaseException:
            collector.close()
            self._finalizer.detach()
            self._finalizer = None
            raise
        self._collector = collector

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers and the collector, and unlink all shared memory. Idempotent."""
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.close(timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> TrackingService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the collector runs (workers are restarted when they die)."""
        return self._collector is not None and self._collector.alive

    def _require_running(self) -> _Collector:
        collector = self._collector
        if collector is None or not collector.alive:
            reason = collector.failure if collector is not None else ""
            raise TrackingServiceError(
                "the tracking service is not running" + (f": {reason}" if reason else "")
            )
        return collector

    # -- shared memory -------------------------------------------------------------------
    @property
    def track_ring(self) -> TrackRing:
        """The public track ring (this process's mapping; valid while running)."""
        ring = self._require_running().track_ring
        assert ring is not None
        return ring

    @property
    def track_ring_name(self) -> str:
        """Name of the track ring: readers in other processes ``TrackRing.attach`` it."""
        return self.track_ring.name

    def segment_names(self) -> list[str]:
        """Names of the shared-memory segments this owner holds."""
        collector = self._collector
        return list(collector.segment_names) if collector is not None else []

    def worker_pids(self) -> list[int | None]:
        """Process ids of the current workers (None while one is being restarted)."""
        collector = self._collector
        if collector is None:
            return []
        return [p.pid if p is not None and p.poll() is None else None for p in collector.processes]

    # -- configuration -------------------------------------------------------------------
    @property
    def rois(self) -> np.ndarray:
        """Copy of the ROI table (:data:`ROI_DTYPE`: bead id, top-left x0, y0 in px)."""
        return self._rois.copy()

    @property
    def roi_size(self) -> int | None:
        """ROI side (px), None before the first :meth:`set_rois`."""
        return self._roi_size

    @property
    def zlut_path(self) -> Path | None:
        """File of the loaded Z-LUT (None if none is loaded)."""
        return self._zlut_path

    def _sensor_shape(self) -> tuple[int, int]:
        """(height, width) px of the frame ring's slots: the sensor."""
        collector = self._collector
        if collector is not None:
            return collector.sensor_shape
        frames = FrameRing.attach(self.frame_ring_name)
        try:
            return int(frames.slot_shape[0]), int(frames.slot_shape[1])
        finally:
            frames.close()

    def _frame_capacity(self) -> int:
        collector = self._collector
        if collector is not None:
            return collector.frames.capacity
        frames = FrameRing.attach(self.frame_ring_name)
        try:
            return frames.capacity
        finally:
            frames.close()

    def _live_collector(self) -> _Collector | None:
        collector = self._collector
        return collector if collector is not None and collector.ctl is not None else None

    def set_rois(self, table: Any, roi_size: int | None = None) -> int:
        """Replace the ROI table; takes effect from the next frame a worker starts.

        Works before :meth:`start` too (the table is kept across stop and start).

        :param table: rows of (bead_id, x0, y0): ROI top-left in px, sensor coordinates
            (see :func:`as_roi_table` for accepted forms). Bead ids are stable: give a
            bead the same id for as long as it is tracked.
        :param roi_size: ROI side (px); default: keep the current one.
        :returns: the ROI generation (counts accepted changes).
        :raises ValueError: outside the sensor, overlapping, duplicate or negative bead
            ids, more than ``max_beads``, or a ``roi_size`` that differs from the loaded
            Z-LUT's (``ZLUTMismatchError``). Nothing changes then.
        """
        rois = as_roi_table(table)
        size = self._roi_size if roi_size is None else int(roi_size)
        if size is None:
            raise ValueError("give roi_size (px) with the first ROI table")
        validate_rois(rois, size, self._sensor_shape(), self.max_beads)
        with self._lock:
            if self._zlut_roi_size is not None and size != self._zlut_roi_size:
                from .zlut import ZLUTMismatchError

                raise ZLUTMismatchError(
                    f"roi_size {size} px differs from the loaded Z-LUT's ROI size "
                    f"{self._zlut_roi_size} px ({self._zlut_path}); clear_zlut() first"
                )
            self._rois, self._roi_size = rois, size
            self._roi_generation += 1
            collector = self._live_collector()
            if collector is not None:
                collector.write_rois(rois, size, self._roi_generation)
            return self._roi_generation

    def load_zlut(self, path: str | os.PathLike[str]) -> int:
        """Load a Z-LUT file for all workers; takes effect between frames.

        The file is loaded and checked here first (``ZLUT.load``; its ROI size against the
        current ROIs, its pixel size against ``nm_per_px``); a file that fails leaves the
        current Z-LUT in place. Beads of the ROI table that the Z-LUT lacks get z = NaN.
        The workers load the same file (checked by its sha256) and again after a restart,
        so leave the file in place while it is loaded. :attr:`WorkerHealth.zlut_generation`
        says when each worker has it. Works before :meth:`start` too.

        :returns: the Z-LUT generation (counts changes).
        :raises ZLUTMismatchError: (a ValueError) ROI size or pixel size mismatch;
            ``ZLUTFormatError`` (a ValueError) for a malformed file; FileNotFoundError.
        """
        from .zlut import ZLUT, ZLUTMismatchError

        file = Path(path).absolute()
        if not file.is_file():
            raise FileNotFoundError(f"no Z-LUT file at {file}")
        zlut = ZLUT.load(file)
        sha = _file_sha256(file)
        with self._lock:
            if self._roi_size is not None:
                try:
                    zlut.check_compatible((self._roi_size, self._roi_size))
                except ZLUTMismatchError as exc:
                    raise ZLUTMismatchError(
                        f"Z-LUT {file} refused: {exc}; the previous Z-LUT stays loaded"
                    ) from None
            if not math.isclose(zlut.nm_per_px, self.nm_per_px, rel_tol=1e-6):
                raise ZLUTMismatchError(
                    f"Z-LUT {file} refused: made at {zlut.nm_per_px:g} nm/px, the service "
                    f"converts with {self.nm_per_px:g} nm/px; the previous Z-LUT stays loaded"
                )
            self._zlut_path, self._zlut_roi_size = file, int(zlut.roi_size[0])
            self._zlut_sha256 = sha
            self._zlut_generation += 1
            collector = self._live_collector()
            if collector is not None:
                collector.write_zlut(str(file), sha, self._zlut_generation)
            return self._zlut_generation

    def clear_zlut(self) -> int:
        """Track without a Z-LUT (z NaN) from the next frame; returns the Z-LUT generation."""
        with self._lock:
            self._zlut_path = self._zlut_roi_size = None
            self._zlut_sha256 = ""
            self._zlut_generation += 1
            collector = self._live_collector()
            if collector is not None:
                collector.write_zlut("", "", self._zlut_generation)
            return self._zlut_generation

    def set_options(
        self, *, max_lag_frames: int | None = None, worker_delay_s: float | None = None
    ) -> None:
        """Change options of the workers (now if running, and at every start).

        :param max_lag_frames: frames a worker may fall behind the camera before it skips
            ahead (dropping what it skips); 1 .. frame ring capacity - 1.
        :param worker_delay_s: extra time each worker spends per frame (s): simulates a
            slow tracker (tests, benchmarks); 0 .. 10 s.
        """
        if max_lag_frames is not None:
            limit = self._frame_capacity() - 1
            if not 1 <= int(max_lag_frames) <= limit:
                raise ValueError(
                    f"max_lag_frames {max_lag_frames} is outside [1, {limit}] frames "
                    "(the frame ring's capacity - 1)"
                )
        if worker_delay_s is not None and not 0.0 <= float(worker_delay_s) <= 10.0:
            raise ValueError(f"worker_delay_s {worker_delay_s} s is outside [0, 10] s")
        with self._lock:
            collector = self._live_collector()
            if max_lag_frames is not None:
                self._max_lag_frames = int(max_lag_frames)
                if collector is not None:
                    collector.ctl["max_lag_frames"] = int(max_lag_frames)
            if worker_delay_s is not None:
                self._worker_delay_s = float(worker_delay_s)
                if collector is not None:
                    collector.ctl["worker_delay_s"] = float(worker_delay_s)

    # -- health --------------------------------------------------------------------------
    def health(self) -> TrackingHealth:
        """Counters since :meth:`start` (see :class:`TrackingHealth`)."""
        collector = self._collector
        if collector is None:
            return TrackingHealth(
                running=False, first_frame=-1, frames_acquired=0, frames_seen=0,
                frames_tracked=0, frames_dropped=0, dropped_behind=0, dropped_worker=0,
                dropped_error=0, queue_depth=0, latency_p50_s=math.nan,
                latency_p99_s=math.nan, latency_window=0, worker_restarts=0,
                roi_generation=self._roi_generation, zlut_generation=self._zlut_generation,
                workers=(),
            )
        return collector.health()

    def wait_for_frame(self, frame_index: int, timeout: float = 10.0) -> None:
        """Block until frame ``frame_index`` is in the track ring (tracked or dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            collector = self._require_running()
            ring = collector.track_ring
            assert ring is not None
            if ring.count > frame_index:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"frame {frame_index} not in the track ring after {timeout} s "
                    f"(track ring at {ring.count}, camera at {collector.frames.count})"
                )
            time.sleep(0.002)


def _emergency_cleanup(
    stop_event: threading.Event, processes: list[subprocess.Popen | None], names: list[str]
) -> None:
    """Garbage-collection / interpreter-exit cleanup of a TrackingService."""
    stop_event.set()
    for process in list(processes):
        if process is not None and process.poll() is None:
            process.kill()
    for process in list(processes):
        if process is not None:
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
    for name in list(names):
        Path("/dev/shm", name).unlink(missing_ok=True)


class _Collector:
    """Owns the workers and segments of a running service; merges outputs in frame order.

    Holds no reference to the :class:`TrackingService` after construction, so an
    unreferenced service is collected and its finalizer cleans up.
    """

    def __init__(self, service: TrackingService) -> None:
        self.instance = service.instance
        self.nm_per_px = service.nm_per_px
        self.max_beads = service.max_beads
        self.n_workers = service.n_workers
        self.track_capacity = service.track_capacity
        self.worker_timeout_s = service.worker_timeout_s
        self.start_timeout_s = service.start_timeout_s
        self.frame_ring_name = service.frame_ring_name
        self.initial_max_lag = service._max_lag_frames
        self.initial_delay = service._worker_delay_s
        # the workers are the parallelism: each runs the (numba-parallel) kernels on its
        # share of the cores, so N workers never start N x cores threads
        self.worker_env = dict(
            os.environ, NUMBA_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // self.n_workers))
        )
        self.stop_event = threading.Event()
        self.processes: list[subprocess.Popen | None] = [None] * self.n_workers
        self.segment_names: list[str] = []
        self.frames: FrameRing = FrameRing.attach(self.frame_ring_name)
        self.sensor_shape: tuple[int, int] = (
            int(self.frames.slot_shape[0]), int(self.frames.slot_shape[1])
        )
        self.ctl: SharedRecord = None  # type: ignore[assignment]
        self.workers: list[SharedRecord] = []
        self.outputs: list[SlotRing] = []
        self.track_ring: TrackRing | None = None
        self.thread: threading.Thread | None = None
        self.failure = ""
        # collector state
        self.next_frame = 0
        self.cursor = [0] * self.n_workers
        self.ready = [False] * self.n_workers
        self.start_frame = [0] * self.n_workers
        self.spawned_at = [0.0] * self.n_workers
        self.failures = [0] * self.n_workers  # consecutive failures before READY
        self.restart_at = [0.0] * self.n_workers
        self.patience = [1.0] * self.n_workers  # doubles the timeouts after each kill
        self.roi_ids = np.empty(0, np.int32)  # bead ids for rows of frames dropped here
        self.counts = {"tracked": 0, "dropped": 0, "behind": 0, "worker": 0, "error": 0}
        self.restarts = 0
        # (time written UNIX s, latency s) of recently tracked frames
        self.latencies: deque[tuple[float, float]] = deque(maxlen=8192)
        self.stats_lock = threading.Lock()  # counts and latencies

    # -- set-up / tear-down --------------------------------------------------------------
    def open(self) -> None:
        ctl = SharedRecord.create(
            segment_name(self.instance, "trkctl"), control_dtype(self.max_beads)
        )
        self.ctl = ctl
        self.segment_names.append(ctl.name)
        ctl["owner_pid"] = os.getpid()
        ctl["n_workers"] = self.n_workers
        ctl["nm_per_px"] = self.nm_per_px
        ctl["max_beads"] = self.max_beads
        ctl["max_lag_frames"] = (
            self.initial_max_lag
            if self.initial_max_lag is not None
            else max(1, self.frames.capacity // 2)
        )
        ctl["worker_delay_s"] = self.initial_delay
        out_dtype = output_dtype(self.max_beads)
        out_capacity = max(64, self.frames.capacity)
        for k in range(self.n_workers):
            rec = SharedRecord.create(segment_name(self.instance, f"trkw{k}"), WORKER_DTYPE)
            self.workers.append(rec)
            self.segment_names.append(rec.name)
            out = SlotRing.create(segment_name(self.instance, f"trkout{k}"), out_capacity, (1,),
                                  out_dtype)
            self.outputs.append(out)
            self.segment_names.append(out.name)
        for k in range(self.n_workers):
            self._spawn(k)
        deadline = time.monotonic() + self.start_timeout_s
        while not all(rec["state"] == WorkerState.READY for rec in self.workers):
            for k, process in enumerate(self.processes):
                assert process is not None
                if process.poll() is not None:
                    raise TrackingServiceError(self._death_message(k, process.returncode))
            if time.monotonic() > deadline:
                raise TrackingServiceError(
                    f"tracking workers did not start within {self.start_timeout_s} s"
                )
            time.sleep(0.01)

    def begin(self) -> None:
        """Start the track ring at the next camera frame, release the workers, merge."""
        first = self.frames.count
        self.next_frame = first
        self.ctl["first_frame"] = first
        self.track_ring = TrackRing.create_tracks(
            segment_name(self.instance, "tracks"), self.track_capacity, self.max_beads,
            first_index=first, nm_per_px=self.nm_per_px,
        )
        self.segment_names.append(self.track_ring.name)
        for k in range(self.n_workers):
            self._release(k)
        self.thread = threading.Thread(
            target=self._run, name=f"magscope-tracking-collector-{self.instance}", daemon=True
        )
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        if self.ctl is not None:
            try:
                self.ctl["quit"] = 1
            except Exception:
                pass
        for process in self.processes:
            if process is None:
                continue
            for action in (None, process.terminate, process.kill):
                if action is not None and process.poll() is None:
                    action()
                try:
                    process.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for shared in [self.track_ring, *self.outputs, *self.workers, self.ctl]:
            if shared is not None:
                shared.unlink()
                shared.close()
        for name in self.segment_names:  # anything created but not yet wrapped
            Path("/dev/shm", name).unlink(missing_ok=True)
        self.track_ring = None
        self.outputs, self.workers = [], []
        self.ctl = None  # type: ignore[assignment]
        self.frames.close()

    # -- workers -------------------------------------------------------------------------
    def _spawn(self, k: int) -> None:
        rec = self.workers[k]
        for name in ("pid", "go", "start_frame", "next_frame", "frames_tracked",
                     "frames_dropped", "kernel_errors", "busy_s", "zlut_generation"):
            rec[name] = 0
        rec["heartbeat"] = time.time()
        rec["error"] = ""
        rec["state"] = WorkerState.STARTING
        # own session (no terminal Ctrl-C), exits with this process; like
        # multiprocessing's spawn, the child sees the parent's import path
        process = spawn(
            f"tracking worker {k}",
            [
                sys.executable, "-m", "magscope_tracking.service",
                "--control", self.ctl.name, "--worker-record", rec.name,
                "--frames", self.frame_ring_name, "--output", self.outputs[k].name,
                "--worker", str(k), "--parent", str(os.getpid()),
            ],
            lifeline=False, env=self.worker_env, stdin_data=pickle.dumps(list(sys.path)),
        ).process
        self.processes[k] = process
        self.ready[k] = False
        self.spawned_at[k] = time.monotonic()

    def _release(self, k: int) -> None:
        """Give worker ``k`` (READY) its first frame: the first of its residue not yet
        published; earlier frames of its residue are dropped by the collector."""
        n = self.n_workers
        f = self.next_frame + (k - self.next_frame) % n
        self.start_frame[k] = f
        self.ready[k] = True
        self.failures[k] = 0
        rec = self.workers[k]
        rec["start_frame"] = f
        rec["next_frame"] = f
        rec["go"] = 1

    def _death_message(self, k: int, code: int | None) -> str:
        rec = self.workers[k]
        error = rec["error"]
        process = self.processes[k]
        pid = process.pid if process is not None else "?"
        return f"tracking worker {k} (pid {pid}) {_exit_description(code)}" + (
            f": {error}" if error else ""
        )

    def _check_workers(self) -> None:
        """Detect dead or hung workers; restart them (with back-off if they keep failing)."""
        now = time.monotonic()
        for k, process in enumerate(self.processes):
            if self.stop_event.is_set():
                return
            if process is None:
                if now >= self.restart_at[k]:
                    self._spawn(k)
                continue
            code = process.poll()
            rec = self.workers[k]
            if code is None:
                state = rec["state"]
                if state == WorkerState.READY and not self.ready[k]:
                    self._release(k)
                elif (
                    state == WorkerState.STARTING
                    and now - self.spawned_at[k] > self.start_timeout_s * self.patience[k]
                ):
                    log.warning(
                        "tracking worker %d (pid %d) did not start within %.0f s; killing it "
                        "(its next start gets twice as long)",
                        k, process.pid, self.start_timeout_s * self.patience[k],
                    )
                    self.patience[k] *= 2  # a slow compile must not become a restart storm
                    process.kill()
                elif (
                    state == WorkerState.RUNNING
                    and time.time() - rec["heartbeat"] > self.worker_timeout_s * self.patience[k]
                ):
                    log.warning(
                        "tracking worker %d (pid %d) has not responded for %.1f s; killing it "
                        "(its successor gets twice as long)",
                        k, process.pid, time.time() - rec["heartbeat"],
                    )
                    self.patience[k] *= 2
                    process.kill()
                continue
            # dead
            message = self._death_message(k, code)
            was_ready = self.ready[k]
            self.ready[k] = False
            self.processes[k] = None
            self.restarts += 1
            if not was_ready:
                self.failures[k] += 1
            delay = 0.0 if was_ready else min(10.0, 0.5 * 2 ** (self.failures[k] - 1))
            self.restart_at[k] = now + delay
            log.warning(
                "%s; the frames it owed are dropped; restarting it%s",
                message, f" in {delay:.1f} s" if delay else "",
            )
            if delay == 0.0:
                self._spawn(k)

    # -- merging -------------------------------------------------------------------------
    def _run(self) -> None:
        last_check = 0.0
        last_mirror = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now - last_check > 0.05:
                    self._check_workers()
                    last_check = now
                progressed = self._merge()
                if now - last_mirror > 0.1:
                    self._mirror_counters()
                    last_mirror = now
                if not progressed:
                    self.stop_event.wait(0.001)
        except BaseException as exc:  # report, never die silently
            self.failure = f"collector failed: {type(exc).__name__}: {exc}"
            log.exception("tracking service collector failed")
            raise

    def _merge(self, budget: int = 256) -> bool:
        """Publish frames in order while their results are available; True if any were."""
        ring = self.track_ring
        assert ring is not None
        n = self.n_workers
        published = 0
        acquired = self.frames.count
        while published < budget:
            f = self.next_frame
            k = f % n
            entry = self._entry_for(k, f)
            if isinstance(entry, tuple):
                timestamp, item = entry
                m = int(item["n"])
                status = FrameStatus(int(item["status"]))
                ring.write_frame(f, timestamp, item["rows"][:m], status)
                self.next_frame = f + 1
                published += 1
                now = time.time()
                with self.stats_lock:  # health() sees counts that add up
                    if status == FrameStatus.TRACKED:
                        self.counts["tracked"] += 1
                        self.latencies.append((now, now - timestamp))
                    else:
                        reason = int(item["reason"])
                        self.counts["dropped"] += 1
                        self.counts["error" if reason == DropReason.ERROR else "behind"] += 1
                continue
            down = not self.ready[k] or f < self.start_frame[k]
            if entry == "missing":  # the worker's entries went past f (its ring lapped)
                self._publish_dropped(f, "worker" if down else "behind")
                published += 1
                continue
            if down:  # its worker died or is restarting: drop f once the camera wrote it
                if f >= acquired:
                    break
                self._publish_dropped(f, "worker")
                published += 1
                continue
            process = self.processes[k]
            if process is None or process.poll() is not None:
                self._check_workers()  # dead: its frames get dropped from now on
            break
        return published > 0

    def _entry_for(self, k: int, f: int) -> tuple[float, np.void] | str | None:
        """Worker ``k``'s entry for frame ``f``: (timestamp, entry), "missing" if its
        entries went past ``f`` without it, or None if not there yet."""
        out = self.outputs[k]
        while True:
            available = out.available_since(self.cursor[k])
            if len(available) == 0:
                return None
            index = available.start
            self.cursor[k] = index
            try:
                value, timestamp = out.read(index)
            except EntryOverwrittenError:
                self.cursor[k] = index + 1
                continue
            item = value[0]
            frame = int(item["frame"])
            if frame < f:  # already published (dropped here while the worker restarted)
                self.cursor[k] = index + 1
                continue
            if frame > f:
                return "missing"
            self.cursor[k] = index + 1
            return timestamp, item

    def _publish_dropped(self, f: int, reason: str) -> None:
        try:
            timestamp = float(self.frames.meta(f)["timestamp"])
        except EntryOverwrittenError:
            timestamp = math.nan
        rows = empty_rows(self.roi_ids.size)
        rows["bead_id"] = self.roi_ids
        assert self.track_ring is not None
        self.track_ring.write_frame(f, timestamp, rows, FrameStatus.DROPPED)
        self.next_frame = f + 1
        with self.stats_lock:
            self.counts["dropped"] += 1
            self.counts[reason] += 1

    # -- control record ------------------------------------------------------------------
    def write_rois(self, rois: np.ndarray, roi_size: int, generation: int) -> None:
        ctl = self.ctl
        m = self.max_beads
        ids = np.full(m, -1, np.int32)
        x0 = np.zeros(m, np.int32)
        y0 = np.zeros(m, np.int32)
        n = rois.shape[0]
        ids[:n], x0[:n], y0[:n] = rois["bead_id"], rois["x0"], rois["y0"]
        seq = int(ctl["roi_seq"])
        ctl["roi_seq"] = seq + 1  # odd: being written
        ctl["roi_size"] = roi_size
        ctl["n_rois"] = n
        ctl["roi_bead_id"] = ids
        ctl["roi_x0"] = x0
        ctl["roi_y0"] = y0
        ctl["roi_generation"] = generation
        ctl["roi_seq"] = seq + 2
        self.roi_ids = rois["bead_id"].astype(np.int32)

    def write_zlut(self, path: str, sha256: str, generation: int) -> None:
        ctl = self.ctl
        seq = int(ctl["zlut_seq"])
        ctl["zlut_seq"] = seq + 1  # odd: being written
        ctl["zlut_path"] = path
        ctl["zlut_sha256"] = sha256
        ctl["zlut_generation"] = generation
        ctl["zlut_seq"] = seq + 2

    def _latency_percentiles(self) -> tuple[float, float, int]:
        with self.stats_lock:
            pairs = np.array(self.latencies).reshape(-1, 2)
        values = pairs[pairs[:, 0] > time.time() - LATENCY_WINDOW_S, 1]
        if values.size == 0:
            return math.nan, math.nan, 0
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50), float(p99), int(values.size)

    def _mirror_counters(self) -> None:
        ctl = self.ctl
        ring = self.track_ring
        if ctl is None or ring is None:
            return
        first = ring.first_index
        seen = self.next_frame - first
        acquired = max(0, self.frames.count - first)
        p50, p99, _ = self._latency_percentiles()
        ctl["frames_acquired"] = acquired
        ctl["frames_seen"] = seen
        with self.stats_lock:
            counts = dict(self.counts)
        ctl["frames_tracked"] = counts["tracked"]
        ctl["frames_dropped"] = counts["dropped"]
        ctl["queue_depth"] = acquired - seen
        ctl["latency_p50_s"] = p50
        ctl["latency_p99_s"] = p99
        ctl["worker_restarts"] = self.restarts

    def health(self) -> TrackingHealth:
        ring, ctl = self.track_ring, self.ctl
        first = ring.first_index if ring is not None else 0
        with self.stats_lock:
            counts = dict(self.counts)
        seen = counts["tracked"] + counts["dropped"]
        acquired = max(0, self.frames.count - first)
        p50, p99, window = self._latency_percentiles()
        workers = []
        for k, rec in enumerate(list(self.workers)):
            process = self.processes[k]
            alive = process is not None and process.poll() is None
            workers.append(
                WorkerHealth(
                    index=k,
                    pid=process.pid if process is not None else 0,
                    alive=alive,
                    state=WorkerState(int(rec["state"])).name.lower() if alive else "dead",
                    frames_tracked=int(rec["frames_tracked"]),
                    frames_dropped=int(rec["frames_dropped"]),
                    kernel_errors=int(rec["kernel_errors"]),
                    busy_s=float(rec["busy_s"]),
                    zlut_generation=int(rec["zlut_generation"]),
                    error=rec["error"],
                )
            )
        return TrackingHealth(
            running=self.alive,
            first_frame=first,
            frames_acquired=acquired,
            frames_seen=seen,
            frames_tracked=counts["tracked"],
            frames_dropped=counts["dropped"],
            dropped_behind=counts["behind"],
            dropped_worker=counts["worker"],
            dropped_error=counts["error"],
            queue_depth=max(0, acquired - seen),
            latency_p50_s=p50,
            latency_p99_s=p99,
            latency_window=window,
            worker_restarts=self.restarts,
            roi_generation=int(ctl["roi_generation"]) if ctl is not None else 0,
            zlut_generation=int(ctl["zlut_generation"]) if ctl is not None else 0,
            workers=tuple(workers),
        )


# -- worker side --------------------------------------------------------------------------
class _RoiState:
    """A worker's copy of the ROI table and Z-LUT, refreshed between frames."""

    def __init__(self, ctl: SharedRecord, rec: SharedRecord, zlut_loader: Any) -> None:
        self.ctl = ctl
        self.rec = rec
        self.zlut_loader = zlut_loader
        self.roi_seq = -1
        self.size = 0
        self.ids = np.empty(0, np.int32)
        self.x0 = np.empty(0, np.int64)
        self.y0 = np.empty(0, np.int64)
        self.zlut_seq = 0
        self.zlut_generation = 0
        self.zlut: Any = None
        self.bead_index: np.ndarray | None = None  # LUT profile of each ROI (-1: none)

    def refresh(self) -> None:
        """Re-read the ROI table and the Z-LUT if the owner changed them."""
        ctl = self.ctl
        changed = False
        while ctl["roi_seq"] != self.roi_seq:
            seq = ctl["roi_seq"]
            if seq % 2:
                time.sleep(0)
                continue
            n = int(ctl["n_rois"])
            size = int(ctl["roi_size"])
            ids = ctl["roi_bead_id"][:n].astype(np.int32)
            x0 = ctl["roi_x0"][:n].astype(np.int64)
            y0 = ctl["roi_y0"][:n].astype(np.int64)
            if ctl["roi_seq"] == seq:
                self.roi_seq, self.size, self.ids, self.x0, self.y0 = seq, size, ids, x0, y0
                changed = True
        seq = ctl["zlut_seq"]
        if seq != self.zlut_seq and seq % 2 == 0:  # odd: being written
            path, sha = ctl["zlut_path"], ctl["zlut_sha256"]
            generation = ctl["zlut_generation"]
            if ctl["zlut_seq"] == seq:  # else changed meanwhile: next frame
                self.zlut_seq = seq
                self._load_zlut(generation, path, sha)
                changed = True
        if changed:
            self.bead_index = None
            if self.zlut is not None:
                lookup = {int(b): i for i, b in enumerate(self.zlut.bead_ids)}
                self.bead_index = np.array(
                    [lookup.get(int(b), -1) for b in self.ids], dtype=np.int64
                )

    def _load_zlut(self, generation: int, path: str, sha256: str) -> None:
        self.zlut_generation = generation
        self.zlut = None
        self.rec["error"] = ""
        if path:
            try:
                if _file_sha256(Path(path)) != sha256:
                    raise ValueError(f"Z-LUT file {path} changed since it was loaded")
                self.zlut = self.zlut_loader(path)
            except Exception as exc:  # z stays NaN; the owner sees the error
                self.rec["error"] = f"Z-LUT not loaded: {type(exc).__name__}: {exc}"[:2000]
        self.rec["zlut_generation"] = generation


class _Worker:
    """One tracking worker: frames ``k, k + N, ...`` from the frame ring to its output ring."""

    def __init__(
        self, ctl: SharedRecord, rec: SharedRecord, frames: FrameRing, out: SlotRing,
        k: int, parent_pid: int, track: Any, zlut_loader: Any,
    ) -> None:
        self.ctl, self.rec, self.frames, self.out = ctl, rec, frames, out
        self.k = k
        self.n = int(ctl["n_workers"])
        self.parent_pid = parent_pid
        self.track = track
        self.nm_per_px = float(ctl["nm_per_px"])
        self.state = _RoiState(ctl, rec, zlut_loader)
        self._window_cache: dict[tuple[int, tuple[int, ...], int], np.ndarray] = {}

    def should_quit(self) -> bool:
        return bool(self.ctl["quit"]) or os.getppid() != self.parent_pid

    def run(self) -> None:
        rec, frames = self.rec, self.frames
        n = self.n
        f = int(rec["start_frame"])
        while True:
            rec["heartbeat"] = time.time()
            if self.should_quit():
                return
            count = frames.count
            if f >= count:
                time.sleep(0.0005)
                continue
            max_lag = int(self.ctl["max_lag_frames"])
            oldest_ok = max(count - 1 - max_lag, frames.oldest())
            if f < oldest_ok:
                skip_to = f + -(-(oldest_ok - f) // n) * n
                self.state.refresh()
                for g in range(f, skip_to, n):
                    self._write_dropped(g, DropReason.BEHIND)
                f = skip_to
                rec["next_frame"] = f
                continue
            t0 = time.perf_counter()
            self._process(f)
            rec["busy_s"] = float(rec["busy_s"]) + time.perf_counter() - t0
            delay = float(self.ctl["worker_delay_s"])
            if delay > 0:
                time.sleep(delay)
            f += n
            rec["next_frame"] = f

    def _windows(self, f: int, view: np.ndarray, size: int) -> np.ndarray:
        """All size x size windows of frame ``f``'s slot (a strided view, cached per slot,
        extent and size: building one costs more than cropping a few ROIs)."""
        key = (f % self.frames.capacity, view.shape, size)
        windows = self._window_cache.get(key)
        if windows is None:
            if len(self._window_cache) > 4 * self.frames.capacity:
                self._window_cache.clear()
            windows = self._window_cache[key] = sliding_window_view(view, (size, size))
        return windows

    def _frame_timestamp(self, f: int) -> float:
        try:
            return float(self.frames.meta(f)["timestamp"])
        except EntryOverwrittenError:
            return math.nan

    def _write_dropped(self, f: int, reason: DropReason) -> None:
        state = self.state
        index, slot = self.out.begin_write()
        item = slot[0]
        item["frame"] = f
        item["status"] = FrameStatus.DROPPED
        item["reason"] = reason
        m = state.ids.size
        item["n"] = m
        rows = item["rows"]
        rows[:m] = empty_rows(m)
        rows["bead_id"][:m] = state.ids
        self.out.commit(index, self._frame_timestamp(f))
        self.rec.increment("frames_dropped")

    def _process(self, f: int) -> None:
        frames, state = self.frames, self.state
        try:
            meta = frames.meta(f)
            view = frames.frame_view(f)
        except EntryOverwrittenError:
            self._write_dropped(f, DropReason.OVERWRITTEN)
            return
        timestamp = float(meta["timestamp"])
        state.refresh()  # the ROI table and Z-LUT for this whole frame
        m, size = state.ids.size, state.size
        rows = empty_rows(m)
        rows["bead_id"] = state.ids
        if m:
            height, width = view.shape
            inside = (state.x0 + size <= width) & (state.y0 + size <= height)
            if size > min(height, width):
                stack = None
            else:
                windows = self._windows(f, view, size)
                ys = np.where(inside, state.y0, 0)
                xs = np.where(inside, state.x0, 0)
                stack = windows[ys, xs]  # (m, size, size) copy
            if not frames.is_valid(f):
                self._write_dropped(f, DropReason.OVERWRITTEN)
                return
            if stack is not None and np.any(inside):
                try:
                    self._track(stack, rows, inside)
                except Exception as exc:
                    self.rec.increment("kernel_errors")
                    self.rec["error"] = f"frame {f}: {type(exc).__name__}: {exc}"[:2000]
                    self._write_dropped(f, DropReason.ERROR)
                    return
        elif not frames.is_valid(f):
            self._write_dropped(f, DropReason.OVERWRITTEN)
            return
        index, slot = self.out.begin_write()
        item = slot[0]
        item["frame"] = f
        item["status"] = FrameStatus.TRACKED
        item["reason"] = DropReason.NONE
        item["n"] = m
        item["rows"][:m] = rows
        self.out.commit(index, timestamp)
        self.rec.increment("frames_tracked")

    def _track(self, stack: np.ndarray, rows: np.ndarray, inside: np.ndarray) -> None:
        state = self.state
        zlut, bead_index = state.zlut, state.bead_index
        x = np.full(stack.shape[0], np.nan)
        y = np.full(stack.shape[0], np.nan)
        z = np.full(stack.shape[0], np.nan)
        score = np.full(stack.shape[0], np.nan)
        groups: list[tuple[np.ndarray, Any, np.ndarray | None]] = []
        rest = inside
        if zlut is not None and bead_index is not None:
            with_lut = inside & (bead_index >= 0)
            if np.any(with_lut):
                groups.append((with_lut, zlut, bead_index[with_lut]))
                rest = inside & ~with_lut
        if np.any(rest):
            groups.append((rest, None, None))
        for mask, lut, idx in groups:
            sub = stack if bool(np.all(mask)) else stack[mask]
            result = self.track(sub, lut, bead_index=idx)
            x[mask] = result.x_px
            y[mask] = result.y_px
            if lut is not None:
                z[mask] = result.z_nm
            score[mask] = result.score
        p = self.nm_per_px
        rows["x_nm"] = (state.x0 + x) * p
        rows["y_nm"] = (state.y0 + y) * p
        rows["z_nm"] = z
        rows["score"] = score


def worker_main(
    control_name: str, record_name: str, frames_name: str, output_name: str, k: int,
    parent_pid: int,
) -> None:
    """Entry point of a tracking worker process."""
    # exit with the owner in every phase, even while numba compiles or a kernel runs
    exit_with_parent(parent_pid)
    ctl = SharedRecord.attach(control_name)
    rec = SharedRecord.attach(record_name)
    frames: FrameRing | None = None
    out: SlotRing | None = None
    rec["pid"] = os.getpid()
    try:
        frames = FrameRing.attach(frames_name)
        out = SlotRing.attach(output_name)
        from .track import track
        from .zlut import ZLUT

        _warm_up_kernels(frames.dtype)
        rec["heartbeat"] = time.time()
        rec["state"] = WorkerState.READY
        while not rec["go"]:
            rec["heartbeat"] = time.time()
            if ctl["quit"] or os.getppid() != parent_pid:
                return
            time.sleep(0.002)
        rec["state"] = WorkerState.RUNNING
        _Worker(ctl, rec, frames, out, k, parent_pid, track, ZLUT.load).run()
        rec["state"] = WorkerState.STOPPED
    except BaseException as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec["state"] = WorkerState.FAILED
        raise
    finally:
        for shared in (out, frames, rec, ctl):
            if shared is not None:
                shared.close()


def _warm_up_kernels(dtype: np.dtype) -> None:
    """Compile (or load from numba's cache) every kernel call a worker makes, before it
    takes frames: a compile in the frame loop stalls the worker for tens of seconds."""
    from .track import synthetic_bead, track, warmup
    from .zlut import build_zlut

    warmup(dtypes=(dtype,))
    # with a multi-bead Z-LUT the worker passes bead_index, which track() turns into a
    # read-only array: a kernel specialisation warmup() does not cover
    dz = np.linspace(-2.0, 2.0, 9)
    sweep = np.stack([synthetic_bead((64, 64), dz=d) for d in dz])
    stack = sweep.astype(dtype) if dtype.kind == "f" else np.round(sweep).astype(dtype)
    lut = build_zlut(stack, dz * 1000.0, nm_per_px=100.0, smooth_planes=0)
    track(stack, lut, bead_index=np.zeros(len(stack), np.int64))


def _main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="magscope tracking worker")
    parser.add_argument("--control", required=True)
    parser.add_argument("--worker-record", required=True)
    parser.add_argument("--frames", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(None if argv is None else list(argv))
    sys.path[:] = pickle.load(sys.stdin.buffer)
    worker_main(args.control, args.worker_record, args.frames, args.output, args.worker,
                args.parent)


if __name__ == "__main__":
    _main()
