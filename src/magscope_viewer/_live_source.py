"""What the viewer reads from a running microscope: frames, tracks and the ROI table.

:class:`LiveSource` attaches **read-only**, by instrument instance name, to the shared
memory of the process that owns the instrument (see :mod:`magscope_ipc.shm`):

=========  ==================================================  =========================
kind       what                                                read with
=========  ==================================================  =========================
frames     the camera's frame ring                             :meth:`newest_frame`
camctl     the camera's control block (sensor ROI, counters)   :meth:`health`
tracks     the tracking service's track ring                   :meth:`tracks_since`
trkctl     the tracking service's control record (ROI table,   :meth:`rois`, :meth:`health`,
           Z-LUT file, counters)                               :meth:`zlut_file`
trkwK      tracking worker K's record (state, counts)           :meth:`health`
axes       the microscope's axes record (positions, limits)    :meth:`axes`
=========  ==================================================  =========================

Every segment is mapped read-only (:meth:`magscope_ipc.shm.Segment.attach` with
``readonly=True``): a write raises in this process instead of reaching the owner's memory.
Reading never waits for a writer: the newest frame is copied into the viewer's own
buffer and checked with the ring's seqlock afterwards; if the camera lapped it meanwhile
the newest one then is taken instead; nothing queues.

The camera (``frames``, ``camctl``), the tracker (``tracks``, ``trkctl`` and the
``trkwK`` worker records of the same owner) and the axes (``axes``) are attached as
three groups, each to one owner process; a group whose owner exits or whose
segments vanish is dropped, and :meth:`LiveSource.poll` attaches again when a new owner
of the instance appears. :attr:`LiveSource.state` is ``"connected"`` while the camera
group is attached, else ``"disconnected"``.

No Qt here: the widgets (:mod:`magscope_viewer._window`) call this on their timer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from magscope_devices import AxesReadback, read_axes
from magscope_ipc.rings import EntryOverwrittenError, FrameRing
from magscope_ipc.shm import (
    SHM_DIR,
    Segment,
    SegmentInfo,
    SharedMemoryError,
    SharedRecord,
    list_segments,
    token_owner_alive,
)
from magscope_ipc.track_ring import TrackRing, TrackRows
from magscope_tracking import RoiTable, WorkerRecord, read_rois, read_worker, read_zlut

CONNECTED = "connected"
DISCONNECTED = "disconnected"

_CAMERA_KINDS = ("frames", "camctl")
_TRACKER_KINDS = ("tracks", "trkctl")
_AXES_KINDS = ("axes",)
_WORKER_KIND = re.compile(r"^trkw(\d+)$")
#: A worker whose heartbeat is older than this (s) is shown as not alive.
HEARTBEAT_TIMEOUT_S = 2.0


class InstanceNotFoundError(LookupError):
    """No running microscope of the requested instance name (the message lists those
    that run)."""


@dataclass(frozen=True)
class LiveFrame:
    """A frame copied out of the camera's ring.

    ``image`` (rows, cols) is a view of the viewer's own buffer: valid until the
    next-but-one :meth:`LiveSource.newest_frame` (two buffers alternate). ``index``: camera
    frame index; ``timestamp``: UNIX s (exposure start); ``x0_px``, ``y0_px``: sensor
    position of the image's top-left pixel (the camera's sensor ROI).
    """

    image: np.ndarray
    index: int
    timestamp: float
    x0_px: int
    y0_px: int


@dataclass(frozen=True)
class WorkerStatus:
    """One tracking worker as its record shows it: ``record`` (see
    :class:`magscope_tracking.WorkerRecord`) and ``alive`` (its process exists and its
    heartbeat is younger than :data:`HEARTBEAT_TIMEOUT_S`)."""

    index: int
    alive: bool
    record: WorkerRecord


@dataclass(frozen=True)
class Health:
    """Counters of the camera and the tracker (totals since they started; NaN / -1 where
    the group is not attached). ``frame_period_s``: the camera's requested period (s).

    Tracker: ``dropped_behind`` / ``dropped_worker`` / ``dropped_error`` split
    ``frames_dropped`` by reason; ``queue_depth``: frames acquired, not yet tracked;
    latencies in s; ``workers``: one :class:`WorkerStatus` each. Shared memory:
    ``frame_ring_capacity`` / ``track_ring_capacity`` (entries), ``track_count`` (next
    frame index of the track ring).
    """

    state: str
    tracker_attached: bool
    frames_acquired: int = -1
    frames_late: int = -1
    frame_period_s: float = float("nan")
    frames_tracked: int = -1
    frames_dropped: int = -1
    latency_p99_s: float = float("nan")
    nm_per_px: float = float("nan")
    owner_pid: int = -1
    latency_p50_s: float = float("nan")
    dropped_behind: int = -1
    dropped_worker: int = -1
    dropped_error: int = -1
    queue_depth: int = -1
    worker_restarts: int = -1
    frame_ring_capacity: int = -1
    track_ring_capacity: int = -1
    track_count: int = -1
    workers: tuple[WorkerStatus, ...] = ()


def running_instances() -> list[str]:
    """Instance names whose camera frame ring has a live owner, sorted."""
    return sorted({s.instance for s in list_segments() if s.kind == "frames" and s.owner_alive})


def _newest_alive(segments: list[SegmentInfo], kinds: tuple[str, ...]) -> dict[str, str] | None:
    """Segment names of ``kinds`` that one live owner holds (the newest such owner), or None."""
    by_owner: dict[tuple[int, int], dict[str, str]] = {}
    for seg in segments:
        if seg.kind in kinds and seg.owner_alive:
            by_owner.setdefault((seg.start_time, seg.pid), {})[seg.kind] = seg.name
    complete = [
        (owner, names) for owner, names in sorted(by_owner.items()) if set(names) == set(kinds)
    ]
    if not complete:
        return None
    owner, names = complete[-1]
    if "trkctl" in kinds:  # the workers' records of the same owner come along
        for seg in segments:
            if _WORKER_KIND.match(seg.kind) and (seg.start_time, seg.pid) == owner:
                names[seg.kind] = seg.name
    return names


@dataclass
class _Group:
    """Segments attached together (one owner): closed as a whole."""

    names: dict[str, str]
    token: str
    items: dict[str, object] = field(default_factory=dict)

    def alive(self) -> bool:
        return token_owner_alive(self.token) and all(
            (SHM_DIR / name).exists() for name in self.names.values()
        )

    def close(self) -> None:
        for item in self.items.values():
            try:
                item.close()  # type: ignore[attr-defined]
            except Exception:  # a mapping already gone: nothing else to release
                pass
        self.items.clear()


def _attach_group(names: dict[str, str]) -> _Group:
    token = next(iter(names.values())).split(".")[2]
    group = _Group(names=names, token=token)
    try:
        for kind, name in names.items():
            segment = Segment.attach(name, readonly=True)
            if kind == "frames":
                group.items[kind] = FrameRing(segment)
            elif kind == "tracks":
                group.items[kind] = TrackRing(segment)
            else:
                group.items[kind] = SharedRecord(segment)
    except BaseException:
        group.close()
        raise
    return group


_GROUPS = ("_camera", "_tracker", "_axes")


class LiveSource:
    """Read-only view of the running microscope of instance ``instance``.

    :param instance: the instrument instance name (``magscope ... --instance NAME``).
    :param require_running: raise :class:`InstanceNotFoundError` at once if no camera of
        ``instance`` runs (False: start disconnected and attach when one appears).
    :param check_interval_s: how often (s) :meth:`poll` looks at ``/dev/shm`` for owners
        that left or appeared.
    """

    def __init__(
        self, instance: str, *, require_running: bool = True, check_interval_s: float = 0.25
    ) -> None:
        self.instance = instance
        self.check_interval_s = check_interval_s
        self._camera: _Group | None = None
        self._tracker: _Group | None = None
        self._axes: _Group | None = None
        self._buffers: list[np.ndarray] = []
        self._next_buffer = 0
        self._last: LiveFrame | None = None
        self._last_check = 0.0
        self.lapped = 0  # newest frames overwritten while being copied (read again)
        self.reconnects = 0  # times a camera group was attached after the first
        self._attached_once = False
        self._attach()
        if require_running and self._camera is None:
            running = running_instances()
            listing = ", ".join(repr(name) for name in running) if running else "none"
            raise InstanceNotFoundError(
                f"no running microscope of instance {instance!r} (no live frame ring in "
                f"{SHM_DIR}); instances that run: {listing}"
            )

    # -- connection ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``"connected"`` while the camera's segments are attached, else ``"disconnected"``."""
        return CONNECTED if self._camera is not None else DISCONNECTED

    @property
    def tracker_attached(self) -> bool:
        return self._tracker is not None

    def poll(self, force: bool = False) -> str:
        """Drop groups whose owner left, attach groups of a new owner (at most every
        ``check_interval_s`` unless ``force``); returns :attr:`state`."""
        now = time.monotonic()
        if not force and now - self._last_check < self.check_interval_s:
            return self.state
        self._last_check = now
        for attr in _GROUPS:
            group = getattr(self, attr)
            if group is not None and not group.alive():
                group.close()
                setattr(self, attr, None)
                if attr == "_camera":
                    self._last = None
        if any(getattr(self, attr) is None for attr in _GROUPS):
            self._attach()
        return self.state

    def _attach(self) -> None:
        segments = list_segments(self.instance)
        for attr, kinds in (
            ("_camera", _CAMERA_KINDS), ("_tracker", _TRACKER_KINDS), ("_axes", _AXES_KINDS)
        ):
            if getattr(self, attr) is not None:
                continue
            names = _newest_alive(segments, kinds)
            if names is None:
                continue
            try:
                setattr(self, attr, _attach_group(names))
            except (SharedMemoryError, ValueError, OSError):
                continue  # vanished between listing and attaching, or half-created: later
            if attr == "_camera":
                self.reconnects += int(self._attached_once)
                self._attached_once = True

    def close(self) -> None:
        """Release every mapping (the owner's segments are left as they are)."""
        for attr in _GROUPS:
            group = getattr(self, attr)
            if group is not None:
                group.close()
                setattr(self, attr, None)
        self._last = None

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames ----------------------------------------------------------------------------
    def newest_frame(self, attempts: int = 3) -> LiveFrame | None:
        """The newest camera frame, copied into the viewer's own buffer (None: no frame yet,
        or disconnected). If the camera overwrote the frame while it was copied, the then
        newest is taken (up to ``attempts`` tries); the camera never waits. The same frame
        as last time is returned without copying again."""
        if self._camera is None:
            return None
        ring: FrameRing = self._camera.items["frames"]  # type: ignore[assignment]
        ctl: SharedRecord = self._camera.items["camctl"]  # type: ignore[assignment]
        if not self._buffers:
            self._buffers = [np.empty(ring.slot_shape, ring.dtype) for _ in range(2)]
        for _ in range(attempts):
            index = ring.count - 1
            if index < 0:
                return None
            if self._last is not None and self._last.index == index:
                return self._last
            try:
                meta = ring.meta(index)
                rows, cols = int(meta["rows"]), int(meta["cols"])
                roi = ctl["roi"]
                buffer = self._buffers[self._next_buffer]
                image = buffer[:rows, :cols]
                image[...] = ring.view(index)[:rows, :cols]
                if not ring.is_valid(index):
                    raise EntryOverwrittenError(index)
            except EntryOverwrittenError:
                self.lapped += 1
                continue
            self._next_buffer = 1 - self._next_buffer
            self._last = LiveFrame(
                image=image, index=index, timestamp=float(meta["timestamp"]),
                x0_px=int(roi[0]), y0_px=int(roi[1]),
            )
            return self._last
        return self._last

    @property
    def last_frame(self) -> LiveFrame | None:
        """The frame :meth:`newest_frame` last returned (no copy; None before the first
        or after a disconnect)."""
        return self._last

    # -- tracks and ROIs ---------------------------------------------------------------
    def tracks_since(self, k: int, max_frames: int | None = None) -> TrackRows | None:
        """Track-ring frames from camera frame ``k`` on (see
        :meth:`magscope_ipc.track_ring.TrackRing.rows_since`); None without a tracker."""
        if self._tracker is None:
            return None
        ring: TrackRing = self._tracker.items["tracks"]  # type: ignore[assignment]
        return ring.rows_since(k, max_frames)

    def track_count(self) -> int:
        """Next frame index the tracker will write (-1 without a tracker)."""
        if self._tracker is None:
            return -1
        return self._tracker.items["tracks"].count  # type: ignore[attr-defined]

    def rois(self, attempts: int = 5) -> RoiTable | None:
        """The tracker's published ROI table (bead ids, top-left px, side px), read under
        its seqlock; None without a tracker or while the owner keeps rewriting it."""
        if self._tracker is None:
            return None
        ctl: SharedRecord = self._tracker.items["trkctl"]  # type: ignore[assignment]
        for _ in range(attempts):
            table = read_rois(ctl)
            if table is not None:
                return table
        return None

    def nm_per_px(self) -> float:
        """Pixel size (nm) the tracker converts with (NaN without a tracker)."""
        if self._tracker is None:
            return float("nan")
        return float(self._tracker.items["trkctl"]["nm_per_px"])  # type: ignore[index]

    def health(self) -> Health:
        """The camera's and the tracker's counters (and each worker's record), as their
        owners last mirrored them."""
        values: dict[str, object] = {}
        if self._camera is not None:
            cam: SharedRecord = self._camera.items["camctl"]  # type: ignore[assignment]
            frames: FrameRing = self._camera.items["frames"]  # type: ignore[assignment]
            values.update(
                frames_acquired=int(cam["frames_acquired"]),
                frames_late=int(cam["frames_late"]),
                frame_period_s=float(cam["frame_period_s"]),
                owner_pid=int(self._camera.token.split("-")[0]),
                frame_ring_capacity=int(frames.capacity),
            )
        if self._tracker is not None:
            trk: SharedRecord = self._tracker.items["trkctl"]  # type: ignore[assignment]
            tracks: TrackRing = self._tracker.items["tracks"]  # type: ignore[assignment]
            fields = trk.dtype.names or ()
            values.update(
                frames_tracked=int(trk["frames_tracked"]),
                frames_dropped=int(trk["frames_dropped"]),
                latency_p50_s=float(trk["latency_p50_s"]),
                latency_p99_s=float(trk["latency_p99_s"]),
                nm_per_px=float(trk["nm_per_px"]),
                queue_depth=int(trk["queue_depth"]),
                worker_restarts=int(trk["worker_restarts"]),
                track_ring_capacity=int(tracks.capacity),
                track_count=int(tracks.count),
                workers=self._workers(),
            )
            for name in ("dropped_behind", "dropped_worker", "dropped_error"):
                if name in fields:  # owners from before the split by reason lack them
                    values[name] = int(trk[name])
        return Health(state=self.state, tracker_attached=self.tracker_attached, **values)  # type: ignore[arg-type]

    def _workers(self) -> tuple[WorkerStatus, ...]:
        assert self._tracker is not None
        now = time.time()
        out = []
        for kind, item in self._tracker.items.items():
            match = _WORKER_KIND.match(kind)
            if match is None:
                continue
            record = read_worker(item)  # type: ignore[arg-type]
            exists = record.pid > 0 and Path(f"/proc/{record.pid}").exists()
            fresh = now - record.heartbeat < HEARTBEAT_TIMEOUT_S
            alive = exists and (fresh or record.state in ("starting", "ready"))
            out.append(WorkerStatus(index=int(match.group(1)), alive=alive, record=record))
        return tuple(sorted(out, key=lambda w: w.index))

    # -- axes and the Z-LUT ----------------------------------------------------------------
    def axes(self) -> AxesReadback | None:
        """The microscope's axes (positions, setpoints, limits, moving flags) as the owner
        last mirrored them; None without an axes record (or while it is being written)."""
        if self._axes is None:
            return None
        return read_axes(self._axes.items["axes"])  # type: ignore[arg-type]

    def zlut_file(self) -> tuple[str, str, int] | None:
        """(path, sha256, generation) of the Z-LUT file the tracker has loaded (path ""
        for none); None without a tracker (or while the owner rewrites it)."""
        if self._tracker is None:
            return None
        ctl: SharedRecord = self._tracker.items["trkctl"]  # type: ignore[assignment]
        for _ in range(5):
            got = read_zlut(ctl)
            if got is not None:
                _, path, sha256, generation = got
                return path, sha256, generation
        return None
