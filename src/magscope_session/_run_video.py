"""Reading a run's video (behind :func:`magscope_session.runs.read_video`).

A record with ``microscope.video`` in mode ``"roi_crops"`` or ``"frames_every_n"`` (and
:func:`~magscope_plans.save_frames`) puts rows of images in a stream (``video``,
``triggered_frames``): a field ``<video>`` of shape (rows, beads, size, size) for crops
or (rows, height, width) for frames, beside ``<video>-frame_index`` (the camera frame
index of each row, the key to the track rows), ``<video>-timestamp`` (UNIX s; NaN for a
frame the writer lost) and, for crops, ``<video>-crop_origin`` (rows, beads, 2) px.
Images are fetched one row at a time, so a long record is never read whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._run_tracks import _data_keys, _describe, _field, _start, _streams_to_search

__all__ = ["NoVideoError", "RunVideo", "read_video"]


class NoVideoError(ValueError):
    """The run holds no video rows."""


def _video_keys(node: Any) -> list[str]:
    """Fields of a stream that are video rows: external, integer pixels, with a
    ``<key>-frame_index`` beside them."""
    keys = _data_keys(node)
    out = []
    for key, info in keys.items():
        kind = np.dtype(info.get("dtype_numpy") or "f8").kind
        shape = list(info.get("shape") or [])
        if shape[:1] == [1]:  # one image per event: (1, *image)
            shape = shape[1:]
        if (info.get("external") and len(shape) in (2, 3) and kind in "ui"
                and f"{key}-frame_index" in keys):
            out.append(key)
    return sorted(out)


@dataclasses.dataclass
class RunVideo:
    """The video rows of one stream of a run.

    ``kind``: ``"crops"`` (each row: ``bead_ids`` crops, ``size`` px square, cut at
    :meth:`origin`) or ``"frames"`` (each row a whole frame); ``frame_index`` (rows,) the
    camera frame of each row; ``timestamp`` (rows,) UNIX s, NaN where the frame was lost.
    """

    run_uid: str
    stream: str
    key: str
    kind: str
    frame_index: np.ndarray
    timestamp: np.ndarray
    bead_ids: np.ndarray
    shape: tuple[int, ...]
    _images: Any = dataclasses.field(repr=False)
    _origin: Any = dataclasses.field(repr=False, default=None)
    _per_event: bool = dataclasses.field(repr=False, default=False)

    def _row(self, array: Any, i: int, *rest: int) -> np.ndarray:
        index = (int(i), 0, *rest) if self._per_event else (int(i), *rest)
        return np.asarray(array[index])

    def __len__(self) -> int:
        return int(self.frame_index.size)

    def image(self, i: int) -> np.ndarray:
        """Row ``i``: the frame (height, width) or the crops (beads, size, size)."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return np.ascontiguousarray(self._row(self._images, i))

    def images(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in one read: (rows, height, width) frames or (rows, beads,
        size, size) crops (one request to Tiled, where :meth:`image` makes one a row)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} of {len(self)}")
        block = np.asarray(self._images[start:stop])
        return np.ascontiguousarray(block[:, 0] if self._per_event else block)

    def origins(self, start: int, stop: int) -> np.ndarray:
        """:meth:`origin` of rows ``start:stop`` in one read: (rows, beads, 2) px."""
        if self._origin is None:
            raise ValueError(f"stream {self.stream!r} holds whole frames, not crops")
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} of {len(self)}")
        block = np.asarray(self._origin[start:stop])
        return block[:, 0] if self._per_event else block

    def crop(self, i: int, bead_id: int) -> np.ndarray:
        """Bead ``bead_id``'s crop (size, size) in row ``i`` (crops only)."""
        if self.kind != "crops":
            raise ValueError(f"stream {self.stream!r} holds whole frames, not crops")
        where = np.flatnonzero(self.bead_ids == int(bead_id))
        if where.size == 0:
            raise KeyError(f"bead {bead_id} is not in the crops (beads {self.bead_ids.tolist()})")
        return np.ascontiguousarray(self._row(self._images, i, int(where[0])))

    def origin(self, i: int) -> np.ndarray:
        """Where each crop of row ``i`` was cut: (beads, 2) top-left (x0, y0) px; -1 where
        the bead was not tracked (crops only)."""
        if self._origin is None:
            raise ValueError(f"stream {self.stream!r} holds whole frames, not crops")
        return self._row(self._origin, i)

    def rows_for(self, frame_index: np.ndarray) -> np.ndarray:
        """For each camera frame in ``frame_index`` (e.g. a :class:`RunTracks`'
        ``frame_index``), the video row of that frame, -1 where there is none: the
        alignment of images and track rows."""
        frames = np.asarray(frame_index, np.int64)
        if not len(self):
            return np.full(frames.shape, -1, np.int64)
        order = np.argsort(self.frame_index, kind="stable")
        sorted_frames = self.frame_index[order]
        pos = np.clip(np.searchsorted(sorted_frames, frames), 0, len(sorted_frames) - 1)
        return np.where(sorted_frames[pos] == frames, order[pos], -1).astype(np.int64)


def read_video(run: Any, *, stream: str | None = None) -> RunVideo:
    """The video of a run: of ``stream``, else of ``video``, else of the first stream
    holding video rows. Raises :class:`NoVideoError` when there are none."""
    start = _start(run)
    names = list(run)
    for name in _streams_to_search(names, stream, ("video",)):
        node = run[name]
        keys = _video_keys(node)
        if not keys:
            continue
        key = keys[0]
        images = _field(node, key)
        frame_index = np.asarray(_field(node, f"{key}-frame_index").read(), np.int64).reshape(-1)
        stamps = np.asarray(_field(node, f"{key}-timestamp").read(), float).reshape(-1)
        described = [int(v) for v in _data_keys(node)[key].get("shape") or []]
        # one image per event: described (1, *image), served (rows, 1, *image)
        shape = tuple(described[1:] if described[:1] == [1] and len(described) > 2
                      else described)
        per_event = len(images.shape) == len(shape) + 2
        crops = len(shape) == 3
        origin = _field(node, f"{key}-crop_origin") if crops else None
        bead_ids = np.zeros(0, np.int64)
        if crops:
            bead_ids = _crop_bead_ids(node, key, shape[0])
        n = min(frame_index.size, stamps.size, int(images.shape[0]))
        return RunVideo(
            run_uid=str(start.get("uid")), stream=name, key=key,
            kind="crops" if crops else "frames", frame_index=frame_index[:n],
            timestamp=stamps[:n], bead_ids=bead_ids, shape=shape, _images=images,
            _origin=origin, _per_event=per_event,
        )
    where = f"stream {stream!r}" if stream is not None else f"any of its streams {names}"
    raise NoVideoError(
        f"{_describe(start)} has no video in {where}: a record writes it when "
        "microscope.video.mode is 'roi_crops' or 'frames_every_n' (or a plan's video= "
        "option), and save_frames() in mode 'trigger_window'"
    )


def _crop_bead_ids(node: Any, key: str, n: int) -> np.ndarray:
    """The crops' bead ids (the recorder's ``crop_bead_ids`` configuration)."""
    try:
        config = node.metadata["configuration"]
    except (KeyError, TypeError):
        config = {}
    for device in config.values():
        data = device.get("data", {}) if isinstance(device, dict) else {}
        if f"{key}-crop_bead_ids" in data:
            ids = np.asarray(data[f"{key}-crop_bead_ids"], np.int64).reshape(-1)
            if ids.size == n:
                return ids
    raise NoVideoError(f"stream {node!r}: the crops' bead ids ({key}-crop_bead_ids) are "
                       "missing from its configuration")
