"""The instrument's health as one device: camera, tracking, shared memory, Tiled spool.

:func:`read_health` takes one :class:`HealthFigures` snapshot (plain Python, no event
loop: the session's health log calls it from its own thread); :class:`InstrumentHealth`
(``microscope.health``) gives every figure as a read-only signal, so a plan or the
``health`` stream (:func:`magscope_plans.health_wrapper`) reads them like any device.

Figures and units:

- camera: ``camera_rate_hz`` measured over the newest frames in the frame ring (up to
  1 s of them), ``camera_rate_set_hz``, ``frames_acquired`` and ``frames_late``
  (counters since the camera started; late frames are lost: more were waiting than the
  camera's driver queue holds);
- tracking: ``frames_tracked``, ``frames_dropped`` and their reasons
  (``dropped_behind``, ``dropped_worker``, ``dropped_error``), ``queue_depth`` (frames
  acquired, not yet tracked), ``latency_p50_s`` / ``latency_p99_s`` (s, frame timestamp
  to track row), ``workers_alive`` of ``workers``, ``worker_restarts``;
- shared memory: ``frame_ring_fill`` (fraction of the frame ring holding frames not yet
  tracked; at 1 the camera overwrites them) and ``track_ring_fill`` (fraction of the track
  ring holding rows a recording has not yet written to its file; at 1 rows are lost);
- Tiled: ``spool_documents`` (documents queued for Tiled, not yet sent) and
  ``spool_runs_unsent`` (runs in the spool not yet wholly in Tiled, the open run
  included); -1 when no spool is watched;
- video (``microscope.video``, figures of its open or last file; -1 / NaN while no
  record asked for images since the session started): ``video_rows_written``,
  ``video_frames_lost`` (frames the writer could not read before the camera overwrote
  them, written as zero rows), ``video_stored_mb`` (MB on disk) and
  ``video_write_mb_s`` (raw MB/s the writer sustains while busy: compressing and
  writing), and ``video_writer_alive`` (1, 0 after it died; -1 not started).

Counters not available (no tracker, a stopped service) read -1; rates and latencies NaN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from ophyd_async.core import StandardReadable, soft_signal_r_and_setter

if TYPE_CHECKING:
    from ._bead_tracker import BeadTracker
    from ._camera import Camera
    from ._video import VideoRecorder

__all__ = ["HealthFigures", "InstrumentHealth", "SpoolSource", "read_health"]

#: The measured frame rate is over at most this many of the newest frames, and this span.
RATE_MAX_FRAMES = 256
RATE_SPAN_S = 1.0


class SpoolSource(Protocol):
    """What the health needs of the session's Tiled writer."""

    @property
    def pending(self) -> int: ...

    def unsent_runs(self) -> int: ...


@dataclass(frozen=True)
class HealthFigures:
    """One reading of the instrument's health (see the module docstring for units)."""

    time: float  # UNIX s
    camera_rate_hz: float
    camera_rate_set_hz: float
    frames_acquired: int
    frames_late: int
    frames_tracked: int = -1
    frames_dropped: int = -1
    dropped_behind: int = -1
    dropped_worker: int = -1
    dropped_error: int = -1
    queue_depth: int = -1
    latency_p50_s: float = math.nan
    latency_p99_s: float = math.nan
    workers_alive: int = -1
    workers: int = -1
    worker_restarts: int = -1
    frame_ring_fill: float = math.nan
    track_ring_fill: float = math.nan
    spool_documents: int = -1
    spool_runs_unsent: int = -1
    video_writer_alive: int = -1
    video_rows_written: int = -1
    video_frames_lost: int = -1
    video_stored_mb: float = math.nan
    video_write_mb_s: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: (figure, type, units) of every signal of :class:`InstrumentHealth`.
SIGNALS: tuple[tuple[str, type, str | None], ...] = tuple(
    (
        f.name,
        float if f.type in ("float", float) else int,
        {
            "camera_rate_hz": "Hz", "camera_rate_set_hz": "Hz", "latency_p50_s": "s",
            "latency_p99_s": "s", "frame_ring_fill": "fraction", "track_ring_fill": "fraction",
            "video_stored_mb": "MB", "video_write_mb_s": "MB/s",
        }.get(f.name),
    )
    for f in fields(HealthFigures)
    if f.name != "time"
)


def recent_frame_rate(ring: Any, *, span_s: float = RATE_SPAN_S,
                      max_frames: int = RATE_MAX_FRAMES) -> float:
    """Frames per second over the newest frames of a frame ring (at most ``max_frames``
    of them, reaching back at most ``span_s`` s); NaN with fewer than 2 frames."""
    newest = ring.count - 1
    oldest = max(ring.oldest() + 1, newest - max_frames + 1)  # +1: never the slot being written
    if newest - oldest < 1:
        return math.nan
    try:
        t_new = float(ring.meta(newest)["timestamp"])
        lo, hi = oldest, newest - 1
        t_old = float(ring.meta(lo)["timestamp"])
        while t_new - t_old > span_s and hi - lo > 0:  # narrow to the last span_s s
            mid = (lo + hi + 1) // 2
            t_mid = float(ring.meta(mid)["timestamp"])
            if t_new - t_mid > span_s:
                lo, t_old = mid, t_mid
            else:
                hi = mid - 1
        if t_new - t_old > span_s and lo + 1 < newest:
            lo += 1
            t_old = float(ring.meta(lo)["timestamp"])
    except LookupError:  # overwritten while reading: the camera is far ahead
        return math.nan
    dt = t_new - t_old
    return (newest - lo) / dt if dt > 0 else math.nan


def read_health(
    camera: Camera, tracker: BeadTracker | None = None, spool: SpoolSource | None = None,
    video: VideoRecorder | None = None,
) -> HealthFigures:
    """Read the instrument's health now (no event loop needed; cheap: shared-memory
    counters and up to ~10 frame timestamps). Never raises for a dead camera or tracking
    service: their figures read -1 / NaN (a run's last health reading must not hide the
    error that ended it)."""
    values: dict[str, Any] = {
        "time": time.time(), "camera_rate_hz": math.nan, "camera_rate_set_hz": math.nan,
        "frames_acquired": -1, "frames_late": -1,
    }
    ctl = camera.process.control
    ring = camera.process.ring
    if ctl is not None and camera.process.running:  # a dead camera reads as not available
        period = float(ctl["frame_period_s"])
        values.update(
            camera_rate_hz=recent_frame_rate(ring) if ring is not None else math.nan,
            camera_rate_set_hz=1.0 / period if period > 0 else math.nan,
            frames_acquired=int(ctl["frames_acquired"]),
            frames_late=int(ctl["frames_late"]),
        )
    service = tracker.service if tracker is not None else None
    if service is not None and service.running:
        h = service.health()
        values.update(
            frames_tracked=h.frames_tracked, frames_dropped=h.frames_dropped,
            dropped_behind=h.dropped_behind, dropped_worker=h.dropped_worker,
            dropped_error=h.dropped_error, queue_depth=h.queue_depth,
            latency_p50_s=h.latency_p50_s, latency_p99_s=h.latency_p99_s,
            workers_alive=sum(w.alive for w in h.workers), workers=len(h.workers),
            worker_restarts=h.worker_restarts,
        )
        if ring is not None and ring.capacity:
            values["frame_ring_fill"] = min(1.0, max(0, h.queue_depth) / ring.capacity)
        assert tracker is not None
        values["track_ring_fill"] = tracker.recording_backlog_fraction()
    if spool is not None:
        values["spool_documents"] = int(spool.pending)
        values["spool_runs_unsent"] = int(spool.unsent_runs())
    if video is not None:
        values.update(_video_figures(video))
    return HealthFigures(**values)


def _video_figures(video: VideoRecorder) -> dict[str, Any]:
    writer = video.writer
    ctl = writer.control
    if ctl is None:  # no record asked for images yet: the writer never started
        return {}
    busy_s = float(ctl["write_seconds"])
    return {
        "video_writer_alive": int(writer.running),
        "video_rows_written": int(ctl["rows_written"]),
        "video_frames_lost": int(ctl["frames_dropped"]),
        "video_stored_mb": int(ctl["stored_bytes"]) / 1e6,
        "video_write_mb_s": int(ctl["raw_bytes"]) / 1e6 / busy_s if busy_s > 0 else math.nan,
    }


class InstrumentHealth(StandardReadable):
    """The health figures of :func:`read_health` as read-only signals, one per figure
    (named as the :class:`HealthFigures` fields). A read takes one snapshot for all of
    them. Not part of the microscope's readings: plans read it into the ``health``
    stream (:func:`magscope_plans.health_wrapper`).

    ``watch_spool(writer)`` adds the session's Tiled writer (its backlog figures)."""

    def __init__(
        self, camera: Camera, tracker: BeadTracker | None = None,
        video: VideoRecorder | None = None, name: str = "",
    ) -> None:
        self._parts = (camera, tracker, video)  # a tuple: not children of this device
        self._spool: SpoolSource | None = None
        self._snapshot: HealthFigures | None = None
        self._snapshot_at = -math.inf
        with self.add_children_as_readables():
            for figure, kind, units in SIGNALS:
                signal, _ = soft_signal_r_and_setter(
                    kind, getter=self._figure(figure), units=units
                )
                setattr(self, figure, signal)
        super().__init__(name=name)

    def watch_spool(self, spool: SpoolSource | None) -> None:
        """Report the backlog of ``spool`` (the session's Tiled writer); None: stop."""
        self._spool = spool

    def figures(self) -> HealthFigures:
        """A fresh snapshot (:func:`read_health`)."""
        camera, tracker, video = self._parts
        return read_health(camera, tracker, self._spool, video)

    def _figure(self, figure: str) -> Callable[[], Any]:
        def get() -> Any:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot_at > 0.05:
                self._snapshot, self._snapshot_at = self.figures(), now
            return getattr(self._snapshot, figure)

        return get
