"""The tracking service's collector: it runs the workers and merges their output.

::

    frame ring ──▶ worker 0 (frames 0, N, 2N, ...)  ──▶ output ring 0 ─┐
     (camera)  ──▶ worker 1 (frames 1, N+1, ...)    ──▶ output ring 1 ─┼─▶ collector ──▶ track ring
               ──▶ ...                                                  ┘   (thread)     (frame order)

A :class:`Collector` belongs to a running :class:`~magscope_tracking.service.TrackingService`
and lives in its process. It creates the shared memory (control record, one worker record
and output ring per worker, the public track ring), starts the workers
(``python -m magscope_tracking._worker``) and, in a thread, merges their entries in frame
order into the track ring: one entry per camera frame from the frame the service started
at, tracked or dropped, never missing.

It watches the workers: one that dies (killed, crashed) is reported (a log warning naming
the worker and its exit signal, and the health) and restarted, and the frames it owed are
written as dropped; one without a heartbeat for ``worker_timeout_s`` (or not started
within ``start_timeout_s``) is killed and restarted the same way, with twice the time the
next round, so a slow compile never becomes a restart storm. While one worker stalls, the
track ring waits for it (frame order), so the queue grows; the frames it then skips are
written as dropped.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from magscope_ipc.processes import spawn
from magscope_ipc.rings import EntryOverwrittenError, FrameRing, SlotRing
from magscope_ipc.shm import SharedRecord, segment_name
from magscope_ipc.track_ring import FrameStatus, TrackRing, empty_rows

from ._health import (
    LATENCY_WINDOW_S,
    DropReason,
    TrackingHealth,
    TrackingServiceError,
    WorkerHealth,
)
from ._recorder import TrackRecorder
from ._records import (
    WORKER_DTYPE,
    WorkerState,
    control_dtype,
    output_dtype,
    write_rois,
    write_zlut,
)

log = logging.getLogger("magscope_tracking.service")

#: The module a worker process runs.
WORKER_MODULE = "magscope_tracking._worker"
#: Seconds between two appends of a recording (the rows merged meanwhile go together).
RECORD_PERIOD_S = 0.003


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


def emergency_cleanup(
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


class Collector:
    """Owns the workers and segments of a running service; merges outputs in frame order.

    Holds no reference to its :class:`~magscope_tracking.service.TrackingService`, so an
    unreferenced service is collected and its finalizer (:func:`emergency_cleanup`)
    cleans up. Parameters: those of the service (see there).
    """

    def __init__(
        self, *, frame_ring: str, nm_per_px: float, max_beads: int, n_workers: int,
        instance: str, track_capacity: int, worker_timeout_s: float, start_timeout_s: float,
        max_lag_frames: int | None, worker_delay_s: float,
    ) -> None:
        self.instance = instance
        self.nm_per_px = nm_per_px
        self.max_beads = max_beads
        self.n_workers = n_workers
        self.track_capacity = track_capacity
        self.worker_timeout_s = worker_timeout_s
        self.start_timeout_s = start_timeout_s
        self.frame_ring_name = frame_ring
        self.initial_max_lag = max_lag_frames
        self.initial_delay = worker_delay_s
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
        self.recorder: TrackRecorder | None = None  # set and cleared by the service
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
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()
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
                sys.executable, "-m", WORKER_MODULE,
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
        last_record = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now - last_check > 0.05:
                    self._check_workers()
                    last_check = now
                progressed = self._merge()
                recorder = self.recorder
                if recorder is not None and now - last_record >= RECORD_PERIOD_S:
                    recorder.pump()  # the rows just merged go to the open track file
                    last_record = now
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
        """Publish the ROI table to the workers (from the next frame each starts)."""
        write_rois(self.ctl, rois, roi_size, generation)
        self.roi_ids = rois["bead_id"].astype(np.int32)

    def write_zlut(self, path: str, sha256: str, generation: int) -> None:
        """Publish the Z-LUT file to the workers ("" for none)."""
        write_zlut(self.ctl, path, sha256, generation)

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
        ctl["dropped_behind"] = counts["behind"]
        ctl["dropped_worker"] = counts["worker"]
        ctl["dropped_error"] = counts["error"]

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
