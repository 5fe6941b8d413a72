"""Images beside the tracks in plans: the ``video`` option of the recording plans and the
trigger window stub :func:`save_frames`.

The microscope's :class:`~magscope_devices.VideoRecorder` (``microscope.video``) has a
``mode`` signal (``"tracks"``, ``"roi_crops"``, ``"frames_every_n"``,
``"trigger_window"``) that the viewer and the queue set like any signal. A recording plan
(:func:`force_clamp`, :func:`force_ramp`, :func:`force_extension`, ...) takes
``video="roi_crops"`` or ``video="frames_every_n"`` (with ``every_n``) for its run and
puts the mode back when it ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import FailedStatus, Msg
from ophyd_async.core import TriggerInfo

from magscope_devices._video import MAX_EVERY_N, MAX_PRE_TRIGGER_S, VideoMode, VideoRecorder

from ._arguments import PlanArgs, PreflightError

__all__ = [
    "RECORD_VIDEO_MODES",
    "check_video_option",
    "save_frames",
    "set_video_mode",
    "with_video_mode",
]

#: the modes a recording plan's ``video`` option takes (the trigger window is
#: :func:`save_frames`'s)
RECORD_VIDEO_MODES = ("tracks", "roi_crops", "frames_every_n")


def check_video_option(
    args: PlanArgs, video: Any, every_n: Any
) -> tuple[str | None, int | None]:
    """A plan's ``video`` (None: leave the microscope's mode as it is) and ``every_n``
    (frames; None: the recorder's), checked before the plan's first message."""
    if video is not None:
        video = args.choice("video", video, RECORD_VIDEO_MODES)
    if every_n is not None:
        every_n = args.count("every_n", every_n, minimum=1, maximum=MAX_EVERY_N,
                             what="a whole number of frames")
    return video, every_n


def set_video_mode(
    microscope: Any, mode: str, *, every_n: int | None = None,
    pre_trigger_s: float | None = None,
) -> Generator[Msg, Any, str]:
    """Set what records write beside the tracks (no run): ``mode`` one of ``"tracks"``,
    ``"roi_crops"``, ``"frames_every_n"`` (with ``every_n`` frames), ``"trigger_window"``
    (keeping ``pre_trigger_s`` s of frames for :func:`save_frames`). For the queue and the
    viewer; arguments checked before the first message. Returns the mode."""
    args = PlanArgs("set_video_mode")
    mode = args.choice("mode", mode, tuple(m.value for m in VideoMode))
    if every_n is not None:
        every_n = args.count("every_n", every_n, minimum=1, maximum=MAX_EVERY_N,
                             what="a whole number of frames")
    if pre_trigger_s is not None:
        pre_trigger_s = args.non_negative("pre_trigger_s", pre_trigger_s, units="s")
        if pre_trigger_s > MAX_PRE_TRIGGER_S:
            raise args.error("pre_trigger_s", pre_trigger_s, "is too long",
                             f"at most {MAX_PRE_TRIGGER_S:g} s")
    recorder: VideoRecorder | None = getattr(microscope, "video", None)
    if recorder is None:
        raise PreflightError(f"set_video_mode: {getattr(microscope, 'name', microscope)!r} "
                             "has no video recorder (pass the microscope)")
    moves: list[Any] = []
    if every_n is not None:
        moves += [recorder.every_n, every_n]
    if pre_trigger_s is not None:
        moves += [recorder.pre_trigger_s, pre_trigger_s]
    yield from bps.mv(*moves, recorder.mode, mode)
    return mode


def with_video_mode(
    plan: Generator[Msg, Any, Any], microscope: Any, video: str | None,
    every_n: int | None = None,
) -> Generator[Msg, Any, Any]:
    """Run ``plan`` with ``microscope.video.mode`` at ``video`` (and ``every_n``), putting
    back the mode (and every_n) it had when ``plan`` ends, however it ends. ``video``
    None: ``plan`` as it is."""
    recorder: VideoRecorder | None = getattr(microscope, "video", None)
    if video is None and every_n is None:
        return (yield from plan)
    if recorder is None:
        raise PreflightError(f"{microscope.name} has no video recorder: video={video!r} "
                             "cannot be recorded")
    before_mode = yield from bps.rd(recorder.mode)
    before_n = yield from bps.rd(recorder.every_n)

    def restore() -> Generator[Msg, Any, None]:
        yield from bps.mv(recorder.mode, before_mode, recorder.every_n, before_n)

    def body() -> Generator[Msg, Any, Any]:
        if every_n is not None:
            yield from bps.mv(recorder.every_n, every_n)
        if video is not None:
            yield from bps.mv(recorder.mode, video)
        return (yield from plan)

    return (yield from bpp.finalize_wrapper(body(), restore()))


def save_frames(
    video: VideoRecorder, seconds_before: float, seconds_after: float, *,
    stream: str = "triggered_frames",
) -> Generator[Msg, Any, int]:
    """Inside an open run, write the whole camera frames from ``seconds_before`` (s)
    before now to ``seconds_after`` (s) after it into stream ``stream`` (one event per
    frame, each with its camera frame index). ``video.mode`` must be
    ``"trigger_window"`` (set it before the trigger: the writer keeps the last
    ``video.pre_trigger_s`` seconds of frames from then on). Returns the frames written.
    """
    args = PlanArgs("save_frames")
    seconds_before = args.non_negative("seconds_before", seconds_before, units="s")
    seconds_after = args.non_negative("seconds_after", seconds_after, units="s")
    if seconds_before + seconds_after <= 0:
        raise args.error("seconds_after", seconds_after, "leaves an empty window",
                         "seconds_before + seconds_after > 0 s")
    if seconds_before > MAX_PRE_TRIGGER_S:
        raise args.error("seconds_before", seconds_before, "is too long",
                         f"at most {MAX_PRE_TRIGGER_S:g} s")
    if not isinstance(stream, str) or not stream:
        raise args.error("stream", stream, "is not a stream name", "a non-empty str")
    mode = yield from bps.rd(video.mode)
    if mode != VideoMode.TRIGGER_WINDOW:
        raise PreflightError(
            f"save_frames: {video.name}.mode is {str(mode)!r}; set it to 'trigger_window' "
            f"before the trigger (e.g. bps.mv({video.name}.mode, 'trigger_window'))"
        )
    kept = float((yield from bps.rd(video.pre_trigger_s)))
    if seconds_before > kept:
        raise PreflightError(
            f"save_frames: seconds_before={seconds_before:g} s is more than the "
            f"{kept:g} s the writer keeps ({video.name}.pre_trigger_s)"
        )
    rate = float((yield from bps.rd(video.camera.frame_rate_hz)))
    before = round(seconds_before * rate)
    rows = max(1, before + round(seconds_after * rate))
    if not video.staged:  # the RunEngine unstages it when the plan ends
        yield from bps.stage(video)
    trigger_frame = int((yield from bps.rd(video.next_camera_frame)))
    yield from bps.mv(video.first_frame, max(0, trigger_frame - before))
    yield from bps.prepare(video, TriggerInfo(number_of_events=rows), wait=True)
    if stream not in video.declared_streams:
        yield from bps.declare_stream(video, name=stream, collect=True)
        video.declared_streams.add(stream)
    yield from bps.kickoff(video, wait=True)
    try:
        yield from bps.complete(video, wait=True)
    except FailedStatus:  # a full disk: the frames written so far go in the run
        yield from bps.collect(video, name=stream)
        raise
    yield from bps.collect(video, name=stream)
    return rows
