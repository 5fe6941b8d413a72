"""A tracking worker process: camera frames in, one output entry per frame out.

Run as ``python -m magscope_tracking._worker`` by the collector
(:mod:`magscope_tracking._collector`), never by hand. Worker ``k`` of ``N`` tracks frames
``k, k + N, k + 2N, ...``: it reads each frame from the camera's frame ring (a zero-copy
view, checked afterwards against being overwritten), crops every ROI, runs
:func:`magscope_tracking.track`, converts to sensor nm and appends one entry per frame to
its own output ring (:func:`~magscope_tracking._records.output_dtype`). The ROI table and
the Z-LUT are re-read between frames (:mod:`magscope_tracking._records`' seqlock), so a
change applies from one frame on, never within one. A worker more than
``max_lag_frames`` behind the camera skips ahead and writes what it skipped as dropped.

Before it takes frames, a worker compiles (or loads from numba's cache) every kernel call
it makes (:func:`warm_up_kernels`). It exits by itself when its owner dies, in every phase
(a watchdog thread, so also while numba compiles).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from magscope_ipc.processes import exit_with_parent
from magscope_ipc.rings import EntryOverwrittenError, FrameRing, SlotRing
from magscope_ipc.shm import SharedRecord
from magscope_ipc.track_ring import FrameStatus, empty_rows

from ._health import DropReason
from ._records import WorkerState, file_sha256, read_rois, read_zlut
from ._warmup import synthetic_bead, warmup
from .track import track
from .zlut import ZLUT, build_zlut


class RoiState:
    """A worker's copy of the ROI table and Z-LUT, refreshed between frames."""

    def __init__(self, ctl: SharedRecord, rec: SharedRecord, zlut_loader: Callable[[str], Any]) -> None:
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
            table = read_rois(ctl)
            if table is None:  # being written
                time.sleep(0)
                continue
            self.roi_seq, self.size = table.seq, table.size
            self.ids, self.x0, self.y0 = table.ids, table.x0, table.y0
            changed = True
        if ctl["zlut_seq"] != self.zlut_seq:
            zlut = read_zlut(ctl)
            if zlut is not None:  # else being written: next frame
                self.zlut_seq, path, sha, generation = zlut
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
                if file_sha256(Path(path)) != sha256:
                    raise ValueError(f"Z-LUT file {path} changed since it was loaded")
                self.zlut = self.zlut_loader(path)
            except Exception as exc:  # z stays NaN; the owner sees the error
                self.rec["error"] = f"Z-LUT not loaded: {type(exc).__name__}: {exc}"[:2000]
        self.rec["zlut_generation"] = generation


class Worker:
    """One tracking worker: frames ``k, k + N, ...`` from the frame ring to its output ring."""

    def __init__(
        self, ctl: SharedRecord, rec: SharedRecord, frames: FrameRing, out: SlotRing,
        k: int, parent_pid: int, track: Callable[..., Any],
        zlut_loader: Callable[[str], Any],
    ) -> None:
        self.ctl, self.rec, self.frames, self.out = ctl, rec, frames, out
        self.k = k
        self.n = int(ctl["n_workers"])
        self.parent_pid = parent_pid
        self.track = track
        self.nm_per_px = float(ctl["nm_per_px"])
        self.state = RoiState(ctl, rec, zlut_loader)
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
        warm_up_kernels(frames.dtype)
        rec["heartbeat"] = time.time()
        rec["state"] = WorkerState.READY
        while not rec["go"]:
            rec["heartbeat"] = time.time()
            if ctl["quit"] or os.getppid() != parent_pid:
                return
            time.sleep(0.002)
        rec["state"] = WorkerState.RUNNING
        Worker(ctl, rec, frames, out, k, parent_pid, track, ZLUT.load).run()
        rec["state"] = WorkerState.STOPPED
    except BaseException as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec["state"] = WorkerState.FAILED
        raise
    finally:
        for shared in (out, frames, rec, ctl):
            if shared is not None:
                shared.close()


def warm_up_kernels(dtype: np.dtype) -> None:
    """Compile (or load from numba's cache) every kernel call a worker makes, before it
    takes frames: a compile in the frame loop stalls the worker for tens of seconds."""
    warmup(dtypes=(dtype,))
    # with a multi-bead Z-LUT the worker passes bead_index, which track() turns into a
    # read-only array: a kernel specialisation warmup() does not cover
    dz = np.linspace(-2.0, 2.0, 9)
    sweep = np.stack([synthetic_bead((64, 64), dz=d) for d in dz])
    stack = sweep.astype(dtype) if dtype.kind == "f" else np.round(sweep).astype(dtype)
    lut = build_zlut(stack, dz * 1000.0, nm_per_px=100.0, smooth_planes=0)
    track(stack, lut, bead_index=np.zeros(len(stack), np.int64))


def main(argv: Iterable[str] | None = None) -> None:
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
    main()
