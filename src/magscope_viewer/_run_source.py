"""A past run from Tiled as a source of the viewer's panels (review mode), without Qt.

:class:`RunSource` answers what the window asks a :class:`~magscope_viewer.LiveSource`
(``poll``, ``newest_frame``, ``tracks_since``, ``track_count``, ``rois``, ``nm_per_px``,
``health``, ``reconnects``, ``close``), but from a run read with
:mod:`magscope_session.runs` (:func:`~magscope_session.runs.read_tracks`,
:func:`~magscope_session.runs.camera_frames`), up to a **position** the user scrubs:
position ``p`` (0 .. :attr:`RunSource.n_positions` - 1) is the ``p``-th recorded track
frame (or camera frame, for a run without tracks). The image is the newest camera frame
taken at or before that frame's time; the traces hold the tracks up to it. Moving the
position back counts as a "reconnect", so the window starts its trace history again.

Times are UNIX s; positions nm; pixel coordinates are sensor px.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from magscope_ipc.track_ring import TRACK_DTYPE, FrameStatus, TrackRows
from magscope_session.runs import (
    NoFramesError,
    NoTracksError,
    RunFrames,
    RunTracks,
    camera_frames,
    read_tracks,
    run_summary,
)
from magscope_tracking import RoiTable

from ._live_source import CONNECTED, Health, LiveFrame

REVIEW = "review"


def _track_rows(tracks: RunTracks) -> np.ndarray:
    """The run's tracks as track-ring rows (frames, beads) of :data:`TRACK_DTYPE`."""
    n, beads = tracks.x_nm.shape
    rows = np.zeros((n, beads), TRACK_DTYPE)
    rows["bead_id"] = tracks.layout.bead_ids.astype(np.int32)[None, :]
    rows["x_nm"], rows["y_nm"], rows["z_nm"] = tracks.x_nm, tracks.y_nm, tracks.z_nm
    rows["score"] = np.nan
    return rows


class RunSource:
    """Review of one past run (a Tiled run client, e.g. an item of ``find_runs(...)``).

    :param run: the run client.
    :param stream: stream to read tracks and frames from (default as
        :func:`magscope_session.runs.read_tracks` chooses).

    Attributes: ``uid``, ``summary`` (:func:`magscope_session.runs.run_summary`),
    ``tracks`` (:class:`~magscope_session.runs.RunTracks` or None), ``frames``
    (:class:`~magscope_session.runs.RunFrames` or None). Raises ``ValueError`` for a run
    with neither tracks nor frames.
    """

    def __init__(self, run: Any, *, stream: str | None = None) -> None:
        self.run = run
        self.summary = run_summary(run)
        self.uid = str(self.summary["uid"])
        self.instance = f"run {self.uid[:8]} ({self.summary.get('plan') or 'run'})"
        self.tracks: RunTracks | None
        self.frames: RunFrames | None
        try:
            self.tracks = read_tracks(run, stream=stream)
        except NoTracksError:
            self.tracks = None
        try:
            self.frames = camera_frames(run, stream=stream)
        except NoFramesError:
            self.frames = None
        if self.tracks is None and self.frames is None:
            raise ValueError(f"{self.instance} has neither bead tracks nor camera frames to review")
        if self.tracks is not None:
            self._rows = _track_rows(self.tracks)
            layout = self.tracks.layout
            self._rois = RoiTable(
                seq=1, size=int(layout.roi_size_px), ids=layout.bead_ids.astype(np.int32),
                x0=layout.roi_x0_px.astype(np.int64), y0=layout.roi_y0_px.astype(np.int64),
            )
            self._times = self.tracks.timestamp
        else:
            assert self.frames is not None
            self._times = self.frames.timestamp
        self.reconnects = 0
        self.position = self.n_positions - 1
        self._frame_cache: dict[int, LiveFrame] = {}

    # -- the position ----------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        """Positions to scrub through: recorded track frames (else camera frames)."""
        return int(self._times.size)

    @property
    def times(self) -> np.ndarray:
        """UNIX s of every position."""
        return self._times

    def set_position(self, position: int) -> None:
        """Show the run up to ``position`` (clipped to 0 .. n_positions - 1)."""
        position = int(np.clip(position, 0, max(0, self.n_positions - 1)))
        if position < self.position:
            self.reconnects += 1  # the window reads the tracks again from the start
        self.position = position

    def time_s(self, position: int | None = None) -> float:
        """Seconds since the run's first recorded frame at ``position`` (default: now)."""
        p = self.position if position is None else position
        finite = self._times[np.isfinite(self._times)]
        if not finite.size or not np.isfinite(self._times[p]):
            return float("nan")
        return float(self._times[p] - finite[0])

    # -- the source interface ---------------------------------------------------------------
    @property
    def state(self) -> str:
        return CONNECTED  # a run is always there: the window draws it

    @property
    def tracker_attached(self) -> bool:
        return self.tracks is not None

    def poll(self, force: bool = False) -> str:
        return self.state

    def frame_index_at(self, position: int | None = None) -> int:
        """Camera frame (0-based, in the run) shown at ``position``: the newest taken at or
        before that position's time (the first frame before the first one); -1 without
        frames."""
        if self.frames is None or not len(self.frames):
            return -1
        p = self.position if position is None else position
        if self.tracks is None:
            return p
        return max(0, self.frames.at_time(float(self._times[p])))

    def newest_frame(self) -> LiveFrame | None:
        """The camera frame at the position (fetched from Tiled once, then cached)."""
        index = self.frame_index_at()
        if index < 0 or self.frames is None:
            return None
        frame = self._frame_cache.get(index)
        if frame is None:
            image = self.frames.frame(index)
            frame = LiveFrame(
                image=image, index=index, timestamp=float(self.frames.timestamp[index]),
                x0_px=self.frames.x0_px, y0_px=self.frames.y0_px,
            )
            if len(self._frame_cache) > 64:
                self._frame_cache.clear()
            self._frame_cache[index] = frame
        self._last = frame
        return frame

    @property
    def last_frame(self) -> LiveFrame | None:
        """The frame :meth:`newest_frame` last returned (None before the first)."""
        return getattr(self, "_last", None)

    def axes(self) -> None:
        """No live axes in review (the run's axis readings are in its events)."""
        return None

    def zlut_file(self) -> None:
        """No Z-LUT file in review: the run's z was tracked when it ran."""
        return None

    def track_count(self) -> int:
        """Track frames up to the position (the window's "next index"); -1 without tracks."""
        return -1 if self.tracks is None else self.position + 1

    def tracks_since(self, k: int, max_frames: int | None = None) -> TrackRows | None:
        """Track frames ``k`` .. position (ordinals in the run, as ``next_index``); their
        ``frame_index`` are the camera's frame numbers."""
        if self.tracks is None:
            return None
        stop = self.position + 1
        start = int(np.clip(k, 0, stop))
        if max_frames is not None:
            stop = min(stop, start + int(max_frames))
        n_beads = self._rows.shape[1]
        return TrackRows(
            frame_index=self.tracks.frame_index[start:stop],
            timestamp=self.tracks.timestamp[start:stop],
            status=np.where(
                self.tracks.status[start:stop] == FrameStatus.TRACKED,
                int(FrameStatus.TRACKED), int(FrameStatus.DROPPED),
            ).astype(np.int32),
            n_beads=np.full(stop - start, n_beads, np.int32),
            rows=self._rows[start:stop],
            lost=0,
            next_index=stop,
        )

    def rois(self) -> RoiTable | None:
        """The run's ROIs (its bead layout), None without tracks."""
        return None if self.tracks is None else self._rois

    def nm_per_px(self) -> float:
        return float("nan") if self.tracks is None else float(self.tracks.layout.nm_per_px)

    def health(self) -> Health:
        """No live counters in review: the state says what is shown."""
        return Health(
            state=REVIEW, tracker_attached=self.tracks is not None,
            nm_per_px=self.nm_per_px(),
        )

    def close(self) -> None:
        self._frame_cache.clear()
