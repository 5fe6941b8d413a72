"""What the tracking service reports: its health counters, why frames are dropped, and
its error.

:class:`TrackingHealth` (with one :class:`WorkerHealth` per worker) is what
:meth:`TrackingService.health <magscope_tracking.service.TrackingService.health>` returns;
:class:`DropReason` is why a worker did not track a frame (in its output entries, counted
in the health's ``dropped_*`` counters).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

#: Latency percentiles are over the frames tracked in the last this many seconds.
LATENCY_WINDOW_S = 2.0


class TrackingServiceError(RuntimeError):
    """The tracking service could not start, or is not running."""


class DropReason(enum.IntEnum):
    """Why a worker did not track a frame (in its output entries)."""

    NONE = 0
    BEHIND = 1  # more than max_lag_frames behind the camera: skipped
    OVERWRITTEN = 2  # the camera overwrote the frame before or while it was read
    ERROR = 3  # the kernels raised


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
