"""The tracking service: worker processes that turn camera frames into track rows.

:class:`TrackingService` is the owner side; it lives in the RunEngine's process. Started,
it runs worker processes (:mod:`magscope_tracking._worker`; one per core by default;
frame ``i`` goes to worker ``i % n_workers``) and a collector thread
(:mod:`magscope_tracking._collector`) that merges their results in frame order into the
public :class:`~magscope_ipc.track_ring.TrackRing`: one entry per camera frame from the
frame the service started at, tracked or dropped, never missing.

Configuration (the ROI table, :mod:`magscope_tracking._roi_table`; the Z-LUT; options)
may be set before or while the service runs; the workers read it between frames
(:mod:`magscope_tracking._records`), so a change applies from one frame on, never within
one. Backpressure is explicit: a worker more than ``max_lag_frames`` behind the camera
skips ahead and writes the frames it skipped as dropped; a worker that dies or hangs is
reported (:meth:`TrackingService.health`, :mod:`magscope_tracking._health`) and
restarted, and the frames it owed are written as dropped. Workers exit by themselves when
their owner dies; the owner's segments are then stale and removed at the next start.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from magscope_ipc.rings import FrameRing
from magscope_ipc.shm import remove_stale_segments
from magscope_ipc.track_ring import TrackRing

from ._collector import Collector, emergency_cleanup
from ._health import TrackingHealth, TrackingServiceError
from ._recorder import TrackRecorder
from ._records import file_sha256
from ._roi_table import ROI_DTYPE, as_roi_table, validate_rois
from .zlut import ZLUT, ZLUTMismatchError

__all__ = ["WORKER_TIMEOUT_S", "TrackingService", "TrackingServiceError"]

#: Default time (s) a worker may go without a heartbeat before it is killed and restarted.
WORKER_TIMEOUT_S = 60.0


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
        self._collector: Collector | None = None
        self._finalizer: weakref.finalize | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the shared memory, start the workers (waiting until they are ready) and
        the collector. The track ring starts at the next frame the camera writes."""
        if self.running:
            return
        self.stop()
        remove_stale_segments(self.instance)
        collector = Collector(
            frame_ring=self.frame_ring_name, nm_per_px=self.nm_per_px,
            max_beads=self.max_beads, n_workers=self.n_workers, instance=self.instance,
            track_capacity=self.track_capacity, worker_timeout_s=self.worker_timeout_s,
            start_timeout_s=self.start_timeout_s, max_lag_frames=self._max_lag_frames,
            worker_delay_s=self._worker_delay_s,
        )
        self._finalizer = weakref.finalize(
            self, emergency_cleanup, collector.stop_event, collector.processes,
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

    def _require_running(self) -> Collector:
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

    def _live_collector(self) -> Collector | None:
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
                raise ZLUTMismatchError(
                    f"roi_size {size} px differs from the loaded Z-LUT's ROI size "
                    f"{self._zlut_roi_size} px ({self._zlut_path}); clear_zlut() first"
                )
            return self._publish_rois(rois, size)

    def _publish_rois(self, rois: np.ndarray, size: int) -> int:
        """Keep ``rois`` as the table and hand it to the workers (under ``self._lock``);
        returns the new ROI generation."""
        self._rois, self._roi_size = rois, size
        self._roi_generation += 1
        collector = self._live_collector()
        if collector is not None:
            collector.write_rois(rois, size, self._roi_generation)
        return self._roi_generation

    def sensor_shape(self) -> tuple[int, int]:
        """(height, width) px of the sensor (the frame ring's slots)."""
        return self._sensor_shape()

    def move_rois(self, old: Any, new: Any) -> tuple[int, ...]:
        """Move some beads' ROIs, safely beside other writers of the table (the XY lock's
        write; the bead ids stay).

        Row ``i`` of ``new`` (:data:`ROI_DTYPE`) applies only if its bead is still in the
        table at the origin of row ``i`` of ``old`` (so an edit made meanwhile, such as a
        bead moved or removed by hand, wins) and the table stays valid (inside the sensor,
        no overlap); otherwise that row is skipped. Takes effect from the next frame.

        :returns: the bead ids moved.
        """
        old_rows, new_rows = as_roi_table(old), as_roi_table(new)
        if old_rows.size != new_rows.size or np.any(old_rows["bead_id"] != new_rows["bead_id"]):
            raise ValueError("move_rois: old and new must list the same beads in the same order")
        with self._lock:
            size = self._roi_size
            if size is None or not new_rows.size:
                return ()
            table = self._rois.copy()
            shape = self._sensor_shape()
            moved: list[int] = []
            for before, after in zip(old_rows, new_rows, strict=True):
                hits = np.flatnonzero(table["bead_id"] == before["bead_id"])
                if hits.size == 0:
                    continue  # removed meanwhile
                where = int(hits[0])
                if (int(table["x0"][where]), int(table["y0"][where])) != (
                    int(before["x0"]), int(before["y0"])
                ):
                    continue  # moved meanwhile
                trial = table.copy()
                trial["x0"][where], trial["y0"][where] = after["x0"], after["y0"]
                try:
                    validate_rois(trial, size, shape, self.max_beads)
                except ValueError:
                    continue
                table = trial
                moved.append(int(before["bead_id"]))
            if moved:
                self._publish_rois(table, size)
            return tuple(moved)

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
        file = Path(path).absolute()
        if not file.is_file():
            raise FileNotFoundError(f"no Z-LUT file at {file}")
        zlut = ZLUT.load(file)
        sha = file_sha256(file)
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

    # -- recording -----------------------------------------------------------------------
    def start_recording(
        self, path: str | PurePath, bead_ids: Any, *,
        z_offsets: np.ndarray | None = None, flush_every: int = 16,
    ) -> TrackRecorder:
        """Open the HDF5 track file ``path`` with the columns ``bead_ids`` (sorted) and
        return its :class:`~magscope_tracking._recorder.TrackRecorder`: from then on the
        collector appends the frames asked for with ``recorder.capture(n)`` as it merges
        them. ``z_offsets``: nm added to each (sorted) bead's z. A recording still open is
        closed first (its unannounced rows dropped); one recording at a time."""
        collector = self._require_running()
        self.stop_recording()
        assert collector.track_ring is not None
        recorder = TrackRecorder(
            collector.track_ring, path, bead_ids, z_offsets=z_offsets, flush_every=flush_every,
            camera_count=lambda: int(collector.frames.count),
        )
        collector.recorder = recorder
        return recorder

    @property
    def recorder(self) -> TrackRecorder | None:
        """The open recording, if any."""
        collector = self._collector
        return collector.recorder if collector is not None else None

    def stop_recording(self) -> None:
        """Close the open recording (its unannounced rows dropped), if any. Idempotent."""
        collector = self._collector
        if collector is None:
            return
        recorder, collector.recorder = collector.recorder, None
        if recorder is not None:
            recorder.close()

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
