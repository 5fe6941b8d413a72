"""The camera's acquisition loop, run in its own process.

The loop grabs frames from a :class:`FrameSource` (the simulator or a camera
SDK) at the requested frame rate, writes every frame into the shared-memory
frame ring (live view, tracking) and, while a plan captures, appends frames to
an HDF5 file. The :class:`~magscope_devices._camera.Camera` device steers it
through a small shared control block (:data:`CONTROL_DTYPE`); nothing else
crosses between the processes, so the frame rate never depends on the
RunEngine's event loop.

:class:`AcquisitionProcess` is the owner side: it creates the control block and
the frame ring, starts the child (a fresh interpreter running this module, so
nothing of the caller's ``__main__`` is re-imported: scripts, IPython and the
queueserver worker all work), and on :meth:`~AcquisitionProcess.stop`
(or interpreter exit) stops the child and unlinks the shared memory. The child
runs in its own session (the terminal's Ctrl-C pauses the RunEngine and never
reaches the camera) and exits by itself when its parent disappears.

A child that dies while the owner still wants it (killed, crashed) is restarted in
place by a watch thread of the owner: the control block (exposure, frame rate, gain,
sensor ROI) and the frame ring are kept, so readers (tracking, viewer) go on reading
the same ring; a capture that was running is abandoned and the plan that waited for it
fails with a clear error. The restart is logged and counted
(:attr:`AcquisitionProcess.restarts`).
"""

from __future__ import annotations

import argparse
import enum
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from magscope_ipc.processes import ChildProcess, describe_exit, exit_with_parent, spawn
from magscope_ipc.rings import FrameRing
from magscope_ipc.shm import SharedRecord, remove_stale_segments, segment_name

log = logging.getLogger(__name__)

#: HDF5 dataset paths inside a capture file.
FRAMES_DATASET = "/entry/data/data"
TIMESTAMPS_DATASET = "/entry/timestamps"
FRAME_INDEX_DATASET = "/entry/frame_index"


class AcqState(enum.IntEnum):
    """Life cycle of the acquisition process, as stored in the control block."""

    STARTING = 0
    IDLE = 1
    ACQUIRING = 2
    STOPPED = 3
    FAILED = 4


CONTROL_DTYPE = np.dtype(
    [
        ("state", "<i8"),
        ("pid", "<i8"),
        ("quit", "<i8"),
        ("acquire", "<i8"),  # 1: free-run into the frame ring
        ("exposure_s", "<f8"),
        ("frame_period_s", "<f8"),
        ("gain", "<f8"),
        ("roi", "<i8", (4,)),  # x, y, width, height in px (sensor coordinates)
        ("roi_generation", "<i8"),
        ("sensor_width", "<i8"),
        ("sensor_height", "<i8"),
        ("bit_depth", "<i8"),
        ("frames_acquired", "<i8"),
        # frames lost: the loop fell more than ``buffer_frames`` periods behind the sensor
        ("frames_late", "<i8"),
        # frames kept but delivered more than one period after their exposure started
        ("frames_delayed", "<i8"),
        ("buffer_frames", "<i8"),  # the driver's frame queue (frames), as on real cameras
        ("heartbeat", "<f8"),  # UNIX epoch s of the last loop iteration
        ("restarts", "<i8"),  # times the owner restarted a dead child in place
        ("capture_generation", "<i8"),  # bumped by the owner to open capture_path
        ("capture_ack", "<i8"),  # set by the child once that file is open
        ("capture_close_generation", "<i8"),
        ("capture_close_ack", "<i8"),
        ("capture_requested", "<i8"),  # frames requested into the open file (total)
        ("capture_written", "<i8"),  # frames written into the open file
        # frames of the open file announced in StreamDatum documents (set by the owner):
        # the file is cut back to these when it is closed, on every exit path
        ("capture_announced", "<i8"),
        ("capture_rewind_generation", "<i8"),  # bumped by the owner: drop the frames
        ("capture_rewind_ack", "<i8"),  # beyond capture_announced, cancel open requests
        ("capture_path", "S4096"),
        ("error", "S2048"),
    ]
)


class FrameSource(Protocol):
    """What the acquisition loop needs from a camera (simulated or SDK-driven)."""

    sensor_shape: tuple[int, int]  # (height, width) px
    dtype: np.dtype
    bit_depth: int

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        """Expose a full-sensor frame starting at ``t_s`` (UNIX s) into ``out`` (h, w)."""

    def close(self) -> None:
        """Release the camera."""


#: A child that dies this many times within ``RESTART_WINDOW_S`` (s) is left dead.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


class CameraProcessError(RuntimeError):
    """The acquisition process is not running or reported a failure."""


@dataclass(frozen=True)
class AcquisitionConfig:
    """Start-up settings of the acquisition process."""

    instance: str = "default"
    #: frames held in the frame ring; None: :func:`default_ring_capacity`
    ring_capacity: int | None = None
    exposure_s: float = 0.005
    frame_rate_hz: float = 100.0
    gain: float = 1.0
    start_acquiring: bool = True
    #: frames the camera driver queues while the host is late (pylon's default
    #: MaxNumBuffer is 10): a late loop catches up on them, beyond them frames are lost
    driver_buffer_frames: int = 10


#: the frame ring's span when none is configured (s of frames), its floor (frames) and
#: its memory cap (bytes; the floor wins where 64 frames are larger)
DEFAULT_RING_SECONDS = 2.0
MIN_RING_FRAMES = 64
DEFAULT_RING_MAX_BYTES = 512 * 2**20


def default_ring_capacity(frame_rate_hz: float, frame_bytes: int) -> int:
    """Frames the frame ring holds when the configuration names none.

    Two seconds of frames at ``frame_rate_hz`` (frames/s), at least 64 frames, and no
    more than 512 MiB of frames of ``frame_bytes`` (bytes) each unless 64 frames are more.
    The tracking workers may fall half the ring behind before they drop frames, so a
    host that stalls for up to a second (a busy two-core machine) loses nothing.
    """
    if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0):
        raise ValueError(f"frame_rate_hz must be a positive number (frames/s), got {frame_rate_hz}")
    if frame_bytes < 1:
        raise ValueError(f"frame_bytes must be at least 1 byte, got {frame_bytes}")
    span = math.ceil(DEFAULT_RING_SECONDS * frame_rate_hz)
    fits = DEFAULT_RING_MAX_BYTES // int(frame_bytes)
    return int(max(MIN_RING_FRAMES, min(span, fits)))


class AcquisitionProcess:
    """Owner of the camera process, its control block and its frame ring."""

    def __init__(
        self,
        source_factory: Callable[[], FrameSource],
        sensor_shape: tuple[int, int],
        dtype: np.dtype | type,
        bit_depth: int,
        config: AcquisitionConfig = AcquisitionConfig(),
    ) -> None:
        self.source_factory = source_factory
        self.sensor_shape = (int(sensor_shape[0]), int(sensor_shape[1]))
        self.dtype = np.dtype(dtype)
        self.bit_depth = int(bit_depth)
        self.config = config
        self.control: SharedRecord | None = None
        self.ring: FrameRing | None = None
        self.process: ChildProcess | None = None
        self._finalizer: weakref.finalize | None = None
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._lock = threading.RLock()
        #: times a dead child was restarted in place, and why the last one died
        self.restarts = 0
        self.last_failure = ""
        #: the failure behind the last restart until a plan has refused once on it
        #: (``magscope_plans._preflight``): the user hears of it before anything moves
        self.pending_failure = ""
        #: set when the child kept dying (``MAX_RESTARTS`` within ``RESTART_WINDOW_S``)
        #: and was left dead
        self.gave_up = False
        self._restart_times: list[float] = []

    @property
    def ring_capacity(self) -> int:
        """Frames of the frame ring: the configured count or :func:`default_ring_capacity`."""
        if self.config.ring_capacity is not None:
            return int(self.config.ring_capacity)
        height, width = self.sensor_shape
        return default_ring_capacity(self.config.frame_rate_hz, height * width * self.dtype.itemsize)

    # -- owner side ------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Create the shared memory, start the child and wait until it is ready."""
        if self.running:
            return
        remove_stale_segments(self.config.instance)
        self._cleanup_shared_memory()
        height, width = self.sensor_shape
        self.control = SharedRecord.create(segment_name(self.config.instance, "camctl"), CONTROL_DTYPE)
        self.ring = FrameRing.create_frames(
            segment_name(self.config.instance, "frames"),
            self.ring_capacity,
            height,
            width,
            self.dtype,
        )
        ctl = self.control
        ctl["exposure_s"] = self.config.exposure_s
        ctl["frame_period_s"] = 1.0 / self.config.frame_rate_hz
        ctl["gain"] = self.config.gain
        ctl["roi"] = (0, 0, width, height)
        ctl["sensor_width"] = width
        ctl["sensor_height"] = height
        ctl["bit_depth"] = self.bit_depth
        ctl["acquire"] = int(self.config.start_acquiring)
        ctl["buffer_frames"] = max(1, int(self.config.driver_buffer_frames))
        process = self._spawn()
        self._finalizer = weakref.finalize(
            self, _stop_and_unlink, self._watch_stop, process, ctl.segment.name,
            self.ring.segment.name,
        )
        self._wait_ready(timeout)
        self._watch_stop.clear()
        self.gave_up = False
        self._restart_times = []
        self._watch = threading.Thread(
            target=self._watch_child, name=f"magscope-camera-watch-{self.config.instance}",
            daemon=True,
        )
        self._watch.start()

    def _spawn(self) -> ChildProcess:
        assert self.control is not None and self.ring is not None
        # like multiprocessing's spawn: the child sees the parent's import path
        payload = pickle.dumps(list(sys.path)) + pickle.dumps(self.source_factory)
        self.process = spawn(
            "camera process",
            [
                sys.executable, "-m", "magscope_devices._acquisition",
                "--control", self.control.name, "--ring", self.ring.name,
                "--parent", str(os.getpid()),
            ],
            lifeline=False, stdin_data=payload,
        )
        return self.process

    def _wait_ready(self, timeout: float) -> None:
        ctl = self.control
        assert ctl is not None and self.process is not None
        deadline = time.monotonic() + timeout
        while ctl["state"] == AcqState.STARTING:
            if not self.process.alive():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise CameraProcessError(f"camera process did not start within {timeout} s")
            time.sleep(0.01)
        if ctl["state"] == AcqState.FAILED or not self.process.alive():
            message = self.failure_message()
            self.stop()
            raise CameraProcessError(message)

    def _watch_child(self, poll_s: float = 0.1) -> None:
        """Restart a child that died while it was wanted (see the module docstring)."""
        while not self._watch_stop.wait(poll_s):
            with self._lock:
                process, ctl = self.process, self.control
                if process is None or ctl is None or process.alive() or ctl["quit"]:
                    continue
                if self._watch_stop.is_set():
                    return
                reason = self.failure_message()
                old_pid = process.pid
                now = time.monotonic()
                self._restart_times = [
                    t for t in self._restart_times if now - t < RESTART_WINDOW_S
                ]
                if len(self._restart_times) >= MAX_RESTARTS:
                    self.gave_up = True
                    self.last_failure = reason
                    log.error(
                        "camera process (pid %d) %s; it died %d times within %.0f s, so it "
                        "is not restarted again (fix the cause, then reconnect the camera)",
                        old_pid, reason.removeprefix("camera process "), MAX_RESTARTS + 1,
                        RESTART_WINDOW_S,
                    )
                    return
                self._restart_times.append(now)
                try:
                    new_pid = self._restart_in_place()
                except Exception as exc:  # leave it dead; check_alive() says why
                    log.error("camera process %s; restarting it failed: %s", reason, exc)
                    self.last_failure = f"{reason}; restarting it failed: {exc}"
                    return
                self.restarts += 1
                self.last_failure = reason
                self.pending_failure = reason
                log.warning(
                    "camera process (pid %d) %s; restarted in place as pid %d with its "
                    "settings and frame ring kept (restart %d)",
                    old_pid, reason.removeprefix("camera process "), new_pid,
                    self.restarts,
                )

    def _restart_in_place(self) -> int:
        ctl = self.control
        assert ctl is not None
        # abandon a capture the dead child had open: the file stays as far as it got
        ctl["capture_ack"] = ctl["capture_generation"]
        ctl["capture_close_ack"] = ctl["capture_close_generation"]
        ctl["capture_requested"] = ctl["capture_written"]
        ctl["error"] = ""
        ctl["pid"] = 0
        ctl.increment("restarts")
        ctl["state"] = AcqState.STARTING
        process = self._spawn()
        if self._finalizer is not None:
            self._finalizer.detach()
        assert self.ring is not None
        self._finalizer = weakref.finalize(
            self, _stop_and_unlink, self._watch_stop, process, ctl.segment.name,
            self.ring.segment.name,
        )
        deadline = time.monotonic() + 60.0
        while ctl["state"] == AcqState.STARTING and process.alive():
            if time.monotonic() > deadline:
                raise CameraProcessError("the restarted camera process did not start in 60 s")
            time.sleep(0.01)
        if not process.alive() or ctl["state"] == AcqState.FAILED:
            raise CameraProcessError(self.failure_message())
        return process.pid

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.process is not None and self.process.alive()

    def failure_message(self) -> str:
        """Why the camera process is not running, for error messages."""
        error = self.control["error"] if self.control is not None else ""
        if self.process is None:
            return "camera process was never started (connect the Camera device first)"
        code = self.process.returncode
        if error:
            return f"camera process failed: {error}"
        if code is None:
            return "camera process is running"
        return f"camera process {describe_exit(code).replace('exit code', 'exited with code')}"

    def check_alive(self) -> None:
        """Raise :class:`CameraProcessError` if the child is gone."""
        if not self.running:
            raise CameraProcessError(self.failure_message())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (terminate, then kill) and unlink the shared memory. Idempotent."""
        self._watch_stop.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(timeout)
        self._watch = None
        with self._lock:
            if self.control is not None:
                try:
                    self.control["quit"] = 1
                except Exception:
                    pass
            if self.process is not None:
                # the child sees "quit" within a frame; SIGTERM/SIGKILL if it does not
                try:
                    self.process.process.wait(timeout)
                except Exception:
                    self.process.stop(timeout)
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            self._cleanup_shared_memory()

    def _cleanup_shared_memory(self) -> None:
        for shared in (self.ring, self.control):
            if shared is not None:
                shared.unlink()
                shared.close()
        self.ring = None
        self.control = None

    def segment_names(self) -> list[str]:
        """Names of the shared-memory segments this owner holds."""
        return [s.name for s in (self.control, self.ring) if s is not None]


def _stop_and_unlink(
    watch_stop: threading.Event, process: ChildProcess, *segment_names: str
) -> None:
    """Interpreter-exit / garbage-collection cleanup of an AcquisitionProcess."""
    watch_stop.set()  # no restart of the child we are about to kill
    process.stop(2.0, first_signal=signal.SIGKILL)
    for name in segment_names:
        Path("/dev/shm", name).unlink(missing_ok=True)


# -- child side --------------------------------------------------------------------------
class _CaptureFile:
    """Frames appended to an HDF5 file in SWMR mode, flushed frame by frame."""

    def __init__(self, path: str, shape: tuple[int, int], dtype: np.dtype) -> None:
        import h5py

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(path, "w", libver="latest")
        h, w = shape
        self.frames = self.file.create_dataset(
            FRAMES_DATASET, shape=(0, h, w), maxshape=(None, h, w), dtype=dtype, chunks=(1, h, w)
        )
        self.timestamps = self.file.create_dataset(
            TIMESTAMPS_DATASET, shape=(0,), maxshape=(None,), dtype="<f8", chunks=(1024,)
        )
        self.index = self.file.create_dataset(
            FRAME_INDEX_DATASET, shape=(0,), maxshape=(None,), dtype="<i8", chunks=(1024,)
        )
        self.file.swmr_mode = True
        self.shape = shape
        self.written = 0

    def append(self, frame: np.ndarray, timestamp: float, index: int) -> None:
        n = self.written
        if frame.shape != self.shape:
            raise CameraProcessError(
                f"frame shape {frame.shape} differs from the capture file's {self.shape}: "
                "the sensor ROI changed during a capture"
            )
        for dset, value in ((self.frames, frame), (self.timestamps, timestamp), (self.index, index)):
            dset.resize(n + 1, axis=0)
            dset[n] = value
            dset.flush()
        self.written = n + 1

    def truncate(self, frames: int) -> None:
        """Drop every frame after the first ``frames`` (frames no document announced)."""
        n = max(0, int(frames))
        if n >= self.written:
            return
        for dset in (self.frames, self.timestamps, self.index):
            dset.resize(n, axis=0)
            dset.flush()
        self.written = n

    def close(self, announced: int | None = None) -> None:
        """Close the file, first cutting it to the ``announced`` frames (if given), so it
        never holds a frame that no event describes (a trigger a pause, an abort or a
        crash interrupted)."""
        try:
            if announced is not None and self.file.id.valid:
                self.truncate(announced)
        finally:
            self.file.close()


def acquisition_main(
    control_name: str, ring_name: str, source_factory: Callable[[], FrameSource], parent_pid: int
) -> None:
    """Entry point of the camera process."""
    # exit with the owner also while the frame source starts (imports, compiles); the
    # loop below notices first and closes the capture file, cut to the announced frames
    exit_with_parent(parent_pid, grace_s=3.0)
    signal.signal(signal.SIGTERM, _raise_exit)  # SIGTERM ends the loop through `finally`
    ctl = SharedRecord.attach(control_name)
    ring = FrameRing.attach(ring_name)
    ctl["pid"] = os.getpid()
    capture: _CaptureFile | None = None
    source: FrameSource | None = None
    try:
        source = source_factory()
        height, width = source.sensor_shape
        scratch = np.zeros((height, width), dtype=ring.dtype)
        ctl["state"] = AcqState.IDLE
        next_t: float | None = None
        while not ctl["quit"]:
            now = time.time()
            ctl["heartbeat"] = now
            if os.getppid() != parent_pid:
                break  # the owner is gone: nobody will read or clean up after us
            capture = _serve_capture_requests(ctl, capture, ring.dtype)
            if not ctl["acquire"]:
                ctl["state"] = AcqState.IDLE
                next_t = None
                time.sleep(0.002)
                continue
            ctl["state"] = AcqState.ACQUIRING
            period = float(ctl["frame_period_s"])
            if next_t is None:
                next_t = now
            if now < next_t:
                time.sleep(min(next_t - now, 0.005))
                continue
            t, next_t, skipped = next_exposure(now, next_t, period, int(ctl["buffer_frames"]))
            if skipped:
                ctl.increment("frames_late", skipped)
            if now - t > period:
                ctl.increment("frames_delayed")
            x, y, w, h = (int(v) for v in ctl["roi"])
            full = (x, y, w, h) == (0, 0, width, height)
            index, slot = ring.begin_write()
            if full:
                source.grab(t, float(ctl["exposure_s"]), float(ctl["gain"]), slot)
                frame = slot
            else:
                source.grab(t, float(ctl["exposure_s"]), float(ctl["gain"]), scratch)
                slot[:h, :w] = scratch[y : y + h, x : x + w]
                frame = slot[:h, :w]
            ring.commit_frame(index, t, h, w)
            ctl.increment("frames_acquired")
            if capture is not None and capture.written < ctl["capture_requested"]:
                capture.append(frame, t, index)
                ctl["capture_written"] = capture.written
        ctl["state"] = AcqState.STOPPED
    except BaseException as exc:  # report anything, then exit non-zero
        ctl["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        ctl["state"] = AcqState.FAILED
        raise
    finally:
        if capture is not None:  # also when the owner died: cut to what was announced
            capture.close(int(ctl["capture_announced"]))
        if source is not None:
            source.close()
        ring.close()
        ctl.close()


def next_exposure(
    now: float, next_t: float, period: float, buffer_frames: int
) -> tuple[float, float, int]:
    """The exposure to deliver now, like a camera whose driver queues frames.

    The sensor starts an exposure every ``period`` s from ``next_t`` (UNIX s) on; the
    driver holds up to ``buffer_frames`` exposed frames the host has not taken yet. A
    host that is late takes the oldest queued frame, with its own exposure time; when
    more than ``buffer_frames`` are waiting the oldest are lost (counted as skipped).
    ``buffer_frames`` 1 is a camera without a queue: anything a period late is lost.

    Returns ``(t, next_t, skipped)``: the exposure start of the frame to deliver, the
    one after it, and the frames lost before it. Call only once ``now >= next_t``.
    """
    waiting = int((now - next_t) // period) + 1  # exposed and not yet taken, this included
    skipped = max(0, waiting - max(1, buffer_frames))
    t = next_t + skipped * period
    return t, t + period, skipped


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def _serve_capture_requests(
    ctl: SharedRecord, capture: _CaptureFile | None, dtype: np.dtype
) -> _CaptureFile | None:
    """Open, rewind or close the capture file when the owner asks (generation counters).

    Closing cuts the file to the frames the owner announced (``capture_announced``);
    rewinding does the same and cancels requests still open (a trigger a pause
    interrupted, repeated after the resume).
    """
    rewind_gen = ctl["capture_rewind_generation"]
    if rewind_gen != ctl["capture_rewind_ack"]:
        if capture is not None:
            capture.truncate(int(ctl["capture_announced"]))
            ctl["capture_written"] = capture.written
            ctl["capture_requested"] = capture.written
        ctl["capture_rewind_ack"] = rewind_gen
    close_gen = ctl["capture_close_generation"]
    if close_gen != ctl["capture_close_ack"]:
        if capture is not None:
            capture.close(int(ctl["capture_announced"]))
            capture = None
        ctl["capture_close_ack"] = close_gen
    gen = ctl["capture_generation"]
    if gen != ctl["capture_ack"]:
        if capture is not None:
            capture.close(int(ctl["capture_announced"]))
        x, y, w, h = (int(v) for v in ctl["roi"])
        capture = _CaptureFile(ctl["capture_path"], (h, w), dtype)
        ctl["capture_written"] = 0
        ctl["capture_requested"] = 0
        ctl["capture_announced"] = 0
        ctl["capture_ack"] = gen
    return capture



def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="magscope camera acquisition process")
    parser.add_argument("--control", required=True)
    parser.add_argument("--ring", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    stream = sys.stdin.buffer
    sys.path[:] = pickle.load(stream)
    source_factory = pickle.load(stream)
    acquisition_main(args.control, args.ring, source_factory, args.parent)


if __name__ == "__main__":
    _main()
