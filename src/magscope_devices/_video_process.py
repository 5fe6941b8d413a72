"""The video writer: camera frames or bead ROI crops to an HDF5 video file, in its own
process.

The writer attaches by name to the camera's frame ring and, for crops, to the tracking
service's control record (the ROI table), and appends the rows asked for to a
:class:`~magscope_devices._video_file.VideoFile`: compression and disk writes never run
in the process of the RunEngine, the camera or the trackers. The
:class:`~magscope_devices._video.VideoRecorder` device steers it through a shared
control block (:data:`CONTROL_DTYPE`), as the camera is steered:

- ``open_generation`` (with ``path``, ``kind``, ``codec``, ``roi_size``, ``bead_ids``):
  open a new file (the ring and the ROI table are attached anew);
- ``request_rows``, ``next_frame``, ``every_n``: rows wanted in the file in all; the
  writer appends the frames ``next_frame``, ``next_frame + every_n``, ... until the file
  has them (a frame the ring lost before the writer read it is counted in
  ``frames_dropped`` and written as zeros with a NaN timestamp: one row per frame asked
  for, each with its frame index);
- ``rewind_generation``: cut the file to ``rows_announced`` and cancel the request;
- ``close_generation``: close the file, cut to ``rows_announced``;
- ``pre_trigger_frames``: while > 0, the writer keeps that many of the newest frames in
  its own memory, so a request may start before the ring's oldest frame (the window
  before a trigger, :func:`~magscope_plans.save_frames`).

A write that fails (a full disk, an I/O error) closes the file as far as it was flushed
and sets ``write_error`` (the file and the free space named); the process lives on and the
device fails the acquisition with that message. The child runs in its own session (no
Ctrl-C from the terminal) and exits when its parent goes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import enum
import faulthandler
import logging
import os
import shutil
import signal
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from magscope_ipc.processes import ChildProcess, describe_exit, exit_with_parent, spawn
from magscope_ipc.rings import EntryOverwrittenError, FrameRing
from magscope_ipc.shm import SharedRecord, segment_name

from ._video_file import VideoFile, VideoWriteError, crop_rois, free_space_text

log = logging.getLogger(__name__)

#: how much lower the writer's scheduling priority is than its owner's (``nice``): the
#: camera process and the tracking workers get a busy machine's cores first
WRITER_NICENESS = 5

#: s without a new row before the writer flushes what it has (rows reach the disk then,
#: and the device's acquisition ends only when they have)
IDLE_FLUSH_S = 0.05

#: most beads a crops file holds
MAX_CROP_BEADS = 512


class WriterState(enum.IntEnum):
    STARTING = 0
    IDLE = 1
    WRITING = 2
    STOPPED = 3
    FAILED = 4


class VideoKind(enum.IntEnum):
    FRAMES = 1
    CROPS = 2


CONTROL_DTYPE = np.dtype(
    [
        ("quit", "<i8"),
        ("pid", "<i8"),
        ("state", "<i8"),
        ("heartbeat", "<f8"),
        ("error", "S2000"),  # why the process failed
        ("frames_ring", "S128"),
        ("tracker_control", "S128"),
        # the file
        ("path", "S1024"),
        ("kind", "<i8"),
        ("codec", "S32"),
        ("roi_size", "<i8"),
        ("n_beads", "<i8"),
        ("bead_ids", "<i4", (MAX_CROP_BEADS,)),
        ("open_generation", "<i8"),
        ("open_ack", "<i8"),
        ("close_generation", "<i8"),
        ("close_ack", "<i8"),
        ("rewind_generation", "<i8"),
        ("rewind_ack", "<i8"),
        # the request
        ("request_rows", "<i8"),
        ("next_frame", "<i8"),
        ("every_n", "<i8"),
        ("pre_trigger_frames", "<i8"),
        ("min_free_bytes", "<i8"),  # the writer stops before the disk has less free
        # what happened
        ("rows_written", "<i8"),
        ("rows_flushed", "<i8"),  # rows on disk (a reader sees them)
        ("rows_announced", "<i8"),
        ("frames_dropped", "<i8"),
        ("raw_bytes", "<i8"),
        ("stored_bytes", "<i8"),
        ("write_seconds", "<f8"),  # time spent compressing and writing
        ("write_error", "S2000"),
    ]
)


class VideoProcessError(RuntimeError):
    """The video writer process is not running or failed."""


class VideoWriterProcess:
    """Owner side: the control block and the child process of one instrument
    ``instance`` (the frame ring and tracking control record it reads are named from it)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.control: SharedRecord | None = None
        self.process: ChildProcess | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    def start(self, timeout: float = 30.0) -> None:
        """Create the control block, start the child, wait until it is idle."""
        with self._lock:
            if self.running:
                return
            self._release()
            ctl = SharedRecord.create(segment_name(self.instance, "vidctl"), CONTROL_DTYPE)
            ctl["frames_ring"] = segment_name(self.instance, "frames")
            ctl["tracker_control"] = segment_name(self.instance, "trkctl")
            ctl["every_n"] = 1
            self.control = ctl
            self.process = spawn(
                "video writer",
                [sys.executable, "-m", "magscope_devices._video_process",
                 "--control", ctl.name, "--parent", str(os.getpid())],
                lifeline=False,
            )
            self._finalizer = weakref.finalize(
                self, _kill_and_unlink, self.process, ctl.segment.name
            )
            deadline = time.monotonic() + timeout
            while ctl["state"] == WriterState.STARTING and self.process.alive():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            if ctl["state"] != WriterState.IDLE:
                message = self.failure_message()
                self.stop()
                raise VideoProcessError(message)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def failure_message(self) -> str:
        if self.process is None:
            return "video writer was never started (connect the video recorder first)"
        error = self.control["error"] if self.control is not None else ""
        if error:
            return f"video writer failed: {error}"
        code = self.process.returncode
        if code is None:
            return "video writer is running"
        return f"video writer {describe_exit(code).replace('exit code', 'exited with code')}"

    def check_alive(self) -> None:
        if not self.running:
            raise VideoProcessError(self.failure_message())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (its open file is cut to the announced rows and closed) and
        unlink the control block. Idempotent."""
        if self.control is not None:
            self.control["quit"] = 1
        if self.process is not None:
            try:
                self.process.process.wait(timeout)
            except Exception:  # noqa: BLE001 - it did not see "quit": end it
                self.process.stop(timeout)
        self._release()

    def _release(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self.control is not None:
            self.control.unlink()
            self.control.close()
            self.control = None


def _kill_and_unlink(process: ChildProcess, control_name: str) -> None:
    """Interpreter-exit / garbage-collection cleanup."""
    process.stop(2.0)
    Path("/dev/shm", control_name).unlink(missing_ok=True)


# -- child side --------------------------------------------------------------------------
class _Writer:
    """The child's state: the open file, the rings it reads, the pre-trigger frames."""

    def __init__(self, ctl: SharedRecord) -> None:
        self.ctl = ctl
        self.file: VideoFile | None = None
        self.ring: FrameRing | None = None
        self.rois: SharedRecord | None = None
        #: frame index -> (timestamp, frame): the newest frames, while pre_trigger_frames > 0
        self.kept: collections.OrderedDict[int, tuple[float, np.ndarray]] = (
            collections.OrderedDict()
        )
        self.origin = np.zeros((0, 2), np.int32)
        #: HDF5 failed a write: the process must end without touching HDF5 again
        self.poisoned = False
        self.sized_at = 0.0  # when stored_bytes was last asked of HDF5 (monotonic s)
        self.wrote_at = 0.0  # when the last row was appended (monotonic s)
        self.kept_through = -1  # newest frame index copied into ``kept``
        self.bead_ids = np.zeros(0, np.int32)
        self.scratch: np.ndarray | None = None

    # -- attachments --------------------------------------------------------------------
    def attach_ring(self) -> FrameRing:
        if self.ring is None:
            self.ring = FrameRing.attach(self.ctl["frames_ring"])
        return self.ring

    def attach_rois(self) -> SharedRecord:
        if self.rois is None:
            try:
                self.rois = SharedRecord.attach(self.ctl["tracker_control"])
            except Exception as exc:
                raise VideoWriteError(
                    f"ROI crops need the tracking service ({self.ctl['tracker_control']}): {exc}"
                ) from exc
        return self.rois

    def detach(self) -> None:
        for shared in (self.ring, self.rois):
            if shared is not None:
                shared.close()
        self.ring = self.rois = None

    # -- requests -----------------------------------------------------------------------
    def serve(self) -> None:
        ctl = self.ctl
        rewind = ctl["rewind_generation"]
        if rewind != ctl["rewind_ack"]:
            if self.file is not None:
                self.file.truncate(int(ctl["rows_announced"]))
                ctl["rows_written"] = self.file.rows
                ctl["rows_flushed"] = self.file.flushed_rows
            ctl["request_rows"] = ctl["rows_written"]
            ctl["rewind_ack"] = rewind
        close = ctl["close_generation"]
        if close != ctl["close_ack"]:
            self.close_file()
            ctl["close_ack"] = close
        opened = ctl["open_generation"]
        if opened != ctl["open_ack"]:
            self.close_file()
            self.detach()
            ctl["write_error"] = ""
            for field in ("rows_written", "rows_flushed", "rows_announced", "request_rows",
                          "frames_dropped", "raw_bytes", "stored_bytes"):
                ctl[field] = 0
            ctl["write_seconds"] = 0.0
            try:
                self.open_file()
            except Exception as exc:  # noqa: BLE001 - told to the owner, the process lives
                ctl["write_error"] = f"{exc}"[:2000]
            ctl["open_ack"] = opened

    def open_file(self) -> None:
        ctl = self.ctl
        ring = self.attach_ring()
        kind = VideoKind(int(ctl["kind"]))
        index = max(ring.count - 1, 0)
        rows, cols = _frame_shape(ring, index)
        if kind == VideoKind.CROPS:
            self.attach_rois()
            n = int(ctl["n_beads"])
            self.bead_ids = np.asarray(ctl["bead_ids"][:n], np.int32)
            size = int(ctl["roi_size"])
            shape: tuple[int, ...] = (n, size, size)
            self.file = VideoFile(ctl["path"], shape, ring.dtype, codec=ctl["codec"],
                                  bead_ids=self.bead_ids)
        else:
            shape = (rows, cols)
            self.file = VideoFile(ctl["path"], shape, ring.dtype, codec=ctl["codec"])
        self.scratch = np.empty(shape, ring.dtype)

    def close_file(self, keep_all: bool = False) -> None:
        """Close the open file, cut to the announced rows (all rows with ``keep_all``:
        a record that failed announces them after)."""
        file, self.file = self.file, None
        if file is None:
            return
        try:
            file.close(None if keep_all else int(self.ctl["rows_announced"]))
            self.ctl["rows_written"] = self.ctl["rows_flushed"] = file.rows
        except Exception as exc:  # noqa: BLE001 - a broken file: say so, keep going
            if not self.ctl["write_error"]:
                self.ctl["write_error"] = f"closing {file.path} failed: {exc}"[:2000]

    # -- the pre-trigger frames ----------------------------------------------------------
    def keep_newest(self) -> None:
        keep = int(self.ctl["pre_trigger_frames"])
        if keep <= 0:
            if self.kept:
                self.kept.clear()
            return
        ring = self.attach_ring()
        start = max(self.kept_through + 1, ring.oldest(), ring.count - keep)
        for f in range(start, ring.count):
            try:
                frame, timestamp = ring.read_frame(f)
            except EntryOverwrittenError:
                continue
            self.kept[f] = (timestamp, frame)
            self.kept_through = f
        while len(self.kept) > keep:
            self.kept.popitem(last=False)

    # -- writing -----------------------------------------------------------------------
    def pump(self, budget: int = 64) -> bool:
        """Write up to ``budget`` requested rows that are available; True if any."""
        ctl, file = self.ctl, self.file
        if file is None or ctl["write_error"]:
            return False
        ring = self.attach_ring()
        wrote = False
        for _ in range(budget):
            if ctl["rows_written"] >= ctl["request_rows"]:
                break
            f = int(ctl["next_frame"])
            if f >= ring.count:
                break
            step = max(1, int(ctl["every_n"]))
            t0 = time.perf_counter()
            try:
                got = self._frame(ring, f)
                if got is None:  # lost before it was read: a row of zeros, no timestamp
                    ctl.increment("frames_dropped")
                    assert self.scratch is not None
                    self.scratch[...] = 0
                    self.origin = np.full((self.bead_ids.size, 2), -1, np.int32)
                    got = (self.scratch, float("nan"))
                self.check_space(file, got[0].nbytes)
            except VideoWriteError as exc:  # the disk is (nearly) full: stop cleanly
                ctl["write_error"] = str(exc)[:2000]
                self.close_file(keep_all=True)
                return wrote
            except Exception as exc:  # noqa: BLE001 - the ROI table, the ring
                ctl["write_error"] = f"writing {file.path} failed: {type(exc).__name__}: {exc}"[:2000]
                self.close_file(keep_all=True)
                return wrote
            try:
                file.append(got[0], f, got[1], self.origin if file.crops else None)
            except Exception as exc:  # noqa: BLE001 - HDF5 failed: a full disk, an I/O error
                ctl["write_error"] = (
                    str(exc) if isinstance(exc, VideoWriteError)
                    else f"writing {file.path} failed: {type(exc).__name__}: {exc}"
                )[:2000]
                self.close_broken(file)
                return wrote
            ctl["write_seconds"] = ctl["write_seconds"] + (time.perf_counter() - t0)
            ctl["rows_written"] = file.rows
            ctl["rows_flushed"] = file.flushed_rows
            ctl["raw_bytes"] = file.raw_bytes
            ctl["next_frame"] = f + step
            wrote = True
            self.wrote_at = time.monotonic()
        now = time.monotonic()
        if wrote and now - self.sized_at > 1.0:  # HDF5 walks every chunk to say: once a second
            ctl["stored_bytes"] = file.stored_bytes()
            self.sized_at = now
        return wrote

    def flush_idle(self) -> None:
        """Nothing to write: put the rows written so far on disk (readers see them, and a
        document announcing them never points past the file)."""
        file = self.file
        if file is None or not file.unflushed or time.monotonic() - self.wrote_at < IDLE_FLUSH_S:
            return
        try:
            file.flush()
            self.ctl["rows_flushed"] = file.flushed_rows
            self.ctl["stored_bytes"] = file.stored_bytes()
        except Exception as exc:  # noqa: BLE001 - a full disk, an I/O error
            self.ctl["write_error"] = (
                str(exc) if isinstance(exc, VideoWriteError)
                else f"flushing {file.path} failed: {type(exc).__name__}: {exc}"
            )[:2000]
            self.close_broken(file)

    def close_broken(self, file: VideoFile) -> None:
        """After a failed write (HDF5 saw the error): forget the file; ``rows_written``
        becomes the rows flushed before the failure (what a reader finds in it). HDF5 is
        left in a state where closing or reopening that file, even at interpreter exit,
        can crash it: the process ends at once (:attr:`poisoned`, ``os._exit``) and is
        started again for the next record; the file keeps what was flushed."""
        self.file = None
        self.ctl["rows_written"] = self.ctl["rows_flushed"] = file.flushed_rows
        self.poisoned = True

    def check_space(self, file: VideoFile, row_bytes: int) -> None:
        """Refuse the next row while the disk has less than ``min_free_bytes`` free
        beyond it: the file is then closed cleanly, every row in it readable."""
        reserve = int(self.ctl["min_free_bytes"])
        if reserve <= 0:
            return
        try:
            free = shutil.disk_usage(file.path.parent).free
        except OSError:
            return
        if free - row_bytes < reserve:
            raise VideoWriteError(
                f"writing {file.path} stopped: the disk is full ({free_space_text(file.path)}; "
                f"the writer keeps {reserve / 1e6:.0f} MB free); {file.rows} rows kept"
            )

    def _frame(self, ring: FrameRing, f: int) -> tuple[np.ndarray, float] | None:
        """Frame ``f`` (a copy for frames; for crops the crops, cut from the ring's slot
        and checked against the writer after) and its timestamp; None if it is lost."""
        if f < ring.oldest():
            return self._kept_frame(f)
        try:
            if self.file is not None and self.file.crops:
                meta = ring.meta(f)
                crops = self._crops(ring.frame_view(f))
                if not ring.is_valid(f):
                    return self._kept_frame(f)
                return crops, float(meta["timestamp"])
            return ring.read_frame(f)
        except EntryOverwrittenError:
            return self._kept_frame(f)

    def _kept_frame(self, f: int) -> tuple[np.ndarray, float] | None:
        got = self.kept.get(f)
        if got is None:
            return None
        timestamp, frame = got
        if self.file is not None and self.file.crops:
            return self._crops(frame), timestamp
        return frame, timestamp

    def _crops(self, frame: np.ndarray) -> np.ndarray:
        """The crops of the file's beads at their ROIs now (origins in ``self.origin``)."""
        from magscope_tracking._records import read_consistent

        assert self.file is not None and self.scratch is not None
        rois = self.attach_rois()
        got = None
        while got is None:
            got = read_consistent(rois, "roi_seq", ("n_rois", "roi_size", "roi_bead_id",
                                                    "roi_x0", "roi_y0"))
        _, table = got
        size = self.file.image_shape[1]
        if int(table["roi_size"]) != size:
            raise VideoWriteError(
                f"{self.file.path}: the ROI size changed from {size} to "
                f"{table['roi_size']} px during the record"
            )
        n = int(table["n_rois"])
        where = {int(b): i for i, b in enumerate(table["roi_bead_id"][:n])}
        x0 = np.full(self.bead_ids.size, -(10**9), np.int64)
        y0 = np.full(self.bead_ids.size, -(10**9), np.int64)
        for j, bead in enumerate(self.bead_ids):
            i = where.get(int(bead))
            if i is not None:
                x0[j], y0[j] = table["roi_x0"][i], table["roi_y0"][i]
        crops, self.origin = crop_rois(frame, x0, y0, size, out=self.scratch)
        return crops


def _frame_shape(ring: FrameRing, index: int) -> tuple[int, int]:
    """(rows, cols) of frame ``index`` (the sensor ROI it was taken with)."""
    if ring.count == 0:
        return tuple(int(v) for v in ring.slot_shape)  # type: ignore[return-value]
    meta = ring.meta(index)
    rows, cols = int(meta["rows"]), int(meta["cols"])
    if rows <= 0 or cols <= 0:
        return tuple(int(v) for v in ring.slot_shape)  # type: ignore[return-value]
    return rows, cols


def writer_main(control_name: str, parent_pid: int) -> None:
    """Entry point of the video writer process."""
    faulthandler.enable()  # a crash in HDF5 leaves its stack in the owner's log
    # the camera and the trackers first: the writer works from the ring's slack
    with contextlib.suppress(OSError):
        os.nice(WRITER_NICENESS)
    exit_with_parent(parent_pid, grace_s=2.0)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = SharedRecord.attach(control_name)
    ctl["pid"] = os.getpid()
    writer = _Writer(ctl)
    try:
        import h5py  # noqa: F401 - before saying ready: the first open is quick
        import hdf5plugin  # noqa: F401

        ctl["state"] = WriterState.IDLE
        while not ctl["quit"]:
            ctl["heartbeat"] = time.time()
            if os.getppid() != parent_pid:
                break
            writer.serve()
            try:
                writer.keep_newest()
            except Exception:  # noqa: BLE001 - no camera ring yet: nothing to keep
                writer.kept.clear()
            busy = writer.pump()
            if not busy:
                writer.flush_idle()
            if writer.poisoned:  # see _Writer.close_broken: no HDF5 cleanup, no atexit
                ctl["error"] = f"stopped after a failed write: {ctl['write_error']}"[:2000]
                ctl["state"] = WriterState.FAILED
                ctl.close()
                os._exit(3)
            ctl["state"] = WriterState.WRITING if writer.file is not None else WriterState.IDLE
            if not busy:
                time.sleep(0.001)
        ctl["state"] = WriterState.STOPPED
    except BaseException as exc:
        ctl["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        ctl["state"] = WriterState.FAILED
        raise
    finally:
        writer.close_file()
        writer.detach()
        ctl.close()


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="magscope video writer process")
    parser.add_argument("--control", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    writer_main(args.control, args.parent)


if __name__ == "__main__":
    _main()
