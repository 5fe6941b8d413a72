"""Reading a run's camera frames (behind :func:`magscope_session.runs.camera_frames`).

A camera that is a detector of a run (e.g. ``bp.count([mic.camera, mic.tracker])``) has
its frames in the run as an HDF5-backed field ``<camera>`` of shape (events, frames per
event, rows, cols) and their times in ``<camera>-timestamp`` (events,) UNIX s. Frames
are fetched one at a time on request, so a long run is never read whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._run_tracks import _data_keys, _describe, _field, _start, _streams_to_search

__all__ = ["NoFramesError", "RunFrames", "camera_frames"]


class NoFramesError(ValueError):
    """The run holds no camera frames."""


def _frame_keys(node: Any) -> list[str]:
    """Fields of a stream that are camera frames: external, integer pixels, per event a
    stack (frames, rows, cols), with a ``<key>-timestamp`` beside them."""
    keys = _data_keys(node)
    out = []
    for key, info in keys.items():
        shape = info.get("shape") or []
        kind = np.dtype(info.get("dtype_numpy") or "f8").kind
        video = f"{key}-frame_index" in keys  # a video's crops (magscope_session._run_video)
        if (info.get("external") and len(shape) == 3 and kind in "ui"
                and f"{key}-timestamp" in keys and not video):
            out.append(key)
    return sorted(out)


@dataclasses.dataclass
class RunFrames:
    """The camera frames of one stream of a run.

    ``timestamp`` (n,) UNIX s of each frame (exposure start as the camera stamped it);
    ``shape`` (rows, cols) px; ``x0_px``, ``y0_px``: sensor position of the frames'
    top-left pixel (the camera's ``roi_x``, ``roi_y`` configuration; 0 when absent); :meth:`frame` fetches frame ``i`` (0 <= i < len) from the
    server; ``frames_per_event``: the frames each event holds (1 for a counted camera).
    """

    run_uid: str
    stream: str
    camera: str
    timestamp: np.ndarray
    shape: tuple[int, int]
    frames_per_event: int
    x0_px: int
    y0_px: int
    _array: Any = dataclasses.field(repr=False)

    def __len__(self) -> int:
        return int(self.timestamp.size)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (rows, cols), C-contiguous, as the camera wrote it."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} of {len(self)}")
        event, within = divmod(int(i), self.frames_per_event)
        return np.ascontiguousarray(self._array[event, within])

    def at_time(self, t: float) -> int:
        """Index of the newest frame taken at or before ``t`` (UNIX s); -1 if none."""
        return int(np.searchsorted(self.timestamp, t, side="right")) - 1


def camera_frames(run: Any, *, stream: str | None = None) -> RunFrames:
    """The camera frames of a run: of ``stream``, else of ``primary``, else of the first
    stream holding frames. Raises :class:`NoFramesError` when there are none."""
    start = _start(run)
    names = list(run)
    for name in _streams_to_search(names, stream, ("primary",)):
        node = run[name]
        keys = _frame_keys(node)
        if not keys:
            continue
        key = keys[0]
        array = _field(node, key)
        events, per_event, rows, cols = (int(s) for s in array.shape)
        stamps = np.asarray(_field(node, f"{key}-timestamp").read(), float).reshape(-1)
        if stamps.size != events * per_event:  # one stamp per event: frames share it
            stamps = np.repeat(stamps[:events], per_event)
        try:
            config = node.metadata["configuration"][key]["data"]
        except (KeyError, TypeError):
            config = {}
        return RunFrames(
            run_uid=str(start.get("uid")), stream=name, camera=key, timestamp=stamps,
            shape=(rows, cols), frames_per_event=per_event,
            x0_px=int(config.get(f"{key}-roi_x") or 0), y0_px=int(config.get(f"{key}-roi_y") or 0),
            _array=array,
        )
    where = f"stream {stream!r}" if stream is not None else f"any of its streams {names}"
    raise NoFramesError(
        f"{_describe(start)} has no camera frames in {where}: runs get them when the camera "
        "is one of the plan's detectors, e.g. bp.count([mic.camera, mic.tracker])"
    )
