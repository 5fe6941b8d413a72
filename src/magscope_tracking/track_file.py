"""Full-rate track tables in HDF5: every frame, every bead.

Layout (one file per capture; ``n`` frames, ``b`` beads, fixed for the file)::

    /entry/tracks/bead_id     (b,)     int32   stable bead ids, column order
    /entry/tracks/x_nm        (n, b)   float64 sensor coordinates, nm
    /entry/tracks/y_nm        (n, b)   float64
    /entry/tracks/z_nm        (n, b)   float64 from the Z-LUT (NaN without one)
    /entry/tracks/score       (n, b)   float32 match quality, 0..1
    /entry/tracks/frame_index (n,)     int64   camera frame index
    /entry/tracks/timestamp   (n,)     float64 frame time, UNIX s
    /entry/tracks/status      (n,)     int32   1 tracked, 2 dropped (rows NaN): see
                                               :class:`magscope_ipc.track_ring.FrameStatus`

Written in SWMR mode and flushed every ``flush_every`` frames, so Tiled and other
readers see the rows while a run is going. A file whose writer was killed (``kill -9``)
stays marked open for writing: h5py then opens it only with ``swmr=True``, as
:func:`read_track_file` does (``h5py.File(path, "r", swmr=True)``); Tiled reads it too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np

GROUP = "/entry/tracks"
FIELDS = ("x_nm", "y_nm", "z_nm", "score")
PER_FRAME = ("frame_index", "timestamp", "status")
DATASETS = {name: f"{GROUP}/{name}" for name in (*FIELDS, *PER_FRAME, "bead_id")}
_PER_FRAME_DTYPES = {"frame_index": "<i8", "timestamp": "<f8", "status": "<i4"}
_CHUNK_FRAMES = 256


def free_space_text(path: str | os.PathLike[str]) -> str:
    """'1.2 MB free of 8 MB on /mnt/data': the space left on the filesystem of the file
    ``path`` (for the message of a write that failed)."""
    folder = Path(path).parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return f"free space on {folder} unknown"
    return f"{usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.0f} MB on {folder}"


class TrackFileWriter:
    """Append per-frame rows of a fixed set of beads to an HDF5 track table."""

    def __init__(
        self, path: str | PurePath, bead_ids: Sequence[int] | np.ndarray, *, flush_every: int = 16
    ) -> None:
        import h5py

        ids = np.asarray(bead_ids, dtype=np.int32)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("a track file needs at least one bead id")
        if len(np.unique(ids)) != ids.size:
            raise ValueError(f"bead ids must be unique, got {ids.tolist()}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bead_ids = ids
        self.flush_every = max(1, int(flush_every))
        self.file = h5py.File(self.path, "w", libver="latest")
        b = ids.size
        self.file.create_dataset(DATASETS["bead_id"], data=ids)
        self._per_bead = {
            name: self.file.create_dataset(
                DATASETS[name], shape=(0, b), maxshape=(None, b),
                dtype="<f4" if name == "score" else "<f8", chunks=(_CHUNK_FRAMES, b),
                fillvalue=np.nan,
            )
            for name in FIELDS
        }
        self._per_frame = {
            name: self.file.create_dataset(
                DATASETS[name], shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,)
            )
            for name, dtype in _PER_FRAME_DTYPES.items()
        }
        self.file.swmr_mode = True
        self.frames_written = 0
        self._unflushed = 0

    def append(
        self,
        frame_index: np.ndarray,
        timestamp: np.ndarray,
        columns: dict[str, np.ndarray],
        status: np.ndarray | None = None,
    ) -> None:
        """Append ``k`` frames: ``frame_index``, ``timestamp`` and ``status`` (k,) (default
        all tracked), each field (k, b).

        Column order must be this file's ``bead_ids``.
        """
        k = int(np.asarray(frame_index).shape[0])
        if k == 0:
            return
        n = self.frames_written
        b = self.bead_ids.size
        for name, dset in self._per_bead.items():
            values = np.asarray(columns[name])
            if values.shape != (k, b):
                raise ValueError(f"{name}: expected shape {(k, b)} (frames, beads), got {values.shape}")
            dset.resize(n + k, axis=0)
            dset[n : n + k] = values
        if status is None:
            status = np.ones(k, np.int32)
        for name, data in (
            ("frame_index", frame_index), ("timestamp", timestamp), ("status", status)
        ):
            dset = self._per_frame[name]
            dset.resize(n + k, axis=0)
            dset[n : n + k] = data
        self.frames_written = n + k
        self._unflushed += k
        if self._unflushed >= self.flush_every:
            self.flush()

    def truncate(self, frames: int) -> None:
        """Drop every row after the first ``frames`` (rows no document announced)."""
        n = max(0, int(frames))
        if n >= self.frames_written:
            return
        for dset in (*self._per_bead.values(), *self._per_frame.values()):
            dset.resize(n, axis=0)
        self.frames_written = n
        self.flush()

    def flush(self) -> None:
        for dset in (*self._per_bead.values(), *self._per_frame.values()):
            dset.flush()
        self._unflushed = 0

    def close(self) -> None:
        if self.file.id.valid:
            self.flush()
            self.file.close()


def read_track_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every dataset of a track file as arrays (for analysis and tests)."""
    import h5py

    with h5py.File(path, "r", swmr=True) as f:
        return {name: f[dset][()] for name, dset in DATASETS.items()}
