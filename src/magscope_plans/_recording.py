"""Full-rate track records inside a run, and the extension and lateral traces they give.

:class:`TrackRecorder` records every camera frame of a stretch of time as a fly scan of
the bead tracker (prepare, kickoff, complete, collect): the tracks go to the run's HDF5
track table and a ``tracks`` stream (one event per ``chunk_frames`` frames), and come back
to the plan as arrays (:meth:`BeadTracker.window_tracks`) for the analysis.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import FailedStatus, Msg
from ophyd_async.core import TriggerInfo

from magscope_devices._bead_tracker import BeadTracker
from magscope_devices._video import VideoMode, VideoRecorder

from .analysis import mean_and_sem, subtract_drift

logger = logging.getLogger(__name__)

__all__ = [
    "TrackRecorder",
    "column_of",
    "dropped_fraction",
    "extension_traces",
    "lateral_traces",
    "mean_extensions",
]


class TrackRecorder:
    """Records contiguous full-rate tracks into stream ``stream`` of the open run.

    Every record in one run uses the same ``chunk_frames`` (frames per event), so the
    stream keeps one descriptor; a record is rounded up to whole chunks.

    With ``video`` (the microscope's :class:`~magscope_devices.VideoRecorder`) in mode
    ``"roi_crops"`` or ``"frames_every_n"``, each record also writes those images of the
    same frames (from the tracks' first frame) into stream ``video_stream``: rows of
    images with their camera frame index, aligned with the track rows by it. A record
    whose images cannot be written (a full disk) still puts the tracks and the images
    written so far in the run, then fails with the writer's message.
    """

    def __init__(
        self, tracker: BeadTracker, *, chunk_frames: int, stream: str = "tracks",
        video: VideoRecorder | None = None, video_stream: str = "video",
    ):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
        self.tracker = tracker
        self.chunk_frames = int(chunk_frames)
        self.stream = stream
        self.video = video
        self.video_stream = video_stream
        self._declared = False
        #: images per frame of a record: None (no images), else every this many frames
        self._video_every: int | None = None

    def frames_for(self, n_frames: int) -> int:
        """Frames actually recorded for a request of ``n_frames`` (whole chunks)."""
        return max(1, math.ceil(n_frames / self.chunk_frames)) * self.chunk_frames

    def _video_rows(self, frames: int) -> int:
        assert self._video_every is not None
        return math.ceil(frames / self._video_every)

    def start(self, n_frames: int) -> Generator[Msg, Any, int]:
        """Start recording the next ``n_frames`` frames (rounded up to whole chunks) and
        return at once (the plan can move things meanwhile); returns the frame count."""
        frames = self.frames_for(n_frames)
        info = TriggerInfo(
            number_of_events=frames // self.chunk_frames, collections_per_event=self.chunk_frames
        )
        video = self.video
        if not self._declared:
            yield from bps.prepare(self.tracker, info, wait=True)
            yield from bps.declare_stream(self.tracker, name=self.stream, collect=True)
            if video is not None:
                mode = yield from bps.rd(video.mode)
                if mode == VideoMode.ROI_CROPS:
                    self._video_every = 1
                elif mode == VideoMode.FRAMES_EVERY_N:
                    self._video_every = int((yield from bps.rd(video.every_n)))
            if self._video_every is not None:
                assert video is not None
                yield from bps.prepare(
                    video, TriggerInfo(number_of_events=self._video_rows(frames)), wait=True
                )
                yield from bps.declare_stream(video, name=self.video_stream, collect=True)
            self._declared = True
        # a pause rewinds to here: the record restarts (prepare, kickoff) after a resume
        yield from bps.checkpoint()
        yield from bps.prepare(self.tracker, info, wait=True)
        if self._video_every is not None:
            assert video is not None
            yield from bps.prepare(
                video, TriggerInfo(number_of_events=self._video_rows(frames)), wait=True
            )
        yield from bps.kickoff(self.tracker, wait=True)
        if self._video_every is not None:
            assert video is not None
            # the images start at the tracks' first frame: one frame index for both
            yield from bps.mv(video.first_frame, self.tracker.recording_first_frame())
            yield from bps.kickoff(video, wait=True)
        return frames

    def finish(self) -> Generator[Msg, Any, dict[str, np.ndarray]]:
        """Wait for the record started by :meth:`start` to end, save it in the stream;
        returns the tracks as :meth:`BeadTracker.window_tracks` arrays."""
        if self._video_every is None:
            yield from bps.complete(self.tracker, wait=True)
            yield from bps.collect(self.tracker, name=self.stream)
            return self.tracker.window_tracks()
        video = self.video
        assert video is not None
        group = f"record-{uuid.uuid4().hex[:8]}"
        try:  # either failing ends the wait at once (a full disk fails the video first)
            yield from bps.complete(self.tracker, group=group)
            yield from bps.complete(video, group=group)
            yield from bps.wait(group)
        except FailedStatus:
            # a failed record (a full disk): what was written goes in the run, then the
            # error goes on (the magnets go safe in the plan's finish)
            for device, stream in ((self.tracker, self.stream), (video, self.video_stream)):
                try:
                    yield from bps.collect(device, name=stream)
                except Exception as exc:  # noqa: BLE001 - the first error is the one to tell
                    logger.warning("%s: its rows could not be saved after the failure: %s",
                                   device.name, exc)
            raise
        yield from bps.collect(self.tracker, name=self.stream)
        yield from bps.collect(video, name=self.video_stream)
        return self.tracker.window_tracks()

    def record(self, n_frames: int) -> Generator[Msg, Any, dict[str, np.ndarray]]:
        """Record the next ``n_frames`` frames (rounded up to whole chunks); returns the
        tracks as :meth:`BeadTracker.window_tracks` arrays."""
        yield from self.start(n_frames)
        return (yield from self.finish())

    def record_whole(
        self, n_frames: int, *, max_dropped: float = 0.01, tries: int = 3
    ) -> Generator[Msg, Any, dict[str, np.ndarray]]:
        """Like :meth:`record`, for analyses that need an unbroken trace (a PSD): a record
        in which the tracker dropped more than ``max_dropped`` of the frames (an
        overloaded machine) is recorded again, ``tries`` records at most; returns the one
        with the fewest dropped frames. Every record stays in the stream."""
        best: dict[str, np.ndarray] | None = None
        for attempt in range(1, tries + 1):
            tracks = yield from self.record(n_frames)
            dropped = dropped_fraction(tracks)
            if best is None or dropped < dropped_fraction(best):
                best = tracks
            if dropped <= max_dropped:
                break
            logger.warning(
                "%s: %.1f %% of the %d frames of record %d/%d were dropped (limit %.1f %%)%s",
                self.tracker.name, 100 * dropped, len(tracks["frame_index"]), attempt, tries,
                100 * max_dropped, ": recording again" if attempt < tries else "",
            )
        assert best is not None
        return best


def dropped_fraction(tracks: dict[str, np.ndarray]) -> float:
    """Fraction of a record's frames that the tracker dropped (every bead NaN)."""
    x = np.asarray(tracks["x_nm"])
    if x.shape[0] == 0:
        return 0.0
    return float(np.mean(~np.isfinite(x).any(axis=1)))


def column_of(tracks: dict[str, np.ndarray], bead_ids) -> np.ndarray:
    """Column indices of ``bead_ids`` in a tracks dict (KeyError naming a missing bead)."""
    ids = np.asarray(tracks["bead_id"])
    lookup = {int(b): i for i, b in enumerate(ids)}
    try:
        return np.array([lookup[int(b)] for b in bead_ids], dtype=np.int64)
    except KeyError as exc:
        raise KeyError(f"bead {exc.args[0]} is not in the tracks (beads {ids.tolist()})") from None


def extension_traces(
    tracks: dict[str, np.ndarray], beads, reference, radius_offsets_nm=None
) -> np.ndarray:
    """Per frame, each bead's height above the reference beads (nm, (frames, beads)).

    With an anchored Z-LUT the tracked z is the height above the reference beads at the
    sweep; subtracting the reference beads' mean z frame by frame removes drift and focus
    moves, leaving the tether extension plus the bead's radius minus the reference
    beads'. ``radius_offsets_nm`` (per bead, nm; from the force calibration,
    :meth:`~magscope_devices.ForceCalibration.radius_offsets_nm`) subtracts that
    difference too: the result is then the tether's extension. Frames where a bead or
    every reference bead is lost are NaN.
    """
    z = tracks["z_nm"]
    ref = z[:, column_of(tracks, reference)]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ref).sum(axis=1)
        ref_mean = np.where(ok > 0, np.nansum(ref, axis=1) / np.maximum(ok, 1), np.nan)
    heights = z[:, column_of(tracks, beads)] - ref_mean[:, None]
    if radius_offsets_nm is None:
        return heights
    return heights - np.asarray(radius_offsets_nm, dtype=float)[None, :]


def lateral_traces(
    tracks: dict[str, np.ndarray], beads, reference, *, axis: str = "y"
) -> np.ndarray:
    """Lateral positions (nm, (frames, beads)) along ``axis`` ("x" or "y"), drift-subtracted
    with the reference beads when there are any."""
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', not {axis!r}")
    pos = tracks[f"{axis}_nm"]
    traces = pos[:, column_of(tracks, beads)]
    if len(reference) == 0:
        return traces
    return subtract_drift(traces, pos[:, column_of(tracks, reference)])


def mean_extensions(extensions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bead (columns), the mean extension (nm) and its standard error (nm, blocking
    method: correlated frames are not counted as independent)."""
    pairs = [mean_and_sem(extensions_nm[:, b]) for b in range(extensions_nm.shape[1])]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
