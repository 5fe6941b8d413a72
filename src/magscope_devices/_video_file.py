"""The video file of a run: camera frames or per-bead ROI crops in HDF5, one chunk per
frame, compressed; and the crop itself as a pure function.

A video file holds one kind of image per row (a row is one camera frame):

- **frames**: ``/entry/data/data`` (rows, height, width), the whole (sensor-ROI) frame;
- **crops**: ``/entry/data/data`` (rows, beads, size, size), every recorded bead's ROI,
  with ``/entry/crop_origin`` (rows, beads, 2) the top-left pixel (x0, y0; px, frame
  coordinates) each crop was cut at (-1, -1 where the bead was not in the ROI table or
  its ROI was off the frame: that crop is zeros) and ``/entry/bead_id`` (beads,).

Both have ``/entry/frame_index`` (rows,), the camera frame index (the track rows' frame
index: the two align by it) and ``/entry/timestamps`` (rows,), UNIX s. While the file is
written its datasets grow :data:`GROW_ROWS` rows at a time (rows not yet written have
frame index -1); closing cuts them to the rows written (or announced). Each row is one
HDF5 chunk, compressed with a :data:`CODECS` entry (measured in
``benchmarks/bench_codecs.py``). The file is in SWMR mode and flushed every
``flush_every`` rows, so what was written is readable after a crash or a write error
(``h5py.File(path, "r", swmr=True)``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from magscope_tracking.track_file import free_space_text

__all__ = [
    "BEAD_ID_DATASET",
    "CODECS",
    "CROP_ORIGIN_DATASET",
    "DEFAULT_CODEC",
    "FRAME_INDEX_DATASET",
    "IMAGES_DATASET",
    "TIMESTAMPS_DATASET",
    "VideoFile",
    "VideoWriteError",
    "crop_rois",
    "free_space_text",
]

#: rows the datasets grow by when full (cut to the rows written at close)
GROW_ROWS = 256

IMAGES_DATASET = "/entry/data/data"
FRAME_INDEX_DATASET = "/entry/frame_index"
TIMESTAMPS_DATASET = "/entry/timestamps"
CROP_ORIGIN_DATASET = "/entry/crop_origin"
BEAD_ID_DATASET = "/entry/bead_id"


def _bitshuffle_lz4() -> dict[str, Any]:
    import hdf5plugin

    return dict(hdf5plugin.Bitshuffle(cname="lz4"))


def _zstd() -> dict[str, Any]:
    import hdf5plugin

    return dict(hdf5plugin.Zstd(clevel=1))


def _gzip() -> dict[str, Any]:
    return {"compression": "gzip", "compression_opts": 1, "shuffle": True}


#: The codecs a video file may use: name -> h5py ``create_dataset`` keywords. Tiled
#: reads all of them (its HDF5 adapter imports hdf5plugin).
CODECS: dict[str, Callable[[], dict[str, Any]]] = {
    "bitshuffle-lz4": _bitshuffle_lz4,
    "zstd": _zstd,
    "gzip": _gzip,
    "none": dict,
}
DEFAULT_CODEC = "bitshuffle-lz4"


class VideoWriteError(OSError):
    """Writing the video file failed (a full disk, an I/O error); the message names the
    file and the free space left."""


def crop_rois(
    frame: np.ndarray, x0: np.ndarray, y0: np.ndarray, size: int,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``size`` x ``size`` crop at each (``x0``, ``y0``) (px, top-left, frame
    coordinates) from ``frame`` (rows, cols).

    Returns the crops (beads, size, size), in ``out`` if given, and their origins
    (beads, 2) as (x0, y0), with (-1, -1) and a zero crop where the ROI is not wholly
    inside the frame.
    """
    x0 = np.asarray(x0, np.int64)
    y0 = np.asarray(y0, np.int64)
    n = x0.size
    if out is None:
        out = np.empty((n, size, size), frame.dtype)
    elif out.shape != (n, size, size):
        raise ValueError(f"out has shape {out.shape}, expected {(n, size, size)}")
    height, width = frame.shape
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + size <= width) & (y0 + size <= height)
    origin = np.full((n, 2), -1, np.int32)
    out[~inside] = 0
    if inside.any():  # one gather of every window (a view of the frame, no copy until here)
        windows = np.lib.stride_tricks.sliding_window_view(frame, (size, size))
        out[inside] = windows[y0[inside], x0[inside]]
        origin[inside, 0] = x0[inside]
        origin[inside, 1] = y0[inside]
    return out, origin


def _why(exc: BaseException) -> str:
    """The operating system's reason in an HDF5 error ("No space left on device (errno
    28)"), else the error's text."""
    text = str(exc)
    found = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    if found:
        return f"{found.group(2)} (errno {found.group(1)})"
    return f"{type(exc).__name__}: {text}"


class VideoFile:
    """Rows appended to a new HDF5 video file (see the module docstring).

    :param path: the file to create (its folder is created; the file is the owner's only).
    :param image_shape: one row's image: (height, width) for frames, (beads, size, size)
        for crops.
    :param dtype: pixel type.
    :param codec: a :data:`CODECS` name.
    :param bead_ids: the crops' bead ids (crops only).
    :param flush_every: rows between flushes (a flush also at :meth:`flush` and close).
    """

    def __init__(
        self, path: str | os.PathLike[str], image_shape: Sequence[int], dtype: Any, *,
        codec: str = DEFAULT_CODEC, bead_ids: Sequence[int] | np.ndarray | None = None,
        flush_every: int = 8,
    ) -> None:
        import h5py

        if codec not in CODECS:
            raise ValueError(f"codec {codec!r} is not one of {sorted(CODECS)}")
        shape = tuple(int(v) for v in image_shape)
        self.crops = len(shape) == 3
        if self.crops and (bead_ids is None or len(bead_ids) != shape[0]):
            raise ValueError(f"crops of {shape[0]} beads need {shape[0]} bead ids")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.image_shape = shape
        self.codec = codec
        self.flush_every = max(1, int(flush_every))
        self.rows = 0
        #: rows the datasets have room for (grown by GROW_ROWS; cut to ``rows`` at close)
        self.capacity = 0
        #: rows on disk at the last successful flush (what a reader finds after a crash)
        self.flushed_rows = 0
        self.raw_bytes = 0
        self._unflushed = 0
        self._pending_index: list[int] = []
        self._pending_time: list[float] = []
        self._pending_origin: list[np.ndarray] = []
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)  # owner-only from the start; h5py then writes it
        try:
            self.file = h5py.File(self.path, "w", libver="latest")
            entry = self.file.require_group("entry")
            self.images = self.file.create_dataset(
                IMAGES_DATASET, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(1, *shape), **CODECS[codec](),
            )
            self.frame_index = self.file.create_dataset(
                FRAME_INDEX_DATASET, shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,),
                fillvalue=-1,
            )
            self.timestamps = self.file.create_dataset(
                TIMESTAMPS_DATASET, shape=(0,), maxshape=(None,), dtype="<f8", chunks=(4096,),
                fillvalue=np.nan,
            )
            self.origin = None
            if self.crops:
                assert bead_ids is not None
                entry.create_dataset(BEAD_ID_DATASET, data=np.asarray(bead_ids, "<i4"))
                self.origin = self.file.create_dataset(
                    CROP_ORIGIN_DATASET, shape=(0, shape[0], 2), maxshape=(None, shape[0], 2),
                    dtype="<i4", chunks=(max(1, 4096 // max(1, shape[0])), shape[0], 2),
                )
            entry.attrs["codec"] = codec
            entry.attrs["kind"] = "crops" if self.crops else "frames"
            self.file.swmr_mode = True
        except OSError as exc:
            raise VideoWriteError(self._message("creating", exc)) from exc

    def _message(self, doing: str, exc: BaseException) -> str:
        return f"{doing} {self.path} failed: {_why(exc)} ({free_space_text(self.path)})"

    def _datasets(self) -> list[Any]:
        sets = [self.images, self.frame_index, self.timestamps]
        return sets if self.origin is None else [*sets, self.origin]

    def append(
        self, image: np.ndarray, frame_index: int, timestamp: float,
        origin: np.ndarray | None = None,
    ) -> None:
        """Append one row (``origin``: the crops' (beads, 2) origins, crops only). A
        failure raises :class:`VideoWriteError` naming the file and the free space."""
        if image.shape != self.image_shape:
            raise ValueError(
                f"{self.path}: a row of shape {image.shape} does not fit the file's "
                f"{self.image_shape} (the sensor ROI or the ROI size changed mid-record)"
            )
        n = self.rows
        try:
            if n >= self.capacity:  # grown a block at a time: a resize per row costs more
                self.capacity = n + GROW_ROWS
                for dset in self._datasets():
                    dset.resize(self.capacity, axis=0)
            self.images[n] = image
        except Exception as exc:  # h5py raises OSError or RuntimeError for a failed write
            raise VideoWriteError(self._message("writing", exc)) from exc
        # the small per-row values go to the file at the next flush, a block at a time
        self._pending_index.append(int(frame_index))
        self._pending_time.append(float(timestamp))
        if self.origin is not None:
            self._pending_origin.append(np.asarray(origin, np.int32))
        self.rows = n + 1
        self.raw_bytes += image.nbytes
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Put the rows on disk (readers see them)."""
        try:
            start = self.rows - len(self._pending_index)
            if self._pending_index:
                self.frame_index[start: self.rows] = self._pending_index
                self.timestamps[start: self.rows] = self._pending_time
                if self.origin is not None:
                    self.origin[start: self.rows] = np.stack(self._pending_origin)
                self._pending_index, self._pending_time, self._pending_origin = [], [], []
            for dset in self._datasets():
                dset.flush()
        except Exception as exc:  # h5py raises OSError or RuntimeError for a failed write
            raise VideoWriteError(self._message("flushing", exc)) from exc
        self._unflushed = 0
        self.flushed_rows = self.rows

    def truncate(self, rows: int) -> None:
        """Keep only the first ``rows`` rows (the ones some document announced); the
        datasets end there (no room left for more)."""
        self.flush()  # the pending per-row values first
        n = min(max(0, int(rows)), self.rows)
        for dset in self._datasets():
            dset.resize(n, axis=0)
        self.rows = self.capacity = n
        self.flushed_rows = min(self.flushed_rows, n)
        self.flush()

    @property
    def unflushed(self) -> int:
        """Rows appended since the last flush."""
        return self._unflushed

    def stored_bytes(self) -> int:
        """Bytes the images take on disk (compressed)."""
        try:
            return int(self.images.id.get_storage_size())
        except Exception:  # noqa: BLE001 - a broken file: nothing to say
            return 0

    def close(self, announced: int | None = None) -> None:
        """Cut to ``announced`` rows (if given) and close. Idempotent."""
        if not self.file.id.valid:
            return
        try:
            self.truncate(self.rows if announced is None else announced)
        finally:
            self.file.close()
