"""The shared records of the tracking service: their layouts and their one seqlock.

The owner (:class:`~magscope_tracking.service.TrackingService`) and its worker processes
share three kinds of record, all in ``/dev/shm``:

- the **control record** (:func:`control_dtype`): ROI table, Z-LUT file, options and the
  counters the collector mirrors for readers in other processes; one per service;
- a **worker record** (:data:`WORKER_DTYPE`) per worker: its state, heartbeat and counts;
- a **worker output entry** (:func:`output_dtype`) per frame, in the worker's own ring.

The ROI table and the Z-LUT file are each a group of fields that must be read together
(never the ids of one table with the origins of the next). They are written and read
under a seqlock: the writer makes the group's sequence field odd, writes the fields and
makes it even again (:func:`write_consistent`); a reader copies the fields between two
reads of an even, unchanged sequence field (:func:`read_consistent`). One writer (the
owner), any number of readers (the workers).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from magscope_ipc.shm import SharedRecord
from magscope_ipc.track_ring import TRACK_DTYPE


class WorkerState(enum.IntEnum):
    """Life cycle of a worker, as stored in its worker record."""

    STARTING = 0
    READY = 1  # kernels compiled, waiting for its first frame index
    RUNNING = 2
    STOPPED = 3
    FAILED = 4


def control_dtype(max_beads: int) -> np.dtype:
    """The control record shared by the owner and its workers (ROI arrays of ``max_beads``)."""
    return np.dtype(
        [
            ("quit", "<i8"),
            ("owner_pid", "<i8"),
            ("n_workers", "<i8"),
            ("nm_per_px", "<f8"),
            ("max_beads", "<i8"),
            # ROI table (seqlock roi_seq)
            ("roi_seq", "<i8"),
            ("roi_generation", "<i8"),  # counts accepted ROI tables (service lifetime)
            ("roi_size", "<i8"),  # px
            ("n_rois", "<i8"),
            ("roi_bead_id", "<i4", (max_beads,)),
            ("roi_x0", "<i4", (max_beads,)),  # px, sensor coordinates
            ("roi_y0", "<i4", (max_beads,)),
            # Z-LUT file (seqlock zlut_seq)
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
            ("dropped_behind", "<i8"),  # of frames_dropped: a worker was behind
            ("dropped_worker", "<i8"),  # ... its worker was dead or restarting
            ("dropped_error", "<i8"),  # ... the kernels raised
        ]
    )


#: One worker's record: written by the worker, read (and reset at spawn) by the collector.
WORKER_DTYPE = np.dtype(
    [
        ("pid", "<i8"),
        ("state", "<i8"),  # WorkerState
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
    """One worker output entry: a frame's rows (:data:`TRACK_DTYPE`), its
    :class:`~magscope_ipc.track_ring.FrameStatus` and :class:`DropReason`."""
    return np.dtype(
        [
            ("frame", "<i8"),
            ("status", "<i4"),
            ("reason", "<i4"),
            ("n", "<i4"),
            ("rows", TRACK_DTYPE, (max_beads,)),
        ]
    )


# -- the seqlock --------------------------------------------------------------------------
def write_consistent(record: SharedRecord, seq_field: str, values: Mapping[str, Any]) -> None:
    """Write the fields ``values`` of ``record`` as one group under the seqlock
    ``seq_field`` (odd while being written). Single writer only."""
    seq = int(record[seq_field])
    record[seq_field] = seq + 1
    for name, value in values.items():
        record[name] = value
    record[seq_field] = seq + 2


def read_consistent(
    record: SharedRecord, seq_field: str, fields: Iterable[str]
) -> tuple[int, dict[str, Any]] | None:
    """Copies of ``fields`` of ``record`` as one write of :func:`write_consistent` left
    them, with the sequence number they were read at; None while a write is under way or
    if one happened during the read (read again)."""
    seq = int(record[seq_field])
    if seq % 2:
        return None
    values = {name: record[name] for name in fields}  # arrays are copies
    if int(record[seq_field]) != seq:
        return None
    return seq, values


# -- the two groups -------------------------------------------------------------------------
@dataclass(frozen=True)
class RoiTable:
    """The ROI table as the workers see it: bead ids and ROI top-left (px), side (px)."""

    seq: int
    size: int
    ids: np.ndarray  # int32
    x0: np.ndarray  # int64, px
    y0: np.ndarray  # int64, px


def write_rois(ctl: SharedRecord, rois: np.ndarray, roi_size: int, generation: int) -> None:
    """Publish the ROI table ``rois`` (:data:`~magscope_tracking.ROI_DTYPE`) and its side
    ``roi_size`` (px) to the workers."""
    m = int(ctl["max_beads"])
    n = rois.shape[0]
    ids = np.full(m, -1, np.int32)
    x0 = np.zeros(m, np.int32)
    y0 = np.zeros(m, np.int32)
    ids[:n], x0[:n], y0[:n] = rois["bead_id"], rois["x0"], rois["y0"]
    write_consistent(ctl, "roi_seq", {
        "roi_size": roi_size, "n_rois": n, "roi_bead_id": ids, "roi_x0": x0, "roi_y0": y0,
        "roi_generation": generation,
    })


def read_rois(ctl: SharedRecord) -> RoiTable | None:
    """The published ROI table (None: being written, read again)."""
    got = read_consistent(ctl, "roi_seq", ("n_rois", "roi_size", "roi_bead_id", "roi_x0", "roi_y0"))
    if got is None:
        return None
    seq, v = got
    n = int(v["n_rois"])
    return RoiTable(
        seq=seq, size=int(v["roi_size"]), ids=v["roi_bead_id"][:n].astype(np.int32),
        x0=v["roi_x0"][:n].astype(np.int64), y0=v["roi_y0"][:n].astype(np.int64),
    )


def write_zlut(ctl: SharedRecord, path: str, sha256: str, generation: int) -> None:
    """Publish the Z-LUT file ``path`` ("" for none) with its SHA-256 to the workers."""
    write_consistent(
        ctl, "zlut_seq", {"zlut_path": path, "zlut_sha256": sha256, "zlut_generation": generation}
    )


def read_zlut(ctl: SharedRecord) -> tuple[int, str, str, int] | None:
    """(seq, path, sha256, generation) of the published Z-LUT file (None: being written)."""
    got = read_consistent(ctl, "zlut_seq", ("zlut_path", "zlut_sha256", "zlut_generation"))
    if got is None:
        return None
    seq, v = got
    return seq, v["zlut_path"], v["zlut_sha256"], int(v["zlut_generation"])


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's contents: a Z-LUT file is loaded only if it is unchanged."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class WorkerRecord:
    """One worker's record as another process reads it (no seqlock: each field is one
    atomic word; counters since the worker process started).

    ``state``: :class:`WorkerState` name in lower case; ``heartbeat``: UNIX s of its last
    loop iteration; ``busy_s``: s spent cropping and tracking; ``error``: its last error.
    """

    pid: int
    state: str
    heartbeat: float
    next_frame: int
    frames_tracked: int
    frames_dropped: int
    kernel_errors: int
    busy_s: float
    zlut_generation: int
    error: str


def read_worker(rec: SharedRecord) -> WorkerRecord:
    """The fields of a worker record (``trkwK``; attached read-only is enough)."""
    state = int(rec["state"])
    try:
        name = WorkerState(state).name.lower()
    except ValueError:
        name = f"state {state}"
    return WorkerRecord(
        pid=int(rec["pid"]), state=name, heartbeat=float(rec["heartbeat"]),
        next_frame=int(rec["next_frame"]), frames_tracked=int(rec["frames_tracked"]),
        frames_dropped=int(rec["frames_dropped"]), kernel_errors=int(rec["kernel_errors"]),
        busy_s=float(rec["busy_s"]), zlut_generation=int(rec["zlut_generation"]),
        error=str(rec["error"]),
    )
