"""Recording: the rows of requested frames go to an HDF5 track file where they are made.

A :class:`TrackRecorder` is opened by :meth:`TrackingService.start_recording
<magscope_tracking.service.TrackingService.start_recording>` on one track file
(:class:`~magscope_tracking.track_file.TrackFileWriter`, a fixed set of bead columns).
The service's collector thread, which writes the track ring, calls :meth:`TrackRecorder.pump`
every few ms: the frames requested with :meth:`TrackRecorder.capture` that are in the ring
are appended to the file (and kept in memory for the window statistics) as they are
merged, whatever the RunEngine's event loop is doing.

The announcing side (a detector's StreamDatum documents, in the RunEngine's loop) keeps
the file honest with three calls: :meth:`~TrackRecorder.flush_through` before it
announces rows (so a crash after the document never leaves it pointing at rows the file
lacks), :meth:`~TrackRecorder.announce` after, and :meth:`~TrackRecorder.drop_unannounced`
when a pause interrupts a request (the file is cut back to the announced rows). The file
is in SWMR mode: after a ``kill -9`` it is readable with ``h5py.File(path, "r",
swmr=True)``.

Every method is thread-safe (one lock; the collector holds it only while it appends).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import PurePath

import numpy as np

from magscope_ipc.track_ring import TrackRing

from .track_file import TrackFileWriter, free_space_text

__all__ = ["TrackRecorder", "TrackRecordingError"]

_XYZ = ("x_nm", "y_nm", "z_nm")

#: a recording stops when the disk has less free than this (bytes): room for HDF5 to
#: flush and close the track file (the video writer keeps more, so it stops first)
MIN_FREE_BYTES = 1_000_000


class TrackRecordingError(RuntimeError):
    """Rows could not be recorded (the file failed, or the track ring lapped the recorder)."""


class TrackRecorder:
    """Appends requested frames of a track ring to a track file (see the module docstring).

    :param ring: the track ring (the collector's own mapping).
    :param path: the HDF5 file to create.
    :param bead_ids: the file's bead columns (sorted here).
    :param z_offsets: nm added to each column's z (per sorted bead id), or None.
    :param flush_every: flush to disk every this many frames (also before announcing).
    :param camera_count: the camera's frame count now (the index of the next frame it
        writes), so a request starts at the camera's next frame even while the trackers
        are behind; None: the track ring's count.
    """

    def __init__(
        self, ring: TrackRing, path: str | PurePath, bead_ids: Sequence[int] | np.ndarray,
        *, z_offsets: np.ndarray | None = None, flush_every: int = 16,
        camera_count: Callable[[], int] | None = None,
    ) -> None:
        ids = np.sort(np.asarray(bead_ids, np.int32))
        self._lock = threading.Lock()
        self._ring = ring
        self._writer: TrackFileWriter | None = TrackFileWriter(path, ids, flush_every=flush_every)
        self.path = self._writer.path
        self.bead_ids = ids
        self.z_offsets = None if z_offsets is None else np.asarray(z_offsets, float)
        if self.z_offsets is not None and self.z_offsets.shape != ids.shape:
            self._writer.close()
            raise ValueError(f"z_offsets must have one value per bead ({ids.size}), got "
                             f"{self.z_offsets.shape}")
        self._camera_count = camera_count
        self._next = self._until = ring.count  # frames [next, until) go to the file
        self._first = self._next
        self._announced = 0
        self._rows_written = 0
        self._error: TrackRecordingError | None = None
        self._window: list[np.ndarray] = []  # per frame: (3, beads) x, y, z (nm)
        self._window_index: list[int] = []
        self._window_time: list[float] = []

    # -- the announcing side (RunEngine) --------------------------------------------------
    def capture(self, frames: int) -> None:
        """Record the next ``frames`` frames the camera makes from now on. A request still
        open (one a pause interrupted) is abandoned: the new one starts now."""
        with self._lock:
            self._check_open()
            # the camera's next frame: frames the trackers have not published yet were
            # exposed before the request (the magnet may not have stood where it does now)
            start = self._ring.count
            if self._camera_count is not None:
                start = max(start, int(self._camera_count()))
            self._first = start
            self._next, self._until = start, start + int(frames)
            self._window, self._window_index, self._window_time = [], [], []

    @property
    def first_frame(self) -> int:
        """Camera frame index the last request started at."""
        with self._lock:
            return self._first

    def stop_capture(self) -> None:
        """End the open request (the frames it still wanted are not recorded)."""
        with self._lock:
            self._until = self._next

    @property
    def busy(self) -> bool:
        """True while a request has frames not yet in the file. Raises
        :class:`TrackRecordingError` if recording failed."""
        with self._lock:
            if self._error is not None:
                raise self._error
            return self._next < self._until

    @property
    def backlog(self) -> int:
        """Rows of the open request in the track ring, not yet in the file (frames)."""
        with self._lock:
            return max(0, min(self._ring.count, self._until) - self._next)

    @property
    def rows_written(self) -> int:
        """Rows (frames) in the file."""
        return self._rows_written

    def flush_through(self, rows: int) -> None:
        """Rows up to ``rows`` may be announced next: put them on disk first."""
        with self._lock:
            if self._writer is not None and int(rows) > self._announced:
                self._writer.flush()

    def announce(self, rows: int) -> None:
        """``rows`` rows of the file are now announced (described by documents)."""
        with self._lock:
            self._announced = int(rows)

    def drop_unannounced(self) -> None:
        """End the open request and cut the file back to the announced rows: a request a
        pause interrupted must leave no row that the next one's documents would claim."""
        with self._lock:
            self._until = self._next
            writer = self._writer
            if writer is not None and writer.frames_written > self._announced:
                writer.truncate(self._announced)
                self._rows_written = writer.frames_written

    def window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The frames of the last request: (frame_index (frames,), timestamp (frames,)
        UNIX s, xyz (frames, 3, beads) nm, z with the offsets)."""
        with self._lock:
            n = len(self._window)
            xyz = np.stack(self._window) if n else np.zeros((0, 3, self.bead_ids.size))
            return (np.asarray(self._window_index[:n], np.int64),
                    np.asarray(self._window_time[:n], float), xyz)

    def close(self) -> None:
        """Drop the unannounced rows and close the file. Idempotent."""
        with self._lock:
            writer, self._writer = self._writer, None
            self._until = self._next
            if writer is None:
                return
            try:  # the file keeps only rows some document announced
                if writer.frames_written > self._announced:
                    writer.truncate(self._announced)
                self._rows_written = writer.frames_written
            finally:
                writer.close()

    @property
    def closed(self) -> bool:
        return self._writer is None

    def _check_open(self) -> None:
        if self._writer is None:
            raise TrackRecordingError(f"the recording to {self.path} is closed")

    def _check_space(self) -> None:
        """Stop before the disk is full (less than :data:`MIN_FREE_BYTES` free): HDF5
        must keep room to flush and close the file, or the file and the library break."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < MIN_FREE_BYTES:
            raise TrackRecordingError(
                f"writing {self.path} stopped: the disk is full ({free_space_text(self.path)}; "
                f"the recorder keeps {MIN_FREE_BYTES / 1e6:g} MB free); "
                f"{self._rows_written} rows kept"
            )

    # -- the collector side ---------------------------------------------------------------
    def pump(self) -> None:
        """Append the requested frames now in the ring (called by the collector thread).
        A failure is kept and raised to the announcing side (:attr:`busy`), never here."""
        with self._lock:
            writer = self._writer
            if writer is None or self._error is not None or self._next >= self._until:
                return
            batch = self._ring.rows_since(self._next, max_frames=self._until - self._next)
            try:
                if batch.lost:
                    raise TrackRecordingError(
                        f"{batch.lost} frames of tracks were overwritten before they reached "
                        f"{self.path} (the track ring is full)"
                    )
                if not len(batch):
                    return
                self._check_space()
                columns = batch.columns(self.bead_ids)
                if self.z_offsets is not None:
                    columns["z_nm"] += self.z_offsets
                writer.append(batch.frame_index, batch.timestamp, columns, status=batch.status)
            except Exception as exc:
                self._error = (
                    exc if isinstance(exc, TrackRecordingError)
                    else TrackRecordingError(f"writing {self.path} failed: "
                                             f"{type(exc).__name__}: {exc} "
                                             f"({free_space_text(self.path)})")
                )
                self._until = self._next
                return
            self._next = batch.next_index
            self._rows_written = writer.frames_written
            xyz = np.stack([columns[f] for f in _XYZ], axis=1)  # (frames, 3, beads)
            self._window.extend(xyz)
            self._window_index.extend(int(v) for v in batch.frame_index)
            self._window_time.extend(float(v) for v in batch.timestamp)
