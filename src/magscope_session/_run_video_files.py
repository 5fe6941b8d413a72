"""A run's video read straight from its HDF5 files, not through the Tiled server.

Tiled serves a record's video from the HDF5 file the writer made (the asset of its
StreamResource: a ``file://`` URI and the dataset inside). Where that file is on a
filesystem this computer sees at the same path (the instrument's own disk, or a lab's
shared filesystem mounted alike on every node), reading it directly takes the server
out of the path: the bytes are the same, so the numbers are too.

:func:`with_file_reads` gives a :class:`~magscope_session._run_video.RunVideo` whose
images (and crop origins) come from the files, or None when any of them is not a single
readable local HDF5 file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from ._run_video import RunVideo

__all__ = ["HDF5Rows", "with_file_reads"]


@dataclasses.dataclass(frozen=True)
class HDF5Rows:
    """Rows of one dataset of an HDF5 file, read on indexing (``rows[start:stop]``), the
    file opened for that read only (a worker holds no file open between tasks).

    ``shape`` is the array as Tiled serves it; with ``event_axis`` Tiled adds an axis of
    length 1 after the rows (one image per event), which the file lacks: it is added
    here too, so the rows are the ones Tiled gives."""

    path: str
    dataset: str
    swmr: bool
    shape: tuple[int, ...]
    event_axis: bool = False

    def __getitem__(self, index: Any) -> np.ndarray:
        parts = index if isinstance(index, tuple) else (index,)
        if not self.event_axis:
            return self._read(parts)
        head, axis, rest = parts[0], (parts[1:2] or (slice(None),))[0], parts[2:]
        if not (axis == slice(None) or axis == 0 or axis == -1):
            raise IndexError(f"index {axis!r} of an axis of length 1")
        data = self._read((head, *rest))
        if isinstance(axis, slice):
            return np.expand_dims(data, 1 if isinstance(head, slice) else 0)
        return data

    def _read(self, index: tuple[Any, ...]) -> np.ndarray:
        with _open(self.path, self.swmr) as f:
            return np.asarray(f[self.dataset][index])

    def __len__(self) -> int:
        return int(self.shape[0])


def _open(path: str, swmr: bool) -> Any:
    """The HDF5 file at ``path``, read-only, without file locking, its compression filters
    (bitshuffle-lz4) registered."""
    import h5py
    import hdf5plugin  # noqa: F401 - registers the compression filters

    return h5py.File(path, "r", swmr=swmr, locking=False)


def _local_path(data_uri: str) -> str | None:
    parsed = urlparse(data_uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = unquote(parsed.path)
    return path if os.path.isfile(path) and os.access(path, os.R_OK) else None


def file_rows(array_client: Any) -> HDF5Rows | None:
    """The rows of a Tiled array served from one HDF5 file, or None when it is not (no
    data source, several files, not a local readable ``file://`` asset, not HDF5)."""
    try:
        sources = array_client.data_sources()
    except Exception:  # noqa: BLE001 - a server that does not say: read through Tiled
        return None
    if len(sources) != 1:
        return None
    source = sources[0]
    if source.mimetype != "application/x-hdf5" or len(source.assets) != 1:
        return None
    params = source.parameters or {}
    path = _local_path(source.assets[0].data_uri)
    dataset = params.get("dataset")
    if path is None or not dataset:
        return None
    served = tuple(int(n) for n in array_client.shape)
    swmr = bool(params.get("swmr"))
    try:
        with _open(path, swmr) as f:
            stored = tuple(int(n) for n in f[str(dataset)].shape)
    except (OSError, KeyError):
        return None
    if not stored or stored[0] < served[0]:
        return None  # not the array Tiled serves (a file rewritten since?)
    if stored[1:] == served[1:]:
        event_axis = False
    elif len(served) >= 2 and served[1] == 1 and stored[1:] == served[2:]:
        event_axis = True
    else:
        return None
    return HDF5Rows(path, str(dataset), swmr, served, event_axis)


def with_file_reads(video: RunVideo) -> RunVideo | None:
    """``video`` with its images and crop origins read from the HDF5 files, or None when
    they cannot all be (then read through Tiled)."""
    images = file_rows(video._images)
    if images is None:
        return None
    origin = None
    if video._origin is not None:
        origin = file_rows(video._origin)
        if origin is None:
            return None
    return dataclasses.replace(video, _images=images, _origin=origin)
